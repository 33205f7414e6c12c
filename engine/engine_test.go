package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
	"github.com/goutong/goutong/wal"
)

// backend opens Logs over one log: the embedded wal (every Log a view of
// one open wal) or a kfake cluster over loopback.
type backend struct {
	name string
	open func(t testing.TB, dir string) func(partition.ConsumerConfig) (partition.Log, error)
}

var backends = []backend{
	{"wal", func(t testing.TB, dir string) func(partition.ConsumerConfig) (partition.Log, error) {
		w, err := wal.Open(filepath.Join(dir, "log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		return func(cc partition.ConsumerConfig) (partition.Log, error) { return partition.NewWAL(w, cc), nil }
	}},
	{"kafka", func(t testing.TB, _ string) func(partition.ConsumerConfig) (partition.Log, error) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return func(cc partition.ConsumerConfig) (partition.Log, error) {
			return partition.NewKafka(partition.KafkaConfig{Brokers: c.ListenAddrs(), SessionTimeout: 6 * time.Second}, cc)
		}
	}},
}

type rig struct {
	t      testing.TB
	dir    string
	open   func(partition.ConsumerConfig) (partition.Log, error)
	mock   *mockserver.Server
	dd     *dedupe.Store
	status *engine.StatusStore
	codec  *notification.Codec
	topics engine.Topics
	reg    *prometheus.Registry
	prod   partition.Log
}

func newRig(t testing.TB, b backend) *rig { return newRigSync(t, b, false) }

// newRigSync is newRig with the dedupe store's confirms synced or not
// (serve syncs them; the tests do not need to).
func newRigSync(t testing.TB, b backend, ddSync bool) *rig {
	dir := t.TempDir()
	m, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	dd, err := dedupe.Open(filepath.Join(dir, "dedupe"), dedupe.WithCreate(), dedupe.WithSync(ddSync))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dd.Close() })
	st, err := engine.OpenStatus(filepath.Join(dir, "status"), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &rig{t: t, dir: dir, open: b.open(t, dir), mock: m, dd: dd, status: st, codec: notification.NewCodec(),
		topics: engine.DefaultTopics(), reg: prometheus.NewRegistry()}
	r.prod, err = r.open(partition.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.prod.Close() })
	if err := r.prod.EnsureTopics(context.Background(), r.topics.Specs(4)...); err != nil {
		t.Fatal(err)
	}
	return r
}

func templates(t testing.TB) *providers.Templates {
	tpl, err := providers.NewTemplates(map[string]providers.TemplateSource{"otp": {Subject: "Code", Body: "Your code is {{.code}}"}})
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// channels builds every adapter pointed at the mock, each behind its own
// breaker and adaptive limit.
func (r *rig) channels(guard bool) map[notification.Channel]engine.ChannelConfig {
	t := r.t
	ep := providers.EndpointConfig{BaseURL: r.mock.URL(), RequestTimeout: 5 * time.Second}
	tw, err := providers.NewTwilio(providers.TwilioConfig{Endpoint: ep, AccountSID: "ACmock", AuthToken: "tok", From: "+15005550006", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	sg, err := providers.NewSendGrid(providers.SendGridConfig{Endpoint: ep, APIKey: "SG.key", From: "noreply@acme.example", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	fc, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ProjectID: "acme", Token: "fcm", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: ep, Path: "/webhook/orders", Secret: "whsec", Batch: 50})
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(p providers.Provider) providers.Provider {
		if !guard {
			return p
		}
		b := providers.NewBreaker(providers.BreakerConfig{OpenFor: 300 * time.Millisecond}, nil)
		return providers.Guard(p, b, providers.NewAdaptiveLimit(20_000, 2000), nil)
	}
	return map[notification.Channel]engine.ChannelConfig{
		notification.SMS:     {Provider: wrap(tw), Rate: 20_000},
		notification.Email:   {Provider: wrap(sg), Rate: 20_000},
		notification.Push:    {Provider: wrap(fc), Rate: 20_000},
		notification.Webhook: {Provider: wrap(wh), Rate: 20_000},
	}
}

func (r *rig) config(ch map[notification.Channel]engine.ChannelConfig) engine.Config {
	return engine.Config{Open: r.open, Channels: ch, Dedupe: r.dd, Status: r.status, Registry: r.reg,
		Partitions: 4, Backoff: engine.Backoff{Base: 10 * time.Millisecond, Max: 200 * time.Millisecond},
		MaxAttempts: 50, CommitInterval: 50 * time.Millisecond, DrainTimeout: 2 * time.Second}
}

// shortLeases opens a dedupe store of its own whose claims last 500 ms, so
// a test can let one run out.
func (r *rig) shortLeases() *dedupe.Store {
	dd, err := dedupe.Open(filepath.Join(r.dir, "dedupe-short-leases"), dedupe.WithCreate(), dedupe.WithSync(false),
		dedupe.WithLease(500*time.Millisecond))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { dd.Close() })
	return dd
}

// start runs an engine until the test ends or the returned stop is called.
func (r *rig) start(cfg engine.Config) (*engine.Engine, func()) {
	e, err := engine.New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := e.Run(ctx)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "engine Run ended before stop: %v\n", err)
		}
		done <- err
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				r.t.Errorf("engine Run: %v", err)
			}
		})
	}
	r.t.Cleanup(stop)
	return e, stop
}

