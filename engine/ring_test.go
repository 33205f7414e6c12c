package engine

import (
	"runtime"
	"testing"
)

func TestRingBoundedFIFO(t *testing.T) {
	r := NewRing[int](5)
	if r.Cap() != 8 {
		t.Fatalf("cap %d, want 8 (next power of two)", r.Cap())
	}
	for i := range 8 {
		if !r.Push(i) {
			t.Fatalf("push %d refused below capacity", i)
		}
	}
	if r.Push(8) {
		t.Fatal("push into a full ring accepted")
	}
	if v, ok := r.Pop(); !ok || v != 0 {
		t.Fatalf("pop %v %v", v, ok)
	}
	if !r.Push(8) {
		t.Fatal("push after a pop refused")
	}
	dst := make([]int, 5)
	if n := r.PopN(dst); n != 5 || dst[0] != 1 || dst[4] != 5 {
		t.Fatalf("PopN %d %v", n, dst)
	}
	if n := r.PopN(dst); n != 3 || dst[2] != 8 || r.Len() != 0 {
		t.Fatalf("PopN %d %v len %d", n, dst[:n], r.Len())
	}
	if _, ok := r.Pop(); ok {
		t.Fatal("pop from an empty ring")
	}
}

// One producer and one consumer hammer a small ring; every item arrives
// once and in order (run with -race).
func TestRingConcurrentOrder(t *testing.T) {
	r := NewRing[int](64)
	const n = 200_000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; {
			if r.Push(i) {
				i++
			} else {
				runtime.Gosched()
			}
		}
	}()
	next := 0
	buf := make([]int, 16)
	for next < n {
		k := r.PopN(buf)
		if k == 0 {
			runtime.Gosched()
			continue
		}
		for _, v := range buf[:k] {
			if v != next {
				t.Fatalf("got %d, want %d", v, next)
			}
			next++
		}
	}
	<-done
}

func BenchmarkRingSPSC(b *testing.B) {
	r := NewRing[*int](4096)
	v := new(int)
	b.ReportAllocs()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]*int, 256)
		for got := 0; got < b.N; {
			k := r.PopN(buf)
			if k == 0 {
				runtime.Gosched()
			}
			got += k
		}
	}()
	for i := 0; i < b.N; {
		if r.Push(v) {
			i++
		} else {
			runtime.Gosched()
		}
	}
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkChannelBaseline is the same hand-off through a buffered Go
// channel, the obvious alternative.
func BenchmarkChannelBaseline(b *testing.B) {
	ch := make(chan *int, 4096)
	v := new(int)
	b.ReportAllocs()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range b.N {
			<-ch
		}
	}()
	for range b.N {
		ch <- v
	}
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
