package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
)

// freezableCommits wraps the rig's logs: once frozen, commits of the
// status checkpoint group fail. A crash stops the whole process; here only
// the status store is crashed (a copy of its file system as synced), so
// the engine must not record checkpoints the copy does not have.
type freezableCommits struct {
	partition.Log
	frozen *atomic.Bool
}

func (f freezableCommits) Commit(ctx context.Context, offsets map[partition.TopicPartition]int64) error {
	if f.frozen.Load() {
		return errors.New("frozen: the process has crashed")
	}
	return f.Log.Commit(ctx, offsets)
}

// The status store's events have no WAL of their own (the status topic is
// their log): a crash loses what was not flushed, and the next start
// replays it from the last checkpoint. Every accepted and sent event is
// there after the restart, and nothing is sent again.
func TestStatusStoreCrashReplaysTopic(t *testing.T) {
	for _, b := range backends {
		for _, mode := range []struct {
			name     string
			interval time.Duration
			crashAt  int    // sends at the mock
			node     string // Config.NodeID: the store follows the topic, its replica commits
		}{
			// Checkpoints only at start and stop: the crash certainly
			// takes the second batch's events, all sent.
			{"quiet", time.Hour, 2000, ""},
			// Checkpoints every few ms, the crash in the middle of the
			// drain.
			{"busy", 5 * time.Millisecond, 1000, ""},
			// The same through a node's replica of the status topic.
			{"replica-quiet", time.Hour, 2000, "n1"},
			{"replica-busy", 5 * time.Millisecond, 1000, "n1"},
		} {
			t.Run(b.name+"/"+mode.name, func(t *testing.T) {
				r := newRig(t, b)
				var frozen atomic.Bool
				open := r.open
				r.open = func(cc partition.ConsumerConfig) (partition.Log, error) {
					l, err := open(cc)
					if err != nil || (!strings.HasPrefix(cc.Group, "goutong-status-checkpoint.") && cc.Group != "goutong-status-store."+mode.node) {
						return l, err
					}
					return freezableCommits{l, &frozen}, nil
				}
				fs := vfs.NewCrashableMem()
				st, err := engine.OpenStatusOn(fs, "status")
				if err != nil {
					t.Fatal(err)
				}
				r.status = st
				cfg := r.config(r.channels(false))
				cfg.StatusCheckpointInterval = mode.interval
				cfg.NodeID = mode.node
				cfg.Registry = nil // three engines, one after the other
				ingest := func(e *engine.Engine, ns []*notification.Notification) {
					t.Helper()
					waitFor(t, 20*time.Second, "the engine", e.Ready)
					for i := 0; i < len(ns); i += 500 {
						if _, _, err := e.Ingest(context.Background(), ns[i:i+500], time.Now()); err != nil {
							t.Fatal(err)
						}
					}
				}

				// A first batch, then a clean stop: its last checkpoint
				// flushes their events.
				first := webhookBatch(1000, 0)
				e, stop := r.start(cfg)
				ingest(e, first)
				waitFor(t, 60*time.Second, "the first batch at the mock", func() bool { return r.mock.Stats().Unique == int64(len(first)) })
				waitFor(t, 30*time.Second, "the first batch sent", func() bool { return allSent(r.status, first) })
				stop()

				second := webhookBatch(2000, len(first))
				e, stop = r.start(cfg)
				ingest(e, second)
				waitFor(t, 60*time.Second, "the crash point", func() bool {
					return r.mock.Stats().Unique >= int64(len(first)+mode.crashAt)
				})
				if mode.crashAt == len(second) {
					waitFor(t, 30*time.Second, "the second batch sent", func() bool { return allSent(r.status, second) })
				}
				frozen.Store(true)
				crashed := fs.CrashClone(vfs.CrashCloneCfg{})
				stop()
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}

				st, err = engine.OpenStatusOn(crashed, "status")
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				lost := func(ns []*notification.Notification) int {
					n := 0
					for _, x := range ns {
						if _, err := st.Get(x.ID); errors.Is(err, engine.ErrNotFound) {
							n++
						}
					}
					return n
				}
				lostFirst, lostSecond := lost(first), lost(second)
				t.Logf("the crash took the events of %d + %d notifications", lostFirst, lostSecond)
				if lostFirst > 0 {
					t.Fatalf("the crash took the events of %d of the first batch, flushed at the clean stop", lostFirst)
				}
				if mode.crashAt == len(second) && lostSecond < len(second) {
					t.Fatalf("the crash took the events of %d of the second batch, want all %d: flushed without a checkpoint?", lostSecond, len(second))
				}

				r.status = st
				frozen.Store(false)
				cfg.Status = st
				reg := prometheus.NewRegistry()
				cfg.Registry = reg
				e, stop = r.start(cfg)
				waitFor(t, 20*time.Second, "the engine", e.Ready)
				// The second batch's accepted and sent events at least.
				if got := counterSum(t, reg, "goutong_status_replayed_events_total"); mode.node == "" && mode.crashAt == len(second) && got < float64(2*len(second)) {
					t.Fatalf("replayed %v events, want at least %d", got, 2*len(second))
				}
				all := append(first, second...)
				waitFor(t, 60*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(all)) })
				waitFor(t, 30*time.Second, "every notification sent", func() bool { return allSent(st, all) })
				stop()
				// What the store and its checkpoints look like on /metrics.
				if got := gaugeOf(t, reg, "goutong_status_store_disk_bytes", "", ""); got <= 0 {
					t.Fatalf("goutong_status_store_disk_bytes %v", got)
				}
				if mode.node == "" {
					if got := counterSum(t, reg, "goutong_status_checkpoints_total"); got < 1 {
						t.Fatalf("goutong_status_checkpoints_total %v after a stop", got)
					}
					// The stop's checkpoint covers every event.
					if got := gaugeOf(t, reg, "goutong_status_replay_backlog", "", ""); got != 0 {
						t.Fatalf("goutong_status_replay_backlog %v after a stop", got)
					}
				}
				r.checkEachOnce(all)
				for _, n := range all {
					s, _ := st.Get(n.ID)
					if s.History[0].State != engine.StateAccepted {
						t.Fatalf("%s: history %+v, want accepted first", n.ID, s.History)
					}
				}
			})
		}
	}
}

