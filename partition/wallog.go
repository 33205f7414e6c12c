package partition

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/goutong/goutong/wal"
)

// WALLog is the single-process Log over the embedded wal. One process owns
// the log directory, so a consumer group has one member and it is assigned
// every partition of its topics.
type WALLog struct {
	w   *wal.Log
	cfg ConsumerConfig
	rr  atomic.Uint64 // where a topic's first run of nil-key records goes

	stickyMu sync.Mutex
	sticky   map[string]*stickyPart // by topic: the partition nil-key records fill now

	mu        sync.Mutex
	assigned  bool
	pos       map[TopicPartition]int64
	order     []TopicPartition // poll order; rotated for fairness
	paused    map[TopicPartition]bool
	closed    bool
	wake      chan struct{}   // closed and replaced on Pause/Resume/Close
	appended  <-chan struct{} // a wake after appends to the group's topics (wal.Log.Watch)
	unwatch   func()
	ownsLog   bool
	pollStart int
}

// NewWAL returns a Log over w. With cfg.Group set it consumes cfg.Topics;
// the topics must exist when Poll is first called. The caller keeps
// ownership of w unless OwnWAL is used.
func NewWAL(w *wal.Log, cfg ConsumerConfig) *WALLog {
	return &WALLog{w: w, cfg: cfg, pos: map[TopicPartition]int64{}, paused: map[TopicPartition]bool{}, wake: make(chan struct{}),
		sticky: map[string]*stickyPart{}}
}

// OwnWAL makes Close also close the underlying wal.
func (l *WALLog) OwnWAL() *WALLog { l.ownsLog = true; return l }

// EnsureTopics implements Log.
func (l *WALLog) EnsureTopics(_ context.Context, specs ...TopicSpec) error {
	for _, s := range specs {
		codec, err := wal.ParseCodec(s.Compression)
		if err != nil {
			return err
		}
		tc := wal.TopicConfig{
			Partitions: s.Partitions, Codec: codec, RetentionAge: s.RetentionAge,
			RetentionBytes: s.RetentionBytes, DeleteUncommitted: s.DeleteUncommitted,
		}
		if s.LazySync {
			tc.Fsync, tc.FsyncInterval = wal.FsyncInterval, time.Second
		}
		err = l.w.CreateTopic(s.Name, tc)
		if err != nil {
			return fmt.Errorf("partition: create topic %s: %w", s.Name, err)
		}
	}
	return nil
}

func (l *WALLog) partitions(topic string) (int32, error) {
	cfg, ok := l.w.TopicConfig(topic)
	if !ok {
		return 0, fmt.Errorf("partition: produce to %s: %w", topic, wal.ErrUnknownTopic)
	}
	return cfg.Partitions, nil
}

// keyPartition is the partition of a record with a key: the same for
// every record of that key.
func keyPartition(key []byte, parts int32) int32 {
	return int32(xxhash.Sum64(key) % uint64(parts))
}

// stickyRun is how many nil-key records a partition of a topic takes, from
// every Produce call together, before the next partition does, as Kafka's
// sticky partitioner fills a batch before it moves on. Concurrent calls then
// land on one partition, whose writer appends them as one group commit (one
// write and one fsync), where spreading them took one of each per
// partition; over time the records still spread over every partition.
const stickyRun = 1024

// stickyPart is the partition a topic's nil-key records fill now, and how
// many it took.
type stickyPart struct {
	part  int32
	taken int
}

// stick returns the partition for a run of n nil-key records of topic (n at
// most stickyRun; a call with more takes several runs).
func (l *WALLog) stick(topic string, parts int32, n int) int32 {
	l.stickyMu.Lock()
	defer l.stickyMu.Unlock()
	s := l.sticky[topic]
	if s == nil {
		s = &stickyPart{part: int32(l.rr.Add(1) % uint64(parts))}
		l.sticky[topic] = s
	}
	if s.taken >= stickyRun || s.part >= parts {
		s.part, s.taken = (s.part+1)%parts, 0
	}
	s.taken += n
	return s.part
}

