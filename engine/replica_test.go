package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// Two nodes on one Kafka cluster, each with its own stores: whichever node
// accepted or sent a notification, both answer for its whole history (the
// status store follows the status topic) and both match its receipt.
func TestStatusReplicaAcrossNodes(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	cfgB := r.config(r.channels(false))
	cfgB.NodeID, cfgB.Dedupe, cfgB.Status, cfgB.Registry = "b", ddB, stB, nil
	a, stopA := r.start(cfgA)
	defer stopA()
	b, stopB := r.start(cfgB)
	defer stopB()
	waitFor(t, 20*time.Second, "both nodes", func() bool { return a.Ready() && b.Ready() })

	ns := webhookBatch(200, 0)
	if _, _, err := a.Ingest(context.Background(), ns, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every send", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
	for name, node := range map[string]*engine.Engine{"a": a, "b": b} {
		waitFor(t, 30*time.Second, "node "+name+" to know every notification as sent", func() bool {
			for _, n := range ns {
				st, err := node.Status(n.ID)
				if err != nil || st.State != engine.StateSent || st.History[0].State != engine.StateAccepted {
					return false
				}
			}
			return true
		})
	}
	// The history holds each event once, though a node's own events come
	// back to it through the topic.
	for _, n := range ns {
		st, err := b.Status(n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.History) != 2 {
			t.Fatalf("%s on b: history %+v", n.ID, st.History)
		}
	}
	// Receipts for all of them, at b: none unknown, whichever node sent it.
	rs := make([]providers.Receipt, len(ns))
	for i, n := range ns {
		rs[i] = providers.Receipt{ID: n.ID, Delivered: true, Final: true, At: time.Now()}
	}
	applied, unknown, err := b.ApplyReceipts(context.Background(), "webhook", rs)
	if err != nil || applied != len(ns) || len(unknown) != 0 {
		t.Fatalf("receipts at b: applied %d, unknown %d, %v", applied, len(unknown), err)
	}
	waitFor(t, 30*time.Second, "a to see b's receipts", func() bool {
		for _, n := range ns {
			if st, err := a.Status(n.ID); err != nil || st.State != engine.StateDelivered {
				return false
			}
		}
		return true
	})
}

// nodeStores opens a second node's own dedupe and status stores, closed
// when the test ends (after its engine: cleanups run last first).
func (r *rig) nodeStores(node string) (*dedupe.Store, *engine.StatusStore) {
	t := r.t
	dd, err := dedupe.Open(filepath.Join(r.dir, "dedupe-"+node), dedupe.WithCreate(), dedupe.WithSync(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dd.Close() })
	st, err := engine.OpenStatus(filepath.Join(r.dir, "status-"+node), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return dd, st
}

// BenchmarkStatusReplica measures a node's status replica reading another
// node's events (an accepted and a sent event a notification): decoding,
// applying, and, in "keyed", copying their idempotency keys into the
// dedupe store; "unkeyed" is the same events without keys (as a node
// without a NodeID writes them), the replica's cost before the keys.
func BenchmarkStatusReplica(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		name := map[bool]string{false: "unkeyed", true: "keyed"}[keyed]
		b.Run(name, func(b *testing.B) {
			r := newRig(b, backends[0])
			recs := make([]partition.Record, 0, 5000)
			now := time.Now().UTC()
			last := map[int32]string{} // the last notification on each partition of the status topic
			for i := range b.N {
				id := notification.NewID()
				for _, st := range []engine.StatusEvent{
					{State: engine.StateAccepted, At: now},
					{State: engine.StateSent, At: now.Add(time.Millisecond), Attempts: 1, Provider: "webhook"},
				} {
					st.EventID, st.ID, st.Tenant, st.Channel, st.Priority = notification.NewID(), id, "acme", "webhook", "normal"
					if keyed {
						st.Node, st.IdempotencyKey = "a", fmt.Sprintf("order-%d-%d", now.UnixNano(), i)
					}
					v, err := json.Marshal(&st)
					if err != nil {
						b.Fatal(err)
					}
					recs = append(recs, partition.Record{Topic: r.topics.Status, Key: []byte(id), Value: v})
				}
				if len(recs) == cap(recs) || i == b.N-1 {
					if err := r.prod.Produce(context.Background(), recs); err != nil {
						b.Fatal(err)
					}
					for _, rec := range recs {
						last[rec.Partition] = string(rec.Key)
					}
					recs = recs[:0]
				}
			}
			cfg := r.config(r.channels(false))
			cfg.NodeID = "b"
			b.ResetTimer()
			cpu := processCPU()
			_, stop := r.start(cfg)
			waitFor(b, 5*time.Minute, "the replica", func() bool {
				for _, id := range last {
					if st, err := r.status.Get(id); err != nil || st.State != engine.StateSent {
						return false
					}
				}
				return true
			})
			b.StopTimer()
			cpu = processCPU() - cpu
			stop()
			if got, want := r.dd.Metrics().Remembered, int64(map[bool]int{true: 2 * b.N}[keyed]); got != want {
				b.Fatalf("remembered %d keys, want %d", got, want)
			}
			b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/notification")
		})
	}
}

// failingPolls is a Log whose Poll fails while fail is above zero,
// counting it down.
type failingPolls struct {
	partition.Log
	fail *atomic.Int64
}

func (l failingPolls) Poll(ctx context.Context, max int) ([]partition.Record, error) {
	if l.fail.Add(-1) >= 0 {
		return nil, errors.New("failing: fetch refused")
	}
	return l.Log.Poll(ctx, max)
}

// A failed poll of the status topic does not end the status replica: the
// node still catches up with another node's events (and so becomes
// ready), and copies their keys.
func TestStatusReplicaRidesOutPollErrors(t *testing.T) {
	r := newRig(t, backends[0])
	ids := produceSentEvents(t, r, 100, "a")
	last := ids[len(ids)-1]
	var fail atomic.Int64
	fail.Store(3)
	cfg := r.config(r.channels(false))
	cfg.NodeID = "b"
	wrapLogsOf(&cfg, replicaGroup, func(l partition.Log) partition.Log { return failingPolls{l, &fail} })
	e, stop := r.start(cfg)
	defer stop()
	waitFor(t, 30*time.Second, "the node to be ready", e.Ready)
	if st, err := r.status.Get(last); err != nil || st.State != engine.StateSent {
		t.Fatalf("the other node's last event: %+v, %v", st, err)
	}
	if got := counterSum(t, r.reg, "goutong_status_replica_errors_total"); got != 3 {
		t.Fatalf("goutong_status_replica_errors_total %v, want 3", got)
	}
	if got := r.dd.Metrics().Remembered; got != 100 {
		t.Fatalf("remembered %d keys, want 100", got)
	}
}

// After a failed write of its own events to the store (which its replica
// skips, counting on that write), the replica reads the status topic again
// from its last checkpoint and skips nothing more: every event is in the
// store.
func TestStatusReplicaRewindsAfterAFailedOwnWrite(t *testing.T) {
	r := newRig(t, backends[0])
	cfg := r.config(r.channels(false))
	cfg.NodeID = "n1"
	cfg.StatusCheckpointInterval = 20 * time.Millisecond
	e, stop := r.start(cfg)
	defer stop()
	waitFor(t, 20*time.Second, "the engine", e.Ready)
	first := webhookBatch(300, 0)
	if _, _, err := e.Ingest(context.Background(), first, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the first batch sent", func() bool { return allSent(r.status, first) })
	// The failed write's events come after it on the topic: the replica
	// reads again at its first checkpoint with records.
	engine.FailOwnApply(e)
	second := webhookBatch(300, 300)
	if _, _, err := e.Ingest(context.Background(), second, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the replica to read again", func() bool {
		return counterSum(t, r.reg, "goutong_status_replica_rewinds_total") == 1
	})
	waitFor(t, 30*time.Second, "the second batch sent", func() bool { return allSent(r.status, second) })
	time.Sleep(200 * time.Millisecond) // ten checkpoint intervals: a second rewind would have come
	if got := counterSum(t, r.reg, "goutong_status_replica_rewinds_total"); got != 1 {
		t.Fatalf("goutong_status_replica_rewinds_total %v, want 1", got)
	}
	for _, n := range append(first, second...) {
		st, err := r.status.Get(n.ID)
		if err != nil || len(st.History) != 2 {
			t.Fatalf("%s: %+v, %v; want its accepted and sent events once each", n.ID, st.History, err)
		}
	}
}

// Two processes run with one node id: each status replica is assigned part
// of the status topic. Each notices, says so, and stops skipping "its own"
// events (half of them the other's, which skipping would lose).
func TestSharedNodeIDStopsSkipping(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake): one group, two members
	dd2, st2 := r.nodeStores("2")
	cfg := r.config(r.channels(false))
	cfg.NodeID, cfg.NodeIDSharedAfter, cfg.StatusCheckpointInterval = "n1", 200*time.Millisecond, 50*time.Millisecond
	cfg2 := cfg
	reg2 := prometheus.NewRegistry()
	cfg2.Dedupe, cfg2.Status, cfg2.Registry = dd2, st2, reg2
	e1, stop1 := r.start(cfg)
	defer stop1()
	e2, stop2 := r.start(cfg2)
	defer stop2()
	waitFor(t, 40*time.Second, "both nodes", func() bool { return e1.Ready() && e2.Ready() })
	ns := webhookBatch(200, 0)
	if _, _, err := e1.Ingest(context.Background(), ns, time.Now()); err != nil {
		t.Fatal(err)
	}
	for name, reg := range map[string]*prometheus.Registry{"first": r.reg, "second": reg2} {
		waitFor(t, 30*time.Second, "the "+name+" to notice and read again", func() bool {
			return gaugeOf(t, reg, "goutong_status_replica_node_id_shared", "", "") == 1 &&
				counterSum(t, reg, "goutong_status_replica_rewinds_total") >= 1
		})
	}
}

