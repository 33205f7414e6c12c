package bench

import (
	"syscall"
	"time"
)

// ProcessCPU is the CPU time (user and system) this process has used:
// the figure that does not move with the other tenants of a shared
// machine, where throughput does.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
