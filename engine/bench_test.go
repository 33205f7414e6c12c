package engine_test

import (
	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"

	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

func webhookBatch(n, from int) []*notification.Notification {
	out := make([]*notification.Notification, n)
	for i := range out {
		out[i] = &notification.Notification{Channel: notification.Webhook, Priority: notification.Priority(1 + i%notification.NumPriorities),
			Recipient: "https://hooks.example/orders", Content: &notification.Content{Body: fmt.Sprintf(`{"order":%d}`, from+i)},
			Tenant: "acme"}
	}
	return out
}

// BenchmarkEngineEndToEnd drives b.N notifications from the log through the
// whole pipeline (decode, dedupe claim and confirm, rings, dispatcher,
// batched webhook sends to the mock on loopback, status events, commits)
// and reports delivered records/s. The baseline sub-benchmark sends the
// same notifications straight through the provider, so the ratio is the
// engine's cost over the HTTP floor on this machine. The dedupe store's
// confirms reach the disk in the background except in wal-dedupe-sync,
// which runs them as serve does.
func BenchmarkEngineEndToEnd(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) { endToEnd(b, newRig(b, be)) })
	}
	// Records without keys, as serve's default ingest writes keyless items
	// on the embedded log: the poller derives each key (a SHA-256) before
	// its claim.
	b.Run("wal-keyless", func(b *testing.B) {
		r := newRig(b, backends[0])
		endToEndFrom(b, r, func(c *engine.Config) {
			c.Topics = r.topics
			c.Topics.KeylessLanes = true
		}, (*rig).enqueueKeyless)
	})
	// serve's durability: every send's dedupe confirm is synced before its
	// outcome is written (the rig's default leaves them to the page cache).
	b.Run("wal-dedupe-sync", func(b *testing.B) { endToEnd(b, newRigSync(b, backends[0], true)) })
	// A node taking the whole backlog over from another (takeover.go):
	// every record is below the partitions' ends at the assignment, so each
	// is looked up in the status store before its claim.
	b.Run("wal-takeover", func(b *testing.B) {
		endToEndWith(b, newRig(b, backends[0]), func(c *engine.Config) { c.NodeID = "bench" })
	})
	// A node of a Kafka fleet, as serve --kafka runs one: its status
	// replica follows the status topic (its own events come back to it).
	b.Run("kafka-node", func(b *testing.B) {
		endToEndWith(b, newRig(b, backends[1]), func(c *engine.Config) { c.NodeID = "bench" })
	})
	// The engine's own cost without HTTP: decode, dedupe, rings, the
	// dispatcher's priority picks and batching, outcomes, status events and
	// commits, with a provider that accepts every batch at once.
	b.Run("wal-no-http", func(b *testing.B) {
		r := newRig(b, backends[0])
		ch := r.channels(false)
		p := &instantProvider{}
		ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
		r.enqueue(webhookBatch(b.N, 0)...)
		cfg := r.config(ch)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		_, stop := r.start(cfg)
		waitFor(b, 2*time.Minute, "every send", func() bool { return p.sent.Load() >= int64(b.N) })
		b.StopTimer()
		reportCPU(b, cpu, b.N)
		stop()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("baseline-provider-only", func(b *testing.B) {
		r := newRig(b, backends[0])
		wh := r.webhook(b, 500, 8)
		ns := webhookBatch(b.N, 0)
		for _, n := range ns {
			n.Prepare(time.Now())
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu := processCPU()
		sem := make(chan struct{}, 8)
		res := make([]providers.Result, len(ns))
		for i := 0; i < len(ns); i += 500 {
			j := min(i+500, len(ns))
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				wh.Send(context.Background(), ns[i:j], res[i:j])
			}()
		}
		for range cap(sem) {
			sem <- struct{}{}
		}
		b.StopTimer()
		reportCPU(b, cpu, b.N)
		if got := r.mock.Stats().Unique; got != int64(b.N) {
			b.Fatalf("mock got %d of %d", got, b.N)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	// The naive design the engine replaces: one consumer reads the log,
	// decodes each record and sends it in its own HTTP request, committing
	// after each poll.
	b.Run("baseline-one-request-per-record", func(b *testing.B) {
		r := newRig(b, backends[0])
		wh := r.webhook(b, 1, 1)
		r.enqueue(webhookBatch(b.N, 0)...)
		log, err := r.open(partition.ConsumerConfig{Group: "naive", Topics: r.topics.Consumed()})
		if err != nil {
			b.Fatal(err)
		}
		defer log.Close()
		b.ReportAllocs()
		b.ResetTimer()
		var res [1]providers.Result
		for done := 0; done < b.N; {
			recs, err := log.Poll(context.Background(), 1000)
			if err != nil {
				b.Fatal(err)
			}
			commit := map[partition.TopicPartition]int64{}
			for _, rec := range recs {
				n, err := r.codec.Decode(rec.Value)
				if err != nil {
					b.Fatal(err)
				}
				wh.Send(context.Background(), []*notification.Notification{n}, res[:])
				commit[partition.TopicPartition{Topic: rec.Topic, Partition: rec.Partition}] = rec.Offset + 1
			}
			if err := log.Commit(context.Background(), commit); err != nil {
				b.Fatal(err)
			}
			done += len(recs)
		}
		b.StopTimer()
		if got := r.mock.Stats().Unique; got != int64(b.N) {
			b.Fatalf("mock got %d of %d", got, b.N)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// processCPU is the process's CPU time, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per record since from
// (processCPU): engine, stores and the in-process mock together. On a
// shared machine it holds still when records/s does not.
func reportCPU(b *testing.B, from time.Duration, records int) {
	if used := processCPU() - from; used > 0 && records > 0 {
		b.ReportMetric(float64(used.Microseconds())/float64(records), "cpu-us/record")
	}
}

// drainProfile names a file for a CPU profile of EngineEndToEnd's drain
// alone (go test -cpuprofile also takes in the preload, mostly fsyncs and
// encoding): go test ./engine -bench ... -args -drainprofile=drain.out.
// With several sub-benchmarks, the last one run writes it.
var drainProfile = flag.String("drainprofile", "", "write a CPU profile of each EngineEndToEnd drain to this file")

// endToEnd drives b.N webhook notifications through r's engine to the mock
// (batches of 500, 8 calls in flight) and reports records/s and CPU.
func endToEnd(b *testing.B, r *rig) { endToEndWith(b, r, func(*engine.Config) {}) }

func endToEndWith(b *testing.B, r *rig, set func(*engine.Config)) {
	endToEndFrom(b, r, set, (*rig).enqueue)
}

// enqueueKeyless writes ns to their lanes without record keys or
// idempotency keys, as serve's default ingest (dedupe.at_ingest keyed)
// writes keyless items on the embedded log: the poller derives each key.
func (r *rig) enqueueKeyless(ns ...*notification.Notification) {
	r.t.Helper()
	recs := make([]partition.Record, 0, 5000)
	now := time.Now()
	for i, n := range ns {
		n.Stamp(now)
		recs = append(recs, partition.Record{Topic: r.topics.Lane(n.Priority), Value: r.codec.Encode(n)})
		if len(recs) == cap(recs) || i == len(ns)-1 {
			if err := r.prod.Produce(context.Background(), recs); err != nil {
				r.t.Fatal(err)
			}
			recs = recs[:0]
		}
	}
}

func endToEndFrom(b *testing.B, r *rig, set func(*engine.Config), enqueue func(*rig, ...*notification.Notification)) {
	ch := r.channels(false)
	wh := r.webhook(b, 500, 8)
	ch[notification.Webhook] = engine.ChannelConfig{Provider: wh, Rate: 1e9}
	ns := webhookBatch(b.N, 0)
	enqueue(r, ns...)
	cfg := r.config(ch)
	set(&cfg)
	b.SetBytes(int64(len(r.codec.AppendEncode(nil, ns[0])))) // one notification's record
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	stopProfile := startDrainProfile(b)
	_, stop := r.start(cfg)
	waitFor(b, 2*time.Minute, "every send", func() bool { return r.mock.Stats().Unique == int64(b.N) })
	b.StopTimer()
	stopProfile()
	reportCPU(b, cpu, b.N)
	stop()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// startDrainProfile starts the -drainprofile CPU profile, if asked for,
// and returns what stops it.
func startDrainProfile(b *testing.B) (stop func()) {
	if *drainProfile == "" {
		return func() {}
	}
	f, err := os.Create(*drainProfile)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// webhook is the benchmarks' provider: the webhook adapter to r's mock,
// batch items a call and concurrency calls in flight.
func (r *rig) webhook(b *testing.B, batch, concurrency int) *providers.Webhook {
	wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: providers.EndpointConfig{BaseURL: r.mock.URL()},
		Path: "/webhook/orders", Secret: "whsec", Batch: batch, Concurrency: concurrency})
	if err != nil {
		b.Fatal(err)
	}
	return wh
}

// instantProvider accepts every item of every batch at once.
type instantProvider struct{ sent atomic.Int64 }

func (*instantProvider) Name() string     { return "instant" }
func (*instantProvider) MaxBatch() int    { return 500 }
func (*instantProvider) Concurrency() int { return 8 }
func (p *instantProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	for i := range batch {
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "instant"}
	}
	p.sent.Add(int64(len(batch)))
}

// latencyProbe wraps a provider and records, for each critical item the
// provider accepted, the time from acceptance to the provider's answer.
type latencyProbe struct {
	providers.Provider
	mu   sync.Mutex
	hist *hdrhistogram.Histogram // microseconds
	// durable holds, by id, when each critical notification's enqueue
	// returned (it was in the log); after measures from there.
	durable map[string]time.Time
	after   *hdrhistogram.Histogram
	// after split at the provider call: from durable to the call (poll,
	// claim, rings, dispatch, a sender), and the call itself (HTTP and the
	// mock on the same cores).
	toCall, call *hdrhistogram.Histogram
}

func (l *latencyProbe) Send(ctx context.Context, batch []*notification.Notification, results []providers.Result) {
	called := time.Now()
	l.Provider.Send(ctx, batch, results)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, n := range batch {
		if n.Priority == notification.Critical && results[i].Outcome == providers.Sent {
			_ = l.hist.RecordValue(now.Sub(n.AcceptedAt).Microseconds())
			if t, ok := l.durable[n.ID]; ok && l.after != nil {
				_ = l.after.RecordValue(max(now.Sub(t).Microseconds(), 1))
				_ = l.toCall.RecordValue(max(called.Sub(t).Microseconds(), 1))
				_ = l.call.RecordValue(max(now.Sub(called).Microseconds(), 1))
			}
		}
	}
}

// BenchmarkCriticalLatencyDuringBurst preloads 1,000,000 bulk
// notifications on one channel, starts the engine, and while they drain
// enqueues b.N critical ones, 10 every 5 ms. It reports the critical
// notifications' latency from acceptance to the provider's ack (p50, p99,
// max), the same from the moment the enqueue returned (the engine's own
// share, without the durable append), and how much of the burst was still
// queued when the last critical one went out (above 0, or part of the
// critical traffic ran on an idle engine). The idle sub-benchmark sends the
// same critical traffic with no burst: the baseline of the same run.
func BenchmarkCriticalLatencyDuringBurst(b *testing.B) {
	b.Run("idle", func(b *testing.B) { criticalLatency(b, 0, false) })
	b.Run("burst-1M", func(b *testing.B) { criticalLatency(b, 1_000_000, false) })
	// With the dedupe confirms synced, as serve runs them.
	b.Run("burst-1M-dedupe-sync", func(b *testing.B) { criticalLatency(b, 1_000_000, true) })
}

func criticalLatency(b *testing.B, burst int, ddSync bool) {
	r := newRigSync(b, backends[0], ddSync)
	r.topics.KeylessLanes = true // as serve writes the embedded log's lanes
	wh := r.webhook(b, 500, 8)
	probe := &latencyProbe{Provider: wh, hist: hdrhistogram.New(1, 60_000_000, 3), durable: map[string]time.Time{},
		after: hdrhistogram.New(1, 60_000_000, 3), toCall: hdrhistogram.New(1, 60_000_000, 3),
		call: hdrhistogram.New(1, 60_000_000, 3)}
	ch := r.channels(false)
	ch[notification.Webhook] = engine.ChannelConfig{Provider: probe, Rate: 1e9}
	bulk := webhookBatch(burst, 0)
	for _, n := range bulk {
		n.Priority = notification.Bulk
	}
	r.enqueue(bulk...)
	b.ReportAllocs()
	b.ResetTimer()
	schedBefore := schedLatencies()
	_, stop := r.start(r.config(ch))
	crit := webhookBatch(b.N, burst)
	enqHist := hdrhistogram.New(1, 60_000_000, 3)
	for i := 0; i < len(crit); i += 10 {
		part := crit[i:min(i+10, len(crit))]
		for _, n := range part {
			n.Priority = notification.Critical
			n.Prepare(time.Now()) // the id, so the probe can find when it was durable
		}
		t0 := time.Now()
		r.enqueue(part...)
		t1 := time.Now()
		_ = enqHist.RecordValue(t1.Sub(t0).Microseconds())
		probe.mu.Lock()
		for _, n := range part {
			probe.durable[n.ID] = t1
		}
		probe.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	waitFor(b, 2*time.Minute, "the critical notifications", func() bool {
		probe.mu.Lock()
		defer probe.mu.Unlock()
		return probe.hist.TotalCount() == int64(b.N)
	})
	left := int64(burst+b.N) - r.mock.Stats().Unique
	schedP99 := schedLatencies().p99Since(schedBefore)
	b.StopTimer()
	stop()
	probe.mu.Lock()
	defer probe.mu.Unlock()
	b.ReportMetric(float64(probe.hist.ValueAtQuantile(50))/1000, "p50-ms")
	b.ReportMetric(float64(probe.hist.ValueAtQuantile(99))/1000, "p99-ms")
	b.ReportMetric(float64(probe.hist.Max())/1000, "max-ms")
	b.ReportMetric(float64(left), "bulk-queued-at-end")
	// What priority costs the burst: its rate while the codes flowed.
	b.ReportMetric(float64(int64(burst)-left)/b.Elapsed().Seconds(), "bulk-sent/s")
	b.ReportMetric(float64(enqHist.ValueAtQuantile(99))/1000, "enqueue-p99-ms")
	// From the moment the enqueue returned (the record durable in the log)
	// to the provider's ack: the engine's own share of the latency.
	b.ReportMetric(float64(probe.after.ValueAtQuantile(50))/1000, "after-enqueue-p50-ms")
	b.ReportMetric(float64(probe.after.ValueAtQuantile(99))/1000, "after-enqueue-p99-ms")
	// That share split: up to the provider call, and the call.
	b.ReportMetric(float64(probe.toCall.ValueAtQuantile(99))/1000, "to-call-p99-ms")
	b.ReportMetric(float64(probe.call.ValueAtQuantile(99))/1000, "call-p99-ms")
	// How long runnable goroutines waited for a CPU, all of them: a p99 near
	// the critical one says the tail is contention for the two cores, not
	// a queue in the engine.
	b.ReportMetric(schedP99*1000, "sched-wait-p99-ms")
	// The engine's own split of the critical sends (bucket upper bounds).
	for _, stage := range []string{"log", "engine", "provider"} {
		b.ReportMetric(stageP99(b, r.reg, "critical", stage)*1000, "stage-"+stage+"-p99-ms")
	}
}

// stageP99 is the upper bound of the bucket holding the 99th percentile of
// goutong_stage_latency_seconds for a priority and stage, in seconds.
func stageP99(b *testing.B, reg *prometheus.Registry, priority, stage string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "goutong_stage_latency_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			h := m.GetHistogram()
			if labels["priority"] != priority || labels["stage"] != stage || h.GetSampleCount() == 0 {
				continue
			}
			for _, bk := range h.GetBucket() {
				if bk.GetCumulativeCount()*100 >= h.GetSampleCount()*99 {
					return bk.GetUpperBound()
				}
			}
			return math.Inf(1)
		}
	}
	return 0
}

// schedHist is a snapshot of the runtime's scheduling-latency histogram.
type schedHist struct {
	counts  []uint64
	buckets []float64
}

func schedLatencies() schedHist {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	return schedHist{counts: slices.Clone(h.Counts), buckets: h.Buckets}
}

// p99Since is the 99th percentile, in seconds (a bucket's upper bound), of
// the waits recorded after before.
func (h schedHist) p99Since(before schedHist) float64 {
	diff := make([]uint64, len(h.counts))
	var total uint64
	for i := range diff {
		diff[i] = h.counts[i] - before.counts[i]
		total += diff[i]
	}
	var seen uint64
	for i, c := range diff {
		if seen += c; total > 0 && seen*100 >= total*99 {
			if up := h.buckets[i+1]; !math.IsInf(up, 1) {
				return up
			}
			return h.buckets[i] // the last bucket is open-ended
		}
	}
	return 0
}

// BenchmarkApplyReceipts measures final delivery receipts applied a second
// after a campaign: 1M notifications' accepted and sent events in the
// status store as a drain writes them, then receipts for them, each looked
// up in the store (an unknown id is kept for later) and turned into a
// delivered event on the status topic and in the store. A batch is one
// provider call: SendGrid's and the webhook's arrays (1,000), Twilio's one
// receipt a request (1). Receipts come in the order the notifications were
// sent, as carriers' reports roughly do, or in random order, the worst case
// for the store's reads.
func BenchmarkApplyReceipts(b *testing.B) {
	for _, c := range []struct {
		batch  int
		random bool
	}{{1, false}, {1000, false}, {1000, true}} {
		order := "sent"
		if c.random {
			order = "random"
		}
		b.Run(fmt.Sprintf("batch=%d/order=%s", c.batch, order), func(b *testing.B) {
			r := newRig(b, backends[0])
			e, stop := r.start(r.config(r.channels(false)))
			defer stop()
			ids, _ := engine.WriteDrainBacklog(b, r.status, 1_000_000)
			if c.random {
				rnd := rand.New(rand.NewPCG(3, 5))
				rnd.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
			}
			rs := make([]providers.Receipt, c.batch)
			at := time.Now()
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i += c.batch {
				rs = rs[:min(c.batch, b.N-i)]
				for j := range rs {
					rs[j] = providers.Receipt{ID: ids[(i+j)%len(ids)], ProviderMessageID: "m", Delivered: true, Final: true, At: at}
				}
				applied, unknown, err := e.ApplyReceipts(ctx, "webhook", rs)
				if err != nil || applied != len(rs) || len(unknown) != 0 {
					b.Fatalf("applied %d of %d, unknown %v: %v", applied, len(rs), unknown, err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "receipts/s")
		})
	}
}
