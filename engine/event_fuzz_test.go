package engine

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzEventEncoding holds the status-event encoder (goccy/go-json, into a
// shared buffer) to encoding/json byte for byte, whatever the strings hold.
func FuzzEventEncoding(f *testing.F) {
	f.Add("01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", "acme", "twilio", "SM5c2e", "HTTP 503: <html>", int64(1_800_000_000_000_000_123), 1)
	f.Add("", "\x00\u2028\xff", "a&b", "\"\\", "é", int64(0), -3)
	f.Fuzz(func(t *testing.T, id, tenant, provider, msgID, reason string, at int64, attempts int) {
		ev := StatusEvent{EventID: id, ID: id, State: StateSent, At: time.Unix(0, at).UTC(), Tenant: tenant, Channel: "sms",
			Priority: "critical", Attempts: attempts, Provider: provider, ProviderMessageID: msgID, Reason: reason, DuplicateOf: msgID}
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
