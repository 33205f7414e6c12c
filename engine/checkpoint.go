package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gojson "github.com/goccy/go-json"
	"go.uber.org/zap"

	"github.com/goutong/goutong/partition"
)

// The status store's events have no WAL of their own (see StatusStore):
// the status topic is their log. A checkpoint records, in the store's
// consumer group (statusCheckpointGroup and the store's id), offsets of
// the status topic below which every event is in the store's flushed
// tables; at start, Run replays the topic from there.
//
// Every event is produced to the topic first and applied to the store
// after, by many goroutines at once, so "produced below offset O" does not
// yet mean "applied". A checkpoint therefore takes O as the highest
// offsets produced so far, then waits for every writer that entered before
// it to finish applying: offsets are given out in order, so whoever
// produced below O entered before O was read. Writers pay two atomic adds
// a batch, not a lock.
//
// A node following the whole status topic (Config.NodeID) needs none of
// this: its replica's committed offsets are checkpoints already.
const statusCheckpointGroup = "goutong-status-checkpoint."

type statusCheckpoints struct {
	epoch    atomic.Uint64
	inflight [2]atomic.Int64 // writers inside, by epoch parity

	mu   sync.Mutex
	high map[int32]int64 // per status partition, one past the highest offset produced
}

// enter registers a writer about to produce and apply events; it returns
// the epoch to exit with.
func (c *statusCheckpoints) enter() uint64 {
	for {
		ep := c.epoch.Load()
		c.inflight[ep&1].Add(1)
		if c.epoch.Load() == ep {
			return ep
		}
		// A checkpoint began in between: join the new epoch instead, or
		// it could wait for us without need, or miss us.
		c.inflight[ep&1].Add(-1)
	}
}

func (c *statusCheckpoints) exit(ep uint64) { c.inflight[ep&1].Add(-1) }

// produced notes the offsets Produce gave the records of topic.
func (c *statusCheckpoints) produced(topic string, recs []partition.Record) {
	// A flush's events go to a handful of partitions: the highest of each
	// first (on the stack, by partition), then one lock.
	high := make([]int64, 0, 16)
	for i := range recs {
		r := &recs[i]
		if r.Topic != topic {
			continue
		}
		for len(high) <= int(r.Partition) {
			high = append(high, 0)
		}
		high[r.Partition] = max(high[r.Partition], r.Offset+1)
	}
	if len(high) == 0 {
		return
	}
	c.mu.Lock()
	if c.high == nil {
		c.high = map[int32]int64{}
	}
	for p, off := range high {
		if off > c.high[int32(p)] {
			c.high[int32(p)] = off
		}
	}
	c.mu.Unlock()
}

// settled returns offsets below which every event is applied to the store:
// the highest produced, once the writers that could have produced below
// them are done. One caller at a time.
func (c *statusCheckpoints) settled(ctx context.Context, topic string) (map[partition.TopicPartition]int64, error) {
	// Writers left over from an epoch whose wait was cut short count in
	// the parity the next epoch uses: they go first.
	if err := c.drain(ctx, c.epoch.Load()+1); err != nil {
		return nil, err
	}
	c.mu.Lock()
	offsets := make(map[partition.TopicPartition]int64, len(c.high))
	for p, off := range c.high {
		offsets[partition.TopicPartition{Topic: topic, Partition: p}] = off
	}
	c.mu.Unlock()
	if err := c.drain(ctx, c.epoch.Add(1)-1); err != nil {
		return nil, err
	}
	return offsets, nil
}

// quiesce waits until every writer that entered before the call has left:
// the events they produced are in the store by then.
func (c *statusCheckpoints) quiesce(ctx context.Context) error {
	if err := c.drain(ctx, c.epoch.Load()+1); err != nil {
		return err
	}
	return c.drain(ctx, c.epoch.Add(1)-1)
}

