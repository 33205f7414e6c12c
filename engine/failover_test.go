package engine_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/partition"
)

// lostCommits is a Log whose offset commits stop reaching the broker once
// lose is set: a node that dies after sending, before its commit lands.
type lostCommits struct {
	partition.Log
	lose *atomic.Bool
}

func (l lostCommits) Commit(ctx context.Context, offsets map[partition.TopicPartition]int64) error {
	if l.lose.Load() {
		return nil
	}
	return l.Log.Commit(ctx, offsets)
}

// A node sends a batch and dies before committing it: the node that takes
// its partitions replays the records, and must not send them again. Its
// own dedupe store never saw them; its status store, which follows the
// status topic, did.
func TestFailoverDoesNotResend(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, err := dedupe.Open(filepath.Join(r.dir, "dedupe-b"), dedupe.WithCreate(), dedupe.WithSync(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ddB.Close() }) // after b stops: cleanups run last first
	stB, err := engine.OpenStatus(filepath.Join(r.dir, "status-b"), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stB.Close() })

	var lose atomic.Bool
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	open := cfgA.Open
	cfgA.Open = func(cc partition.ConsumerConfig) (partition.Log, error) {
		l, err := open(cc)
		if err != nil {
			return nil, err
		}
		return lostCommits{Log: l, lose: &lose}, nil
	}
	a, stopA := r.start(cfgA)
	waitFor(t, 20*time.Second, "node a", a.Ready)

	// What a committed before it died is not replayed: only the second
	// batch is at stake.
	first := webhookBatch(100, 0)
	r.enqueue(first...)
	waitFor(t, 30*time.Second, "the first batch", func() bool { return r.mock.Stats().Unique == int64(len(first)) })
	time.Sleep(500 * time.Millisecond) // ten commit intervals
	lose.Store(true)
	second := webhookBatch(300, 100)
	r.enqueue(second...)
	want := int64(len(first) + len(second))
	waitFor(t, 30*time.Second, "the second batch", func() bool { return r.mock.Stats().Unique == want })
	stopA()

	cfgB := r.config(r.channels(false))
	regB := prometheus.NewRegistry()
	cfgB.NodeID, cfgB.Dedupe, cfgB.Status, cfgB.Registry = "b", ddB, stB, regB
	b, _ := r.start(cfgB)
	waitFor(t, 20*time.Second, "node b", b.Ready)
	// b replays the second batch: each record is either found sent by a
	// or sent again.
	replayed := func() int64 {
		return int64(counterSum(t, regB, "goutong_takeover_skipped_total")) + r.mock.Stats().Received - want
	}
	waitFor(t, 30*time.Second, "b to replay what a did not commit", func() bool { return replayed() >= int64(len(second)) })
	if s := r.mock.Stats(); s.Received != want || s.Unique != want {
		t.Fatalf("provider received %d, %d unique, want %d once each", s.Received, s.Unique, want)
	}
	// The keys b took over answer as duplicates from now on: the same
	// notifications again (their default keys) are not sent.
	again := webhookBatch(50, 100)
	r.enqueue(again...)
	waitFor(t, 30*time.Second, "the repeats to be found duplicates", func() bool {
		return counterSum(t, regB, "goutong_duplicates_total") == float64(len(again))
	})
	time.Sleep(500 * time.Millisecond) // anything b would send again, it has sent by now
	if s := r.mock.Stats(); s.Received != want || s.Unique != want {
		t.Fatalf("provider received %d, %d unique, want %d once each", s.Received, s.Unique, want)
	}
}
