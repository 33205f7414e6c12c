package dedupe

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"
)

// filters holds one Bloom filter per time bucket, of every key written
// into that bucket. A key that no bucket's filter may hold is new, and its
// claim skips the Pebble probe (a memtable skiplist descent and an sstable
// seek per bucket: most of a new key's cost). Filters are built at open
// from the keys on disk and fed before every write, so they never miss a
// stored key; a released key stays in its filter (a false positive costs a
// probe, nothing else). A bucket's filter goes with the bucket.
//
// A bucket's filter grows with its keys, within a memory budget for all of
// them: a filter past the keys it was sized for answers "maybe" to ever
// more new keys (at three times its keys two in three, at seven 99 %), and
// each "maybe" costs a disk probe.
type filters struct {
	mu sync.RWMutex
	m  map[uint32]*bucketFilter
	// size is the keys a bucket's first stage is sized for.
	size uint
	// bytes is the memory of every stage; a stage is added only while it
	// stays within maxBytes.
	bytes, maxBytes int
	refused         int64 // stages not added for want of memory
	// seed hashes keys for every filter: they live in memory only, rebuilt
	// at open, so a seed per process is enough.
	seed maphash.Seed
	// sink keeps the loads that bring a batch's lines into the cache from
	// being dropped as dead code.
	sink atomic.Uint32
}

// bucketFilter is one bucket's filter, a scalable Bloom filter: stages of
// block filters, each sized for twice the keys of the one before, writes
// going to the newest, each with two more bits a key than the one before
// (stageBits). A key may be in the bucket if any stage holds it, so the
// false-positive rate is about the stages' sum: three stages hold seven
// times the first's keys at 5.0 %, five hold 31 times at 5.4 % (1.4 and
// 1.8 bytes a key).
type bucketFilter struct {
	stages []*blockFilter
	left   uint // keys the newest stage takes before the next one is made
}

func (b *bucketFilter) test(h uint64) bool {
	for _, st := range b.stages {
		if st.test(h) {
			return true
		}
	}
	return false
}

// FilterBytes is the memory of one bucket's Bloom filter sized for keys.
func FilterBytes(keys uint) int { return int(filterBlocks(keys)) * blockBytes }

func newFilters(keysPerBucket uint, maxBytes int) *filters {
	return &filters{m: map[uint32]*bucketFilter{}, size: keysPerBucket, maxBytes: maxBytes, seed: maphash.MakeSeed()}
}

// hash is what a filter holds of a stored key: a digest's own bits (keyed
// SipHash, spread evenly already), or maphash of a key stored as given.
func (f *filters) hash(key []byte) uint64 {
	if len(key) == digestLen {
		return binary.LittleEndian.Uint64(key[8:])
	}
	return maphash.Bytes(f.seed, key)
}

func (f *filters) hashString(key string) uint64 {
	return f.hash(unsafe.Slice(unsafe.StringData(key), len(key))) // only read
}

// blockFilter is a split block Bloom filter, the layout of Apache Parquet's
// (and Impala's) filters: a key's hash picks one 32-byte block and sets one
// bit in each of its eight words. A test or an add touches one cache line,
// where a classic Bloom filter of this size (bits-and-blooms, which these
// replaced) touches one per hash function: at millions of keys a bucket
// each of those is a cache miss, and they were 5-9 % of an ingest's CPU.
// The price is a higher false-positive rate for the same bits; at
// filterBitsPerKey it is 3.3-3.4 % (TestBlockFilterFalsePositives).
type blockFilter struct {
	blocks [][8]uint32
	keys   uint // what it was sized for
}

const (
	blockBytes = 32
	// filterBitsPerKey: 8 keeps false positives near 3 % at the sized key
	// count, below the 5 % the classic filter was sized for in 6.2 bits.
	filterBitsPerKey = 8
)

func filterBlocks(keys uint) uint { return stageBlocks(keys, filterBitsPerKey) }

func stageBlocks(keys, bitsPerKey uint) uint {
	return max(1, (keys*bitsPerKey+blockBytes*8-1)/(blockBytes*8))
}

// stageBits is the bits a key of a bucket filter's stage i (from 0) gets:
// two more a stage, up to 16, so each stage adds about half the false
// positives of the one before and their sum stays under 6 %.
func stageBits(i int) uint { return filterBitsPerKey + 2*uint(min(i, 4)) }

func newStage(keys, bitsPerKey uint) *blockFilter {
	return &blockFilter{blocks: make([][8]uint32, stageBlocks(keys, bitsPerKey)), keys: keys}
}

// blockSalt are the odd constants of the Parquet specification: word i's
// bit is the top five bits of the hash's low half times salt[i].
var blockSalt = [8]uint32{0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31}

// block picks the block from the hash's high half (a multiply-shift, not a
// modulo) and computes the eight bits from its low half.
func (f *blockFilter) block(h uint64) (*[8]uint32, [8]uint32) {
	b := &f.blocks[(h>>32)*uint64(len(f.blocks))>>32]
	var mask [8]uint32
	for i, s := range blockSalt {
		mask[i] = 1 << ((uint32(h) * s) >> 27)
	}
	return b, mask
}

