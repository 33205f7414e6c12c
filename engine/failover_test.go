package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers/mockserver"
)

// A node sends a batch and dies before committing it: the node that takes
// its partitions replays the records, and must not send them again. Its
// own dedupe store never saw them; its status store, which follows the
// status topic, did.
func TestFailoverDoesNotResend(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")

	// a's commits fail once lose is set: it dies after sending, before
	// its commits land.
	var lose atomic.Bool
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	wrapLogs(&cfgA, func(l partition.Log) partition.Log { return freezableCommits{l, &lose} })
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

// wrapLogs has cfg's engine open every Log wrapped by wrap.
func wrapLogs(cfg *engine.Config, wrap func(partition.Log) partition.Log) {
	wrapLogsOf(cfg, func(string) bool { return true }, wrap)
}

// wrapLogsOf has cfg's engine open the Logs of the consumer groups of
// (producers' have none) wrapped by wrap.
func wrapLogsOf(cfg *engine.Config, of func(group string) bool, wrap func(partition.Log) partition.Log) {
	open := cfg.Open
	cfg.Open = func(cc partition.ConsumerConfig) (partition.Log, error) {
		l, err := open(cc)
		if err != nil || !of(cc.Group) {
			return l, err
		}
		return wrap(l), nil
	}
}

// replicaGroup tells a status replica's consumer group.
func replicaGroup(group string) bool { return strings.HasPrefix(group, "goutong-status-store.") }

// flakyProduce is a Log whose Produce fails while fail is above zero,
// counting it down: a broker or disk that refuses writes for a moment.
type flakyProduce struct {
	partition.Log
	fail *atomic.Int64
}

func (l flakyProduce) Produce(ctx context.Context, recs []partition.Record) error {
	if l.fail.Add(-1) >= 0 {
		return errors.New("flaky: write refused")
	}
	return l.Log.Produce(ctx, recs)
}

// A log that refuses a few writes must not leave what was in flight stuck
// until the next restart: every notification is sent once and every offset
// commits, in the same run.
func TestEngineRidesOutRefusedWrites(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			var fail atomic.Int64
			cfg := r.config(r.channels(false))
			wrapLogs(&cfg, func(l partition.Log) partition.Log { return flakyProduce{Log: l, fail: &fail} })
			e, stop := r.start(cfg)
			waitFor(t, 20*time.Second, "the engine", e.Ready)
			first := webhookBatch(200, 0)
			r.enqueue(first...)
			waitFor(t, 30*time.Second, "the first batch", func() bool { return r.mock.Stats().Unique == int64(len(first)) })
			fail.Store(5)
			second := webhookBatch(2000, 200)
			r.enqueue(second...)
			want := int64(len(first) + len(second))
			waitFor(t, 30*time.Second, "every send", func() bool { return r.mock.Stats().Unique == want })
			if fail.Load() >= 0 {
				t.Fatalf("the log refused only %d of 5 writes", 5-fail.Load())
			}
			waitFor(t, 30*time.Second, "every notification known as sent", func() bool {
				for _, n := range second {
					if st, err := e.Status(n.ID); err != nil || st.State != engine.StateSent {
						return false
					}
				}
				return true
			})
			waitFor(t, 30*time.Second, "every offset committed", func() bool { return e.Backlog() == 0 })
			if s := r.mock.Stats(); s.Received != want {
				t.Fatalf("provider received %d, want %d once each", s.Received, want)
			}
			if got := counterSum(t, r.reg, "goutong_outcome_write_retries_total"); got != 5 {
				t.Fatalf("goutong_outcome_write_retries_total %v, want 5", got)
			}

			// A log that refuses every write holds the engine, but does not
			// keep it from stopping: what is in flight is replayed later.
			fail.Store(1 << 40)
			r.enqueue(webhookBatch(100, 2200)...)
			waitFor(t, 30*time.Second, "the third batch's sends", func() bool { return r.mock.Stats().Unique > want })
			stopped := make(chan struct{})
			go func() { stop(); close(stopped) }()
			waitFor(t, 30*time.Second, "the engine to stop", func() bool {
				select {
				case <-stopped:
					return true
				default:
					return false
				}
			})
		})
	}
}

