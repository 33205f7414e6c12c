package providers

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/goutong/goutong/notification"
)

// Guarded wraps a Provider with its endpoint's circuit breaker and adaptive
// rate limit. Send fails fast (retriable, with the time until the breaker
// half-opens) while the breaker is open, and feeds every batch's outcome to
// both. The engine reserves from Limit before calling Send.
type Guarded struct {
	Provider
	Breaker *Breaker
	Limit   *AdaptiveLimit
	now     func() time.Time
}

// Guard wraps p; now may be nil for time.Now.
func Guard(p Provider, b *Breaker, l *AdaptiveLimit, now func() time.Time) *Guarded {
	if now == nil {
		now = time.Now
	}
	return &Guarded{Provider: p, Breaker: b, Limit: l, now: now}
}

// Available reports whether the breaker would let a request through.
func (g *Guarded) Available() bool { return g.Breaker.State() != Open || g.halfOpenDue() }

func (g *Guarded) halfOpenDue() bool {
	g.Breaker.mu.Lock()
	defer g.Breaker.mu.Unlock()
	return g.Breaker.state == Open && g.now().Sub(g.Breaker.openedAt) >= g.Breaker.cfg.OpenFor
}

// Send implements Provider.
func (g *Guarded) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	ok, left := g.Breaker.Allow()
	if !ok {
		fillAll(results, Result{Outcome: Retriable, Reason: ErrBreakerOpen.Error(), RetryAfter: left, Provider: g.Name()})
		return
	}
	g.Provider.Send(ctx, batch, results)
	healthy, throttled, allSent := true, false, true
	var retry time.Duration
	for _, r := range results {
		if r.Outcome != Sent {
			allSent = false
		}
		if r.Throttled {
			throttled = true
			retry = max(retry, r.RetryAfter)
		} else if r.Outcome == Retriable {
			healthy = false // timeout, transport error, 5xx
		}
	}
	g.Breaker.Record(healthy)
	now := g.now()
	switch {
	case throttled:
		g.Limit.OnThrottle(now, retry)
	case allSent:
		g.Limit.OnSuccess(now)
	}
}

// Failover sends each batch through the first available member, in order
// (or weighted at random among the available ones when weights are set),
// so that while one provider's breaker is open its channel keeps flowing
// through the next. Results name the member that answered.
type Failover struct {
	name    string
	members []*Guarded
	weights []int // empty: strict priority order
	rnd     func(n int) int
}

// NewFailover builds a failover over members; weights may be nil.
func NewFailover(name string, members []*Guarded, weights []int) *Failover {
	return &Failover{name: name, members: members, weights: weights, rnd: rand.IntN}
}

func (f *Failover) Name() string { return f.name }

// MaxBatch is the smallest of the members', so any member can take a batch.
func (f *Failover) MaxBatch() int {
	m := f.members[0].MaxBatch()
	for _, g := range f.members[1:] {
		m = min(m, g.MaxBatch())
	}
	return m
}

func (f *Failover) Concurrency() int {
	c := 0
	for _, g := range f.members {
		c = max(c, g.Concurrency())
	}
	return c
}

// Members returns the guarded members (for stats).
func (f *Failover) Members() []*Guarded { return f.members }

// Pick returns the member the next batch goes to, or nil when every
// breaker is open.
func (f *Failover) Pick() *Guarded {
	if len(f.weights) == len(f.members) {
		total := 0
		for i, g := range f.members {
			if g.Available() {
				total += f.weights[i]
			}
		}
		if total > 0 {
			r := f.rnd(total)
			for i, g := range f.members {
				if !g.Available() {
					continue
				}
				if r < f.weights[i] {
					return g
				}
				r -= f.weights[i]
			}
		}
		return nil
	}
	for _, g := range f.members {
		if g.Available() {
			return g
		}
	}
	return nil
}

// Send implements Provider.
func (f *Failover) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	g := f.Pick()
	if g == nil {
		fillAll(results, Result{Outcome: Retriable, Reason: "every provider of " + f.name + ": " + ErrBreakerOpen.Error(), Provider: f.name})
		return
	}
	g.Send(ctx, batch, results)
}