// slowPolls is a Log whose polls each take a while: a status replica with
// a long backfill ahead of it.
type slowPolls struct {
	partition.Log
	delay time.Duration
}

func (l slowPolls) Poll(ctx context.Context, max int) ([]partition.Record, error) {
	recs, err := l.Log.Poll(ctx, max)
	time.Sleep(l.delay) // after: a poll's own deadline may be shorter
	return recs, err
}

// A node whose status replica is still backfilling the status topic does
// not join the group: the node already there keeps every partition, and a
// code goes out at once. Once the replica has read what the topic held,
// the new node joins and is given partitions.
func TestNewNodeJoinsAfterItsBackfill(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddNew, stNew := r.nodeStores("new")
	cfgOld := r.config(r.channels(false))
	cfgOld.NodeID = "old"
	old, stopOld := r.start(cfgOld)
	defer stopOld()
	waitFor(t, 20*time.Second, "the old node", old.Ready)
	produceSentEvents(t, r, 3_000, "gone")
	cfg := r.config(r.channels(false))
	regNew := prometheus.NewRegistry()
	cfg.NodeID, cfg.Dedupe, cfg.Status, cfg.Registry = "new", ddNew, stNew, regNew
	cfg.StatusCheckpointInterval = 200 * time.Millisecond // and the replica's lag measured as often
	// 1,000 events a second: 3 s of backfill.
	wrapLogsOf(&cfg, replicaGroup, func(l partition.Log) partition.Log { return slowPolls{l, time.Second} })
	open := cfg.Open
	var lanes atomic.Pointer[partition.Log] // the new node's member of the engine's group
	cfg.Open = func(cc partition.ConsumerConfig) (partition.Log, error) {
		l, err := open(cc)
		if err == nil && cc.Group == "goutong-engine" {
			lanes.Store(&l)
		}
		return l, err
	}
	e, stop := r.start(cfg)
	defer stop()
	assigned := func() bool { l := lanes.Load(); return l != nil && len((*l).Assigned()) > 0 }
	codes := webhookBatch(20, 0) // on several partitions
	r.enqueue(codes...)
	waitFor(t, 2*time.Second, "the codes sent while the new node backfills", func() bool {
		return r.mock.Stats().Unique == int64(len(codes))
	})
	sawLag := false
	for !e.Ready() {
		if assigned() {
			t.Fatal("the new node was given partitions before its replica caught up")
		}
		sawLag = sawLag || gaugeOf(t, regNew, "goutong_status_replica_lag", "", "") > 0
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, 20*time.Second, "the new node to be given partitions", assigned)
	if !sawLag {
		t.Fatal("goutong_status_replica_lag never showed the backfill")
	}
	waitFor(t, 20*time.Second, "the replica's lag to read 0", func() bool {
		return gaugeOf(t, regNew, "goutong_status_replica_lag", "", "") == 0
	})
}

// produceSentEvents produces n notifications' sent events from another
// node to the status topic, each with a key of its own, and returns their
// ids in order.
func produceSentEvents(t testing.TB, r *rig, n int, node string) []string {
	t.Helper()
	now := time.Now().UTC()
	recs := make([]partition.Record, 0, n)
	ids := make([]string, 0, n)
	for i := range n {
		id := notification.NewID()
		v, err := json.Marshal(&engine.StatusEvent{EventID: notification.NewID(), ID: id, State: engine.StateSent, At: now,
			Tenant: "acme", Channel: "webhook", Priority: "normal", Attempts: 1, Provider: "webhook", Node: node,
			IdempotencyKey: fmt.Sprint("k-", i)})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, partition.Record{Topic: r.topics.Status, Key: []byte(id), Value: v})
		ids = append(ids, id)
	}
	if err := r.prod.Produce(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	return ids
}