func (r *rig) enqueue(ns ...*notification.Notification) {
	r.t.Helper()
	for i := 0; i < len(ns); i += 5000 {
		if err := engine.Enqueue(context.Background(), r.prod, r.topics, r.codec, time.Now(), ns[i:min(i+5000, len(ns))]...); err != nil {
			r.t.Fatal(err)
		}
	}
}

var allChannels = []notification.Channel{notification.SMS, notification.Email, notification.Push, notification.Webhook}

func recipient(ch notification.Channel, i int) string {
	switch ch {
	case notification.SMS:
		return fmt.Sprintf("+1555%07d", i)
	case notification.Email:
		return fmt.Sprintf("user%d@example.com", i)
	case notification.Push:
		return fmt.Sprintf("device-token-%d", i)
	}
	return fmt.Sprintf("https://hooks.example/%d", i)
}

func mixed(n int, tag string) []*notification.Notification {
	out := make([]*notification.Notification, n)
	for i := range out {
		ch := allChannels[i%len(allChannels)]
		out[i] = &notification.Notification{Channel: ch, Priority: notification.Priority(1 + i%notification.NumPriorities),
			Tenant: "acme", Recipient: recipient(ch, i), Template: "otp", Vars: map[string]string{"code": tag + fmt.Sprint(i)}}
	}
	return out
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// N notifications in, exactly N sends at the provider: none lost, none
// twice; then the same through 5xx, 429 with Retry-After and an outage.
func TestEngineDeliversEachOnce(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name+"/clean", func(t *testing.T) {
			r := newRig(t, b)
			ns := mixed(2000, "c")
			r.enqueue(ns...)
			_, stop := r.start(r.config(r.channels(true)))
			waitFor(t, 60*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
			// The mock answers before the engine confirms the batch: until
			// then a repeat finds the key in flight (not sent either, but
			// counted as such), so the storm below waits for the confirms.
			waitFor(t, 30*time.Second, "every send confirmed", func() bool {
				return counterSum(t, r.reg, "goutong_dedupe_confirms_total") >= float64(len(ns))
			})
			// An alert storm: the same notifications again under new ids;
			// their idempotency keys were sent, so nothing goes out.
			dups := make([]*notification.Notification, 100)
			for i := range dups {
				d := *ns[i]
				d.ID, d.AcceptedAt = "", time.Time{}
				dups[i] = &d
			}
			r.enqueue(dups...)
			waitFor(t, 30*time.Second, "the duplicates to be recognised", func() bool {
				return counterSum(t, r.reg, "goutong_duplicates_total") == float64(len(dups))
			})
			// The idempotency store's own series say the same.
			if got := counterSum(t, r.reg, "goutong_dedupe_duplicates_total"); got != float64(len(dups)) {
				t.Fatalf("goutong_dedupe_duplicates_total %v, want %d", got, len(dups))
			}
			if got := counterSum(t, r.reg, "goutong_dedupe_confirms_total"); got < float64(len(ns)) {
				t.Fatalf("goutong_dedupe_confirms_total %v, want at least %d", got, len(ns))
			}
			stop()
			r.checkEachOnce(ns)
			if s, err := r.status.Get(dups[0].ID); err != nil || s.State != engine.StateDuplicate || s.Current.DuplicateOf != ns[0].ID {
				t.Fatalf("status of a duplicate: %+v %v", s, err)
			}
		})
		t.Run(b.name+"/faults", func(t *testing.T) {
			r := newRig(t, b)
			r.mock.SetFaults(mockserver.Faults{ErrorRate: 0.1, ThrottleRate: 0.1, RetryAfter: mockserver.Duration(time.Second)})
			ns := mixed(400, "f")
			_, stop := r.start(r.config(r.channels(true)))
			r.enqueue(ns[:200]...)
			waitFor(t, 60*time.Second, "the first sends", func() bool { return r.mock.Stats().Unique >= 50 })
			// A provider outage of two seconds while more arrive.
			r.mock.SetFaults(mockserver.Faults{ErrorRate: 0.1, ThrottleRate: 0.1, RetryAfter: mockserver.Duration(time.Second),
				OutageFor: mockserver.Duration(2 * time.Second)})
			r.enqueue(ns[200:]...)
			waitFor(t, 120*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
			stop()
			st := r.mock.Stats()
			if st.Faulted == 0 {
				t.Fatal("no fault was injected")
			}
			r.checkEachOnce(ns)
			if got := counterSum(t, r.reg, "goutong_retries_total"); got == 0 {
				t.Fatal("faults caused no retries")
			}
		})
	}
}

// counterSum adds up every series of a counter family.
func counterSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// counterWith is the counter name's series with every label of labels.
func counterWith(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := 0
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
					match++
				}
			}
			if match == len(labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func (r *rig) checkEachOnce(ns []*notification.Notification) {
	t := r.t
	t.Helper()
	st := r.mock.Stats()
	if st.Unique != int64(len(ns)) || st.Duplicates != 0 || st.Received != int64(len(ns)) {
		t.Fatalf("mock saw %d unique, %d received, %d duplicates; want %d each once", st.Unique, st.Received, st.Duplicates, len(ns))
	}
	for _, n := range ns {
		if c := r.mock.Count(n.ID); c != 1 {
			t.Fatalf("%s reached the provider %d times", n.ID, c)
		}
		s, err := r.status.Get(n.ID)
		if err != nil || s.State != engine.StateSent {
			t.Fatalf("status of %s: %v %+v", n.ID, err, s)
		}
	}
}

// A restart replays only what was in flight, and the dedupe store keeps
// what was already sent from going out again.
func TestEngineRestartSendsRestOnce(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			ch := r.channels(false)
			ns := mixed(3000, "r")
			r.enqueue(ns...)
			cfg := r.config(ch)
			cfg.DrainTimeout = time.Millisecond // stop mid-stream
			_, stop := r.start(cfg)
			waitFor(t, 60*time.Second, "some sends", func() bool { return r.mock.Stats().Unique >= 300 })
			stop()
			if got := r.mock.Stats().Unique; got == int64(len(ns)) {
				t.Logf("the first run sent everything (%d) before stopping", got)
			}
			cfg2 := r.config(ch)
			cfg2.Registry = prometheus.NewRegistry()
			_, stop2 := r.start(cfg2)
			waitFor(t, 60*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
			time.Sleep(300 * time.Millisecond) // room for a wrong second send to show
			stop2()
			r.checkEachOnce(ns)
		})
	}
}

