package dedupe

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// writeBuffer takes the store's entry writes in front of Pebble. Idempotency
// keys arrive in random order, so inserting each into Pebble's memtable
// walks its skiplist through cache misses (about half the CPU of a new key),
// and each small flush overlaps everything in its bucket. Here a write is
// appended to a log file (synced with group commit under WithSync) and
// indexed in memory by a hash of its key; once a generation holds limit
// bytes it is frozen, sorted, written as one sstable and ingested into
// Pebble, and its log is deleted. Reads look here before Pebble: a
// generation holds only writes newer than anything Pebble has.
//
// At most two generations exist: one taking writes, one being ingested. A
// writer that fills the first while the second is still ingesting waits.
// After a crash the logs that were not ingested are replayed at open.
type writeBuffer struct {
	fs    vfs.FS
	dir   string
	db    *pebble.DB
	wopts sstable.WriterOptions
	limit int
	floor func() uint32 // buckets below were reclaimed: their writes are dropped at ingest
	// exclusive is held through an ingest: a reclaim's range delete must not
	// slip between reading the floor and the ingest landing.
	exclusive *sync.Mutex
	logf      func(format string, args ...any) // failed ingests (they are retried)

	mu       sync.RWMutex
	ingested *sync.Cond // on mu: a frozen generation is gone
	active   *bufGen
	frozen   *bufGen               // being ingested; nil when none
	spare    *bufGen               // the next active one, made by the ingester off the lock; nil when none
	lastSeq  uint64                // the last generation number handed out: numbers follow activation order
	err      error                 // a failed log write or sync: every later write fails with it
	failed   atomic.Pointer[error] // err, for readers that must not wait for mu (Store.Err)
	closed   bool

	// Group commit of the active log: writers that need it durable wait for
	// one fsync that covers everything written so far.
	syncMu    sync.Mutex
	syncing   bool
	synced    *sync.Cond    // on syncMu
	syncDelay time.Duration // a leader waits this long for others to join its fsync
	syncs     atomic.Int64

	kick chan struct{} // a generation was frozen
	stop chan struct{}
	wg   sync.WaitGroup

	ingests int64 // under mu
}

// bufGen is one generation of buffered writes. Records are appended to
// data and never changed: prev (offset+1 of the previous record whose key
// has the same hash, 0 for none), del (1 for a delete), the entry key
// ('b' + bucket + key) with a uvarint length, and the value likewise.
type bufGen struct {
	seq     uint64
	f       vfs.File
	written int64      // bytes in f
	started int64      // bytes of f whose writeback was started (unsynced writes)
	synced  int64      // bytes of f known durable; under writeBuffer.syncMu
	idx     *hashIndex // indexHash of the key -> offset+1 of its newest record
	data    []byte
	dels    int    // delete records, to skip shadow checks when there are none
	keys    int    // records
	sink    uint64 // see writeBuffer.writeThen
}

const bufLogExt = ".log"

// genIndexEntries is what a generation's index is sized for: records of
// half the typical size.
func genIndexEntries(limit int) int { return limit / (entrySizeHint / 2) }

var errClosed = errors.New("dedupe: store closed")

func (b *writeBuffer) logPath(seq uint64) string {
	return filepath.Join(b.dir, fmt.Sprintf("%020d%s", seq, bufLogExt))
}

// minRecordBytes is a small log operation, for sizing a replay's index
// (it grows if they are smaller).
const minRecordBytes = 25

func (b *writeBuffer) newGen(seq uint64, atLeast int) (*bufGen, error) {
	f, err := b.fs.Create(b.logPath(seq), vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, err
	}
	if err := syncDir(b.fs, b.dir); err != nil {
		f.Close()
		return nil, err
	}
	// The index is sized for typical records; a generation of smaller ones
	// is frozen when its index fills, before its bytes do.
	return &bufGen{seq: seq, f: f, idx: newHashIndex(max(genIndexEntries(b.limit), atLeast)),
		data: make([]byte, 0, b.limit+b.limit/8)}, nil
}

