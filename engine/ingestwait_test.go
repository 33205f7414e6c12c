package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/partition/logtest"
)

// A repeat of a key whose first request is still writing its notification
// waits for that request's outcome instead of being answered a duplicate
// at once: if the first fails, the repeat is accepted itself (before, its
// client was told 200 for a notification that never was); if the first
// succeeds, the repeat is its duplicate; if the first is still writing 2 s
// later, the repeat is refused whole (InProgressError) and keeps no claim.
func TestIngestWaitsForAKeyInProgress(t *testing.T) {
	for _, b := range backends {
		for _, c := range []struct {
			name  string
			first error // what the held write ends with; nil: written
			hold  time.Duration
		}{
			{name: "first-fails", first: errors.New("held: write refused"), hold: 300 * time.Millisecond},
			{name: "first-written", hold: 300 * time.Millisecond},
			{name: "first-held-too-long", hold: 3 * time.Second},
		} {
			t.Run(b.name+"/"+c.name, func(t *testing.T) {
				r := newRig(t, b)
				cfg := r.config(r.channels(false))
				held := logtest.NewHeldProduce("hooks.example/held")
				wrapLogs(&cfg, func(l partition.Log) partition.Log { h := held; h.Log = l; return h })
				e, stop := r.start(cfg)
				defer stop()
				waitFor(t, 20*time.Second, "ready", e.Ready)
				item := func() []*notification.Notification {
					return []*notification.Notification{
						{Channel: notification.Webhook, Tenant: "acme", Recipient: "https://hooks.example/other",
							Content: &notification.Content{Body: `{"n":1}`}},
						{Channel: notification.Webhook, Tenant: "acme", Recipient: "https://hooks.example/held",
							Content: &notification.Content{Body: `{"order":9}`}, IdempotencyKey: "order-9"},
					}
				}
				type result struct {
					adm []engine.Admission
					n   int
					err error
				}
				firstDone, repeatDone := make(chan result, 1), make(chan result, 1)
				go func() {
					adm, n, err := e.Ingest(context.Background(), item()[1:], time.Now())
					firstDone <- result{adm, n, err}
				}()
				<-held.Entered
				go func() {
					adm, n, err := e.Ingest(context.Background(), item(), time.Now())
					repeatDone <- result{adm, n, err}
				}()
				var repeat result
				if c.hold > 2*time.Second {
					// Refused at about 2 s, while the first is still held.
					select {
					case repeat = <-repeatDone:
					case <-time.After(c.hold):
						t.Fatal("the repeat was still waiting after the first had been held 3 s")
					}
					held.Release <- c.first
				} else {
					select {
					case res := <-repeatDone:
						t.Fatalf("the repeat was answered while the first was still writing: %+v", res)
					case <-time.After(c.hold):
					}
					held.Release <- c.first
					repeat = <-repeatDone
				}
				first := <-firstDone
				if (first.err != nil) != (c.first != nil) {
					t.Fatalf("first: %v, want it to end as its write did (%v)", first.err, c.first)
				}
				switch c.name {
				case "first-fails":
					if repeat.err != nil || repeat.n != 2 || repeat.adm[1].Duplicate || repeat.adm[1].ID == "" {
						t.Fatalf("repeat after the first failed: %+v, want both items accepted anew", repeat)
					}
				case "first-written":
					if repeat.err != nil || repeat.n != 1 || !repeat.adm[1].Duplicate || repeat.adm[1].ID != first.adm[0].ID {
						t.Fatalf("repeat after the first was written: %+v, want a duplicate of %s", repeat, first.adm[0].ID)
					}
				default:
					var ip *engine.InProgressError
					if !errors.As(repeat.err, &ip) || ip.Index != 1 || !errors.Is(repeat.err, engine.ErrInProgress) {
						t.Fatalf("repeat while the first was held 3 s: %v, want InProgressError for item 1", repeat.err)
					}
					// It kept no claim: its other item is accepted at once now.
					again, n, err := e.Ingest(context.Background(), item()[:1], time.Now())
					if err != nil || n != 1 || again[0].Duplicate {
						t.Fatalf("the refused request's other item: %+v (%d), %v; want it accepted", again, n, err)
					}
				}
				const sends = 2 // the held key once, the other item once
				waitFor(t, 20*time.Second, "the sends", func() bool { return r.mock.Stats().Received >= sends })
				time.Sleep(500 * time.Millisecond) // a further send, if any, has arrived
				if got := r.mock.Stats(); got.Received != sends || got.Unique != sends {
					t.Fatalf("provider received %d sends (%d unique), want %d", got.Received, got.Unique, sends)
				}
			})
		}
	}
}
