package providers

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goutong/goutong/notification"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newFake() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

// A walk through the breaker's states on a fake clock.
func TestBreakerTransitions(t *testing.T) {
	clk := newFake()
	b := NewBreaker(BreakerConfig{Window: 10 * time.Second, ErrorRate: 0.5, MinRequests: 10, ConsecutiveFailures: 4,
		OpenFor: 5 * time.Second, Probes: 2}, clk.Now)
	var changes []string
	b.OnStateChange(func(from, to BreakerState) { changes = append(changes, from.String()+"->"+to.String()) })
	rec := func(ok bool) {
		t.Helper()
		if allowed, _ := b.Allow(); !allowed {
			t.Fatalf("request refused in state %v", b.State())
		}
		b.Record(ok)
	}
	expect := func(step string, want BreakerState) {
		t.Helper()
		if got := b.State(); got != want {
			t.Fatalf("%s: state %v, want %v (transitions %v)", step, got, want, changes)
		}
	}
	rec(false)
	rec(false)
	rec(false)
	rec(true)
	expect("three failures then a success", Closed)
	for range 4 {
		rec(false)
	}
	expect("four consecutive failures", Open)
	if allowed, left := b.Allow(); allowed || left != 5*time.Second {
		t.Fatalf("open breaker allowed a request (left %v)", left)
	}
	clk.Add(4 * time.Second)
	if allowed, _ := b.Allow(); allowed {
		t.Fatal("allowed before OpenFor elapsed")
	}
	clk.Add(time.Second)
	rec(false) // the first probe fails
	expect("failed probe", Open)
	clk.Add(5 * time.Second)
	rec(true)
	expect("one of two probes ok", HalfOpen)
	if allowed, _ := b.Allow(); !allowed {
		t.Fatal("second probe refused")
	}
	if allowed, _ := b.Allow(); allowed {
		t.Fatal("a third request let through while half-open with two probes")
	}
	b.Record(true)
	expect("both probes ok", Closed)
	for i := range 10 {
		rec(i%2 == 0)
	}
	expect("50% errors over 10 requests", Open)
	want := "closed->open open->half-open half-open->open open->half-open half-open->closed closed->open"
	if got := strings.Join(changes, " "); got != want {
		t.Fatalf("transitions %s\nwant %s", got, want)
	}
}

// Errors spread beyond the window do not trip it.
func TestBreakerWindowForgets(t *testing.T) {
	clk := newFake()
	b := NewBreaker(BreakerConfig{Window: 10 * time.Second, MinRequests: 4, ConsecutiveFailures: 100}, clk.Now)
	for range 30 {
		b.Allow()
		b.Record(false)
		b.Allow()
		b.Record(true)
		b.Allow()
		b.Record(true)
		clk.Add(11 * time.Second)
	}
	if b.State() != Closed {
		t.Fatal("33% errors tripped a 50% breaker")
	}
}

func TestAdaptiveLimitAIMD(t *testing.T) {
	clk := newFake()
	a := NewAdaptiveLimit(1000, 100)
	if w, ok := a.Reserve(clk.Now(), 100); w != 0 || !ok {
		t.Fatalf("a full bucket made us wait %v (%v)", w, ok)
	}
	if w, ok := a.Reserve(clk.Now(), 100); !ok || w < 90*time.Millisecond || w > 110*time.Millisecond {
		t.Fatalf("100 more at 1000/s should wait ~100ms, got %v (%v)", w, ok)
	}
	// Behind that debt nothing is reserved: ask again when it is paid.
	if w, ok := a.Reserve(clk.Now(), 1); ok || w < 90*time.Millisecond || w > 110*time.Millisecond {
		t.Fatalf("behind 100 tokens of debt: %v (%v), want a refusal to ask again in ~100ms", w, ok)
	}
	clk.Add(100 * time.Millisecond)
	a.OnThrottle(clk.Now(), 2*time.Second)
	if l := a.Limit(); l != 500 {
		t.Fatalf("after a 429: %v/s, want 500", l)
	}
	if waited := reserveAsSenders(clk, a, 1); waited < 2*time.Second {
		t.Fatalf("Retry-After not honoured: waited %v", waited)
	}
	for range 10 {
		a.OnThrottle(clk.Now(), 0)
	}
	if l := a.Limit(); l != 10 {
		t.Fatalf("floor: %v, want 10 (1%% of the limit)", l)
	}
	for range 100 {
		a.OnSuccess(clk.Now())
	}
	if l := a.Limit(); l != 1000 {
		t.Fatalf("climbed back to %v, want the configured 1000 and no more", l)
	}
	a.SetMax(clk.Now(), 200)
	if l := a.Limit(); l != 200 {
		t.Fatalf("SetMax: %v", l)
	}
}

// reserveAsSenders asks a for n tokens as the engine's senders do, asking
// again after each refusal, and returns the time it took on clk.
func reserveAsSenders(clk *fakeClock, a *AdaptiveLimit, n int) time.Duration {
	start := clk.Now()
	for {
		w, ok := a.Reserve(clk.Now(), n)
		clk.Add(w)
		if ok {
			return clk.Now().Sub(start)
		}
	}
}

