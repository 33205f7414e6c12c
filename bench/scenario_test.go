package bench

import (
	"strings"
	"testing"
	"time"
)

func TestParseScenario(t *testing.T) {
	sc, err := ParseScenario(strings.NewReader(`
name: mine
latency_target: 100ms
channels:
  sms: {rate: 500, breaker: true}
loads:
  - {name: codes, channel: sms, priority: critical, rate: 100, rate_step: 50, step: 2s, for: 10s, stop_on_break: true, ttl: 1m}
  - {channel: email, priority: bulk, count: 1000}
faults:
  - {at: 1s, error_rate: 0.5, retry_after: 2s}
  - {at: 3s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if sc.Channels["sms"].Rate != 500 || !sc.Channels["sms"].Breaker || sc.Channels["email"].Rate != 100_000 {
		t.Fatalf("channels %+v", sc.Channels)
	}
	if l := sc.Loads[1]; l.Name != "email-bulk-1" || l.Batch != 1000 || l.Steady() {
		t.Fatalf("defaults of the second load: %+v", l)
	}
	codes := sc.Loads[0]
	if !codes.Rising() || codes.RateAt(0) != 100 || codes.RateAt(4500*time.Millisecond) != 200 {
		t.Fatalf("rate steps: %v %v", codes.RateAt(0), codes.RateAt(4500*time.Millisecond))
	}
	// 2 s at 100, 150, 200, 250, 300: 2,000 notifications.
	if got := codes.Expected(); got != 2000 {
		t.Fatalf("expected %d, want 2000", got)
	}
	if sc.Faults[0].RetryAfter.D() != 2*time.Second || sc.Drain.D() != 2*time.Minute || sc.Partitions != 8 {
		t.Fatalf("faults or defaults: %+v", sc)
	}
}

func TestParseScenarioErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{``, "empty"},
		{`name: x`, "loads"},
		{`name: Bad Name
loads: [{channel: sms, priority: bulk, count: 1}]`, "name"},
		{`name: x
loads: [{channel: fax, priority: bulk, count: 1}]`, "loads[0].channel"},
		{`name: x
loads: [{channel: sms, priority: urgent, count: 1}]`, "loads[0].priority"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1, rate: 5}]`, "not both"},
		{`name: x
loads: [{channel: sms, priority: bulk, rate: 5}]`, "loads[0].for"},
		{`name: x
loads: [{channel: sms, priority: bulk, rate: 5, for: 1s, rate_step: 5, step: 1s, stop_on_break: true}]`, "latency_target"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1, colour: red}]`, "colour"},
		{`name: x
loads: [{name: a, channel: sms, priority: bulk, count: 1}, {name: a, channel: sms, priority: bulk, count: 1}]`, "loads[1].name"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1}]
faults: [{at: 2s}, {at: 1s}]`, "faults[1].at"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1}]
faults: [{at: 1s, error_rate: 1.5}]`, "faults[0]: error_rate"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1}]
faults: [{at: 1s, outage: -1s}]`, "faults[0]: outage:"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1}]
faults: [{at: 1s, latency_min: 2s, latency_max: 1s}]`, "faults[0]: latency_min 2s is above latency_max 1s"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1, delay: 5m, ttl: 1m}]`, "loads[0].delay"},
		{`name: x
loads: [{channel: sms, priority: bulk, count: 1, ttl: soon}]`, "duration"},
		{`name: x
channels: {telegram: {rate: 5}}
loads: [{channel: sms, priority: bulk, count: 1}]`, "channels.telegram"},
	} {
		_, err := ParseScenario(strings.NewReader(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one naming %q", c.yaml, err, c.want)
		}
	}
}

func TestBuiltinScenarios(t *testing.T) {
	for _, name := range BuiltinNames {
		sc, err := Builtin(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sc.Name != name || sc.Description == "" {
			t.Errorf("%s: name %q, description %q", name, sc.Name, sc.Description)
		}
	}
	mb, _ := Builtin("marketing-burst")
	var total int64
	for _, l := range mb.Loads {
		total += l.Expected()
	}
	if total != 1_000_000 {
		t.Errorf("marketing-burst enqueues %d, the issue says 1,000,000", total)
	}
	if _, err := Builtin("nope"); err == nil || !strings.Contains(err.Error(), "otp-flood") {
		t.Errorf("unknown built-in: %v", err)
	}
}

func TestScaled(t *testing.T) {
	sc, err := Builtin("otp-during-burst")
	if err != nil {
		t.Fatal(err)
	}
	s := sc.Scaled(0.1, 0.5)
	burst, otp := s.Loads[0], s.Loads[1]
	if burst.Count != 30_000 {
		t.Errorf("burst count %d, want 30,000", burst.Count)
	}
	// Rates follow count/time: 500/s x 0.1 / 0.5 = 100/s for 12.5 s, a
	// tenth of the codes.
	if otp.Rate != 100 || otp.For.D() != 12500*time.Millisecond || otp.Start.D() != time.Second {
		t.Errorf("otp load %+v", otp)
	}
	if otp.Expected()*10 != sc.Loads[1].Expected() {
		t.Errorf("scaled otp sends %d, the full one %d", otp.Expected(), sc.Loads[1].Expected())
	}
	if s.Channels["sms"].Rate != 2000 || sc.Channels["sms"].Rate != 10000 {
		t.Errorf("channel rate %v (original %v)", s.Channels["sms"].Rate, sc.Channels["sms"].Rate)
	}
	if s.LatencyTarget != sc.LatencyTarget {
		t.Errorf("latency target scaled")
	}
}
