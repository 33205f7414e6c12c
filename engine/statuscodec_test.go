package engine

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

func sameEvent(a, b StatusEvent) bool {
	if !a.At.Equal(b.At) {
		return false
	}
	a.At, b.At = time.Time{}, time.Time{}
	// For the other nodes, not kept (see StatusEvent).
	a.IdempotencyKey, a.Node, b.IdempotencyKey, b.Node = "", "", "", ""
	return reflect.DeepEqual(a, b)
}

// Every field survives the binary form; what it cannot carry exactly goes
// in as JSON and survives too.
func TestStoredEventRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 26, 1, 2, 3, 456789012, time.FixedZone("CST", 8*3600))
	full := StatusEvent{EventID: "01KB0000000000000000000000", ID: "01KB1111111111111111111111", State: StateDeadLettered,
		At: at, Tenant: "acme", Channel: "sms", Priority: "critical", Attempts: 300, Provider: "twilio",
		ProviderMessageID: "SM123", Reason: "permanent: HTTP 400 \u2028 \xff", DuplicateOf: "01KB2222222222222222222222"}
	cases := []struct {
		name   string
		ev     StatusEvent
		binary bool
	}{
		{"every field", full, true},
		{"bare", StatusEvent{ID: "x", State: StateAccepted, At: at}, true},
		{"every state", StatusEvent{ID: "x", State: StateDelivered, At: at, Attempts: 1}, true},
		{"unknown state", StatusEvent{ID: "x", State: "teleported", At: at}, false},
		{"time before 1678", StatusEvent{ID: "x", State: StateSent, At: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)}, false},
		{"zero time", StatusEvent{ID: "x", State: StateSent}, false},
		{"negative attempts", StatusEvent{ID: "x", State: StateSent, At: at, Attempts: -1}, false},
	}
	for _, st := range States {
		ev := full
		ev.State = st
		cases = append(cases, struct {
			name   string
			ev     StatusEvent
			binary bool
		}{string(st), ev, true})
	}
	for _, c := range cases {
		key := statusKey(nil, c.ev.ID, c.ev.At, 7)
		v, err := appendStoredEvent([]byte("stale"), &c.ev)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		v = v[len("stale"):]
		if isBinary := v[0] == storedEventV1; isBinary != c.binary {
			t.Errorf("%s: binary = %v, want %v (%q)", c.name, isBinary, c.binary, v)
		}
		got, err := decodeStoredEvent(c.ev.ID, key, v)
		if err != nil {
			t.Fatalf("%s: decode: %v", c.name, err)
		}
		if !sameEvent(got, c.ev) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", c.name, got, c.ev)
		}
	}
	v, _ := appendStoredEvent(nil, &full)
	j, _ := json.Marshal(&full)
	t.Logf("stored event: %d bytes binary, %d as JSON", len(v), len(j))
}

// A store written before the binary form holds JSON values; they read as
// they did, beside binary ones.
func TestStatusStoreReadsJSONEvents(t *testing.T) {
	s, err := OpenStatus(filepath.Join(t.TempDir(), "status"), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	id := idAt(now, 1)
	old := StatusEvent{EventID: "e1", ID: id, State: StateAccepted, At: now.Add(-time.Second).UTC(), Tenant: "acme", Channel: "email", Priority: "bulk"}
	v, _ := json.Marshal(&old)
	if err := s.db.Set(statusKey(nil, id, old.At, eventSeq(&old, 0)), v, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	cur := StatusEvent{EventID: "e2", ID: id, State: StateSent, At: now, Tenant: "acme", Channel: "email", Priority: "bulk", Attempts: 1, Provider: "sendgrid"}
	if err := s.Apply([]StatusEvent{cur}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.History) != 2 || !sameEvent(st.History[0], old) || !sameEvent(st.History[1], cur) || st.State != StateSent {
		t.Fatalf("history %+v, want the JSON event then the binary one", st.History)
	}
	var scanned []StatusEvent
	if err := s.Scan(now.Add(-time.Hour), now.Add(time.Hour), func(_ string, h []StatusEvent) error {
		scanned = append(scanned, h...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(scanned) != 2 || !sameEvent(scanned[0], old) || !sameEvent(scanned[1], cur) {
		t.Fatalf("scan %+v", scanned)
	}
}

// The store's bytes are its own, but a damaged file must give an error or
// an event, never a panic, and an event decoded must survive a rewrite.
func FuzzStoredEvent(f *testing.F) {
	at := time.Unix(1_790_000_000, 5)
	ev := StatusEvent{EventID: "e", ID: "id", State: StateSent, At: at, Tenant: "t", Attempts: 2, Provider: "p"}
	v, _ := appendStoredEvent(nil, &ev)
	key := statusKey(nil, "id", at, 1)
	f.Add(key, v)
	f.Add(key, []byte(`{"id":"id","state":"sent"}`))
	f.Add(key, []byte{storedEventV1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, key, v []byte) {
		got, err := decodeStoredEvent("id", key, v)
		if err != nil || len(v) == 0 || v[0] != storedEventV1 {
			return
		}
		again, err := appendStoredEvent(nil, &got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeStoredEvent("id", key, again)
		if err != nil || !sameEvent(back, got) {
			t.Fatalf("decoded %+v from %x; rewritten as %x it reads %+v (%v)", got, v, again, back, err)
		}
	})
}
