package notification

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

const otpJSON = `{"id":"01JD3ZQ8X4K2M9N7P5R3T1V0WY","idempotency_key":"login-42-7731","tenant":"acme",` +
	`"channel":"sms","priority":"critical","recipient":"+8613800138000","template":"otp",` +
	`"vars":{"code":"731904","minutes":5},"expires_at":"2026-11-24T10:05:00Z",` +
	`"accepted_at":"2026-11-24T10:00:00.123456789Z","metadata":{"trace":"abc"}}`

func TestDecodeFull(t *testing.T) {
	n, err := NewCodec().Decode([]byte(otpJSON))
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != SMS || n.Priority != Critical || n.Recipient != "+8613800138000" || n.Template != "otp" {
		t.Fatalf("decoded %+v", n)
	}
	if n.Vars["code"] != "731904" || n.Vars["minutes"] != "5" {
		t.Fatalf("vars %v", n.Vars)
	}
	if !n.ExpiresAt.Equal(time.Date(2026, 11, 24, 10, 5, 0, 0, time.UTC)) {
		t.Fatalf("expires_at %v", n.ExpiresAt)
	}
	if n.AcceptedAt.Nanosecond() != 123456789 {
		t.Fatalf("accepted_at lost precision: %v", n.AcceptedAt)
	}
}

func TestRoundTrip(t *testing.T) {
	c := NewCodec("sms-marketing")
	in := &Notification{
		ID: NewID(), Tenant: "t", Channel: "sms-marketing", Priority: Bulk, Recipient: "+1555",
		Content:   &Content{Subject: "Sale \"now\"", Body: "50% off\n<b>today</b> \u2603"},
		NotBefore: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), ExpiresAt: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC),
		Attempts: 3, Metadata: map[string]string{"z": "1", "a": "2"},
	}
	in.Prepare(time.Unix(100, 0).UTC())
	b := c.Encode(in)
	out, err := c.Decode(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip changed it:\n in %+v\nout %+v", in, out)
	}
	if again := c.Encode(out); string(again) != string(b) {
		t.Fatalf("encoding not stable:\n%s\n%s", b, again)
	}
	// The wire form must be plain JSON any consumer can read.
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("encoding/json cannot read our output: %v", err)
	}
}

func TestDecodeErrorsNameTheField(t *testing.T) {
	base := `"channel":"sms","recipient":"+1","template":"otp"`
	cases := []struct{ in, field string }{
		{`{` + base + `,"priority":"urgent"}`, "priority"},
		{`{"channel":"fax","recipient":"+1","template":"x"}`, "channel"},
		{`{"recipient":"+1","template":"x"}`, "channel"},
		{`{"channel":"sms","template":"otp"}`, "recipient"},
		{`{"channel":"sms","recipient":"  ","template":"otp"}`, "recipient"},
		{`{` + base + `,"expires_at":"tomorrow"}`, "expires_at"},
		{`{` + base + `,"not_before":12}`, "not_before"},
		{`{` + base + `,"expires_at":"2026-11-24T1:05:00Z"}`, "expires_at"},
		{`{` + base + `,"expires_at":"2026-11-24T10:05:00,5Z"}`, "expires_at"},
		{`{` + base + `,"expires_at":"2026-11-24T10:05:00+01:60"}`, "expires_at"},
		{`{` + base + `,"expires_at":"2026-11-24T10:05:00+24:00"}`, "expires_at"},
		{`{` + base + `,"expires_at":"2026-11-24T10:05:00.5+0100"}`, "expires_at"},
		{`{` + base + `,"colour":"red"}`, "colour"},
		{`{` + base + `,"vars":{"code":[1]}}`, "vars.code"},
		{`{` + base + `,"attempts":-1}`, "attempts"},
		{`{` + base + `,"id":"not-a-ulid"}`, "id"},
		{`{` + base + `,"content":{"body":"x"}}`, "content"},
		{`{"channel":"sms","recipient":"+1"}`, "template"},
		{`{"channel":"sms","recipient":"+1","content":{"body":"x","html":"y"}}`, "content.html"},
		{`{` + base + `,"not_before":"2026-01-02T00:00:00Z","expires_at":"2026-01-01T00:00:00Z"}`, "expires_at"},
		{`{` + base + `,"recipient":"` + strings.Repeat("9", MaxRecipientLen+1) + `"}`, "recipient"},
		{`{"channel":"sms","recipient":"+1","content":{"body":"x"},"vars":{"code":"1"}}`, "vars"},
		{`{` + base + `,"vars":{"code":"` + strings.Repeat("9", MaxValueLen+1) + `"}}`, "vars.code"},
		{`{` + base + `,"vars":{"code":` + strings.Repeat("9", MaxValueLen+1) + `}}`, "vars.code"},
		{`{` + base + `,"vars":{"code":"` + "\xff" + `"}}`, "vars.code"},
		{`[1]`, ""},
		{`{"channel":`, ""},
	}
	for _, tc := range cases {
		_, err := NewCodec().Decode([]byte(tc.in))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want an error on field %q", tc.in, err, tc.field)
		}
	}
}