// Produce implements Log: records are grouped per partition and appended
// concurrently, each group as one append, so a batch for many partitions
// costs one group commit per partition.
func (l *WALLog) Produce(ctx context.Context, recs []Record) error {
	type group struct {
		tp   TopicPartition
		n    int
		idx  []int
		recs []wal.Record
	}
	// run is the group taking this call's nil-key records of a topic.
	type run struct {
		topic string
		g     *group
		left  int // records the run still takes
		rest  int // the call's records of the topic after the run's
	}
	var groups []*group
	find := map[TopicPartition]*group{}
	// Two passes: the groups' sizes first, then their slices cut from one
	// array each, where appending to each group grew it a doubling at a time
	// (a tenth of the API's allocated bytes).
	of := make([]*group, len(recs))
	var runs []run // one a topic: calls name one or two
	runOf := func(topic string) *run {
		for i := range runs {
			if runs[i].topic == topic {
				return &runs[i]
			}
		}
		return nil
	}
	for i := range recs {
		if recs[i].Key != nil {
			continue
		}
		if r := runOf(recs[i].Topic); r != nil {
			r.rest++
		} else {
			runs = append(runs, run{topic: recs[i].Topic, rest: 1})
		}
	}
	groupOf := func(tp TopicPartition) *group {
		g := find[tp]
		if g == nil {
			g = &group{tp: tp}
			find[tp] = g
			groups = append(groups, g)
		}
		return g
	}
	for i := range recs {
		var r *run
		if recs[i].Key == nil {
			r = runOf(recs[i].Topic)
		}
		if r != nil && r.left > 0 {
			r.left--
			r.g.n++
			of[i] = r.g
			continue
		}
		parts, err := l.partitions(recs[i].Topic)
		if err != nil {
			return err
		}
		var g *group
		if r == nil {
			g = groupOf(TopicPartition{recs[i].Topic, keyPartition(recs[i].Key, parts)})
		} else {
			n := min(r.rest, stickyRun)
			r.rest -= n
			r.left = n - 1 // after this record
			r.g = groupOf(TopicPartition{r.topic, l.stick(r.topic, parts, n)})
			g = r.g
		}
		g.n++
		of[i] = g
	}
	idx, wrecs := make([]int, len(recs)), make([]wal.Record, len(recs))
	for _, g := range groups {
		g.idx, g.recs = idx[:0:g.n], wrecs[:0:g.n]
		idx, wrecs = idx[g.n:], wrecs[g.n:]
	}
	for i, g := range of {
		g.idx = append(g.idx, i)
		g.recs = append(g.recs, toWAL(&recs[i]))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(groups))
	for gi, g := range groups {
		wg.Add(1)
		err := l.w.AppendAsync(ctx, g.tp.Topic, g.tp.Partition, g.recs, func(base int64, err error) {
			defer wg.Done()
			if err != nil {
				errs[gi] = err
				return
			}
			for j, i := range g.idx {
				recs[i].Partition = g.tp.Partition
				recs[i].Offset = base + int64(j)
			}
		})
		if err != nil {
			wg.Done()
			errs[gi] = err
		}
	}
	wg.Wait()
	now := time.Now()
	err := errors.Join(errs...)
	if err == nil {
		for i := range recs {
			recs[i].Timestamp = now
		}
		return nil
	}
	// The groups that were appended stay appended: say which.
	written := make([]bool, len(recs))
	for gi, g := range groups {
		if errs[gi] != nil {
			continue
		}
		for _, i := range g.idx {
			written[i] = true
			recs[i].Timestamp = now
		}
	}
	return partial(written, fmt.Errorf("partition: produce: %w", err))
}

func toWAL(r *Record) wal.Record {
	wr := wal.Record{Key: r.Key, Value: r.Value}
	if len(r.Headers) > 0 {
		wr.Headers = make([]wal.Header, len(r.Headers))
		for i, h := range r.Headers {
			wr.Headers[i] = wal.Header{Key: h.Key, Value: h.Value}
		}
	}
	return wr
}