// While 200,000 bulk sends are queued on a channel, critical sends enqueued
// then reach the provider ahead of the remaining bulk.
func TestEnginePriorityIsolation(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			ch := r.channels(false)
			cs := ch[notification.SMS]
			cs.Rate = 2000 // bulk may use 80%: the burst takes over 100 s to drain
			ch[notification.SMS] = cs
			const bulkN = 200_000
			bulk := make([]*notification.Notification, bulkN)
			for i := range bulk {
				bulk[i] = &notification.Notification{Channel: notification.SMS, Priority: notification.Bulk, Recipient: recipient(notification.SMS, i),
					Content: &notification.Content{Body: "Spring sale"}}
			}
			r.enqueue(bulk...)
			_, stop := r.start(r.config(ch))
			defer stop()
			waitFor(t, 60*time.Second, "the bulk burst to start", func() bool { return r.mock.Stats().ByChannel["sms"] >= 500 })
			crit := make([]*notification.Notification, 100)
			for i := range crit {
				crit[i] = &notification.Notification{Channel: notification.SMS, Priority: notification.Critical,
					Recipient: recipient(notification.SMS, 9_000_000+i), Template: "otp", Vars: map[string]string{"code": fmt.Sprint(i)}}
			}
			before := r.mock.Stats().ByChannel["sms"]
			r.enqueue(crit...)
			waitFor(t, 30*time.Second, "every critical send", func() bool {
				for _, n := range crit {
					if r.mock.Count(n.ID) == 0 {
						return false
					}
				}
				return true
			})
			after := r.mock.Stats().ByChannel["sms"]
			bulkBetween := after - before - int64(len(crit))
			t.Logf("bulk sends while the critical ones were in flight: %d; bulk sent so far %d of %d", bulkBetween, after-int64(len(crit)), bulkN)
			if after-int64(len(crit)) >= bulkN/2 {
				t.Fatalf("critical sends waited for half the bulk burst (%d sent)", after)
			}
			if bulkBetween > 10_000 {
				t.Fatalf("%d bulk sends went ahead of the critical ones", bulkBetween)
			}
		})
	}
}

// dlqReader reads the dead-letter topic in a group of its own.
func (r *rig) dlqReader(group string) partition.Log {
	l, err := r.open(partition.ConsumerConfig{Group: group, Topics: []string{r.topics.DLQ}})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { l.Close() })
	return l
}

func readDLQ(t *testing.T, l partition.Log, want int) []engine.DeadLetter {
	t.Helper()
	var out []engine.DeadLetter
	for _, rec := range readRecords(t, l, want, "dead letters") {
		out = append(out, engine.ParseDeadLetter(rec))
	}
	return out
}

// readRecords polls l until it has want records, for a minute at most.
func readRecords(t *testing.T, l partition.Log, want int, what string) []partition.Record {
	t.Helper()
	var out []partition.Record
	deadline := time.Now().Add(60 * time.Second)
	for len(out) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d, want %d", what, len(out), want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		recs, err := l.Poll(ctx, 100)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		out = append(out, recs...)
	}
	return out
}

