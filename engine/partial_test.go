package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
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

// On nodes among several, an Ingest's accepted events go to the status
// topic after their records, and only for the records written: another
// node's replica copies an accepted event's key into its dedupe store and
// answers a resend as its duplicate, so the event of a record never written
// lost the notification. (Until 2026-11-27 they were written together, and
// a withdrawn event followed such an event, which left a node dying before
// writing it and a replica lagging between the two.) Here node a's log
// loses one lane record of a request: that notification has no event on
// either node, the others' accepted events are written after the write in
// part, and a resend reaching node b accepts the lost one and answers the
// others as duplicates of their ids.
func TestPartlyWrittenResentAtAnotherNode(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	cfgA, regA := r.nodeConfig("a")
	lose := func(rec *partition.Record) bool { return string(rec.Key) == "key-lost" } // its lane record
	calls := new(atomic.Int64)
	wrapLogs(&cfgA, func(l partition.Log) partition.Log { return logtest.PartialProduce{Log: l, Lose: lose, Calls: calls} })
	a, stopA := r.start(cfgA)
	defer stopA()
	waitFor(t, 20*time.Second, "node a", a.Ready)
	b, regB, stopB := r.startNode("b", ddB, stB)
	defer stopB()

	// A resend through the API mints new ids; so does this one.
	request := func() []*notification.Notification { return keyedWebhooks("kept", "lost", "other") }
	first := request()
	_, _, err := a.Ingest(context.Background(), first, time.Now())
	var pw *engine.PartlyWrittenError
	if !errors.As(err, &pw) || pw.Written != 2 {
		t.Fatalf("Ingest at a = %v, want a PartlyWrittenError of 2 written", err)
	}
	kept, lost, other := first[0].ID, first[1].ID, first[2].ID
	if st, err := a.Status(lost); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("a knows the notification never written: %+v, %v", st, err)
	}
	for state, want := range map[engine.State]float64{engine.StateAccepted: 2, engine.StateWithdrawn: 0} {
		if got := counterWith(t, regA, "goutong_ingest_mended_events_total", map[string]string{"state": string(state), "result": "produced"}); got != want {
			t.Fatalf("a wrote %v %s events after the write in part, want %v", got, state, want)
		}
	}
	for _, id := range []string{kept, other} {
		waitFor(t, 20*time.Second, "b to know "+id+" accepted", func() bool {
			st, err := b.Status(id)
			return err == nil && slices.ContainsFunc(st.History, func(ev engine.StatusEvent) bool { return ev.State == engine.StateAccepted })
		})
	}
	if st, err := b.Status(lost); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("b knows the notification never written: %+v, %v", st, err)
	}
	if got := counterSum(t, regB, "goutong_dedupe_forgotten_total"); got != 0 {
		t.Fatalf("b forgot %v keys, want none (it never had the lost one's)", got)
	}

	resend := request()
	adm, n, err := b.Ingest(context.Background(), resend, time.Now())
	if err != nil || n != 1 {
		t.Fatalf("resend at b: %+v (%d accepted), %v; want the lost one accepted", adm, n, err)
	}
	for i, want := range []string{kept, resend[1].ID, other} {
		if adm[i].ID != want || adm[i].Duplicate != (i != 1) {
			t.Fatalf("resend's item %d: %+v, want id %s, duplicate %v", i, adm[i], want, i != 1)
		}
	}
	for _, id := range []string{kept, resend[1].ID, other} {
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

// keyedWebhooks is a request of a webhook for each name, keyed key-<name>,
// under new ids.
func keyedWebhooks(names ...string) []*notification.Notification {
	var ns []*notification.Notification
	for _, name := range names {
		ns = append(ns, &notification.Notification{ID: ulid.Make().String(), Channel: notification.Webhook, Tenant: "acme",
			Recipient: "https://hooks.example/" + name, Content: &notification.Content{Body: `{"n":"` + name + `"}`}, IdempotencyKey: "key-" + name})
	}
	return ns
}

// produceCalls is a Log that notes, for each Produce, whether it held a
// lane record and whether an accepted event of the notifications keyed
// keys (their idempotency keys).
type produceCalls struct {
	partition.Log
	status string
	keys   map[string]bool
	mu     *sync.Mutex
	calls  *[]struct{ lane, accepted bool }
}

func (l produceCalls) Produce(ctx context.Context, recs []partition.Record) error {
	var c struct{ lane, accepted bool }
	for _, r := range recs {
		switch {
		case r.Topic != l.status && l.keys[string(r.Key)]:
			c.lane = true
		case r.Topic == l.status && bytes.Contains(r.Value, []byte(`"state":"accepted"`)):
			for k := range l.keys {
				c.accepted = c.accepted || bytes.Contains(r.Value, []byte(`"idempotency_key":"`+k+`"`))
			}
		}
	}
	err := l.Log.Produce(ctx, recs)
	if c.lane || c.accepted {
		l.mu.Lock()
		*l.calls = append(*l.calls, c)
		l.mu.Unlock()
	}
	return err
}

// On nodes among several, a request's accepted events are produced once
// its records are written, in a write of their own. An accepted event the
// log refuses then is written after (the request is accepted: its records
// are written), so the other nodes answer a resend as a duplicate of its
// id.
func TestAcceptedEventsFollowTheirRecords(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	cfgA, regA := r.nodeConfig("a")
	ns := keyedWebhooks("kept", "late")
	late := ns[1].ID
	lose := func(rec *partition.Record) bool { return rec.Topic == r.topics.Status && string(rec.Key) == late } // late's accepted event
	var calls []struct{ lane, accepted bool }
	noted := produceCalls{status: r.topics.Status, keys: map[string]bool{"key-kept": true, "key-late": true}, mu: new(sync.Mutex), calls: &calls}
	refused := new(atomic.Int64)
	wrapLogs(&cfgA, func(l partition.Log) partition.Log {
		noted.Log = l
		return logtest.PartialProduce{Log: noted, Lose: lose, Calls: refused}
	})
	a, stopA := r.start(cfgA)
	defer stopA()
	waitFor(t, 20*time.Second, "node a", a.Ready)
	b, _, stopB := r.startNode("b", ddB, stB)
	defer stopB()

	if adm, n, err := a.Ingest(context.Background(), ns, time.Now()); err != nil || n != 2 {
		t.Fatalf("Ingest at a: %+v (%d accepted), %v; want both accepted, late's event written after", adm, n, err)
	}
	noted.mu.Lock()
	got := slices.Clone(calls)
	noted.mu.Unlock()
	// The records; the accepted events, late's refused; late's, written again.
	if want := []struct{ lane, accepted bool }{{true, false}, {false, true}, {false, true}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("produces (lane records, accepted events): %+v, want %+v", got, want)
	}
	if got := counterWith(t, regA, "goutong_ingest_mended_events_total", map[string]string{"state": "accepted", "result": "produced"}); got != 1 {
		t.Fatalf("a wrote %v accepted events after a refusal, want 1 (late's)", got)
	}
	waitFor(t, 20*time.Second, "b to know late accepted", func() bool {
		st, err := b.Status(late)
		return err == nil && slices.ContainsFunc(st.History, func(ev engine.StatusEvent) bool { return ev.State == engine.StateAccepted })
	})
	adm, n, err := b.Ingest(context.Background(), keyedWebhooks("kept", "late"), time.Now())
	if err != nil || n != 0 || adm[0].ID != ns[0].ID || adm[1].ID != late {
		t.Fatalf("resend at b: %+v (%d accepted), %v; want duplicates of %s and %s", adm, n, err, ns[0].ID, late)
	}
}

// A withdrawn event, as nodes wrote them before 2026-11-27 after an
// accepted event whose record was not written (and as a node of that
// version in a fleet being upgraded still does), drops the key the
// accepted event gave the other nodes' dedupe stores.
func TestWithdrawnEventOfAnotherNode(t *testing.T) {
	r := newRig(t, backends[1]) // kafka (kfake)
	ddB, stB := r.nodeStores("b")
	b, regB, stopB := r.startNode("b", ddB, stB)
	defer stopB()
	now := time.Now().UTC()
	event := func(id, key string, state engine.State, at time.Time) partition.Record {
		ev := engine.StatusEvent{EventID: ulid.Make().String(), ID: id, State: state, At: at, Tenant: "acme", Channel: "webhook",
			Priority: "normal", Node: "old", IdempotencyKey: key}
		v, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		return partition.Record{Topic: r.topics.Status, Key: []byte(id), Value: v}
	}
	withdrawnID, keptID := ulid.Make().String(), ulid.Make().String()
	if err := r.prod.Produce(context.Background(), []partition.Record{
		event(withdrawnID, "key-withdrawn", engine.StateAccepted, now),
		event(withdrawnID, "key-withdrawn", engine.StateWithdrawn, now.Add(time.Millisecond)),
		event(keptID, "key-kept", engine.StateAccepted, now),
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "b to apply the events", func() bool {
		w, errW := b.Status(withdrawnID)
		_, errK := b.Status(keptID)
		return errW == nil && w.State == engine.StateWithdrawn && errK == nil
	})
	waitFor(t, 20*time.Second, "b to drop the withdrawn key", func() bool { return counterSum(t, regB, "goutong_dedupe_forgotten_total") == 1 })
	adm, n, err := b.Ingest(context.Background(), keyedWebhooks("withdrawn", "kept"), time.Now())
	if err != nil || n != 1 || adm[0].Duplicate || !adm[1].Duplicate || adm[1].ID != keptID {
		t.Fatalf("resend at b: %+v (%d accepted), %v; want the withdrawn key accepted, the other a duplicate of %s", adm, n, err, keptID)
	}
}

// A write that takes every notification of a request and refuses only
// accepted events accepts the request, and writes the events after. It
// was answered 503 partly_written ("2 of 2 written"), for a resend that
// answered every item a duplicate.
func TestOnlyEventsRefused(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			cfg := r.config(r.channels(false))
			reg := prometheus.NewRegistry()
			cfg.Registry = reg
			ns := keyedWebhooks("kept", "late")
			late := ns[1].ID
			lose := func(rec *partition.Record) bool { return rec.Topic == r.topics.Status && string(rec.Key) == late }
			calls := new(atomic.Int64)
			wrapLogs(&cfg, func(l partition.Log) partition.Log { return logtest.PartialProduce{Log: l, Lose: lose, Calls: calls} })
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			if adm, n, err := e.Ingest(context.Background(), ns, time.Now()); err != nil || n != 2 {
				t.Fatalf("Ingest: %+v (%d accepted), %v; want both accepted", adm, n, err)
			}
			if st, err := e.Status(late); err != nil || st.History[0].State != engine.StateAccepted {
				t.Fatalf("late: %+v (%v), want its accepted event written after", st, err)
			}
			if got := counterWith(t, reg, "goutong_ingest_mended_events_total", map[string]string{"state": "accepted", "result": "produced"}); got != 1 {
				t.Fatalf("%v accepted events written after, want 1", got)
			}
			if got := counterSum(t, reg, "goutong_ingest_partly_written_total"); got != 0 {
				t.Fatalf("goutong_ingest_partly_written_total %v, want 0: the request was accepted whole", got)
			}
		})
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

// BenchmarkIngestKafkaNode measures Ingest on a Kafka node (kfake, in
// process) with a NodeID: 8 callers of batches of 1,000 keyed webhooks,
// sends paused. Its accepted events go in a write after the records'
// (emitIngest); ms/request is a batch's latency.
func BenchmarkIngestKafkaNode(b *testing.B) {
	r := newRig(b, backends[1])
	cfg := r.config(r.channels(false))
	cfg.NodeID = "a"
	e, stop := r.start(cfg)
	defer stop()
	waitFor(b, 20*time.Second, "ready", e.Ready)
	_ = e.PauseChannel(notification.Webhook, true)
	var seq, nanos atomic.Int64
	b.SetParallelism(4) // 8 callers on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			base := seq.Add(1000)
			ns := make([]*notification.Notification, 1000)
			for i := range ns {
				ns[i] = &notification.Notification{Channel: notification.Webhook, Tenant: "acme", Recipient: "https://hooks.example/o",
					Content: &notification.Content{Body: `{}`}, IdempotencyKey: "order-" + strconv.FormatInt(base+int64(i), 10)}
			}
			start := time.Now()
			if _, n, err := e.Ingest(context.Background(), ns, start); err != nil || n != len(ns) {
				b.Errorf("Ingest: %d accepted, %v", n, err)
				return
			}
			nanos.Add(int64(time.Since(start)))
		}
	})
	b.ReportMetric(float64(nanos.Load())/float64(b.N)/1e6, "ms/request")
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "notifications/s")
}
