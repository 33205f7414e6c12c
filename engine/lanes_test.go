package engine_test

import (
	"context"
	"testing"
	"time"

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