// Expired codes are never sent; poison records and permanent failures land
// in dead letters with their reason; exhausted retries too; and dead
// letters can be replayed once the cause is fixed.
func TestEngineExpiryDeadLettersReplay(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			cfg := r.config(r.channels(false))
			cfg.MaxAttempts = 3
			_, stop := r.start(cfg)
			defer stop()
			now := time.Now()
			expired := &notification.Notification{Channel: notification.SMS, Priority: notification.Critical, Recipient: "+15550000001",
				Template: "otp", Vars: map[string]string{"code": "1"}, ExpiresAt: now.Add(-time.Second)}
			invalid := &notification.Notification{Channel: notification.SMS, Priority: notification.High, Recipient: "+1555invalid",
				Template: "otp", Vars: map[string]string{"code": "2"}}
			good := &notification.Notification{Channel: notification.Email, Priority: notification.Normal, Recipient: "a@example.com",
				Template: "otp", Vars: map[string]string{"code": "3"}}
			r.enqueue(expired, invalid, good)
			poison := partition.Record{Topic: r.topics.Ingress, Key: []byte("p"), Value: []byte(`{"channel":"sms","recipient":`)}
			// fastjson's parser reads this one; JSON has no \x escape.
			lenient := partition.Record{Topic: r.topics.Ingress, Key: []byte("q"),
				Value: []byte(`{"channel":"sms","recipient":"+1555\x41","template":"otp","vars":{"code":"5"}}`)}
			if err := r.prod.Produce(context.Background(), []partition.Record{poison, lenient}); err != nil {
				t.Fatal(err)
			}
			dlq := r.dlqReader("test-dlq")
			letters := readDLQ(t, dlq, 3)
			reasons := map[string]engine.DeadLetter{}
			undecoded := map[string]string{}
			for _, d := range letters {
				reasons[d.Reason] = d
				if d.Reason == "decode" {
					undecoded[string(d.Record.Value)] = d.Error
				}
			}
			for _, p := range []partition.Record{poison, lenient} {
				if reason, ok := undecoded[string(p.Value)]; !ok || !strings.Contains(reason, "malformed JSON") {
					t.Fatalf("%s not dead-lettered as it arrived, with its reason: %+v", p.Value, letters)
				}
			}
			if d, ok := reasons["permanent"]; !ok || d.Attempts != 1 {
				t.Fatalf("permanent failure not dead-lettered after one attempt: %+v", reasons)
			}
			waitFor(t, 30*time.Second, "the good send", func() bool { return r.mock.Count(good.ID) == 1 })
			waitFor(t, 10*time.Second, "expired status", func() bool {
				s, err := r.status.Get(expired.ID)
				return err == nil && s.State == engine.StateExpired
			})
			if r.mock.Count(expired.ID) != 0 {
				t.Fatal("an expired code was sent")
			}

			// Retries run out while the provider fails every request.
			r.mock.SetFaults(mockserver.Faults{ErrorRate: 1})
			doomed := &notification.Notification{Channel: notification.Push, Priority: notification.High, Recipient: "device-9",
				Template: "otp", Vars: map[string]string{"code": "4"}}
			r.enqueue(doomed)
			d := readDLQ(t, dlq, 1)[0]
			if d.Reason != "retries-exhausted" || d.Attempts != 3 {
				t.Fatalf("exhausted retry dead-lettered as %+v", d)
			}
			waitFor(t, 10*time.Second, "dead-lettered status", func() bool {
				s, err := r.status.Get(doomed.ID)
				return err == nil && s.State == engine.StateDeadLettered && len(s.History) == 3
			})

			// The provider recovers; a replay sends what can be sent.
			r.mock.SetFaults(mockserver.Faults{})
			rep, err := engine.ReplayDeadLetters(context.Background(), r.dlqReader("goutong-dlq-replay"), r.topics, r.codec, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Replayed != 2 || rep.Undecoded != 2 {
				t.Fatalf("replay: %+v", rep)
			}
			waitFor(t, 30*time.Second, "the replayed send", func() bool { return r.mock.Count(doomed.ID) == 1 })
			// The invalid recipient fails again and is dead-lettered again.
			if d := readDLQ(t, dlq, 1)[0]; d.Reason != "permanent" {
				t.Fatalf("replayed permanent failure: %+v", d)
			}
			if r.mock.Count(invalid.ID) != 0 {
				t.Fatal("the mock counted a refused item as received")
			}
		})
	}
}

// fakeClock advances only when the engine sleeps, so rates are measured in
// simulated time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

// The channel's rate, its reserved share and a change at runtime, checked
// on a fake clock: the time the engine had to wait is what the limit says.
func TestEngineRateLimitFakeClock(t *testing.T) {
	r := newRig(t, backends[0])
	clock := &fakeClock{now: time.Unix(1_900_000_000, 0)}
	ch := r.channels(false)
	sms := ch[notification.SMS]
	sms.Rate, sms.Burst, sms.Reserve, sms.Linger = 1000, 100, 0.2, -1
	cfg := r.config(map[notification.Channel]engine.ChannelConfig{notification.SMS: sms})
	cfg.Clock = clock
	e, _ := r.start(cfg)
	batch := func(n, from int) []*notification.Notification {
		out := make([]*notification.Notification, n)
		for i := range out {
			out[i] = &notification.Notification{Channel: notification.SMS, Priority: notification.Normal, Recipient: recipient(notification.SMS, from+i),
				Content: &notification.Content{Body: "hello"}, AcceptedAt: clock.Now()}
		}
		return out
	}
	measure := func(ns []*notification.Notification, total int64) time.Duration {
		t0 := clock.Now()
		r.enqueue(ns...)
		waitFor(t, 60*time.Second, "the sends", func() bool { return r.mock.Stats().Unique == total })
		return clock.Now().Sub(t0)
	}
	// Normal may use 80% of 1000/s after the bucket's 80-token burst.
	got := measure(batch(3000, 0), 3000)
	if want := time.Duration(float64(3000-80) / 800 * float64(time.Second)); got < want*95/100 || got > want*105/100 {
		t.Fatalf("3000 normal sends took %v of simulated time, want about %v", got, want)
	}
	if err := e.SetRate(notification.SMS, 2000); err != nil {
		t.Fatal(err)
	}
	got = measure(batch(3000, 3000), 6000)
	if want := time.Duration(float64(3000) / 1600 * float64(time.Second)); got < want*90/100 || got > want*110/100 {
		t.Fatalf("after SetRate(2000), 3000 sends took %v, want about %v", got, want)
	}
}

