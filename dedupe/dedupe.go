// Package dedupe is the idempotency store that turns at-least-once
// consumption into one send per idempotency key.
//
// The protocol per key is claim, then confirm or release:
//
//   - Claim, before sending. A new key is claimed under a lease and the
//     caller sends. Claims live in memory (bounded) until confirmed or
//     released; they are also written to disk only in scopes whose
//     UncertainPolicy is Skip, because only there does a crash between claim
//     and confirm change what happens next. This halves the writes per send. A key already confirmed answers Duplicate with the
//     original notification id and outcome; the caller acknowledges without
//     sending. A key claimed by someone whose lease is still running answers
//     InFlight. A key whose claimant died (lease expired without confirm or
//     release) is taken over, and the channel's UncertainPolicy says whether
//     the new claimant sends again (Resend: at-least-once, right for
//     verification codes) or treats it as done (Skip: at-most-once for that
//     uncertain send, right where a duplicate is worse than a loss).
//   - Confirm, after the provider acknowledged: later claims are Duplicates.
//   - Release, after a failure: a retry or replay with the same key may go
//     out. Given the claim's Seq it drops that claim only, never the claim
//     or confirm of a later record that took the key over meanwhile.
//
// Entries live under time-bucketed key prefixes ('b' + bucket + the key's
// 16-byte digest, see keyform.go; stores written before hold the keys as
// given, and are still read). A key
// stops deduplicating once older than its scope's window, and whole buckets
// older than the longest window are removed with one range delete followed
// by a compaction of that range, so disk is bounded by the window times the
// key rate, whatever the total number of keys ever seen.
//
// Writes reach Pebble through a write buffer (see WithWriteBuffer): a log
// and an in-memory index, ingested as one sorted sstable a generation.
// Lookups read the recent entries (if kept), the filters, the buffer, then
// Pebble, in batches, so their cache misses overlap.
package dedupe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"
)

// Status is the answer to a claim.
type Status uint8

const (
	// Claimed: the key is new (or expired, or released); send it.
	Claimed Status = iota + 1
	// Duplicate: the key was confirmed; do not send. OriginalID and Outcome
	// describe the first send.
	Duplicate
	// InFlight: another claimant holds a live lease; do not send now.
	InFlight
	// TakenOver: the previous claimant's lease expired without an outcome and
	// the policy is Resend; send it (it may be the second send).
	TakenOver
	// Uncertain: the previous claimant's lease expired and the policy is
	// Skip; the key is now confirmed with outcome "uncertain"; do not send.
	Uncertain
)

func (s Status) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case Duplicate:
		return "duplicate"
	case InFlight:
		return "in-flight"
	case TakenOver:
		return "taken-over"
	case Uncertain:
		return "uncertain"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// ShouldSend reports whether the claimant must send.
func (s Status) ShouldSend() bool { return s == Claimed || s == TakenOver }

// UncertainPolicy decides what happens to a send whose claimant died.
type UncertainPolicy uint8

const (
	Resend UncertainPolicy = iota // default
	Skip
)

// ClaimRequest is one key to claim.
type ClaimRequest struct {
	Key   string // the idempotency key, already scoped by tenant if needed
	Scope string // window and policy scope: a tenant or channel name; "" is the default
	ID    string // the notification id that will send if the claim wins
}

// ClaimResult answers one ClaimRequest.
type ClaimResult struct {
	Status     Status
	OriginalID string // the notification id holding the key (the caller's own on Claimed)
	Outcome    string // with Duplicate and Uncertain
	// Token identifies where the claim lives; pass it to Confirm or Release.
	Token uint32
	// Seq tells this claim from any later one of its key, when it is one
	// to send (Claimed, TakenOver); pass it to Renew.
	Seq uint64
}

// RenewRequest is a claim to hold on to before its send: its ClaimRequest
// and the Seq its claim answered.
type RenewRequest struct {
	ClaimRequest
	Seq uint64
}

// Done finishes a claim: Confirm records Outcome, Release drops the key.
type Done struct {
	Key     string
	Token   uint32 // from the ClaimResult
	ID      string // the notification that sent
	Outcome string // for Confirm: "sent", a provider message id, anything short
	// Seq, from the ClaimResult, makes Release drop only that claim; 0
	// drops whatever the key holds.
	Seq uint64
}

// liveClaim is a claim of this process not yet confirmed or released.
type liveClaim struct {
	id        string
	claimedAt int64
	leaseTill int64
	bucket    uint32
	seq       uint64 // ClaimResult.Seq
}

// Errors.
var (
	ErrTooManyClaims = errors.New("dedupe: too many open claims")
	ErrMissing       = errors.New("dedupe: store directory missing")
	ErrLayout        = errors.New("dedupe: store was created with another bucket size")
)

// Option configures Open.
type Option func(*options)

type options struct {
	now        func() time.Time
	window     time.Duration
	scopes     map[string]time.Duration
	policies   map[string]UncertainPolicy
	lease      time.Duration
	bucket     time.Duration
	sync       bool
	syncDelay  time.Duration
	create     bool
	memtable   uint64
	cache      int64
	maxLive    int
	reclaimInt time.Duration
	logger     Logger
	filterKeys uint
	filterMax  int
	recent     int
	buffer     int
	fs         vfs.FS
}

// Logger receives Pebble's messages. The default drops informational ones
// and writes errors to standard error.
type Logger interface {
	Infof(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

type stderrLogger struct{}

func (stderrLogger) Infof(string, ...any) {}
func (stderrLogger) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "dedupe: pebble: "+format+"\n", args...)
}
func (stderrLogger) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "dedupe: pebble: "+format+"\n", args...)
	os.Exit(1)
}

// WithFS puts the store's files (Pebble's and the write buffer's) on fs
// instead of the OS's file system: tests inject faults through it
// (errorfs).
func WithFS(fs vfs.FS) Option { return func(o *options) { o.fs = fs } }

// WithLogger routes Pebble's log messages.
func WithLogger(l Logger) Option { return func(o *options) { o.logger = l } }

// WithCacheSize sets Pebble's block cache (default 256 MiB). Lookups of
// existing keys are only fast while the live window's index and data
// blocks fit.
func WithCacheSize(n int64) Option { return func(o *options) { o.cache = n } }

// WithClock sets the clock (tests run days of windows on a fake one).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithWindow sets the default dedupe window (24 h).
func WithWindow(d time.Duration) Option { return func(o *options) { o.window = d } }

// WithScopeWindow sets the window of one scope (a tenant or channel).
func WithScopeWindow(scope string, d time.Duration) Option {
	return func(o *options) { o.scopes[scope] = d }
}

// WithUncertainPolicy sets what a taken-over claim does in one scope.
func WithUncertainPolicy(scope string, p UncertainPolicy) Option {
	return func(o *options) { o.policies[scope] = p }
}

// WithLease sets how long a claim stays exclusive without confirm or
// release (30 s); it must exceed the slowest send including retries inside
// one attempt. A claim that waits longer before its send is renewed
// (Renew).
func WithLease(d time.Duration) Option { return func(o *options) { o.lease = d } }

// WithBucket sets the time bucket (default: a quarter of the longest window,
// at least a second). A key is forgotten between its window and its window
// plus one bucket after its claim; a claim probes up to window/bucket+1
// buckets. Fixed at creation.
func WithBucket(d time.Duration) Option { return func(o *options) { o.bucket = d } }

// WithSync makes every batch fsync before returning (default true: a claim
// lost to power failure would allow a second send).
func WithSync(sync bool) Option { return func(o *options) { o.sync = sync } }

