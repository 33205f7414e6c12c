package dedupe

import (
	"encoding/binary"
	"sync"
	"unsafe"

	"github.com/bits-and-blooms/bloom/v3"
)

// filters holds one Bloom filter per time bucket, of every key written
// into that bucket. A key that no bucket's filter may hold is new, and its
// claim skips the Pebble probe (a memtable skiplist descent and an sstable
// seek per bucket: most of a new key's cost). Filters are built at open
// from the keys on disk and fed before every write, so they never miss a
// stored key; a released key stays in its filter (a false positive costs a
// probe, nothing else). A bucket's filter goes with the bucket.
type filters struct {
	mu sync.RWMutex
	m  map[uint32]*bloom.BloomFilter
	// size is the keys per bucket the filters are sized for, at 5 % false
	// positives: five hashes (cache misses) a key instead of seven at 1 %,
	// and a false positive only costs the probe the filter would have saved.
	size uint
}

// FilterBytes is the memory of one bucket's Bloom filter sized for keys.
func FilterBytes(keys uint) int {
	m, _ := bloom.EstimateParameters(keys, filterFPR)
	return int(m / 8)
}

// filterFPR is the filters' false-positive rate.
const filterFPR = 0.05

func newFilters(keysPerBucket uint) *filters {
	return &filters{m: map[uint32]*bloom.BloomFilter{}, size: keysPerBucket}
}

// candidates appends to out the indexes i in order (those open says are
// still unresolved) whose keys[i] bucket b may hold; a bucket with no
// filter has never been written. One read lock per bucket and batch. A key
// is hashed again for each bucket that has a filter (a few at most):
// hashing once meant bloom.Locations' slice, an allocation per key.
func (f *filters) candidates(b uint32, keys []string, order []int, open func(int) bool, out *[]int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	bf := f.m[b]
	if bf == nil {
		return
	}
	for _, i := range order {
		// The filter only hashes the key's bytes; it does not keep them.
		if open(i) && bf.Test(unsafe.Slice(unsafe.StringData(keys[i]), len(keys[i]))) {
			*out = append(*out, i)
		}
	}
}

// screen sets bit newest-b of mask[i] for every bucket b in [oldest,
// newest] whose filter may hold keys[i], for keys not found yet; a key left
// at 0 was never written in a live bucket. newest-oldest must be below 64.
func (f *filters) screen(keys []string, newest, oldest uint32, res []found, mask []uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for b := int64(newest); b >= int64(oldest); b-- {
		bf := f.m[uint32(b)]
		if bf == nil {
			continue
		}
		bit := uint64(1) << (newest - uint32(b))
		for i, k := range keys {
			if !res[i].ok && bf.Test(unsafe.Slice(unsafe.StringData(k), len(k))) {
				mask[i] |= bit
			}
		}
	}
}

// add records keys about to be written (encoded entry keys).
func (f *filters) add(ops []writeOp) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, op := range ops {
		if op.del || len(op.key) < 5 || op.key[0] != 'b' {
			continue
		}
		f.addLocked(binary.BigEndian.Uint32(op.key[1:5]), op.key[5:])
	}
}

func (f *filters) addLocked(b uint32, key []byte) {
	bf := f.m[b]
	if bf == nil {
		bf = bloom.NewWithEstimates(f.size, filterFPR)
		f.m[b] = bf
	}
	bf.Add(key)
}

// dropBelow forgets the filters of reclaimed buckets.
func (f *filters) dropBelow(floor uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for b := range f.m {
		if b < floor {
			delete(f.m, b)
		}
	}
}
