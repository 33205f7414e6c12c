package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/partition/logtest"
)

// A request whose records the log writes in part is answered as such
// (PartlyWrittenError, not "nothing accepted"), and a resend of it answers
// the written notifications as duplicates of their ids and accepts the
// others: each is sent once, under the id the client holds. Before, every
// claim was released, and the resend accepted the written ones again under
// new ids, whose copies ended as duplicates at their sends. An accepted
// event written for a notification that was not stays out of the status
// store, and a withdrawn event follows it.
func TestIngestPartlyWritten(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			cfg := r.config(r.channels(false))
			// Four notifications: a is written whole; b's record is lost and
			// its accepted event written; c loses both; d loses its event.
			ids := map[string]string{}
			for _, n := range []string{"a", "b", "c", "d"} {
				ids[n] = ulid.Make().String()
			}
			lose := func(rec *partition.Record) bool {
				switch string(rec.Key) {
				case "key-b", "key-c", ids["c"], ids["d"]:
					return true
				}
				return false
			}
			calls := new(atomic.Int64)
			wrapLogs(&cfg, func(l partition.Log) partition.Log { return logtest.PartialProduce{Log: l, Lose: lose, Calls: calls} })
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			batch := func() []*notification.Notification {
				var ns []*notification.Notification
				for _, n := range []string{"a", "b", "c", "d"} {
					ns = append(ns, &notification.Notification{ID: ids[n], Channel: notification.Webhook, Tenant: "acme",
						Recipient: "https://hooks.example/" + n, Content: &notification.Content{Body: `{"n":"` + n + `"}`}, IdempotencyKey: "key-" + n})
				}
				return ns
			}
			_, _, err := e.Ingest(context.Background(), batch(), time.Now())
			var pw *engine.PartlyWrittenError
			if !errors.As(err, &pw) || pw.Written != 2 || pw.Of != 4 || !errors.Is(err, engine.ErrUnavailable) {
				t.Fatalf("Ingest = %v, want a PartlyWrittenError of 2 written of 4", err)
			}
			// b's accepted event is on the status topic; the store has only
			// the withdrawn event that follows it. c's was not written.
			if st, err := e.Status(ids["b"]); err != nil || st.State != engine.StateWithdrawn || len(st.History) != 1 {
				t.Fatalf("b, never written, has status %+v (%v), want its withdrawn event alone", st, err)
			}
			if st, err := e.Status(ids["c"]); !errors.Is(err, engine.ErrNotFound) {
				t.Fatalf("c, never written, has status %+v (%v)", st, err)
			}
			// d's accepted event, refused with the write, is written after it.
			if st, err := e.Status(ids["d"]); err != nil || st.History[0].State != engine.StateAccepted {
				t.Fatalf("d, written without its accepted event, has status %+v (%v), want its history to start accepted", st, err)
			}
			adm, n, err := e.Ingest(context.Background(), batch(), time.Now())
			if err != nil || n != 2 {
				t.Fatalf("resend: %+v (%d accepted), %v; want b and c accepted", adm, n, err)
			}
			for i, name := range []string{"a", "b", "c", "d"} {
				dup := name == "a" || name == "d"
				if adm[i].ID != ids[name] || adm[i].Duplicate != dup {
					t.Fatalf("resend's %s: %+v, want id %s, duplicate %v", name, adm[i], ids[name], dup)
				}
			}
			waitFor(t, 20*time.Second, "the sends", func() bool { return r.mock.Stats().Received >= 4 })
			for _, name := range []string{"a", "b", "c", "d"} {
				waitFor(t, 20*time.Second, name+" sent", func() bool {
					st, err := e.Status(ids[name])
					return err == nil && st.State == engine.StateSent
				})
			}
			time.Sleep(500 * time.Millisecond) // a further send, if any, has arrived
			if got := r.mock.Stats(); got.Received != 4 || got.Unique != 4 {
				t.Fatalf("provider received %d sends (%d unique), want 4", got.Received, got.Unique)
			}
		})
	}
}

