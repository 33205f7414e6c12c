package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
)

// TestLaneRecordKeys checks how Ingest keys the lane records: by default
// by idempotency key (repeats of a send land on one partition, so on one
// node's dedupe store), and with KeylessLanes without a key, a request's
// records in one partition (one group commit on the embedded log).
func TestLaneRecordKeys(t *testing.T) {
	for _, keyless := range []bool{false, true} {
		t.Run(map[bool]string{false: "keyed", true: "keyless"}[keyless], func(t *testing.T) {
			r := newRig(t, backends[0])
			cfg := r.config(r.channels(false))
			cfg.Topics = r.topics
			cfg.Topics.KeylessLanes = keyless
			e, stop := r.start(cfg)
			defer stop()
			ns := make([]*notification.Notification, 40)
			for i := range ns {
				ns[i] = &notification.Notification{Channel: notification.SMS, Priority: notification.Bulk, Tenant: "acme",
					Recipient: recipient(notification.SMS, i), Template: "otp", Vars: map[string]string{"code": "123456"}}
				if i%2 == 0 {
					ns[i].IdempotencyKey = "order-" + ns[i].Recipient
				}
			}
			if _, _, err := e.Ingest(context.Background(), ns, time.Now()); err != nil {
				t.Fatal(err)
			}
			keyOf := map[string]string{}
			for _, n := range ns {
				keyOf[n.ID] = n.IdempotencyKey
			}
			l, err := r.open(partition.ConsumerConfig{Group: "lane-keys", Topics: []string{r.topics.Lane(notification.Bulk)}})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			parts := map[int32]bool{}
			for _, rec := range readRecords(t, l, len(ns), "lane records") {
				n, err := r.codec.Decode(rec.Value)
				if err != nil {
					t.Fatal(err)
				}
				want := keyOf[n.ID]
				if keyless {
					want = ""
				}
				if string(rec.Key) != want {
					t.Fatalf("record of %s keyed %q, want %q", n.ID, rec.Key, want)
				}
				parts[rec.Partition] = true
			}
			if keyless && len(parts) != 1 {
				t.Fatalf("a request's keyless records went to %d partitions, want one run", len(parts))
			}
			if !keyless && len(parts) < 2 {
				t.Fatalf("40 keyed records all in partition %v", parts)
			}
		})
	}
}

// TestIngestDedupeKeyed checks which repeats Ingest answers at the door.
// By default every item's key is claimed there, given or derived from its
// content; under IngestDedupeKeyed only given keys are, and a repeat of a
// keyless item is accepted again, with a new id, and stopped at its send
// by the claim of its derived key. Either way each is sent once. With
// keyless lanes (the embedded log's), keyed leaves the key of a keyless
// item to the poller: its record carries none.
func TestIngestDedupeKeyed(t *testing.T) {
	for _, b := range backends {
		for _, c := range []struct {
			mode    engine.IngestDedupe
			keyless bool
		}{{engine.IngestDedupeAll, false}, {engine.IngestDedupeKeyed, false}, {engine.IngestDedupeKeyed, true}} {
			name := map[engine.IngestDedupe]string{engine.IngestDedupeAll: "all", engine.IngestDedupeKeyed: "keyed"}[c.mode]
			if c.keyless {
				name += "/keyless-lanes"
			}
			mode := c.mode
			t.Run(b.name+"/"+name, func(t *testing.T) {
				r := newRig(t, b)
				cfg := r.config(r.channels(false))
				cfg.IngestDedupe = mode
				cfg.Topics = r.topics
				cfg.Topics.KeylessLanes = c.keyless
				e, stop := r.start(cfg)
				defer stop()
				waitFor(t, 20*time.Second, "ready", e.Ready)
				batch := func() []*notification.Notification {
					return []*notification.Notification{
						{Channel: notification.Webhook, Tenant: "acme", Recipient: "https://hooks.example/campaign",
							Content: &notification.Content{Body: `{"sale":true}`}},
						{Channel: notification.Webhook, Tenant: "acme", Recipient: "https://hooks.example/orders",
							Content: &notification.Content{Body: `{"order":7}`}, IdempotencyKey: "order-7"},
					}
				}
				sent := batch()
				first, n, err := e.Ingest(context.Background(), sent, time.Now())
				if err != nil || n != 2 {
					t.Fatalf("first batch: %d accepted, %v", n, err)
				}
				if derived := sent[0].IdempotencyKey != ""; derived == (mode == engine.IngestDedupeKeyed && c.keyless) {
					t.Fatalf("the keyless item's key at ingest: %q", sent[0].IdempotencyKey)
				}
				again, n, err := e.Ingest(context.Background(), batch(), time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if a := again[1]; !a.Duplicate || a.ID != first[1].ID {
					t.Fatalf("repeat of a keyed item: %+v, want a duplicate of %s", a, first[1].ID)
				}
				keyless := again[0]
				if mode == engine.IngestDedupeAll {
					if n != 0 || !keyless.Duplicate || keyless.ID != first[0].ID {
						t.Fatalf("repeat of a keyless item: %+v (%d accepted), want a duplicate of %s", keyless, n, first[0].ID)
					}
				} else {
					if n != 1 || keyless.Duplicate || keyless.ID == first[0].ID {
						t.Fatalf("repeat of a keyless item: %+v (%d accepted), want accepted anew", keyless, n)
					}
					waitFor(t, 10*time.Second, "the repeat stopped at its send", func() bool {
						s, err := e.Status(keyless.ID)
						return err == nil && s.State == engine.StateDuplicate && s.Current.DuplicateOf == first[0].ID
					})
				}
				waitFor(t, 10*time.Second, "two sends", func() bool { return r.mock.Stats().Received >= 2 })
				time.Sleep(500 * time.Millisecond) // a third send, if any, has arrived
				if got := r.mock.Stats().Received; got != 2 {
					t.Fatalf("provider received %d sends, want 2", got)
				}
			})
		}
	}
}
