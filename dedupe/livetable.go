package dedupe

import "encoding/binary"

// liveTable holds the claims this process has not finished, by their keys'
// digests. A drain claims, then deletes, every key it sends, with tens of
// thousands in flight: as a Go map the deletes alone took 5 % of the
// drain's CPU, two or three cache misses each (control word, slot, and the
// probe past groups its tombstones kept full). Here the digests sit in one
// flat array probed linearly, four to a cache line, and a delete shifts
// the rest of its run back instead of leaving a tombstone, so a lookup of
// a new key (the common case) reads one line and the table never fills
// with dead slots. The digests are keyed SipHash, so their bits spread
// keys evenly and no client can aim them at one run.
type liveTable struct {
	keys []digest // the all-zero digest marks an empty slot
	vals []liveClaim
	mask uint64
	n    int

	// The one key whose digest is all zeros, which a slot cannot hold.
	zeroSet bool
	zero    liveClaim

	sink byte // see touch
}

func (t *liveTable) len() int { return t.n }

// touch reads the home slot of each of a batch's digests before the batch
// is looked up or deleted one by one: the loads carry no branch on what
// they read, so their cache misses overlap instead of stalling each find.
func (t *liveTable) touch(n int, key func(i int) string) {
	if t.n == 0 {
		return
	}
	var sink byte
	for i := range n {
		sink ^= t.keys[binary.LittleEndian.Uint64([]byte(key(i)[:8]))&t.mask][0]
	}
	t.sink = sink
}

func (t *liveTable) home(d *digest) uint64 {
	return binary.LittleEndian.Uint64(d[:8]) & t.mask
}

// find returns d's slot, or the empty slot that ends its run.
func (t *liveTable) find(d *digest) (i uint64, ok bool) {
	for i = t.home(d); ; i = (i + 1) & t.mask {
		switch t.keys[i] {
		case *d:
			return i, true
		case digest{}:
			return i, false
		}
	}
}

func (t *liveTable) get(d digest) (liveClaim, bool) {
	if d == (digest{}) {
		return t.zero, t.zeroSet
	}
	if t.n == 0 {
		return liveClaim{}, false
	}
	if i, ok := t.find(&d); ok {
		return t.vals[i], true
	}
	return liveClaim{}, false
}

func (t *liveTable) set(d digest, c liveClaim) {
	if d == (digest{}) {
		if !t.zeroSet {
			t.n++
		}
		t.zero, t.zeroSet = c, true
		return
	}
	// At most half full: a miss then reads about 2.5 slots, one line.
	if 2*(t.n+1) > len(t.keys) {
		t.grow()
	}
	i, ok := t.find(&d)
	if !ok {
		t.keys[i] = d
		t.n++
	}
	t.vals[i] = c
}

func (t *liveTable) grow() { t.resize(max(minLiveSlots, 2*len(t.keys))) }

// shrink halves the table while it is under an eighth full, so the peak
// of one burst's open claims does not hold its memory for good. It leaves
// the table at least an eighth full, well below the half that grows it.
func (t *liveTable) shrink() {
	size := len(t.keys)
	for size > minLiveSlots && 8*t.n < size {
		size /= 2
	}
	if size < len(t.keys) {
		t.resize(size)
	}
}

const minLiveSlots = 64

func (t *liveTable) resize(size int) {
	oldKeys, oldVals := t.keys, t.vals
	t.keys, t.vals, t.mask = make([]digest, size), make([]liveClaim, size), uint64(size-1)
	for i := range oldKeys {
		if oldKeys[i] != (digest{}) {
			j, _ := t.find(&oldKeys[i])
			t.keys[j], t.vals[j] = oldKeys[i], oldVals[i]
		}
	}
}

// del forgets d, shifting back the entries after it in its run that
// would otherwise be cut off from their home slot.
func (t *liveTable) del(d digest) {
	if d == (digest{}) {
		if t.zeroSet {
			t.n--
		}
		t.zero, t.zeroSet = liveClaim{}, false
		return
	}
	if t.n == 0 {
		return
	}
	i, ok := t.find(&d)
	if !ok {
		return
	}
	t.n--
	for j := (i + 1) & t.mask; t.keys[j] != (digest{}); j = (j + 1) & t.mask {
		// The entry at j may fill the hole at i unless its home lies in
		// (i, j], cyclically: then it would sit before its home.
		if h := t.home(&t.keys[j]); (j-h)&t.mask >= (j-i)&t.mask {
			t.keys[i], t.vals[i] = t.keys[j], t.vals[j]
			i = j
		}
	}
	t.keys[i], t.vals[i] = digest{}, liveClaim{} // the id's string goes with it
}

// deleteIf forgets every entry drop reports true for, then shrinks the
// table if it is mostly empty.
func (t *liveTable) deleteIf(drop func(liveClaim) bool) {
	defer t.shrink()
	if t.zeroSet && drop(t.zero) {
		t.del(digest{})
	}
	// A delete shifts later entries back, possibly past the cursor; collect first.
	var gone []digest
	for i := range t.keys {
		if t.keys[i] != (digest{}) && drop(t.vals[i]) {
			gone = append(gone, t.keys[i])
		}
	}
	for _, d := range gone {
		t.del(d)
	}
}
