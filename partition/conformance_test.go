package partition

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/goutong/goutong/wal"
)

// backend opens Logs that share one underlying log (one wal directory or one
// Kafka cluster) for the duration of a test.
type backend struct {
	name string
	// setup starts a fresh underlying log and returns how to open Logs on it.
	setup func(t testing.TB) func(cc ConsumerConfig) Log
}

func walBackend() backend {
	return backend{name: "wal", setup: func(t testing.TB) func(ConsumerConfig) Log {
		w, err := wal.Open(t.TempDir(), wal.WithRetentionInterval(0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		return func(cc ConsumerConfig) Log {
			l := NewWAL(w, cc)
			t.Cleanup(func() { l.Close() })
			return l
		}
	}}
}

func kafkaBackend() backend {
	return backend{name: "kafka", setup: func(t testing.TB) func(ConsumerConfig) Log {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return func(cc ConsumerConfig) Log {
			l, err := NewKafka(KafkaConfig{Brokers: c.ListenAddrs(), SessionTimeout: 6 * time.Second}, cc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l
		}
	}}
}

func TestConformance(t *testing.T) {
	for _, b := range []backend{walBackend(), kafkaBackend()} {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range conformanceCases {
				t.Run(c.name, func(t *testing.T) { c.run(t, b.setup(t)) })
			}
		})
	}
}

var conformanceCases = []struct {
	name string
	run  func(t *testing.T, open func(ConsumerConfig) Log)
}{
	{"ProduceKeyedPollInOrder", testProduceKeyedPollInOrder},
	{"PollRespectsMax", testPollRespectsMax},
	{"CommitThenNewMemberResumes", testCommitThenNewMemberResumes},
	{"PauseResume", testPauseResume},
	{"PollBlocksUntilProduce", testPollBlocksUntilProduce},
	{"PollReturnsOnCancel", testPollReturnsOnCancel},
	{"AssignRevokeAndCommitInRevoke", testAssignRevoke},
	{"HeadersAndNilKeys", testHeadersAndNilKeys},
	{"Lag", testLag},
	{"EndOffsets", testEndOffsets},
	{"ProducerOnly", testProducerOnly},
	{"StartAtWithoutCommits", testStartAt},
}

const waitFor = 30 * time.Second

func ensure(t *testing.T, l Log, name string, parts int32) {
	t.Helper()
	if err := l.EnsureTopics(context.Background(), TopicSpec{Name: name, Partitions: parts}); err != nil {
		t.Fatal(err)
	}
	// Creating again is not an error.
	if err := l.EnsureTopics(context.Background(), TopicSpec{Name: name, Partitions: parts}); err != nil {
		t.Fatalf("second EnsureTopics: %v", err)
	}
}

func produce(t *testing.T, l Log, topic string, keys []string, values []string) []Record {
	t.Helper()
	recs := make([]Record, len(values))
	for i := range values {
		recs[i] = Record{Topic: topic, Value: []byte(values[i])}
		if keys != nil {
			recs[i].Key = []byte(keys[i])
		}
	}
	if err := l.Produce(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	return recs
}

func pollN(t *testing.T, l Log, n int) []Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out []Record
	for len(out) < n {
		recs, err := l.Poll(ctx, 100)
		if err != nil {
			t.Fatalf("after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, recs...)
	}
	if len(out) != n {
		t.Fatalf("polled %d records, want %d", len(out), n)
	}
	return out
}

// pollNothing checks that no record arrives within d.
func pollNothing(t *testing.T, l Log, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	recs, err := l.Poll(ctx, 100)
	if len(recs) > 0 {
		t.Fatalf("unexpected records: %d, first %q", len(recs), recs[0].Value)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("poll: %v", err)
	}
}

func testProduceKeyedPollInOrder(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "orders", 4)
	var keys, vals []string
	for i := range 1000 {
		keys = append(keys, fmt.Sprintf("k%d", i%50))
		vals = append(vals, fmt.Sprintf("k%d-%04d", i%50, i))
	}
	produced := produce(t, p, "orders", keys, vals)
	keyPart := map[string]int32{}
	lastOff := map[int32]int64{}
	for _, r := range produced {
		if kp, ok := keyPart[string(r.Key)]; ok && kp != r.Partition {
			t.Fatalf("key %s in partitions %d and %d", r.Key, kp, r.Partition)
		}
		keyPart[string(r.Key)] = r.Partition
		if o, ok := lastOff[r.Partition]; ok && r.Offset <= o {
			t.Fatalf("offsets not increasing in partition %d", r.Partition)
		}
		lastOff[r.Partition] = r.Offset
	}
	if len(lastOff) < 2 {
		t.Fatalf("50 keys all went to %d partition(s)", len(lastOff))
	}
	c := open(ConsumerConfig{Group: "g", Topics: []string{"orders"}})
	got := pollN(t, c, 1000)
	where := map[string]Record{}
	for _, r := range produced {
		where[string(r.Value)] = r
	}
	lastSeq := map[string]string{}
	for _, r := range got {
		want, ok := where[string(r.Value)]
		if !ok {
			t.Fatalf("unknown or repeated record %q", r.Value)
		}
		delete(where, string(r.Value))
		if r.Partition != want.Partition || r.Offset != want.Offset || string(r.Key) != string(want.Key) || r.Topic != "orders" {
			t.Fatalf("record %q at %d/%d, produced at %d/%d", r.Value, r.Partition, r.Offset, want.Partition, want.Offset)
		}
		if prev := lastSeq[string(r.Key)]; prev >= string(r.Value) {
			t.Fatalf("key %s out of order: %s after %s", r.Key, r.Value, prev)
		}
		lastSeq[string(r.Key)] = string(r.Value)
		if r.Timestamp.IsZero() {
			t.Fatal("no timestamp")
		}
	}
	pollNothing(t, c, 200*time.Millisecond)
}

func testPollRespectsMax(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "m", 1)
	produce(t, p, "m", nil, slices.Repeat([]string{"x"}, 50))
	c := open(ConsumerConfig{Group: "g", Topics: []string{"m"}})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	total := 0
	for total < 50 {
		recs, err := c.Poll(ctx, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > 7 {
			t.Fatalf("poll of at most 7 returned %d", len(recs))
		}
		total += len(recs)
	}
}

func testCommitThenNewMemberResumes(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "c", 2)
	var vals []string
	for i := range 100 {
		vals = append(vals, fmt.Sprint(i))
	}
	produced := produce(t, p, "c", vals, vals)
	c := open(ConsumerConfig{Group: "g", Topics: []string{"c"}})
	got := pollN(t, c, 100)
	// Commit the first half of each partition, as a watermark would.
	perPart := map[int32][]Record{}
	for _, r := range got {
		perPart[r.Partition] = append(perPart[r.Partition], r)
	}
	commit := map[TopicPartition]int64{}
	want := map[string]bool{}
	for part, recs := range perPart {
		half := len(recs) / 2
		commit[TopicPartition{"c", part}] = recs[half].Offset
		for _, r := range recs[half:] {
			want[string(r.Value)] = true
		}
	}
	if err := c.Commit(context.Background(), commit); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := open(ConsumerConfig{Group: "g", Topics: []string{"c"}})
	again := pollN(t, c2, len(want))
	for _, r := range again {
		if !want[string(r.Value)] {
			t.Fatalf("record %q below the committed offset was redelivered", r.Value)
		}
		delete(want, string(r.Value))
	}
	pollNothing(t, c2, 200*time.Millisecond)
	// Another group is independent and starts at the oldest record.
	other := open(ConsumerConfig{Group: "other", Topics: []string{"c"}})
	if n := len(pollN(t, other, len(produced))); n != 100 {
		t.Fatal(n)
	}
}

func testPauseResume(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "p", 2)
	var keys []string
	for i := range 40 {
		keys = append(keys, fmt.Sprint(i))
	}
	first := produce(t, p, "p", keys, keys)
	c := open(ConsumerConfig{Group: "g", Topics: []string{"p"}})
	pollN(t, c, 40)
	// From here on, records by partition: pause partition 0.
	paused := TopicPartition{"p", 0}
	c.Pause(paused)
	more := produce(t, p, "p", keys, keys)
	var want0, want1 int
	for _, r := range more {
		if r.Partition == 0 {
			want0++
		} else {
			want1++
		}
	}
	if want0 == 0 || want1 == 0 || len(first) != 40 {
		t.Fatalf("keys did not spread: %d/%d", want0, want1)
	}
	for _, r := range pollN(t, c, want1) {
		if r.Partition == 0 {
			t.Fatal("record from a paused partition")
		}
	}
	pollNothing(t, c, 300*time.Millisecond)
	c.Resume(paused)
	for _, r := range pollN(t, c, want0) {
		if r.Partition != 0 {
			t.Fatal("unexpected partition after resume")
		}
	}
}