// drain waits until no writer counts in ep's parity.
func (c *statusCheckpoints) drain(ctx context.Context, ep uint64) error {
	for c.inflight[ep&1].Load() != 0 {
		// Writers leave within a produce and a store write: milliseconds.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
	return nil
}

// statusCheckpointer replays the status topic into the store at start and
// then takes checkpoints; it owns its consumer of the topic.
type statusCheckpointer struct {
	e         *Engine
	log       partition.Log
	committed map[partition.TopicPartition]int64
}

// openStatusCheckpointer opens the checkpoint group's consumer and
// replays what the store lost since the last checkpoint. It returns how
// many events it applied.
func (e *Engine) openStatusCheckpointer(ctx context.Context) (*statusCheckpointer, int, error) {
	log, err := e.cfg.Open(partition.ConsumerConfig{Group: statusCheckpointGroup + e.cfg.Status.id, Topics: []string{e.cfg.Topics.Status}})
	if err != nil {
		return nil, 0, fmt.Errorf("engine: status checkpoints: %w", err)
	}
	c := &statusCheckpointer{e: e, log: log, committed: map[partition.TopicPartition]int64{}}
	var n int
	if e.cfg.Status.upgraded {
		err = c.skipToEnd(ctx)
	} else {
		n, err = c.replay(ctx)
	}
	if err == nil {
		err = e.cfg.Status.markCheckpointed()
	}
	if err != nil {
		log.Close()
		return nil, n, fmt.Errorf("engine: status replay: %w", err)
	}
	// Nothing more is read: on Kafka, paused partitions are not fetched.
	log.Pause(log.Assigned()...)
	return c, n, nil
}

// replay applies the status topic from the last checkpoint to its end.
// Nothing produces to the topic yet (Run has not started the engine), so
// the end is where the group, committed as far as replayed, has no lag.
func (c *statusCheckpointer) replay(ctx context.Context) (int, error) {
	n, polls := 0, 0
	next := map[partition.TopicPartition]int64{}
	for {
		// A poll returns at once what the log holds: an empty one is only
		// a cue to look at the lag. A Kafka group still joining after the
		// first has no lag to look at: it waits longer.
		wait := 5 * time.Millisecond
		if polls++; polls > 1 && len(c.log.Assigned()) == 0 {
			wait = 200 * time.Millisecond
		}
		got, err := c.pollApply(ctx, wait, next)
		n += got
		if err != nil {
			return n, err
		}
		if got > 0 {
			continue
		}
		if len(next) > 0 {
			if err := c.commit(ctx, next); err != nil {
				return n, err
			}
			clear(next)
		}
		if len(c.log.Assigned()) == 0 {
			continue
		}
		left, err := totalLag(ctx, c.log)
		if err != nil {
			return n, err
		}
		if left == 0 {
			return n, nil
		}
	}
}

// pollApply polls the topic once, waiting up to wait, and applies what
// came to the store; it returns how many records came, noting in next the
// offset after each.
func (c *statusCheckpointer) pollApply(ctx context.Context, wait time.Duration, next map[partition.TopicPartition]int64) (int, error) {
	pctx, cancel := context.WithTimeout(ctx, wait)
	recs, err := c.log.Poll(pctx, 4096)
	cancel()
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return 0, err
	}
	if len(recs) == 0 {
		return 0, nil
	}
	return len(recs), c.e.cfg.Status.Apply(decodeStatusEvents(recs, next))
}

// totalLag is the records log's group has yet to commit, over its
// assigned partitions.
func totalLag(ctx context.Context, log partition.Log) (int64, error) {
	lag, err := log.Lag(ctx)
	var n int64
	for _, l := range lag {
		n += l
	}
	return n, err
}