// A rate-limited bulk backlog goes out in full batches: the dispatcher
// waits for the tokens of a whole batch instead of sending one request per
// token as the bucket refills.
func TestEngineBatchesUnderRateLimit(t *testing.T) {
	r := newRig(t, backends[0])
	ns := webhookBatch(3000, 0)
	for _, n := range ns {
		n.Priority = notification.Bulk
	}
	r.enqueue(ns...)
	ch := r.channels(false)
	wh := ch[notification.Webhook] // batches of 50
	wh.Rate = 6000
	ch[notification.Webhook] = wh
	_, stop := r.start(r.config(ch))
	waitFor(t, 60*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
	stop()
	// 60 full batches; allow some partial ones at the start and the end.
	if st := r.mock.Stats(); st.Requests > 90 {
		t.Fatalf("%d requests for %d notifications in batches of 50: batches are not filled while the bucket refills", st.Requests, len(ns))
	}
}

// A backlog many times the ring size, all in the log before the engine
// starts, pauses every partition; the rings draining must resume them even
// though no new record arrives to wake the poller.
func TestEngineBackpressureResumes(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			ns := webhookBatch(5000, 0)
			r.enqueue(ns...)
			ch := r.channels(false)
			wh := ch[notification.Webhook]
			wh.Rate, wh.Burst = 2000, 10 // drain slower than the poller fills
			ch[notification.Webhook] = wh
			cfg := r.config(ch)
			cfg.RingSize = 16
			cfg.PollMax = 100
			_, stop := r.start(cfg)
			waitFor(t, 60*time.Second, "every notification at the mock", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
			stop()
			if st := r.mock.Stats(); st.Received != int64(len(ns)) {
				t.Fatalf("mock received %d, want %d each once", st.Received, len(ns))
			}
		})
	}
}

// A paused channel sends nothing and holds its work in the rings (visible
// in Stats); resuming sends all of it once.
func TestEnginePauseChannel(t *testing.T) {
	r := newRig(t, backends[0])
	e, stop := r.start(r.config(r.channels(true)))
	if err := e.PauseChannel(notification.Webhook, true); err != nil {
		t.Fatal(err)
	}
	if err := e.PauseChannel("fax", true); !errors.Is(err, engine.ErrUnknownChannel) {
		t.Fatalf("unknown channel: %v", err)
	}
	ns := webhookBatch(100, 0)
	r.enqueue(ns...)
	depth := func() int {
		for _, st := range e.Stats() {
			if st.Channel == string(notification.Webhook) {
				if !st.Paused {
					t.Fatal("stats do not show the pause")
				}
				n := 0
				for _, d := range st.Depth {
					n += d
				}
				return n
			}
		}
		t.Fatal("no webhook channel in stats")
		return 0
	}
	waitFor(t, 30*time.Second, "the paused channel's rings to hold every notification", func() bool { return depth() == len(ns) })
	if got := r.mock.Stats().Received; got != 0 {
		t.Fatalf("paused channel sent %d", got)
	}
	if err := e.PauseChannel(notification.Webhook, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every notification after resume", func() bool { return r.mock.Stats().Unique == int64(len(ns)) })
	stop()
	if st := r.mock.Stats(); st.Received != int64(len(ns)) {
		t.Fatalf("received %d, want %d", st.Received, len(ns))
	}
}

// gatedProvider holds every normal and bulk batch until release is closed
// and sends critical and high ones at once.
type gatedProvider struct {
	release     chan struct{}
	lowInFlight atomic.Int64
	lowMax      atomic.Int64
	urgentSent  atomic.Int64
}

func (*gatedProvider) Name() string     { return "gated" }
func (*gatedProvider) MaxBatch() int    { return 10 }
func (*gatedProvider) Concurrency() int { return 8 }
func (p *gatedProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	if pr := batch[0].Priority; pr == notification.Normal || pr == notification.Bulk {
		n := p.lowInFlight.Add(1)
		for m := p.lowMax.Load(); n > m && !p.lowMax.CompareAndSwap(m, n); m = p.lowMax.Load() {
		}
		<-p.release
		p.lowInFlight.Add(-1)
	} else {
		p.urgentSent.Add(int64(len(batch)))
	}
	for i := range batch {
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "gated"}
	}
}

// retryOnceProvider refuses every notification's first send (retriable),
// then sends critical ones at once and holds bulk batches until release.
type retryOnceProvider struct {
	release                     chan struct{}
	refused, criticalSent, bulk atomic.Int64
}

