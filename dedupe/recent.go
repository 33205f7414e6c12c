package dedupe

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// recent holds copies of the newest entries written, in memory, so that
// looking up a key seen lately (a replay after a crash or a rebalance, a
// client retrying a request) costs a hash probe instead of a Pebble seek
// per time bucket. It is a cache of what is on disk: every write of the
// store passes through it after its commit (a set replaces the key's copy,
// a delete drops it), so a key it holds has no newer entry on disk, and a
// key it does not hold is looked up in Pebble as before.
//
// Copies go into the current generation; when it passes half the budget,
// the previous generation is dropped whole and the current one takes its
// place, so making room costs nothing per key. Indexes and slabs hold no
// pointers: millions of entries cost the garbage collector nothing to scan.
type recent struct {
	mu        sync.RWMutex
	cur, prev *generation
	budget    int
	sink      atomic.Uint32 // keeps getMany's record touches from being optimised away
}

type generation struct {
	idx   *hashIndex // xxhash of the key -> slab<<32 | offset; a colliding key evicts the other
	slabs [][]byte
	bytes int
}

const (
	slabBytes = 1 << 20
	// idxEntryBytes is what one index entry costs at the index's average
	// load, for sizing it.
	idxEntryBytes = 24
)

// newGeneration sizes the index for a generation's share of the budget at
// a typical entry; the index's memory counts against that share.
func (r *recent) newGeneration() *generation {
	idx := newHashIndex(r.budget / 2 / (entrySizeHint + idxEntryBytes))
	return &generation{idx: idx, bytes: idx.bytes()}
}

func newRecent(budget int) *recent {
	r := &recent{budget: budget}
	r.cur, r.prev = r.newGeneration(), &generation{idx: newHashIndex(0)}
	return r
}

// Record layout in a slab: bucket (4 bytes), key length (uvarint), key,
// value length (uvarint), value (an encoded entry).

// apply records a committed batch's writes, in their commit order.
func (r *recent) apply(ops []writeOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, op := range ops {
		if len(op.key) < 5 || op.key[0] != 'b' {
			continue
		}
		bucket, key := binary.BigEndian.Uint32(op.key[1:5]), op.key[5:]
		if op.del {
			r.dropLocked(xxhash.Sum64(key), key)
		} else {
			r.putLocked(bucket, key, op.val)
		}
	}
}

func (r *recent) putLocked(bucket uint32, key, val []byte) {
	h := xxhash.Sum64(key)
	need := 4 + binary.MaxVarintLen32*2 + len(key) + len(val)
	if need > slabBytes {
		r.dropLocked(h, key) // too large for a slab: never cached
		return
	}
	g := r.cur
	if g.idx.full() {
		r.prev, r.cur = r.cur, r.newGeneration()
		g = r.cur
	}
	if len(g.slabs) == 0 || cap(g.slabs[len(g.slabs)-1])-len(g.slabs[len(g.slabs)-1]) < need {
		if g.bytes+slabBytes > r.budget/2 && len(g.slabs) > 0 {
			r.prev, r.cur = r.cur, r.newGeneration()
			g = r.cur
		}
		g.slabs = append(g.slabs, make([]byte, 0, slabBytes))
		g.bytes += slabBytes
	}
	i := len(g.slabs) - 1
	sl := g.slabs[i]
	off := len(sl)
	sl = binary.BigEndian.AppendUint32(sl, bucket)
	sl = binary.AppendUvarint(sl, uint64(len(key)))
	sl = append(sl, key...)
	sl = binary.AppendUvarint(sl, uint64(len(val)))
	sl = append(sl, val...)
	g.slabs[i] = sl
	g.idx.put(h, uint64(i)<<32|uint64(off))
}

// find returns the record of key in g.
// present is whether g indexes h at all: a key in the current generation,
// even another key of the same hash, hides the previous one.
func (g *generation) find(h uint64, key []byte) (rec []byte, ok, present bool) {
	ref, present := g.idx.get(h)
	return g.at(ref, present, key)
}

