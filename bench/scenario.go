// Package bench runs Goutong's capacity scenarios: the real engine
// in-process (embedded log, or kfake over loopback) against the mock
// provider, driven by load generators through the engine's ingest path.
// It measures throughput, latency percentiles (HDR histograms), backlog,
// retries, dead letters, duplicates and losses as the mock provider counts
// them, writes the results as JSON and as a self-contained HTML report, and
// turns results plus a target into a capacity plan.
package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers/mockserver"
)

// Duration is a time.Duration written as "30s" in scenario files.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 30s or 250ms", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Scenario is one run: the channels and their limits, the loads, the
// provider faults over time, and when the run ends.
type Scenario struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Channels sets each channel's token bucket (sends/s), batch size and
	// provider concurrency; channels not named get the defaults of
	// ChannelSpec. A breaker guards the provider when Breaker is set.
	Channels map[string]ChannelSpec `yaml:"channels"`
	Loads    []Load                 `yaml:"loads"`
	Faults   []FaultStep            `yaml:"faults"`
	// LatencyTarget is the p99 (acceptance to provider ack) a rising load
	// must hold; past it the load stops and its last good rate is reported.
	LatencyTarget Duration `yaml:"latency_target"`
	// Drain bounds how long the run waits, once every load is done, for
	// every accepted notification to be finished (default 2m).
	Drain Duration `yaml:"drain"`
	// Engine sizing (defaults as goutong serve: 8 partitions, 8192 slots).
	Partitions  int `yaml:"partitions"`
	RingSize    int `yaml:"ring_size"`
	MaxAttempts int `yaml:"max_attempts"`
	MaxDelayed  int `yaml:"max_delayed"` // the delay heap's records (default 100,000)
}

// ChannelSpec is one channel's limits in a scenario.
type ChannelSpec struct {
	Rate        float64 `yaml:"rate"`        // sends/s (default 100,000: the node, not the bucket, is the limit)
	Batch       int     `yaml:"batch"`       // provider batch size (0: the adapter's maximum)
	Concurrency int     `yaml:"concurrency"` // provider calls in flight (0: the adapter's)
	Breaker     bool    `yaml:"breaker"`     // guard the provider with a circuit breaker
}

// Load is one stream of notifications.
type Load struct {
	Name     string `yaml:"name"`
	Channel  string `yaml:"channel"`
	Priority string `yaml:"priority"`
	// Start is when the load begins, from the start of the run.
	Start Duration `yaml:"start"`
	// Count > 0 makes a burst: Count notifications enqueued at once, as
	// fast as ingest takes them.
	Count int `yaml:"count"`
	// Rate > 0 makes a steady load of Rate notifications/s for For; with
	// Step and RateStep the rate rises by RateStep every Step.
	Rate     float64  `yaml:"rate"`
	For      Duration `yaml:"for"`
	RateStep float64  `yaml:"rate_step"`
	Step     Duration `yaml:"step"`
	// StopOnBreak ends a rising load at the first step whose p99 passes
	// the scenario's latency_target or whose backlog passes what the
	// target allows; its last good rate is the result.
	StopOnBreak bool `yaml:"stop_on_break"`
	// DistinctKeys > 0 cycles the idempotency keys over that many values,
	// so every notification after the first DistinctKeys is a repeat.
	DistinctKeys int `yaml:"distinct_keys"`
	// TTL sets each notification's expiry (a verification code's life).
	TTL Duration `yaml:"ttl"`
	// Delay schedules each notification (its not_before) this long after
	// it is made: a campaign set for a time. Its latency is then measured
	// from that time, not from acceptance, and a send before it counts as
	// early.
	Delay Duration `yaml:"delay"`
	// Batch is how many notifications one ingest call carries (default
	// 1,000 for bursts; steady loads send what is due every 10 ms).
	Batch int `yaml:"batch"`
	// Invalid is the share of recipients the mock refuses (permanent
	// failures that end in dead letters).
	Invalid float64 `yaml:"invalid"`
}

