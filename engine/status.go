package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
)

// State is where a notification stands.
type State string

// States a notification passes through. Accepted is written at ingest;
// Delivered and Failed come from provider receipts.
const (
	StateAccepted     State = "accepted"
	StateSent         State = "sent"
	StateRetrying     State = "retrying"
	StateDelivered    State = "delivered"
	StateFailed       State = "failed"
	StateExpired      State = "expired"
	StateDuplicate    State = "duplicate"
	StateDeadLettered State = "dead-lettered"
	// StateWithdrawn follows an accepted event written for a notification
	// whose record the log failed to write (a request answered 503
	// partly_written): it will not be sent, and its resend is accepted
	// anew. Only the embedded log writes one now (Engine.emitIngest);
	// other nodes drop its idempotency key again (withdrawnKeys).
	StateWithdrawn State = "withdrawn"
)

// States lists every state.
var States = []State{StateAccepted, StateSent, StateRetrying, StateDelivered, StateFailed, StateExpired, StateDuplicate, StateDeadLettered, StateWithdrawn}

// StatusEvent is one state change. It is the JSON value of the records on
// the status topic (keyed by notification id, so events of one
// notification stay in order) and, in a compact form (statuscodec.go), the
// value of the status store; EventID lets consumers drop repeats of
// at-least-once delivery.
type StatusEvent struct {
	EventID           string    `json:"event_id"`
	ID                string    `json:"id"`
	State             State     `json:"state"`
	At                time.Time `json:"at"`
	Tenant            string    `json:"tenant,omitempty"`
	Channel           string    `json:"channel,omitempty"`
	Priority          string    `json:"priority,omitempty"`
	Attempts          int       `json:"attempts"`
	Provider          string    `json:"provider,omitempty"`
	ProviderMessageID string    `json:"provider_message_id,omitempty"`
	Reason            string    `json:"reason,omitempty"`
	DuplicateOf       string    `json:"duplicate_of,omitempty"`
	// On a node with a NodeID, accepted and sent events also name the node
	// and carry the notification's idempotency key: the other nodes' status
	// replicas copy the key into their dedupe stores (rememberKeys). The
	// status store does not keep them.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	Node           string `json:"node,omitempty"`
}

// Status is a notification's current state and its history.
type Status struct {
	ID      string        `json:"id"`
	State   State         `json:"state"`
	Current StatusEvent   `json:"current"`
	History []StatusEvent `json:"history"`
}

// StatusStore keeps every notification's events in Pebble for a window.
// Keys are 's' + id + event time + sequence; ids are ULIDs, which sort by
// their creation time, so dropping everything older than the window is one
// range delete up to the smallest ULID of the cutoff time, not a scan.
// Writes are blind sets (no read-modify-write on the send path). The
// accepted events of one ingest share a key, as a run (statusruns.go).
//
// The events' store has no write-ahead log of its own: every event is
// first a record on the status topic, and that topic is its log. Pebble's
// WAL wrote each event a second time (the drain ran 2-3 % slower with it).
// What is not flushed yet is lost in a crash and replayed from the topic
// (the engine's status checkpoints, see Checkpoint). Payloads and unknown
// receipts are on no topic: they live in a second, small store (aux) that
// keeps its WAL.
type StatusStore struct {
	db       *pebble.DB
	aux      *pebble.DB
	auxDirty atomic.Bool // aux written since its last sync
	closed   atomic.Bool
	window   time.Duration
	// id names the store's checkpoint group (checkpointedKey keeps it), so
	// a new store, beside a status topic that another one checkpointed,
	// replays the topic from its start: a rebuild.
	id string
	// checkpointed: checkpointedKey is set. upgraded: events, but no
	// checkpoint ever: a store written with its own WAL, complete once
	// Open replayed it, whose first checkpoint is the status topic's end,
	// not a replay of the topic.
	checkpointed, upgraded bool
	// runsAbove: the last id of the runs the store held at open (written
	// before a restart, or copied from another node). Runs of this process
	// start above it, so no two runs overlap (statusruns.go).
	runsAbove string
}

// checkpointedKey marks a store whose events the engine has checkpointed
// against the status topic at least once; its value is the store's id.
var checkpointedKey = []byte("!checkpointed")

// ErrNotFound is returned for an id the store does not know.
var ErrNotFound = errors.New("engine: notification not found")

// OpenStatus opens (creating when create is set) the store in dir. A
// missing directory without create fails, so a wrong path never starts an
// empty store silently.
func OpenStatus(dir string, window time.Duration, create bool) (*StatusStore, error) {
	return openStatus(dir, window, create, vfs.Default)
}