// WithSyncDelay makes a synced write that would start an fsync of the write
// buffer's log wait d first, so the writes of other callers made meanwhile
// share that fsync (the commit delay of PostgreSQL and MySQL). Senders'
// confirms arrive staggered: without a delay each fsync covered ~1.1 of
// them, and the fsyncs, one per batch sent, left the cores idle in IO
// waits a tenth of the time. Each synced write returns up to d later;
// default DefaultSyncDelay, 0 starts every fsync at once. On the 2-core
// machine, with confirms synced: the end to end +5 % (211K → 222-223K/s),
// the codes' p99 during a burst 15-18 → 12.5-15 ms, but the burst's rate
// while codes flow -5-8 % (its one sender waits the delay on every batch).
func WithSyncDelay(d time.Duration) Option { return func(o *options) { o.syncDelay = d } }

// WithCreate allows Open to create a missing store. Without it a missing
// directory is an error: a store that vanished must not silently forget.
func WithCreate() Option { return func(o *options) { o.create = true } }

// WithFilter sizes the in-memory Bloom filter of each time bucket for n keys
// at first (default 4,194,304: 4 MiB, one byte a key, at 3.3 % false
// positives). A bucket that takes more grows its filter by stages of twice
// the keys, within WithFilterMemory; past that, more keys raise the rate,
// never the answer. New keys then skip the disk probe. 0 turns the filters
// off. The filters are built from the keys on disk at open.
func WithFilter(n uint) Option { return func(o *options) { o.filterKeys = n } }

// WithFilterMemory bounds the memory of every bucket's filter together
// (default 512 MiB: ~280M keys in the window, at 1.0-1.9 bytes a key and
// 3-6 % false positives). A bucket's first stage is made whatever the
// bound.
func WithFilterMemory(n int) Option { return func(o *options) { o.filterMax = n } }

// WithRecent keeps copies of the newest entries written in n bytes of
// memory, which lookups read before Pebble (default 0: off). A key seen
// lately is then answered without a seek per time bucket: a replay after a
// crash or a rebalance, a client retrying its request. Lookups of cached
// keys ran 2-2.7M/s against 0.27-0.44M/s from Pebble
// (BenchmarkLookupExisting); every write also makes its copy, and every
// lookup of a new key asks first: new keys ran up to 40 % slower with it in
// BenchmarkClaimConfirmNew (320-540K/s against 550-570K/s; a noisy
// machine). Off by default for that and its memory: an entry takes about
// 100 bytes for a 40-byte key. The copies are warmed from disk at open,
// newest last.
func WithRecent(n int) Option { return func(o *options) { o.recent = n } }

// WithWriteBuffer sets how many bytes of writes collect in memory (and in
// a log file, synced per WithSync) before they go into Pebble as one sorted
// sstable (default 22 MiB; up to two such generations exist, one filling
// and one being ingested). Keys arrive in random order: inserted one by
// one, each walked Pebble's memtable skiplist through cache misses, about
// half the CPU of a new key, and every small flush overlapped its whole
// bucket (write amplification ~5). New keys ran 1.6-1.9x faster with it
// (BenchmarkClaimConfirmNew, buffer=off in the same run). 0 writes every
// batch into Pebble directly.
//
// 22 MiB, not 32: since keys are stored as digests, 32 MiB hold ~600K
// entries where they held ~450K, and the longer ingest of each generation
// (a burst of CPU and disk) raised the codes' p99 during a 1M burst to a
// median of ~21 ms against ~15 at 22 MiB (-cpu 2, alternated, 14 and 6
// runs); the API's NDJSON ingest ran ~10 % faster with 32.
func WithWriteBuffer(n int) Option { return func(o *options) { o.buffer = n } }

// WriteBufferMemory is what a write buffer of n bytes a generation takes
// at most: two generations, their records' slack and their indexes.
func WriteBufferMemory(n int) int {
	if n <= 0 {
		return 0
	}
	return 2 * (n + n/8 + 16*int(indexPairs(genIndexEntries(n))))
}

// WithMaxOpenClaims bounds the claims held in memory between Claim and
// Confirm or Release (default 1,048,576); Claim fails beyond it.
func WithMaxOpenClaims(n int) Option { return func(o *options) { o.maxLive = n } }

// WithMemTableSize sets Pebble's memtable size (default 8 MiB). Keys
// arrive in random order, so every insert descends the memtable's skiplist
// through cache misses: an 8 MiB memtable took 1.5M new keys 1.5x faster
// than a 64 MiB one (BenchmarkClaimConfirmNew), the extra flushes included.
func WithMemTableSize(n uint64) Option { return func(o *options) { o.memtable = n } }

// WithReclaimInterval sets how often expired buckets are dropped in the
// background (default a quarter bucket; 0 disables, Reclaim still works).
func WithReclaimInterval(d time.Duration) Option { return func(o *options) { o.reclaimInt = d } }

// Store is an open idempotency store.
type Store struct {
	db        *pebble.DB
	o         options
	maxWindow time.Duration
	bucketSec int64
	wo        *pebble.WriteOptions

	claimMu sync.Mutex // claims are check-then-write; one batch at a time
	seq     uint64     // the last ClaimResult.Seq handed out; under claimMu
	live    liveTable  // by the keys' digests

	reclaimMu sync.Mutex    // one reclaim or write-buffer ingest at a time
	floor     atomic.Uint32 // buckets below are gone

	buf *writeBuffer // nil when WithWriteBuffer(0)

	form keyForm // how keys are stored (keyform.go)

	filt *filters // nil when WithFilter(0)
	rec  *recent  // nil when WithRecent(0)

	m struct {
		claims, hits, inflight, takeovers, uncertain, confirms, releases, reclaims, lookups, remembered, forgotten, writeErrors atomic.Int64
	}
	stop chan struct{}
	wg   sync.WaitGroup
}

// Defaults that size a store's memory (the capacity planner adds them up).
const (
	DefaultMemTableSize = 8 << 20                // see WithMemTableSize
	DefaultCacheSize    = 256 << 20              // see WithCacheSize
	DefaultFilterKeys   = 4 << 20                // see WithFilter
	DefaultFilterBytes  = 512 << 20              // see WithFilterMemory
	DefaultRecentBytes  = 0                      // see WithRecent
	DefaultSyncDelay    = 500 * time.Microsecond // see WithSyncDelay
	// DefaultWriteBufferBytes is one generation of the write buffer; up to
	// two exist, with an index entry of about 16 bytes a key each.
	DefaultWriteBufferBytes = 22 << 20 // see WithWriteBuffer
	// MemTables is how many memtables Pebble keeps before it stalls writes
	// (one filling, one flushing).
	MemTables = 2
	// FilterBuckets is how many time buckets hold keys at once: a window is
	// four buckets, and the current one is partly filled.
	FilterBuckets = 5
)