// FaultStep sets the mock provider's faults from At on, until the next step.
type FaultStep struct {
	At              Duration `yaml:"at"`
	ErrorRate       float64  `yaml:"error_rate"`
	ThrottleRate    float64  `yaml:"throttle_rate"`
	RetryAfter      Duration `yaml:"retry_after"`
	SlowRate        float64  `yaml:"slow_rate"`
	SlowDelay       Duration `yaml:"slow_delay"`
	LatencyMin      Duration `yaml:"latency_min"`
	LatencyMax      Duration `yaml:"latency_max"`
	ItemFailureRate float64  `yaml:"item_failure_rate"`
	Outage          Duration `yaml:"outage"`
}

// Faults is the step as the mock provider takes it. Its outage becomes the
// mock's outage_for; the other names are the mock's.
func (st FaultStep) Faults() mockserver.Faults {
	return mockserver.Faults{ErrorRate: st.ErrorRate, ThrottleRate: st.ThrottleRate,
		RetryAfter: mockserver.Duration(st.RetryAfter), SlowRate: st.SlowRate, SlowDelay: mockserver.Duration(st.SlowDelay),
		LatencyMin: mockserver.Duration(st.LatencyMin), LatencyMax: mockserver.Duration(st.LatencyMax),
		ItemFailureRate: st.ItemFailureRate, OutageFor: mockserver.Duration(st.Outage)}
}

// Steady reports whether the load is a rate rather than a burst.
func (l Load) Steady() bool { return l.Count == 0 }

// Rising reports whether a steady load's rate climbs.
func (l Load) Rising() bool { return l.RateStep > 0 && l.Step > 0 }

// RateAt is a steady load's rate at elapsed time t since its start.
func (l Load) RateAt(t time.Duration) float64 {
	if !l.Rising() || t < 0 {
		return l.Rate
	}
	return l.Rate + l.RateStep*float64(t/l.Step.D())
}

// Expected is how many notifications the load would produce if it ran its
// whole course.
func (l Load) Expected() int64 {
	if !l.Steady() {
		return int64(l.Count)
	}
	if !l.Rising() {
		return int64(l.Rate * l.For.D().Seconds())
	}
	var n float64
	for t := time.Duration(0); t < l.For.D(); t += l.Step.D() {
		n += l.RateAt(t) * min(l.Step.D(), l.For.D()-t).Seconds()
	}
	return int64(n)
}

// Bounds of a scenario's numbers: past them a file is a typo, and the
// arithmetic on them (a load's expected count, its rising steps) would
// overflow or run for ever.
const (
	maxCount       = 1_000_000_000
	maxLoadRate    = 10_000_000.0 // notifications/s
	maxChannelRate = 1e9          // sends/s: tests and benchmarks use 1e9 for "no limit"
	maxSteps       = 100_000      // of a rising load
	maxBatch       = 100_000      // per ingest call or provider call
	maxConcurrency = 4096         // provider calls in flight: a sender goroutine each
	maxPartitions  = 4096         // the embedded log's limit
	maxRingSize    = engine.MaxRingSize
	maxAttempts    = 1000
	maxLoadTime    = 24 * time.Hour // a load's start and its length: a rising load's count stays in int64
)

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// nameRE limits scenario and load names to what is safe in file names,
// tenants and the report's markup.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

var channelNames = []string{"sms", "email", "push", "webhook"}

// ParseScenario reads a scenario in YAML. Unknown keys are errors, and
// every error names the field.
func ParseScenario(r io.Reader) (Scenario, error) {
	var sc Scenario
	b, err := io.ReadAll(r)
	if err != nil {
		return sc, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&sc); err != nil {
		if errors.Is(err, io.EOF) {
			return sc, errors.New("scenario: empty file")
		}
		return sc, fmt.Errorf("scenario: %w", err)
	}
	return sc, sc.Validate()
}

