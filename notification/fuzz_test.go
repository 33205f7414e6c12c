package notification

import (
	"errors"
	"testing"
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