// at is find once the index answered.
func (g *generation) at(ref uint64, present bool, key []byte) (rec []byte, ok, _ bool) {
	if !present {
		return nil, false, false
	}
	rec = g.slabs[ref>>32][uint32(ref):]
	k, _, _ := parseRecord(rec)
	return rec, string(k) == string(key), true
}

// dropLocked forgets key in both generations.
func (r *recent) dropLocked(h uint64, key []byte) {
	r.cur.drop(h, key)
	r.prev.drop(h, key)
}

func (g *generation) drop(h uint64, key []byte) {
	if _, ok, _ := g.find(h, key); ok {
		g.idx.del(h)
	}
}

// parseRecord splits a slab record; n is its length. Records are written
// by putLocked only, so they are well formed.
func parseRecord(b []byte) (key, val []byte, n int) {
	p := 4
	kl, k := binary.Uvarint(b[p:])
	p += k
	key = b[p : p+int(kl)]
	p += int(kl)
	vl, k := binary.Uvarint(b[p:])
	p += k
	val = b[p : p+int(vl)]
	return key, val, p + int(vl)
}

// getMany sets res[i] for every keys[i] not found yet and cached, under one
// read lock.
func (r *recent) getMany(keys []string, oldest uint32, res []found) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	// In chunks, three passes: hash and read the index, touch the records,
	// then parse. Each pass is a short loop whose cache misses do not depend
	// on each other, so the CPU has several in flight at once; done key by
	// key, one miss waited for the last.
	const chunk = 32
	var hs, refs [chunk]uint64
	var in [chunk]bool
	var touched byte
	for from := 0; from < len(keys); from += chunk {
		part := keys[from:min(from+chunk, len(keys))]
		for j, k := range part {
			hs[j] = xxhash.Sum64String(k)
			refs[j], in[j] = r.cur.idx.get(hs[j])
		}
		for j := range part {
			if in[j] {
				touched ^= r.cur.slabs[refs[j]>>32][uint32(refs[j])]
			}
		}
		for j, k := range part {
			if !res[from+j].ok {
				res[from+j], _ = r.getHashed(k, hs[j], refs[j], in[j], oldest)
			}
		}
	}
	r.sink.Add(uint32(touched))
}

// getLocked finds key's newest entry if it is cached and its bucket is at
// least oldest (older buckets are past every window or reclaimed).
func (r *recent) getLocked(key string, oldest uint32) (found, bool) {
	h := xxhash.Sum64String(key)
	ref, in := r.cur.idx.get(h)
	return r.getHashed(key, h, ref, in, oldest)
}

// getHashed is getLocked with the key's hash and its current-generation
// index answer already read.
func (r *recent) getHashed(key string, h, ref uint64, in bool, oldest uint32) (found, bool) {
	kb := unsafe.Slice(unsafe.StringData(key), len(key)) // only read
	rec, ok, shadowed := r.cur.at(ref, in, kb)
	if !ok {
		// A key in the current generation is never older in the previous.
		if shadowed {
			return found{}, false
		}
		if rec, ok, _ = r.prev.find(h, kb); !ok {
			return found{}, false
		}
	}
	bucket := binary.BigEndian.Uint32(rec)
	if bucket < oldest {
		return found{}, false
	}
	_, val, _ := parseRecord(rec)
	// Slab bytes are never written again (a dropped generation is dropped,
	// not reused), so the entry's strings may point into them.
	e, err := parseEntryStrings(val, true)
	if err != nil {
		return found{}, false // Pebble answers, with the error
	}
	return found{ok: true, bucket: bucket, e: e}, true
}

// len is the number of keys cached.
func (r *recent) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur.idx.live + r.prev.idx.live
}

// bytes is the memory the copies take, against the budget.
func (r *recent) bytes() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur.bytes + r.prev.bytes
}
