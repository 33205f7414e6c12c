package dedupe

import "math/bits"

// hashIndex maps a key's 64-bit hash to a record reference in one flat,
// pointer-free array probed linearly: a lookup is usually one cache miss,
// where a Go map of a million entries took two or three (its directory,
// control word and slot). It never grows: its owner starts a new one when
// full reports true.
type hashIndex struct {
	slots      []uint64 // pairs: hash, ref+1 (0: empty, tomb: deleted)
	mask       uint64   // pairs-1
	live, used int      // used counts tombstones too
}

const tomb = ^uint64(0)

// maxLoad is the share of pairs in use (tombstones included) at which the
// index is full: linear probing stays about one cache line below it.
const maxLoadNum, maxLoadDen = 3, 4

// newHashIndex sizes an index for n entries.
func newHashIndex(n int) *hashIndex {
	pairs := indexPairs(n)
	return &hashIndex{slots: make([]uint64, 2*pairs), mask: pairs - 1}
}

func indexPairs(n int) uint64 {
	pairs := uint64(16)
	if want := uint64(n) * maxLoadDen / maxLoadNum; want > pairs {
		pairs = 1 << bits.Len64(want-1)
	}
	return pairs
}

// bytes is the index's memory.
func (x *hashIndex) bytes() int { return 8 * len(x.slots) }

// room reports whether n more entries fit below the maximum load.
func (x *hashIndex) room(n int) bool {
	return uint64(x.used+n)*maxLoadDen < (x.mask+1)*maxLoadNum
}

// grow doubles the index (an owner that cannot start a new one).
func (x *hashIndex) grow() {
	old := x.slots
	*x = *newHashIndex(int(x.mask+1) * 2 * maxLoadNum / maxLoadDen)
	for i := 0; i < len(old); i += 2 {
		if s := old[i+1]; s != 0 && s != tomb {
			x.put(old[i], s-1)
		}
	}
}

func (x *hashIndex) full() bool {
	return uint64(x.used)*maxLoadDen >= (x.mask+1)*maxLoadNum
}

// touch reads h's home slot, to bring its line into the cache.
func (x *hashIndex) touch(h uint64) uint64 { return x.slots[2*(h&x.mask)] }

func (x *hashIndex) get(h uint64) (ref uint64, ok bool) {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		switch s := x.slots[2*i+1]; {
		case s == 0:
			return 0, false
		case x.slots[2*i] == h && s != tomb:
			return s - 1, true
		}
	}
}

// put sets h's reference; the caller checks full first (a full index would
// probe forever once no slot is empty).
func (x *hashIndex) put(h, ref uint64) { x.swap(h, ref) }

// swap sets h's reference and returns the one it replaces (0 and false
// when none): one probe where a get, then a put, took two.
func (x *hashIndex) swap(h, ref uint64) (prev uint64, ok bool) {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := x.slots[2*i+1]
		if s == 0 {
			x.slots[2*i], x.slots[2*i+1] = h, ref+1
			x.used++
			x.live++
			return 0, false
		}
		if x.slots[2*i] == h {
			x.slots[2*i+1] = ref + 1
			if s == tomb {
				x.live++
				return 0, false
			}
			return s - 1, true
		}
	}
}

func (x *hashIndex) del(h uint64) {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		switch s := x.slots[2*i+1]; {
		case s == 0:
			return
		case x.slots[2*i] == h && s != tomb:
			x.slots[2*i+1] = tomb
			x.live--
			return
		}
	}
}