// A flush of outcomes (the sent events of a batch) that the log writes in
// part is retried with what was not written only: every event is on the
// status topic once. Retrying the whole flush wrote the others twice (and
// would write a retry record twice: two attempts; a dead letter twice: two
// replays).
func TestFlushRetriesOnlyWhatWasNotWritten(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			cfg := r.config(r.channels(false))
			const n = 10
			ns := make([]*notification.Notification, n)
			for i := range ns {
				ns[i] = &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
					Recipient: recipient(notification.Webhook, i), Content: &notification.Content{Body: `{"n":1}`}}
			}
			lost := ns[3].ID
			lose := func(rec *partition.Record) bool {
				return rec.Topic == r.topics.Status && string(rec.Key) == lost && bytes.Contains(rec.Value, []byte(`"state":"sent"`))
			}
			calls, partial := new(atomic.Int64), new(atomic.Bool)
			wrapLogs(&cfg, func(l partition.Log) partition.Log {
				return logtest.PartialProduce{Log: l, Lose: lose, Calls: calls, Partial: partial}
			})
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			if _, _, err := e.Ingest(context.Background(), ns, time.Now()); err != nil {
				t.Fatal(err)
			}
			for _, nt := range ns {
				waitFor(t, 20*time.Second, "sent", func() bool {
					st, err := e.Status(nt.ID)
					return err == nil && st.State == engine.StateSent
				})
			}
			if !partial.Load() {
				t.Skip("the lost event was flushed alone: no partial write to retry")
			}
			l, err := r.open(partition.ConsumerConfig{Group: "count", Topics: []string{r.topics.Status}})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			recs := readRecords(t, l, 2*n, "status events")
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			more, _ := l.Poll(ctx, 100) // any written twice
			cancel()
			seen := map[string]int{}
			for _, rec := range append(recs, more...) {
				var ev engine.StatusEvent
				if err := json.Unmarshal(rec.Value, &ev); err != nil {
					t.Fatal(err)
				}
				seen[string(ev.State)+" "+ev.ID]++
			}
			for _, nt := range ns {
				for _, st := range []string{"accepted", "sent"} {
					if c := seen[st+" "+nt.ID]; c != 1 {
						t.Fatalf("%s of %s on the status topic %d times, want once (%d events in all)", st, nt.ID, c, len(recs)+len(more))
					}
				}
			}
		})
	}
}

// A replay of dead letters whose copy to the lanes the log writes in part
// writes the rest after, each letter once in the lanes, and commits.
func TestReplayWritesTheRestAfterAPartialWrite(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			prod, err := r.open(partition.ConsumerConfig{})
			if err != nil {
				t.Fatal(err)
			}
			defer prod.Close()
			if err := prod.EnsureTopics(context.Background(), r.topics.Specs(4)...); err != nil {
				t.Fatal(err)
			}
			const n = 20
			letters := make([]partition.Record, n)
			for i := range letters {
				nt := &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
					Recipient: recipient(notification.Webhook, i), Content: &notification.Content{Body: `{"n":1}`}}
				nt.Prepare(time.Now())
				letters[i] = partition.Record{Topic: r.topics.DLQ, Key: []byte(nt.ID), Value: r.codec.Encode(nt),
					Headers: []partition.Header{{Key: engine.HeaderReason, Value: []byte("permanent")}}}
			}
			if err := prod.Produce(context.Background(), letters); err != nil {
				t.Fatal(err)
			}
			lost := letters[3].Key
			dlq, err := r.open(partition.ConsumerConfig{Group: "replay", Topics: []string{r.topics.DLQ}})
			if err != nil {
				t.Fatal(err)
			}
			defer dlq.Close()
			calls, partial := new(atomic.Int64), new(atomic.Bool)
			lossy := logtest.PartialProduce{Log: dlq, Calls: calls, Partial: partial, Lose: func(rec *partition.Record) bool {
				return rec.Topic != r.topics.DLQ && bytes.Contains(rec.Value, lost)
			}}
			rep, err := engine.ReplayDeadLetters(context.Background(), lossy, r.topics, r.codec, nil)
			if err != nil || rep.Replayed != n || !partial.Load() {
				t.Fatalf("replay: %+v, %v (a partial write: %v)", rep, err, partial.Load())
			}
			var lanes []string
			for _, p := range []notification.Priority{notification.Critical, notification.High, notification.Normal, notification.Bulk} {
				lanes = append(lanes, r.topics.Lane(p))
			}
			read, err := r.open(partition.ConsumerConfig{Group: "count", Topics: lanes})
			if err != nil {
				t.Fatal(err)
			}
			defer read.Close()
			recs := readRecords(t, read, n, "replayed letters")
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			more, _ := read.Poll(ctx, 100) // any written twice
			cancel()
			if len(recs)+len(more) != n {
				t.Fatalf("%d records in the lanes for %d letters", len(recs)+len(more), n)
			}
		})
	}
}