// openWriteBuffer replays the logs left in dir into Pebble and starts the
// ingester. A log that fails its checksum anywhere but at the tail of the
// newest one is corruption and fails the open.
func openWriteBuffer(fs vfs.FS, dir string, db *pebble.DB, wopts sstable.WriterOptions, limit int, floor func() uint32,
	exclusive *sync.Mutex, logf func(string, ...any)) (*writeBuffer, error) {
	b := &writeBuffer{fs: fs, dir: dir, db: db, wopts: wopts, limit: limit, floor: floor, exclusive: exclusive, logf: logf,
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	b.ingested = sync.NewCond(&b.mu)
	b.synced = sync.NewCond(&b.syncMu)
	next, err := b.replay()
	if err != nil {
		return nil, err
	}
	b.lastSeq = next
	if b.active, err = b.newGen(next, 0); err != nil {
		return nil, err
	}
	b.wg.Add(1)
	go b.ingestLoop()
	return b, nil
}

// replay ingests the logs left in b.dir into Pebble, removes them, and
// returns the number the next generation takes.
func (b *writeBuffer) replay() (next uint64, err error) {
	seqs, err := b.logs()
	if err != nil || len(seqs) == 0 {
		return 1, err
	}
	// Replayed into one generation, oldest log first, so newer writes of a
	// key win; then ingested before anything else is written.
	var total int64
	for _, seq := range seqs {
		fi, err := b.fs.Stat(b.logPath(seq))
		if err != nil {
			return 0, err
		}
		total += fi.Size()
	}
	g := &bufGen{seq: seqs[len(seqs)-1], idx: newHashIndex(int(total / minRecordBytes))}
	for i, seq := range seqs {
		data, err := readFile(b.fs, b.logPath(seq))
		if err != nil {
			return 0, err
		}
		if err := replayLog(g, data, i == len(seqs)-1); err != nil {
			return 0, fmt.Errorf("dedupe: write buffer log %s: %w", b.logPath(seq), err)
		}
	}
	if err := b.ingest(g); err != nil {
		return 0, fmt.Errorf("dedupe: ingesting the write buffer's logs: %w", err)
	}
	for _, seq := range seqs {
		if err := b.fs.Remove(b.logPath(seq)); err != nil {
			return 0, err
		}
	}
	return seqs[len(seqs)-1] + 1, nil
}

// logs lists the generation logs in dir, oldest first.
func (b *writeBuffer) logs() ([]uint64, error) {
	names, err := b.fs.List(b.dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range names {
		name, ok := strings.CutSuffix(e, bufLogExt)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("dedupe: unexpected file %s in the write buffer", e)
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}

// Log frames: payload length (uint32), CRC-32C of the payload (uint32),
// payload: the batch's operations, each del (1 byte), entry key and value
// with uvarint lengths.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

const frameHeader = 8

// replayLog applies a log's frames to g. A torn or corrupt frame ends a
// tail log (a crash mid-write; its writer never heard back); anywhere else
// it is an error.
func replayLog(g *bufGen, data []byte, tail bool) error {
	for off := 0; off < len(data); {
		payload, n, err := readFrame(data[off:])
		if err == nil {
			err = forEachOp(payload, func(del bool, key, val []byte) { g.add(del, key, val) })
		}
		if err != nil {
			if tail {
				return nil
			}
			return fmt.Errorf("at offset %d: %w", off, err)
		}
		off += n
	}
	return nil
}

func readFrame(b []byte) (payload []byte, n int, err error) {
	if len(b) < frameHeader {
		return nil, 0, errors.New("short frame header")
	}
	l := binary.LittleEndian.Uint32(b)
	if uint64(l) > uint64(len(b)-frameHeader) {
		return nil, 0, errors.New("frame longer than the file")
	}
	payload = b[frameHeader : frameHeader+int(l)]
	if crc32.Checksum(payload, crcTable) != binary.LittleEndian.Uint32(b[4:]) {
		return nil, 0, errors.New("frame checksum mismatch")
	}
	return payload, frameHeader + int(l), nil
}

// forEachOp decodes a frame's operations; it checks everything before
// calling fn, so a bad frame applies nothing.
func forEachOp(p []byte, fn func(del bool, key, val []byte)) error {
	type op struct {
		del      bool
		key, val []byte
	}
	var ops []op
	for len(p) > 0 {
		if p[0] > 1 {
			return errors.New("bad operation kind")
		}
		o := op{del: p[0] == 1}
		p = p[1:]
		var ok bool
		if o.key, p, ok = uvarintBytes(p); !ok || len(o.key) < 5 || o.key[0] != 'b' {
			return errors.New("bad entry key")
		}
		if o.val, p, ok = uvarintBytes(p); !ok || (o.del && len(o.val) > 0) {
			return errors.New("bad entry value")
		}
		if !o.del {
			if _, err := parseEntry(o.val); err != nil {
				return err
			}
		}
		ops = append(ops, o)
	}
	for _, o := range ops {
		fn(o.del, o.key, o.val)
	}
	return nil
}

// appendFrame appends ops as one log frame.
func appendFrame(dst []byte, ops []writeOp) []byte {
	size := frameHeader
	for _, op := range ops {
		size += 1 + 2*binary.MaxVarintLen32 + len(op.key) + len(op.val)
	}
	dst = slices.Grow(dst, size)
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	for _, op := range ops {
		if op.del {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
		dst = binary.AppendUvarint(dst, uint64(len(op.key)))
		dst = append(dst, op.key...)
		dst = binary.AppendUvarint(dst, uint64(len(op.val)))
		dst = append(dst, op.val...)
	}
	payload := dst[start+frameHeader:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, crcTable))
	return dst
}

func uvarintBytes(p []byte) (v, rest []byte, ok bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, p, false
	}
	return p[k : k+int(n)], p[k+int(n):], true
}

// indexHash is what a generation indexes a key by: a digest's own bits
// (keyed SipHash, spread evenly already), or xxhash of a key stored as
// given (a replayed log of an older store).
func indexHash(key []byte) uint64 {
	if len(key) == digestLen {
		return binary.LittleEndian.Uint64(key)
	}
	return xxhash.Sum64(key)
}

// add appends a record to g and indexes it.
func (g *bufGen) add(del bool, ekey, val []byte) {
	h := indexHash(ekey[5:])
	off := len(g.data)
	if !g.idx.room(1) {
		g.idx.grow() // a replay, or one batch larger than a generation
	}
	prev, _ := g.idx.swap(h, uint64(off)+1) // 0 when none
	g.data = binary.LittleEndian.AppendUint32(g.data, uint32(prev))
	if del {
		g.data = append(g.data, 1)
		g.dels++
	} else {
		g.data = append(g.data, 0)
	}
	g.data = binary.AppendUvarint(g.data, uint64(len(ekey)))
	g.data = append(g.data, ekey...)
	g.data = binary.AppendUvarint(g.data, uint64(len(val)))
	g.data = append(g.data, val...)
	g.keys++
}

func (g *bufGen) idxRef(h uint64) uint32 {
	ref, _ := g.idx.get(h)
	return uint32(ref)
}

// sortRefs reads g's records in write order into refs to sort, skipping
// those in buckets below floor, their digits taken after the prefix all
// their keys share (see digitsAfterShared). The prefix is measured as the
// records are read, not in a pass of its own.
func (g *bufGen) sortRefs(floor uint32) []sortRef {
	refs := make([]sortRef, 0, g.keys)
	var first []byte
	common := 0
	for off := 0; off < len(g.data); {
		ekey, r, _ := uvarintBytes(g.data[off+5:])
		_, r, _ = uvarintBytes(r)
		if binary.BigEndian.Uint32(ekey[1:5]) >= floor {
			if first == nil {
				first, common = ekey, len(ekey)
			} else {
				common = commonPrefix(first[:common], ekey)
			}
			refs = append(refs, sortRef{ref: uint32(off) + 1})
		}
		off = len(g.data) - len(r)
	}
	g.setDigits(refs, common)
	return refs
}

// digitsAfterShared sets each ref's digit after the prefix all their keys
// share (a bucket, a tenant, "ingest"): the digits of one tenant's hashed
// keys are then all hash and rarely tie. refs must not be empty.
func (g *bufGen) digitsAfterShared(refs []sortRef) {
	_, _, first, _ := g.record(refs[0].ref - 1)
	common := len(first)
	for _, r := range refs[1:] {
		_, _, ekey, _ := g.record(r.ref - 1)
		common = commonPrefix(first[:common], ekey)
	}
	g.setDigits(refs, common)
}

// setDigits sets each ref's digit at depth of its key.
func (g *bufGen) setDigits(refs []sortRef, depth int) {
	for i := range refs {
		_, _, ekey, _ := g.record(refs[i].ref - 1)
		refs[i].digit(ekey, depth)
	}
}

// commonPrefix is the length of the prefix a and b share.
func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i+8 <= n; i += 8 {
		if x := binary.LittleEndian.Uint64(a[i:]) ^ binary.LittleEndian.Uint64(b[i:]); x != 0 {
			return i + bits.TrailingZeros64(x)/8
		}
	}
	for i := n &^ 7; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// record decodes the record at off.
func (g *bufGen) record(off uint32) (prev uint32, del bool, ekey, val []byte) {
	r := g.data[off:]
	prev, del = binary.LittleEndian.Uint32(r), r[4] == 1
	ekey, r, _ = uvarintBytes(r[5:])
	val, _, _ = uvarintBytes(r)
	return prev, del, ekey, val
}

// first walks the records of hash h, newest first, to the first whose
// entry key match accepts.
func (g *bufGen) first(h uint64, match func(ekey []byte) bool) (del bool, ekey, val []byte, ok bool) {
	for ref := g.idxRef(h); ref != 0; {
		prev, del, ekey, val := g.record(ref - 1)
		if match(ekey) {
			return del, ekey, val, true
		}
		ref = prev
	}
	return false, nil, nil, false
}

// newest finds key's newest record in g, in any bucket.
func (g *bufGen) newest(h uint64, key []byte) (del bool, ekey, val []byte, ok bool) {
	return g.first(h, func(ekey []byte) bool { return bytes.Equal(ekey[5:], key) })
}

// deleted reports whether g's newest record of exactly ekey is a delete
// (known is false when g has no record of it).
func (g *bufGen) deleted(h uint64, ekey []byte) (del, known bool) {
	del, _, _, known = g.first(h, func(k []byte) bool { return bytes.Equal(k, ekey) })
	return del, known
}

// writeThen logs and indexes a batch's operations; with sync, wait returns
// once they are on disk.
func (b *writeBuffer) writeThen(ops []writeOp, sync bool) (wait func() error, err error) {
	if len(ops) == 0 {
		return noWait, nil
	}
	fb := frames.Get().(*[]byte)
	defer func() {
		if cap(*fb) <= maxPooledFrame {
			frames.Put(fb)
		}
	}()
	frame := appendFrame((*fb)[:0], ops)
	*fb = frame

	b.mu.Lock()
	for b.err == nil && !b.closed && b.activeFull(len(ops)) && b.frozen != nil {
		b.ingested.Wait() // both generations full: wait for the ingest
	}
	if b.err != nil || b.closed {
		err := b.err
		if err == nil {
			err = errClosed
		}
		b.mu.Unlock()
		return nil, err
	}
	if b.activeFull(len(ops)) {
		if err := b.freezeLocked(len(ops)); err != nil {
			b.mu.Unlock()
			return nil, err
		}
	}
	g := b.active
	if _, err := g.f.Write(frame); err != nil {
		b.failLocked(fmt.Errorf("dedupe: write buffer log: %w", err))
		b.mu.Unlock()
		return nil, b.err
	}
	g.written += int64(len(frame))
	// The index's slots first, with no branch on what they hold, so the
	// batch's cache misses overlap instead of each add waiting on its own.
	var sink uint64
	for _, op := range ops {
		sink ^= g.idx.touch(indexHash(op.key[5:]))
	}
	g.sink = sink
	for _, op := range ops {
		g.add(op.del, op.key, op.val)
	}
	off, from := g.written, g.started
	writeback := !sync && off-from >= writebackBytes
	if writeback {
		g.started = off
	}
	b.mu.Unlock()
	if writeback {
		startWriteback(g.f, from, off-from)
	}
	if !sync {
		return noWait, nil
	}
	return func() error { return b.syncTo(g, off) }, nil
}

// failLocked makes err the buffer's error unless it has one; under mu.
func (b *writeBuffer) failLocked(err error) {
	if b.err == nil {
		b.err = err
		b.failed.Store(&err)
	}
}

// frames hold writeThen's log frames between writes (the write copies
// them to the file).
var frames = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledFrame keeps the pool from pinning one huge frame.
const maxPooledFrame = 4 << 20

// writebackBytes is how much an unsynced generation log gathers before its
// writeback is started.
const writebackBytes = 1 << 20

// activeFull reports whether the active generation must be frozen before
// n more records: its bytes reached the limit, or its index lacks room.
// An empty generation is never full (it was sized for its first batch).
func (b *writeBuffer) activeFull(n int) bool {
	g := b.active
	return g.keys > 0 && (len(g.data) >= b.limit || !g.idx.room(n))
}

// freezeLocked hands the active generation to the ingester and starts a
// new one. The ingester syncs the old log before ingesting, outside the
// lock: an fsync of a whole generation under it stalled every claim.
func (b *writeBuffer) freezeLocked(atLeast int) error {
	next := b.spare
	b.spare = nil
	if next != nil && !next.idx.room(atLeast) {
		next.discard(b)
		next = nil
	}
	if next == nil { // made here, under the lock: a file, its directory's fsync and ~50 MiB
		var err error
		b.lastSeq++
		if next, err = b.newGen(b.lastSeq, atLeast); err != nil {
			b.failLocked(fmt.Errorf("dedupe: write buffer: %w", err))
			return b.err
		}
	}
	b.frozen, b.active = b.active, next
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return nil
}

// prepareSpare makes the next generation, outside the lock, unless one is
// ready.
func (b *writeBuffer) prepareSpare() {
	b.mu.Lock()
	if b.spare != nil {
		b.mu.Unlock()
		return
	}
	b.lastSeq++
	seq := b.lastSeq
	b.mu.Unlock()
	g, err := b.newGen(seq, 0)
	if err != nil {
		return // the freeze makes it then, and reports the error
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spare != nil || b.active.seq > seq || b.closed { // a freeze made its own meanwhile
		g.discard(b)
		return
	}
	b.spare = g
}

// discard closes and removes an unused generation's log.
func (g *bufGen) discard(b *writeBuffer) {
	g.f.Close()
	b.fs.Remove(b.logPath(g.seq))
}

// syncTo returns once g's log is durable up to off: one writer fsyncs for
// everyone waiting meanwhile.
func (b *writeBuffer) syncTo(g *bufGen, off int64) error {
	b.syncMu.Lock()
	for g.synced < off && b.syncing {
		b.synced.Wait()
	}
	if g.synced >= off {
		b.syncMu.Unlock()
		return nil
	}
	b.syncing = true
	b.syncMu.Unlock()
	if b.syncDelay > 0 {
		// Writers arriving now wait on synced; what they wrote before upTo
		// is read below rides on this fsync.
		time.Sleep(b.syncDelay)
	}
	b.mu.RLock()
	upTo, err := g.written, b.err
	b.mu.RUnlock()
	if err == nil {
		err = g.f.Sync()
		b.syncs.Add(1)
	}
	b.syncMu.Lock()
	b.syncing = false
	if err == nil {
		g.synced = max(g.synced, upTo)
	}
	if g.synced >= off {
		// The ingester synced the generation meanwhile (and may have closed
		// the file under this fsync).
		err = nil
	}
	b.synced.Broadcast()
	b.syncMu.Unlock()
	if err != nil {
		b.mu.Lock()
		b.failLocked(fmt.Errorf("dedupe: write buffer sync: %w", err))
		err = b.err
		b.mu.Unlock()
	}
	return err
}

// syncWhole fsyncs g up to upTo (all of it once frozen) and records it.
func (b *writeBuffer) syncWhole(g *bufGen, upTo int64) error {
	if err := g.f.Sync(); err != nil {
		return err
	}
	b.syncMu.Lock()
	g.synced = max(g.synced, upTo)
	b.synced.Broadcast()
	b.syncMu.Unlock()
	return nil
}

// ingestLoop ingests frozen generations; a failed ingest is retried.
func (b *writeBuffer) ingestLoop() {
	defer b.wg.Done()
	b.prepareSpare()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		case <-retry.C:
		}
		b.mu.RLock()
		g := b.frozen
		b.mu.RUnlock()
		if g == nil {
			continue
		}
		// The log first: until the ingest lands it is the only durable copy,
		// and writers waiting on their sync are covered by this one.
		b.mu.RLock()
		written := g.written
		b.mu.RUnlock()
		err := b.syncWhole(g, written)
		if err == nil {
			err = b.ingest(g)
		}
		b.mu.Lock()
		if err == nil {
			g.f.Close()
			if rerr := b.fs.Remove(b.logPath(g.seq)); rerr != nil {
				b.failLocked(fmt.Errorf("dedupe: write buffer: %w", rerr))
			}
			b.frozen = nil
			b.ingests++
			b.ingested.Broadcast()
		}
		b.mu.Unlock()
		if err != nil {
			b.logf("dedupe: ingesting write-buffer generation %d failed, retrying in 1s: %v", g.seq, err)
			retry.Reset(time.Second)
			continue
		}
		b.prepareSpare()
	}
}

// ingest writes g's newest record of every entry key, sorted, into one
// sstable and ingests it. The records are read in the order they were
// written, a sequential scan (walking the index's chains read each at
// random: a cache miss a record); the sort puts the newest first among
// records of one entry key, and the older ones are skipped as written.
func (b *writeBuffer) ingest(g *bufGen) error {
	b.exclusive.Lock()
	defer b.exclusive.Unlock()
	refs := g.sortRefs(b.floor())
	if len(refs) == 0 {
		return nil
	}
	g.sortByKey(refs)
	path := filepath.Join(b.dir, fmt.Sprintf("%020d.sst", g.seq))
	f, err := b.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	defer b.fs.Remove(path) // Pebble links or copies it in
	// Written back a megabyte at a time, as Pebble writes its own tables,
	// not all at the close's fsync.
	f = vfs.NewSyncingFile(f, vfs.SyncingFileOptions{BytesPerSync: writebackBytes})
	if err := g.writeTable(sstable.NewWriter(objstorageprovider.NewFileWritable(f), b.wopts), refs); err != nil {
		return err
	}
	return b.db.Ingest(context.Background(), []string{path})
}

// readAhead is how many records writeTable reads in one pass of plain
// loads before it writes them. The records lie at random in the
// generation's data, one or two cache misses each; a load waiting on a
// miss holds up everything after it, so loads one record ahead of the
// writes overlapped little (the writer's work filled the CPU's window), and
// a tight pass over a run of them overlaps their misses.
const readAhead = 64

// recordBytes is a record of a digest key and an entry with an id and an
// outcome: 55 bytes, so most straddle two cache lines.
const recordBytes = 55

// writeTable writes the newest record of each key, refs in key order, and
// closes w.
func (g *bufGen) writeTable(w *sstable.Writer, refs []sortRef) error {
	var last []byte
	var sink byte
	for i, r := range refs {
		if i%readAhead == 0 {
			for _, a := range refs[i:min(i+readAhead, len(refs))] {
				off := int(a.ref - 1)
				sink ^= g.data[off] ^ g.data[min(off+recordBytes-1, len(g.data)-1)]
			}
		}
		_, del, ekey, val := g.record(r.ref - 1)
		if bytes.Equal(ekey, last) {
			continue // an older record of the key just written
		}
		last = ekey
		var err error
		if del {
			err = w.Delete(ekey)
		} else {
			err = w.Set(ekey, val)
		}
		if err != nil {
			w.Close()
			return err
		}
	}
	g.sink ^= uint64(sink)
	return w.Close()
}

// sortRef is a record to ingest with 16 bytes of its entry key held
// inline, so most comparisons of a sort touch no record.
type sortRef struct {
	hi, lo uint64
	ref    uint32
	n      uint8 // key bytes from the digit's start, at most 17 (17: it goes on)
}

// digit holds ekey's bytes [depth, depth+16), zero padded.
func (r *sortRef) digit(ekey []byte, depth int) {
	var d [16]byte
	if depth < len(ekey) {
		copy(d[:], ekey[depth:])
	}
	r.hi, r.lo = binary.BigEndian.Uint64(d[:8]), binary.BigEndian.Uint64(d[8:])
	r.n = uint8(min(max(len(ekey)-depth, 0), 17))
}

func compareDigits(x, y sortRef) int {
	if c := cmp.Compare(x.hi, y.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(x.lo, y.lo); c != 0 {
		return c
	}
	return cmp.Compare(x.n, y.n) // a key that ends here sorts before a longer one
}

// sortByKey sorts refs, their digits set, by entry key, 16 bytes at a time
// (a digit): comparing whole keys would read two records at random. Only
// runs still tied are re-read, from after their common prefix.
func (g *bufGen) sortByKey(refs []sortRef) {
	sortDigits(refs)
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && compareDigits(refs[i], refs[j]) == 0 {
			j++
		}
		if j-i > 1 && refs[i].n == 17 { // tied and going on: the next digit decides
			// The run's keys agree through this digit at least; its next
			// digits are taken after all they share, as the first ones were.
			run := refs[i:j]
			g.digitsAfterShared(run)
			g.sortByKey(run)
		}
		i = j
	}
}

// sortDigits sorts refs by digit and, within a digit, newest record first.
// Large slices go through a radix sort of the digits' first 8 bytes, which
// costs a few passes over refs where a comparison sort's closure calls cost
// ~20 comparisons a ref; the runs of refs still tied are then sorted in full.
func sortDigits(refs []sortRef) {
	byDigit := func(x, y sortRef) int {
		if c := compareDigits(x, y); c != 0 {
			return c
		}
		return cmp.Compare(y.ref, x.ref) // the same key: the newest record first
	}
	if len(refs) < radixMin {
		slices.SortFunc(refs, byDigit)
		return
	}
	radixSortHi(refs, make([]sortRef, len(refs)))
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && refs[j].hi == refs[i].hi {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(refs[i:j], byDigit)
		}
		i = j
	}
}

