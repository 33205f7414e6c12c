package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/schollz/progressbar/v3"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
	"github.com/goutong/goutong/wal"
)

// Options are how a scenario runs, as opposed to what it runs.
type Options struct {
	KafkaFake bool          // kfake over loopback instead of the embedded log
	Dir       string        // scratch space for the log and stores (default: the system's temp dir)
	Interval  time.Duration // how often the time series is sampled (default 1s)
	Progress  io.Writer     // a progress bar is drawn here when set
	Logger    *zap.Logger   // the engine's logger (default: none)
}

// hdr histograms of latency in microseconds, from 1 µs to 10 minutes at 3
// significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 600_000_000, 3) }

// loadState is one load's counters, shared by its generator, the provider
// probe and the sampler.
type loadState struct {
	spec     Load
	channel  notification.Channel
	priority notification.Priority

	accepted  atomic.Int64 // admitted as new by ingest
	repeats   atomic.Int64 // answered as a repeat of an accepted key
	delivered atomic.Int64 // provider acks (a resend counts again)
	early     atomic.Int64 // sent before their not_before
	ingestErr atomic.Int64

	mu       sync.Mutex
	total    *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram // since the last sample
	step     *hdrhistogram.Histogram // since the rising load's last step

	// Written by the generator, read after it ends.
	maxGoodRate float64
	brokeAt     float64
	breakReason string
}

// probe wraps each adapter (inside any breaker) and records, per load, the
// latency from acceptance to the provider's ack of every item it took.
type probe struct {
	providers.Provider
	loads map[string]*loadState // by tenant: each load is its own tenant
}

func (p *probe) Send(ctx context.Context, batch []*notification.Notification, results []providers.Result) {
	p.Provider.Send(ctx, batch, results)
	now := time.Now()
	for i, n := range batch {
		if results[i].Outcome != providers.Sent {
			continue
		}
		ls := p.loads[n.Tenant]
		if ls == nil {
			continue
		}
		// A scheduled notification is late from its time, not from its
		// acceptance.
		from := n.AcceptedAt
		if !n.NotBefore.IsZero() {
			from = n.NotBefore
			if now.Before(from) {
				ls.early.Add(1)
			}
		}
		us := max(now.Sub(from).Microseconds(), 1)
		ls.delivered.Add(1)
		ls.mu.Lock()
		_ = ls.total.RecordValue(us)
		_ = ls.interval.RecordValue(us)
		_ = ls.step.RecordValue(us)
		ls.mu.Unlock()
	}
}

// rig is one scenario's running system.
type rig struct {
	sc    Scenario
	opt   Options
	dir   string
	mock  *mockserver.Server
	eng   *engine.Engine
	reg   *prometheus.Registry
	loads []*loadState
	byTen map[string]*loadState
	chans map[string]ChannelInfo
}

// Run runs one scenario and returns what it measured. The scenario must be
// valid (ParseScenario, Builtin and Validate make it so).
func Run(ctx context.Context, sc Scenario, opt Options) (*ScenarioResult, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = zap.NewNop()
	}
	dir, err := os.MkdirTemp(opt.Dir, "goutong-bench-"+sc.Name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	r := &rig{sc: sc, opt: opt, dir: dir, reg: prometheus.NewRegistry(), byTen: map[string]*loadState{},
		chans: map[string]ChannelInfo{}}
	for _, l := range sc.Loads {
		p, _ := notification.ParsePriority(l.Priority)
		ls := &loadState{spec: l, channel: notification.Channel(l.Channel), priority: p,
			total: newHist(), interval: newHist(), step: newHist()}
		r.loads = append(r.loads, ls)
		r.byTen[l.Name] = ls
	}

	if r.mock, err = mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", WebhookSecret: "bench-secret", Seed: 1}); err != nil {
		return nil, err
	}
	defer r.mock.Close()

	open, closeLog, err := r.openLog()
	if err != nil {
		return nil, err
	}
	defer closeLog()
	dd, err := dedupe.Open(filepath.Join(dir, "dedupe"), dedupe.WithCreate())
	if err != nil {
		return nil, err
	}
	defer dd.Close()
	st, err := engine.OpenStatus(filepath.Join(dir, "status"), 24*time.Hour, true)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	channels, err := r.channels()
	if err != nil {
		return nil, err
	}
	// As goutong serve runs by default: sent payloads kept for
	// reconciliation, keyless lanes on the embedded log, and on Kafka a
	// node id (its status replica, takeovers and parked copies meeting).
	topics := engine.DefaultTopics()
	topics.KeylessLanes = !r.opt.KafkaFake
	nodeID := ""
	if r.opt.KafkaFake {
		nodeID = "bench"
	}
	r.eng, err = engine.New(engine.Config{Open: open, Topics: topics, Channels: channels, Dedupe: dd, Status: st, KeepPayloads: true, NodeID: nodeID,
		Partitions: int32(sc.Partitions), RingSize: sc.RingSize, MaxAttempts: sc.MaxAttempts, MaxDelayed: sc.MaxDelayed,
		Backoff:      engine.Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second},
		DrainTimeout: 5 * time.Second, Logger: opt.Logger, Registry: r.reg})
	if err != nil {
		return nil, err
	}
	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	engDone := make(chan error, 1)
	go func() { engDone <- r.eng.Run(engCtx) }()
	stopped := false
	defer func() {
		if !stopped {
			stopEngine()
			<-engDone
		}
	}()
	if err := r.waitReady(ctx); err != nil {
		return nil, err
	}
	res, err := r.drive(ctx)
	if err != nil {
		return nil, err
	}
	stopEngine()
	stopped = true
	if err := <-engDone; err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	r.disk(res)
	return res, nil
}