// openStatus is OpenStatus on a file system of the caller's (tests crash
// an in-memory one).
func openStatus(dir string, window time.Duration, create bool, fs vfs.FS) (*StatusStore, error) {
	if window <= 0 {
		window = 7 * 24 * time.Hour
	}
	if _, err := fs.Stat(dir); err != nil && !create {
		return nil, fmt.Errorf("engine: status store %s: %w", dir, err)
	}
	// Every notification writes one to three events, a few hundred bytes
	// each: with Pebble's 4 MiB default memtable a burst flushes every few
	// thousand sends and L0 compactions take a fifth of the engine's CPU. A
	// 64 MiB memtable flushes sixteen times less often.
	//
	// Pebble charges its memtables to the block cache (Cache.Reserve): an
	// 8 MiB cache beside 64 MiB memtables held no block at all, and every
	// read decompressed its blocks again. The cache is sized for both, so
	// blocks keep StatusCacheSize with every memtable queued, and the
	// memory in all is what the capacity planner adds up.
	cache := pebble.NewCache(StatusCacheSize + StatusMemTables*StatusMemTableSize + StatusAuxMemTables*StatusAuxMemTableSize)
	defer cache.Unref() // the DBs hold their own references
	// A drain's events land all over the ids it drains, so every flush
	// overlaps the ones before and L0 compactions rewrite them: letting 8
	// (not 4) pile up before compacting merges more per pass. The engine's
	// own rate rose 4-10 % (wal-no-http, alternated); a status read, rare
	// next to the writes, looks at a few more files.
	//
	// A WAL left by a store that had one is still replayed by Open.
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, ErrorIfNotExists: !create, Logger: quietPebble{},
		MemTableSize: StatusMemTableSize, MemTableStopWritesThreshold: StatusMemTables, Cache: cache,
		L0CompactionThreshold: 8, L0StopWritesThreshold: 32, DisableWAL: true})
	if err != nil {
		return nil, fmt.Errorf("engine: open status store: %w", err)
	}
	aux, err := pebble.Open(fs.PathJoin(dir, "aux"), &pebble.Options{FS: fs, Logger: quietPebble{}, Cache: cache,
		MemTableSize: StatusAuxMemTableSize, MemTableStopWritesThreshold: StatusAuxMemTables})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("engine: open status store: %w", err)
	}
	s := &StatusStore{db: db, aux: aux, window: window}
	if err := s.moveToAux(); err != nil {
		s.Close()
		return nil, fmt.Errorf("engine: open status store: %w", err)
	}
	if s.runsAbove, err = s.lastRunID(); err != nil {
		s.Close()
		return nil, fmt.Errorf("engine: open status store: %w", err)
	}
	id, closer, err := db.Get(checkpointedKey)
	switch {
	case err == nil:
		s.id, s.checkpointed = string(id), true
		err = closer.Close()
	case errors.Is(err, pebble.ErrNotFound):
		s.id = notification.NewID()
		s.upgraded, err = anyIn(db, []byte{runPrefix}, []byte{'t'}) // runs and events
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("engine: open status store: %w", err)
	}
	return s, nil
}

// markCheckpointed records, durably, that the store has been checkpointed
// against the status topic.
func (s *StatusStore) markCheckpointed() error {
	if s.checkpointed {
		return nil
	}
	if err := s.db.Set(checkpointedKey, []byte(s.id), pebble.NoSync); err != nil {
		return err
	}
	if err := s.db.Flush(); err != nil {
		return err
	}
	s.checkpointed, s.upgraded = true, false
	return nil
}

// moveToAux moves the payloads and unknown receipts that a store from
// before aux kept among its events.
func (s *StatusStore) moveToAux() error {
	moved := false
	for _, prefix := range []byte{'p', 'u'} {
		lo, hi := []byte{prefix}, []byte{prefix + 1}
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		b := s.aux.NewBatch()
		for it.First(); it.Valid() && err == nil; it.Next() {
			err = b.Set(it.Key(), it.Value(), nil)
		}
		err = errors.Join(err, it.Error(), it.Close())
		if err == nil && !b.Empty() {
			err = b.Commit(pebble.Sync)
			if err == nil {
				moved = true
				err = s.db.DeleteRange(lo, hi, pebble.NoSync)
			}
		}
		b.Close()
		if err != nil {
			return err
		}
	}
	if moved {
		return s.db.Flush() // the deletes have no WAL either
	}
	return nil
}

// Memory of a status store (the capacity planner adds it up): memtables,
// up to StatusMemTables of them queued for flush in a burst, aux's, and the
// block cache both share.
const (
	StatusMemTableSize    = 64 << 20
	StatusMemTables       = 4
	StatusAuxMemTableSize = 4 << 20
	StatusAuxMemTables    = 2
	StatusCacheSize       = 8 << 20
)

// Close flushes the events (they have no WAL) and closes the store. Only
// the first call does anything.
func (s *StatusStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	return errors.Join(s.db.Flush(), s.db.Close(), s.aux.Close())
}

// StatusMetrics are a status store's sizes, read from Pebble.
type StatusMetrics struct {
	DiskBytes      uint64 // events and aux, on disk
	L0Files        int64  // event tables in level 0, waiting for compaction
	CompactionDebt uint64 // bytes Pebble estimates it must compact to settle
	// The block cache the events and aux share: its reads found cached and
	// not (a store whose hits stay at 0 decompresses every read again).
	CacheHits, CacheMisses int64
}

// Metrics returns the store's sizes.
func (s *StatusStore) Metrics() StatusMetrics {
	m, aux := s.db.Metrics(), s.aux.Metrics()
	return StatusMetrics{DiskBytes: m.DiskSpaceUsage() + aux.DiskSpaceUsage(), L0Files: m.Levels[0].TablesCount,
		CompactionDebt: m.Compact.EstimatedDebt, CacheHits: m.BlockCache.Hits, CacheMisses: m.BlockCache.Misses}
}

