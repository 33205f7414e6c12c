package providers

import (
	"fmt"
	"sync"
	"time"
)

// BreakerState is a circuit breaker's state.
type BreakerState uint8

const (
	Closed BreakerState = iota
	Open
	HalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// BreakerConfig sets when a breaker opens and how it recovers.
type BreakerConfig struct {
	// Window is the span over which the error rate is measured (10s), in
	// ten slices, so old outcomes fade out.
	Window time.Duration
	// ErrorRate opens the breaker when at least MinRequests outcomes in the
	// window failed at this rate (0.5).
	ErrorRate   float64
	MinRequests int // 20
	// ConsecutiveFailures opens it regardless of rate (5).
	ConsecutiveFailures int
	// OpenFor is how long it fails fast before letting probes through (5s).
	OpenFor time.Duration
	// Probes is how many requests half-open lets through; all must
	// succeed to close (3).
	Probes int
}

func (c *BreakerConfig) defaults() {
	if c.Window == 0 {
		c.Window = 10 * time.Second
	}
	if c.ErrorRate == 0 {
		c.ErrorRate = 0.5
	}
	if c.MinRequests == 0 {
		c.MinRequests = 20
	}
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.OpenFor == 0 {
		c.OpenFor = 5 * time.Second
	}
	if c.Probes == 0 {
		c.Probes = 3
	}
}

const breakerSlices = 10

// Breaker is a circuit breaker for one endpoint, on an injectable clock.
// It is hand-written rather than taken from sony/gobreaker because the
// engine needs a windowed error rate and a clock tests can drive.
type Breaker struct {
	cfg BreakerConfig
	now func() time.Time

	mu          sync.Mutex
	state       BreakerState
	openedAt    time.Time
	slices      [breakerSlices]struct{ ok, fail int }
	sliceAt     [breakerSlices]int64 // which slice number each entry holds
	consecutive int
	probesOut   int
	probesOK    int
	transitions int
	onChange    func(from, to BreakerState)
}

// NewBreaker returns a closed breaker; now may be nil for time.Now.
func NewBreaker(cfg BreakerConfig, now func() time.Time) *Breaker {
	cfg.defaults()
	if now == nil {
		now = time.Now
	}
	return &Breaker{cfg: cfg, now: now}
}

// OnStateChange registers a hook (metrics, logs) called on transitions,
// under the breaker's lock: it must not call back into the breaker.
func (b *Breaker) OnStateChange(fn func(from, to BreakerState)) {
	b.mu.Lock()
	b.onChange = fn
	b.mu.Unlock()
}

// Allow reports whether a request may go out now; when it returns true the
// caller must Record the outcome. While open it returns the time left.
func (b *Breaker) Allow() (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if b.state == Open {
		left := b.cfg.OpenFor - now.Sub(b.openedAt)
		if left > 0 {
			return false, left
		}
		b.set(HalfOpen)
		b.probesOut, b.probesOK = 0, 0
	}
	if b.state == HalfOpen {
		if b.probesOut >= b.cfg.Probes {
			return false, 0
		}
		b.probesOut++
	}
	return true, 0
}

// Record reports the outcome of an allowed request. Only endpoint health
// counts as failure: timeouts, transport errors, 5xx.
func (b *Breaker) Record(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	switch b.state {
	case HalfOpen:
		if !ok {
			b.trip(now)
			return
		}
		b.probesOK++
		if b.probesOK >= b.cfg.Probes {
			b.reset()
		}
		return
	case Open:
		return // a straggler from before the trip
	}
	s := b.slice(now)
	if ok {
		s.ok++
		b.consecutive = 0
		return
	}
	s.fail++
	b.consecutive++
	if b.consecutive >= b.cfg.ConsecutiveFailures {
		b.trip(now)
		return
	}
	var okN, failN int
	cur := now.UnixNano() / int64(b.cfg.Window/breakerSlices)
	for i := range b.slices {
		if cur-b.sliceAt[i] < breakerSlices {
			okN += b.slices[i].ok
			failN += b.slices[i].fail
		}
	}
	if okN+failN >= b.cfg.MinRequests && float64(failN) >= b.cfg.ErrorRate*float64(okN+failN) {
		b.trip(now)
	}
}

func (b *Breaker) slice(now time.Time) *struct{ ok, fail int } {
	n := now.UnixNano() / int64(b.cfg.Window/breakerSlices)
	i := n % breakerSlices
	if b.sliceAt[i] != n {
		b.sliceAt[i] = n
		b.slices[i].ok, b.slices[i].fail = 0, 0
	}
	return &b.slices[i]
}

func (b *Breaker) trip(now time.Time) {
	b.set(Open)
	b.openedAt = now
}

func (b *Breaker) reset() {
	b.set(Closed)
	b.consecutive = 0
	for i := range b.slices {
		b.slices[i].ok, b.slices[i].fail, b.sliceAt[i] = 0, 0, 0
	}
}

func (b *Breaker) set(s BreakerState) {
	if b.state == s {
		return
	}
	from := b.state
	b.state = s
	b.transitions++
	if b.onChange != nil {
		b.onChange(from, s)
	}
}

// State returns the current state (open turns half-open only on Allow).
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}
