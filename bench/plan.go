package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/wal"
)

// Target is what a fleet must carry, as `goutong plan` reads it.
type Target struct {
	// OTPRate verification codes/s at the peak, each delivered with a p99
	// (acceptance to provider ack) of OTPP99, on OTPChannel (default sms).
	OTPRate    float64  `yaml:"otp_rate"`
	OTPP99     Duration `yaml:"otp_p99"`
	OTPChannel string   `yaml:"otp_channel"`
	// CampaignSize bulk notifications delivered within CampaignWithin on
	// CampaignChannel (default email), CampaignsPerDay times a day.
	CampaignSize    int64    `yaml:"campaign_size"`
	CampaignWithin  Duration `yaml:"campaign_within"`
	CampaignChannel string   `yaml:"campaign_channel"`
	CampaignsPerDay float64  `yaml:"campaigns_per_day"`
	// PeakHoursPerDay is how long the OTP peak lasts a day, for the daily
	// volume behind the stores' sizes (default 24: the peak all day).
	PeakHoursPerDay float64 `yaml:"peak_hours_per_day"`
	// Retention of the buffer (lane topics, default 2h) and of dead
	// letters (default 24h); the dedupe and status windows (default 24h).
	BufferRetention Duration `yaml:"buffer_retention"`
	DLQRetention    Duration `yaml:"dlq_retention"`
	DedupeWindow    Duration `yaml:"dedupe_window"`
	StatusWindow    Duration `yaml:"status_window"`
	// DeadLetterShare of notifications expected to end in dead letters
	// (default 0.01).
	DeadLetterShare float64 `yaml:"dead_letter_share"`
	// Headroom kept free on every node (default 0.3: plan for 70 % load).
	Headroom float64 `yaml:"headroom"`
	// ProviderLatency is the real providers' response time (default
	// 200ms): the mock answers at once, the real ones do not.
	ProviderLatency Duration `yaml:"provider_latency"`
	// ProviderLimits are the providers' contracted sends/s per channel.
	ProviderLimits map[string]float64 `yaml:"provider_limits"`
	// Replication of the log's topics in Kafka mode (default 3).
	Replication int `yaml:"replication"`
}

