package wal

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// An append larger than a frame may hold is written as several frames: it
// reads back whole, and after a reopen too. Written as one frame, it was
// acknowledged and then read as corrupt, and the next open cut it off.
func TestAppendLargerThanAFrame(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	if err := l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: CodecNone}); err != nil {
		t.Fatal(err)
	}
	const n, size = 80, 1 << 20 // 80 MiB in one append
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = Record{Value: bytes.Repeat([]byte{byte('a' + i%26)}, size)}
	}
	if _, err := l.Append(context.Background(), "t", 0, recs); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), "t", 0, []Record{{Value: []byte("after")}}); err != nil {
		t.Fatal(err)
	}
	check := func(l *Log, when string) {
		t.Helper()
		var got []Record
		for off := int64(0); off < n+1; off += int64(len(got)) {
			var err error
			if got, err = l.Read("t", 0, off, 10, 16<<20); err != nil || len(got) == 0 {
				t.Fatalf("%s: read at %d: %d records, %v", when, off, len(got), err)
			}
			for j, r := range got {
				if o := off + int64(j); o < n && (len(r.Value) != size || r.Value[0] != byte('a'+o%26)) {
					t.Fatalf("%s: record %d holds %d bytes of %q", when, o, len(r.Value), r.Value[:1])
				}
			}
		}
	}
	check(l, "written")
	// A record no frame can hold is refused, and nothing of its append is written.
	huge := []Record{{Value: []byte("x")}, {Value: make([]byte, MaxRecordBytes+1)}}
	if _, err := l.Append(context.Background(), "t", 0, huge); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("append of a record above MaxRecordBytes: %v", err)
	}
	if _, end, _ := l.Offsets("t", 0); end != n+1 {
		t.Fatalf("end %d after the refused append, want %d", end, n+1)
	}
	l.Close()
	l = mustOpen(t, dir)
	defer l.Close()
	check(l, "reopened")
}