func (r *rig) openLog() (func(partition.ConsumerConfig) (partition.Log, error), func(), error) {
	if r.opt.KafkaFake {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			return nil, nil, err
		}
		return func(cc partition.ConsumerConfig) (partition.Log, error) {
			return partition.NewKafka(partition.KafkaConfig{Brokers: c.ListenAddrs(), SessionTimeout: 6 * time.Second}, cc)
		}, c.Close, nil
	}
	w, err := wal.Open(filepath.Join(r.dir, "log"))
	if err != nil {
		return nil, nil, err
	}
	return func(cc partition.ConsumerConfig) (partition.Log, error) { return partition.NewWAL(w, cc), nil },
		func() { w.Close() }, nil
}

// templates every generated notification uses.
var benchTemplates = map[string]providers.TemplateSource{
	"otp": {Subject: "Your code", Body: "Your verification code is {{.code}}. It expires in 5 minutes."},
	// One content for every recipient, as a campaign has: the SendGrid
	// adapter puts recipients sharing a content in one request.
	"promo": {Subject: "This week only", Body: "Everything is 20% off until Sunday."},
}

// channels builds the four adapters against the mock, each inside a probe
// and, when the scenario asks, behind a breaker.
func (r *rig) channels() (map[notification.Channel]engine.ChannelConfig, error) {
	tpl, err := providers.NewTemplates(benchTemplates)
	if err != nil {
		return nil, err
	}
	ep := providers.EndpointConfig{BaseURL: r.mock.URL(), RequestTimeout: 5 * time.Second}
	out := map[notification.Channel]engine.ChannelConfig{}
	for _, name := range channelNames {
		spec := r.sc.Channels[name]
		var p providers.Provider
		switch name {
		case "sms":
			p, err = providers.NewTwilio(providers.TwilioConfig{Endpoint: ep, AccountSID: "ACbench", AuthToken: "bench",
				From: "+15005550006", Concurrency: spec.Concurrency, Templates: tpl})
		case "email":
			p, err = providers.NewSendGrid(providers.SendGridConfig{Endpoint: ep, APIKey: "SG.bench", From: "noreply@bench.example",
				MaxBatch: spec.Batch, Concurrency: spec.Concurrency, Templates: tpl})
		case "push":
			p, err = providers.NewFCM(providers.FCMConfig{Endpoint: ep, ProjectID: "bench", Token: "bench",
				Concurrency: spec.Concurrency, Templates: tpl})
		case "webhook":
			p, err = providers.NewWebhook(providers.WebhookConfig{Endpoint: ep, Path: "/webhook/bench", Secret: "bench-secret",
				Batch: spec.Batch, Concurrency: spec.Concurrency})
		}
		if err != nil {
			return nil, fmt.Errorf("channel %s: %w", name, err)
		}
		info := ChannelInfo{Provider: p.Name(), Rate: spec.Rate, Batch: spec.Batch, Concurrency: spec.Concurrency}
		if info.Batch == 0 {
			info.Batch = max(1, p.MaxBatch())
		}
		if info.Concurrency == 0 {
			info.Concurrency = max(1, p.Concurrency())
		}
		info.PerRequest = info.Batch
		if name == "sms" || name == "push" { // Twilio and FCM: one message a request
			info.PerRequest = 1
		}
		r.chans[name] = info
		p = &probe{Provider: p, loads: r.byTen}
		if spec.Breaker {
			b := providers.NewBreaker(providers.BreakerConfig{OpenFor: time.Second}, nil)
			p = providers.Guard(p, b, providers.NewAdaptiveLimit(spec.Rate, max(int(spec.Rate/10), 1)), nil)
		}
		out[notification.Channel(name)] = engine.ChannelConfig{Provider: p, Rate: spec.Rate, Batch: spec.Batch,
			Concurrency: spec.Concurrency}
	}
	return out, nil
}