// Open opens the store in dir.
func Open(dir string, opts ...Option) (*Store, error) {
	o := options{fs: vfs.Default, now: time.Now, window: 24 * time.Hour, scopes: map[string]time.Duration{},
		policies: map[string]UncertainPolicy{}, lease: 30 * time.Second, sync: true, memtable: DefaultMemTableSize,
		cache: DefaultCacheSize, syncDelay: DefaultSyncDelay, reclaimInt: -1, logger: stderrLogger{}, maxLive: 1 << 20, filterKeys: DefaultFilterKeys, filterMax: DefaultFilterBytes,
		recent: DefaultRecentBytes, buffer: DefaultWriteBufferBytes}
	for _, opt := range opts {
		opt(&o)
	}
	maxW := o.window
	for _, w := range o.scopes {
		maxW = max(maxW, w)
	}
	if o.window <= 0 || o.lease <= 0 || slices.ContainsFunc(mapsValues(o.scopes), func(d time.Duration) bool { return d <= 0 }) {
		return nil, errors.New("dedupe: windows and lease must be positive")
	}
	if o.bucket == 0 {
		o.bucket = max(maxW/4, time.Second)
	}
	if o.bucket < time.Second || o.bucket%time.Second != 0 {
		return nil, errors.New("dedupe: bucket must be a whole number of seconds")
	}
	if o.reclaimInt < 0 {
		o.reclaimInt = max(o.bucket/4, time.Second)
	}
	if _, err := o.fs.Stat(dir); errors.Is(err, os.ErrNotExist) && !o.create {
		return nil, fmt.Errorf("%w: %s (a store that existed and vanished would forget every key; create it with WithCreate on first start)", ErrMissing, dir)
	}
	// Pebble charges its memtables to the block cache (Cache.Reserve): the
	// blocks keep o.cache with every memtable queued.
	cache := pebble.NewCache(o.cache + MemTables*int64(o.memtable))
	defer cache.Unref() // the DB holds its own reference
	// Keys are hashes: every ingested generation spans its bucket's whole
	// key range and overlaps all the others, so L0 compactions rewrite
	// everything below them. Letting 12 (not Pebble's 4) gather first
	// merges more per pass. 8 against 4: the API's NDJSON ingest +3-5 %,
	// the engine +3-5 %; 12 against 8, with 22 MiB generations: the API
	// +3-10 % over 8M keys (alternated). A lookup the filters pass probes a
	// few more files.
	popts := &pebble.Options{FS: o.fs, MemTableSize: o.memtable, ErrorIfNotExists: !o.create, Cache: cache, Logger: o.logger,
		L0CompactionThreshold: 12, L0StopWritesThreshold: 32}
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	popts.EnsureDefaults() // the write buffer builds sstables with these options
	db, err := pebble.Open(dir, popts)
	if err != nil {
		return nil, fmt.Errorf("dedupe: open %s: %w", dir, err)
	}
	s := &Store{db: db, o: o, maxWindow: maxW, bucketSec: int64(o.bucket / time.Second), stop: make(chan struct{})}
	s.wo = pebble.NoSync
	if o.sync {
		s.wo = pebble.Sync
	}
	existed, err := s.checkLayout()
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadKeyForm(existed); err != nil {
		db.Close()
		return nil, err
	}
	// The buffer's logs are replayed whatever WithWriteBuffer says now: they
	// hold acknowledged writes.
	if err := s.openBuffer(filepath.Join(dir, writeBufferDir), popts); err != nil {
		db.Close()
		return nil, err
	}
	if o.filterKeys > 0 {
		s.filt = newFilters(o.filterKeys, o.filterMax)
	}
	if o.recent > 0 {
		s.rec = newRecent(o.recent)
	}
	if err := s.warm(); err != nil {
		s.closeBuffer()
		db.Close()
		return nil, fmt.Errorf("dedupe: building filters and recent entries: %w", err)
	}
	if o.reclaimInt > 0 {
		s.wg.Add(1)
		go s.reclaimLoop()
	}
	return s, nil
}

func mapsValues(m map[string]time.Duration) []time.Duration {
	out := make([]time.Duration, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

var layoutKey = []byte("m/bucket-seconds")

// checkLayout holds the store to the bucket size it was created with. The
// layout also carries the key form's byte, which turns an older binary
// (that stored keys as given) away with ErrLayout: it would not find the
// digests, and would send again what they deduplicate. A store written
// before carries the bucket size alone; its layout gains the byte here.
// existed reports whether the store had a layout (it was opened before).
func (s *Store) checkLayout() (existed bool, err error) {
	want := append(binary.BigEndian.AppendUint64(nil, uint64(s.bucketSec)), keyFormDigests)
	v, closer, err := s.db.Get(layoutKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, s.db.Set(layoutKey, want, pebble.Sync)
	}
	if err != nil {
		return false, fmt.Errorf("dedupe: %w", err)
	}
	defer closer.Close()
	switch {
	case bytes.Equal(v, want):
		return true, nil
	case bytes.Equal(v, want[:8]):
		return true, s.db.Set(layoutKey, want, pebble.Sync)
	}
	return true, fmt.Errorf("%w: stored %x, configured %ds", ErrLayout, v, s.bucketSec)
}

var bufferKey = []byte("m/write-buffer")

// writeBufferDir is the write buffer's directory in the store's.
const writeBufferDir = "write-buffer"

// openBuffer opens the write buffer in dir, replaying what it holds. A store
// that had one and lost its directory fails: acknowledged writes are gone.
func (s *Store) openBuffer(dir string, popts *pebble.Options) error {
	_, closer, err := s.db.Get(bufferKey)
	switch {
	case err == nil:
		closer.Close()
		if _, err := s.o.fs.Stat(dir); err != nil {
			return fmt.Errorf("%w: write buffer %s: %v", ErrMissing, dir, err)
		}
	case errors.Is(err, pebble.ErrNotFound):
		if err := s.o.fs.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
		if err := s.db.Set(bufferKey, nil, pebble.Sync); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	default:
		return fmt.Errorf("dedupe: %w", err)
	}
	wopts := popts.MakeWriterOptions(0, s.db.TableFormat())
	if s.o.buffer <= 0 { // writes go to Pebble directly; what earlier runs buffered goes there first
		b := &writeBuffer{fs: s.o.fs, dir: dir, db: s.db, wopts: wopts, floor: s.floor.Load, exclusive: &s.reclaimMu}
		_, err := b.replay()
		return err
	}
	b, err := openWriteBuffer(s.o.fs, dir, s.db, wopts, max(s.o.buffer, 1<<20), s.floor.Load, &s.reclaimMu, s.o.logger.Errorf)
	if err != nil {
		return err
	}
	b.syncDelay = s.o.syncDelay
	s.buf = b
	return nil
}

func (s *Store) closeBuffer() error {
	if s.buf == nil {
		return nil
	}
	return s.buf.close()
}

// Checkpoint writes a copy of the store into dir, which must not exist: a
// store Open takes, with every key confirmed, released or remembered before
// the call (its write buffer is ingested into Pebble first; claims still in
// flight are not copied). Pebble's files are hard links where the file
// system allows, so a copy is cheap until compactions replace them. Writes
// go on meanwhile; those made during the call may or may not be copied.
func (s *Store) Checkpoint(dir string) error {
	if s.buf != nil {
		if err := s.buf.flush(); err != nil {
			return fmt.Errorf("dedupe: checkpoint: %w", err)
		}
	}
	if err := s.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("dedupe: checkpoint: %w", err)
	}
	// The store records that it has a write buffer; the copy's is empty,
	// since everything buffered before the call went into Pebble.
	if err := s.o.fs.MkdirAll(filepath.Join(dir, writeBufferDir), 0o755); err != nil {
		return fmt.Errorf("dedupe: checkpoint: %w", err)
	}
	return nil
}

// Close stops background work and closes the database. Buffered writes stay
// in their logs and are ingested at the next open.
func (s *Store) Close() error {
	close(s.stop)
	s.wg.Wait()
	return errors.Join(s.closeBuffer(), s.db.Close())
}

// commit makes a batch's writes durable per sync (and visible).
func (s *Store) commit(w *sortedWriter, sync bool) error {
	return await(s.commitThen(w, sync))
}

// commitThen makes a batch's writes visible, and durable per sync by the
// time wait returns. Without the write buffer Pebble's commit is synced at
// once (its own group commit shares the fsync).
func (s *Store) commitThen(w *sortedWriter, sync bool) (wait func() error, err error) {
	if s.buf != nil {
		wait, err = s.buf.writeThen(w.ops, sync)
	} else {
		wo := pebble.NoSync
		if sync {
			wo = pebble.Sync
		}
		wait, err = noWait, w.commit(s.db, wo)
	}
	if err != nil {
		s.m.writeErrors.Add(1)
		return nil, err
	}
	if !sync {
		return wait, nil
	}
	synced := wait
	return func() error {
		err := synced()
		if err != nil {
			s.m.writeErrors.Add(1)
		}
		return err
	}, nil
}

// Err is the error that makes the store refuse every write from now on (a
// failed write or fsync of the write buffer's log, whose tail is then
// unknown), or nil while it takes writes. Only a reopen, which replays the
// logs, clears it.
func (s *Store) Err() error {
	if s.buf == nil {
		return nil
	}
	// Not under the buffer's lock, which writers hold through their write:
	// the API asks on every request.
	if err := s.buf.failed.Load(); err != nil {
		return *err
	}
	return nil
}

func (s *Store) bucketOf(t time.Time) uint32 { return uint32(t.Unix() / s.bucketSec) }

func bucketPrefix(b uint32) []byte { return binary.BigEndian.AppendUint32([]byte{'b'}, b) }

func entryKey(dst []byte, b uint32, key string) []byte {
	dst = append(dst, 'b')
	dst = binary.BigEndian.AppendUint32(dst, b)
	return append(dst, key...)
}

// Entry values come in two forms, told apart by their first byte.
//
// The compact form (written since 2026-11-26): a flags byte (packedEntry,
// the state in its low bits), claimed-at as a uvarint of unix ns, the
// lease as one more when set, the id as 16 bytes when it is a ULID in its
// canonical text (else uvarint-prefixed), and the outcome as one byte when
// it is a common one (else uvarint-prefixed). A confirmed ingest entry
// takes ~28 bytes where the fixed form took 53: every generation, flush
// and compaction of the store moves them.
//
// The fixed form (stores written before, still read): the state byte,
// claimed-at and lease-until as 8 big-endian bytes each, then the id and
// outcome uvarint-prefixed.
const (
	stateClaimed   = 1
	stateConfirmed = 2
)

const (
	packedEntry   = 0x80
	packedState   = 0x03
	packedLease   = 0x04 // a lease follows claimed-at
	packedULID    = 0x08 // the id is 16 binary bytes
	packedOutcome = 0x10 // the outcome is one byte of commonOutcomes
)

// commonOutcomes are the outcomes written as one byte (their index + 1).
var commonOutcomes = [...]string{"accepted", "sent", "uncertain"}

type entry struct {
	state     byte
	claimedAt int64
	leaseTill int64
	id        string
	outcome   string
}

func (e *entry) append(dst []byte) []byte {
	if e.claimedAt < 0 || e.leaseTill < 0 || e.state&^packedState != 0 {
		return e.appendFixed(dst) // outside what the compact form holds
	}
	flags := packedEntry | e.state
	if e.leaseTill != 0 {
		flags |= packedLease
	}
	id, binID := ulidBytes(e.id)
	if binID {
		flags |= packedULID
	}
	code := slices.Index(commonOutcomes[:], e.outcome) + 1
	if code > 0 {
		flags |= packedOutcome
	}
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(e.claimedAt))
	if e.leaseTill != 0 {
		dst = binary.AppendUvarint(dst, uint64(e.leaseTill))
	}
	if binID {
		dst = append(dst, id[:]...)
	} else {
		dst = binary.AppendUvarint(dst, uint64(len(e.id)))
		dst = append(dst, e.id...)
	}
	if code > 0 {
		return append(dst, byte(code))
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.outcome)))
	return append(dst, e.outcome...)
}

