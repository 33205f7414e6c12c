package engine_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// hookReceiver is a tenant's endpoint: it checks signatures, fails the
// first failFirst requests with 503, and keeps the events it took.
type hookReceiver struct {
	secret    string
	status    int // answer after the failures (0: 200)
	mu        sync.Mutex
	failFirst int
	requests  int
	events    []engine.StatusEvent
	badSig    int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests++
	if err := providers.VerifySignature([]byte(h.secret), r.Header.Get(providers.TimestampHeader),
		r.Header.Get(providers.SignatureHeader), body, time.Now(), time.Minute); err != nil {
		h.badSig++
		w.WriteHeader(401)
		return
	}
	if h.failFirst > 0 {
		h.failFirst--
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(503)
		return
	}
	if h.status != 0 {
		w.WriteHeader(h.status)
		return
	}
	var evs []engine.StatusEvent
	if err := json.Unmarshal(body, &evs); err != nil {
		w.WriteHeader(400)
		return
	}
	h.events = append(h.events, evs...)
}

func (h *hookReceiver) snapshot() ([]engine.StatusEvent, int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]engine.StatusEvent(nil), h.events...), h.requests, h.badSig
}

// Status webhooks: acme's endpoint fails its first requests, then takes
// every acme event, in order per notification, signed; globex's refuses
// them (400), so they land in the status dead letters with the reason;
// initech has no webhook and nobody is called for it.
func TestStatusWebhooks(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRig(t, b)
			acme := &hookReceiver{secret: "acme-secret", failFirst: 3}
			globex := &hookReceiver{secret: "globex-secret", status: 400}
			umbrella := &hookReceiver{secret: "umbrella-secret", failFirst: 1 << 30} // always 503
			sa, sg, su := httptest.NewServer(acme), httptest.NewServer(globex), httptest.NewServer(umbrella)
			defer sa.Close()
			defer sg.Close()
			defer su.Close()
			var ns []*notification.Notification
			for i, tenant := range []string{"acme", "globex", "initech", "umbrella"} {
				batch := webhookBatch(60, i*100)
				for _, n := range batch {
					n.Tenant = tenant
				}
				ns = append(ns, batch...)
			}
			cfg := r.config(r.channels(false))
			cfg.StatusWebhooks = map[string]engine.StatusWebhook{
				"acme":     {URL: sa.URL + "/goutong/events", Secret: "acme-secret", Batch: 25},
				"globex":   {URL: sg.URL, Secret: "globex-secret", MaxAttempts: 3},
				"umbrella": {URL: su.URL, Secret: "umbrella-secret", MaxAttempts: 2},
			}
			e, stop := r.start(cfg)
			waitFor(t, 10*time.Second, "the engine", e.Ready)
			if _, _, err := e.Ingest(context.Background(), ns, time.Now()); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 60*time.Second, "acme's sent events", func() bool {
				evs, _, _ := acme.snapshot()
				sent := 0
				for _, e := range evs {
					if e.State == engine.StateSent {
						sent++
					}
				}
				return sent >= 60
			})
			stop()
			evs, requests, bad := acme.snapshot()
			if bad != 0 || requests < 3+60/25 {
				t.Fatalf("acme: %d requests, %d with bad signatures", requests, bad)
			}
			// Every acme notification's "accepted" arrives before its "sent".
			seen := map[string][]engine.State{}
			for _, e := range evs {
				if e.Tenant != "acme" {
					t.Fatalf("acme got an event of tenant %q", e.Tenant)
				}
				seen[e.ID] = append(seen[e.ID], e.State)
			}
			if len(seen) != 60 {
				t.Fatalf("acme got events of %d notifications, want 60", len(seen))
			}
			for id, states := range seen {
				if len(states) < 2 || states[0] != engine.StateAccepted || states[len(states)-1] != engine.StateSent {
					t.Fatalf("acme's events of %s arrived as %v", id, states)
				}
			}
			if _, _, bad := globex.snapshot(); bad != 0 {
				t.Fatalf("globex: %d bad signatures", bad)
			}
			// globex's events are in the status dead letters, refused for good;
			// umbrella's too, after its two attempts.
			l, err := r.open(partition.ConsumerConfig{Group: "status-dlq-check", Topics: []string{engine.DefaultTopics().StatusDLQ}})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ids := map[string]map[string]bool{"globex": {}, "umbrella": {}}
			want := map[string]string{"globex": "permanent", "umbrella": "retries-exhausted"}
			deadline := time.Now().Add(20 * time.Second)
			for (len(ids["globex"]) < 60 || len(ids["umbrella"]) < 60) && time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				recs, _ := l.Poll(ctx, 1000)
				cancel()
				for _, rec := range recs {
					h := map[string]string{}
					for _, hd := range rec.Headers {
						h[hd.Key] = string(hd.Value)
					}
					var e engine.StatusEvent
					if err := json.Unmarshal(rec.Value, &e); err != nil || ids[e.Tenant] == nil || h[engine.HeaderTenant] != e.Tenant ||
						h[engine.HeaderReason] != want[e.Tenant] || h[engine.HeaderError] == "" {
						t.Fatalf("status dead letter %s with headers %v: %v", rec.Value, h, err)
					}
					if e.Tenant == "globex" && !strings.Contains(h[engine.HeaderError], "400") {
						t.Fatalf("globex's dead letter error %q", h[engine.HeaderError])
					}
					ids[e.Tenant][e.ID] = true
				}
			}
			if len(ids["globex"]) != 60 || len(ids["umbrella"]) != 60 {
				t.Fatalf("status dead letters: %d of globex's and %d of umbrella's 60 notifications", len(ids["globex"]), len(ids["umbrella"]))
			}
			if _, requests, _ := umbrella.snapshot(); requests < 2 {
				t.Fatalf("umbrella was tried %d times", requests)
			}
			if got := counterSum(t, r.reg, "goutong_status_webhook_events_total"); got < 360 {
				t.Fatalf("status webhook counter %v", got)
			}
		})
	}
}

