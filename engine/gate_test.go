package engine

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
)

// blockedFor reports whether enter is still blocked after d; if it is, it
// returns a channel closed once enter returns.
func blockedFor(d time.Duration, enter func()) (bool, <-chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		enter()
	}()
	select {
	case <-done:
		return false, done
	case <-time.After(d):
		return true, done
	}
}

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal(what)
	}
}

// TestLowGate: with no urgent batch, every sender may send bulk; while one
// is pending, and for the hold after the last one was sent, bulk sends
// beyond an eighth of the senders wait; after the hold bulk takes the whole
// width again.
func TestLowGate(t *testing.T) {
	g := newLowGate(16)
	for range 16 {
		g.enterLow() // no urgent work: all sixteen go at once
	}
	for range 16 {
		g.exitLow()
	}
	g.hold = time.Hour // the hold must not end during the first part
	g.enterUrgent()
	g.enterLow()
	g.enterLow() // the eighth: two
	blocked, third := blockedFor(20*time.Millisecond, g.enterLow)
	if !blocked {
		t.Fatal("a third bulk send went while an urgent batch was pending")
	}
	g.exitLow() // a slot within the eighth frees: the third goes
	waitClosed(t, third, "a freed slot did not let the third bulk send go")
	g.exitUrgent() // the last urgent batch sent: the hold begins
	if blocked, _ := blockedFor(20*time.Millisecond, g.enterLow); !blocked {
		t.Fatal("bulk widened right after the last urgent batch: no hold")
	}

	g = newLowGate(16)
	g.hold = 50 * time.Millisecond
	g.enterUrgent()
	g.enterLow()
	g.enterLow()
	g.exitUrgent()
	blocked, third = blockedFor(0, g.enterLow)
	waitClosed(t, third, "bulk still narrow long after the hold")
	if !blocked {
		// Not a failure of the gate if the machine stalled 50 ms between the
		// exit and the enter; the first part already showed the hold.
		t.Log("the hold had passed before the third bulk send asked")
	}
}

// appendN makes n distinct, valid ULIDs in increasing order, as n calls
// of append would, and the event encoder hands out the ids reserveIDs made
// before making more.
func TestIDsInOneCall(t *testing.T) {
	src := newIDSource()
	for _, n := range []int{0, 1, 2, 1000} {
		buf := src.appendN([]byte("prefix"), n)
		if len(buf) != len("prefix")+n*ulid.EncodedSize {
			t.Fatalf("n=%d: %d bytes", n, len(buf))
		}
		prev := ""
		for i := range n {
			s := string(buf[len("prefix")+i*ulid.EncodedSize:][:ulid.EncodedSize])
			if _, err := ulid.ParseStrict(s); err != nil {
				t.Fatalf("n=%d, id %d %q: %v", n, i, s, err)
			}
			if s <= prev {
				t.Fatalf("n=%d, id %d %q after %q", n, i, s, prev)
			}
			prev = s
		}
	}
	var w eventEncoder
	w.reserveIDs(src, 2)
	a, b := w.id(src), w.id(src)
	w.buf = append(w.buf, make([]byte, 4096)...) // the buffer moves; the ids stay
	c := w.id(src)
	if a == b || b == c || a == c || a != string(w.buf[:ulid.EncodedSize]) || len(c) != ulid.EncodedSize {
		t.Fatalf("ids %q %q %q", a, b, c)
	}
}