// Checkpoint makes every event applied before it durable: it flushes the
// events' memtables to tables. The engine calls it before it records, for
// the events' replay after a crash, how far the status topic is applied.
func (s *StatusStore) Checkpoint() error { return s.db.Flush() }

// eventSeq tells apart events of one notification at the same instant. It
// comes from the event's id, so an event applied twice (written here, then
// read back from the status topic by the replica) lands on the same key.
func eventSeq(ev *StatusEvent, i int) uint16 {
	if ev.EventID == "" {
		return uint16(i)
	}
	h := fnv.New32a()
	h.Write([]byte(ev.EventID))
	return uint16(h.Sum32())
}

// statusKeyTail is the bytes of a status key after the id: the event's
// time (8) and sequence (2).
const statusKeyTail = 10

func statusKey(dst []byte, id string, at time.Time, seq uint16) []byte {
	dst = append(dst, 's')
	dst = append(dst, id...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(at.UnixNano()))
	return binary.BigEndian.AppendUint16(dst, seq)
}

// Apply writes events in one batch.
func (s *StatusStore) Apply(events []StatusEvent) error {
	return s.apply(events, nil, false)
}

// payload is a sent notification's encoded record, kept so that
// reconciliation can resend it.
type payload struct {
	id    string
	value []byte
}