// appendFixed appends e in the fixed form.
func (e *entry) appendFixed(dst []byte) []byte {
	dst = append(dst, e.state)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.claimedAt))
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.leaseTill))
	dst = binary.AppendUvarint(dst, uint64(len(e.id)))
	dst = append(dst, e.id...)
	dst = binary.AppendUvarint(dst, uint64(len(e.outcome)))
	return append(dst, e.outcome...)
}

// ulidBytes is id's binary ULID when id is one in canonical text (what it
// parses back to), so the compact form gives back the same string.
func ulidBytes(id string) (ulid.ULID, bool) {
	if len(id) != ulid.EncodedSize {
		return ulid.ULID{}, false
	}
	// Canonical text is upper case; ParseStrict takes lower case too.
	// Checking that here, rather than encoding the parse back to text and
	// comparing, halved this function's share of the API's NDJSON ingest
	// (1.0 % of its CPU to 0.5).
	for i := range len(id) {
		if !ulidUpper[id[i]] {
			return ulid.ULID{}, false
		}
	}
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return ulid.ULID{}, false
	}
	return u, true
}

// ulidUpper marks the bytes of canonical ULID text: Crockford's base32,
// upper case.
var ulidUpper = func() (t [256]bool) {
	for _, c := range "0123456789ABCDEFGHJKMNPQRSTVWXYZ" {
		t[c] = true
	}
	return t
}()

func parseEntry(b []byte) (entry, error) { return parseEntryStrings(b, false) }

var (
	errShortEntry     = errors.New("dedupe: short entry")
	errMalformedEntry = errors.New("dedupe: malformed entry")
)

// parseEntryStrings parses b; with view, the id and outcome point into b
// instead of being copied, for bytes that are never written again.
func parseEntryStrings(b []byte, view bool) (entry, error) {
	var e entry
	if len(b) == 0 {
		return e, errShortEntry
	}
	str := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		var v string
		if view && n > 0 {
			v = unsafe.String(&b[k], int(n))
		} else {
			v = string(b[k : k+int(n)])
		}
		b = b[k+int(n):]
		return v, true
	}
	if b[0]&packedEntry == 0 {
		if len(b) < 17 {
			return e, errShortEntry
		}
		e.state = b[0]
		e.claimedAt = int64(binary.BigEndian.Uint64(b[1:]))
		e.leaseTill = int64(binary.BigEndian.Uint64(b[9:]))
		b = b[17:]
		var ok1, ok2 bool
		e.id, ok1 = str()
		e.outcome, ok2 = str()
		if !ok1 || !ok2 || (e.state != stateClaimed && e.state != stateConfirmed) {
			return e, errMalformedEntry
		}
		return e, nil
	}
	flags := b[0]
	b = b[1:]
	e.state = flags & packedState
	if flags&^(packedEntry|packedState|packedLease|packedULID|packedOutcome) != 0 ||
		(e.state != stateClaimed && e.state != stateConfirmed) {
		return e, errMalformedEntry
	}
	uvarint := func() (int64, bool) {
		v, k := binary.Uvarint(b)
		if k <= 0 || v > math.MaxInt64 {
			return 0, false
		}
		b = b[k:]
		return int64(v), true
	}
	var ok bool
	if e.claimedAt, ok = uvarint(); !ok {
		return e, errMalformedEntry
	}
	if flags&packedLease != 0 {
		if e.leaseTill, ok = uvarint(); !ok || e.leaseTill == 0 {
			return e, errMalformedEntry
		}
	}
	if flags&packedULID != 0 {
		if len(b) < len(ulid.ULID{}) {
			return e, errMalformedEntry
		}
		e.id, b = ulid.ULID(b[:16]).String(), b[16:]
	} else if e.id, ok = str(); !ok {
		return e, errMalformedEntry
	}
	if flags&packedOutcome != 0 {
		if len(b) < 1 || b[0] == 0 || int(b[0]) > len(commonOutcomes) {
			return e, errMalformedEntry
		}
		e.outcome, b = commonOutcomes[b[0]-1], b[1:]
	} else if e.outcome, ok = str(); !ok {
		return e, errMalformedEntry
	}
	if len(b) != 0 {
		return e, errMalformedEntry // trailing bytes: not an entry of ours
	}
	return e, nil
}

func (s *Store) windowOf(scope string) time.Duration {
	if w, ok := s.o.scopes[scope]; ok {
		return w
	}
	return s.o.window
}

func (s *Store) policyOf(scope string) UncertainPolicy { return s.o.policies[scope] }

type found struct {
	ok     bool
	bucket uint32
	e      entry
}

// lookup finds the newest live entry of each key, probing buckets from the
// newest down with one iterator per bucket and keys in sorted order, so
// Pebble's bloom filters skip the buckets a key is not in. Large batches are
// split across GOMAXPROCS workers: a probe is a few microseconds of CPU.
// Each key is given twice: stored (digests[i]), and as the caller gave it
// (key(i)), which stores written before the digests hold (lookupLegacy).
func (s *Store) lookup(digests []string, key func(i int) string, now time.Time) ([]found, error) {
	newest, oldest := s.liveBuckets(now)
	res, err := s.lookupIn(digests, newest, oldest)
	if err != nil {
		return nil, err
	}
	return res, s.lookupLegacy(len(digests), key, res, now)
}