// assign computes the assignment on first use: every partition of the
// group's topics, starting at the committed offset or the oldest record.
func (l *WALLog) assign(ctx context.Context) error {
	l.mu.Lock()
	if l.assigned {
		l.mu.Unlock()
		return nil
	}
	l.appended, l.unwatch = l.w.Watch(l.cfg.Topics...)
	committed := l.w.CommittedOffsets(l.cfg.Group)
	var tps []TopicPartition
	for _, t := range l.cfg.Topics {
		cfg, ok := l.w.TopicConfig(t)
		if !ok {
			l.mu.Unlock()
			return fmt.Errorf("partition: consume %s: %w", t, wal.ErrUnknownTopic)
		}
		for p := range cfg.Partitions {
			tp := TopicPartition{t, p}
			start, end, err := l.w.Offsets(t, p)
			if err != nil {
				l.mu.Unlock()
				return err
			}
			off, ok := committed[wal.TopicPartition{Topic: t, Partition: p}]
			if !ok {
				off, ok = l.cfg.StartAt[tp]
			}
			if !ok || off < start || off > end {
				off = start
			}
			l.pos[tp] = off
			tps = append(tps, tp)
		}
	}
	l.order = tps
	l.assigned = true
	l.mu.Unlock()
	if l.cfg.OnAssigned != nil {
		l.cfg.OnAssigned(ctx, slices.Clone(tps))
	}
	return nil
}

// Poll implements Log. Partitions are visited round-robin from a rotating
// start so one busy partition cannot starve the others.
func (l *WALLog) Poll(ctx context.Context, max int) ([]Record, error) {
	if l.cfg.Group == "" {
		return nil, ErrNoConsumer
	}
	if max <= 0 {
		max = 1
	}
	if err := l.assign(ctx); err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, ErrClosed
		}
		wake, appended := l.wake, l.appended
		var reads []walRead
		got := 0
		n := len(l.order)
		start := l.pollStart
		l.pollStart = (l.pollStart + 1) % max1(n)
		// Every partition with records gets a share of each poll, so a
		// lightly used partition (a critical lane) is never left waiting
		// while a deep one (a bulk backlog) fills whole polls.
		active := make([]TopicPartition, 0, n)
		for k := range n {
			if tp := l.order[(start+k)%n]; !l.paused[tp] {
				active = append(active, tp)
			}
		}
		for got < max && len(active) > 0 {
			share := (max - got + len(active) - 1) / len(active)
			next := active[:0]
			for _, tp := range active {
				want := min(share, max-got)
				if want <= 0 {
					break
				}
				pos := l.pos[tp]
				recs, err := l.w.Read(tp.Topic, tp.Partition, pos, want, 8<<20)
				if errors.Is(err, wal.ErrOffsetOutOfRange) {
					// Retention passed our position: continue from the oldest kept.
					s, _, _ := l.w.Offsets(tp.Topic, tp.Partition)
					if s > pos {
						l.pos[tp] = s
						next = append(next, tp)
					}
					continue
				}
				if err != nil {
					l.mu.Unlock()
					return records(reads, got), err
				}
				if len(recs) > 0 {
					reads = append(reads, walRead{tp, recs})
					got += len(recs)
					l.pos[tp] = recs[len(recs)-1].Offset + 1
				}
				if len(recs) == want {
					next = append(next, tp) // may have more
				}
			}
			active = next
		}
		l.mu.Unlock()
		if got > 0 {
			return records(reads, got), nil
		}
		select {
		case <-appended:
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func max1(n int) int { return max(n, 1) }

// walRead is one partition's share of a poll.
type walRead struct {
	tp   TopicPartition
	recs []wal.Record
}

// records converts a poll's reads, got records in all, into one slice of
// that size: appending record by record grew it a doubling at a time,
// ~2.3 times the records' size in garbage a poll.
func records(reads []walRead, got int) []Record {
	if got == 0 {
		return nil
	}
	out := make([]Record, 0, got)
	for _, r := range reads {
		for i := range r.recs {
			out = append(out, fromWAL(r.tp, &r.recs[i]))
		}
	}
	return out
}

func fromWAL(tp TopicPartition, r *wal.Record) Record {
	out := Record{Topic: tp.Topic, Partition: tp.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value,
		Timestamp: time.Unix(0, r.Timestamp)}
	if len(r.Headers) > 0 {
		out.Headers = make([]Header, len(r.Headers))
		for i, h := range r.Headers {
			out.Headers[i] = Header{Key: h.Key, Value: h.Value}
		}
	}
	return out
}

// Commit implements Log.
func (l *WALLog) Commit(_ context.Context, offsets map[TopicPartition]int64) error {
	if l.cfg.Group == "" {
		return ErrNoConsumer
	}
	if len(offsets) == 0 {
		return nil
	}
	m := make(map[wal.TopicPartition]int64, len(offsets))
	for tp, o := range offsets {
		m[wal.TopicPartition{Topic: tp.Topic, Partition: tp.Partition}] = o
	}
	return l.w.CommitOffsets(l.cfg.Group, m)
}

// Pause implements Log.
func (l *WALLog) Pause(tps ...TopicPartition) { l.setPaused(tps, true) }

// Resume implements Log.
func (l *WALLog) Resume(tps ...TopicPartition) { l.setPaused(tps, false) }

func (l *WALLog) setPaused(tps []TopicPartition, p bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, tp := range tps {
		if p {
			l.paused[tp] = true
		} else {
			delete(l.paused, tp)
		}
	}
	l.wakeLocked()
}

func (l *WALLog) wakeLocked() {
	close(l.wake)
	l.wake = make(chan struct{})
}

// Assigned implements Log.
func (l *WALLog) Assigned() []TopicPartition {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.order)
}

