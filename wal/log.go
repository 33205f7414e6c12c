// Package wal is Goutong's embedded, durable, partitioned log: the peak
// buffer, the retry and dead-letter store of a single-node deployment.
//
// A Log holds topics; a topic holds N partitions; a partition is a directory
// of segment files of CRC-framed, compressed record batches with a sparse
// index beside each segment. Appends from many goroutines are group
// committed: one writer per partition frames whatever is queued into one
// batch, writes it, fsyncs once according to the topic's policy, and then
// acknowledges every append in the group. Readers tail partitions while the
// writer appends. On open, the newest segment of every partition is checked
// batch by batch and a torn or corrupt tail is cut off.
package wal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one entry of a partition.
type Record struct {
	Key       []byte
	Value     []byte
	Headers   []Header
	Offset    int64 // set by the log
	Timestamp int64 // append time, Unix nanoseconds; set by the log
}

// Header is a record header, as in Kafka.
type Header struct {
	Key   string
	Value []byte
}

// FsyncPolicy decides when appended data is forced to stable storage and so
// when an append is acknowledged.
type FsyncPolicy string

const (
	// FsyncEveryGroup fsyncs after every group commit; an acknowledged append
	// survives power loss. The default.
	FsyncEveryGroup FsyncPolicy = "group"
	// FsyncInterval acknowledges once the group is written to the OS and
	// fsyncs every TopicConfig.FsyncInterval: a process kill loses nothing,
	// power loss loses at most that interval.
	FsyncInterval FsyncPolicy = "interval"
	// FsyncNever leaves flushing to the OS.
	FsyncNever FsyncPolicy = "never"
)

// TopicConfig is fixed when a topic is created and stored beside it.
type TopicConfig struct {
	Partitions    int32         `json:"partitions"`
	Codec         Codec         `json:"codec"`
	Fsync         FsyncPolicy   `json:"fsync"`
	FsyncInterval time.Duration `json:"fsync_interval,omitempty"`
	// RetentionAge deletes segments whose newest record is older; 0 keeps them.
	RetentionAge time.Duration `json:"retention_age,omitempty"`
	// RetentionBytes caps each partition's size; 0 means no cap.
	RetentionBytes int64 `json:"retention_bytes,omitempty"`
	// DeleteUncommitted lets retention delete records some consumer group has
	// not committed yet. Off by default: a backlog is never silently dropped.
	DeleteUncommitted bool `json:"delete_uncommitted,omitempty"`
	// SegmentBytes and SegmentAge roll the active segment, so retention has
	// whole segments to delete.
	SegmentBytes int64         `json:"segment_bytes,omitempty"`
	SegmentAge   time.Duration `json:"segment_age,omitempty"`
}

func (c *TopicConfig) setDefaults() {
	if c.Fsync == "" {
		c.Fsync = FsyncEveryGroup
	}
	if c.Fsync == FsyncInterval && c.FsyncInterval == 0 {
		c.FsyncInterval = 100 * time.Millisecond
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = 128 << 20
	}
	if c.SegmentAge == 0 {
		c.SegmentAge = time.Hour
		if c.RetentionAge > 0 {
			c.SegmentAge = min(c.SegmentAge, max(c.RetentionAge/4, time.Second))
		}
	}
}

func (c *TopicConfig) validate() error {
	switch {
	case c.Partitions < 1 || c.Partitions > 4096:
		return fmt.Errorf("wal: partitions %d out of range 1..4096", c.Partitions)
	case c.Codec > CodecZstd:
		return fmt.Errorf("wal: unknown codec %d", c.Codec)
	case c.Fsync != FsyncEveryGroup && c.Fsync != FsyncInterval && c.Fsync != FsyncNever:
		return fmt.Errorf("wal: unknown fsync policy %q", c.Fsync)
	case c.SegmentBytes < 4096:
		return fmt.Errorf("wal: segment bytes %d below 4096", c.SegmentBytes)
	case c.RetentionAge < 0 || c.RetentionBytes < 0:
		return errors.New("wal: negative retention")
	}
	return nil
}

// Errors callers branch on.
var (
	ErrClosed           = errors.New("wal: closed")
	ErrUnknownTopic     = errors.New("wal: unknown topic or partition")
	ErrOffsetOutOfRange = errors.New("wal: offset out of range")
	ErrTopicExists      = errors.New("wal: topic exists with another config")
)

// Option configures Open.
type Option func(*options)

type options struct {
	now               func() time.Time
	retentionInterval time.Duration
	queueDepth        int
	maxGroupBytes     int
	frameCacheBytes   int64
}

// WithClock sets the clock used for timestamps, segment ages and retention.
// Tests use it to run hours of retention in microseconds.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRetentionInterval sets how often retention runs in the background; 0
// disables the background run (EnforceRetention still works).
func WithRetentionInterval(d time.Duration) Option {
	return func(o *options) { o.retentionInterval = d }
}

