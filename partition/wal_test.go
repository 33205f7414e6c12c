package partition

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/goutong/goutong/wal"
)

// The embedded log keeps a group's position across a restart of the whole
// process, not just of the consumer.
func TestWALGroupSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	w, err := wal.Open(dir, wal.WithRetentionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	l := NewWAL(w, ConsumerConfig{Group: "g", Topics: []string{"t"}}).OwnWAL()
	ensure(t, l, "t", 1)
	produce(t, l, "t", nil, []string{"a", "b", "c"})
	pollN(t, l, 3)
	if err := l.Commit(context.Background(), map[TopicPartition]int64{{"t", 0}: 2}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	w, err = wal.Open(dir, wal.WithRetentionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	l = NewWAL(w, ConsumerConfig{Group: "g", Topics: []string{"t"}}).OwnWAL()
	defer l.Close()
	if got := pollN(t, l, 1); string(got[0].Value) != "c" {
		t.Fatalf("resumed at %q", got[0].Value)
	}
}

// Keyless records of one Produce go to a partition in runs of stickyRun,
// keyed ones beside them still by their key.
func TestWALKeylessRuns(t *testing.T) {
	l := walWithTopics(t, "t")
	const n = 2500 // 2,250 keyless: two whole runs and part of a third
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = Record{Topic: "t", Value: []byte("v")}
		if i%10 == 0 {
			recs[i].Key = []byte(fmt.Sprint("k", i))
		}
	}
	if err := l.Produce(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	var keyless []int32
	keyedParts := map[int32]bool{}
	for _, r := range recs {
		if r.Key == nil {
			keyless = append(keyless, r.Partition)
		} else {
			keyedParts[r.Partition] = true
			if want := keyPartition(r.Key, 4); r.Partition != want {
				t.Fatalf("keyed record in partition %d, its key's is %d", r.Partition, want)
			}
		}
	}
	for i, p := range keyless {
		if run := i / stickyRun; p != keyless[run*stickyRun] {
			t.Fatalf("keyless record %d in partition %d, its run's first in %d", i, p, keyless[run*stickyRun])
		}
	}
	if keyless[0] == keyless[stickyRun] || keyless[stickyRun] == keyless[2*stickyRun] {
		t.Fatalf("consecutive runs share a partition: %d, %d, %d", keyless[0], keyless[stickyRun], keyless[2*stickyRun])
	}
	if len(keyedParts) < 2 {
		t.Fatalf("keyed records all in %v", keyedParts)
	}
}

// Keyless records of many calls fill one partition together, stickyRun
// records at a time: concurrent single-record calls (an API under load)
// are one group commit, and the runs still move over every partition.
func TestWALKeylessCallsShareARun(t *testing.T) {
	l := walWithTopics(t, "t", "u", "v")
	const callers = 64
	parts := make([]int32, 4*stickyRun)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := c; i < len(parts); i += callers {
				one := []Record{{Topic: "t", Value: []byte("v")}}
				if err := l.Produce(context.Background(), one); err != nil {
					t.Error(err)
					return
				}
				parts[i] = one[0].Partition
			}
		})
	}
	wg.Wait()
	byPart := map[int32]int{}
	for _, p := range parts {
		byPart[p]++
	}
	for p, n := range byPart {
		if n != stickyRun {
			t.Errorf("partition %d took %d records, want runs of %d: %v", p, n, stickyRun, byPart)
		}
	}
	if len(byPart) != 4 {
		t.Fatalf("%d calls of one keyless record used partitions %v, want all 4", len(parts), byPart)
	}
	// In order, calls take one partition until it has its run.
	var seq []int32
	for range 2 * stickyRun {
		one := []Record{{Topic: "v", Value: []byte("v")}}
		if err := l.Produce(context.Background(), one); err != nil {
			t.Fatal(err)
		}
		seq = append(seq, one[0].Partition)
	}
	for i, p := range seq {
		if want := seq[i/stickyRun*stickyRun]; p != want {
			t.Fatalf("call %d went to partition %d, its run's to %d", i, p, want)
		}
	}
	if seq[0] == seq[stickyRun] {
		t.Fatalf("two runs on partition %d", seq[0])
	}
	// A call larger than what its partition has left still goes to it
	// whole (one group commit), up to stickyRun; the next call moves on.
	first := []Record{{Topic: "u", Value: []byte("v")}}
	big := make([]Record, stickyRun)
	for i := range big {
		big[i] = Record{Topic: "u", Value: []byte("v")}
	}
	after := []Record{{Topic: "u", Value: []byte("v")}}
	for _, recs := range [][]Record{first, big, after} {
		if err := l.Produce(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range big {
		if r.Partition != first[0].Partition {
			t.Fatalf("a call's run split: partitions %d and %d", first[0].Partition, r.Partition)
		}
	}
	if after[0].Partition == first[0].Partition {
		t.Fatalf("the run after %d records stayed on partition %d", 1+stickyRun, first[0].Partition)
	}
}

// walWithTopics is a log of its own with the topics, 4 partitions each,
// closed when the test ends.
func walWithTopics(t *testing.T, topics ...string) *WALLog {
	t.Helper()
	w, err := wal.Open(t.TempDir(), wal.WithRetentionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	l := NewWAL(w, ConsumerConfig{}).OwnWAL()
	t.Cleanup(func() { l.Close() })
	for _, topic := range topics {
		ensure(t, l, topic, 4)
	}
	return l
}

// A Produce whose records go to two partitions, one of which fails its
// append, writes the other's and says which in a *ProduceError: the
// caller must not treat the written ones as never written.
func TestWALProduceSomePartitionsFail(t *testing.T) {
	dir := t.TempDir()
	w, err := wal.Open(dir, wal.WithRetentionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	l := NewWAL(w, ConsumerConfig{}).OwnWAL()
	t.Cleanup(func() { l.Close() })
	// The smallest segments, filled by the first append: the next rolls to
	// a new file.
	if err := w.CreateTopic("t", wal.TopicConfig{Partitions: 2, SegmentBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	keyOf := func(part int32) []byte {
		for i := 0; ; i++ {
			if k := []byte(fmt.Sprint("k", i)); keyPartition(k, 2) == part {
				return k
			}
		}
	}
	k0, k1 := keyOf(0), keyOf(1)
	full := strings.Repeat("x", 4096)
	produce(t, l, "t", []string{string(k0), string(k1)}, []string{full, full})
	// Partition 1's directory gone: its next roll cannot create a segment.
	if err := os.RemoveAll(filepath.Join(dir, "topics", "t", "1")); err != nil {
		t.Fatal(err)
	}
	recs := []Record{{Topic: "t", Key: k0, Value: []byte("a")}, {Topic: "t", Key: k1, Value: []byte("b")}, {Topic: "t", Key: k0, Value: []byte("c")}}
	err = l.Produce(context.Background(), recs)
	var pe *ProduceError
	if !errors.As(err, &pe) {
		t.Fatalf("Produce = %v, want a *ProduceError", err)
	}
	if want := []bool{true, false, true}; !slices.Equal(pe.Written, want) {
		t.Fatalf("Written = %v, want %v", pe.Written, want)
	}
	if rest := Unwritten(recs, err); len(rest) != 1 || string(rest[0].Value) != "b" {
		t.Fatalf("Unwritten = %+v, want the record of partition 1", rest)
	}
	if recs[0].Partition != 0 || recs[0].Offset != 1 || recs[2].Offset != 2 || recs[0].Timestamp.IsZero() || !recs[1].Timestamp.IsZero() {
		t.Fatalf("written records' positions %+v %+v, the other's timestamp %v", recs[0], recs[2], recs[1].Timestamp)
	}
	got, err := w.Read("t", 0, 1, 10, 1<<20)
	if err != nil || len(got) != 2 || string(got[0].Value) != "a" || string(got[1].Value) != "c" {
		t.Fatalf("partition 0 holds %v (%v), want a and c", got, err)
	}

	// All in the failing partition: a plain error, nothing written.
	err = l.Produce(context.Background(), []Record{{Topic: "t", Key: k1, Value: []byte("d")}})
	if err == nil || errors.As(err, &pe) {
		t.Fatalf("Produce to the failing partition alone = %v, want an error that is no *ProduceError", err)
	}
	if rest := Unwritten(recs[1:2], err); len(rest) != 1 {
		t.Fatalf("Unwritten of a plain error = %+v, want every record", rest)
	}
}