func TestDefaultPriorityIsNormal(t *testing.T) {
	n, err := NewCodec().Decode([]byte(`{"channel":"email","recipient":"a@b.c","template":"welcome"}`))
	if err != nil || n.Priority != Normal {
		t.Fatalf("%v %v", n, err)
	}
}

func TestExpiryAndDue(t *testing.T) {
	now := time.Unix(1000, 0)
	n := &Notification{ExpiresAt: now, NotBefore: now.Add(time.Second)}
	if !n.Expired(now) || n.Expired(now.Add(-1)) {
		t.Fatal("expiry boundary wrong: a code at its expiry instant is already worthless")
	}
	if n.Due(now) || !n.Due(now.Add(time.Second)) {
		t.Fatal("not_before boundary wrong")
	}
}

func TestIdempotencyKeyCanonical(t *testing.T) {
	c := NewCodec()
	a, _ := c.Decode([]byte(`{"channel":"sms","recipient":"+1","template":"otp","vars":{"a":"1","b":2}}`))
	b, _ := c.Decode([]byte(`{"vars":{"b":"2","a":1},"template":"otp","recipient":"+1","channel":"sms"}`))
	if DefaultIdempotencyKey(a) != DefaultIdempotencyKey(b) {
		t.Fatal("var order changed the key")
	}
	// Each distinguishing field must change the key, and concatenation must not collide.
	variants := []*Notification{
		{Channel: "sms", Recipient: "+1", Template: "otp", Vars: map[string]string{"a": "1", "b": "3"}},
		{Channel: "email", Recipient: "+1", Template: "otp", Vars: map[string]string{"a": "1", "b": "2"}},
		{Channel: "sms", Recipient: "+2", Template: "otp", Vars: map[string]string{"a": "1", "b": "2"}},
		{Channel: "sms", Recipient: "+1", Template: "otq", Vars: map[string]string{"a": "1", "b": "2"}},
		{Channel: "sms", Recipient: "+1", Template: "otp", Vars: map[string]string{"a": "1b", "": "2"}},
		{Tenant: "x", Channel: "sms", Recipient: "+1", Template: "otp", Vars: map[string]string{"a": "1", "b": "2"}},
		{Channel: "sms", Recipient: "+1o", Template: "tp", Vars: map[string]string{"a": "1", "b": "2"}},
	}
	seen := map[string]int{DefaultIdempotencyKey(a): -1}
	for i, v := range variants {
		k := DefaultIdempotencyKey(v)
		if j, dup := seen[k]; dup {
			t.Fatalf("variant %d collides with %d", i, j)
		}
		seen[k] = i
	}
	// Pinned: the key is stored in dedupe databases, so it must never drift.
	if got := DefaultIdempotencyKey(a); got != "k1-"+"9dba38bacf85514cda613d76178eddd9" {
		t.Fatalf("default key changed to %s; old dedupe entries would stop matching", got)
	}
	// And one past the short paths: more vars than fit the stack, content
	// longer than the stack buffer.
	long := &Notification{Tenant: "acme", Channel: "email", Recipient: "a@example.com", Vars: map[string]string{},
		Content: &Content{Subject: "Hello", Body: strings.Repeat("body ", 200)}}
	for i := range 12 {
		long.Vars[fmt.Sprint("v", i)] = strings.Repeat("x", i)
	}
	if got := DefaultIdempotencyKey(long); got != "k1-"+"eefd8ba992ed3ee08fc33141ffb8c215" {
		t.Fatalf("default key of a long notification changed to %s", got)
	}
}

func TestPrepare(t *testing.T) {
	n := &Notification{Channel: SMS, Recipient: "+1", Template: "otp"}
	now := time.Unix(5, 0)
	n.Prepare(now)
	if len(n.ID) != 26 || !n.AcceptedAt.Equal(now) || n.IdempotencyKey != DefaultIdempotencyKey(n) {
		t.Fatalf("%+v", n)
	}
	id := n.ID
	n.Prepare(now.Add(time.Hour))
	if n.ID != id || !n.AcceptedAt.Equal(now) {
		t.Fatal("Prepare overwrote assigned fields")
	}
}