// apply writes events and payloads. With runs, accepted events of one
// time with ascending ids, as Ingest makes them, are written as runs
// (statusruns.go).
func (s *StatusStore) apply(events []StatusEvent, payloads []payload, runs bool) error {
	if len(events) == 0 && len(payloads) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	// Inserted in key order: the memtable's skiplist starts each insert
	// from where the last one went, so sorted keys skip most of its levels.
	sc := applyScratch.Get().(*applyBuffers)
	defer func() {
		if cap(sc.buf) <= maxPooledApply {
			applyScratch.Put(sc)
		}
	}()
	kvs := sc.kvs[:0]
	buf := slices.Grow(sc.buf[:0], len(events)*160)
	defer func() { sc.kvs, sc.buf = kvs, buf }()
	for i := 0; i < len(events); i++ {
		if runs && runnable(&events[i], nil) && events[i].ID > s.runsAbove {
			j := i + 1
			for j < len(events) && j-i < maxRun && runnable(&events[j], &events[j-1]) {
				j++
			}
			if j-i > 1 {
				var key, value []byte
				var err error
				if buf, key, value, err = appendRunKV(buf, events[i:j]); err != nil {
					return err
				}
				kvs = append(kvs, statusKV{key, value})
				i = j - 1
				continue
			}
		}
		start := len(buf)
		buf = statusKey(buf, events[i].ID, events[i].At, eventSeq(&events[i], i))
		mid := len(buf)
		var err error
		if buf, err = appendStoredEvent(buf, &events[i]); err != nil {
			return err
		}
		kvs = append(kvs, statusKV{buf[start:mid:mid], buf[mid:len(buf):len(buf)]})
	}
	byKey := func(a, b statusKV) int { return bytes.Compare(a.key, b.key) }
	if !slices.IsSortedFunc(kvs, byKey) {
		slices.SortStableFunc(kvs, byKey) // stable: of two writes of one key, the later still wins
	}
	for _, e := range kvs {
		if err := b.Set(e.key, e.value, nil); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	return s.keepPayloads(payloads)
}

// keepPayloads writes payloads to aux, synced by the next Sync.
func (s *StatusStore) keepPayloads(payloads []payload) error {
	if len(payloads) == 0 {
		return nil
	}
	b := s.aux.NewBatch()
	defer b.Close()
	for _, p := range payloads {
		if err := b.Set(append([]byte{'p'}, p.id...), p.value, nil); err != nil {
			return err
		}
	}
	return s.commitAux(b)
}

// applyBuffers are apply's keys and values, pooled: the batch copies them.
type applyBuffers struct {
	kvs []statusKV
	buf []byte
}

// statusKV is an encoded event: its key and value.
type statusKV struct{ key, value []byte }

var applyScratch = sync.Pool{New: func() any { return new(applyBuffers) }}

// maxPooledApply keeps the pool from pinning one huge batch's buffer.
const maxPooledApply = 4 << 20

// Payload returns the encoded notification kept for id (see
// Config.KeepPayloads), or ErrNotFound.
func (s *StatusStore) Payload(id string) ([]byte, error) {
	v, closer, err := s.aux.Get(append([]byte{'p'}, id...))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// UnknownReceipt is a provider receipt for an id the store did not know
// when it arrived.
type UnknownReceipt struct {
	Provider          string    `json:"provider"`
	ID                string    `json:"id"`
	ProviderMessageID string    `json:"provider_message_id,omitempty"`
	State             State     `json:"state"`
	Reason            string    `json:"reason,omitempty"`
	At                time.Time `json:"at"`
	ReceivedAt        time.Time `json:"received_at"`
}

// AddUnknownReceipts records receipts for unknown ids, keyed by arrival.
func (s *StatusStore) AddUnknownReceipts(rs []UnknownReceipt) error {
	if len(rs) == 0 {
		return nil
	}
	b := s.aux.NewBatch()
	defer b.Close()
	for i, r := range rs {
		v, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		key := binary.BigEndian.AppendUint64([]byte{'u'}, uint64(r.ReceivedAt.UnixNano()))
		key = binary.BigEndian.AppendUint16(key, uint16(i))
		if err := b.Set(append(key, r.ID...), v, nil); err != nil {
			return err
		}
	}
	return s.commitAux(b)
}

// ResolveUnknownReceipts hands resolve the unknown receipts that arrived in
// [from, to), oldest first, in chunks of up to resolveChunk, for it to mark
// those it resolved; when any were, it calls apply and, if that succeeds,
// forgets them (so none is forgotten unapplied).
func (s *StatusStore) ResolveUnknownReceipts(from, to time.Time, resolve func(rs []UnknownReceipt, resolved []bool) error, apply func() error) error {
	b := s.aux.NewBatch()
	defer b.Close()
	var chunk []UnknownReceipt
	var keys [][]byte
	resolved := make([]bool, resolveChunk)
	flush := func() error {
		clear(resolved)
		if err := resolve(chunk, resolved[:len(chunk)]); err != nil {
			return err
		}
		for i := range chunk {
			if resolved[i] {
				if err := b.Delete(keys[i], nil); err != nil {
					return err
				}
			}
		}
		chunk, keys = chunk[:0], keys[:0]
		return nil
	}
	err := s.eachUnknownReceipt(from, to, func(key []byte, r UnknownReceipt) error {
		chunk, keys = append(chunk, r), append(keys, bytes.Clone(key))
		if len(chunk) == resolveChunk {
			return flush()
		}
		return nil
	})
	if err == nil && len(chunk) > 0 {
		err = flush()
	}
	if err != nil || b.Empty() {
		return err
	}
	if err := apply(); err != nil {
		return err
	}
	return s.commitAux(b)
}

// resolveChunk is how many unknown receipts a retry looks up together.
const resolveChunk = 1000

// UnknownReceipts calls fn for each unknown receipt that arrived in
// [from, to), oldest first.
func (s *StatusStore) UnknownReceipts(from, to time.Time, fn func(UnknownReceipt) error) error {
	return s.eachUnknownReceipt(from, to, func(_ []byte, r UnknownReceipt) error { return fn(r) })
}

// eachUnknownReceipt calls fn with the key and the receipt of each unknown
// receipt that arrived in [from, to), oldest first.
func (s *StatusStore) eachUnknownReceipt(from, to time.Time, fn func(key []byte, r UnknownReceipt) error) error {
	it, err := s.aux.NewIter(&pebble.IterOptions{
		LowerBound: binary.BigEndian.AppendUint64([]byte{'u'}, uint64(max(from.UnixNano(), 0))),
		UpperBound: binary.BigEndian.AppendUint64([]byte{'u'}, uint64(max(to.UnixNano(), 0)))})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var r UnknownReceipt
		if err := json.Unmarshal(it.Value(), &r); err != nil {
			return fmt.Errorf("engine: unknown receipt %q: %w", it.Key(), err)
		}
		if err := fn(it.Key(), r); err != nil {
			return err
		}
	}
	return nil
}

// ulidFloor is the smallest ULID string of time t.
func ulidFloor(t time.Time) (string, error) {
	var id ulid.ULID
	if t.Before(time.UnixMilli(0)) {
		t = time.UnixMilli(0)
	}
	if err := id.SetTime(ulid.Timestamp(t)); err != nil {
		return "", err
	}
	return id.String(), nil
}

// Scan calls fn with the history of every notification created (by its
// ULID's time) in [from, to), in id order.
func (s *StatusStore) Scan(from, to time.Time, fn func(id string, history []StatusEvent) error) error {
	lo, err := ulidFloor(from)
	if err != nil {
		return err
	}
	hi, err := ulidFloor(to)
	if err != nil {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: append([]byte{'s'}, lo...), UpperBound: append([]byte{'s'}, hi...)})
	if err != nil {
		return err
	}
	defer it.Close()
	runs, err := s.runIter()
	if err != nil {
		return err
	}
	defer runs.Close()
	// The events under keys of their own and those in runs, merged by id.
	rc := newRunCursor(runs, lo, hi)
	rid, rev, rok, err := rc.next()
	if err != nil {
		return fmt.Errorf("engine: status runs: %w", err)
	}
	var id string
	var hist []StatusEvent
	// emit hands fn id's history, with its run event, after the run
	// events of the ids before it (accepted only).
	emit := func(id string, hist []StatusEvent) error {
		for rok && (id == "" || rid <= id) {
			if rid == id {
				hist = withRunEvent(hist, rev)
			} else if err := fn(rid, []StatusEvent{rev}); err != nil {
				return err
			}
			if rid, rev, rok, err = rc.next(); err != nil {
				return fmt.Errorf("engine: status runs: %w", err)
			}
		}
		if len(hist) == 0 {
			return nil
		}
		return fn(id, hist)
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 1+statusKeyTail {
			continue
		}
		kid := string(k[1 : len(k)-statusKeyTail])
		if kid != id && len(hist) > 0 {
			if err := emit(id, hist); err != nil {
				return err
			}
			hist = hist[:0]
		}
		id = kid
		e, err := decodeStoredEvent(kid, k, it.Value())
		if err != nil {
			return fmt.Errorf("engine: status of %s: %w", kid, err)
		}
		hist = append(hist, e)
	}
	if err := it.Error(); err != nil {
		return err
	}
	if len(hist) > 0 {
		if err := emit(id, hist); err != nil {
			return err
		}
	}
	return emit("", nil) // the run events after the last id
}