// A key another node accepted or sent is a duplicate here too, however
// long ago within the window: a request retried at another node answers
// with the first notification, and after its partitions moved, a record
// repeating a key the old owner sent (and committed: no takeover window
// covers it) is not sent again.
func TestKeysKnownAcrossNodes(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	a, stopA := r.start(cfgA)
	waitFor(t, 20*time.Second, "node a", a.Ready)
	accepted := webhookBatch(100, 0)
	if _, _, err := a.Ingest(context.Background(), accepted, time.Now()); err != nil {
		t.Fatal(err)
	}
	sent := webhookBatch(100, 100)
	r.enqueue(sent...)
	want := int64(len(accepted) + len(sent))
	waitFor(t, 30*time.Second, "a's sends", func() bool { return r.mock.Stats().Unique == want })
	waitFor(t, 30*time.Second, "a's commits", func() bool { return a.Backlog() == 0 })
	stopA()

	b, regB, stopB := r.startNode("b", ddB, stB)
	defer stopB()

	// The same requests again, at b (their keys come from their content).
	adm, n, err := b.Ingest(context.Background(), webhookBatch(100, 0), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i, ad := range adm {
		if !ad.Duplicate || ad.ID != accepted[i].ID {
			t.Fatalf("request %d repeated at b: %+v, want a duplicate of %s", i, ad, accepted[i].ID)
		}
	}
	if n != 0 {
		t.Fatalf("b accepted %d repeated requests", n)
	}
	// Records repeating the keys a sent reach b's partitions.
	r.enqueue(webhookBatch(100, 100)...)
	waitFor(t, 30*time.Second, "the repeats to be found duplicates", func() bool {
		return counterSum(t, regB, "goutong_duplicates_total") == float64(len(sent))
	})
	time.Sleep(500 * time.Millisecond) // anything b would send again, it has sent by now
	if s := r.mock.Stats(); s.Received != want || s.Unique != want {
		t.Fatalf("provider received %d, %d unique, want %d once each", s.Received, s.Unique, want)
	}
	if got := counterSum(t, regB, "goutong_dedupe_remembered_total"); got != float64(2*len(accepted)+len(sent)) {
		t.Fatalf("b remembered %v keys, want %d (a's accepted and sent)", got, 2*len(accepted)+len(sent))
	}
}

// startNode starts a Kafka node (NodeID node) on r's channels with stores
// of its own and a registry to read its metrics from, and waits until it
// is ready.
func (r *rig) startNode(node string, dd *dedupe.Store, st *engine.StatusStore) (*engine.Engine, *prometheus.Registry, func()) {
	cfg, reg := r.nodeConfig(node)
	cfg.Dedupe, cfg.Status = dd, st
	e, stop := r.start(cfg)
	waitFor(r.t, 30*time.Second, "node "+node, e.Ready)
	return e, reg, stop
}

// nodeConfig is the config of a Kafka node named node, on the rig's stores,
// with a registry of its own.
func (r *rig) nodeConfig(node string) (engine.Config, *prometheus.Registry) {
	cfg := r.config(r.channels(false))
	reg := prometheus.NewRegistry()
	cfg.NodeID, cfg.Registry = node, reg
	return cfg, reg
}

// A new node started from another node's snapshot knows what that node's
// stores knew (ids and keys, however old: the status topic's retention may
// have dropped their events), and its status replica reads the status
// topic only from where the snapshot was taken.
func TestNodeStartsFromASnapshot(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	a, stopA := r.start(cfgA)
	defer stopA()
	waitFor(t, 20*time.Second, "node a", a.Ready)
	before := webhookBatch(100, 0)
	if _, _, err := a.Ingest(context.Background(), before, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a's sends", func() bool { return r.mock.Stats().Unique == 100 })
	waitFor(t, 30*time.Second, "a's commits", func() bool { return a.Backlog() == 0 })

	dir := filepath.Join(t.TempDir(), "snapshot")
	if err := a.Snapshot(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if err := a.Snapshot(context.Background(), dir); err == nil {
		t.Fatal("a second snapshot into the same directory succeeded")
	}
	after := webhookBatch(50, 100)
	if _, _, err := a.Ingest(context.Background(), after, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a's later sends", func() bool { return r.mock.Stats().Unique == 150 })
	waitFor(t, 30*time.Second, "a's later commits", func() bool { return a.Backlog() == 0 }) // their events produced

	dd, err := dedupe.Open(filepath.Join(dir, engine.SnapshotDedupeDir), dedupe.WithSync(false))
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Close()
	st, err := engine.OpenStatus(filepath.Join(dir, engine.SnapshotStatusDir), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, regB, stopB := r.startNode("b", dd, st)
	defer stopB()

	// Both batches are known at b: the first from the copy, the second
	// from the events b's replica read.
	for _, batch := range [][]*notification.Notification{before, after} {
		for _, n := range batch[:3] {
			if s, err := b.Status(n.ID); err != nil || s.State != engine.StateSent {
				t.Fatalf("%s at b: %+v, %v; want sent", n.ID, s, err)
			}
		}
	}
	adm, n, err := b.Ingest(context.Background(), append(webhookBatch(100, 0), webhookBatch(50, 100)...), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("b accepted %d repeated requests", n)
	}
	for i, ad := range adm {
		if want := append(before, after...)[i].ID; !ad.Duplicate || ad.ID != want {
			t.Fatalf("request %d repeated at b: %+v, want a duplicate of %s", i, ad, want)
		}
	}
	// b's replica read only what came after the snapshot: the later batch's
	// keys (accepted and sent), none of the first's. A rebalance of b's
	// replica group before its first commit reads some of them again (from
	// the seeded offsets); reading from the topic's start would count at
	// least every key of both batches.
	if got := counterSum(t, regB, "goutong_dedupe_remembered_total"); got < float64(2*len(after)) || got >= float64(2*(len(before)+len(after))) {
		t.Fatalf("b remembered %v keys from the status topic, want the later batch's %d (and repeats of them), not both batches' %d",
			got, 2*len(after), 2*(len(before)+len(after)))
	}
}

// A node without a status replica takes no snapshot.
func TestSnapshotNeedsAReplica(t *testing.T) {
	r := newRig(t, backends[0])
	e, stop := r.start(r.config(r.channels(false)))
	defer stop()
	if err := e.Snapshot(context.Background(), filepath.Join(t.TempDir(), "s")); !errors.Is(err, engine.ErrNoSnapshot) {
		t.Fatalf("snapshot on the embedded log: %v", err)
	}
}

// A node that parked scheduled notifications and died before committing
// them leaves a parked copy of each (and here, of a second notification
// with each one's key), and the nodes that take over its
// partitions read the originals again and hold copies of their own. The
// copies come due at the same instant, often on two nodes, each with its
// own dedupe store, unless every copy waits for its time in one place:
// the shortest hop's topic, keyed by its id.
func TestFailoverParkedSentOnce(t *testing.T) {
	// Round robin over every topic's partitions, so that a partition of
	// one parking topic and the same partition of another are on
	// different nodes, as sticky rebalances leave them after a node dies.
	r := newRig(t, backend{"kafka-round-robin", func(t testing.TB, _ string) func(partition.ConsumerConfig) (partition.Log, error) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return func(cc partition.ConsumerConfig) (partition.Log, error) {
			return partition.NewKafka(partition.KafkaConfig{Brokers: c.ListenAddrs(), SessionTimeout: 6 * time.Second,
				Extra: []kgo.Opt{kgo.Balancers(kgo.RoundRobinBalancer())}}, cc)
		}
	}})
	tiers := []engine.ParkTier{{Hop: 100 * time.Millisecond, Suffix: "s", Retention: time.Hour},
		{Hop: 500 * time.Millisecond, Suffix: "m", Retention: time.Hour}, {Hop: 2 * time.Second, Suffix: "l", Retention: time.Hour}}
	config := func(node string, reg *prometheus.Registry) engine.Config {
		cfg := r.config(r.channels(false))
		cfg.NodeID, cfg.Registry, cfg.Topics = node, reg, r.topics
		cfg.Topics.ParkTiers = tiers
		return cfg
	}
	var lose atomic.Bool
	regA := prometheus.NewRegistry()
	cfgA := config("a", regA)
	wrapLogs(&cfgA, func(l partition.Log) partition.Log { return freezableCommits{l, &lose} })
	a, stopA := r.start(cfgA)
	waitFor(t, 20*time.Second, "node a", a.Ready)
	lose.Store(true)
	// Each twice, as two nodes accept a request retried at the second
	// within the replica's lag: one key, two ids.
	scheduled, again := webhookBatch(400, 0), webhookBatch(400, 0)
	due := time.Now().Add(10300 * time.Millisecond)
	for i := range scheduled {
		scheduled[i].NotBefore, again[i].NotBefore = due, due
	}
	r.enqueue(scheduled...)
	r.enqueue(again...)
	waitFor(t, 10*time.Second, "a to park them", func() bool {
		return counterSum(t, regA, "goutong_parked_total") >= float64(len(scheduled)+len(again))
	})
	stopA()
	// A send takes a while at the provider, as real ones do: a copy due at
	// the same instant on another node claims its key before the first
	// send's event can tell that node.
	r.mock.SetFaults(mockserver.Faults{LatencyMin: mockserver.Duration(300 * time.Millisecond), LatencyMax: mockserver.Duration(300 * time.Millisecond)})

	var regs []*prometheus.Registry
	for _, node := range []string{"b", "c", "d"} {
		dd, st := r.nodeStores(node)
		regs = append(regs, prometheus.NewRegistry())
		cfg := config(node, regs[len(regs)-1])
		cfg.Dedupe, cfg.Status = dd, st
		e, stop := r.start(cfg)
		defer stop()
		waitFor(t, 30*time.Second, "node "+node, e.Ready)
	}
	want := int64(len(scheduled))
	waitFor(t, 30*time.Second, "the scheduled sends", func() bool { return r.mock.Stats().Unique >= want })
	time.Sleep(time.Second) // anything sent twice, it is by now
	if s := r.mock.Stats(); s.Received != want {
		t.Fatalf("provider received %d, %d unique ids, for %d keys", s.Received, s.Unique, want)
	}
	// Each partition's lag is shown by the node that has it, and by no node
	// it left when the others joined.
	lane := r.topics.Lane(notification.Normal)
	waitFor(t, 10*time.Second, "one lag series a partition", func() bool {
		n := 0
		for _, reg := range regs {
			n += len(seriesOf(t, reg, "goutong_consumer_lag", "topic", lane))
		}
		return n == 4
	})
}
