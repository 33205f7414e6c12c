package engine

import (
	"fmt"
	"math/bits"
	"sync/atomic"
)

// Ring is a bounded, lock-free queue for exactly one producer goroutine and
// one consumer goroutine: the router pushes, a channel's dispatcher pops.
// The producer owns tail, the consumer owns head; each publishes its index
// with an atomic store that the other reads with an atomic load, which
// orders the slot write before the slot read. Push fails when full: the
// caller applies backpressure instead of growing a queue.
type Ring[T any] struct {
	_    [64]byte // keep head and tail on their own cache lines
	head atomic.Uint64
	// tailSeen is the consumer's last look at tail; it rereads tail only
	// when the ring looks empty, so the cache line moves less.
	tailSeen uint64
	_        [48]byte
	tail     atomic.Uint64
	headSeen uint64 // the producer's last look at head
	_        [48]byte
	mask     uint64
	buf      []T
}

// NewRing returns a ring holding size items, rounded up to a power of two.
func NewRing[T any](size int) *Ring[T] {
	if size < 1 || size > 1<<30 {
		panic(fmt.Sprintf("engine: ring size %d out of range", size))
	}
	n := uint64(1) << bits.Len64(uint64(size-1))
	return &Ring[T]{mask: n - 1, buf: make([]T, n)}
}

// Cap is the number of slots.
func (r *Ring[T]) Cap() int { return len(r.buf) }

// Len is a snapshot of the number of queued items.
func (r *Ring[T]) Len() int { return int(r.tail.Load() - r.head.Load()) }

// Push appends v; it returns false when the ring is full. Producer only.
func (r *Ring[T]) Push(v T) bool {
	t := r.tail.Load()
	if t-r.headSeen == uint64(len(r.buf)) {
		r.headSeen = r.head.Load()
		if t-r.headSeen == uint64(len(r.buf)) {
			return false
		}
	}
	r.buf[t&r.mask] = v
	r.tail.Store(t + 1)
	return true
}

// Pop removes the oldest item. Consumer only.
func (r *Ring[T]) Pop() (T, bool) {
	var zero T
	h := r.head.Load()
	if h == r.tailSeen {
		r.tailSeen = r.tail.Load()
		if h == r.tailSeen {
			return zero, false
		}
	}
	v := r.buf[h&r.mask]
	r.buf[h&r.mask] = zero // drop the reference for the GC
	r.head.Store(h + 1)
	return v, true
}

// PopN moves up to len(dst) items into dst and returns how many. Consumer
// only; one atomic store publishes the whole batch.
func (r *Ring[T]) PopN(dst []T) int {
	var zero T
	h := r.head.Load()
	if r.tailSeen-h < uint64(len(dst)) {
		r.tailSeen = r.tail.Load()
	}
	n := min(uint64(len(dst)), r.tailSeen-h)
	for i := range n {
		j := (h + i) & r.mask
		dst[i] = r.buf[j]
		r.buf[j] = zero
	}
	r.head.Store(h + n)
	return int(n)
}