// After a 429 storm threw the rate to its floor and the provider
// recovered, a sender waits for what one batch costs, not for the debt
// every sender's batch ran up at the floor.
func TestAdaptiveLimitRecoversWithoutDebt(t *testing.T) {
	clk := newFake()
	a := NewAdaptiveLimit(1000, 500)
	for range 10 {
		a.OnThrottle(clk.Now(), 0)
	}
	// Eight senders with batches of 500 at 10/s: one reserves (its own
	// wait), the rest are refused instead of queueing 50 s apart.
	w, ok := a.Reserve(clk.Now(), 500)
	if !ok || w != 0 {
		t.Fatalf("the first batch from a full bucket: %v (%v)", w, ok)
	}
	for range 7 {
		if w, ok := a.Reserve(clk.Now(), 500); ok || w > maxRecheck+time.Millisecond {
			t.Fatalf("a batch behind the first at 10/s: %v (%v), want a refusal within %v", w, ok, maxRecheck)
		}
	}
	// The provider answers again; the rate climbs back to 1000/s.
	for range 100 {
		a.OnSuccess(clk.Now())
	}
	// The first batch's 500 tokens are paid in 0.5 s at 1000/s, then the
	// next batch goes; queued at 10/s it would have waited 50 s.
	if waited := reserveAsSenders(clk, a, 500); waited > time.Second {
		t.Fatalf("the next batch after recovery waited %v", waited)
	}
}

// stubProvider answers every item with a fixed result.
type stubProvider struct {
	name  string
	r     Result
	calls int
	mu    sync.Mutex
}

func (s *stubProvider) Name() string     { return s.name }
func (s *stubProvider) MaxBatch() int    { return 10 }
func (s *stubProvider) Concurrency() int { return 1 }
func (s *stubProvider) Send(_ context.Context, b []*notification.Notification, res []Result) {
	s.mu.Lock()
	s.calls++
	r := s.r
	s.mu.Unlock()
	r.Provider = s.name
	fillAll(res, r)
}

func (s *stubProvider) set(r Result) { s.mu.Lock(); s.r = r; s.mu.Unlock() }

func TestGuardedAndFailover(t *testing.T) {
	clk := newFake()
	primary := &stubProvider{name: "primary", r: Result{Outcome: Retriable, Reason: "HTTP 503"}}
	backup := &stubProvider{name: "backup", r: Result{Outcome: Sent, MessageID: "b"}}
	cfg := BreakerConfig{ConsecutiveFailures: 3, OpenFor: 5 * time.Second, Probes: 1}
	gp := Guard(primary, NewBreaker(cfg, clk.Now), NewAdaptiveLimit(100, 10), clk.Now)
	gb := Guard(backup, NewBreaker(cfg, clk.Now), NewAdaptiveLimit(100, 10), clk.Now)
	f := NewFailover("sms", []*Guarded{gp, gb}, nil)
	batch := []*notification.Notification{otp()}
	res := make([]Result, 1)
	for range 3 {
		f.Send(t.Context(), batch, res)
		if res[0].Provider != "primary" || res[0].Outcome != Retriable {
			t.Fatalf("%+v", res[0])
		}
	}
	// The primary's breaker is open: the channel flows through the backup.
	f.Send(t.Context(), batch, res)
	if res[0].Provider != "backup" || res[0].Outcome != Sent {
		t.Fatalf("failover: %+v", res[0])
	}
	// Direct sends to the open primary fail fast without calling it.
	calls := primary.calls
	gp.Send(t.Context(), batch, res)
	if primary.calls != calls || res[0].Reason != ErrBreakerOpen.Error() || res[0].RetryAfter != 5*time.Second {
		t.Fatalf("open breaker did not fail fast: %+v", res[0])
	}
	// After OpenFor the primary gets a probe; it recovered, so it closes.
	primary.set(Result{Outcome: Sent, MessageID: "p"})
	clk.Add(5 * time.Second)
	f.Send(t.Context(), batch, res)
	if res[0].Provider != "primary" || gp.Breaker.State() != Closed {
		t.Fatalf("recovery: %+v, %v", res[0], gp.Breaker.State())
	}
	// Throttling lowers the primary's rate; it does not count against health.
	primary.set(Result{Outcome: Retriable, Throttled: true, RetryAfter: time.Second})
	for range 5 {
		f.Send(t.Context(), batch, res)
	}
	if gp.Breaker.State() != Closed || gp.Limit.Limit() >= 100 {
		t.Fatalf("429s: breaker %v, limit %v", gp.Breaker.State(), gp.Limit.Limit())
	}
	// Every breaker open: retriable, naming the channel.
	primary.set(Result{Outcome: Retriable, Reason: "timeout"})
	backup.set(Result{Outcome: Retriable, Reason: "timeout"})
	for range 10 {
		gp.Send(t.Context(), batch, res)
		gb.Send(t.Context(), batch, res)
	}
	f.Send(t.Context(), batch, res)
	if res[0].Outcome != Retriable || res[0].Provider != "sms" {
		t.Fatalf("all open: %+v", res[0])
	}
}

func TestWeightedFailover(t *testing.T) {
	clk := newFake()
	a := Guard(&stubProvider{name: "a", r: Result{Outcome: Sent}}, NewBreaker(BreakerConfig{}, clk.Now), NewAdaptiveLimit(10, 1), clk.Now)
	b := Guard(&stubProvider{name: "b", r: Result{Outcome: Sent}}, NewBreaker(BreakerConfig{}, clk.Now), NewAdaptiveLimit(10, 1), clk.Now)
	f := NewFailover("email", []*Guarded{a, b}, []int{3, 1})
	draws := []int{0, 1, 2, 3}
	f.rnd = func(n int) int { d := draws[0]; draws = draws[1:]; return d % n }
	var got []string
	for range 4 {
		got = append(got, f.Pick().Name())
	}
	if want := []string{"a", "a", "a", "b"}; !equal(got, want) {
		t.Fatalf("weighted picks %v, want %v", got, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