func (f *blockFilter) add(h uint64) {
	b, mask := f.block(h)
	for i := range b {
		b[i] |= mask[i]
	}
}

// touch reads h's block (see filters.screen).
func (f *blockFilter) touch(h uint64) uint32 { return f.blocks[(h>>32)*uint64(len(f.blocks))>>32][0] }

func (b *bucketFilter) touch(h uint64) (v uint32) {
	for _, st := range b.stages {
		v ^= st.touch(h)
	}
	return v
}

func (f *blockFilter) test(h uint64) bool {
	b, mask := f.block(h)
	for i := range b {
		if b[i]&mask[i] == 0 {
			return false
		}
	}
	return true
}

// candidates appends to out the indexes i in order (those open says are
// still unresolved) whose keys[i] bucket b may hold; a bucket with no
// filter has never been written. One read lock per bucket and batch.
func (f *filters) candidates(b uint32, keys []string, order []int, open func(int) bool, out *[]int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	bf := f.m[b]
	if bf == nil {
		return
	}
	for _, i := range order {
		if open(i) && bf.test(f.hashString(keys[i])) {
			*out = append(*out, i)
		}
	}
}

// screen sets bit newest-b of mask[i] for every bucket b in [oldest,
// newest] whose filter may hold keys[i], for keys not found yet; a key left
// at 0 was never written in a live bucket. newest-oldest must be below 64.
// Each key is hashed once for all the buckets.
func (f *filters) screen(keys []string, newest, oldest uint32, res []found, mask []uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	type liveFilter struct {
		bit uint64
		bf  *bucketFilter
	}
	var live [64]liveFilter
	n := 0
	for b := int64(newest); b >= int64(oldest); b-- {
		if bf := f.m[uint32(b)]; bf != nil {
			live[n] = liveFilter{bit: uint64(1) << (newest - uint32(b)), bf: bf}
			n++
		}
	}
	if n == 0 {
		return
	}
	// Loads first, no branch on what they read, so a batch's cache misses
	// overlap instead of each test waiting on its own (a test's early exit
	// is a mispredicted branch on a miss). One load brings a block in.
	var sink uint32
	for i, k := range keys {
		if !res[i].ok {
			h := f.hashString(k)
			for _, l := range live[:n] {
				sink ^= l.bf.touch(h)
			}
		}
	}
	f.sink.Store(sink)
	for i, k := range keys {
		if res[i].ok {
			continue
		}
		h := f.hashString(k)
		for _, l := range live[:n] {
			if l.bf.test(h) {
				mask[i] |= l.bit
			}
		}
	}
}

// add records keys about to be written (encoded entry keys).
func (f *filters) add(ops []writeOp) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sink uint32 // see screen
	for _, op := range ops {
		if b, key, ok := op.entryWrite(); ok {
			if bf := f.m[b]; bf != nil {
				sink ^= bf.stages[len(bf.stages)-1].touch(f.hash(key))
			}
		}
	}
	f.sink.Store(sink)
	for _, op := range ops {
		if b, key, ok := op.entryWrite(); ok {
			f.addLocked(b, key)
		}
	}
}

// entryWrite returns the bucket and stored key an op writes an entry
// under, ok false for a delete or a key outside the buckets.
func (op *writeOp) entryWrite() (bucket uint32, key []byte, ok bool) {
	if op.del || len(op.key) < 5 || op.key[0] != 'b' {
		return 0, nil, false
	}
	return binary.BigEndian.Uint32(op.key[1:5]), op.key[5:], true
}

func (f *filters) addLocked(b uint32, key []byte) {
	bf := f.m[b]
	if bf == nil {
		bf = &bucketFilter{}
		f.m[b] = bf
		f.grow(bf, f.size)
	} else if bf.left == 0 {
		f.grow(bf, 2*bf.stages[len(bf.stages)-1].keys)
	}
	bf.stages[len(bf.stages)-1].add(f.hash(key))
	bf.left-- // grow left it at least 1
}

// grow gives bf a stage for keys more, if the budget has room (a bucket's
// first stage always: without one nothing could be added). Otherwise the
// newest stage takes its size again before the next try, its false
// positives rising as a fixed filter's do.
func (f *filters) grow(bf *bucketFilter, keys uint) {
	bits := stageBits(len(bf.stages))
	if n := int(stageBlocks(keys, bits)) * blockBytes; len(bf.stages) == 0 || f.bytes+n <= f.maxBytes {
		bf.stages = append(bf.stages, newStage(keys, bits))
		f.bytes += n
		bf.left = keys
		return
	}
	f.refused++
	bf.left = bf.stages[len(bf.stages)-1].keys
}

// memory returns the filters' bytes, the most stages a bucket has, and
// how many stages were refused for want of memory.
func (f *filters) memory() (bytes, stages int, refused int64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, bf := range f.m {
		stages = max(stages, len(bf.stages))
	}
	return f.bytes, stages, f.refused
}

// dropBelow forgets the filters of reclaimed buckets.
func (f *filters) dropBelow(floor uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for b, bf := range f.m {
		if b < floor {
			for _, st := range bf.stages {
				f.bytes -= len(st.blocks) * blockBytes
			}
			delete(f.m, b)
		}
	}
}
