package notification

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/valyala/fastjson"
)

func FuzzDecode(f *testing.F) {
	f.Add([]byte(otpJSON))
	f.Add([]byte(`{"channel":"email","recipient":"a@b.c","content":{"subject":"hi","body":"x"}}`))
	f.Add([]byte(`{"channel":"push","recipient":"tok","template":"t","vars":{"a":1.5e3,"b":true}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"vars":null,"content":null}`))
	f.Add([]byte(`{"channel":"sms","template":"t","recipient":"a\u00e9\ud83d\ude00\\ud800","vars":{"c":-0.5e1}}`))
	c := NewCodec("custom")
	// One small arena across all inputs: decoding into it must give what
	// Decode gives, whatever was decoded into it before.
	arena := NewArena(2, 16)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := c.Decode(data)
		na, aerr := c.DecodeIn(arena, data)
		if (err == nil) != (aerr == nil) || (err != nil && err.Error() != aerr.Error()) {
			t.Fatalf("Decode: %v, DecodeIn: %v", err, aerr)
		}
		if err == nil && !reflect.DeepEqual(n, na) {
			t.Fatalf("DecodeIn differs from Decode:\n%+v\n%+v", na, n)
		}
		// A parsed value (an array's item) is sized by a pass over its
		// strings rather than by the record's length: the same result.
		// Their callers check the text (CheckJSON) before they parse it.
		if v, perr := new(fastjson.Parser).ParseBytes(data); perr == nil && CheckJSON(data) == nil {
			nv, verr := c.DecodeValueIn(arena, v)
			if (err == nil) != (verr == nil) || (err == nil && !reflect.DeepEqual(n, nv)) {
				t.Fatalf("DecodeValueIn: %+v, %v; Decode: %+v, %v", nv, verr, n, err)
			}
			np, perr := c.DecodeParsedIn(arena, v, data)
			if (err == nil) != (perr == nil) || (err == nil && !reflect.DeepEqual(n, np)) {
				t.Fatalf("DecodeParsedIn: %+v, %v; Decode: %+v, %v", np, perr, n, err)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// What decodes is JSON, and its strings read as encoding/json reads them.
		if !json.Valid(data) {
			t.Fatalf("accepted text that is not JSON: %q", data)
		}
		var std struct {
			ID             string `json:"id"`
			IdempotencyKey string `json:"idempotency_key"`
			Tenant         string `json:"tenant"`
			Recipient      string `json:"recipient"`
			Template       string `json:"template"`
			Content        *struct {
				Subject string `json:"subject"`
				Body    string `json:"body"`
			} `json:"content"`
		}
		if json.Unmarshal(data, &std) == nil && (std.ID != n.ID || std.IdempotencyKey != n.IdempotencyKey ||
			std.Tenant != n.Tenant || std.Recipient != n.Recipient || std.Template != n.Template ||
			(std.Content != nil && n.Content != nil && (std.Content.Subject != n.Content.Subject || std.Content.Body != n.Content.Body))) {
			t.Fatalf("strings differ from encoding/json's reading of %q:\n%+v\n%+v", data, n, std)
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

// refWire is the wire format as encoding/json spells it, written plainly
// (times as omitzero values), independent of the encoder's own struct.
type refWire struct {
	ID             string            `json:"id,omitempty"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	Tenant         string            `json:"tenant,omitempty"`
	Channel        Channel           `json:"channel,omitempty"`
	Priority       string            `json:"priority,omitempty"`
	Recipient      string            `json:"recipient,omitempty"`
	Template       string            `json:"template,omitempty"`
	Vars           map[string]string `json:"vars,omitempty"`
	Content        *struct {
		Subject string `json:"subject,omitempty"`
		Body    string `json:"body"`
	} `json:"content,omitempty"`
	NotBefore  time.Time         `json:"not_before,omitzero"`
	ExpiresAt  time.Time         `json:"expires_at,omitzero"`
	AcceptedAt time.Time         `json:"accepted_at,omitzero"`
	Attempts   int               `json:"attempts,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
}

func refWireOf(n *Notification) *refWire {
	w := &refWire{ID: n.ID, IdempotencyKey: n.IdempotencyKey, Tenant: n.Tenant, Channel: n.Channel,
		Recipient: n.Recipient, Template: n.Template, Vars: n.Vars, NotBefore: n.NotBefore.UTC(),
		ExpiresAt: n.ExpiresAt.UTC(), AcceptedAt: n.AcceptedAt.UTC(), Attempts: n.Attempts, Metadata: n.Metadata}
	if n.Priority.Valid() {
		w.Priority = n.Priority.String()
	}
	if n.Content != nil {
		w.Content = &struct {
			Subject string `json:"subject,omitempty"`
			Body    string `json:"body"`
		}{n.Content.Subject, n.Content.Body}
	}
	return w
}

// FuzzEncodeMatchesEncodingJSON holds the encoder (appendWire) to
// encoding/json over a plain spelling of the format, byte
// for byte, on any strings: quotes, control characters,
// HTML characters, U+2028, invalid UTF-8, map key order, zero and non-zero
// times.
func FuzzEncodeMatchesEncodingJSON(f *testing.F) {
	f.Add("01JD3ZQ8X4K2M9N7P5R3T1V0WY", "acme", "+15551234567", "code", "123456", "Your code: <b>\"x\"</b>", int64(0), int64(1_800_000_000_123))
	f.Add("", "\x00\x1f\u2028\u2029", "a&b", "\xff\xfe", "é", "\\", int64(-1), int64(1))
	c := NewCodec()
	var accepted TimeCache // across inputs, as across a batch's items
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
		if exp%3 == 0 {
			n.NotBefore = time.Unix(0, exp/2)
		}
		if body == "" {
			n.Content = nil
		}
		want, err := json.Marshal(refWireOf(n))
		if err != nil {
			t.Skip() // a time encoding/json refuses (year outside 0..9999)
		}
		if got := c.Encode(n); string(got) != string(want) {
			t.Fatalf("encoder differs from encoding/json:\n got %s\nwant %s", got, want)
		}
		for range 2 { // the second through the time cache
			if got := c.AppendEncodeCached(nil, n, &accepted); string(got) != string(want) {
				t.Fatalf("cached encoder differs from encoding/json:\n got %s\nwant %s", got, want)
			}
		}
	})
}