// Validate checks a scenario and fills its defaults.
func (sc *Scenario) Validate() error {
	if !nameRE.MatchString(sc.Name) {
		return fmt.Errorf("scenario: name %q: want lower-case letters, digits, '.', '_' or '-'", sc.Name)
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("scenario %s: %s: %s", sc.Name, field, fmt.Sprintf(format, args...))
	}
	if len(sc.Loads) == 0 {
		return bad("loads", "at least one load is required")
	}
	if sc.Channels == nil {
		sc.Channels = map[string]ChannelSpec{}
	}
	for name, c := range sc.Channels {
		if !slices.Contains(channelNames, name) {
			return bad("channels."+name, "unknown channel, want one of %s", strings.Join(channelNames, ", "))
		}
		if c.Rate < 0 || c.Batch < 0 || c.Concurrency < 0 {
			return bad("channels."+name, "rate, batch and concurrency must not be negative")
		}
		if !finite(c.Rate) || c.Rate > maxChannelRate {
			return bad("channels."+name+".rate", "%v: want a number up to %g", c.Rate, maxChannelRate)
		}
		if c.Batch > maxBatch || c.Concurrency > maxConcurrency {
			return bad("channels."+name, "batch up to %d, concurrency up to %d", maxBatch, maxConcurrency)
		}
	}
	for _, name := range channelNames {
		c := sc.Channels[name]
		if c.Rate == 0 {
			c.Rate = 100_000
		}
		sc.Channels[name] = c
	}
	for i := range sc.Loads {
		l := &sc.Loads[i]
		f := fmt.Sprintf("loads[%d]", i)
		if l.Name == "" {
			l.Name = fmt.Sprintf("%s-%s-%d", l.Channel, l.Priority, i)
		}
		if !nameRE.MatchString(l.Name) {
			return bad(f+".name", "%q: want lower-case letters, digits, '.', '_' or '-'", l.Name)
		}
		for _, o := range sc.Loads[:i] {
			if o.Name == l.Name {
				return bad(f+".name", "%q is the name of another load", l.Name)
			}
		}
		if !slices.Contains(channelNames, l.Channel) {
			return bad(f+".channel", "%q, want one of %s", l.Channel, strings.Join(channelNames, ", "))
		}
		if _, ok := notification.ParsePriority(l.Priority); !ok {
			return bad(f+".priority", "%q, want critical, high, normal or bulk", l.Priority)
		}
		for _, v := range []struct {
			field string
			v     float64
		}{{"rate", l.Rate}, {"rate_step", l.RateStep}, {"invalid", l.Invalid}} {
			if !finite(v.v) {
				return bad(f+"."+v.field, "%v is not a number", v.v)
			}
		}
		switch {
		case l.Count < 0:
			return bad(f+".count", "must not be negative")
		case l.Count > maxCount:
			return bad(f+".count", "at most %d", maxCount)
		case l.Rate > maxLoadRate || l.RateStep > maxLoadRate || l.RateStep < 0:
			return bad(f, "rate and rate_step: at most %g a second, rate_step not negative", maxLoadRate)
		case l.Count > 0 && l.Rate > 0:
			return bad(f, "a load is a burst (count) or a rate, not both")
		case l.Count == 0 && l.Rate <= 0:
			return bad(f, "set count (a burst) or rate (a steady load)")
		case l.Rate > 0 && l.For <= 0:
			return bad(f+".for", "a steady load needs a duration")
		case (l.RateStep > 0) != (l.Step > 0):
			return bad(f+".step", "rate_step and step go together")
		case l.Step > 0 && l.For.D()/l.Step.D() > maxSteps:
			return bad(f+".step", "%v over %v is more than %d steps", l.Step.D(), l.For.D(), maxSteps)
		case l.StopOnBreak && !l.Rising():
			return bad(f+".stop_on_break", "only a rising load (rate_step, step) can stop on break")
		case l.StopOnBreak && sc.LatencyTarget <= 0:
			return bad("latency_target", "required by loads[%d].stop_on_break", i)
		case l.DistinctKeys < 0 || l.Batch < 0 || l.Start < 0 || l.TTL < 0 || l.Delay < 0:
			return bad(f, "distinct_keys, batch, start, ttl and delay must not be negative")
		case l.Delay.D() > maxLoadTime:
			return bad(f+".delay", "at most %v", maxLoadTime)
		case l.TTL > 0 && l.Delay >= l.TTL:
			return bad(f+".delay", "%v is not before the ttl %v: every notification would expire unsent", l.Delay.D(), l.TTL.D())
		case l.Batch > maxBatch:
			return bad(f+".batch", "at most %d (the API's max_items)", maxBatch)
		case l.Invalid < 0 || l.Invalid > 1:
			return bad(f+".invalid", "a share between 0 and 1")
		case l.For < 0 || l.For.D() > maxLoadTime || l.Start.D() > maxLoadTime:
			return bad(f, "start and for: 0 to %v", maxLoadTime)
		}
		if l.Batch == 0 {
			l.Batch = 1000
		}
	}
	for i, st := range sc.Faults {
		f := fmt.Sprintf("faults[%d]", i)
		// The mock's own check, on what the mock will be given.
		if err := st.Faults().Validate(); err != nil {
			msg := strings.TrimPrefix(err.Error(), "faults: ")
			return bad(f, "%s", strings.Replace(msg, "outage_for", "outage", 1))
		}
		if st.At < 0 {
			return bad(f+".at", "must not be negative")
		}
		if i > 0 && st.At < sc.Faults[i-1].At {
			return bad(f+".at", "fault steps must be in time order")
		}
	}
	if sc.Drain <= 0 {
		sc.Drain = Duration(2 * time.Minute)
	}
	if sc.Partitions < 0 || sc.RingSize < 0 || sc.MaxAttempts < 0 {
		return bad("partitions", "partitions, ring_size and max_attempts must not be negative")
	}
	if sc.MaxDelayed < 0 || sc.MaxDelayed > maxCount {
		return bad("max_delayed", "0 (the engine's default) to %d", maxCount)
	}
	if sc.Partitions > maxPartitions || sc.RingSize > maxRingSize || sc.MaxAttempts > maxAttempts {
		return bad("partitions", "partitions up to %d, ring_size up to %d, max_attempts up to %d", maxPartitions, maxRingSize, maxAttempts)
	}
	if sc.Partitions == 0 {
		sc.Partitions = 8
	}
	if sc.RingSize == 0 {
		sc.RingSize = 8192
	}
	if sc.MaxAttempts == 0 {
		sc.MaxAttempts = 8
	}
	return nil
}