// commitAux commits b to aux, for the next Sync to make durable. Marked
// after the commit: a Sync between a mark and its commit would leave the
// write unsynced and the mark cleared.
func (s *StatusStore) commitAux(b *pebble.Batch) error {
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	s.auxDirty.Store(true)
	return nil
}

// syncKey is a marker outside aux's ranges: writing it with Sync makes
// everything written to aux before it durable (Pebble's WAL is one file).
var syncKey = []byte("!sync")

// Sync makes the payloads and unknown receipts written so far durable. The
// engine calls it before it commits offsets, so a payload is never lost
// for a record the log will not replay. (Events need no sync: the status
// topic holds them.)
func (s *StatusStore) Sync() error {
	if !s.auxDirty.Swap(false) {
		return nil
	}
	if err := s.aux.Set(syncKey, nil, pebble.Sync); err != nil {
		s.auxDirty.Store(true)
		return err
	}
	return nil
}

// Get returns the status of id, or ErrNotFound.
func (s *StatusStore) Get(id string) (Status, error) {
	prefix := append([]byte{'s'}, id...)
	it, err := s.runsAndEvents()
	if err != nil {
		return Status{}, err
	}
	defer it.Close()
	st := Status{ID: id}
	for valid := it.SeekGE(prefix); valid && bytes.HasPrefix(it.Key(), prefix); valid = it.Next() {
		// Keys of a longer id sharing this prefix are not ours.
		if len(it.Key()) != len(prefix)+statusKeyTail {
			continue
		}
		e, err := decodeStoredEvent(id, it.Key(), it.Value())
		if err != nil {
			return Status{}, fmt.Errorf("engine: status of %s: %w", id, err)
		}
		st.History = append(st.History, e)
	}
	if err := it.Error(); err != nil {
		return Status{}, err
	}
	switch ev, ok, err := runEvent(it, id); {
	case err != nil:
		return Status{}, fmt.Errorf("engine: status of %s: %w", id, err)
	case ok:
		st.History = withRunEvent(st.History, ev)
	}
	if len(st.History) == 0 {
		return Status{}, ErrNotFound
	}
	st.Current = st.History[len(st.History)-1]
	st.State = st.Current.State
	return st, nil
}

// latest returns the newest event of each id, and whether the store knows
// it. The ids are looked up in key order through one
// iterator: a provider's batch of receipts costs one iterator, not one an
// id, and seeks that move forward reuse the blocks already loaded
// (BenchmarkApplyReceipts, 1,000 a call after a 1M campaign: 62K → 86K
// receipts/s against a Get each).
func (s *StatusStore) latest(ids []string) (out []StatusEvent, found []bool, err error) {
	out, found = make([]StatusEvent, len(ids)), make([]bool, len(ids))
	err = s.latestEach(ids, func(i int, at int64, v []byte) (err error) {
		out[i], err = decodeStoredEventAt(ids[i], at, v)
		found[i] = err == nil
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return out, found, nil
}

// latestStates is latest's states alone ("" for an id the store does not
// know): duplicates answered at the door need no more, and decoding whole
// events was most of their allocations.
func (s *StatusStore) latestStates(ids []string) ([]State, error) {
	out := make([]State, len(ids))
	err := s.latestEach(ids, func(i int, at int64, v []byte) error {
		if len(v) > 0 && v[0] == storedEventV1 {
			if len(v) < 2 || int(v[1]) >= len(States) {
				return errStoredEvent
			}
			out[i] = States[v[1]]
			return nil
		}
		ev, err := decodeStoredEventAt(ids[i], at, v) // the JSON form of older stores
		out[i] = ev.State
		return err
	})
	return out, err
}

// latestEach calls fn with the newest stored event of each id the store
// knows, undecoded (v is valid during the call), and its time in Unix ns.
func (s *StatusStore) latestEach(ids []string, fn func(i int, at int64, v []byte) error) error {
	order := make([]int, len(ids))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(ids[a], ids[b]) })
	it, err := s.runsAndEvents()
	if err != nil {
		return err
	}
	defer it.Close()
	var prefix, key, val []byte
	for _, i := range order {
		prefix = append(append(prefix[:0], 's'), ids[i]...)
		found := false
		// The last of ours is the newest. Keys of a longer id sharing this
		// prefix are not ours.
		for valid := it.SeekGE(prefix); valid && bytes.HasPrefix(it.Key(), prefix); valid = it.Next() {
			if len(it.Key()) == len(prefix)+statusKeyTail {
				v, err := it.ValueAndErr()
				if err != nil {
					return err
				}
				key, val = append(key[:0], it.Key()...), append(val[:0], v...)
				found = true
			}
		}
		if !found {
			// Accepted only: its event is in a run. (A notification with
			// events of its own has a newer one than its acceptance.)
			at, v, ok, err := runEntry(it, ids[i], prefix)
			if err == nil && ok {
				err = fn(i, at, v)
			}
			if err != nil {
				return fmt.Errorf("engine: status of %s: %w", ids[i], err)
			}
			continue
		}
		if len(key) < statusKeyTail {
			return fmt.Errorf("engine: status of %s: %w", ids[i], errStoredEvent)
		}
		if err := fn(i, int64(binary.BigEndian.Uint64(key[len(key)-statusKeyTail:])), val); err != nil {
			return fmt.Errorf("engine: status of %s: %w", ids[i], err)
		}
	}
	return it.Error()
}