func testPollBlocksUntilProduce(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "b", 3)
	c := open(ConsumerConfig{Group: "g", Topics: []string{"b"}})
	got := make(chan []Record, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		recs, _ := c.Poll(ctx, 10)
		got <- recs
	}()
	// Wait for the member to own its partitions before producing, so the
	// poll is already blocked when the record arrives.
	deadline := time.Now().Add(waitFor)
	for len(c.Assigned()) < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	produce(t, p, "b", []string{"late"}, []string{"arrived"})
	recs := <-got
	if len(recs) != 1 || string(recs[0].Value) != "arrived" {
		t.Fatalf("blocked poll returned %v", recs)
	}
}

func testPollReturnsOnCancel(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "x", 1)
	c := open(ConsumerConfig{Group: "g", Topics: []string{"x"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if recs, err := c.Poll(ctx, 10); len(recs) != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("poll on a canceled context: %v %v", recs, err)
	}
}

func testAssignRevoke(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "a", 3)
	vals := []string{"a", "b", "c", "d", "e", "f"}
	produced := produce(t, p, "a", vals, vals)
	left := 0
	for _, r := range produced {
		if r.Offset >= 1 {
			left++
		}
	}
	var mu sync.Mutex
	var assigned, revoked []TopicPartition
	var c Log
	c = open(ConsumerConfig{Group: "g", Topics: []string{"a"},
		OnAssigned: func(_ context.Context, tps []TopicPartition) {
			mu.Lock()
			assigned = append(assigned, tps...)
			mu.Unlock()
		},
		OnRevoked: func(ctx context.Context, tps []TopicPartition) {
			mu.Lock()
			revoked = append(revoked, tps...)
			mu.Unlock()
			// The engine commits its watermarks here before losing the partitions.
			commit := map[TopicPartition]int64{}
			for _, tp := range tps {
				commit[tp] = 1
			}
			if err := c.Commit(ctx, commit); err != nil {
				t.Errorf("commit in OnRevoked: %v", err)
			}
		}})
	pollN(t, c, 6)
	all := []TopicPartition{{"a", 0}, {"a", 1}, {"a", 2}}
	mu.Lock()
	if !slices.Equal(sorted(assigned), all) {
		t.Fatalf("assigned %v", assigned)
	}
	mu.Unlock()
	if !slices.Equal(sorted(c.Assigned()), all) {
		t.Fatalf("Assigned() %v", c.Assigned())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if !slices.Equal(sorted(revoked), all) {
		t.Fatalf("revoked on close %v", revoked)
	}
	mu.Unlock()
	// Offset 1 was committed on each partition in OnRevoked.
	c2 := open(ConsumerConfig{Group: "g", Topics: []string{"a"}})
	for _, r := range pollN(t, c2, left) {
		if r.Offset < 1 {
			t.Fatalf("record %d/%d below the offset committed in OnRevoked", r.Partition, r.Offset)
		}
	}
	pollNothing(t, c2, 200*time.Millisecond)
}

func sorted(tps []TopicPartition) []TopicPartition {
	out := slices.Clone(tps)
	slices.SortFunc(out, func(a, b TopicPartition) int { return int(a.Partition - b.Partition) })
	return out
}

func testHeadersAndNilKeys(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "h", 2)
	recs := []Record{
		{Topic: "h", Value: []byte("no key 1")},
		{Topic: "h", Value: []byte("no key 2")},
		{Topic: "h", Key: []byte("k"), Value: []byte("poison"), Headers: []Header{{"error", []byte(`field "recipient": missing`)}, {"attempts", []byte("3")}}},
	}
	if err := p.Produce(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	c := open(ConsumerConfig{Group: "g", Topics: []string{"h"}})
	for _, r := range pollN(t, c, 3) {
		switch string(r.Value) {
		case "poison":
			if v, ok := r.HeaderValue("error"); !ok || string(v) != `field "recipient": missing` || len(r.Headers) != 2 {
				t.Fatalf("headers %+v", r.Headers)
			}
		default:
			if len(r.Key) != 0 {
				t.Fatalf("nil key came back as %q", r.Key)
			}
		}
	}
}

func testLag(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "l", 1)
	produce(t, p, "l", nil, slices.Repeat([]string{"x"}, 10))
	c := open(ConsumerConfig{Group: "g", Topics: []string{"l"}})
	pollN(t, c, 10)
	if err := c.Commit(context.Background(), map[TopicPartition]int64{{"l", 0}: 4}); err != nil {
		t.Fatal(err)
	}
	lag, err := c.Lag(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if lag[TopicPartition{"l", 0}] != 6 {
		t.Fatalf("lag %v, want 6", lag)
	}
}

// EndOffsets answers for every partition, produced to or not, and from a
// producer-only Log as from a consumer.
func testEndOffsets(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "e", 3)
	recs := produce(t, p, "e", []string{"a", "a", "a", "b"}, []string{"1", "2", "3", "4"})
	want := map[TopicPartition]int64{{"e", 0}: 0, {"e", 1}: 0, {"e", 2}: 0}
	for _, r := range recs {
		want[TopicPartition{"e", r.Partition}] = max(want[TopicPartition{"e", r.Partition}], r.Offset+1)
	}
	c := open(ConsumerConfig{Group: "g", Topics: []string{"e"}})
	for name, l := range map[string]Log{"producer": p, "consumer": c} {
		got, err := l.EndOffsets(context.Background(), "e")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("%s: end offsets %v, want %v", name, got, want)
		}
	}
	if _, err := p.EndOffsets(context.Background(), "missing"); err == nil {
		t.Fatal("end offsets of a missing topic")
	}
}

