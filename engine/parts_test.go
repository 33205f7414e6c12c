package engine

import (
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

func TestPickerCriticalFirstAndWeightedShares(t *testing.T) {
	p, err := NewPicker(DefaultWeights)
	if err != nil {
		t.Fatal(err)
	}
	q := [notification.NumPriorities]int{5, 100, 100, 100}
	for range 5 {
		if pr, _ := p.Pick(q); pr != notification.Critical {
			t.Fatalf("picked %v with critical waiting", pr)
		}
		q[0]--
	}
	counts := map[notification.Priority]int{}
	var seq strings.Builder
	for range 20 {
		pr, ok := p.Pick(q)
		if !ok {
			t.Fatal("nothing picked")
		}
		counts[pr]++
		seq.WriteByte(pr.String()[0])
	}
	if counts[notification.High] != 12 || counts[notification.Normal] != 6 || counts[notification.Bulk] != 2 {
		t.Fatalf("shares %v over 20 picks, want 12:6:2", counts)
	}
	// Smooth: picks interleave instead of coming in runs.
	if got := seq.String(); strings.Contains(got, "hhhh") {
		t.Fatalf("picks in runs: %s", got)
	}
	// Only bulk waiting: bulk is served every time.
	if pr, _ := p.Pick([notification.NumPriorities]int{0, 0, 0, 3}); pr != notification.Bulk {
		t.Fatal(pr)
	}
	if _, ok := p.Pick([notification.NumPriorities]int{}); ok {
		t.Fatal("picked from empty lanes")
	}
	if _, err := NewPicker(map[notification.Priority]int{notification.High: 1, notification.Normal: 1}); err == nil {
		t.Fatal("a zero bulk weight (starvation) accepted")
	}
}

// Rate limits on a fake clock: over one simulated minute of saturation,
// bulk alone gets (1-reserve) of the rate, and critical sends made during a
// bulk flood wait no longer than the channel's own pace.
func TestChannelLimitReservedShare(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	l, err := NewChannelLimit(1000, 100, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	// A dispatcher that sends a batch of 10 whenever the limit allows.
	now, sent := start, 0
	for now.Before(start.Add(time.Minute)) {
		now = now.Add(l.Reserve(now, notification.Bulk, 10))
		sent += 10
	}
	if perSec := float64(sent) / 60; perSec < 780 || perSec > 820 {
		t.Fatalf("bulk alone sent %.0f/s, want about 800 (80%% of 1000)", perSec)
	}
	// Bulk has used its share; a critical send still gets tokens from the
	// reserved 20% at once.
	if w := l.Reserve(now, notification.Critical, 10); w > 20*time.Millisecond {
		t.Fatalf("critical waited %v behind bulk", w)
	}
	// Runtime change: halve the rate; bulk follows.
	if err := l.SetRate(now, 500); err != nil {
		t.Fatal(err)
	}
	t0, n := now, 0
	for now.Before(t0.Add(time.Minute)) {
		now = now.Add(l.Reserve(now, notification.Normal, 10))
		n += 10
	}
	if perSec := float64(n) / 60; perSec < 380 || perSec > 420 || l.Rate() != 500 {
		t.Fatalf("after SetRate(500) normal sent %.0f/s, want about 400", perSec)
	}
	// Batches larger than the burst are split, never refused.
	if w := l.Reserve(now, notification.High, 1000); w <= 0 {
		t.Fatal("a batch ten times the burst went through without waiting")
	}
	if _, err := NewChannelLimit(100, 10, 1); err == nil {
		t.Fatal("reserve of 100% accepted: bulk would never send")
	}
}

// The dispatcher's side of the limit: the budget it gathers a batch in,
// the batch it takes, and how long it sleeps when the budget is spent.
// 1024/s with a quarter reserved leaves 768/s to normal and bulk, and
// waits of 1/128 s are exact in binary, so every figure below is exact.
func TestChannelLimitBudgetTakeAndWaits(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	l, err := NewChannelLimit(1024, 64, 0.25)
	if err != nil {
		t.Fatal(err)
	}
	budget := func(at time.Time, urgent, low int) {
		t.Helper()
		if u, lo := l.Budget(at); u != urgent || lo != low {
			t.Fatalf("budget %d/%d, want %d/%d", u, lo, urgent, low)
		}
	}
	wait := func(what string, got, want time.Duration) {
		t.Helper()
		if got != want {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
	budget(start, 64, 48) // full buckets: the low one holds three quarters
	l.Take(start, 4, 40)  // urgent sends spend the channel's tokens only
	budget(start, 20, 8)
	l.Take(start, 12, 8)
	budget(start, 0, 0)
	wait("critical's next token", l.NextToken(start, notification.Critical), time.Second/1024)
	wait("bulk's next token", l.NextToken(start, notification.Bulk), time.Second/768)
	wait("six low sends", l.LowTimeFor(start, 6), time.Second*6/768)
	t1 := start.Add(time.Second / 128)
	budget(t1, 8, 6)
	wait("a token in hand", l.NextToken(t1, notification.Bulk), time.Millisecond/10)
	wait("six low sends, refilled", l.LowTimeFor(t1, 6), 0)
	wait("a seventh", l.LowTimeFor(t1, 7), time.Second/768)
	// Tokens taken past the budget are a debt, not a free batch.
	l.Take(t1, 20, 0)
	budget(t1, 0, 0)
	wait("critical after the overdraft", l.NextToken(t1, notification.Critical), time.Second*13/1024)
	l.Take(t1, 0, 200) // over both bursts at once
	budget(t1.Add(time.Second/8), 0, 0)
	wait("low after the overdraft", l.LowTimeFor(t1, 1), time.Second*195/768)
}

func TestBackoffFullJitterAndRetryAfter(t *testing.T) {
	var bounds []int64
	b := Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second, Rand: func(n int64) int64 { bounds = append(bounds, n); return n - 1 }}
	for attempt := 1; attempt <= 8; attempt++ {
		b.Delay(attempt, 0)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		if time.Duration(bounds[i]-1) != w*time.Millisecond {
			t.Fatalf("attempt %d: bound %v, want %v", i+1, time.Duration(bounds[i]-1), w*time.Millisecond)
		}
	}
	b.Rand = func(int64) int64 { return 0 }
	if d := b.Delay(1, 3*time.Second); d != 3*time.Second {
		t.Fatalf("Retry-After not honoured: %v", d)
	}
	if d := b.Delay(1000, 0); d != 0 {
		t.Fatalf("huge attempt: %v", d)
	}
	// A provider of one's own may hint anything; the cap holds it.
	b.MaxRetryAfter = 10 * time.Second
	if d := b.Delay(1, 100*365*24*time.Hour); d != 10*time.Second {
		t.Fatalf("Retry-After past the cap: %v", d)
	}
	if d := b.Delay(1, 3*time.Second); d != 3*time.Second {
		t.Fatalf("Retry-After under the cap: %v", d)
	}
}

// A retry must be due while the retry topic still holds it: a backoff or a
// Retry-After cap at or past its retention is refused at the start, as is
// a ring size that would panic or take the machine's memory, or parking
// tiers out of order.
func TestConfigRefusesWhatCannotRun(t *testing.T) {
	base := func() Config {
		return Config{Open: func(partition.ConsumerConfig) (partition.Log, error) { return nil, nil }, Dedupe: &dedupe.Store{},
			Channels: map[notification.Channel]ChannelConfig{notification.SMS: {Provider: providers.NewLog("log", io.Discard, nil)}}}
	}
	c := base()
	if err := c.defaults(); err != nil || c.Backoff.MaxRetryAfter != providers.MaxRetryAfter {
		t.Fatalf("defaults: %v, max Retry-After %v", err, c.Backoff.MaxRetryAfter)
	}
	big := base()
	big.RingSize = MaxRingSize + 1
	if err := big.defaults(); err == nil || !strings.Contains(err.Error(), "ring size") {
		t.Errorf("ring size past the bound: %v", err)
	}
	for _, tiers := range [][]ParkTier{{}, {{Hop: time.Minute, Suffix: "a", Retention: time.Minute}},
		{{Hop: time.Minute, Suffix: "a", Retention: time.Hour}, {Hop: time.Minute, Suffix: "b", Retention: time.Hour}},
		{{Hop: time.Minute, Retention: time.Hour}}} {
		c := base()
		c.Topics = DefaultTopics()
		c.Topics.ParkTiers = tiers
		if err := c.defaults(); err == nil || !strings.Contains(err.Error(), "parking") {
			t.Errorf("parking tiers %+v: %v", tiers, err)
		}
	}
	for _, b := range []Backoff{{Max: RetryRetention}, {MaxRetryAfter: RetryRetention}, {Max: 2 * time.Hour}} {
		c := base()
		c.Backoff = b
		if err := c.defaults(); err == nil || !strings.Contains(err.Error(), "retry topic's retention") {
			t.Errorf("backoff %+v: %v", b, err)
		}
	}
}

func BenchmarkChannelLimitReserve(b *testing.B) {
	l, _ := NewChannelLimit(1e9, 1000, 0.2)
	now := time.Unix(1_800_000_000, 0)
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(l.Reserve(now, notification.Bulk, 1))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkPicker(b *testing.B) {
	p, _ := NewPicker(DefaultWeights)
	q := [notification.NumPriorities]int{0, 10, 10, 10}
	b.ReportAllocs()
	for b.Loop() {
		p.Pick(q)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "picks/s")
}

func TestStatusHooksTopicNames(t *testing.T) {
	tp := DefaultTopics()
	if got := tp.StatusHooksTopic("acme-eu.1"); got != "goutong.status.hooks.acme-eu.1" {
		t.Fatalf("plain tenant: %q", got)
	}
	names := map[string]string{}
	for _, tenant := range []string{"a b", "a/b", "a_b", "", strings.Repeat("x", 300), strings.Repeat("x", 301), "客户"} {
		got := tp.StatusHooksTopic(tenant)
		if !regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`).MatchString(got) {
			t.Fatalf("tenant %q: topic %q is not a valid name", tenant, got)
		}
		if other, ok := names[got]; ok {
			t.Fatalf("tenants %q and %q share the topic %q", other, tenant, got)
		}
		names[got] = tenant
	}
}

// The poll's urgent records go first; the others keep their order, so
// every partition is still read in offset order.
func TestSplitUrgentKeepsOrder(t *testing.T) {
	e := &Engine{cfg: Config{Topics: DefaultTopics()}}
	lane := e.cfg.Topics.Lane
	var recs []partition.Record
	for i, p := range []notification.Priority{notification.Bulk, notification.Critical, notification.Normal, notification.High,
		notification.Bulk, notification.Critical} {
		recs = append(recs, partition.Record{Topic: lane(p), Offset: int64(i)})
	}
	recs = append(recs, partition.Record{Topic: e.cfg.Topics.Retry, Offset: 6})
	urgent, rest := e.splitUrgent(recs)
	var got []int64
	for _, r := range append(urgent, rest...) {
		got = append(got, r.Offset)
	}
	if want := []int64{1, 3, 5, 0, 2, 4, 6}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// One topic for every priority: nothing moves.
	e.cfg.Topics.Lanes = [notification.NumPriorities]string{}
	if urgent, rest := e.splitUrgent(recs[:3]); len(urgent) != 0 || len(rest) != 3 {
		t.Fatalf("single topic split %d/%d", len(urgent), len(rest))
	}
}

// The parking topics are consumed, created with their tiers' retention,
// and known by name; without Park there are none.
func TestParkingTopics(t *testing.T) {
	top := DefaultTopics()
	specs := map[string]time.Duration{}
	for _, s := range top.Specs(8) {
		specs[s.Name] = s.RetentionAge
	}
	for i, want := range map[string]time.Duration{"goutong.park.1m": 2 * time.Hour, "goutong.park.10m": 2 * time.Hour, "goutong.park.1h": 6 * time.Hour} {
		if specs[i] != want || !slices.Contains(top.Consumed(), i) || top.parkTier(i) < 0 {
			t.Errorf("%s: retention %v (want %v), consumed %v", i, specs[i], want, slices.Contains(top.Consumed(), i))
		}
	}
	if top.parkTier(top.Retry) >= 0 || top.parkTier("goutong.park.2h") >= 0 || top.heapHorizon() != 10*time.Minute {
		t.Error("parkTier or heapHorizon wrong")
	}
	top.Park = ""
	for _, name := range top.Consumed() {
		if strings.Contains(name, "park") {
			t.Errorf("parking off, yet %s is consumed", name)
		}
	}
}

// Retries go to a topic per priority, kept for RetryRetention, and the
// mixed retry topic of earlier versions is still consumed.
func TestRetryLanes(t *testing.T) {
	top := DefaultTopics()
	specs := map[string]time.Duration{}
	for _, s := range top.Specs(8) {
		specs[s.Name] = s.RetentionAge
	}
	for p := notification.Critical; p <= notification.Bulk; p++ {
		name := top.RetryLane(p)
		if name != "goutong.retry."+p.String() || specs[name] != RetryRetention || !top.isRetry(name) || !slices.Contains(top.Consumed(), name) {
			t.Errorf("%v: retry lane %q, retention %v, consumed %v", p, name, specs[name], slices.Contains(top.Consumed(), name))
		}
	}
	if !slices.Contains(top.Consumed(), top.Retry) || specs[top.Retry] != RetryRetention || !top.isRetry(top.Retry) || top.isRetry(top.Lane(notification.Bulk)) {
		t.Error("the mixed retry topic is not consumed as a retry topic")
	}
	top.RetryLanes = [notification.NumPriorities]string{}
	if top.RetryLane(notification.Critical) != top.Retry || top.isRetry("") {
		t.Error("without retry lanes, retries go to the mixed topic")
	}
}
