package bench

import (
	"context"
	"math"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// runScaled runs a built-in scenario shrunk by count and time factors.
func runScaled(t *testing.T, name string, count, timeScale float64, kafka bool) *ScenarioResult {
	t.Helper()
	sc, err := Builtin(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, sc.Scaled(count, timeScale), Options{KafkaFake: kafka, Dir: t.TempDir(), Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		(&Results{Machine: Machine(), Scale: count, TimeScale: timeScale, Scenarios: []ScenarioResult{*res}}).Summary(os.Stderr)
	}
	return res
}

// checkAccounted: every accepted notification was delivered once, dead-
// lettered or expired, and the run settled.
func checkAccounted(t *testing.T, r *ScenarioResult) {
	t.Helper()
	if r.Unsettled || r.Lost != 0 || r.ProviderDuplicates != 0 {
		t.Fatalf("%s: unsettled %v, lost %d, provider duplicates %d", r.Name, r.Unsettled, r.Lost, r.ProviderDuplicates)
	}
	if r.Delivered+r.DeadLetters+r.Expired != r.Accepted {
		t.Fatalf("%s: delivered %d + dead letters %d + expired %d != accepted %d", r.Name, r.Delivered, r.DeadLetters, r.Expired, r.Accepted)
	}
	if len(r.Series) < 2 {
		t.Fatalf("%s: %d samples", r.Name, len(r.Series))
	}
	var acked int64
	for _, l := range r.Latency {
		acked += l.Count
		if l.Count > 0 && !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max && l.Max > 0) {
			t.Fatalf("%s: percentiles out of order: %+v", r.Name, l)
		}
	}
	if acked != r.Delivered {
		t.Fatalf("%s: histograms hold %d acks, the mock counted %d", r.Name, acked, r.Delivered)
	}
	if r.CPUSeconds <= 0 || r.CPUSeconds > r.Seconds*float64(runtime.NumCPU())*1.05 ||
		math.Abs(r.CPUMicrosPerNotification-r.CPUSeconds*1e6/float64(max(r.Accepted, 1))) > 1 {
		t.Fatalf("%s: CPU %.3fs (%.1f µs a notification) over %.1fs on %d CPUs", r.Name, r.CPUSeconds,
			r.CPUMicrosPerNotification, r.Seconds, runtime.NumCPU())
	}
}

func TestMarketingBurst(t *testing.T) {
	r := runScaled(t, "marketing-burst", 0.005, 0.1, false)
	checkAccounted(t, r)
	if r.Accepted != 5000 || r.Delivered != 5000 {
		t.Fatalf("accepted %d, delivered %d, want 5,000", r.Accepted, r.Delivered)
	}
	if r.Disk.BufferBytesPerNotification <= 0 || r.Disk.DedupeBytesPerNotification <= 0 || r.Channels["email"].Batch != 1000 {
		t.Fatalf("disk %+v, channels %+v", r.Disk, r.Channels)
	}
}

func TestOTPDuringBurstKeepsCodesAhead(t *testing.T) {
	r := runScaled(t, "otp-during-burst", 0.01, 0.2, false)
	checkAccounted(t, r)
	var crit, bulk *Latency
	for i := range r.Latency {
		switch r.Latency[i].Priority {
		case "critical":
			crit = &r.Latency[i]
		case "bulk":
			bulk = &r.Latency[i]
		}
	}
	if crit == nil || bulk == nil || crit.Count == 0 {
		t.Fatalf("latency %+v", r.Latency)
	}
	// The burst takes seconds to drain at the channel's limit; codes sent
	// meanwhile must not wait for it.
	if crit.P99 >= bulk.P50 {
		t.Fatalf("critical p99 %.1f ms is not ahead of the bulk median %.1f ms", crit.P99, bulk.P50)
	}
}

// A rising load finds a limit the test sets, not the machine: the mock
// answers SMS in 100 ms and the channel has three requests in flight (two
// senders and the urgent one), so it carries 30 codes/s; the load climbs
// 5/s every second from 5/s and must break a few steps past that, well
// before its last step (75/s).
func TestOTPFloodFindsItsLimit(t *testing.T) {
	sc, err := ParseScenario(strings.NewReader(`
name: flood-limit
latency_target: 1s
channels: {sms: {rate: 100000, concurrency: 2}}
loads:
  - {name: otp, channel: sms, priority: critical, rate: 5, rate_step: 5, step: 1s, for: 15s, stop_on_break: true, ttl: 5m, batch: 10}
faults:
  - {at: 0s, latency_min: 100ms, latency_max: 100ms}
drain: 1m
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Run(ctx, sc, Options{Dir: t.TempDir(), Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	checkAccounted(t, r)
	l := r.Loads[0]
	if testing.Verbose() {
		t.Logf("held %v/s, broke at %v/s: %s", l.MaxGoodRate, l.BrokeAt, l.BreakReason)
	}
	if l.MaxGoodRate < 15 || l.BrokeAt <= l.MaxGoodRate || l.BrokeAt > 70 || l.BreakReason == "" {
		t.Fatalf("held %v/s, broke at %v/s (%q); the channel carries 30/s", l.MaxGoodRate, l.BrokeAt, l.BreakReason)
	}
}

// A scheduled campaign larger than the delay heap: what the heap cannot
// hold goes through the parking topics, and nothing goes out early.
func TestScheduledCampaignNotEarly(t *testing.T) {
	sc, err := Builtin("scheduled-campaign")
	if err != nil {
		t.Fatal(err)
	}
	sc = sc.Scaled(0.01, 0.2) // 2,500 e-mails 4 s ahead
	sc.MaxDelayed = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Run(ctx, sc, Options{Dir: t.TempDir(), Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		(&Results{Machine: Machine(), Scenarios: []ScenarioResult{*r}}).Summary(os.Stderr)
	}
	checkAccounted(t, r)
	c := r.Loads[0]
	if c.Name != "campaign" || c.Accepted != 2500 || c.Latency.Count != c.Accepted || c.Early != 0 {
		t.Fatalf("campaign: %+v; want 2,500 sent, none early", c)
	}
	if r.Parked == 0 {
		t.Fatal("nothing was parked: the heap held the whole campaign")
	}
}

func TestAlertStormDedupes(t *testing.T) {
	r := runScaled(t, "alert-storm", 0.01, 0.2, false)
	checkAccounted(t, r)
	// 2,000 and 500 distinct alerts, scaled: 20 and 5, each sent once.
	if r.Delivered != 25 || r.Accepted != 25 || r.Repeats == 0 {
		t.Fatalf("delivered %d, accepted %d, repeats %d; want 25 sent once and the rest answered as repeats", r.Delivered, r.Accepted, r.Repeats)
	}
}

func TestProviderFaults(t *testing.T) {
	r := runScaled(t, "provider-faults", 0.02, 0.2, false)
	checkAccounted(t, r)
	if r.Retries == 0 {
		t.Fatal("no retries under 5xx, 429 and an outage")
	}
	// The newsletter's recipients with key%10,000 < 10 are refused for
	// good: 0.1 % of them.
	var news int64
	for _, l := range r.Loads {
		if l.Name == "newsletter" {
			news = l.Accepted
		}
	}
	want := min(news, 10)
	if r.DeadLetters != want {
		t.Fatalf("dead letters %d, want the %d refused recipients", r.DeadLetters, want)
	}
}

func TestScenarioOnKafka(t *testing.T) {
	r := runScaled(t, "otp-during-burst", 0.005, 0.2, true)
	checkAccounted(t, r)
	if r.Backend != "kfake" || r.Disk.BufferBytesPerNotification != 0 {
		t.Fatalf("backend %s, disk %+v", r.Backend, r.Disk)
	}
}
