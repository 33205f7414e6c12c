package engine

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"
)

// OpenStatusOn opens a status store on fs: tests crash an in-memory one.
func OpenStatusOn(fs vfs.FS, dir string) (*StatusStore, error) {
	return openStatus(dir, time.Hour, true, fs)
}

// WriteDrainBacklog writes n notifications' accepted and sent events to st
// the way a drain does: accepted in order, then sent across 32 lanes at
// once, so every flush of the sends spans the whole range of ids and
// overlaps the others. It returns the ids in the order they were sent and
// the events written a second.
func WriteDrainBacklog(tb testing.TB, st *StatusStore, n int) (sent []string, eventsPerSec float64) {
	const lanes = 32
	n -= n % lanes
	now := time.Now().UTC()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = ulid.MustNew(ulid.Timestamp(now.Add(time.Duration(i)*time.Microsecond)), ulid.DefaultEntropy()).String()
	}
	order := make([]int, n)
	evs := make([]StatusEvent, 0, 1000)
	start := time.Now()
	for _, state := range []State{StateAccepted, StateSent} {
		for k := range n / lanes {
			for lane := range lanes {
				if state == StateAccepted {
					order[k*lanes+lane] = k*lanes + lane
				} else {
					order[k*lanes+lane] = lane*(n/lanes) + k
				}
			}
		}
		for i := 0; i < n; i += cap(evs) {
			evs = evs[:0]
			for _, j := range order[i:min(n, i+cap(evs))] {
				at := now.Add(time.Duration(j) * time.Microsecond)
				if state == StateSent {
					at = at.Add(time.Minute)
				}
				evs = append(evs, StatusEvent{EventID: ids[j], ID: ids[j], State: state, At: at, Tenant: "acme",
					Channel: "webhook", Priority: "bulk", Attempts: 1})
			}
			if err := st.Apply(evs); err != nil {
				tb.Fatal(err)
			}
		}
	}
	sent = make([]string, n)
	for i, j := range order {
		sent[i] = ids[j]
	}
	return sent, 2 * float64(n) / time.Since(start).Seconds()
}

// FailOwnApply makes e behave as after a failed write of its own events to
// the status store (a Pebble error no test can cause on demand).
func FailOwnApply(e *Engine) { e.ownApplyFailed.Store(true) }