// liveBuckets is the buckets a lookup at now searches: the newest, and the
// oldest the longest window reaches that is not reclaimed.
func (s *Store) liveBuckets(now time.Time) (newest, oldest uint32) {
	return s.bucketOf(now), max(s.bucketOf(now.Add(-s.maxWindow)), s.floor.Load())
}

// lookupIn is lookup over the buckets from newest down to oldest.
func (s *Store) lookupIn(keys []string, newest, oldest uint32) ([]found, error) {
	res := make([]found, len(keys))
	// Keys no bucket's filter may hold are new: they skip every layer below.
	// For the others the mask says which buckets to probe.
	// The recent entries go first when kept: every write passes through
	// them, so a key they hold is answered (a replay, a client's retry).
	// Large batches are split across GOMAXPROCS readers.
	if s.rec != nil {
		parallel(len(keys), func(from, to int) error {
			s.rec.getMany(keys[from:to], oldest, res[from:to])
			return nil
		})
	}
	// Keys no bucket's filter may hold are new: they skip the layers below.
	// For the others the mask says which buckets to probe.
	var mask []uint64
	if s.filt != nil && newest-oldest < 64 {
		mask = make([]uint64, len(keys))
		parallel(len(keys), func(from, to int) error {
			s.filt.screen(keys[from:to], newest, oldest, res[from:to], mask[from:to])
			return nil
		})
	}
	if s.buf != nil {
		if err := s.buf.lookupMany(keys, oldest, mask, res); err != nil {
			return nil, err
		}
	}
	order := make([]int, 0, len(keys))
	for i := range keys {
		if !res[i].ok && (mask == nil || mask[i] != 0) {
			order = append(order, i)
		}
	}
	if len(order) == 0 {
		return res, nil
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(keys[a], keys[b]) })
	return res, parallel(len(order), func(from, to int) error {
		return s.probe(keys, order[from:to], res, mask, newest, oldest)
	})
}