func (*retryOnceProvider) Name() string     { return "retry-once" }
func (*retryOnceProvider) MaxBatch() int    { return 10 }
func (*retryOnceProvider) Concurrency() int { return 4 }
func (p *retryOnceProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	if batch[0].Attempts == 1 {
		for i := range batch {
			results[i] = providers.Result{Outcome: providers.Retriable, Reason: "try again"}
		}
		p.refused.Add(int64(len(batch)))
		return
	}
	if batch[0].Priority == notification.Bulk {
		<-p.release
		p.bulk.Add(int64(len(batch)))
	} else {
		p.criticalSent.Add(int64(len(batch)))
	}
	for i := range batch {
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "retry-once"}
	}
}

// TestEngineCodeRetriesPassFullBulk: while bulk retries fill their ring
// (the provider holds every bulk send), codes' retries still go out: they
// are in a retry topic of their own, not in the partitions the full bulk
// ring paused. Over both logs.
func TestEngineCodeRetriesPassFullBulk(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			p := &retryOnceProvider{release: make(chan struct{})}
			ch := r.channels(false)
			ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
			cfg := r.config(ch)
			cfg.RingSize = 16
			bulk := webhookBatch(400, 0)
			for _, n := range bulk {
				n.Priority = notification.Bulk
			}
			r.enqueue(bulk...)
			_, stop := r.start(cfg)
			released := false
			defer func() {
				if !released {
					close(p.release)
				}
				stop()
			}()
			// Every bulk notification refused once, and its retries filling
			// the ring: the partitions they come from (all four) paused.
			waitFor(t, 10*time.Second, "bulk retries pausing their partitions", func() bool {
				return p.refused.Load() >= int64(len(bulk)) && gaugeOf(t, r.reg, "goutong_partitions_paused", "", "") >= 4
			})
			codes := webhookBatch(40, 1000)
			for _, n := range codes {
				n.Priority = notification.Critical
			}
			r.enqueue(codes...)
			waitFor(t, 20*time.Second, "the codes' retries sent", func() bool { return p.criticalSent.Load() == int64(len(codes)) })
			close(p.release)
			released = true
			waitFor(t, 30*time.Second, "the bulk sent once released", func() bool { return p.bulk.Load() == int64(len(bulk)) })
		})
	}
}

// scheduleProvider accepts everything and counts sends made before the
// notification's not_before.
type scheduleProvider struct {
	sent, early atomic.Int64
}

func (*scheduleProvider) Name() string     { return "schedule" }
func (*scheduleProvider) MaxBatch() int    { return 100 }
func (*scheduleProvider) Concurrency() int { return 4 }
func (p *scheduleProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	now := time.Now()
	for i, n := range batch {
		if now.Before(n.NotBefore) {
			p.early.Add(1)
		}
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "schedule"}
	}
	p.sent.Add(int64(len(batch)))
}

// TestEngineScheduledDoNotHoldTheRest: notifications scheduled for
// tomorrow, more of them than the delay heap holds, do not hold up the
// ones due now behind them in the same lanes; ones due in seconds hop
// through the parking topics (hops of 100 ms to 2 s here) and go out on
// time, never early; over both logs, and on Kafka also as a node with a
// node id, whose records from the longer hops meet in the shortest's.
func TestEngineScheduledDoNotHoldTheRest(t *testing.T) {
	type variant struct {
		name string
		b    backend
		node string
	}
	for _, v := range []variant{{backends[0].name, backends[0], ""}, {backends[1].name, backends[1], ""}, {"kafka-node", backends[1], "a"}} {
		t.Run(v.name, func(t *testing.T) {
			r := newRig(t, v.b)
			p := &scheduleProvider{}
			ch := r.channels(false)
			ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
			cfg := r.config(ch)
			cfg.NodeID = v.node
			cfg.MaxDelayed = 50
			cfg.Topics = r.topics
			cfg.Topics.ParkTiers = []engine.ParkTier{{Hop: 100 * time.Millisecond, Suffix: "s", Retention: time.Hour},
				{Hop: 500 * time.Millisecond, Suffix: "m", Retention: time.Hour}, {Hop: 2 * time.Second, Suffix: "l", Retention: time.Hour}}
			bulk := func(ns []*notification.Notification, at time.Time) []*notification.Notification {
				for _, n := range ns {
					n.Priority, n.NotBefore = notification.Bulk, at
				}
				return ns
			}
			later := bulk(webhookBatch(300, 0), time.Now().Add(24*time.Hour))
			soon := bulk(webhookBatch(300, 1000), time.Now().Add(3*time.Second))
			r.enqueue(later...)
			r.enqueue(soon...)
			_, stop := r.start(cfg)
			defer stop()
			waitFor(t, 10*time.Second, "records parked", func() bool { return counterSum(t, r.reg, "goutong_parked_total") >= 300 })
			now := bulk(webhookBatch(100, 2000), time.Time{})
			r.enqueue(now...)
			waitFor(t, 30*time.Second, "the notifications due now and soon", func() bool {
				return p.sent.Load() == int64(len(now)+len(soon))
			})
			time.Sleep(300 * time.Millisecond)
			if s, e := p.sent.Load(), p.early.Load(); s != int64(len(now)+len(soon)) || e != 0 {
				t.Fatalf("%d sent (want %d: tomorrow's none), %d before their time", s, len(now)+len(soon), e)
			}
		})
	}
}