// Reclaim drops the events and payloads of notifications created before
// now - window, and the unknown receipts that arrived before it.
func (s *StatusStore) Reclaim(now time.Time) error {
	cut := now.Add(-s.window)
	if cut.Before(time.UnixMilli(0)) {
		return nil
	}
	floor, err := ulidFloor(cut)
	if err != nil {
		return err
	}
	for _, r := range []struct {
		db     *pebble.DB
		lo, hi []byte
	}{
		{s.aux, []byte{'p'}, append([]byte{'p'}, floor...)},
		{s.db, []byte{'s'}, append([]byte{'s'}, floor...)},
		{s.db, []byte{runPrefix}, append([]byte{runPrefix}, floor...)},
		{s.aux, []byte{'u'}, binary.BigEndian.AppendUint64([]byte{'u'}, uint64(cut.UnixNano()))},
	} {
		// A range delete in the memtable makes Compact flush it: where
		// nothing is old yet (every start, in a young store), neither.
		old, err := anyIn(r.db, r.lo, r.hi)
		if err != nil {
			return err
		}
		if !old {
			continue
		}
		if err := r.db.DeleteRange(r.lo, r.hi, pebble.NoSync); err != nil {
			return err
		}
		if err := r.db.Compact(context.Background(), r.lo, r.hi, false); err != nil {
			return err
		}
	}
	return nil
}

// anyIn reports whether db holds a key in [lo, hi).
func anyIn(db *pebble.DB, lo, hi []byte) (bool, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, err
	}
	found := it.First()
	return found, it.Close()
}

// quietPebble drops Pebble's informational lines ("Found 0 WALs") and keeps
// its errors on standard error.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any) {}
func (quietPebble) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble (status): "+format+"\n", args...)
}
func (quietPebble) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble (status): "+format+"\n", args...)
	os.Exit(1)
}

// statusStoreGroup prefixes the consumer group of a node's status replica.
const statusStoreGroup = "goutong-status-store."

