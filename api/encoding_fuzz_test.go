package api

import (
	"bytes"
	"compress/gzip"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzDecodeContent feeds request bodies of outside bytes, as gzip and
// zstd, to the decompressor: it never panics, never returns more than the
// limit, and gives back what was compressed, or errDecodedTooLarge when
// that is past the limit.
func FuzzDecodeContent(f *testing.F) {
	const limit = 4 << 10
	zenc, err := zstd.NewWriter(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer zenc.Close()
	for _, s := range []string{"", "a", `{"channel":"sms"}`, string(bytes.Repeat([]byte("x"), limit+1)), "\x1f\x8b\x08\x00", "\x28\xb5\x2f\xfd"} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		for _, enc := range []string{"gzip", "zstd"} {
			// The data as the body itself: anything may come back but a panic
			// or more than the limit.
			if out, err := decodeContent(nil, enc, data, limit); err == nil && len(out) > limit {
				t.Fatalf("%s: %d bytes decoded past the limit %d", enc, len(out), limit)
			}
			if mode%3 == 0 {
				continue
			}
			// The data compressed: it comes back whole, or too large.
			var body []byte
			if enc == "gzip" {
				var b bytes.Buffer
				zw := gzip.NewWriter(&b)
				zw.Write(data)
				if mode%3 == 2 { // two members, as concatenated files are
					zw.Close()
					zw = gzip.NewWriter(&b)
					zw.Write(data)
				}
				zw.Close()
				body = b.Bytes()
			} else {
				body = zenc.EncodeAll(data, nil)
				if mode%3 == 2 {
					body = zenc.EncodeAll(data, body)
				}
			}
			want := data
			if mode%3 == 2 {
				want = append(append([]byte(nil), data...), data...)
			}
			out, err := decodeContent([]byte("prefix"), enc, body, limit)
			switch {
			case len(want) > limit:
				if !errors.Is(err, errDecodedTooLarge) {
					t.Fatalf("%s: %d bytes past the limit: %v", enc, len(want), err)
				}
			case err != nil || !bytes.Equal(out, append([]byte("prefix"), want...)):
				t.Fatalf("%s: round trip of %d bytes: %d back, %v", enc, len(want), len(out), err)
			}
		}
	})
}
