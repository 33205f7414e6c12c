// Package partition defines the Log the engine consumes and produces
// through, with two implementations: one over the embedded wal for a single
// process, one over Kafka (franz-go) for many. Both pass the same
// conformance suite, so the engine never knows which it has.
//
// Semantics shared by both:
//   - Produce partitions by key (records with the same key keep their order
//     in one partition; keyless records go to a partition in runs, then
//     the next: franz-go's sticky partitioner per batch, the wal's per
//     stickyRun records), and returns once the records are durable per the
//     log's policy, with Partition and Offset filled in.
//   - Poll hands over records in bulk from the partitions assigned to this
//     member of its consumer group, in offset order per partition, blocking
//     until there is at least one or ctx ends.
//   - Commit stores explicit offsets: the next offset to consume. A new
//     member of the group starts from the committed offset, or from the
//     oldest record when nothing was committed.
//   - Pause and Resume stop and restart delivery from partitions
//     (backpressure), without losing position.
//   - OnAssigned runs before records of newly assigned partitions are
//     returned; OnRevoked runs before partitions leave this member (a
//     rebalance or Close), so the caller can finish and commit them.
package partition

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Record is one log entry.
type Record struct {
	Topic     string
	Partition int32 // set by Produce
	Offset    int64 // set by Produce
	Key       []byte
	Value     []byte
	Headers   []Header
	Timestamp time.Time // set by the log on append
}

// Header is a record header; dead letters carry their reason in them.
type Header struct {
	Key   string
	Value []byte
}

// HeaderValue returns the value of the first header named key.
func (r *Record) HeaderValue(key string) ([]byte, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return nil, false
}

// ProduceError is Produce's error when some of the records were written
// (durable, Partition, Offset and Timestamp set) and others not: a
// partition refused its append, or its leader did not answer, while the
// others took theirs. Neither log can undo the written ones, so a caller
// that answers for the records, or produces them again, must know which.
type ProduceError struct {
	Written []bool // Written[i]: recs[i] is in the log
	Err     error  // why the others are not
}

func (e *ProduceError) Error() string {
	n := 0
	for _, w := range e.Written {
		if w {
			n++
		}
	}
	return fmt.Sprintf("%d of %d records written: %v", n, len(e.Written), e.Err)
}

func (e *ProduceError) Unwrap() error { return e.Err }

// Unwritten is what of recs a Produce that returned err did not write:
// what to produce again. Without a *ProduceError that is all of them.
func Unwritten(recs []Record, err error) []Record {
	var pe *ProduceError
	if !errors.As(err, &pe) || len(pe.Written) != len(recs) {
		return recs
	}
	var out []Record
	for i := range recs {
		if !pe.Written[i] {
			out = append(out, recs[i])
		}
	}
	return out
}

// partial is Produce's error over recs of which written are in the log:
// err when none is (the caller may produce them all again), a
// *ProduceError when some are.
func partial(written []bool, err error) error {
	if !slices.Contains(written, true) {
		return err
	}
	return &ProduceError{Written: written, Err: err}
}

// TopicPartition names one partition.
type TopicPartition struct {
	Topic     string
	Partition int32
}

func (tp TopicPartition) String() string { return fmt.Sprintf("%s/%d", tp.Topic, tp.Partition) }

// TopicSpec describes a topic to create. Zero retention keeps records
// forever; DeleteUncommitted lets retention delete records a group has not
// committed (honoured by the embedded log; Kafka retention never looks at
// groups).
type TopicSpec struct {
	Name              string
	Partitions        int32
	RetentionAge      time.Duration
	RetentionBytes    int64 // per partition
	DeleteUncommitted bool
	Compression       string // none, s2 or zstd on the embedded log; on Kafka the producer compresses with lz4
	// LazySync: on the embedded log, Produce returns once the records are
	// written to the OS, which fsyncs them within a second; a process kill
	// loses nothing, a power cut at most that second. For topics whose
	// records can be rebuilt (status events), so a produce to them does not
	// add an fsync wait to the request path. Kafka topics ignore it.
	LazySync bool
}

// Syncer is a Log that may acknowledge a produce before it is durable
// (TopicSpec.LazySync). Sync makes every record of the topics acknowledged
// before it durable.
type Syncer interface {
	Sync(ctx context.Context, topics ...string) error
}

// ConsumerConfig makes a Log a member of a consumer group. With no Group
// the Log only produces.
type ConsumerConfig struct {
	Group  string
	Topics []string
	// OnAssigned and OnRevoked receive the partitions gained or about to be
	// lost. They must not call Close.
	OnAssigned func(ctx context.Context, tps []TopicPartition)
	OnRevoked  func(ctx context.Context, tps []TopicPartition)
	// JoinLater makes the member take part in its group's assignments only
	// from its first Poll, not from the open: it is given no partitions
	// before it is ready to poll them. (The embedded log assigns at the
	// first Poll whatever this says.)
	JoinLater bool
	// StartAt is where the group starts reading a partition it has no
	// committed offset for (the oldest record when absent, or when the
	// offset is no longer in the log): a node seeded from a copy of
	// another's state reads on from where the copy was taken.
	StartAt map[TopicPartition]int64
}

// Log is what the engine produces to and consumes from.
type Log interface {
	// EnsureTopics creates the topics that do not exist yet.
	EnsureTopics(ctx context.Context, specs ...TopicSpec) error
	// Produce appends records and returns when they are durable. A call
	// whose records went to several partitions may fail in some and not
	// others: its error is then a *ProduceError saying which were written.
	Produce(ctx context.Context, recs []Record) error
	// Poll returns up to max records; it blocks until at least one is ready.
	Poll(ctx context.Context, max int) ([]Record, error)
	// Commit stores the next offset to consume for each partition.
	Commit(ctx context.Context, offsets map[TopicPartition]int64) error
	// Pause stops Poll from returning records of tps; Resume restarts it.
	Pause(tps ...TopicPartition)
	Resume(tps ...TopicPartition)
	// Assigned lists the partitions this member currently owns.
	Assigned() []TopicPartition
	// Lag returns, per assigned partition, how many records lie between the
	// committed offset and the end of the log.
	Lag(ctx context.Context) (map[TopicPartition]int64, error)
	// EndOffsets returns, for every partition of topic, the offset the next
	// record produced to it will get.
	EndOffsets(ctx context.Context, topic string) (map[TopicPartition]int64, error)
	// Close runs OnRevoked for what is still assigned and releases resources.
	Close() error
}

// Errors callers branch on.
var (
	ErrClosed     = errors.New("partition: log closed")
	ErrNoConsumer = errors.New("partition: log has no consumer group")
)
