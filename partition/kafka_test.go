package partition

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// A Produce whose records go to two partitions led by two brokers, one of
// which refuses the append, writes the other's and says which in a
// *ProduceError, as the embedded log does.
func TestKafkaProduceSomePartitionsFail(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	l, err := NewKafka(KafkaConfig{Brokers: c.ListenAddrs(), SessionTimeout: 6 * time.Second}, ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ensure(t, l, "t", 2)
	for p := range int32(2) { // kfake's nodes are 0 and 1
		if err := c.MoveTopicPartition("t", p, p); err != nil {
			t.Fatal(err)
		}
	}
	bad := c.LeaderFor("t", 1)
	if c.LeaderFor("t", 0) == bad {
		t.Fatalf("both partitions led by node %d", bad)
	}
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if c.CurrentNode() != bad {
			return nil, nil, false
		}
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.InvalidRecord.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	recs := make([]Record, 40)
	for i := range recs {
		recs[i] = Record{Topic: "t", Key: fmt.Append(nil, "k", i), Value: []byte("v")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err = l.Produce(ctx, recs)
	var pe *ProduceError
	if !errors.As(err, &pe) || !errors.Is(err, kerr.InvalidRecord) {
		t.Fatalf("Produce = %v, want a *ProduceError for the refused partition", err)
	}
	written := 0
	for i, w := range pe.Written {
		if w {
			written++
			if recs[i].Partition == 1 || recs[i].Timestamp.IsZero() {
				t.Fatalf("record %d written at %d/%d (%v): partition 1 refused everything", i, recs[i].Partition, recs[i].Offset, recs[i].Timestamp)
			}
		}
	}
	if written == 0 || written == len(recs) {
		t.Fatalf("%d of %d written, want the share of partition 0", written, len(recs))
	}
	// What the log holds of partition 0 is what was reported written.
	ends, err := l.EndOffsets(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if ends[TopicPartition{"t", 0}] != int64(written) || ends[TopicPartition{"t", 1}] != 0 {
		t.Fatalf("end offsets %v, want %d in partition 0 and none in 1", ends, written)
	}
}
