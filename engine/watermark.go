package engine

import (
	"fmt"
	"sort"
)

// Watermark tracks one partition's records from poll to finish and says
// which offset may be committed: the highest offset below which every
// tracked record is finished (sent, expired, duplicate, moved to retry or
// to dead letters). Records finish out of order; a crash then replays only
// what was unfinished, never skips it. Not safe for concurrent use; the
// engine guards each partition's Watermark.
type Watermark struct {
	offs []int64 // tracked offsets, increasing, from the oldest unfinished on
	done []bool
	head int   // offs[head:] are live
	next int64 // commit point: everything below is finished
	seen int64 // highest offset tracked + 1
}

// NewWatermark starts at the partition's committed offset.
func NewWatermark(committed int64) *Watermark { return &Watermark{next: committed, seen: committed} }

// Track registers a polled record. Offsets must increase (they may skip,
// as Kafka's do around transaction markers or compaction).
func (w *Watermark) Track(offset int64) error {
	if offset < w.seen {
		return fmt.Errorf("engine: offset %d tracked after %d", offset, w.seen-1)
	}
	if w.head == len(w.offs) {
		// Nothing in flight: anything skipped before offset is finished.
		w.offs, w.done, w.head = w.offs[:0], w.done[:0], 0
		w.next = offset
	}
	w.offs = append(w.offs, offset)
	w.done = append(w.done, false)
	w.seen = offset + 1
	return nil
}

// Done marks a tracked record finished; it reports false for an offset not
// in flight (finished twice, or never tracked).
func (w *Watermark) Done(offset int64) bool {
	live := w.offs[w.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i] >= offset })
	if i == len(live) || live[i] != offset || w.done[w.head+i] {
		return false
	}
	w.done[w.head+i] = true
	for w.head < len(w.offs) && w.done[w.head] {
		w.head++
	}
	if w.head == len(w.offs) {
		w.next = w.seen
	} else {
		w.next = w.offs[w.head]
	}
	// Compact once the finished prefix dominates, so memory follows what
	// is in flight, not what was ever tracked.
	if w.head > 1024 && w.head*2 > len(w.offs) {
		n := copy(w.offs, w.offs[w.head:])
		copy(w.done, w.done[w.head:])
		w.offs, w.done, w.head = w.offs[:n], w.done[:n], 0
	}
	return true
}

// Committable is the offset to commit: the next one a restart would read.
func (w *Watermark) Committable() int64 { return w.next }

// InFlight is how many tracked records are not finished.
func (w *Watermark) InFlight() int {
	n := 0
	for _, d := range w.done[w.head:] {
		if !d {
			n++
		}
	}
	return n
}