func (r *rig) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for !r.eng.Ready() {
		if time.Now().After(deadline) {
			return errors.New("bench: the engine was not ready within 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// counters reads the engine's own counters from its registry, summed over
// their labels.
func (r *rig) counters() map[string]float64 {
	out := map[string]float64{}
	mfs, err := r.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if c := m.GetCounter(); c != nil {
				out[mf.GetName()] += c.GetValue()
			}
		}
	}
	return out
}

// snapshot is the system's state at one instant.
type snapshot struct {
	at                                               time.Time
	accepted, repeats                                int64
	unique, received, mockDup                        int64
	retries, deadLetters, expired, engineDup, parked int64
	finished                                         int64 // unique at the provider + dead letters + expired
	acked                                            int64 // provider acks the probes saw (resends included)
	lag, queued                                      int64
}

func (r *rig) snapshot() snapshot {
	s := snapshot{at: time.Now()}
	for _, ls := range r.loads {
		s.accepted += ls.accepted.Load()
		s.repeats += ls.repeats.Load()
		// Read before the mock's count: an ack comes after the mock
		// counted its request, so acked >= unique means none is in flight.
		s.acked += ls.delivered.Load()
	}
	ms := r.mock.Stats()
	s.unique, s.received, s.mockDup = ms.Unique, ms.Received, ms.Duplicates
	c := r.counters()
	s.retries = int64(c["goutong_retries_total"])
	s.deadLetters = int64(c["goutong_dead_letters_total"])
	s.expired = int64(c["goutong_expired_total"])
	s.engineDup = int64(c["goutong_duplicates_total"])
	s.parked = int64(c["goutong_parked_total"])
	s.finished = s.unique + s.deadLetters + s.expired
	s.lag = r.eng.Backlog()
	for _, cs := range r.eng.Stats() {
		for _, d := range cs.Depth {
			s.queued += int64(d)
		}
	}
	return s
}

// drive starts the faults and the loads, samples until everything accepted
// is finished (or the drain time runs out) and builds the result.
func (r *rig) drive(ctx context.Context) (*ScenarioResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	start, cpu := time.Now(), processCPU()
	var faults, gens sync.WaitGroup
	// Every goroutine started here ends before drive returns, on any path.
	defer func() {
		cancel()
		faults.Wait()
		gens.Wait()
	}()
	faults.Go(func() { r.faults(ctx, start) })
	for _, ls := range r.loads {
		gens.Go(func() { r.generate(ctx, ls, start) })
	}
	loadsDone := make(chan struct{})
	go func() {
		gens.Wait()
		close(loadsDone)
	}()

	var expected int64
	for _, ls := range r.loads {
		expected += ls.spec.Expected()
	}
	var bar *progressbar.ProgressBar
	if r.opt.Progress != nil {
		bar = progressbar.NewOptions64(expected, progressbar.OptionSetWriter(r.opt.Progress),
			progressbar.OptionSetDescription(r.sc.Name), progressbar.OptionShowCount(), progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("sends"), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionSetPredictTime(true), progressbar.OptionFullWidth())
	}

	res := &ScenarioResult{Name: r.sc.Name, Description: r.sc.Description, Scenario: r.sc,
		Backend: map[bool]string{false: "wal", true: "kfake"}[r.opt.KafkaFake], StartedAt: start}
	tick := time.NewTicker(r.opt.Interval)
	defer tick.Stop()
	prev := snapshot{at: start}
	var drainBy time.Time
	settled := false
	var lastAcked int64
	stalled := 0
	for !settled {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		// Whether the loads are done is read before the snapshot: a
		// snapshot taken before the last ingest call returned would count
		// one notification short and call the run settled.
		loadsOver := false
		select {
		case <-loadsDone:
			loadsOver = true
		default:
		}
		s := r.snapshot()
		res.Series = append(res.Series, r.sample(start, prev, s))
		prev = s
		if bar != nil {
			// Progress counts requests: a repeat is finished when answered.
			answered := s.finished + s.repeats
			if answered > bar.GetMax64() {
				bar.ChangeMax64(answered)
			}
			_ = bar.Set64(answered)
		}
		if loadsOver {
			if drainBy.IsZero() {
				drainBy = time.Now().Add(r.sc.Drain.D())
				res.LoadSeconds = time.Since(start).Seconds()
				if bar != nil {
					bar.ChangeMax64(max(s.accepted, s.finished) + s.repeats)
				}
			}
			// Settled: everything accepted is finished, the rings are empty,
			// and every send the mock took has been answered (its latency
			// recorded) — or no answer came for three intervals (a send the
			// mock took but whose answer timed out, then dead-lettered,
			// never is).
			done := s.finished >= s.accepted && s.queued == 0
			if done && s.acked < s.unique && s.acked == lastAcked {
				stalled++
			} else {
				stalled = 0
			}
			lastAcked = s.acked
			settled = done && (s.acked >= s.unique || stalled >= 3)
			if !settled && time.Now().After(drainBy) {
				res.Unsettled = true
				settled = true
			}
		}
	}
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(r.opt.Progress)
	}
	end := r.snapshot()
	r.finish(res, start, end)
	if used := processCPU() - cpu; used > 0 {
		res.CPUSeconds = used.Seconds()
		res.CPUMicrosPerNotification = float64(used.Microseconds()) / float64(max(res.Accepted, 1))
	}
	return res, nil
}