// ParseTarget reads a target in YAML; unknown keys are errors.
func ParseTarget(r io.Reader) (Target, error) {
	var t Target
	b, err := io.ReadAll(r)
	if err != nil {
		return t, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil && !errors.Is(err, io.EOF) {
		return t, fmt.Errorf("target: %w", err)
	}
	return t, nil
}

// Bounds of a target, far past any fleet: beyond them the arithmetic (ring
// sizes, bytes) would overflow rather than plan.
const (
	maxTargetRate      = 1e9
	maxTargetCampaign  = 1_000_000_000_000
	maxCampaignsPerDay = 10_000
	maxReplication     = 100
	maxProviderLatency = time.Minute
	maxRetention       = 366 * 24 * time.Hour
)

func (t *Target) defaults() error {
	def := func(d *Duration, v time.Duration) {
		if *d <= 0 {
			*d = Duration(v)
		}
	}
	for name, v := range map[string]float64{"otp_rate": t.OTPRate, "campaigns_per_day": t.CampaignsPerDay,
		"peak_hours_per_day": t.PeakHoursPerDay, "dead_letter_share": t.DeadLetterShare, "headroom": t.Headroom} {
		if !finite(v) {
			return fmt.Errorf("target: %s: %v is not a number", name, v)
		}
	}
	for ch, v := range t.ProviderLimits {
		if !finite(v) || v <= 0 {
			return fmt.Errorf("target: provider_limits.%s: %v, want a positive number", ch, v)
		}
	}
	if t.OTPRate < 0 || t.CampaignSize < 0 || t.CampaignsPerDay < 0 || t.Headroom < 0 || t.Headroom >= 1 ||
		t.DeadLetterShare < 0 || t.DeadLetterShare > 1 {
		return errors.New("target: rates and sizes must not be negative; headroom and dead_letter_share are shares below 1")
	}
	if t.OTPRate > maxTargetRate || t.CampaignSize > maxTargetCampaign || t.CampaignsPerDay > maxCampaignsPerDay ||
		t.Replication > maxReplication {
		return fmt.Errorf("target: otp_rate up to %g/s, campaign_size up to %d, campaigns_per_day up to %d, replication up to %d",
			maxTargetRate, maxTargetCampaign, maxCampaignsPerDay, maxReplication)
	}
	if t.CampaignSize > 0 && t.CampaignWithin > 0 && float64(t.CampaignSize)/t.CampaignWithin.D().Seconds() > maxTargetRate {
		return fmt.Errorf("target: campaign_size / campaign_within is more than %g/s", maxTargetRate)
	}
	if t.ProviderLatency.D() > maxProviderLatency {
		return fmt.Errorf("target: provider_latency up to %v", maxProviderLatency)
	}
	for name, d := range map[string]Duration{"buffer_retention": t.BufferRetention, "dlq_retention": t.DLQRetention,
		"dedupe_window": t.DedupeWindow, "status_window": t.StatusWindow} {
		if d.D() > maxRetention {
			return fmt.Errorf("target: %s up to %v", name, maxRetention)
		}
	}
	if t.OTPRate == 0 && t.CampaignSize == 0 {
		return errors.New("target: set otp_rate, campaign_size or both")
	}
	if t.CampaignSize > 0 && t.CampaignWithin <= 0 {
		return errors.New("target: campaign_within is required with campaign_size")
	}
	if t.OTPRate > 0 && t.OTPP99 <= 0 {
		return errors.New("target: otp_p99 is required with otp_rate")
	}
	for _, c := range []*string{&t.OTPChannel, &t.CampaignChannel} {
		if *c != "" && !slices.Contains(channelNames, *c) {
			return fmt.Errorf("target: channel %q, want one of %v", *c, channelNames)
		}
	}
	if t.OTPChannel == "" {
		t.OTPChannel = "sms"
	}
	if t.CampaignChannel == "" {
		t.CampaignChannel = "email"
	}
	if t.CampaignsPerDay == 0 {
		t.CampaignsPerDay = 1
	}
	if t.PeakHoursPerDay <= 0 || t.PeakHoursPerDay > 24 {
		t.PeakHoursPerDay = 24
	}
	def(&t.BufferRetention, 2*time.Hour)
	def(&t.DLQRetention, 24*time.Hour)
	def(&t.DedupeWindow, 24*time.Hour)
	def(&t.StatusWindow, 24*time.Hour)
	def(&t.ProviderLatency, 200*time.Millisecond)
	if t.DeadLetterShare == 0 {
		t.DeadLetterShare = 0.01
	}
	if t.Headroom == 0 {
		t.Headroom = 0.3
	}
	if t.Replication <= 0 {
		t.Replication = 3
	}
	return nil
}

// Step is one figure of a plan with the arithmetic that produced it.
type Step struct {
	What  string `json:"what"`
	Value string `json:"value"`
	Math  string `json:"math"`
}

// Plan is what a fleet needs for a target, from measured results.
type Plan struct {
	Nodes      int     `json:"nodes"`
	Partitions int     `json:"partitions"`
	RingSize   int     `json:"ring_size"`
	DiskBytes  float64 `json:"disk_bytes"` // the whole fleet, replication included
	// MemoryBytes is what to give each node: twice its working set.
	MemoryBytes float64  `json:"memory_bytes"`
	Steps       []Step   `json:"steps"`
	Warnings    []string `json:"warnings"`
}

func (p *Plan) step(what, value, format string, args ...any) {
	p.Steps = append(p.Steps, Step{What: what, Value: value, Math: fmt.Sprintf(format, args...)})
}

func (p *Plan) warn(format string, args ...any) {
	p.Warnings = append(p.Warnings, fmt.Sprintf(format, args...))
}

// measured is what the plan takes from the results.
type measured struct {
	otpCap, otpTarget  float64 // codes/s one node held, at p99 <= otpTarget ms
	otpNeverBroke      bool
	bulkCap            float64 // bulk notifications/s one node delivered
	bulkLimited        bool    // the scenario's rate limits, not the node, held the drain
	bufferB, statusEvB float64 // bytes per notification in the log
	dlqB               float64
	dedupeB, statusB   float64
	batch              map[string]int // notifications per HTTP request
	isolationP99       float64        // critical p99 under a bulk burst, ms (0: not measured)
	backend            string
}

func measure(r *Results, t Target) (measured, []string) {
	m := measured{batch: map[string]int{}}
	var missing []string
	diskFrom, dlqFrom := int64(-1), int64(-1)
	brokeFirst := ""
	for _, s := range r.Scenarios {
		for name, c := range s.Channels {
			per := c.PerRequest
			if per == 0 {
				per = c.Batch
			}
			m.batch[name] = max(m.batch[name], per)
		}
		m.backend = s.Backend
		for _, l := range s.Loads {
			if l.Priority != "critical" || l.Channel != t.OTPChannel || (l.MaxGoodRate == 0 && l.BrokeAt == 0) {
				continue
			}
			if l.MaxGoodRate == 0 {
				brokeFirst = fmt.Sprintf("%s broke at its first step (%.0f/s: %s): lower its starting rate", s.Name, l.BrokeAt, l.BreakReason)
			}
			if l.MaxGoodRate > m.otpCap {
				m.otpCap, m.otpTarget, m.otpNeverBroke = l.MaxGoodRate, float64(s.Scenario.LatencyTarget.D().Milliseconds()), l.BrokeAt == 0
			}
		}
		bulkOnly, critical, bulk := len(s.Loads) > 0, false, false
		for _, l := range s.Loads {
			bulkOnly = bulkOnly && l.Priority == "bulk" && l.Repeats == 0
			critical = critical || l.Priority == "critical"
			bulk = bulk || l.Priority == "bulk"
		}
		if bulkOnly && s.DeliveredPerSec > m.bulkCap {
			m.bulkCap = s.DeliveredPerSec
			var limit float64
			for _, l := range s.Loads {
				limit += s.Channels[l.Channel].Rate
			}
			// The bulk lanes get the bucket less the share reserved for
			// critical and high (0.2 by default).
			m.bulkLimited = s.DeliveredPerSec >= 0.9*0.8*limit
		}
		// Isolation is read off a burst without provider faults: under an
		// outage every lane waits.
		if critical && bulk && len(s.Scenario.Faults) == 0 {
			for _, lat := range s.Latency {
				if lat.Priority == "critical" {
					m.isolationP99 = max(m.isolationP99, lat.P99)
				}
			}
		}
		// Disk per notification comes from the largest run: in a small one
		// the stores' fixed overhead (WAL, manifest) dominates.
		if d := s.Disk; d.BufferBytesPerNotification > 0 && s.Accepted > diskFrom {
			diskFrom = s.Accepted
			m.bufferB, m.statusEvB = d.BufferBytesPerNotification, d.StatusEventBytesPerNotification
			m.dedupeB, m.statusB = d.DedupeBytesPerNotification, d.StatusBytesPerNotification
		}
		if s.Disk.DeadLetterBytes > 0 && s.DeadLetters > dlqFrom {
			dlqFrom, m.dlqB = s.DeadLetters, s.Disk.DeadLetterBytes
		}
	}
	switch {
	case t.OTPRate > 0 && m.otpCap == 0 && brokeFirst != "":
		missing = append(missing, "an OTP capacity: "+brokeFirst)
	case t.OTPRate > 0 && m.otpCap == 0:
		missing = append(missing, "a rising critical load on "+t.OTPChannel+" (run the otp-flood scenario)")
	}
	if t.CampaignSize > 0 && m.bulkCap == 0 {
		missing = append(missing, "a bulk burst (run the marketing-burst scenario)")
	}
	if m.bufferB == 0 {
		missing = append(missing, "disk use of the embedded log (run a scenario without --kafka-fake)")
	}
	if m.dlqB == 0 {
		m.dlqB = m.bufferB * 2 // a dead letter carries its record and its reason headers
	}
	return m, missing
}

func nextPow2(v float64) int {
	if v <= 1 {
		return 1
	}
	return 1 << bits.Len64(uint64(math.Ceil(v))-1)
}

// si prints a count with a unit prefix: 12.3K, 4.5M.
func si(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e12:
		return fmt.Sprintf("%.1fT", v/1e12)
	case a >= 1e9:
		return fmt.Sprintf("%.1fG", v/1e9)
	case a >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fK", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// MakePlan sizes a fleet for the target from the results, showing its
// arithmetic, and warns where the target goes past what was measured.
func MakePlan(r *Results, t Target) (*Plan, error) {
	if err := t.defaults(); err != nil {
		return nil, err
	}
	m, missing := measure(r, t)
	if len(missing) > 0 {
		return nil, fmt.Errorf("plan: the results lack %s", joinAnd(missing))
	}
	p := &Plan{}
	hours := func(d Duration) float64 { return d.D().Hours() }

	// Throughput needed.
	campaignRate := 0.0
	if t.CampaignSize > 0 {
		campaignRate = float64(t.CampaignSize) / t.CampaignWithin.D().Seconds()
		p.step("campaign rate", si(campaignRate)+"/s", "%s notifications / %s = %.0f/s", si(float64(t.CampaignSize)), t.CampaignWithin.D(), campaignRate)
	}

	// Nodes.
	load := 0.0
	var terms []string
	if t.OTPRate > 0 {
		load += t.OTPRate / m.otpCap
		terms = append(terms, fmt.Sprintf("%s/%s", si(t.OTPRate), si(m.otpCap)))
	}
	if campaignRate > 0 {
		load += campaignRate / m.bulkCap
		terms = append(terms, fmt.Sprintf("%s/%s", si(campaignRate), si(m.bulkCap)))
	}
	p.Nodes = max(1, int(math.Ceil(load/(1-t.Headroom)-1e-9)))
	p.step("nodes", fmt.Sprint(p.Nodes),
		"ceil((%s) / (1 - %.2f headroom)) = ceil(%.2f); one node measured %s codes/s at p99 <= %.0f ms and %s bulk/s",
		strings.Join(terms, " + "), t.Headroom, load/(1-t.Headroom), si(m.otpCap), m.otpTarget, si(m.bulkCap))

	// Partitions.
	p.Partitions = max(8, 2*p.Nodes)
	p.step("partitions per lane topic", fmt.Sprint(p.Partitions),
		"max(8, 2 x %d nodes): every node owns at least two, and the fleet can double without repartitioning", p.Nodes)

	// Rate limits: token buckets are per node.
	perChannel := map[string]float64{}
	perChannel[t.OTPChannel] += t.OTPRate
	perChannel[t.CampaignChannel] += campaignRate
	var chans []string
	for ch := range perChannel {
		if perChannel[ch] > 0 {
			chans = append(chans, ch)
		}
	}
	slices.Sort(chans)
	for _, ch := range chans {
		need := perChannel[ch]
		reserve := 0.2
		if ch == t.OTPChannel && t.OTPRate > 0 {
			reserve = max(reserve, math.Ceil(t.OTPRate/need*100)/100)
		}
		// The bulk share must still carry the campaign.
		rate := need
		if ch == t.CampaignChannel && campaignRate > 0 {
			rate = max(rate, campaignRate/(1-min(reserve, 0.95)))
		}
		p.step("channels."+ch+".rate (per node)", fmt.Sprintf("%.0f/s, reserve %.2f", rate/float64(p.Nodes), reserve),
			"%.0f/s needed on %s / %d nodes (the token bucket is per node); reserve %.2f keeps the codes' share", rate, ch, p.Nodes, reserve)
		if lim, ok := t.ProviderLimits[ch]; ok && rate > lim {
			p.warn("%s needs %.0f/s but the provider allows %.0f/s: add a provider (failover) or raise the contract", ch, rate, lim)
		}
		batch := max(1, m.batch[ch])
		inflight := rate / float64(p.Nodes) * t.ProviderLatency.D().Seconds() / float64(batch)
		p.step("channels."+ch+".concurrency (per node)", fmt.Sprint(int(math.Ceil(inflight))),
			"%.0f/s per node x %s provider latency / %d per request (Little's law)", rate/float64(p.Nodes), t.ProviderLatency.D(), batch)
	}

	// Ring size: what arrives at one node's busiest lane while a provider
	// call is out, twice over.
	busiest := max(t.OTPRate, campaignRate) / float64(p.Nodes)
	cover := max(t.ProviderLatency.D().Seconds(), 0.1)
	p.RingSize = max(1024, nextPow2(2*busiest*cover))
	p.step("engine.ring_size", fmt.Sprint(p.RingSize),
		"next power of two >= 2 x %.0f/s (busiest lane per node) x %.2f s (provider latency, at least 100 ms), at least 1024", busiest, cover)

	// Memory: the stores' fixed share, and the rings full.
	rings := float64(max(len(chans), 1)*notification.NumPriorities*p.RingSize) * queuedBytes
	statusMem := float64(engine.StatusMemTables*engine.StatusMemTableSize + engine.StatusAuxMemTables*engine.StatusAuxMemTableSize +
		engine.StatusCacheSize)
	dedupeMem := float64(dedupe.MemTables*dedupe.DefaultMemTableSize+dedupe.DefaultCacheSize+dedupe.DefaultRecentBytes) +
		float64(dedupe.WriteBufferMemory(dedupe.DefaultWriteBufferBytes)) +
		float64(dedupe.FilterBuckets*dedupe.FilterBytes(dedupe.DefaultFilterKeys))
	frames := float64(wal.DefaultFrameCacheBytes)
	working := rings + statusMem + dedupeMem + frames
	p.MemoryBytes = 2 * working
	p.step("memory per node", bytesIEC(p.MemoryBytes),
		"2 x (rings %d channel(s) x %d lanes x %d slots x %.0f B = %s + status store %s + dedupe store and filters %s + log frame cache %s = %s): the Go heap's headroom",
		max(len(chans), 1), notification.NumPriorities, p.RingSize, queuedBytes, bytesIEC(rings), bytesIEC(statusMem),
		bytesIEC(dedupeMem), bytesIEC(frames), bytesIEC(working))

	// Disk.
	daily := t.OTPRate*3600*t.PeakHoursPerDay + float64(t.CampaignSize)*t.CampaignsPerDay
	p.step("notifications a day", si(daily), "%s/s x 3600 x %.0f peak hours + %s x %.0f campaigns", si(t.OTPRate), t.PeakHoursPerDay, si(float64(t.CampaignSize)), t.CampaignsPerDay)
	perHour := daily / 24
	campaigns := 0.0
	if t.CampaignSize > 0 {
		campaigns = max(1, math.Ceil(t.CampaignsPerDay*hours(t.BufferRetention)/24))
	}
	inBuffer := t.OTPRate*3600*hours(t.BufferRetention) + float64(t.CampaignSize)*campaigns
	buffer := inBuffer * m.bufferB
	p.step("log: buffer", bytesIEC(buffer), "(%s/s x %.1f h retention + %.0f campaign(s) of %s) x %.0f B", si(t.OTPRate),
		hours(t.BufferRetention), campaigns, si(float64(t.CampaignSize)), m.bufferB)
	status := perHour * 24 * m.statusEvB
	p.step("log: status events", bytesIEC(status), "%s a day x %.0f B (24 h retention)", si(daily), m.statusEvB)
	dlq := perHour * hours(t.DLQRetention) * t.DeadLetterShare * m.dlqB
	p.step("log: dead letters", bytesIEC(dlq), "%s/h x %.0f h x %.3f share x %.0f B", si(perHour), hours(t.DLQRetention), t.DeadLetterShare, m.dlqB)
	logBytes := buffer + status + dlq
	repl := 1
	if p.Nodes > 1 {
		repl = t.Replication
	}
	dedupe := perHour * hours(t.DedupeWindow) * m.dedupeB
	p.step("dedupe store", bytesIEC(dedupe), "%s/h x %.0f h window x %.0f B (ingest and send claims)", si(perHour), hours(t.DedupeWindow), m.dedupeB)
	statusStore := perHour * hours(t.StatusWindow) * m.statusB
	p.step("status store", bytesIEC(statusStore), "%s/h x %.0f h window x %.0f B", si(perHour), hours(t.StatusWindow), m.statusB)
	// Every node keeps the whole fleet's stores: its status replica follows
	// the whole status topic, and copies the other nodes' keys into its
	// dedupe store.
	p.DiskBytes = logBytes*float64(repl) + (dedupe+statusStore)*float64(p.Nodes)
	p.step("disk, whole fleet", bytesIEC(p.DiskBytes), "log %s x %d replicas + (dedupe %s + status %s) x %d node(s), each keeping the fleet's; per node %s",
		bytesIEC(logBytes), repl, bytesIEC(dedupe), bytesIEC(statusStore), p.Nodes,
		bytesIEC(logBytes*float64(repl)/float64(p.Nodes)+dedupe+statusStore))

	// Where the target leaves what was measured.
	if t.OTPRate > 0 && float64(t.OTPP99.D().Milliseconds()) < m.otpTarget {
		p.warn("the target p99 %s is stricter than the %.0f ms at which %s codes/s per node was measured: re-run otp-flood with latency_target %s",
			t.OTPP99.D(), m.otpTarget, si(m.otpCap), t.OTPP99.D())
	}
	if m.otpNeverBroke {
		p.warn("otp-flood never broke: %s codes/s per node is a lower bound; raise its rate for a real ceiling", si(m.otpCap))
	}
	if m.bulkLimited {
		p.warn("the bulk drain was held by the scenario's rate limits, so %s/s per node is a lower bound", si(m.bulkCap))
	}
	if m.isolationP99 > 0 && t.OTPRate > 0 && m.isolationP99 > float64(t.OTPP99.D().Milliseconds()) {
		p.warn("under a bulk burst the measured critical p99 was %.0f ms, over the %s target", m.isolationP99, t.OTPP99.D())
	}
	if p.Nodes > 1 {
		p.warn("%d nodes need Kafka mode (--kafka); the plan assumes throughput adds up per node, measured on one node (backend %s)", p.Nodes, m.backend)
		// It does not for the status replica: each node applies the
		// fleet's events.
		p.warn("each node's status replica applies the whole fleet's status events, about %s/s at the peak (2-3 a notification), whatever the fleet's size: measure what a node applies with go test ./engine -run '^$' -bench StatusReplica",
			si(2*(t.OTPRate+campaignRate)))
	}
	if r.Scale != 1 || r.TimeScale != 1 {
		p.warn("the results come from a scaled run (counts x%g, times x%g); plan from a full-size run", r.Scale, r.TimeScale)
	}
	p.warn("measured against the mock provider, which answers at once; provider latency is taken as %s", t.ProviderLatency.D())
	return p, nil
}

// queuedBytes is a notification waiting in a ring: its item, the
// Notification and its strings (a code or a campaign message).
const queuedBytes = 1024.0

func joinAnd(items []string) string {
	out := ""
	for i, s := range items {
		switch {
		case i == 0:
		case i == len(items)-1:
			out += " and "
		default:
			out += ", "
		}
		out += s
	}
	return out
}

func bytesIEC(b float64) string {
	const unit = 1024.0
	if b < unit {
		return fmt.Sprintf("%.0f B", b)
	}
	exp, div := 0, unit
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", b/div, "KMGTPE"[exp])
}

// Print writes the plan as text.
func (p *Plan) Print(w io.Writer) {
	width := 0
	for _, s := range p.Steps {
		width = max(width, len(s.What))
	}
	for _, s := range p.Steps {
		fmt.Fprintf(w, "%-*s  %s\n%*s  = %s\n", width, s.What, s.Value, width, "", s.Math)
	}
	if len(p.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings:")
		for _, s := range p.Warnings {
			fmt.Fprintf(w, "  - %s\n", s)
		}
	}
}