// radixMin is where the radix sort starts to beat pdqsort.
const radixMin = 1024

// radixSortHi sorts refs by hi, a byte at a time from the lowest (a stable
// LSD radix sort through tmp), skipping the bytes every ref has alike.
func radixSortHi(refs, tmp []sortRef) {
	var counts [8][256]int
	for _, r := range refs {
		for b := range 8 {
			counts[b][byte(r.hi>>(8*b))]++
		}
	}
	src, dst := refs, tmp
	for b := range 8 {
		c := &counts[b]
		if c[byte(src[0].hi>>(8*b))] == len(src) {
			continue // one value: the pass would move nothing
		}
		var offs [256]int
		sum := 0
		for v := range offs {
			offs[v] = sum
			sum += c[v]
		}
		for _, r := range src {
			v := byte(r.hi >> (8 * b))
			dst[offs[v]] = r
			offs[v]++
		}
		src, dst = dst, src
	}
	if &src[0] != &refs[0] {
		copy(refs, src)
	}
}

// lookupMany sets res[i] for every keys[i] whose newest write is buffered
// as a set in a bucket at least oldest (skipping keys whose filter mask, if
// any, is 0). A buffered delete, or a set in an
// older bucket, leaves the key to the layers below.
func (b *writeBuffer) lookupMany(keys []string, oldest uint32, mask []uint64, res []found) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.active.keys == 0 && (b.frozen == nil || b.frozen.keys == 0) {
		return nil
	}
	for i, k := range keys {
		if mask != nil && mask[i] == 0 {
			continue // no filter holds it: never written
		}
		kb := unsafe.Slice(unsafe.StringData(k), len(k)) // only read
		h := indexHash(kb)
		del, ekey, val, ok := b.active.newest(h, kb)
		if !ok && b.frozen != nil {
			del, ekey, val, ok = b.frozen.newest(h, kb)
		}
		if !ok || del {
			continue
		}
		bucket := binary.BigEndian.Uint32(ekey[1:5])
		if bucket < oldest {
			continue
		}
		e, err := parseEntry(val)
		if err != nil {
			return fmt.Errorf("%w: key %q", err, k)
		}
		res[i] = found{ok: true, bucket: bucket, e: e}
	}
	return nil
}

