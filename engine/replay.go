package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
)

// Enqueue prepares notifications (id, accepted time, idempotency key) and
// produces them to their priority lanes; it returns once they are durable.
func Enqueue(ctx context.Context, log partition.Log, topics Topics, codec *notification.Codec, now time.Time, ns ...*notification.Notification) error {
	recs := make([]partition.Record, len(ns))
	for i, n := range ns {
		n.Prepare(now)
		if err := codec.Validate(n); err != nil {
			return fmt.Errorf("notification %d: %w", i, err)
		}
		recs[i] = laneRecord(topics, n, nil, codec.Encode(n))
	}
	return log.Produce(ctx, recs)
}

// laneRecord is n's record, value its encoding, on its priority lane,
// keyed by its idempotency key (key holds it, or nil for a copy) unless
// the lanes are keyless (Topics.KeylessLanes).
func laneRecord(topics Topics, n *notification.Notification, key, value []byte) partition.Record {
	if topics.KeylessLanes {
		key = nil
	} else if key == nil {
		key = []byte(n.IdempotencyKey)
	}
	return partition.Record{Topic: topics.Lane(n.Priority), Key: key, Value: value}
}

// ReplayReport counts what a replay did.
type ReplayReport struct {
	Replayed  int            `json:"replayed"`
	Skipped   int            `json:"skipped"`   // filtered out
	Undecoded int            `json:"undecoded"` // not a notification: cannot be resent
	ByReason  map[string]int `json:"by_reason"`
}

// DeadLetter is a dead-letter record as the admin tools show it.
type DeadLetter struct {
	Reason   string
	Error    string
	Attempts int
	Source   string
	FailedAt time.Time
	Record   partition.Record
}

// ParseDeadLetter reads the engine's headers off a dead-letter record.
func ParseDeadLetter(r partition.Record) DeadLetter {
	d := DeadLetter{Record: r}
	if v, ok := r.HeaderValue(HeaderReason); ok {
		d.Reason = string(v)
	}
	if v, ok := r.HeaderValue(HeaderError); ok {
		d.Error = string(v)
	}
	if v, ok := r.HeaderValue(HeaderAttempts); ok {
		d.Attempts, _ = strconv.Atoi(string(v))
	}
	if v, ok := r.HeaderValue(HeaderSource); ok {
		d.Source = string(v)
	}
	if v, ok := r.HeaderValue(HeaderFailedAt); ok {
		d.FailedAt, _ = time.Parse(time.RFC3339Nano, string(v))
	}
	return d
}

// ReplayDeadLetters moves dead letters back into the lanes with their
// attempts reset: the letters that were in the topic when the replay
// started. Letters written after that (a replayed send failing again) are
// left for the next replay, so a replay always ends. dlq must be a Log consuming topics.DLQ in a group of its
// own (the replay group's committed offset remembers what was replayed).
// keep selects the letters to replay (nil: all); the others are skipped.
// Records that are not notifications are counted and skipped: a replay
// cannot fix them.
func ReplayDeadLetters(ctx context.Context, dlq partition.Log, topics Topics, codec *notification.Codec,
	keep func(DeadLetter) bool) (ReplayReport, error) {
	rep := ReplayReport{ByReason: map[string]int{}}
	start := time.Now()
	done := map[partition.TopicPartition]bool{}
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		recs, err := dlq.Poll(pctx, 1000)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return rep, err
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		if len(recs) == 0 {
			// Caught up when the group has nothing left; a group that
			// never committed (an empty topic) has no lag to report.
			lag, err := dlq.Lag(ctx)
			left := int64(0)
			for tp, n := range lag {
				if !done[tp] {
					left += n
				}
			}
			if err != nil || left == 0 {
				dlq.Resume(slices.Collect(maps.Keys(done))...)
				return rep, nil
			}
			continue
		}
		var out []partition.Record
		commit := map[partition.TopicPartition]int64{}
		for _, r := range recs {
			tp := partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}
			if done[tp] || !r.Timestamp.Before(start) {
				if !done[tp] {
					done[tp] = true
					dlq.Pause(tp)
				}
				continue
			}
			commit[tp] = r.Offset + 1
			d := ParseDeadLetter(r)
			if keep != nil && !keep(d) {
				rep.Skipped++
				continue
			}
			n, err := codec.Decode(r.Value)
			if err != nil {
				rep.Undecoded++
				continue
			}
			n.Attempts = 0
			out = append(out, laneRecord(topics, n, nil, codec.Encode(n)))
			rep.Replayed++
			rep.ByReason[d.Reason]++
		}
		if len(out) > 0 {
			if err := produceRest(ctx, dlq, out); err != nil {
				return rep, err
			}
		}
		if len(commit) > 0 {
			if err := dlq.Commit(ctx, commit); err != nil {
				return rep, err
			}
		}
	}
}

// produceRest produces recs, and after a write the log made in part,
// what it did not write, a few times: giving up there left the letters
// uncommitted, and the next replay copied the written ones again.
func produceRest(ctx context.Context, log partition.Log, recs []partition.Record) error {
	partly := func(err error) bool {
		var pe *partition.ProduceError
		return errors.As(err, &pe)
	}
	return writeRest(ctx, realClock{}.Sleep, partly, func() error {
		err := log.Produce(ctx, recs)
		recs = partition.Unwritten(recs, err)
		return err
	})
}

// writeRest runs write until it succeeds, up to 5 times, 100 ms apart and
// doubling, while again says another try may mend its error; write is to
// leave, after a write in part, only what was not written for the next.
// It returns write's last error.
func writeRest(ctx context.Context, sleep func(context.Context, time.Duration) error, again func(error) bool, write func() error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := write()
		if err == nil || attempt == 5 || !again(err) || sleep(ctx, wait) != nil {
			return err
		}
		wait *= 2
	}
}