// skipToEnd makes the status topic's end the first checkpoint of a store
// upgraded from one with its own WAL: it holds every event already, and
// replaying the topic's retention (a day of events) would only rewrite
// them.
func (c *statusCheckpointer) skipToEnd(ctx context.Context) error {
	// A Kafka group commits only once it has joined, which a poll does;
	// what the polls bring is applied (a few thousand events at most).
	next := map[partition.TopicPartition]int64{}
	for wait := 5 * time.Millisecond; len(c.log.Assigned()) == 0; wait = 200 * time.Millisecond {
		if _, err := c.pollApply(ctx, wait, next); err != nil {
			return err
		}
	}
	end, err := c.log.EndOffsets(ctx, c.e.cfg.Topics.Status)
	if err != nil {
		return err
	}
	if err := c.commit(ctx, end); err != nil {
		return err
	}
	c.e.cfg.Logger.Info("status store: the first start without its own WAL; its events are complete, checkpointed at the status topic's end")
	return nil
}

// checkpoint flushes the store and records the offsets settled before the
// flush.
func (c *statusCheckpointer) checkpoint(ctx context.Context) error {
	offsets, err := c.e.ckpt.settled(ctx, c.e.cfg.Topics.Status)
	if err != nil {
		return err
	}
	return c.commit(ctx, offsets)
}

// commit flushes the store and commits the offsets that moved.
func (c *statusCheckpointer) commit(ctx context.Context, offsets map[partition.TopicPartition]int64) error {
	moved := map[partition.TopicPartition]int64{}
	for tp, off := range offsets {
		if off > c.committed[tp] {
			moved[tp] = off
		}
	}
	if len(moved) == 0 {
		return nil
	}
	if err := c.e.cfg.Status.Checkpoint(); err != nil {
		return err
	}
	if err := c.log.Commit(ctx, moved); err != nil {
		return err
	}
	for tp, off := range moved {
		c.committed[tp] = off
	}
	return nil
}

// run takes a checkpoint every interval until stop closes, then a last
// one (the engine has finished its writes by then) and closes its
// consumer.
func (c *statusCheckpointer) run(interval, last time.Duration, stop <-chan struct{}) {
	defer c.log.Close()
	t := time.NewTicker(interval)
	defer t.Stop()
	take := func(limit time.Duration, warning string) {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		if err := c.checkpoint(ctx); err != nil {
			c.e.m.checkpoints.WithLabelValues("failed").Inc()
			c.e.cfg.Logger.Warn(warning, zap.Error(err))
			return
		}
		c.e.m.checkpoints.WithLabelValues("ok").Inc()
		if n, err := totalLag(ctx, c.log); err == nil {
			c.e.m.replayable.Set(float64(n))
		}
	}
	for {
		select {
		case <-stop:
			take(last, "status checkpoint at shutdown failed; the next start replays more")
			return
		case <-t.C:
			// Bounded loosely: the wait is for writers inside a produce
			// and a store write, and a late checkpoint costs nothing.
			take(max(interval, time.Minute), "status checkpoint failed; the next covers it")
		}
	}
}

// decodeStatusEvents decodes the events among recs, noting in next (when
// not nil) the offset after each record; records that are not events are
// skipped.
func decodeStatusEvents(recs []partition.Record, next map[partition.TopicPartition]int64) []StatusEvent {
	return decodeStatusEventsExcept(recs, next, nil)
}

// decodeStatusEventsExcept is decodeStatusEvents leaving out, undecoded,
// the records skip (when not nil) says to.
func decodeStatusEventsExcept(recs []partition.Record, next map[partition.TopicPartition]int64, skip func(*partition.Record) bool) []StatusEvent {
	events := make([]StatusEvent, 0, len(recs))
	for i := range recs {
		r := &recs[i]
		if next != nil {
			next[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
		}
		if skip != nil && skip(r) {
			continue
		}
		var ev StatusEvent
		if err := gojson.Unmarshal(r.Value, &ev); err != nil || ev.ID == "" {
			continue // not an event of ours: nothing to keep
		}
		events = append(events, ev)
	}
	return events
}