// The accepted event of a notification whose record the log failed to
// write is on the status topic, and another node's replica copied its key
// into that node's dedupe store: a resend of the request reaching that
// node was answered as a duplicate of a notification never to be sent,
// and was lost. The withdrawn event that follows it drops the key there
// again (and ends the id's history), so the resend is accepted and sent.
// A notification written without its accepted event gets it written
// after, so the other node answers its resend as a duplicate of its id.
func TestPartlyWrittenResentAtAnotherNode(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	cfgA := r.config(r.channels(false))
	cfgA.NodeID = "a"
	var late string // the id of the notification whose accepted event is lost
	lose := func(rec *partition.Record) bool {
		return string(rec.Key) == "key-lost" || // its lane record only
			rec.Topic == r.topics.Status && string(rec.Key) == late
	}
	calls := new(atomic.Int64)
	wrapLogs(&cfgA, func(l partition.Log) partition.Log { return logtest.PartialProduce{Log: l, Lose: lose, Calls: calls} })
	a, stopA := r.start(cfgA)
	defer stopA()
	waitFor(t, 20*time.Second, "node a", a.Ready)
	b, regB, stopB := r.startNode("b", ddB, stB)
	defer stopB()

	// A resend through the API mints new ids; so does this one.
	request := func() []*notification.Notification {
		var ns []*notification.Notification
		for _, name := range []string{"kept", "lost", "late"} {
			ns = append(ns, &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
				Recipient: "https://hooks.example/" + name, Content: &notification.Content{Body: `{"n":"` + name + `"}`}, IdempotencyKey: "key-" + name})
		}
		return ns
	}
	first := request()
	late = first[2].ID
	_, _, err := a.Ingest(context.Background(), first, time.Now())
	var pw *engine.PartlyWrittenError
	if !errors.As(err, &pw) || pw.Written != 2 {
		t.Fatalf("Ingest at a = %v, want a PartlyWrittenError of 2 written", err)
	}
	kept, lost := first[0].ID, first[1].ID
	for _, e := range []*engine.Engine{a, b} {
		waitFor(t, 20*time.Second, "the lost notification withdrawn", func() bool {
			st, err := e.Status(lost)
			return err == nil && st.State == engine.StateWithdrawn
		})
	}
	// b knows the two accepted events (late's written after the write in
	// part, maybe after its sent event).
	for _, id := range []string{kept, late} {
		waitFor(t, 20*time.Second, "b to know "+id+" accepted", func() bool {
			st, err := b.Status(id)
			return err == nil && slices.ContainsFunc(st.History, func(ev engine.StatusEvent) bool { return ev.State == engine.StateAccepted })
		})
	}
	if got := counterSum(t, regB, "goutong_dedupe_forgotten_total"); got != 1 {
		t.Fatalf("b forgot %v keys, want 1 (the lost notification's)", got)
	}

	resend := request()
	adm, n, err := b.Ingest(context.Background(), resend, time.Now())
	if err != nil || n != 1 {
		t.Fatalf("resend at b: %+v (%d accepted), %v; want the lost one accepted", adm, n, err)
	}
	if !adm[0].Duplicate || adm[0].ID != kept {
		t.Fatalf("resend's kept notification: %+v, want a duplicate of %s", adm[0], kept)
	}
	if adm[1].Duplicate || adm[1].ID != resend[1].ID {
		t.Fatalf("resend's lost notification: %+v, want accepted as %s (not a duplicate of %s, which will never be sent)", adm[1], resend[1].ID, lost)
	}
	if !adm[2].Duplicate || adm[2].ID != late {
		t.Fatalf("resend's notification written without its accepted event: %+v, want a duplicate of %s", adm[2], late)
	}
	for _, id := range []string{kept, resend[1].ID, late} {
		waitFor(t, 30*time.Second, id+" sent", func() bool {
			for _, e := range []*engine.Engine{a, b} {
				if st, err := e.Status(id); err == nil && st.State == engine.StateSent {
					return true
				}
			}
			return false
		})
	}
	time.Sleep(500 * time.Millisecond) // a further send, if any, has arrived
	if got := r.mock.Stats(); got.Received != 3 || got.Unique != 3 {
		t.Fatalf("provider received %d sends (%d unique), want 3", got.Received, got.Unique)
	}
}

