package notification

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func FuzzDecode(f *testing.F) {
	f.Add([]byte(otpJSON))
	f.Add([]byte(`{"channel":"email","recipient":"a@b.c","content":{"subject":"hi","body":"x"}}`))
	f.Add([]byte(`{"channel":"push","recipient":"tok","template":"t","vars":{"a":1.5e3,"b":true}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"vars":null,"content":null}`))
	c := NewCodec("custom")
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := c.Decode(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Whatever decodes must re-encode to something that decodes to the same.
		b := c.Encode(n)
		n2, err := c.Decode(b)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		if b2 := c.Encode(n2); string(b2) != string(b) {
			t.Fatalf("unstable encoding:\n%s\n%s", b, b2)
		}
	})
}

// FuzzEncodeMatchesEncodingJSON holds the encoder (goccy/go-json) to
// encoding/json byte for byte on any strings: quotes, control characters,
// HTML characters, U+2028, invalid UTF-8, map key order, zero and non-zero
// times.
func FuzzEncodeMatchesEncodingJSON(f *testing.F) {
	f.Add("01JD3ZQ8X4K2M9N7P5R3T1V0WY", "acme", "+15551234567", "code", "123456", "Your code: <b>\"x\"</b>", int64(0), int64(1_800_000_000_123))
	f.Add("", "\x00\x1f\u2028\u2029", "a&b", "\xff\xfe", "é", "\\", int64(-1), int64(1))
	c := NewCodec()
	f.Fuzz(func(t *testing.T, id, tenant, recipient, k, v, body string, exp, acc int64) {
		n := &Notification{ID: id, Tenant: tenant, Channel: SMS, Priority: Critical, Recipient: recipient,
			Vars: map[string]string{k: v, v: k}, Content: &Content{Subject: k, Body: body},
			Metadata: map[string]string{body: id}, Attempts: int(uint8(exp))}
		if exp > 0 {
			n.ExpiresAt = time.Unix(0, exp)
		}
		if acc != 0 {
			n.AcceptedAt = time.Unix(0, acc)
		}
		w := wireOf(n)
		want, err := json.Marshal(&w)
		if err != nil {
			t.Skip() // a time encoding/json refuses (year outside 0..9999)
		}
		if got := c.Encode(n); string(got) != string(want) {
			t.Fatalf("encoder differs from encoding/json:\n got %s\nwant %s", got, want)
		}
	})
}
