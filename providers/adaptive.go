package providers

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// AdaptiveLimit is a provider's token bucket whose rate follows the
// provider's answers: a 429 or Retry-After halves it (multiplicative
// decrease, never below Min) and pauses sends for the Retry-After; every
// fully successful batch adds Step back (additive increase, never above
// Max, the configured limit). The bucket is golang.org/x/time/rate; all
// methods take the time explicitly so tests run on a fake clock.
type AdaptiveLimit struct {
	mu          sync.Mutex
	lim         *rate.Limiter
	max, min    rate.Limit
	step        rate.Limit
	pausedUntil time.Time
	decreases   int
}

// NewAdaptiveLimit starts at max events/s with the given burst.
func NewAdaptiveLimit(max float64, burst int) *AdaptiveLimit {
	if burst < 1 {
		burst = 1
	}
	return &AdaptiveLimit{
		lim:  rate.NewLimiter(rate.Limit(max), burst),
		max:  rate.Limit(max),
		min:  rate.Limit(max / 100),
		step: rate.Limit(max / 50),
	}
}

// Reserve takes n tokens at now and returns how long the caller must wait
// before sending them (ok). When that wait would be longer than
// maxRecheck, or the bucket is in debt to an earlier reservation, or a
// Retry-After pauses it, it takes nothing and says when to ask again (at
// most maxRecheck away): the caller waits in short steps and sees a rate
// that climbed meanwhile. A batch larger than the burst, which no full
// bucket covers, is reserved once the bucket is full.
//
// Reserving up front for a long wait is what it refuses: at a throttled
// rate every sender's batch queued behind the last, each sender slept out
// a wait computed at that rate, and a channel stayed stalled long after
// the provider recovered and the rate climbed back (the provider-faults
// scenario: batches sent tens of seconds after the faults ended).
func (a *AdaptiveLimit) Reserve(now time.Time, n int) (wait time.Duration, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pausedUntil.After(now) {
		return min(a.pausedUntil.Sub(now), maxRecheck), false
	}
	tokens, perSec := a.lim.TokensAt(now), float64(a.lim.Limit())
	if tokens < 0 {
		return min(time.Duration(-tokens/perSec*float64(time.Second)), maxRecheck) + time.Millisecond, false
	}
	if need := float64(min(n, a.lim.Burst())); tokens < need && time.Duration((need-tokens)/perSec*float64(time.Second)) > maxRecheck {
		return maxRecheck, false
	}
	for n > 0 {
		k := min(n, a.lim.Burst())
		r := a.lim.ReserveN(now, k)
		wait = max(wait, r.DelayFrom(now))
		n -= k
	}
	return wait, true
}

// maxRecheck bounds how long a refused Reserve sends its caller away.
const maxRecheck = 250 * time.Millisecond

// OnThrottle lowers the rate after a 429 or Retry-After.
func (a *AdaptiveLimit) OnThrottle(now time.Time, retryAfter time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lim.SetLimitAt(now, max(a.min, a.lim.Limit()/2))
	if retryAfter > 0 && now.Add(retryAfter).After(a.pausedUntil) {
		a.pausedUntil = now.Add(retryAfter)
	}
	a.decreases++
}

// OnSuccess climbs back towards the configured rate.
func (a *AdaptiveLimit) OnSuccess(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.lim.Limit(); l < a.max {
		a.lim.SetLimitAt(now, min(a.max, l+a.step))
	}
}

// SetMax changes the configured limit at runtime; the current rate is
// clamped to it.
func (a *AdaptiveLimit) SetMax(now time.Time, max float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.max, a.min, a.step = rate.Limit(max), rate.Limit(max/100), rate.Limit(max/50)
	if a.lim.Limit() > a.max {
		a.lim.SetLimitAt(now, a.max)
	}
}

// Limit is the current rate in events/s.
func (a *AdaptiveLimit) Limit() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return float64(a.lim.Limit())
}
