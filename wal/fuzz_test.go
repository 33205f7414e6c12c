package wal

import (
	"bytes"
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

// FuzzParseIndex feeds arbitrary bytes, as a damaged or half-written index
// file would hold, to the index parser: it must refuse what it cannot trust
// (the caller then rebuilds the index from the log) and accept only an
// index a read can binary search: starting at the segment's base, strictly
// increasing, inside the segment, and what append writes back.
func FuzzParseIndex(f *testing.F) {
	good := indexEntry{offset: 100, pos: 0, ts: 1}.append(nil)
	good = indexEntry{offset: 180, pos: 70000, ts: 2}.append(good)
	f.Add(good, int64(100), int64(200000))
	f.Add(good, int64(100), int64(70000)) // the second entry past the end
	f.Add(good[:30], int64(100), int64(200000))
	f.Add([]byte{}, int64(0), int64(0))
	f.Fuzz(func(t *testing.T, b []byte, base, size int64) {
		out, ok := parseIndex(b, base, size)
		if !ok {
			if out != nil {
				t.Fatalf("refused, yet %d entries", len(out))
			}
			return
		}
		if len(out) == 0 || out[0].offset != base || out[0].pos != 0 {
			t.Fatalf("first entry %+v for base %d", out, base)
		}
		var again []byte
		for i, e := range out {
			if e.pos >= size || i > 0 && (e.pos <= out[i-1].pos || e.offset <= out[i-1].offset) {
				t.Fatalf("entry %d %+v after %+v, size %d", i, e, out[max(i-1, 0)], size)
			}
			again = e.append(again)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("append gives back %x, not %x", again, b)
		}
	})
}