// TestDecodeInArena decodes many different records into one arena smaller
// than their total: each must equal its plain Decode after all are done
// (no record's strings written over by the next), and a Clone shares no
// memory with its original.
func TestDecodeInArena(t *testing.T) {
	c := NewCodec()
	a := NewArena(3, 100)
	var want, got []*Notification
	for i := range 200 {
		rec := fmt.Sprintf(`{"tenant":"t%d","channel":"sms","recipient":"+86138%08d","template":"otp",`+
			`"vars":{"code":"%06d","n":1234567890.123456789e-3,"ok":true},"metadata":{"k%d":"v"}}`, i, i, i, i)
		if i%3 == 0 {
			rec = fmt.Sprintf(`{"channel":"email","recipient":"u%d@example.com","content":{"subject":"s%d","body":"%s"}}`,
				i, i, strings.Repeat("b", i+1))
		}
		w, err := c.Decode([]byte(rec))
		if err != nil {
			t.Fatal(err)
		}
		g, err := c.DecodeIn(a, []byte(rec))
		if err != nil {
			t.Fatal(err)
		}
		want, got = append(want, w), append(got, g)
	}
	for i := range want {
		if !reflect.DeepEqual(want[i], got[i]) {
			t.Fatalf("record %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	n := got[1]
	cl := n.Clone()
	if !reflect.DeepEqual(n, cl) {
		t.Fatalf("clone differs: %+v", cl)
	}
	if unsafe.StringData(cl.Recipient) == unsafe.StringData(n.Recipient) || unsafe.StringData(cl.Vars["code"]) == unsafe.StringData(n.Vars["code"]) {
		t.Fatal("clone shares strings with the original")
	}
	if e := got[0].Clone(); e.Content == got[0].Content || *e.Content != *got[0].Content {
		t.Fatal("clone shares or changes the content")
	}
}

// TestArenaReset decodes records with every kind of field into an arena,
// resets it, and decodes records with none of them: each must equal its
// plain Decode, with nothing left over from the notifications it replaced.
func TestArenaReset(t *testing.T) {
	c := NewCodec()
	a := NewArena(2, 64)
	full := `{"id":"01JD3ZQ8X4K2M9N7P5R3T1V0WY","tenant":"acme","channel":"email","priority":"critical","recipient":"u@example.com",` +
		`"content":{"subject":"s","body":"b"},"metadata":{"k":"v"},"attempts":3,"not_before":"2026-11-26T09:00:00Z",` +
		`"expires_at":"2026-11-26T10:00:00Z"}`
	templated := `{"tenant":"acme","channel":"sms","recipient":"+8613800000001","template":"otp","vars":{"code":"123456"},"metadata":{"k":"v"}}`
	bare := `{"channel":"sms","recipient":"+8613800000000","template":"otp"}`
	for round := range 3 {
		for i := range 6 { // more than the arena was sized for: it grows past its first chunk
			rec := full
			if i%2 == 1 {
				rec = templated
			}
			if _, err := c.DecodeIn(a, []byte(rec)); err != nil {
				t.Fatal(err)
			}
		}
		a.Reset()
		want, err := c.Decode([]byte(bare))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			got, err := c.DecodeIn(a, []byte(bare))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d, record %d after Reset:\n got %+v\nwant %+v", round, i, got, want)
			}
		}
		a.Reset()
	}
}

// An arena reused for batches larger than it was made for grows until they
// fit, then stops allocating (the mock provider reuses its arenas so).
func TestArenaGrowsToItsBatches(t *testing.T) {
	c := NewCodec()
	a := NewArena(1, 64)
	rec := []byte(`{"channel":"webhook","recipient":"https://hooks.example/orders","content":{"body":"{\"order\":1}"}}`)
	batch := func() {
		a.Reset()
		for range 500 {
			if _, err := c.DecodeIn(a, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 3 {
		batch()
	}
	// Grown: one batch fits the chunks it kept, which it no longer replaces.
	ns, buf := unsafe.SliceData(a.ns), unsafe.SliceData(a.buf)
	batch()
	if cap(a.ns) < 500 || unsafe.SliceData(a.ns) != ns || unsafe.SliceData(a.buf) != buf {
		t.Fatalf("a grown arena still allocates a batch (chunk of %d notifications)", cap(a.ns))
	}
}

// TestPlain8 holds the eight-byte test to the byte table: every byte value
// at every position among plain bytes, and every pair of positions with
// one bad byte before a plain one that could hide it.
func TestPlain8(t *testing.T) {
	safe := func(b byte) bool { return b < 0x80 && htmlSafe[b] }
	for p := range 8 {
		for v := range 256 {
			w := []byte("aaaaaaaa")
			w[p] = byte(v)
			if got := plain8(binary.LittleEndian.Uint64(w)); got != safe(byte(v)) {
				t.Fatalf("plain8(%q) = %v, want %v", w, got, !got)
			}
			for q := range 8 {
				if q == p {
					continue
				}
				for _, u := range []byte{0x00, 0x1f, 0x20, '"', '\\', '<', '>', '&', 0x7f, 0x80, 0xff} {
					w2 := slices.Clone(w)
					w2[q] = u
					if got, want := plain8(binary.LittleEndian.Uint64(w2)), safe(byte(v)) && safe(u); got != want {
						t.Fatalf("plain8(%q) = %v, want %v", w2, got, want)
					}
				}
			}
		}
	}
}