func testProducerOnly(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "o", 1)
	if _, err := p.Poll(context.Background(), 1); !errors.Is(err, ErrNoConsumer) {
		t.Fatalf("poll without a group: %v", err)
	}
	if err := p.Commit(context.Background(), map[TopicPartition]int64{{"o", 0}: 1}); !errors.Is(err, ErrNoConsumer) {
		t.Fatalf("commit without a group: %v", err)
	}
}

// StartAt places a group's first read of a partition it has no commit for;
// a committed offset wins over it, and a partition it does not name starts
// at the oldest record.
func testStartAt(t *testing.T, open func(ConsumerConfig) Log) {
	p := open(ConsumerConfig{})
	ensure(t, p, "s", 2)
	var vals []string
	for i := range 40 {
		vals = append(vals, fmt.Sprint(i))
	}
	produce(t, p, "s", vals, vals)
	ends, err := p.EndOffsets(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	p0, p1 := TopicPartition{"s", 0}, TopicPartition{"s", 1}
	if ends[p0] < 4 || ends[p1] < 4 {
		t.Fatalf("ends %v: the keys did not spread", ends)
	}
	c := open(ConsumerConfig{Group: "seeded", Topics: []string{"s"}, StartAt: map[TopicPartition]int64{p0: ends[p0] - 3}})
	first := map[int32]int64{}
	n := map[int32]int64{}
	for _, r := range pollN(t, c, int(3+ends[p1])) {
		if _, ok := first[r.Partition]; !ok {
			first[r.Partition] = r.Offset
		}
		n[r.Partition]++
	}
	if first[0] != ends[p0]-3 || n[0] != 3 || first[1] != 0 || n[1] != ends[p1] {
		t.Fatalf("read from %v, counts %v; want partition 0 from %d (3 records), partition 1 from 0 (%d)", first, n, ends[p0]-3, ends[p1])
	}
	if err := c.Commit(context.Background(), map[TopicPartition]int64{p0: ends[p0] - 1, p1: ends[p1] - 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Committed now: StartAt no longer applies.
	c2 := open(ConsumerConfig{Group: "seeded", Topics: []string{"s"}, StartAt: map[TopicPartition]int64{p0: 0, p1: 0}})
	clear(n)
	for _, r := range pollN(t, c2, 1+2) {
		n[r.Partition]++
	}
	if n[0] != 1 || n[1] != 2 {
		t.Fatalf("records read after the commits per partition %v, want 1 and 2", n)
	}
	pollNothing(t, c2, 200*time.Millisecond)
}
