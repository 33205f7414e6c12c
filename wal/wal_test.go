package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustOpen(t testing.TB, dir string, opts ...Option) *Log {
	t.Helper()
	l, err := Open(dir, append([]Option{WithRetentionInterval(0)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func val(i int) []byte { return fmt.Appendf(nil, "value-%06d-%s", i, bytes.Repeat([]byte("x"), i%50)) }

func appendN(t testing.TB, l *Log, topic string, part int32, from, n, perBatch int) {
	t.Helper()
	for i := from; i < from+n; i += perBatch {
		var recs []Record
		for j := i; j < min(i+perBatch, from+n); j++ {
			recs = append(recs, Record{Key: fmt.Appendf(nil, "k%d", j), Value: val(j)})
		}
		base, err := l.Append(context.Background(), topic, part, recs)
		if err != nil {
			t.Fatal(err)
		}
		if base != int64(i) {
			t.Fatalf("base %d, want %d", base, i)
		}
	}
}

func readAll(t testing.TB, l *Log, topic string, part int32, from int64) []Record {
	t.Helper()
	var out []Record
	for {
		recs, err := l.Read(topic, part, from, 333, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		from = recs[len(recs)-1].Offset + 1
	}
}

func checkSeq(t testing.TB, recs []Record, from, n int) {
	t.Helper()
	if len(recs) != n {
		t.Fatalf("got %d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		want := from + i
		if r.Offset != int64(want) || !bytes.Equal(r.Value, val(want)) || string(r.Key) != fmt.Sprintf("k%d", want) {
			t.Fatalf("record %d: offset %d key %q value %q", i, r.Offset, r.Key, r.Value)
		}
	}
}

func TestAppendReadEveryCodecAcrossSegments(t *testing.T) {
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			dir := t.TempDir()
			l := mustOpen(t, dir)
			if err := l.CreateTopic("t", TopicConfig{Partitions: 2, Codec: codec, SegmentBytes: 8 << 10}); err != nil {
				t.Fatal(err)
			}
			appendN(t, l, "t", 1, 0, 3000, 7)
			checkSeq(t, readAll(t, l, "t", 1, 0), 0, 3000)
			// Any starting offset, found through the sparse index.
			for _, from := range []int{1, 6, 7, 1234, 2999} {
				checkSeq(t, readAll(t, l, "t", 1, int64(from)), from, 3000-from)
			}
			if recs, err := l.Read("t", 0, 0, 10, 0); err != nil || len(recs) != 0 {
				t.Fatalf("empty partition: %v %v", recs, err)
			}
			if _, err := l.Read("t", 1, 3001, 10, 0); !errors.Is(err, ErrOffsetOutOfRange) {
				t.Fatalf("past end: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			segs, _ := filepath.Glob(filepath.Join(dir, "topics/t/1/*.log"))
			if len(segs) < 3 {
				t.Fatalf("expected several segments, got %d", len(segs))
			}
			l = mustOpen(t, dir)
			defer l.Close()
			checkSeq(t, readAll(t, l, "t", 1, 0), 0, 3000)
			appendN(t, l, "t", 1, 3000, 10, 3)
			checkSeq(t, readAll(t, l, "t", 1, 2990), 2990, 20)
		})
	}
}

// A sealed segment missing from the middle of a partition (a slip of an
// operator's rm, a failed restore) leaves a gap of offsets: open refuses
// the log rather than serve the records around it as if none were lost.
func TestMissingSegmentRefusesToOpen(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	if err := l.CreateTopic("t", TopicConfig{Partitions: 1, SegmentBytes: 8 << 10}); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, "t", 0, 0, 2000, 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "topics/t/0/*.log"))
	if len(segs) < 3 {
		t.Fatalf("expected several segments, got %d", len(segs))
	}
	// Glob sorts by name, not by base offset; any but the first and last will do.
	victim := segs[1]
	if victim == filepath.Join(dir, "topics/t/0/0.log") {
		victim = segs[2]
	}
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	os.Remove(strings.TrimSuffix(victim, ".log") + ".idx")
	l2, err := Open(dir, WithRetentionInterval(0))
	if err == nil {
		l2.Close()
		t.Fatalf("opened with %s missing", filepath.Base(victim))
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
}

func TestHeadersAndNilKeys(t *testing.T) {
	l := mustOpen(t, t.TempDir())
	defer l.Close()
	l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: CodecS2})
	in := []Record{
		{Value: []byte("a")},
		{Key: []byte{}, Value: nil, Headers: []Header{{"reason", []byte("bad json")}, {"empty", nil}}},
	}
	if _, err := l.Append(context.Background(), "t", 0, in); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, l, "t", 0, 0)
	if out[0].Key != nil || string(out[0].Value) != "a" || out[1].Key == nil || len(out[1].Key) != 0 {
		t.Fatalf("%+v", out)
	}
	if len(out[1].Headers) != 2 || out[1].Headers[0].Key != "reason" || string(out[1].Headers[0].Value) != "bad json" {
		t.Fatalf("headers %+v", out[1].Headers)
	}
}

func TestConcurrentAppendersAndTailingReader(t *testing.T) {
	l := mustOpen(t, t.TempDir(), WithQueueDepth(8))
	defer l.Close()
	l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: CodecS2, SegmentBytes: 64 << 10})
	const writers, per = 16, 500
	done := make(chan map[string]int64)
	go func() { // tail while writers run
		seen := map[string]int64{}
		var next int64
		ch, stop := l.Watch("t")
		defer stop()
		for next < writers*per {
			recs, err := l.Read("t", 0, next, 1000, 0)
			if err != nil {
				t.Error(err)
				break
			}
			if len(recs) == 0 {
				<-ch
				continue
			}
			for _, r := range recs {
				if r.Offset != next {
					t.Errorf("offset %d, want %d", r.Offset, next)
				}
				seen[string(r.Value)] = r.Offset
				next++
			}
		}
		done <- seen
	}()
	var wg sync.WaitGroup
	acked := make([][]int64, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				base, err := l.Append(context.Background(), "t", 0, []Record{{Value: fmt.Appendf(nil, "w%d-%d", w, i)}})
				if err != nil {
					t.Error(err)
					return
				}
				acked[w] = append(acked[w], base)
			}
		})
	}
	wg.Wait()
	seen := <-done
	for w := range writers {
		for i, off := range acked[w] {
			if got, ok := seen[fmt.Sprintf("w%d-%d", w, i)]; !ok || got != off {
				t.Fatalf("w%d-%d acked at %d, read at %d (%v)", w, i, off, got, ok)
			}
			if i > 0 && off <= acked[w][i-1] {
				t.Fatal("one writer's appends out of order")
			}
		}
	}
}

func TestCloseDrainsQueuedAppends(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	l.CreateTopic("t", TopicConfig{Partitions: 1})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	for i := range 200 {
		err := l.AppendAsync(context.Background(), "t", 0, []Record{{Value: val(i)}}, func(_ int64, err error) {
			if err == nil {
				mu.Lock()
				acked++
				mu.Unlock()
			}
			wg.Done()
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if acked != 200 {
		t.Fatalf("acked %d of 200 queued appends", acked)
	}
	if _, err := l.Append(context.Background(), "t", 0, []Record{{Value: []byte("late")}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	l = mustOpen(t, dir)
	defer l.Close()
	if _, end, _ := l.Offsets("t", 0); end != 200 {
		t.Fatalf("end %d after reopen", end)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	defer l.Close()
	if _, err := Open(dir); err == nil {
		t.Fatal("a second Open of the same directory must fail")
	}
}

func TestCreateTopicRules(t *testing.T) {
	l := mustOpen(t, t.TempDir())
	defer l.Close()
	if err := l.CreateTopic("t", TopicConfig{Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTopic("t", TopicConfig{Partitions: 3}); err != nil {
		t.Fatalf("same config again: %v", err)
	}
	if err := l.CreateTopic("t", TopicConfig{Partitions: 4}); !errors.Is(err, ErrTopicExists) {
		t.Fatalf("other partitions: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b"} {
		if l.CreateTopic(bad, TopicConfig{Partitions: 1}) == nil {
			t.Fatalf("name %q accepted", bad)
		}
	}
	for _, bad := range []TopicConfig{
		{Partitions: 0},
		{Partitions: 4097},
		{Partitions: 1, Fsync: "sometimes"},
		{Partitions: 1, Codec: CodecZstd + 1},
		{Partitions: 1, SegmentBytes: 4095},
		{Partitions: 1, RetentionAge: -time.Second},
		{Partitions: 1, RetentionBytes: -1},
	} {
		if err := l.CreateTopic("z", bad); err == nil {
			t.Fatalf("bad config %+v accepted", bad)
		}
	}
	if _, ok := l.TopicConfig("z"); ok {
		t.Fatal("a refused topic exists")
	}
	if _, err := l.Append(context.Background(), "nope", 0, []Record{{}}); !errors.Is(err, ErrUnknownTopic) {
		t.Fatal(err)
	}
}

func TestFsyncPolicies(t *testing.T) {
	for _, pol := range []FsyncPolicy{FsyncEveryGroup, FsyncInterval, FsyncNever} {
		t.Run(string(pol), func(t *testing.T) {
			dir := t.TempDir()
			l := mustOpen(t, dir)
			l.CreateTopic("t", TopicConfig{Partitions: 1, Fsync: pol, FsyncInterval: time.Millisecond})
			appendN(t, l, "t", 0, 0, 100, 10)
			l.Close()
			l = mustOpen(t, dir)
			defer l.Close()
			checkSeq(t, readAll(t, l, "t", 0, 0), 0, 100)
			cfg, _ := l.TopicConfig("t")
			if cfg.Fsync != pol {
				t.Fatalf("policy stored as %q", cfg.Fsync)
			}
		})
	}
}

func TestOffsetsPersist(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	tp0, tp1 := TopicPartition{"t", 0}, TopicPartition{"t", 1}
	if err := l.CommitOffsets("g", map[TopicPartition]int64{tp0: 5, tp1: 9}); err != nil {
		t.Fatal(err)
	}
	if err := l.CommitOffsets("g", map[TopicPartition]int64{tp0: 7}); err != nil {
		t.Fatal(err)
	}
	l.CommitOffsets("weird/name with spaces", map[TopicPartition]int64{tp0: 1})
	l.Close()
	// A crash mid-commit leaves a temp file; it must not count.
	os.WriteFile(filepath.Join(dir, "groups", "67.json.tmp"), []byte("garbage"), 0o644)
	l = mustOpen(t, dir)
	defer l.Close()
	got := l.CommittedOffsets("g")
	if got[tp0] != 7 || got[tp1] != 9 || len(got) != 2 {
		t.Fatalf("offsets %v", got)
	}
	if l.CommittedOffsets("weird/name with spaces")[tp0] != 1 {
		t.Fatal("group name with odd characters lost")
	}
}

func TestSealedIndexRebuilt(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir)
	l.CreateTopic("t", TopicConfig{Partitions: 1, SegmentBytes: 4096})
	appendN(t, l, "t", 0, 0, 500, 5)
	l.Close()
	idx, _ := filepath.Glob(filepath.Join(dir, "topics/t/0/*.idx"))
	os.WriteFile(idx[0], []byte("not an index at all, 24!"), 0o644) // wrong but well sized
	os.Remove(idx[1])
	l = mustOpen(t, dir)
	defer l.Close()
	checkSeq(t, readAll(t, l, "t", 0, 0), 0, 500)
	checkSeq(t, readAll(t, l, "t", 0, 250), 250, 250)
}

// TestFrameCache reads big frames in small steps from two readers, with the
// cache, with a budget too small for one frame and without it: every way
// returns the same records, a frame is kept only while a read is inside it,
// and the budget holds.
func TestFrameCache(t *testing.T) {
	for _, budget := range []int64{64 << 20, 4 << 10, 0} {
		t.Run(fmt.Sprint(budget), func(t *testing.T) {
			l := mustOpen(t, t.TempDir(), WithFrameCache(budget))
			defer l.Close()
			if err := l.CreateTopic("t", TopicConfig{Partitions: 2, Codec: CodecS2, SegmentBytes: 64 << 10}); err != nil {
				t.Fatal(err)
			}
			appendN(t, l, "t", 0, 0, 3000, 700)
			appendN(t, l, "t", 1, 0, 3000, 700)
			var got [2][]Record
			var off [2]int64
			for step := 0; ; step++ {
				more := false
				for p := range int32(2) {
					recs, err := l.Read("t", p, off[p], 1+step%97, 1<<20)
					if err != nil {
						t.Fatal(err)
					}
					if len(recs) > 0 {
						more = true
						got[p] = append(got[p], recs...)
						off[p] = recs[len(recs)-1].Offset + 1
					}
					if c := l.frameCache.Load(); c > max(budget, 0) {
						t.Fatalf("frame cache holds %d bytes, budget %d", c, budget)
					}
				}
				if !more {
					break
				}
			}
			checkSeq(t, got[0], 0, 3000)
			checkSeq(t, got[1], 0, 3000)
			if c := l.frameCache.Load(); c != 0 {
				t.Fatalf("%d bytes of frames kept after every read passed them", c)
			}
			// A read that stops inside a frame keeps it (when it fits).
			if _, err := l.Read("t", 0, 10, 5, 1<<20); err != nil {
				t.Fatal(err)
			}
			if kept := l.frameCache.Load() > 0; kept != (budget >= 64<<10) {
				t.Fatalf("frame kept = %v with budget %d", kept, budget)
			}
			// The kept frame serves a later read from inside it.
			recs, err := l.Read("t", 0, 15, 1000, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			checkSeq(t, recs, 15, 1000)
		})
	}
}

// Sync makes an interval topic's acknowledged appends durable at once, and
// fsyncs only partitions written since their last fsync.
func TestSyncOfIntervalTopic(t *testing.T) {
	l := mustOpen(t, t.TempDir())
	defer l.Close()
	if err := l.CreateTopic("t", TopicConfig{Partitions: 2, Fsync: FsyncInterval, FsyncInterval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	syncs := func() (n [2]int64) {
		for i := range n {
			p, err := l.partition("t", int32(i))
			if err != nil {
				t.Fatal(err)
			}
			n[i] = p.lazySyncs.Load()
		}
		return n
	}
	appendN(t, l, "t", 0, 0, 10, 5)
	if got := syncs(); got != [2]int64{0, 0} {
		t.Fatalf("fsyncs before Sync %v: the interval is an hour", got)
	}
	if err := l.Sync(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if got := syncs(); got != [2]int64{1, 0} {
		t.Fatalf("fsyncs after Sync %v, want the written partition's only", got)
	}
	if err := l.Sync(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if got := syncs(); got != [2]int64{1, 0} {
		t.Fatalf("fsyncs after a Sync with nothing written %v, want none more", got)
	}
	if err := l.Sync(ctx, "nope"); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("Sync of an unknown topic: %v", err)
	}
	l.Close()
	if err := l.Sync(ctx, "t"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close: %v", err)
	}
}
