package engine

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/goutong/goutong/partition"
)

// FuzzEventEncoding holds the status-event encoder (goccy/go-json, into a
// shared buffer) to encoding/json byte for byte, whatever the strings,
// the time and its zone hold; where encoding/json refuses an event, so
// does the encoder.
func FuzzEventEncoding(f *testing.F) {
	f.Add("01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", "acme", "twilio", "SM5c2e", "HTTP 503: <html>", int64(1_800_000_000_000_000_123), 1, int32(0), int32(0))
	f.Add("", "\x00\u2028\xff", "a&b", "\"\\", "é\b\f\x1f\x7f", int64(0), -3, int32(8*3600), int32(0))
	f.Add("x", "t", "p", "m", "r", int64(-1), 0, int32(-(23*3600 + 59*60)), int32(8000))
	f.Add("x", "t", "p", "m", "r", int64(5), 0, int32(24*3600), int32(-3000))
	// One encoder across inputs, as a batch's events share one: its time
	// cache must give what formatting each time would.
	var enc eventEncoder
	f.Fuzz(func(t *testing.T, id, tenant, provider, msgID, reason string, at int64, attempts int, zone, years int32) {
		loc := time.UTC
		if zone != 0 {
			loc = time.FixedZone("z", int(zone%(30*3600)))
		}
		ev := StatusEvent{EventID: id, ID: id, State: StateSent, At: time.Unix(0, at).In(loc).AddDate(int(years%12000), 0, 0),
			Tenant: tenant, Channel: "sms", Priority: "critical", Attempts: attempts, Provider: provider, ProviderMessageID: msgID,
			Reason: reason, DuplicateOf: msgID, IdempotencyKey: reason + msgID, Node: tenant}
		want, werr := json.Marshal(&ev)
		enc.buf = []byte("earlier events ")
		for range 2 { // the second through the time cache
			got, err := enc.encode(&ev)
			if werr != nil {
				if err == nil {
					t.Fatalf("encoded %s where encoding/json refuses: %v", got, werr)
				}
				return
			}
			if err != nil || string(got) != string(want) {
				t.Fatalf("event encoder differs from encoding/json (%v):\n got %s\nwant %s", err, got, want)
			}
		}
		if string(enc.buf[:len("earlier events ")]) != "earlier events " {
			t.Fatalf("the buffer's earlier bytes changed: %q", enc.buf)
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

// BenchmarkEventEncode encodes an accepted event as Ingest does, against
// encoding/json on the same event.
func BenchmarkEventEncode(b *testing.B) {
	ev := StatusEvent{EventID: "01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", ID: "01M8A0Q7Z9H5Y0R4T2B6W8D3JR", State: StateAccepted,
		At: time.Unix(1_800_000_000, 123_456_789).UTC(), Tenant: "acme", Channel: "email", Priority: "normal"}
	b.Run("encoder", func(b *testing.B) {
		var enc eventEncoder
		b.ReportAllocs()
		for b.Loop() {
			enc.buf = enc.buf[:0]
			if _, err := enc.encode(&ev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("encoding-json-baseline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&ev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}