// hintingProvider refuses each notification's first send with a
// Retry-After of a century, as a broken or hostile provider might, and
// accepts every later one.
type hintingProvider struct {
	mu    sync.Mutex
	seen  map[string]int
	sent  atomic.Int64
	hints atomic.Int64
}

func (*hintingProvider) Name() string     { return "hinting" }
func (*hintingProvider) MaxBatch() int    { return 50 }
func (*hintingProvider) Concurrency() int { return 4 }
func (p *hintingProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range batch {
		if p.seen[n.ID]++; p.seen[n.ID] == 1 {
			results[i] = providers.Result{Outcome: providers.Retriable, RetryAfter: 100 * 365 * 24 * time.Hour, Reason: "come back later"}
			p.hints.Add(1)
			continue
		}
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "hinting"}
		p.sent.Add(1)
	}
}

// TestEngineCapsRetryAfter: a provider's Retry-After of a century holds a
// retry only up to the configured cap (here 300 ms), over both logs; held
// for the hint, the retries would outlive the retry topic's retention.
func TestEngineCapsRetryAfter(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			p := &hintingProvider{seen: map[string]int{}}
			ch := r.channels(false)
			ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
			cfg := r.config(ch)
			cfg.Backoff.MaxRetryAfter = 300 * time.Millisecond
			ns := webhookBatch(200, 0)
			r.enqueue(ns...)
			_, stop := r.start(cfg)
			defer stop()
			waitFor(t, 30*time.Second, "every retry sent", func() bool { return p.sent.Load() == int64(len(ns)) })
			if h := p.hints.Load(); h != int64(len(ns)) {
				t.Fatalf("%d first sends refused, want %d", h, len(ns))
			}
		})
	}
}

// TestEngineCodesPassBlockedBulk: with every sender stuck in a bulk send and
// the dispatcher holding the next bulk batch, codes still go out; the bulk
// goes once released, never more than the channel's senders at once.
func TestEngineCodesPassBlockedBulk(t *testing.T) {
	r := newRig(t, backends[0])
	p := &gatedProvider{release: make(chan struct{})}
	ch := r.channels(false)
	ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
	bulk := webhookBatch(2000, 0)
	for _, n := range bulk {
		n.Priority = notification.Bulk
	}
	r.enqueue(bulk...)
	_, stop := r.start(r.config(ch))
	defer stop()
	var once sync.Once
	release := func() { once.Do(func() { close(p.release) }) }
	defer release() // before stop, so a failing test does not hang in it
	waitFor(t, 30*time.Second, "every sender busy with bulk", func() bool { return p.lowInFlight.Load() == 8 })
	codes := webhookBatch(50, 2000)
	for _, n := range codes {
		n.Priority = notification.Critical
	}
	r.enqueue(codes...)
	waitFor(t, 30*time.Second, "the codes, past the blocked bulk", func() bool { return p.urgentSent.Load() == 50 })
	release()
	waitFor(t, 60*time.Second, "the bulk", func() bool { return p.urgentSent.Load() == 50 && p.lowInFlight.Load() == 0 })
	if m := p.lowMax.Load(); m > 8 {
		t.Fatalf("%d bulk sends at once, over the channel's 8", m)
	}
}

// orderProvider records the ids it is sent, in order.
type orderProvider struct {
	mu  sync.Mutex
	ids []string
}

func (*orderProvider) Name() string     { return "order" }
func (*orderProvider) MaxBatch() int    { return 10 }
func (*orderProvider) Concurrency() int { return 1 }
func (p *orderProvider) Send(_ context.Context, batch []*notification.Notification, results []providers.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range batch {
		p.ids = append(p.ids, n.ID)
		results[i] = providers.Result{Outcome: providers.Sent, Provider: "order"}
	}
}

func (p *orderProvider) sent() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids)
}