// refusedWithdrawals is a Log refusing the first refuse produces that
// hold a withdrawn event.
type refusedWithdrawals struct {
	partition.Log
	refuse *atomic.Int64
}

func (l refusedWithdrawals) Produce(ctx context.Context, recs []partition.Record) error {
	for _, r := range recs {
		if bytes.Contains(r.Value, []byte(`"state":"withdrawn"`)) && l.refuse.Add(-1) >= 0 {
			return errors.New("refused: the status topic's partition is down too")
		}
	}
	return l.Log.Produce(ctx, recs)
}

// The withdrawn event is tried again when the log refuses it, and counted
// as failed (and logged) once 5 tries were refused.
func TestWithdrawalTriedAgain(t *testing.T) {
	for _, c := range []struct {
		refused           int64
		produced, failed  float64
		storeHasWithdrawn bool
	}{{refused: 2, produced: 1, storeHasWithdrawn: true}, {refused: 5, failed: 1}} {
		t.Run(fmt.Sprint(c.refused, "-refused"), func(t *testing.T) {
			r := newRig(t, backends[0])
			cfg := r.config(r.channels(false))
			reg := prometheus.NewRegistry()
			cfg.Registry = reg
			lose := func(rec *partition.Record) bool { return string(rec.Key) == "key-lost" }
			refuse := new(atomic.Int64)
			refuse.Store(c.refused)
			calls := new(atomic.Int64)
			wrapLogs(&cfg, func(l partition.Log) partition.Log {
				return logtest.PartialProduce{Log: refusedWithdrawals{Log: l, refuse: refuse}, Lose: lose, Calls: calls}
			})
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			lost := &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
				Recipient: "https://hooks.example/lost", Content: &notification.Content{Body: `{}`}, IdempotencyKey: "key-lost"}
			kept := &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
				Recipient: "https://hooks.example/kept", Content: &notification.Content{Body: `{}`}, IdempotencyKey: "key-kept"}
			if _, _, err := e.Ingest(context.Background(), []*notification.Notification{kept, lost}, time.Now()); !errors.Is(err, engine.ErrUnavailable) {
				t.Fatalf("Ingest = %v, want a write in part", err)
			}
			for result, want := range map[string]float64{"produced": c.produced, "failed": c.failed} {
				if got := counterWith(t, reg, "goutong_ingest_mended_events_total", map[string]string{"state": "withdrawn", "result": result}); got != want {
					t.Fatalf("withdrawn %s: %v, want %v", result, got, want)
				}
			}
			st, err := e.Status(lost.ID)
			if got := err == nil && st.State == engine.StateWithdrawn; got != c.storeHasWithdrawn {
				t.Fatalf("the lost notification's status: %+v (%v), want withdrawn %v", st, err, c.storeHasWithdrawn)
			}
		})
	}
}