// Sync implements Syncer.
func (l *WALLog) Sync(ctx context.Context, topics ...string) error {
	for _, t := range topics {
		if err := l.w.Sync(ctx, t); err != nil {
			return fmt.Errorf("partition: sync %s: %w", t, err)
		}
	}
	return nil
}

// EndOffsets implements Log.
func (l *WALLog) EndOffsets(_ context.Context, topic string) (map[TopicPartition]int64, error) {
	cfg, ok := l.w.TopicConfig(topic)
	if !ok {
		return nil, fmt.Errorf("partition: end offsets of %s: %w", topic, wal.ErrUnknownTopic)
	}
	out := make(map[TopicPartition]int64, cfg.Partitions)
	for p := range cfg.Partitions {
		_, end, err := l.w.Offsets(topic, p)
		if err != nil {
			return nil, err
		}
		out[TopicPartition{topic, p}] = end
	}
	return out, nil
}

// Lag implements Log.
func (l *WALLog) Lag(context.Context) (map[TopicPartition]int64, error) {
	committed := l.w.CommittedOffsets(l.cfg.Group)
	out := map[TopicPartition]int64{}
	for _, tp := range l.Assigned() {
		start, end, err := l.w.Offsets(tp.Topic, tp.Partition)
		if err != nil {
			return nil, err
		}
		c, ok := committed[wal.TopicPartition{Topic: tp.Topic, Partition: tp.Partition}]
		if !ok || c < start {
			c = start
		}
		out[tp] = end - c
	}
	return out, nil
}

// Close implements Log.
func (l *WALLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	tps := l.order
	l.order = nil
	l.wakeLocked()
	unwatch := l.unwatch
	l.mu.Unlock()
	if unwatch != nil {
		unwatch()
	}
	if l.cfg.OnRevoked != nil && len(tps) > 0 {
		l.cfg.OnRevoked(context.Background(), tps)
	}
	if l.ownsLog {
		return l.w.Close()
	}
	return nil
}