// followStatus applies the status topic to the status store until ctx ends:
// the events other nodes produced, and this node's own from before this
// process started (a crash may have taken them from the store: it has no
// WAL). This process's own events it skips: the engine wrote each to the
// store as it produced it, and applying them again cost a Kafka node about
// 3 µs of CPU a notification (EngineEndToEnd/kafka-node). Every interval it
// waits for the writers of the events it skipped to have applied them,
// flushes the store and commits what it read, so a crash replays from
// there and loses nothing. Should a writer's own apply fail, or another
// process run with this node id, the replica reads again from its last
// commit, skipping nothing from then on.
func (e *Engine) followStatus(ctx context.Context, interval time.Duration) error {
	// A store copied from another node (Snapshot) reads on from where the
	// copy was taken, until its group has committed.
	startAt, err := e.cfg.Status.replicaStart()
	if err != nil {
		return err
	}
	// The copy holds everything below them: the replica stands there
	// before it has read anything (a takeover and the readiness ask).
	e.replica.advance(startAt)
	open := func() (partition.Log, error) {
		log, err := e.cfg.Open(partition.ConsumerConfig{Group: statusStoreGroup + e.cfg.NodeID, Topics: []string{e.cfg.Topics.Status},
			StartAt: startAt})
		if err != nil {
			return nil, fmt.Errorf("engine: status replica: %w", err)
		}
		return log, nil
	}
	log, err := open()
	if err != nil {
		return err
	}
	defer func() {
		if log != nil {
			log.Close()
		}
	}()
	// Its commits are the checkpoints' own: a flush, then the offsets.
	ckpt := &statusCheckpointer{e: e, log: log, committed: map[partition.TopicPartition]int64{}}
	next := map[partition.TopicPartition]int64{}
	last := time.Now()
	// Where the status topic ended when the replica started: this node's
	// events past it are this process's. The node is not ready (Ready,
	// /readyz) until the replica has applied up to there: before, a
	// request repeating a key another node accepted would be accepted
	// again.
	var startEnds map[partition.TopicPartition]int64
	skipOwn := true
	// A snapshot asked for (Snapshot), and the topic's ends when it was.
	var snap *snapshotReq
	var snapEnds map[partition.TopicPartition]int64
	// This node's events end with their node (the last field), so they
	// are told apart without decoding them: decoding was most of the cost.
	quoted, err := json.Marshal(e.cfg.NodeID)
	if err != nil {
		return fmt.Errorf("engine: status replica: %w", err)
	}
	ownTail := append(append([]byte(`,"node":`), quoted...), '}')
	shared := &sharedNodeID{e: e, after: e.cfg.NodeIDSharedAfter}
	begun := time.Now()
	caughtUp := func() {
		if e.replicaCovered.Load() {
			return
		}
		switch {
		case startEnds != nil && e.replica.covers(startEnds):
			e.replicaCovered.Store(true)
		case !e.replicaCaughtUp.isSet() && time.Since(begun) >= takeoverWait && ctx.Err() == nil:
			e.cfg.Logger.Warn("ready before the status replica caught up; a repeat of a key another node accepted or sent may be accepted or sent again",
				zap.Duration("waited", takeoverWait), zap.String("hint", "start a node added to a busy fleet from another node's snapshot (config join)"))
		default:
			return
		}
		e.replicaCaughtUp.set()
	}
	// commit reports false when the replica must read again from its last
	// commit.
	commit := func() bool {
		if len(next) == 0 {
			return true
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if skipOwn {
			// The own events it skipped are in the store once their
			// writers have left (they produced before it read them).
			if err := e.ckpt.quiesce(cctx); err != nil {
				e.cfg.Logger.Warn("status replica: checkpoint: writers did not finish", zap.Error(err))
				return true
			}
			if e.ownApplyFailed.Load() {
				return false
			}
		}
		if err := ckpt.commit(cctx, next); err != nil {
			e.cfg.Logger.Warn("status replica: checkpoint", zap.Error(err))
			return true
		}
		clear(next)
		return true
	}
	defer commit()
	rewind := func() error {
		e.m.replicaRewinds.Inc()
		e.cfg.Logger.Warn("status replica: reading the status topic again from the last checkpoint, skipping none of this node's events",
			zap.Bool("own_write_failed", e.ownApplyFailed.Load()), zap.Bool("node_id_shared", shared.told))
		log.Close()
		clear(next)
		skipOwn = false
		var err error
		log, err = open()
		ckpt.log = log
		return err
	}
	for {
		if startEnds == nil {
			if ends, err := log.EndOffsets(ctx, e.cfg.Topics.Status); err == nil {
				startEnds = ends
			}
		}
		pctx, cancel := context.WithTimeout(ctx, min(interval, time.Second))
		recs, err := log.Poll(pctx, 1000)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			if errors.Is(err, partition.ErrClosed) {
				return fmt.Errorf("engine: status replica: %w", err)
			}
			// What the client did not retry itself (a partition's data
			// lost to retention, say) must not end the replica for the
			// process's life: the node would answer stale states, hold
			// every takeover for its whole wait, and miss keys.
			e.m.replicaErrors.Inc()
			e.cfg.Logger.Warn("status replica: poll failed; polling again", zap.Error(err))
			if e.cfg.Clock.Sleep(ctx, time.Second) != nil {
				return nil
			}
		}
		var own func(r *partition.Record) bool
		if skipOwn && startEnds != nil {
			own = func(r *partition.Record) bool {
				end, known := startEnds[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}]
				return known && r.Offset >= end && bytes.HasSuffix(r.Value, ownTail)
			}
		}
		if !e.applyReplicated(ctx, recs, next, own) {
			return nil // not committed: replayed by the next run
		}
		e.replica.advance(next)
		checkpoint := time.Since(last) >= interval
		// Measured when a takeover or the readiness asks, and for the lag
		// gauge at each checkpoint: one read of the ends and the lag.
		if e.replica.wanted() || checkpoint {
			if behind, ok := e.replica.measure(ctx, log, e.cfg.Topics.Status); ok && checkpoint {
				e.m.replicaLag.Set(float64(behind))
			}
		}
		caughtUp()
		if snap == nil {
			select {
			case req := <-e.snapshots:
				// It waits until the replica has read what the topic held
				// when asked: the copy then misses nothing produced before.
				if ends, err := log.EndOffsets(ctx, e.cfg.Topics.Status); err != nil {
					req.reply <- snapshotReply{err: fmt.Errorf("engine: snapshot: %w", err)}
				} else {
					snap, snapEnds = &req, ends
				}
			default:
			}
		}
		if snap != nil && snap.ctx.Err() != nil {
			snap = nil // its caller gave up
		}
		if snap != nil && e.replica.covers(snapEnds) {
			req := *snap
			snap = nil
			// Right after a checkpoint, so that what the store holds is
			// what lies below the positions the copy records.
			if (skipOwn && shared.told) || !commit() {
				req.reply <- snapshotReply{err: errors.New("engine: snapshot: the status replica must read again from its checkpoint; try again")}
				if err := rewind(); err != nil {
					return err
				}
				last = time.Now()
				continue
			}
			last = time.Now()
			positions, err := replicaCommitted(ctx, log, e.cfg.Topics.Status)
			if err == nil {
				// A partition the replica has not committed yet reads as
				// its start; what it applied (or was seeded with) is in
				// the store all the same.
				e.replica.raise(positions)
				err = e.takeSnapshot(req.dir, positions)
			}
			req.reply <- snapshotReply{positions: positions, err: err}
			continue
		}
		if checkpoint {
			shared.check(log, startEnds)
			// Another process with this node id writes events this one
			// would take for its own: skipping them would lose them (and
			// what was skipped since the last checkpoint is read again).
			if (skipOwn && shared.told) || !commit() {
				if err := rewind(); err != nil {
					return err
				}
			}
			last = time.Now()
		}
	}
}