func allSent(st *engine.StatusStore, ns []*notification.Notification) bool {
	for _, n := range ns {
		if s, err := st.Get(n.ID); err != nil || s.State != engine.StateSent {
			return false
		}
	}
	return true
}

// BenchmarkStatusReplay measures a start's replay of the status topic into
// an empty store: what a crash costs at the next start for every event
// since the last checkpoint, and what a new store takes to rebuild from
// the topic's retention.
func BenchmarkStatusReplay(b *testing.B) {
	r := newRig(b, backends[0])
	recs := make([]partition.Record, 0, 5000)
	now := time.Now().UTC()
	var last string
	for i := range b.N {
		id := notification.NewID()
		v, err := json.Marshal(&engine.StatusEvent{EventID: notification.NewID(), ID: id, State: engine.StateSent, At: now,
			Tenant: "acme", Channel: "webhook", Priority: "normal", Attempts: 1, Provider: "webhook"})
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, partition.Record{Topic: r.topics.Status, Key: []byte(id), Value: v})
		if len(recs) == cap(recs) || i == b.N-1 {
			if err := r.prod.Produce(context.Background(), recs); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
		last = id
	}
	cfg := r.config(r.channels(false))
	b.ResetTimer()
	e, stop := r.start(cfg)
	waitFor(b, 5*time.Minute, "the replay", e.Ready)
	b.StopTimer()
	stop()
	if st, err := r.status.Get(last); err != nil || st.State != engine.StateSent {
		b.Fatalf("the last event not replayed: %+v %v", st, err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// A store from before (its own WAL, so complete, and no checkpoint) starts
// at the status topic's end instead of replaying the topic's retention; a
// new store beside the same topic replays all of it (a rebuild).
func TestStatusStoreUpgradeStartsAtTopicEnd(t *testing.T) {
	r := newRig(t, backends[0])
	ns := webhookBatch(300, 0)
	now := time.Now().UTC()
	var recs []partition.Record
	var events []engine.StatusEvent
	for _, n := range ns {
		n.ID = notification.NewID()
		ev := engine.StatusEvent{EventID: notification.NewID(), ID: n.ID, State: engine.StateSent, At: now, Tenant: "acme",
			Channel: "webhook", Priority: "normal", Attempts: 1, Provider: "webhook"}
		v, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, partition.Record{Topic: r.topics.Status, Key: []byte(n.ID), Value: v})
		events = append(events, ev)
	}
	if err := r.prod.Produce(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	// The old engine applied them too; its store had them.
	if err := r.status.Apply(events); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.dir, "status")
	if err := r.status.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		dir      string
		replayed float64
	}{
		{"upgraded", dir, 0},
		{"rebuilt", filepath.Join(r.dir, "status-new"), float64(len(ns))},
		{"upgraded, second start", dir, 0},
	} {
		st, err := engine.OpenStatus(c.dir, time.Hour, true)
		if err != nil {
			t.Fatal(err)
		}
		cfg := r.config(r.channels(false))
		reg := prometheus.NewRegistry()
		cfg.Status, cfg.Registry = st, reg
		e, stop := r.start(cfg)
		waitFor(t, 20*time.Second, "the engine", e.Ready)
		stop()
		if got := counterSum(t, reg, "goutong_status_replayed_events_total"); got != c.replayed {
			t.Errorf("%s: replayed %v events, want %v", c.name, got, c.replayed)
		}
		if !allSent(st, ns) {
			t.Errorf("%s: events missing", c.name)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
