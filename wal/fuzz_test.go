package wal

import (
	"errors"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes, as a damaged disk would, to the
// frame decoder: it must return records or ErrCorrupt, never panic or
// allocate without bound.
func FuzzDecodeFrame(f *testing.F) {
	c, err := newCompressor()
	if err != nil {
		f.Fatal(err)
	}
	defer c.close()
	recs := []Record{{Key: []byte("k"), Value: []byte("v")}, {Value: []byte("second"), Headers: []Header{{"h", []byte("x")}}}}
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		f.Add(c.appendBatch(nil, codec, 7, len(recs), 1, appendRecords(nil, recs)))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		out, err := c.decodeFrame(nil, frame, 0, 1<<20)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		h, _ := parseHeader(frame)
		if len(out) != h.count {
			t.Fatalf("decoded %d records of %d", len(out), h.count)
		}
	})
}

// FuzzParseRecords skips the CRC so the fuzzer reaches the record parser
// with arbitrary payloads.
func FuzzParseRecords(f *testing.F) {
	f.Add(appendRecords(nil, []Record{{Key: []byte("k"), Value: []byte("v"), Headers: []Header{{"a", nil}}}}), 1)
	f.Fuzz(func(t *testing.T, raw []byte, count int) {
		if count <= 0 || count > 1000 {
			return
		}
		out, err := parseRecords(nil, raw, batchHeader{count: count}, 0, count)
		if err == nil && len(out) != count {
			t.Fatalf("%d records of %d without error", len(out), count)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatal(err)
		}
	})
}
