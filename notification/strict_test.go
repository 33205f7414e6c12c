package notification

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// What fastjson's parser lets through and JSON does not must come back as
// an error naming the field, not go out as written.
func TestDecodeRefusesWhatJSONDoesNot(t *testing.T) {
	base := `"channel":"sms","template":"otp"`
	cases := []struct{ in, field string }{
		{`{` + base + `,"recipient":"a\qb"}`, ""},
		{`{` + base + `,"recipient":"a\x41b"}`, ""},
		{`{` + base + `,"recipient":"a\u00"}`, ""},
		{`{` + base + `,"recipient":"a` + "\t" + `b"}`, ""},
		{`{` + base + `,"recipient":"a` + "\x01" + `b"}`, ""},
		{`{` + base + `,"recipient":"a\ud800b"}`, ""},
		{`{` + base + `,"recipient":"a\udc00b"}`, ""},
		{`{` + base + `,"recipient":"a\ud800\u0041"}`, ""},
		{`{` + base + `,"recipient":"a\ud800"}`, ""},
		{`{` + base + `,"recipient":"+1","attempts":01}`, "attempts"},
		{`{` + base + `,"recipient":"+1","vars":{"code":.5}}`, "vars.code"},
		{`{` + base + `,"recipient":"+1","vars":{"code":1.}}`, "vars.code"},
		{`{` + base + `,"recipient":"+1","vars":{"code":NaN}}`, "vars.code"},
		{`{` + base + `,"recipient":"+1","vars":{"code":-Inf}}`, "vars.code"},
		{`{` + base + `,"recipient":"+1","vars":{"code":007}}`, "vars.code"},
	}
	for _, tc := range cases {
		n, err := NewCodec().Decode([]byte(tc.in))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %+v, %v; want an error on field %q", tc.in, n, err, tc.field)
		}
	}
}

func TestDecodeKeepsWhatJSONAllows(t *testing.T) {
	cases := []struct{ in, recipient, code string }{
		{`{"channel":"sms","template":"otp","recipient":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","vars":{"code":"1"}}`,
			"\"\\/\b\f\n\r\té😀", "1"},
		{"{\n\t\"channel\": \"sms\",\r\n\t\"template\": \"otp\",\n\t\"recipient\": \"+1\",\n\t\"vars\": {\"code\": -0}\n}\n", "+1", "-0"},
		{`{"channel":"sms","template":"otp","recipient":"+1","vars":{"code":1.5e3}}`, "+1", "1.5e3"},
		{`{"channel":"sms","template":"otp","recipient":"+1","vars":{"code":0.5E-2}}`, "+1", "0.5E-2"},
		{`{"channel":"sms","template":"otp","recipient":"a\\ud800","vars":{"code":"x"}}`, `a\ud800`, "x"},
		{"{\"channel\":\"sms\",\"template\":\"otp\",\"recipient\":\"+1\",\"vars\":{\"code\":\"2\"}}\r", "+1", "2"}, // an NDJSON line of a CRLF file
	}
	for _, tc := range cases {
		n, err := NewCodec().Decode([]byte(tc.in))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if n.Recipient != tc.recipient || n.Vars["code"] != tc.code {
			t.Errorf("%q: recipient %q code %q, want %q %q", tc.in, n.Recipient, n.Vars["code"], tc.recipient, tc.code)
		}
	}
	if n, err := NewCodec().Decode([]byte(`{"channel":"sms","template":"otp","recipient":"+1","attempts":3}`)); err != nil || n.Attempts != 3 {
		t.Fatalf("attempts: %+v %v", n, err)
	}
}

// The eight-bytes-at-a-time scan must see a control byte in any position,
// beside any other byte, and nothing else.
func TestHasControlEveryPosition(t *testing.T) {
	for n := range 70 {
		for pos := range n {
			for _, other := range []byte{' ', 'a', 0x7f, 0x80, 0xff, '"', '[', 0x5b, 0x5d, 0x21} {
				for _, c := range []byte{0, 0x01, '\t', '\n', 0x1f} {
					b := []byte(strings.Repeat(string(other), n))
					b[pos] = c
					if !hasControl(b) {
						t.Fatalf("missed %#x at %d of %q", c, pos, b)
					}
				}
				b := []byte(strings.Repeat(string(other), n))
				b[pos] = 0x20
				if hasControl(b) || hasControl(append(b, '\\')) {
					t.Fatalf("flagged %q", b)
				}
			}
		}
	}
	// Every word without a flagged byte passes, whatever its neighbours.
	var w [8]byte
	for _, x := range []uint64{0x2020202020202020, 0x5b5b5b5b5b5b5b5b, 0x5d5d5d5d5d5d5d5d, 0xffffffffffffffff, 0x8080808080808080, 0xdcdcdcdcdcdcdcdc, 0x2120212021202120, 0x5c5c5c5c5c5c5c5c} {
		binary.LittleEndian.PutUint64(w[:], x)
		if hasControl(w[:]) {
			t.Fatalf("flagged %x", x)
		}
	}
}

func TestTimestampsAsRFC3339Has(t *testing.T) {
	for _, ok := range []string{"2026-11-24T10:05:00Z", "2026-11-24T10:05:00.123456789Z", "2026-11-24T10:05:00+08:00",
		"2026-11-24T10:05:00.5-23:59", "2026-11-24T10:05:00-00:00"} {
		in := `{"channel":"sms","recipient":"+1","template":"otp","expires_at":"` + ok + `"}`
		n, err := NewCodec().Decode([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", ok, err)
		}
		if want, _ := time.Parse(time.RFC3339Nano, ok); !n.ExpiresAt.Equal(want) {
			t.Fatalf("%s read as %v", ok, n.ExpiresAt)
		}
	}
}