// faults applies the scenario's fault steps at their times.
func (r *rig) faults(ctx context.Context, start time.Time) {
	for _, st := range r.sc.Faults {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(st.At.D()))):
		}
		r.mock.SetFaults(st.Faults())
	}
}

// generate runs one load: a burst from a few concurrent ingesters (as
// several API clients would), or a steady rate sent every 10 ms.
func (r *rig) generate(ctx context.Context, ls *loadState, start time.Time) {
	l := ls.spec
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Until(start.Add(l.Start.D()))):
	}
	var seq atomic.Int64
	if !l.Steady() {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for ctx.Err() == nil {
					from := seq.Add(int64(l.Batch)) - int64(l.Batch)
					if from >= int64(l.Count) {
						return
					}
					r.ingest(ctx, ls, from, int(min(int64(l.Batch), int64(l.Count)-from)))
				}
			})
		}
		wg.Wait()
		return
	}
	begin := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var planned float64
	var sent int64
	// sendUpTo ingests, in calls of at most Batch, until total are sent.
	sendUpTo := func(total int64) {
		for sent < total && ctx.Err() == nil {
			n := int(min(total-sent, int64(l.Batch)))
			r.ingest(ctx, ls, sent, n)
			sent += int64(n)
		}
	}
	last := begin
	stepStart, stepSent := begin, int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		el := now.Sub(begin)
		if el >= l.For.D() {
			// The last tick's share: a load sends exactly what it planned.
			sendUpTo(l.Expected())
			if l.Rising() && ls.brokeAt == 0 {
				r.judgeStep(ls, l.RateAt(l.For.D()-1), sent-stepSent, time.Since(stepStart))
			}
			return
		}
		if l.Rising() && now.Sub(stepStart) >= l.Step.D() {
			rate := l.RateAt(stepStart.Sub(begin))
			ok := r.judgeStep(ls, rate, sent-stepSent, now.Sub(stepStart))
			if !ok && l.StopOnBreak {
				return
			}
			stepStart, stepSent = now, sent
		}
		planned += l.RateAt(el) * now.Sub(last).Seconds()
		last = now
		sendUpTo(int64(planned))
	}
}