// WithQueueDepth bounds the appends waiting for each partition's writer;
// appenders block (backpressure) beyond it. Default 4096.
func WithQueueDepth(n int) Option { return func(o *options) { o.queueDepth = n } }

// DefaultFrameCacheBytes is WithFrameCache's default.
const DefaultFrameCacheBytes = 64 << 20

// WithFrameCache bounds the decoded frames kept across the log for reads
// that stopped inside a frame (default 64 MiB; 0 keeps none). A consumer
// reading a frame of thousands of records a hundred at a time otherwise
// reads, checks and decompresses the whole frame for every hundred.
func WithFrameCache(bytes int64) Option { return func(o *options) { o.frameCacheBytes = bytes } }

// WithMaxGroupBytes bounds the uncompressed bytes framed into one batch.
// Default 4 MiB.
func WithMaxGroupBytes(n int) Option { return func(o *options) { o.maxGroupBytes = n } }

// Log is an open embedded log directory. It is safe for concurrent use.
type Log struct {
	dir  string
	opts options
	comp *compressor
	lock *os.File // flock held while open: two processes must never share a log

	mu     sync.RWMutex
	topics map[string]*topic
	closed bool

	watchMu  sync.RWMutex
	watchers map[string][]chan struct{} // by topic: Watch's channels

	offsets *offsetStore

	frameCache atomic.Int64 // bytes of decoded frames kept by partitions
	counters   counters
	refusing   atomic.Pointer[error] // the first partition's failure (Err)

	stop chan struct{}
	wg   sync.WaitGroup
}

type topic struct {
	name  string
	cfg   TopicConfig
	parts []*partition
}

var topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`)

// Open opens or creates the log in dir, recovering every partition.
func Open(dir string, opts ...Option) (*Log, error) {
	o := options{now: time.Now, retentionInterval: 30 * time.Second, queueDepth: 4096, maxGroupBytes: 4 << 20,
		frameCacheBytes: DefaultFrameCacheBytes}
	for _, opt := range opts {
		opt(&o)
	}
	if o.queueDepth < 1 || o.maxGroupBytes < 1 {
		return nil, errors.New("wal: queue depth and group bytes must be positive")
	}
	if err := os.MkdirAll(filepath.Join(dir, "topics"), 0o755); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	comp, err := newCompressor()
	if err != nil {
		lock.Close()
		return nil, err
	}
	l := &Log{dir: dir, opts: o, comp: comp, lock: lock, topics: map[string]*topic{},
		watchers: map[string][]chan struct{}{}, stop: make(chan struct{})}
	if l.offsets, err = openOffsets(filepath.Join(dir, "groups")); err != nil {
		l.abort()
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(dir, "topics"))
	if err != nil {
		l.abort()
		return nil, fmt.Errorf("wal: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "topics", e.Name(), "topic.json"))
		if err != nil {
			l.abort()
			return nil, fmt.Errorf("wal: topic %s: %w", e.Name(), err)
		}
		var cfg TopicConfig
		if err := json.Unmarshal(b, &cfg); err != nil {
			l.abort()
			return nil, fmt.Errorf("wal: topic %s config: %w", e.Name(), err)
		}
		if err := l.openTopic(e.Name(), cfg); err != nil {
			l.abort()
			return nil, err
		}
	}
	if o.retentionInterval > 0 {
		l.wg.Add(1)
		go l.retentionLoop()
	}
	return l, nil
}

func (l *Log) abort() {
	for _, t := range l.topics {
		for _, p := range t.parts {
			p.close()
		}
	}
	l.comp.close()
	l.lock.Close()
}

func (l *Log) openTopic(name string, cfg TopicConfig) error {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	t := &topic{name: name, cfg: cfg}
	for i := int32(0); i < cfg.Partitions; i++ {
		p, err := openPartition(l, t, i)
		if err != nil {
			for _, p := range t.parts {
				p.close()
			}
			return err
		}
		t.parts = append(t.parts, p)
	}
	l.topics[name] = t
	return nil
}

// CreateTopic creates a topic, or does nothing if it exists with the same
// partition count. Other settings of an existing topic are kept as stored.
func (l *Log) CreateTopic(name string, cfg TopicConfig) error {
	if !topicName.MatchString(name) {
		return fmt.Errorf("wal: bad topic name %q", name)
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if t, ok := l.topics[name]; ok {
		if t.cfg.Partitions != cfg.Partitions {
			return fmt.Errorf("%w: %s has %d partitions, asked for %d", ErrTopicExists, name, t.cfg.Partitions, cfg.Partitions)
		}
		return nil
	}
	tdir := filepath.Join(l.dir, "topics", name)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := writeFileAtomic(filepath.Join(tdir, "topic.json"), b); err != nil {
		return err
	}
	return l.openTopic(name, cfg)
}

// TopicConfig returns a topic's stored config.
func (l *Log) TopicConfig(name string) (TopicConfig, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	t, ok := l.topics[name]
	if !ok {
		return TopicConfig{}, false
	}
	return t.cfg, true
}

// Topics lists topic names, sorted.
func (l *Log) Topics() []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	names := make([]string, 0, len(l.topics))
	for n := range l.topics {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (l *Log) partition(topicName string, p int32) (*partition, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	t, ok := l.topics[topicName]
	if !ok || p < 0 || int(p) >= len(t.parts) {
		return nil, fmt.Errorf("%w: %s/%d", ErrUnknownTopic, topicName, p)
	}
	return t.parts[p], nil
}

// AppendAsync queues recs for the partition's next group commit and calls
// done, from the writer goroutine, once the topic's fsync policy is met or
// the append failed. done must not block. Records get consecutive offsets
// starting at the base passed to done. AppendAsync blocks while the
// partition's queue is full, until ctx ends.
func (l *Log) AppendAsync(ctx context.Context, topic string, part int32, recs []Record, done func(base int64, err error)) error {
	p, err := l.partition(topic, part)
	if err != nil {
		return err
	}
	return p.enqueue(ctx, recs, done)
}

// Append appends recs and returns the offset of the first once the topic's
// fsync policy is met.
func (l *Log) Append(ctx context.Context, topic string, part int32, recs []Record) (int64, error) {
	type result struct {
		base int64
		err  error
	}
	ch := make(chan result, 1)
	if err := l.AppendAsync(ctx, topic, part, recs, func(base int64, err error) { ch <- result{base, err} }); err != nil {
		return 0, err
	}
	// The append is queued and will be acknowledged either way; waiting on
	// ctx here would only hide whether it became durable.
	r := <-ch
	return r.base, r.err
}

// Sync makes every append to topic acknowledged before it durable: for a
// topic with FsyncInterval, it fsyncs what each partition has written
// since its last fsync, without waiting for the interval.
func (l *Log) Sync(ctx context.Context, topic string) error {
	l.mu.RLock()
	t, ok := l.topics[topic]
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownTopic, topic)
	}
	errs := make([]error, len(t.parts))
	var wg sync.WaitGroup
	for i, p := range t.parts {
		wg.Go(func() { errs[i] = p.sync(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Read returns up to maxRecords records (and roughly maxBytes of values)
// from offset on. It returns no records, and no error, at the end of the
// partition; ErrOffsetOutOfRange below the start or past the end. The
// records' keys, values and headers may be shared with other reads: the
// caller must not modify them.
func (l *Log) Read(topic string, part int32, offset int64, maxRecords, maxBytes int) ([]Record, error) {
	p, err := l.partition(topic, part)
	if err != nil {
		return nil, err
	}
	return p.read(offset, maxRecords, maxBytes)
}

// Offsets returns a partition's start offset (the oldest kept) and end
// offset (the next to be assigned; everything below is readable).
func (l *Log) Offsets(topic string, part int32) (start, end int64, err error) {
	p, err := l.partition(topic, part)
	if err != nil {
		return 0, 0, err
	}
	start, end = p.bounds()
	return start, end, nil
}

// Watch returns a channel that receives after appends to any of topics,
// and stop, which ends that. It holds one wake: a reader takes the
// channel, reads, and when the read came back empty waits on it; an append
// meanwhile has left its wake, so none is lost. Appends to other topics do
// not wake it (every append used to wake every reader, each reading all
// its partitions again to find nothing).
func (l *Log) Watch(topics ...string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	l.watchMu.Lock()
	for _, t := range topics {
		l.watchers[t] = append(l.watchers[t], ch)
	}
	l.watchMu.Unlock()
	return ch, func() {
		l.watchMu.Lock()
		defer l.watchMu.Unlock()
		for _, t := range topics {
			l.watchers[t] = slices.DeleteFunc(l.watchers[t], func(c chan struct{}) bool { return c == ch })
		}
	}
}

// notify wakes the watchers of topic, never waiting for one.
func (l *Log) notify(topic string) {
	l.watchMu.RLock()
	for _, ch := range l.watchers[topic] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	l.watchMu.RUnlock()
}

// CommitOffsets atomically stores a consumer group's offsets (the next
// offset to consume per partition), merged over what it had.
func (l *Log) CommitOffsets(group string, offsets map[TopicPartition]int64) error {
	return l.offsets.commit(group, offsets)
}

// CommittedOffsets returns a consumer group's stored offsets.
func (l *Log) CommittedOffsets(group string) map[TopicPartition]int64 {
	return l.offsets.get(group)
}

// Close stops every writer after it has written and synced what was queued,
// then closes the files. Appends after Close fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	l.wg.Wait()
	var errs []error
	for _, t := range l.topics {
		for _, p := range t.parts {
			errs = append(errs, p.shutdown())
		}
	}
	l.comp.close()
	errs = append(errs, l.lock.Close())
	return errors.Join(errs...)
}

// TopicPartition names one partition.
type TopicPartition struct {
	Topic     string
	Partition int32
}

func (tp TopicPartition) String() string { return fmt.Sprintf("%s/%d", tp.Topic, tp.Partition) }

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("wal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("wal: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("wal: sync dir: %w", err)
	}
	return nil
}