// hasDeletes reports whether any buffered write is a delete.
func (b *writeBuffer) hasDeletes() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.active.dels > 0 || (b.frozen != nil && b.frozen.dels > 0)
}

// deleted reports whether the newest buffered write of ekey is a delete,
// which hides what Pebble holds under it.
func (b *writeBuffer) deleted(ekey []byte) bool {
	h := indexHash(ekey[5:])
	b.mu.RLock()
	defer b.mu.RUnlock()
	if del, known := b.active.deleted(h, ekey); known {
		return del
	}
	if b.frozen != nil {
		del, _ := b.frozen.deleted(h, ekey)
		return del
	}
	return false
}

// flush freezes the active generation and waits until everything buffered
// is in Pebble (tests and benchmarks settle the store with it).
func (b *writeBuffer) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.frozen != nil && b.err == nil {
		b.ingested.Wait()
	}
	if b.err != nil {
		return b.err
	}
	if b.active.keys == 0 {
		return nil
	}
	if err := b.freezeLocked(0); err != nil {
		return err
	}
	for b.frozen != nil && b.err == nil {
		b.ingested.Wait()
	}
	return b.err
}

type bufferStats struct {
	keys, bytes int
	ingests     int64
}

func (b *writeBuffer) stats() bufferStats {
	b.mu.RLock()
	defer b.mu.RUnlock()
	s := bufferStats{keys: b.active.keys, bytes: len(b.active.data), ingests: b.ingests}
	if b.frozen != nil {
		s.keys += b.frozen.keys
		s.bytes += len(b.frozen.data)
	}
	return s
}

// close stops the ingester and syncs the logs; what is buffered is replayed
// at the next open.
func (b *writeBuffer) close() error {
	close(b.stop)
	b.mu.Lock()
	b.closed = true
	b.ingested.Broadcast()
	b.mu.Unlock()
	b.wg.Wait()
	if b.spare != nil {
		b.spare.discard(b)
		b.spare = nil
	}
	var errs []error
	for _, g := range []*bufGen{b.frozen, b.active} {
		if g != nil {
			errs = append(errs, g.f.Sync(), g.f.Close())
		}
	}
	return errors.Join(errs...)
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func readFile(fs vfs.FS, path string) ([]byte, error) {
	f, err := fs.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