// TestEngineShortestHopReadAhead: the shortest hop's parking topic holds
// records due before their wake (parked there by a full heap, or to meet
// their copies) behind heads that wake later. One parked behind a head
// that waits seconds is read and sent at its own time, before the head.
func TestEngineShortestHopReadAhead(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			p := &orderProvider{}
			ch := r.channels(false)
			ch[notification.Webhook] = engine.ChannelConfig{Provider: p, Rate: 1e9}
			cfg := r.config(ch)
			cfg.Topics = r.topics
			cfg.Topics.ParkTiers = []engine.ParkTier{{Hop: 3 * time.Second, Suffix: "s", Retention: time.Hour},
				{Hop: 6 * time.Second, Suffix: "m", Retention: time.Hour}}
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "the engine", e.Ready)
			park := func(order int, due, wake time.Time) string {
				n := webhookBatch(1, order)[0]
				n.ID, n.NotBefore = notification.NewID(), due
				rec := partition.Record{Topic: cfg.Topics.ParkTopic(0), Key: []byte("same partition"), Value: r.codec.Encode(n),
					Headers: []partition.Header{
						{Key: engine.HeaderDue, Value: strconv.AppendInt(nil, due.UnixMilli(), 10)},
						{Key: engine.HeaderWake, Value: strconv.AppendInt(nil, wake.UnixMilli(), 10)},
					}}
				if err := r.prod.Produce(context.Background(), []partition.Record{rec}); err != nil {
					t.Fatal(err)
				}
				return n.ID
			}
			now := time.Now()
			head := park(0, now.Add(4*time.Second), now.Add(4*time.Second))
			waitFor(t, 10*time.Second, "the head held", func() bool { return gaugeOf(t, r.reg, "goutong_delayed_records", "", "") == 1 })
			behind := park(1, time.Now().Add(200*time.Millisecond), time.Now().Add(4*time.Second))
			waitFor(t, 20*time.Second, "both sent", func() bool { return len(p.sent()) == 2 })
			if got := p.sent(); got[0] != behind || got[1] != head {
				t.Fatalf("sent %v, want %s (due first) before the head %s", got, behind, head)
			}
		})
	}
}

// A claim is taken when its record is polled, and the item may wait far
// longer than the lease before its send (here behind a paused channel). A
// later record of the same key (a producer's late retry) must not take the
// key over and go out as well: one of the two is sent.
func TestClaimHeldPastItsLease(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			dd := r.shortLeases()
			cfg := r.config(r.channels(false))
			cfg.Dedupe = dd
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			if err := e.PauseChannel(notification.Webhook, true); err != nil {
				t.Fatal(err)
			}
			order := func(body string) *notification.Notification {
				return &notification.Notification{Channel: notification.Webhook, Recipient: "https://hooks.example/orders",
					Content: &notification.Content{Body: body}, Tenant: "acme", IdempotencyKey: "order-42"}
			}
			r.enqueue(order(`{"order":42}`))
			waitFor(t, 10*time.Second, "the first to be claimed", func() bool { return dd.Metrics().Claims == 1 })
			time.Sleep(1500 * time.Millisecond) // three leases behind the pause
			r.enqueue(order(`{"order":42,"retry":true}`))
			waitFor(t, 10*time.Second, "the second to be claimed", func() bool {
				m := dd.Metrics()
				return m.Claims+m.TakenOver+m.InFlight >= 2
			})
			if err := e.PauseChannel(notification.Webhook, false); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "a send", func() bool { return r.mock.Stats().Received >= 1 })
			time.Sleep(time.Second) // a second send, if any, has arrived
			if s := r.mock.Stats(); s.Received != 1 {
				t.Fatalf("provider received %d sends of one idempotency key, want 1", s.Received)
			}
		})
	}
}

// TestFailedSendKeepsATakeoversConfirm: a send slower than the lease (here
// one that times out) loses its key to a later record of it, which is sent
// and confirmed meanwhile. The slow one then fails and is released for a
// retry; the release must drop its own claim only, not the other's
// confirm, or the retry finds the key free and sends it a second time.
func TestFailedSendKeepsATakeoversConfirm(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			dd := r.shortLeases()
			wh, err := providers.NewWebhook(providers.WebhookConfig{Path: "/webhook/orders", Secret: "whsec", Batch: 1,
				Endpoint: providers.EndpointConfig{BaseURL: r.mock.URL(), RequestTimeout: 1500 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			cfg := r.config(map[notification.Channel]engine.ChannelConfig{
				notification.Webhook: {Provider: wh, Rate: 1000, Concurrency: 2}})
			cfg.Dedupe = dd
			e, stop := r.start(cfg)
			defer stop()
			waitFor(t, 20*time.Second, "ready", e.Ready)
			order := func(body string) *notification.Notification {
				return &notification.Notification{Channel: notification.Webhook, Recipient: "https://hooks.example/orders",
					Content: &notification.Content{Body: body}, Tenant: "acme", IdempotencyKey: "order-42"}
			}
			r.mock.SetFaults(mockserver.Faults{SlowRate: 1, SlowDelay: mockserver.Duration(3 * time.Second)})
			r.enqueue(order(`{"order":42}`))
			waitFor(t, 10*time.Second, "the first send to reach the provider", func() bool { return r.mock.Stats().Requests >= 1 })
			r.mock.SetFaults(mockserver.Faults{})
			time.Sleep(700 * time.Millisecond) // past the first's lease: its send is still held
			r.enqueue(order(`{"order":42,"retry":true}`))
			waitFor(t, 10*time.Second, "the second to take the key over and be confirmed", func() bool {
				return dd.Metrics().TakenOver >= 1 && dd.Metrics().Confirms >= 1
			})
			// The first times out (1.5 s), is released and retried; the
			// provider answers its held request at 3 s.
			waitFor(t, 10*time.Second, "the first's held request", func() bool { return r.mock.Stats().Received >= 2 })
			time.Sleep(1500 * time.Millisecond) // a retry's send, if any, has arrived
			if s := r.mock.Stats(); s.Received != 2 {
				t.Fatalf("provider received %d sends of one key (the timed-out one, the takeover, and %d more), want 2",
					s.Received, s.Received-2)
			}
		})
	}
}