// replicaCommitted is the replica group's committed offset in every
// partition of topic (committedOffsets: lower, never higher, when records
// are produced meanwhile). It fails unless the replica holds every
// partition.
func replicaCommitted(ctx context.Context, log partition.Log, topic string) (map[partition.TopicPartition]int64, error) {
	ends, committed, err := committedOffsets(ctx, log, topic)
	if err != nil {
		return nil, fmt.Errorf("engine: snapshot: %w", err)
	}
	for tp := range ends {
		if _, ok := committed[tp]; !ok {
			return nil, fmt.Errorf("engine: snapshot: the status replica does not hold %s", tp)
		}
	}
	return committed, nil
}

// replicaWorkers bounds the goroutines a status replica decodes and
// applies a poll with: every node reads the whole fleet's events, and one
// core read ~660K a second (BenchmarkStatusReplica/keyed).
const replicaWorkers = 4

// applyReplicated decodes recs (but those skip says to), copies their keys
// into the dedupe store and applies them to the status store, a share of
// the poll on each of up to replicaWorkers goroutines: the events of one
// notification may land in any order, since the store keys each by its
// time. The keys that withdrawn events drop go last, once every share's
// are in: a withdrawn event can be in one share and its accepted event in
// another, whose key would otherwise be copied after the drop. A write
// that fails is tried again every second; it reports false when ctx ended
// first.
func (e *Engine) applyReplicated(ctx context.Context, recs []partition.Record, next map[partition.TopicPartition]int64, skip func(*partition.Record) bool) bool {
	for i := range recs {
		r := &recs[i]
		next[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
	}
	workers := min(replicaWorkers, runtime.GOMAXPROCS(0), (len(recs)+249)/250)
	if workers <= 1 {
		ok, forget := e.applyReplicatedShare(ctx, recs, skip)
		return ok && e.retryReplica(ctx, func() error { return e.cfg.Dedupe.Forget(ctx, forget) })
	}
	var wg sync.WaitGroup
	ok := make([]bool, workers)
	forget := make([][]dedupe.Remembered, workers)
	per := (len(recs) + workers - 1) / workers
	for w := range workers {
		share := recs[min(w*per, len(recs)):min((w+1)*per, len(recs))]
		wg.Go(func() { ok[w], forget[w] = e.applyReplicatedShare(ctx, share, skip) })
	}
	wg.Wait()
	return !slices.Contains(ok, false) && e.retryReplica(ctx, func() error { return e.cfg.Dedupe.Forget(ctx, slices.Concat(forget...)) })
}

// applyReplicatedShare applies a share of a poll, and returns the keys its
// withdrawn events drop (withdrawnKeys).
func (e *Engine) applyReplicatedShare(ctx context.Context, recs []partition.Record, skip func(*partition.Record) bool) (bool, []dedupe.Remembered) {
	events := decodeStatusEventsExcept(recs, nil, skip)
	ok := e.retryReplica(ctx, func() error {
		// Keys first: once the replica's position passes an event, a
		// takeover counts on its key being known here.
		if err := e.rememberKeys(ctx, events); err != nil {
			return err
		}
		return e.cfg.Status.Apply(events)
	})
	return ok, e.withdrawnKeys(events)
}

// retryReplica runs a status replica's write until it succeeds, every
// second; false when ctx ended first.
func (e *Engine) retryReplica(ctx context.Context, write func() error) bool {
	for {
		err := write()
		if err == nil {
			return true
		}
		e.cfg.Logger.Warn("status replica: apply", zap.Error(err))
		if e.cfg.Clock.Sleep(ctx, time.Second) != nil {
			return false
		}
	}
}

// sharedNodeID notices a status replica that keeps being assigned only
// part of the status topic: another process consumes the rest in its
// group, which means it runs with the same node id (a data directory
// copied with its node-id file, say). Each then misses the other's share
// of the events, and of the other nodes' keys.
type sharedNodeID struct {
	e       *Engine
	after   time.Duration // how long a partial assignment lasts before it counts
	partial time.Time     // since when the assignment has been partial; zero when whole
	told    bool
}

func (s *sharedNodeID) check(log partition.Log, all map[partition.TopicPartition]int64) {
	if len(all) == 0 || len(log.Assigned()) >= len(all) {
		s.partial, s.told = time.Time{}, false
		s.e.m.replicaShared.Set(0)
		return
	}
	if s.partial.IsZero() {
		s.partial = time.Now()
	}
	// Past a rebalance's settling.
	if !s.told && time.Since(s.partial) >= s.after {
		s.told = true
		s.e.cfg.Logger.Error("status replica: assigned only part of the status topic; another process runs with this node id (give each node its own node_id)",
			zap.String("node_id", s.e.cfg.NodeID), zap.Int("assigned", len(log.Assigned())), zap.Int("partitions", len(all)))
	}
	if s.told {
		s.e.m.replicaShared.Set(1)
	} else {
		s.e.m.replicaShared.Set(0)
	}
}