// A tenant whose endpoint keeps failing holds more events than any queue
// (5,000: accepted and sent of 2,500 notifications) while its sends are
// retried; another tenant's events still all arrive.
func TestStatusWebhooksTenantIsolation(t *testing.T) {
	r := newRig(t, backends[0])
	slow := &hookReceiver{secret: "slow-secret", failFirst: 1 << 30}
	fast := &hookReceiver{secret: "fast-secret"}
	ss, sf := httptest.NewServer(slow), httptest.NewServer(fast)
	defer ss.Close()
	defer sf.Close()
	var ns []*notification.Notification
	for i, tenant := range []string{"slow", "fast"} {
		batch := webhookBatch(map[string]int{"slow": 2500, "fast": 50}[tenant], i*10_000)
		for _, n := range batch {
			n.Tenant = tenant
		}
		ns = append(ns, batch...)
	}
	cfg := r.config(r.channels(false))
	cfg.StatusWebhooks = map[string]engine.StatusWebhook{
		"slow": {URL: ss.URL, Secret: "slow-secret", MaxAttempts: 1 << 20},
		"fast": {URL: sf.URL, Secret: "fast-secret"},
	}
	e, stop := r.start(cfg)
	defer stop()
	waitFor(t, 10*time.Second, "the engine", e.Ready)
	if _, _, err := e.Ingest(context.Background(), ns, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every event of the fast tenant", func() bool {
		evs, _, _ := fast.snapshot()
		return len(evs) >= 100
	})
	if _, requests, _ := slow.snapshot(); requests == 0 {
		t.Fatal("the slow tenant was never tried")
	}
	// The backlog gauge shows the failing tenant's events waiting (while
	// its first batch is still being retried) and none for the other.
	waitFor(t, 20*time.Second, "the slow tenant's backlog", func() bool {
		return gaugeOf(t, r.reg, "goutong_status_webhook_backlog", "tenant", "slow") >= 4000 &&
			gaugeOf(t, r.reg, "goutong_status_webhook_backlog", "tenant", "fast") == 0
	})
}

// gaugeOf is the value of the gauge name with the label key=value (with no
// labels when key is empty), or -1.
func gaugeOf(t testing.TB, reg *prometheus.Registry, name, key, value string) float64 {
	t.Helper()
	if ms := seriesOf(t, reg, name, key, value); len(ms) > 0 {
		return ms[0].GetGauge().GetValue()
	}
	return -1
}

// seriesOf is reg's series of the metric name with label key set to value,
// or without labels when key is "".
func seriesOf(t testing.TB, reg *prometheus.Registry, name, key, value string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if key == "" && len(m.GetLabel()) == 0 {
				out = append(out, m)
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == key && l.GetValue() == value {
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// A failed read of the status topic does not end the status webhooks: the
// forwarder reads again, and every event still reaches the tenant.
func TestStatusWebhooksRideOutReadErrors(t *testing.T) {
	r := newRig(t, backends[0])
	acme := &hookReceiver{secret: "acme-secret"}
	srv := httptest.NewServer(acme)
	defer srv.Close()
	var fail atomic.Int64
	fail.Store(3)
	cfg := r.config(r.channels(false))
	cfg.StatusWebhooks = map[string]engine.StatusWebhook{"acme": {URL: srv.URL, Secret: "acme-secret"}}
	// The forwarder's group; the tenants' senders read in groups of their own.
	forwarder := func(group string) bool { return group == "goutong-status-webhooks" }
	wrapLogsOf(&cfg, forwarder, func(l partition.Log) partition.Log { return failingPolls{l, &fail} })
	e, stop := r.start(cfg)
	defer stop()
	waitFor(t, 10*time.Second, "the engine", e.Ready)
	ns := webhookBatch(50, 0)
	if _, _, err := e.Ingest(context.Background(), ns, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every accepted and sent event at acme", func() bool {
		evs, _, _ := acme.snapshot()
		return len(evs) >= 2*len(ns)
	})
	if got := counterSum(t, r.reg, "goutong_status_webhook_read_errors_total"); got != 3 {
		t.Fatalf("goutong_status_webhook_read_errors_total %v, want 3", got)
	}
}
