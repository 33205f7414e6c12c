package engine

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/goutong/goutong/partition"
)

// FuzzEventEncoding holds the status-event encoder (goccy/go-json, into a
// shared buffer) to encoding/json byte for byte, whatever the strings hold.
func FuzzEventEncoding(f *testing.F) {
	f.Add("01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", "acme", "twilio", "SM5c2e", "HTTP 503: <html>", int64(1_800_000_000_000_000_123), 1)
	f.Add("", "\x00\u2028\xff", "a&b", "\"\\", "é", int64(0), -3)
	f.Fuzz(func(t *testing.T, id, tenant, provider, msgID, reason string, at int64, attempts int) {
		ev := StatusEvent{EventID: id, ID: id, State: StateSent, At: time.Unix(0, at).UTC(), Tenant: tenant, Channel: "sms",
			Priority: "critical", Attempts: attempts, Provider: provider, ProviderMessageID: msgID, Reason: reason, DuplicateOf: msgID,
			IdempotencyKey: reason + msgID, Node: tenant}
		want, err := json.Marshal(&ev)
		if err != nil {
			t.Skip()
		}
		var enc eventEncoder
		enc.buf = []byte("earlier events ")
		got, err := enc.encode(&ev)
		if err != nil || string(got) != string(want) {
			t.Fatalf("event encoder differs from encoding/json (%v):\n got %s\nwant %s", err, got, want)
		}
	})
}

// FuzzReplayDecode feeds whatever a status topic may hold (on Kafka anyone
// can produce to it) to the replay's decoder: it never panics, always moves
// past the record, and an event it keeps the store takes (a refusal would
// stop every start there) and reads back unchanged.
func FuzzReplayDecode(f *testing.F) {
	ev := StatusEvent{EventID: "e1", ID: "01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", State: StateSent, At: time.Unix(1_800_000_000, 5).UTC(),
		Tenant: "acme", Channel: "sms", Priority: "critical", Attempts: 2, Provider: "twilio", ProviderMessageID: "SM1"}
	v, _ := json.Marshal(&ev)
	f.Add(v)
	f.Add([]byte(`{"id":"x","state":"weird","at":"0001-01-01T00:00:00Z","attempts":-1}`))
	f.Add([]byte(`{"id":""}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, value []byte) {
		next := map[partition.TopicPartition]int64{}
		evs := decodeStatusEvents([]partition.Record{{Topic: "s", Partition: 3, Offset: 41, Value: value}}, next)
		if next[partition.TopicPartition{Topic: "s", Partition: 3}] != 42 {
			t.Fatalf("next %v, want s/3 at 42", next)
		}
		for i := range evs {
			ev := evs[i]
			if ev.ID == "" {
				t.Fatal("kept an event without an id")
			}
			// A refusal would stop every start's replay at this record.
			stored, err := appendStoredEvent(nil, &ev)
			if err != nil {
				t.Fatalf("the store refuses %+v: %v", ev, err)
			}
			key := statusKey(nil, ev.ID, ev.At, eventSeq(&ev, i))
			back, err := decodeStoredEvent(ev.ID, key, stored)
			if err != nil || !sameEvent(back, ev) {
				t.Fatalf("stored form of %+v read back as %+v (%v)", ev, back, err)
			}
		}
	})
}
