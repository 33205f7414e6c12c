package partition

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// Kafka-only: several members of one group split the partitions, and when
// one leaves, its partitions move to the others after OnRevoked.
func TestKafkaGroupSplitsAndRebalances(t *testing.T) {
	open := kafkaBackend().setup(t)
	p := open(ConsumerConfig{})
	ensure(t, p, "s", 4)
	var mu sync.Mutex
	var revokedB [][]TopicPartition // cooperative rebalances may revoke before Close does
	a := open(ConsumerConfig{Group: "g", Topics: []string{"s"}})
	b := open(ConsumerConfig{Group: "g", Topics: []string{"s"},
		OnRevoked: func(_ context.Context, tps []TopicPartition) {
			mu.Lock()
			revokedB = append(revokedB, tps)
			mu.Unlock()
		}})
	// Members join on their first poll; keep both polling in the background.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, m := range []Log{a, b} {
		go func() {
			for ctx.Err() == nil {
				m.Poll(ctx, 10)
			}
		}()
	}
	waitUntil(t, "a split assignment", func() bool {
		as, bs := a.Assigned(), b.Assigned()
		if len(as) == 0 || len(bs) == 0 || len(as)+len(bs) != 4 {
			return false
		}
		for _, tp := range as {
			if slices.Contains(bs, tp) {
				t.Fatalf("partition %v owned by both members", tp)
			}
		}
		return true
	})
	// Once both members are in, the split is stable until one leaves.
	mu.Lock()
	before := len(revokedB)
	mu.Unlock()
	owned := b.Assigned()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	last := revokedB[before:]
	mu.Unlock()
	var onClose []TopicPartition
	for _, tps := range last {
		onClose = append(onClose, tps...)
	}
	if !slices.Equal(sorted(onClose), sorted(owned)) {
		t.Fatalf("revoked on close %v, owned %v", onClose, owned)
	}
	waitUntil(t, "the remaining member to own every partition", func() bool { return len(a.Assigned()) == 4 })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A member opened with JoinLater is given no partitions until it polls:
// the others keep them meanwhile.
func TestKafkaJoinLater(t *testing.T) {
	open := kafkaBackend().setup(t)
	p := open(ConsumerConfig{})
	ensure(t, p, "s", 4)
	a := open(ConsumerConfig{Group: "g", Topics: []string{"s"}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			a.Poll(ctx, 10)
		}
	}()
	waitUntil(t, "a to own every partition", func() bool { return len(a.Assigned()) == 4 })
	b := open(ConsumerConfig{Group: "g", Topics: []string{"s"}, JoinLater: true})
	time.Sleep(time.Second) // a rebalance for b would have come by now
	if got := b.Assigned(); len(got) != 0 || len(a.Assigned()) != 4 {
		t.Fatalf("before b polls: a owns %v, b %v; want a all", a.Assigned(), got)
	}
	go func() {
		for ctx.Err() == nil {
			b.Poll(ctx, 10)
		}
	}()
	waitUntil(t, "b to join at its first poll", func() bool {
		return len(b.Assigned()) > 0 && len(a.Assigned())+len(b.Assigned()) == 4
	})
}
