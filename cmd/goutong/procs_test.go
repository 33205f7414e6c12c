package main

import (
	"runtime"
	"testing"
)

// TestSetProcs: 0 is one more than Go's default however often it is
// called (serve may be started twice in one process), n is n, and the
// GOMAXPROCS environment variable wins over 0.
func TestSetProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	t.Setenv("GOMAXPROCS", "")
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	for range 2 {
		if got := setProcs(0); got != def+1 || runtime.GOMAXPROCS(0) != def+1 {
			t.Fatalf("setProcs(0) = %d (GOMAXPROCS %d), want %d", got, runtime.GOMAXPROCS(0), def+1)
		}
	}
	if got := setProcs(5); got != 5 || runtime.GOMAXPROCS(0) != 5 {
		t.Fatalf("setProcs(5) = %d (GOMAXPROCS %d)", got, runtime.GOMAXPROCS(0))
	}
	t.Setenv("GOMAXPROCS", "5")
	if got := setProcs(0); got != 5 || runtime.GOMAXPROCS(0) != 5 {
		t.Fatalf("with GOMAXPROCS=5 set, setProcs(0) = %d (GOMAXPROCS %d), want it left at 5", got, runtime.GOMAXPROCS(0))
	}
}
