package partition

import (
	"context"
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
