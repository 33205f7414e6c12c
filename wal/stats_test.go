package wal

import (
	"context"
	"errors"
	"testing"
)

// Stats counts what was appended and what the topics hold; a partition
// whose write fails with its tail unknown refuses every later append,
// shows in Stats and Err, and a reopen recovers it up to its last whole
// batch.
func TestStatsAndRefusingPartition(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	if err := l.CreateTopic("a", TopicConfig{Partitions: 2, SegmentBytes: 8 << 10}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTopic("b", TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	// Stats is read while the writers append and roll segments (-race).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			l.Stats()
		}
	}()
	appendN(t, l, "a", 0, 0, 500, 10)
	<-done
	appendN(t, l, "a", 1, 0, 30, 30)
	appendN(t, l, "b", 0, 0, 7, 1)
	st := l.Stats()
	if st.Records != 537 || st.Batches != 58 || st.AppendErrors != 0 || st.BytesWritten <= 0 || st.Fsyncs < 58 {
		t.Fatalf("counters %+v, want 537 records in 58 batches, each fsynced, no errors", st)
	}
	if len(st.Topics) != 2 || st.Topics[0].Name != "a" || st.Topics[1].Name != "b" {
		t.Fatalf("topics %+v", st.Topics)
	}
	a := st.Topics[0]
	if a.Partitions != 2 || a.Records != 530 || a.Segments < 3 || a.Refusing != 0 {
		t.Fatalf("topic a %+v: want 2 partitions, 530 records, segments rolled at 8 KiB", a)
	}
	if a.Bytes < st.BytesWritten-st.Topics[1].Bytes || st.Topics[1].Records != 7 {
		t.Fatalf("topic bytes %d and %d against %d written", a.Bytes, st.Topics[1].Bytes, st.BytesWritten)
	}
	if l.Err() != nil {
		t.Fatalf("Err on a healthy log: %v", l.Err())
	}

	// The active segment's file closed under the writer: its next write
	// fails, and so does the truncate that would restore the tail.
	p, err := l.partition("a", 1)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.segs[len(p.segs)-1].f.Close()
	p.mu.Unlock()
	ctx := context.Background()
	if _, err := l.Append(ctx, "a", 1, []Record{{Value: []byte("lost")}}); err == nil {
		t.Fatal("an append to a closed segment succeeded")
	}
	if _, err := l.Append(ctx, "a", 1, []Record{{Value: []byte("refused")}}); err == nil {
		t.Fatal("an append after a failed write succeeded")
	}
	if _, err := l.Append(ctx, "a", 0, []Record{{Value: []byte("elsewhere")}}); err != nil {
		t.Fatalf("another partition: %v", err)
	}
	if err := l.Err(); !errors.Is(err, ErrRefusing) {
		t.Fatalf("Err = %v, want ErrRefusing", err)
	}
	st = l.Stats()
	if st.AppendErrors != 2 || st.Topics[0].Refusing != 1 || st.Records != 538 {
		t.Fatalf("after the failure: %d append errors, %d refusing, %d records; want 2, 1, 538", st.AppendErrors, st.Topics[0].Refusing, st.Records)
	}
	l.Close()

	l = mustOpen(t, dir)
	defer l.Close()
	if l.Err() != nil {
		t.Fatalf("Err after reopening: %v", l.Err())
	}
	if got := readAll(t, l, "a", 1, 0); len(got) != 30 {
		t.Fatalf("partition a/1 holds %d records after the reopen, want the 30 written before", len(got))
	}
	appendN(t, l, "a", 1, 30, 5, 5)
}