// judgeStep decides whether a rising load held its step: the step's p99
// within the target, no more left undelivered than the target's worth of
// sends, and ingest keeping up with the planned rate.
func (r *rig) judgeStep(ls *loadState, rate float64, sent int64, took time.Duration) bool {
	target := r.sc.LatencyTarget.D()
	ls.mu.Lock()
	p99 := time.Duration(ls.step.ValueAtQuantile(99)) * time.Microsecond
	count := ls.step.TotalCount()
	ls.step.Reset()
	ls.mu.Unlock()
	behind := ls.accepted.Load() - ls.delivered.Load()
	var why string
	switch {
	case target > 0 && count > 0 && p99 > target:
		why = fmt.Sprintf("p99 %s over the %s target", p99.Round(time.Millisecond), target)
	case target > 0 && float64(behind) > rate*target.Seconds()+float64(ls.spec.Batch):
		why = fmt.Sprintf("%d accepted and not yet sent, more than %s of sends", behind, target)
	// One notification of slack: at a few per second, whole notifications
	// per 10 ms tick round the achieved rate down.
	case float64(sent) < 0.9*rate*took.Seconds()-1:
		why = fmt.Sprintf("ingest took %.0f/s of the %.0f/s planned", float64(sent)/took.Seconds(), rate)
	}
	if why == "" {
		ls.maxGoodRate = rate
		return true
	}
	if ls.brokeAt == 0 {
		ls.brokeAt, ls.breakReason = rate, why
	}
	return false
}

