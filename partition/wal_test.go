package partition

import (
	"context"
	"fmt"
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
// keyed ones beside them still by their key, and calls spread the runs
// over every partition.
func TestWALKeylessRuns(t *testing.T) {
	w, err := wal.Open(t.TempDir(), wal.WithRetentionInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	l := NewWAL(w, ConsumerConfig{}).OwnWAL()
	defer l.Close()
	ensure(t, l, "t", 4)
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
			if want, _ := l.partitionFor("t", r.Key); r.Partition != want {
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
	used := map[int32]bool{}
	for range 8 {
		one := []Record{{Topic: "t", Value: []byte("v")}}
		if err := l.Produce(context.Background(), one); err != nil {
			t.Fatal(err)
		}
		used[one[0].Partition] = true
	}
	if len(used) != 4 {
		t.Fatalf("8 calls of one keyless record used partitions %v, want all 4", used)
	}
}