// Scaled returns a small (or large) copy of a scenario: every count times
// count, every start, duration, step and fault time times timeScale, and
// every rate (loads and channels) times count/timeScale, so that the copy
// plays the same story: a burst drains in timeScale of the time, a steady
// load sends count of its notifications. The latency target is kept.
func (sc Scenario) Scaled(count, timeScale float64) Scenario {
	if count == 1 && timeScale == 1 {
		return sc
	}
	t := func(d Duration) Duration { return Duration(float64(d) * timeScale) }
	rate := count / timeScale
	out := sc
	out.Loads = slices.Clone(sc.Loads)
	for i := range out.Loads {
		l := &out.Loads[i]
		if l.Count > 0 {
			l.Count = max(1, int(float64(l.Count)*count))
		}
		if l.DistinctKeys > 0 {
			l.DistinctKeys = max(1, int(float64(l.DistinctKeys)*count))
		}
		l.Rate *= rate
		l.RateStep *= rate
		l.Start, l.For, l.Step, l.Delay = t(l.Start), t(l.For), t(l.Step), t(l.Delay)
	}
	out.Channels = make(map[string]ChannelSpec, len(sc.Channels))
	for name, c := range sc.Channels {
		c.Rate *= rate
		out.Channels[name] = c
	}
	out.Faults = slices.Clone(sc.Faults)
	for i := range out.Faults {
		f := &out.Faults[i]
		f.At, f.Outage, f.RetryAfter = t(f.At), t(f.Outage), t(f.RetryAfter)
	}
	out.Drain = t(sc.Drain)
	return out
}