// ingest hands n notifications (sequence numbers from..from+n) to the
// engine's ingest path, retrying a call the stores refused.
func (r *rig) ingest(ctx context.Context, ls *loadState, from int64, n int) {
	ns := make([]*notification.Notification, n)
	now := time.Now()
	for i := range ns {
		ns[i] = r.make(ls, from+int64(i), now)
	}
	for ctx.Err() == nil {
		adm, _, err := r.eng.Ingest(ctx, ns, time.Now())
		if err != nil {
			ls.ingestErr.Add(1)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		var dup int64
		for _, a := range adm {
			if a.Duplicate {
				dup++
			}
		}
		ls.accepted.Add(int64(n) - dup)
		ls.repeats.Add(dup)
		return
	}
}

// make builds the i-th notification of a load, as its channel would carry it.
func (r *rig) make(ls *loadState, i int64, now time.Time) *notification.Notification {
	l := ls.spec
	n := &notification.Notification{Tenant: l.Name, Channel: ls.channel, Priority: ls.priority}
	key := i
	if l.DistinctKeys > 0 {
		key = i % int64(l.DistinctKeys)
	}
	n.IdempotencyKey = l.Name + "-" + strconv.FormatInt(key, 10)
	if l.TTL > 0 {
		n.ExpiresAt = now.Add(l.TTL.D())
	}
	if l.Delay > 0 {
		n.NotBefore = now.Add(l.Delay.D())
	}
	invalid := l.Invalid > 0 && float64(key%10_000) < l.Invalid*10_000
	switch ls.channel {
	case notification.SMS:
		n.Recipient = fmt.Sprintf("+1555%07d", key%10_000_000)
	case notification.Email:
		n.Recipient = fmt.Sprintf("user%d@bench.example", key)
	case notification.Push:
		n.Recipient = fmt.Sprintf("device-token-%d", key)
	default:
		n.Recipient = "https://hooks.bench.example/alerts"
	}
	if invalid {
		n.Recipient = "invalid-" + n.Recipient
	}
	switch {
	case ls.priority <= notification.High && ls.channel == notification.Webhook:
		n.Content = &notification.Content{Body: fmt.Sprintf(`{"alert":"disk-full-%d","host":"db-%d"}`, key, key%97)}
	case ls.priority <= notification.High:
		n.Template, n.Vars = "otp", map[string]string{"code": fmt.Sprintf("%06d", (key*7919)%1_000_000)}
	case ls.channel == notification.Webhook:
		n.Content = &notification.Content{Body: fmt.Sprintf(`{"campaign":"spring","item":%d}`, key)}
	default:
		n.Template = "promo"
	}
	return n
}

// sample turns two snapshots into one point of the time series, and
// empties the loads' interval histograms.
func (r *rig) sample(start time.Time, prev, s snapshot) Sample {
	dt := s.at.Sub(prev.at).Seconds()
	out := Sample{T: s.at.Sub(start).Seconds(), AcceptedPerSec: float64(s.accepted-prev.accepted) / dt,
		DeliveredPerSec: float64(s.unique-prev.unique) / dt, Backlog: max(0, s.accepted-s.finished), Lag: s.lag,
		Queued: s.queued, Retries: s.retries, DeadLetters: s.deadLetters, P99ms: map[string]float64{}}
	for _, ls := range r.loads {
		ls.mu.Lock()
		if ls.interval.TotalCount() > 0 {
			out.P99ms[ls.spec.Name] = ms(ls.interval.ValueAtQuantile(99))
		}
		ls.interval.Reset()
		ls.mu.Unlock()
	}
	return out
}

func ms(us int64) float64 { return math.Round(float64(us)/10) / 100 }

func latencyOf(name, channel, priority string, h *hdrhistogram.Histogram) Latency {
	return Latency{Name: name, Channel: channel, Priority: priority, Count: h.TotalCount(),
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// finish fills the totals, the latency tables and the load results.
func (r *rig) finish(res *ScenarioResult, start time.Time, s snapshot) {
	res.Seconds = time.Since(start).Seconds()
	res.Channels = r.chans
	res.Accepted, res.Repeats = s.accepted, s.repeats
	res.Delivered, res.ProviderReceived, res.ProviderDuplicates = s.unique, s.received, s.mockDup
	res.Retries, res.DeadLetters, res.Expired, res.EngineDuplicates = s.retries, s.deadLetters, s.expired, s.engineDup
	res.Parked = s.parked
	res.Lost = max(0, s.accepted-s.finished)
	first, last := -1, -1
	for i, p := range res.Series {
		if p.DeliveredPerSec > 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
		res.PeakDeliveredPerSec = max(res.PeakDeliveredPerSec, p.DeliveredPerSec)
		res.PeakBacklog = max(res.PeakBacklog, p.Backlog)
	}
	if first >= 0 {
		from := 0.0
		if first > 0 {
			from = res.Series[first-1].T
		}
		if span := res.Series[last].T - from; span > 0 {
			res.DeliveredPerSec = float64(res.Delivered) / span
		}
	}
	if res.LoadSeconds > 0 {
		res.AcceptedPerSec = float64(res.Accepted+res.Repeats) / res.LoadSeconds
	}
	type lane struct {
		ch notification.Channel
		p  notification.Priority
	}
	merged := map[lane]*hdrhistogram.Histogram{}
	var keys []lane
	for _, ls := range r.loads {
		ls.mu.Lock()
		lr := LoadResult{Name: ls.spec.Name, Channel: string(ls.channel), Priority: ls.priority.String(),
			Accepted: ls.accepted.Load(), Repeats: ls.repeats.Load(), IngestErrors: ls.ingestErr.Load(), Early: ls.early.Load(),
			Latency: latencyOf(ls.spec.Name, string(ls.channel), ls.priority.String(), ls.total)}
		if ls.spec.Rising() {
			lr.MaxGoodRate, lr.BrokeAt, lr.BreakReason = ls.maxGoodRate, ls.brokeAt, ls.breakReason
		}
		k := lane{ls.channel, ls.priority}
		if merged[k] == nil {
			merged[k] = newHist()
			keys = append(keys, k)
		}
		merged[k].Merge(ls.total)
		ls.mu.Unlock()
		res.Loads = append(res.Loads, lr)
	}
	slices.SortFunc(keys, func(a, b lane) int { return cmp.Or(strings.Compare(string(a.ch), string(b.ch)), cmp.Compare(a.p, b.p)) })
	for _, k := range keys {
		ch, p := string(k.ch), k.p.String()
		res.Latency = append(res.Latency, latencyOf(ch+"/"+p, ch, p, merged[k]))
	}
}

// disk records what the run left on disk per accepted notification: the
// log's lane and retry topics (the buffer), its status topic, the dedupe
// and status stores.
func (r *rig) disk(res *ScenarioResult) {
	if res.Accepted == 0 {
		return
	}
	size := func(dir string) int64 {
		var n int64
		_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		return n
	}
	per := func(n, of int64) float64 { return math.Round(float64(n)/float64(of)*10) / 10 }
	topics := engine.DefaultTopics()
	topicDir := func(t string) string { return filepath.Join(r.dir, "log", "topics", t) }
	if !r.opt.KafkaFake {
		var buf int64
		for _, t := range topics.Consumed() {
			buf += size(topicDir(t))
		}
		res.Disk.BufferBytesPerNotification = per(buf, res.Accepted)
		res.Disk.StatusEventBytesPerNotification = per(size(topicDir(topics.Status)), res.Accepted)
		if res.DeadLetters > 0 {
			res.Disk.DeadLetterBytes = per(size(topicDir(topics.DLQ)), res.DeadLetters)
		}
	}
	res.Disk.DedupeBytesPerNotification = per(size(filepath.Join(r.dir, "dedupe")), res.Accepted)
	res.Disk.StatusBytesPerNotification = per(size(filepath.Join(r.dir, "status")), res.Accepted)
}

// Machine describes where results were measured.
func Machine() MachineInfo {
	host, _ := os.Hostname()
	return MachineInfo{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion: runtime.Version(), Host: host}
}
