package wal

import (
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestRetentionByAgeKeepsUncommitted(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	dir := t.TempDir()
	l := mustOpen(t, dir, WithClock(clk.Now))
	defer l.Close()
	cfg := TopicConfig{Partitions: 1, RetentionAge: 2 * time.Hour, SegmentAge: 10 * time.Minute}
	l.CreateTopic("buffer", cfg)
	// Six segments, one per 10 minutes of fake time.
	for i := range 6 {
		appendN(t, l, "buffer", 0, i*10, 10, 10)
		clk.Add(11 * time.Minute)
	}
	clk.Add(3 * time.Hour)
	l.CommitOffsets("engine", map[TopicPartition]int64{{"buffer", 0}: 25})
	n, err := l.EnforceRetention()
	if err != nil {
		t.Fatal(err)
	}
	// Segments [0,10) and [10,20) are fully committed and old; [20,30) holds 25.
	if start, _, _ := l.Offsets("buffer", 0); n != 2 || start != 20 {
		t.Fatalf("deleted %d, start %d; want 2 deleted, start 20", n, start)
	}
	checkSeq(t, readAll(t, l, "buffer", 0, 20), 20, 40)
	l.CommitOffsets("engine", map[TopicPartition]int64{{"buffer", 0}: 60})
	l.EnforceRetention()
	// The active segment is never deleted.
	if start, end, _ := l.Offsets("buffer", 0); start != 50 || end != 60 {
		t.Fatalf("start %d end %d", start, end)
	}
	// A second group that lags holds everything it has not committed.
	appendN(t, l, "buffer", 0, 60, 10, 10)
	clk.Add(11 * time.Minute)
	appendN(t, l, "buffer", 0, 70, 10, 10)
	l.CommitOffsets("audit", map[TopicPartition]int64{{"buffer", 0}: 55})
	l.CommitOffsets("engine", map[TopicPartition]int64{{"buffer", 0}: 80})
	clk.Add(3 * time.Hour)
	l.EnforceRetention()
	if start, _, _ := l.Offsets("buffer", 0); start != 50 {
		t.Fatalf("lagging group's records deleted: start %d", start)
	}
}

func TestRetentionUncommittedWhenTopicSaysSo(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := mustOpen(t, t.TempDir(), WithClock(clk.Now))
	defer l.Close()
	l.CreateTopic("status", TopicConfig{Partitions: 1, RetentionAge: time.Hour, SegmentAge: time.Minute, DeleteUncommitted: true})
	l.CreateTopic("kept", TopicConfig{Partitions: 1, RetentionAge: time.Hour, SegmentAge: time.Minute})
	for i := range 3 {
		appendN(t, l, "status", 0, i*5, 5, 5)
		appendN(t, l, "kept", 0, i*5, 5, 5)
		clk.Add(2 * time.Minute)
	}
	clk.Add(2 * time.Hour)
	l.EnforceRetention()
	if start, _, _ := l.Offsets("status", 0); start != 10 {
		t.Fatalf("status start %d, want 10", start)
	}
	if start, _, _ := l.Offsets("kept", 0); start != 0 {
		t.Fatalf("a topic no group committed on lost records: start %d", start)
	}
	if _, err := l.Read("status", 0, 3, 10, 0); err == nil {
		t.Fatal("read below start must fail")
	}
}

func TestRetentionBySize(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	l.CreateTopic("t", TopicConfig{Partitions: 1, SegmentBytes: 4096, RetentionBytes: 16 << 10, DeleteUncommitted: true})
	appendN(t, l, "t", 0, 0, 2000, 20)
	l.EnforceRetention()
	start, end, _ := l.Offsets("t", 0)
	if start == 0 || end != 2000 {
		t.Fatalf("start %d end %d", start, end)
	}
	var size int64
	l.mu.RLock()
	p := l.topics["t"].parts[0]
	l.mu.RUnlock()
	p.mu.Lock()
	for _, s := range p.segs[:len(p.segs)-1] {
		size += s.size
	}
	p.mu.Unlock()
	if size > 16<<10 {
		t.Fatalf("sealed bytes %d above the 16 KiB cap", size)
	}
	checkSeq(t, readAll(t, l, "t", 0, start), int(start), int(2000-start))
	l.Close()
	l = mustOpen(t, dir)
	defer l.Close()
	if s2, _, _ := l.Offsets("t", 0); s2 != start {
		t.Fatalf("start %d after reopen, was %d", s2, start)
	}
}