// parallel runs do over [0, n) split into GOMAXPROCS ranges of at least
// minKeysPerWorker, or at once on the caller when n is small.
func parallel(n int, do func(from, to int) error) error {
	workers := min(runtime.GOMAXPROCS(0), n/minKeysPerWorker)
	if workers <= 1 {
		return do(0, n)
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for w := range workers {
		wg.Go(func() { errs[w] = do(min(w*per, n), min((w+1)*per, n)) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

const minKeysPerWorker = 128

// probe resolves the keys at the given (sorted) indexes into res.
func (s *Store) probe(keys []string, order []int, res []found, mask []uint64, newest, oldest uint32) error {
	pending := len(order)
	var kbuf []byte
	shadows := s.buf != nil && s.buf.hasDeletes()
	cand := make([]int, 0, len(order))
	for b := int64(newest); b >= int64(oldest) && pending > 0; b-- {
		bu := uint32(b)
		cand = cand[:0]
		switch bit := uint64(1) << (newest - bu); {
		case mask != nil:
			for _, i := range order {
				if !res[i].ok && mask[i]&bit != 0 {
					cand = append(cand, i)
				}
			}
		case s.filt == nil:
			for _, i := range order {
				if !res[i].ok {
					cand = append(cand, i)
				}
			}
		default: // more buckets than a mask holds
			s.filt.candidates(bu, keys, order, func(i int) bool { return !res[i].ok }, &cand)
		}
		if len(cand) == 0 {
			continue // no key of the batch can be in this bucket
		}
		// Most probes are of new keys the in-memory filter could not rule
		// out, and most of a large bucket is in L6, whose tables' filters
		// Pebble skips unless asked: with them a probe that finds nothing
		// skips the data block. New keys on Pebble alone +65 %, past-size
		// filters 2x, 15M keys through the API +5-7 %; lookups of keys
		// that exist -3-8 % (they read the filter too).
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: bucketPrefix(bu), UpperBound: bucketPrefix(bu + 1), UseL6Filters: true})
		if err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
		for _, i := range cand {
			kbuf = entryKey(kbuf[:0], bu, keys[i])
			if !it.SeekPrefixGE(kbuf) || !bytes.Equal(it.Key(), kbuf) {
				continue
			}
			if shadows && s.buf.deleted(kbuf) {
				continue // released since; Pebble has not seen the delete yet
			}
			e, err := parseEntry(it.Value())
			if err != nil {
				it.Close()
				return fmt.Errorf("%w: key %q", err, keys[i])
			}
			res[i] = found{ok: true, bucket: bu, e: e}
			pending--
		}
		if err := it.Close(); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	}
	return nil
}

// Lease is how long a claim stays exclusive without a renewal (WithLease).
func (s *Store) Lease() time.Duration { return s.o.lease }

// Renew holds on to claims before their sends. A claim is taken when its
// record is read, and the record may then wait longer than the lease (its
// channel paused, its provider's breaker open, a backlog behind the rate):
// a later record of the key would take the claim over, and both would be
// sent. out[i] is reqs[i]'s claim, for another lease, while its Seq still
// holds the key; otherwise what claiming reqs[i] answers now (InFlight
// while another claim holds the key, Duplicate once one was confirmed, a
// new claim when none is left). out must have the same length as reqs.
func (s *Store) Renew(ctx context.Context, reqs []RenewRequest, out []ClaimResult) error {
	if len(out) != len(reqs) {
		return errors.New("dedupe: result slice length differs from requests")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	keys := s.digests(len(reqs), func(i int) string { return reqs[i].Key })
	lease := s.o.now().Add(s.o.lease).UnixNano()
	var again []int
	s.claimMu.Lock()
	for i, r := range reqs {
		dk := digestOf(keys[i])
		if lc, ok := s.live.get(dk); ok && lc.seq == r.Seq { // a live claim's Seq is never 0
			lc.leaseTill = lease
			s.live.set(dk, lc)
			out[i] = ClaimResult{Status: Claimed, OriginalID: lc.id, Token: lc.bucket, Seq: lc.seq}
			continue
		}
		again = append(again, i)
	}
	s.claimMu.Unlock()
	if len(again) == 0 {
		return nil
	}
	creqs := make([]ClaimRequest, len(again))
	cout := make([]ClaimResult, len(again))
	for j, i := range again {
		creqs[j] = reqs[i].ClaimRequest
	}
	if err := s.Claim(ctx, creqs, cout); err != nil {
		return err
	}
	for j, i := range again {
		out[i] = cout[j]
	}
	return nil
}

// Claim claims a batch of keys in one Pebble batch. out must have the same
// length as reqs. Repeats of a key inside one batch: the first claims, the
// later ones see InFlight.
func (s *Store) Claim(ctx context.Context, reqs []ClaimRequest, out []ClaimResult) error {
	if len(out) != len(reqs) {
		return errors.New("dedupe: result slice length differs from requests")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.o.now()
	nowNs := now.UnixNano()
	reqKey := func(i int) string { return reqs[i].Key }
	keys := s.digests(len(reqs), reqKey)
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	if s.live.len()+len(reqs) > s.o.maxLive {
		return fmt.Errorf("%w: %d claims open", ErrTooManyClaims, s.live.len())
	}
	// The lookup runs under the lock: a finish drops its claims from live
	// under it only after its write, so a key is either still live here
	// (InFlight) or its write is visible to this lookup.
	fs, err := s.lookup(keys, reqKey, now)
	if err != nil {
		return err
	}
	cur := s.bucketOf(now)
	s.live.touch(len(keys), func(i int) string { return keys[i] })
	var w sortedWriter
	var claims, hits, inflight, takeovers, uncertain int64
	for i, r := range reqs {
		skip := s.policyOf(r.Scope) == Skip
		lease := now.Add(s.o.lease).UnixNano()
		dk := digestOf(keys[i])
		// A claim made by this process and not finished yet.
		if lc, ok := s.live.get(dk); ok {
			switch {
			case nowNs < lc.leaseTill:
				out[i] = ClaimResult{Status: InFlight, OriginalID: lc.id, Token: lc.bucket}
				inflight++
			case skip:
				e := entry{state: stateConfirmed, claimedAt: lc.claimedAt, id: lc.id, outcome: "uncertain"}
				w.set(lc.bucket, keys[i], &e)
				s.live.del(dk)
				out[i] = ClaimResult{Status: Uncertain, OriginalID: lc.id, Outcome: e.outcome, Token: lc.bucket}
				uncertain++
			default:
				s.seq++
				lc.leaseTill, lc.id, lc.seq = lease, r.ID, s.seq
				s.live.set(dk, lc)
				out[i] = ClaimResult{Status: TakenOver, OriginalID: r.ID, Token: lc.bucket, Seq: lc.seq}
				takeovers++
			}
			continue
		}
		f := fs[i]
		live := f.ok && now.Sub(time.Unix(0, f.e.claimedAt)) < s.windowOf(r.Scope)
		switch {
		case !live:
			// Only a Skip scope persists the claim itself: after a crash it
			// must know the send was uncertain. Under Resend a lost claim
			// means "send again", which is what a taken-over claim does.
			s.seq++
			lc := liveClaim{id: r.ID, claimedAt: nowNs, leaseTill: lease, bucket: cur, seq: s.seq}
			if skip {
				e := entry{state: stateClaimed, claimedAt: nowNs, leaseTill: lease, id: r.ID}
				w.set(cur, keys[i], &e)
			}
			s.live.set(dk, lc)
			out[i] = ClaimResult{Status: Claimed, OriginalID: r.ID, Token: cur, Seq: lc.seq}
			claims++
		case f.e.state == stateConfirmed:
			out[i] = ClaimResult{Status: Duplicate, OriginalID: f.e.id, Outcome: f.e.outcome, Token: f.bucket}
			hits++
		case nowNs < f.e.leaseTill:
			// A persisted claim of an earlier process: honour its lease.
			out[i] = ClaimResult{Status: InFlight, OriginalID: f.e.id, Token: f.bucket}
			inflight++
		case skip:
			e := f.e
			e.state, e.outcome = stateConfirmed, "uncertain"
			w.set(f.bucket, keys[i], &e)
			out[i] = ClaimResult{Status: Uncertain, OriginalID: e.id, Outcome: e.outcome, Token: f.bucket}
			uncertain++
		default:
			// The window keeps running from the first claim.
			s.seq++
			s.live.set(dk, liveClaim{id: r.ID, claimedAt: f.e.claimedAt, leaseTill: lease, bucket: f.bucket, seq: s.seq})
			out[i] = ClaimResult{Status: TakenOver, OriginalID: r.ID, Token: f.bucket, Seq: s.seq}
			takeovers++
		}
	}
	s.remember(&w)
	if err := s.commit(&w, s.o.sync); err != nil {
		// Undo the in-memory claims of this batch: the caller will retry it.
		for i := range reqs {
			if out[i].Status.ShouldSend() {
				s.live.del(digestOf(keys[i]))
			}
		}
		return fmt.Errorf("dedupe: commit claims: %w", err)
	}
	s.committed(&w)
	s.m.claims.Add(claims)
	s.m.hits.Add(hits)
	s.m.inflight.Add(inflight)
	s.m.takeovers.Add(takeovers)
	s.m.uncertain.Add(uncertain)
	return nil
}

// Confirm records the outcome of sends, in one batch. A key whose entry is
// gone (released, reclaimed) is written anew so it still deduplicates.
func (s *Store) Confirm(ctx context.Context, done []Done) error {
	return s.finish(ctx, done, s.o.sync)
}

// ConfirmThenSync is Confirm in two steps, for a caller with work to do
// meanwhile: when it returns the outcomes are written (claims of the keys
// answer Duplicate), and wait makes them durable per the store's sync
// policy. Whatever must follow a durable confirm (marking the records
// finished, so their offsets commit) waits for wait; a crash before it
// returns replays those records, as a crash before Confirm returned would.
func (s *Store) ConfirmThenSync(ctx context.Context, done []Done) (wait func() error, err error) {
	return s.finishThen(ctx, done, s.o.sync)
}

// ConfirmNoSync is Confirm without waiting for the disk, whatever the
// store's sync policy: for callers to whom a confirm lost in a crash costs
// nothing but a later duplicate answer (the next synced write makes it
// durable too).
func (s *Store) ConfirmNoSync(ctx context.Context, done []Done) error {
	return s.finish(ctx, done, false)
}

// Release drops claims after failures, in one batch, so that a retry or
// replay of their records claims the keys anew. A Done with a Seq drops
// its own claim only: a claim that lost its key meanwhile (its lease ran
// out during a slow send, and a later record took the key over, maybe
// sent and confirmed it) leaves the key to its holder, whose claim or
// confirm a release by key alone would erase, letting a third record send.
func (s *Store) Release(ctx context.Context, done []Done) error {
	if len(done) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w := s.doneWriter(done)
	defer w.release()
	synced, err := s.releaseOwned(done, w)
	if err != nil {
		return err
	}
	if err := synced(); err != nil {
		return fmt.Errorf("dedupe: commit: %w", err)
	}
	return nil
}

// releaseOwned is Release's write, under the claim lock from the owner
// check to the live claims' drop: a takeover between them would be dropped
// with this release. It returns the wait for the fsync, done after it.
func (s *Store) releaseOwned(done []Done, w *sortedWriter) (synced func() error, err error) {
	key := w.digest
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	owned := make([]bool, len(done))
	var unheld []int // claims no longer live here: swept, or finished by another
	var n int64      // claims dropped
	for i, d := range done {
		lc, ok := s.live.get(digestOf(key(i)))
		switch {
		case d.Seq == 0 || ok && lc.seq == d.Seq:
			owned[i] = true
			w.del(d.Token, key(i))
			n++
		case !ok:
			unheld = append(unheld, i)
		}
	}
	if len(unheld) > 0 {
		// What is stored is this claim's own only while it is a persisted
		// claim (a Skip scope's) of this notification; a confirm or another
		// record's claim stays.
		keys := make([]string, len(unheld))
		for j, i := range unheld {
			keys[j] = key(i)
		}
		fs, err := s.lookup(keys, func(j int) string { return done[unheld[j]].Key }, s.o.now())
		if err != nil {
			return nil, fmt.Errorf("dedupe: release: %w", err)
		}
		for j, i := range unheld {
			if f := fs[j]; f.ok && f.e.state == stateClaimed && f.e.id == done[i].ID {
				w.del(f.bucket, key(i))
				n++
			}
		}
	}
	s.remember(w)
	synced, err = s.commitThen(w, s.o.sync)
	if err != nil {
		return nil, fmt.Errorf("dedupe: commit: %w", err)
	}
	s.committed(w)
	for i := range done {
		if owned[i] {
			s.live.del(digestOf(key(i)))
		}
	}
	s.m.releases.Add(n)
	return synced, nil
}

// Remembered is a key another store confirmed (another node's send or
// acceptance), copied here so that it answers Duplicate here too.
type Remembered struct {
	Key     string
	Scope   string
	ID      string // the notification that holds the key there
	Outcome string
	At      time.Time // when it was confirmed there: the window runs from then
}

// Remember writes keys confirmed elsewhere, in one batch, as if confirmed
// here at their own time: a claim of one answers Duplicate with its ID and
// Outcome until its scope's window, counted from At, has passed. Keys
// already out of their window are skipped. A live claim of this process
// is left as it is; its Confirm or Release still applies.
func (s *Store) Remember(ctx context.Context, rs []Remembered) error {
	if len(rs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w := pooledWriter(len(rs))
	defer w.release()
	now := s.o.now()
	floor := s.floor.Load()
	n := 0
	for _, r := range rs {
		b := s.bucketOf(r.At)
		if now.Sub(r.At) >= s.windowOf(r.Scope) || b < floor {
			continue
		}
		w.digests = s.appendDigest(w.digests, r.Key)
		e := entry{state: stateConfirmed, claimedAt: r.At.UnixNano(), id: r.ID, outcome: r.Outcome}
		w.set(b, unsafe.String(&w.digests[n*digestLen], digestLen), &e)
		n++
	}
	if n == 0 {
		return nil
	}
	return s.commitCounted(w, "remembered keys", &s.m.remembered, n)
}

// Forget drops keys remembered for notifications that never came to be
// (another node's accepted event, withdrawn once the log had failed to
// write its notification: a repeat must be accepted, not answered as a
// duplicate of a notification that will never be sent). A key is dropped
// only while its newest entry still names r.ID: one confirmed since for
// another notification stays, and so does a live claim of this process.
// Scope, Outcome and At are not read.
func (s *Store) Forget(ctx context.Context, rs []Remembered) error {
	if len(rs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w := pooledWriter(len(rs))
	defer w.release()
	for _, r := range rs {
		w.digests = s.appendDigest(w.digests, r.Key)
	}
	keys := make([]string, len(rs))
	for i := range keys {
		keys[i] = w.digest(i)
	}
	// Under the claim lock, as a claim's lookup: a claim meanwhile finds
	// the entry or its deletion, not a key between the two.
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	fs, err := s.lookup(keys, func(i int) string { return rs[i].Key }, s.o.now())
	if err != nil {
		return fmt.Errorf("dedupe: forget: %w", err)
	}
	n := 0
	for i, f := range fs {
		if f.ok && f.e.id == rs[i].ID {
			w.del(f.bucket, keys[i])
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return s.commitCounted(w, "forgotten keys", &s.m.forgotten, n)
}

// commitCounted writes w's n keys, durable per the store's sync policy,
// and counts them in c.
func (s *Store) commitCounted(w *sortedWriter, what string, c *atomic.Int64, n int) error {
	s.remember(w)
	if err := await(s.commitThen(w, s.o.sync)); err != nil {
		return fmt.Errorf("dedupe: commit %s: %w", what, err)
	}
	s.committed(w)
	c.Add(int64(n))
	return nil
}

func (s *Store) finish(ctx context.Context, done []Done, sync bool) error {
	return await(s.finishThen(ctx, done, sync))
}

// doneWriter returns a pooled writer holding done's keys in their stored
// form (see digest).
func (s *Store) doneWriter(done []Done) *sortedWriter {
	w := pooledWriter(len(done))
	for _, d := range done {
		w.digests = s.appendDigest(w.digests, d.Key)
	}
	return w
}

// noWait is the wait of a write with nothing left to make durable.
func noWait() error { return nil }

// await completes a two-step write (the ...Then methods): its wait, once
// the first step succeeded.
func await(wait func() error, err error) error {
	if err != nil {
		return err
	}
	return wait()
}

func (s *Store) finishThen(ctx context.Context, done []Done, sync bool) (func() error, error) {
	if len(done) == 0 {
		return noWait, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := s.doneWriter(done)
	defer w.release()
	key := w.digest
	now := s.o.now()
	for i, d := range done {
		// The window restarts at the confirm, seconds after the claim; that
		// saves a read per key and changes nothing a user could notice.
		e := entry{state: stateConfirmed, claimedAt: now.UnixNano(), id: d.ID, outcome: d.Outcome}
		w.set(d.Token, key(i), &e)
	}
	// The write goes out without the claim lock, which only guards the
	// claims in memory: a claim of one of these keys meanwhile still finds
	// it live (InFlight), and once the claim is dropped below, finds the
	// write. Holding the lock through the commit serialised every poll's
	// claims behind every batch's confirm.
	s.remember(w)
	synced, err := s.commitThen(w, sync)
	if err != nil {
		return nil, fmt.Errorf("dedupe: commit: %w", err)
	}
	s.committed(w) // before the keys leave live: a claim sees them live or here
	s.claimMu.Lock()
	s.live.touch(len(done), key)
	for i := range done {
		s.live.del(digestOf(key(i)))
	}
	s.claimMu.Unlock()
	s.m.confirms.Add(int64(len(done)))
	return func() error {
		if err := synced(); err != nil {
			return fmt.Errorf("dedupe: commit: %w", err)
		}
		return nil
	}, nil
}

// remember feeds the keys a batch is about to write to the filters, before
// the write, so a lookup never finds the filter behind the store.
func (s *Store) remember(w *sortedWriter) {
	if s.filt != nil {
		s.filt.add(w.ops)
	}
}

// committed copies a committed batch's writes into the recent entries.
func (s *Store) committed(w *sortedWriter) {
	if s.rec != nil {
		s.rec.apply(w.ops)
	}
}

// warm builds the filters and the recent entries from the entries on disk,
// oldest bucket first, so the newest stay when they do not all fit. Each
// lock is taken once for the scan, not once a key.
func (s *Store) warm() error {
	if s.filt == nil && s.rec == nil {
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
	if err != nil {
		return err
	}
	defer it.Close()
	if s.filt != nil {
		s.filt.mu.Lock()
		defer s.filt.mu.Unlock()
	}
	if s.rec != nil {
		s.rec.mu.Lock()
		defer s.rec.mu.Unlock()
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 5 {
			return fmt.Errorf("dedupe: malformed entry key %q", k)
		}
		b := binary.BigEndian.Uint32(k[1:5])
		if s.filt != nil {
			s.filt.addLocked(b, k[5:])
		}
		if s.rec != nil {
			v, err := it.ValueAndErr()
			if err != nil {
				return err
			}
			s.rec.putLocked(b, k[5:], v)
		}
	}
	return it.Error()
}

// sortedWriter collects a batch's writes and applies them in key order: the
// memtable's skiplist inserter reuses its last position for ascending keys,
// which turns a cache miss per level per key into a short walk. Keys and
// values are encoded into one buffer (not two allocations per write).
type sortedWriter struct {
	buf     []byte
	ops     []writeOp
	digests []byte // finishThen's stored keys
}

type writeOp struct {
	key, val []byte // in buf, or in an array buf has outgrown: both stay valid
	seq      int    // the order of writes to the same key is kept
	del      bool
}

// entrySizeHint is a typical entry key and value, for sizing buf.
const entrySizeHint = 96

// writers are finishThen's sortedWriters, pooled: a commit copies what it
// keeps (the log frame, the buffer's generation, the filters).
var writers = sync.Pool{New: func() any { return new(sortedWriter) }}

// pooledWriter takes a writer from the pool, emptied and sized for n keys.
func pooledWriter(n int) *sortedWriter {
	w := writers.Get().(*sortedWriter)
	w.buf = slices.Grow(w.buf[:0], n*entrySizeHint)
	w.ops = w.ops[:0]
	w.digests = slices.Grow(w.digests[:0], n*digestLen)
	return w
}

// maxPooledWriter keeps the pool from pinning one huge batch's buffer.
const maxPooledWriter = 4 << 20

// digest is the i-th key doneWriter stored.
func (w *sortedWriter) digest(i int) string {
	return unsafe.String(&w.digests[i*digestLen], digestLen)
}

func (w *sortedWriter) release() {
	if cap(w.buf) <= maxPooledWriter {
		writers.Put(w)
	}
}

func (w *sortedWriter) set(b uint32, key string, e *entry) {
	start := len(w.buf)
	w.buf = entryKey(w.buf, b, key)
	kend := len(w.buf)
	w.buf = e.append(w.buf)
	w.ops = append(w.ops, writeOp{key: w.buf[start:kend:kend], val: w.buf[kend:len(w.buf):len(w.buf)], seq: len(w.ops)})
}

func (w *sortedWriter) del(b uint32, key string) {
	start := len(w.buf)
	w.buf = entryKey(w.buf, b, key)
	w.ops = append(w.ops, writeOp{key: w.buf[start:len(w.buf):len(w.buf)], seq: len(w.ops), del: true})
}

func (w *sortedWriter) commit(db *pebble.DB, wo *pebble.WriteOptions) error {
	if len(w.ops) == 0 {
		return nil
	}
	slices.SortFunc(w.ops, func(a, b writeOp) int {
		if c := bytes.Compare(a.key, b.key); c != 0 {
			return c
		}
		return a.seq - b.seq
	})
	b := db.NewBatchWithSize(len(w.buf) + len(w.ops)*16)
	defer b.Close()
	for _, op := range w.ops {
		if op.del {
			b.Delete(op.key, nil)
		} else {
			b.Set(op.key, op.val, nil)
		}
	}
	return b.Commit(wo)
}

// LookupResult is what Lookup knows of one key.
type LookupResult struct {
	Found     bool
	Confirmed bool
	ID        string
	Outcome   string
	ClaimedAt time.Time
}

// Lookup reads keys without claiming them (the API uses it to answer a
// repeated request with the original notification).
func (s *Store) Lookup(keys []string, scope string) ([]LookupResult, error) {
	now := s.o.now()
	key := func(i int) string { return keys[i] }
	fs, err := s.lookup(s.digests(len(keys), key), key, now)
	if err != nil {
		return nil, err
	}
	out := make([]LookupResult, len(keys))
	for i, f := range fs {
		if !f.ok || now.Sub(time.Unix(0, f.e.claimedAt)) >= s.windowOf(scope) {
			continue
		}
		out[i] = LookupResult{Found: true, Confirmed: f.e.state == stateConfirmed, ID: f.e.id,
			Outcome: f.e.outcome, ClaimedAt: time.Unix(0, f.e.claimedAt)}
	}
	s.m.lookups.Add(int64(len(keys)))
	return out, nil
}

func (s *Store) reclaimLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.o.reclaimInt)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Reclaim(context.Background())
		}
	}
}

// Reclaim drops every bucket wholly older than the longest window with one
// range delete and compacts that range so the space is returned now, not
// at some later compaction.
func (s *Store) Reclaim(ctx context.Context) error {
	now := s.o.now()
	s.sweepAbandoned(now)
	// A bucket may go once its newest possible entry is past the window.
	cutoff := s.bucketOf(now.Add(-s.maxWindow))
	s.reclaimMu.Lock()
	defer s.reclaimMu.Unlock()
	floor := s.floor.Load()
	if cutoff <= floor {
		return nil
	}
	start, end := bucketPrefix(floor), bucketPrefix(cutoff)
	if floor == 0 {
		start = []byte{'b'}
	}
	if err := s.db.DeleteRange(start, end, s.wo); err != nil {
		return fmt.Errorf("dedupe: reclaim: %w", err)
	}
	if err := s.db.Compact(ctx, start, end, false); err != nil {
		return fmt.Errorf("dedupe: reclaim compaction: %w", err)
	}
	s.floor.Store(cutoff)
	if s.filt != nil {
		s.filt.dropBelow(cutoff)
	}
	s.m.reclaims.Add(1)
	return nil
}

// sweepAbandoned forgets in-memory claims whose lease ran out long ago and
// that nobody claimed again: their claimant is gone, and a later claim of
// the key simply sends (what a takeover under Resend would do).
func (s *Store) sweepAbandoned(now time.Time) {
	cut := now.Add(-2 * s.o.lease).UnixNano()
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	s.live.deleteIf(func(lc liveClaim) bool { return lc.leaseTill < cut })
}

// Metrics is a snapshot of the store's counters since open.
type Metrics struct {
	Claims    int64 // new keys claimed
	Hits      int64 // claims answered Duplicate
	InFlight  int64
	TakenOver int64 // expired leases taken over and resent
	Uncertain int64 // expired leases closed without resending
	Confirms  int64
	Releases  int64
	Lookups   int64
	// Remembered counts keys confirmed elsewhere and written here (Remember).
	Remembered int64
	// Forgotten counts remembered keys dropped again (Forget).
	Forgotten int64
	Reclaims  int64 // range deletes of expired buckets
	// WriteErrors counts writes (claims, confirms, releases, remembered
	// keys) the store failed to make durable; Refusing is Err() != nil.
	WriteErrors int64
	Refusing    bool
	// Syncs counts the write buffer's fsyncs for synced writes: against
	// Confirms, how well they are shared.
	Syncs int64
	// KeysApprox counts entries in sstables less deletions; what is still in
	// the memtable is not counted (Pebble keeps no exact count).
	KeysApprox  int64
	DiskBytes   uint64
	BucketFloor uint32 // buckets below are reclaimed
	RecentKeys  int    // keys whose newest entry is copied in memory
	RecentBytes int    // the memory those copies take
	// Pebble's block cache: reads found cached and not.
	CacheHits, CacheMisses int64
	// The filters' memory, and the most stages a bucket's filter has grown
	// to (3.3 % false positives with one, 5.0 with three, 5.6 with six).
	FilterBytes, FilterStages int
	// FilterRefused counts stages not added for want of memory
	// (WithFilterMemory): past it a full filter's false positives rise.
	FilterRefused int64
	// The write buffer: writes not yet ingested into Pebble, and how many
	// generations were ingested since open.
	BufferKeys, BufferBytes int
	BufferIngests           int64
}

// Metrics returns a snapshot.
func (s *Store) Metrics() Metrics {
	pm := s.db.Metrics()
	m := Metrics{
		Claims: s.m.claims.Load(), Hits: s.m.hits.Load(), InFlight: s.m.inflight.Load(),
		TakenOver: s.m.takeovers.Load(), Uncertain: s.m.uncertain.Load(), Confirms: s.m.confirms.Load(),
		Releases: s.m.releases.Load(), Lookups: s.m.lookups.Load(), Reclaims: s.m.reclaims.Load(), Remembered: s.m.remembered.Load(), Forgotten: s.m.forgotten.Load(),
		WriteErrors: s.m.writeErrors.Load(), Refusing: s.Err() != nil,
		DiskBytes: pm.DiskSpaceUsage(), CacheHits: pm.BlockCache.Hits, CacheMisses: pm.BlockCache.Misses,
	}
	if s.buf != nil {
		m.Syncs = s.buf.syncs.Load()
	}
	if tables, err := s.db.SSTables(pebble.WithProperties()); err == nil {
		for _, level := range tables {
			for _, t := range level {
				if t.Properties != nil {
					m.KeysApprox += int64(t.Properties.NumEntries) - int64(t.Properties.NumDeletions)
				}
			}
		}
	}
	m.BucketFloor = s.floor.Load()
	if s.buf != nil {
		st := s.buf.stats()
		m.BufferKeys, m.BufferBytes, m.BufferIngests = st.keys, st.bytes, st.ingests
	}
	if s.rec != nil {
		m.RecentKeys, m.RecentBytes = s.rec.len(), s.rec.bytes()
	}
	if s.filt != nil {
		m.FilterBytes, m.FilterStages, m.FilterRefused = s.filt.memory()
	}
	return m
}

func (m Metrics) String() string {
	return fmt.Sprintf("dedupe: claims %d, duplicates %d, in-flight %d, taken over %d, uncertain %d, confirms %d, releases %d, lookups %d, reclaims %d, keys ~%d, disk %d B",
		m.Claims, m.Hits, m.InFlight, m.TakenOver, m.Uncertain, m.Confirms, m.Releases, m.Lookups, m.Reclaims, m.KeysApprox, m.DiskBytes)
}
