package main

import (
	"os"
	"runtime"
)

// setProcs sets GOMAXPROCS for serve and bench and returns it: n when
// above 0; otherwise, unless the GOMAXPROCS environment variable chose,
// one more than the CPUs the process may use.
//
// Why one more: Go hands a CPU to a goroutine that became runnable (a code
// arriving while a campaign drains, a group commit done) only when one of
// its processors frees up, and a busy goroutine may keep one for its whole
// 10 ms slice; goroutines blocked in an fsync or a write also hold theirs
// for a while. With a processor more than the cores, the woken goroutine
// gets a thread at once and the kernel, which preempts at wakeup, shares
// the cores. On the 2-core machine (3 against 2, alternated): API NDJSON
// +8 %, single objects +17 %, critical p99 during a 1M burst 20-22 → 17 ms
// and p50 2.5 → 1.6 ms, bulk +3 %; end to end unchanged (-2 %, noise). 4
// cost the end to end 8 %. Setting it stops Go's own updates when the
// container's CPU limit changes: a restart picks a new limit up.
func setProcs(n int) int {
	if n <= 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return runtime.GOMAXPROCS(0)
		}
		runtime.SetDefaultGOMAXPROCS() // the default, whatever was set before
		n = runtime.GOMAXPROCS(0) + 1
	}
	runtime.GOMAXPROCS(n)
	return n
}
