package engine_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
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
