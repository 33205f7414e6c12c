package engine

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestLowGate: with no urgent batch, every sender may send bulk; while one
// is pending, bulk sends beyond a quarter of the senders wait, and they go
// as soon as the last urgent batch is sent.
func TestLowGate(t *testing.T) {
	g := newLowGate(8)
	for range 8 {
		g.enterLow() // no urgent work: all eight go at once
	}
	for range 8 {
		g.exitLow()
	}
	g.enterUrgent()
	g.enterLow()
	g.enterLow() // the quarter: two
	var third atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.enterLow()
		third.Store(true)
	}()
	time.Sleep(20 * time.Millisecond)
	if third.Load() {
		t.Fatal("a third bulk send went while an urgent batch was pending")
	}
	g.exitLow() // a slot within the quarter frees: the third goes
	<-done
	g.enterUrgent()
	g.exitUrgent() // one of two urgent batches sent: the gate stays
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		g.enterLow()
	}()
	select {
	case <-blocked:
		t.Fatal("a third bulk send went with an urgent batch still pending")
	case <-time.After(20 * time.Millisecond):
	}
	g.exitUrgent() // the last urgent batch sent: bulk takes the whole width
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("bulk still held after the last urgent batch")
	}
}
