package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// StatusWebhook sends one tenant's status events to its own endpoint: a
// signed JSON array of events per request (the same signature as the
// webhook provider, see providers.VerifySignature), retried with the
// engine's backoff on 5xx, 429 (honouring Retry-After), timeouts and
// transport errors, and dead-lettered to Topics.StatusDLQ when attempts run
// out or the endpoint refuses them (another 4xx).
//
// Delivery is at-least-once and in order per tenant (so per notification):
// a receiver drops repeats by event_id.
type StatusWebhook struct {
	URL         string
	Secret      string
	States      []State       // only these states (default: all)
	Batch       int           // events per request (default 100)
	MaxAttempts int           // before dead letters (default 10)
	Timeout     time.Duration // per request (default 10s)
}

// statusHooksGroup is the consumer group of the status-webhook forwarder;
// each tenant's sender reads its own topic in the group of this name plus
// the topic.
const statusHooksGroup = "goutong-status-webhooks"

// hookRetention is how long a tenant's topic keeps events its endpoint has
// not taken, as the status topic keeps them (the status store keeps them
// for its own window either way).
const hookRetention = 24 * time.Hour

type hookItem struct {
	key []byte // the notification's id
	raw []byte // the event's JSON
	src string // the status record it came from (topic/partition@offset)
}

type hookTenant struct {
	name   string
	topic  string
	cfg    StatusWebhook
	ep     *providers.Endpoint
	states map[State]bool
}

// hookForwarder consumes the status topic and copies each webhook tenant's
// events into the tenant's own topic; one sender per tenant reads that
// topic and posts to the tenant's endpoint at its pace. A tenant whose
// endpoint is down or slow falls behind in its own topic, and nobody
// else's events wait for it.
type hookForwarder struct {
	e       *Engine
	tenants map[string]*hookTenant

	mu      sync.Mutex
	offsets map[partition.TopicPartition]int64 // of the status topic, copied and ready to commit

	sends      *prometheus.CounterVec // per tenant and outcome: delivered, retried, dead_lettered
	backlog    *prometheus.GaugeVec   // per tenant: events in its topic not yet delivered or dead-lettered
	readErrors prometheus.Counter     // failed polls of the status topic (tried again)
}

func newHookForwarder(e *Engine) (*hookForwarder, error) {
	f := &hookForwarder{e: e, tenants: map[string]*hookTenant{}, offsets: map[partition.TopicPartition]int64{},
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_status_webhook_events_total",
			Help: "Status events sent to tenants' webhooks, by tenant and outcome (delivered, retried, dead_lettered)."},
			[]string{"tenant", "outcome"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "goutong_status_webhook_backlog",
			Help: "Status events waiting in a tenant's webhook topic (on the node whose sender reads it)."}, []string{"tenant"}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_status_webhook_read_errors_total",
			Help: "Polls of the status topic by the status webhooks' forwarder that failed, each tried again a second later."})}
	for tenant, c := range e.cfg.StatusWebhooks {
		if c.URL == "" || c.Secret == "" {
			return nil, fmt.Errorf("engine: status webhook of tenant %q needs a URL and a secret", tenant)
		}
		if c.Batch <= 0 {
			c.Batch = 100
		}
		if c.MaxAttempts <= 0 {
			c.MaxAttempts = 10
		}
		if c.Timeout <= 0 {
			c.Timeout = 10 * time.Second
		}
		ep, err := providers.NewEndpoint(providers.EndpointConfig{BaseURL: c.URL, RequestTimeout: c.Timeout})
		if err != nil {
			return nil, fmt.Errorf("engine: status webhook of tenant %q: %w", tenant, err)
		}
		t := &hookTenant{name: tenant, topic: e.cfg.Topics.StatusHooksTopic(tenant), cfg: c, ep: ep}
		if len(c.States) > 0 {
			t.states = map[State]bool{}
			for _, s := range c.States {
				t.states[s] = true
			}
		}
		f.tenants[tenant] = t
	}
	return f, nil
}

// run forwards and sends until ctx ends; a batch being posted then gets
// drain to finish. What was not finished is replayed by the next run.
func (f *hookForwarder) run(ctx context.Context, drain time.Duration) error {
	specs := make([]partition.TopicSpec, 0, len(f.tenants))
	for _, t := range f.tenants {
		specs = append(specs, partition.TopicSpec{Name: t.topic, Partitions: 1, RetentionAge: hookRetention,
			DeleteUncommitted: true, Compression: "s2"})
	}
	if err := f.e.log.EnsureTopics(ctx, specs...); err != nil {
		return fmt.Errorf("engine: status webhook topics: %w", err)
	}
	log, err := f.e.cfg.Open(partition.ConsumerConfig{Group: statusHooksGroup, Topics: []string{f.e.cfg.Topics.Status}})
	if err != nil {
		return fmt.Errorf("engine: status webhooks: %w", err)
	}
	defer log.Close()
	// Senders stop taking batches when ctx ends; one in flight gets drain.
	sendCtx, stopSend := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSend()
	var senders sync.WaitGroup
	for _, t := range f.tenants {
		senders.Go(func() { f.send(ctx, sendCtx, t) })
	}
	commitStop := make(chan struct{})
	var committer sync.WaitGroup
	committer.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				f.commit(log)
			case <-commitStop:
				return
			}
		}
	})
	pollErr := f.forward(ctx, log)
	close(commitStop)
	committer.Wait()
	f.commit(log)
	done := make(chan struct{})
	go func() { senders.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		stopSend()
		<-done
	}
	return pollErr
}

// forward copies each poll's webhook events to their tenants' topics in
// one produce; then the whole poll is done.
func (f *hookForwarder) forward(ctx context.Context, log partition.Log) error {
	for ctx.Err() == nil {
		recs, err := log.Poll(ctx, 500)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, partition.ErrClosed) {
				return err
			}
			// Not the end of the webhooks for the process's life: no
			// tenant would get another event, and nothing would say so.
			f.readErrors.Inc()
			f.e.cfg.Logger.Warn("status webhooks: read the status topic; reading again", zap.Error(err))
			if f.e.cfg.Clock.Sleep(ctx, time.Second) != nil {
				return nil
			}
			continue
		}
		var out []partition.Record
		next := map[partition.TopicPartition]int64{}
		for i := range recs {
			r := &recs[i]
			next[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
			var ev struct {
				Tenant string `json:"tenant"`
				State  State  `json:"state"`
			}
			if json.Unmarshal(r.Value, &ev) != nil {
				continue
			}
			t := f.tenants[ev.Tenant]
			if t == nil || (t.states != nil && !t.states[ev.State]) {
				continue
			}
			out = append(out, partition.Record{Topic: t.topic, Key: r.Key, Value: r.Value,
				Headers: []partition.Header{{Key: HeaderSource, Value: []byte(source(r))}}})
		}
		for len(out) > 0 {
			err := f.e.log.Produce(ctx, out)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil // not committed: copied again by the next run
			}
			f.e.cfg.Logger.Warn("status webhooks: copy to tenant topics", zap.Error(err))
			out = partition.Unwritten(out, err) // a copy written twice is a webhook sent twice
			if f.e.cfg.Clock.Sleep(ctx, time.Second) != nil {
				return nil
			}
		}
		f.mu.Lock()
		maps.Copy(f.offsets, next)
		f.mu.Unlock()
	}
	return nil
}

// commit commits the status topic's offsets copied since the last commit:
// an idle forwarder writes nothing.
func (f *hookForwarder) commit(log partition.Log) {
	f.mu.Lock()
	offs := f.offsets
	f.offsets = map[partition.TopicPartition]int64{}
	f.mu.Unlock()
	if len(offs) == 0 {
		return
	}
	if err := log.Commit(context.Background(), offs); err != nil {
		f.e.cfg.Logger.Warn("status webhooks: commit", zap.Error(err))
		f.mu.Lock()
		for tp, o := range offs {
			if _, newer := f.offsets[tp]; !newer {
				f.offsets[tp] = o
			}
		}
		f.mu.Unlock()
	}
}

// send reads one tenant's topic in batches and delivers each, retrying it
// until it is sent, refused, or out of attempts (then dead letters), and
// commits it; it takes no new batch once ctx ends.
func (f *hookForwarder) send(ctx, sendCtx context.Context, t *hookTenant) {
	log, err := f.e.cfg.Open(partition.ConsumerConfig{Group: statusHooksGroup + "." + t.topic, Topics: []string{t.topic}})
	if err != nil {
		f.e.cfg.Logger.Error("status webhooks: tenant topic", zap.String("tenant", t.name), zap.Error(err))
		return
	}
	defer log.Close()
	backlog := func() {
		if n, err := totalLag(context.WithoutCancel(sendCtx), log); err == nil {
			f.backlog.WithLabelValues(t.name).Set(float64(n))
		}
	}
	backlog()
	// Also while a batch is being retried: a failing endpoint's backlog
	// must show growing, not frozen at its last success.
	ticking := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				backlog()
			case <-ticking:
				return
			}
		}
	})
	defer ticker.Wait()
	defer close(ticking)
	for ctx.Err() == nil {
		recs, err := log.Poll(ctx, t.cfg.Batch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.e.cfg.Logger.Warn("status webhooks: read tenant topic", zap.String("tenant", t.name), zap.Error(err))
			if f.e.cfg.Clock.Sleep(ctx, time.Second) != nil {
				return
			}
			continue
		}
		if len(recs) == 0 {
			continue
		}
		batch := make([]hookItem, len(recs))
		next := map[partition.TopicPartition]int64{}
		for i := range recs {
			r := &recs[i]
			src, _ := r.HeaderValue(HeaderSource)
			batch[i] = hookItem{key: r.Key, raw: r.Value, src: string(src)}
			next[partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
		}
		if !f.deliver(sendCtx, t, batch) {
			return // stopped: replayed by the next run
		}
		if err := log.Commit(context.WithoutCancel(sendCtx), next); err != nil {
			f.e.cfg.Logger.Warn("status webhooks: commit tenant topic", zap.String("tenant", t.name), zap.Error(err))
		}
		backlog()
	}
}

func (f *hookForwarder) deliver(ctx context.Context, t *hookTenant, batch []hookItem) bool {
	var body bytes.Buffer
	body.WriteByte('[')
	for i, it := range batch {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(it.raw)
	}
	body.WriteByte(']')
	var last providers.Result
	attempt := 0
	for attempt < t.cfg.MaxAttempts {
		attempt++
		last = t.ep.PostSigned(ctx, t.cfg.URL, []byte(t.cfg.Secret), body.Bytes(), f.e.cfg.Clock.Now())
		if last.Outcome == providers.Sent {
			f.sends.WithLabelValues(t.name, "delivered").Add(float64(len(batch)))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if last.Outcome == providers.Permanent {
			break
		}
		f.sends.WithLabelValues(t.name, "retried").Add(float64(len(batch)))
		if attempt < t.cfg.MaxAttempts {
			if f.e.cfg.Clock.Sleep(ctx, f.e.cfg.Backoff.Delay(attempt, last.RetryAfter)) != nil {
				return false
			}
		}
	}
	reason := reasonExhausted
	if last.Outcome == providers.Permanent {
		reason = reasonPermanent
	}
	now := f.e.cfg.Clock.Now()
	recs := make([]partition.Record, len(batch))
	for i, it := range batch {
		recs[i] = deadLetterRecord(f.e.cfg.Topics.StatusDLQ, it.key, it.raw, reason, last.Reason, attempt, it.src, now)
		recs[i].Headers = append(recs[i].Headers, partition.Header{Key: HeaderTenant, Value: []byte(t.name)})
	}
	for {
		err := f.e.log.Produce(ctx, recs)
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			return false
		}
		f.e.cfg.Logger.Warn("status webhooks: dead letters", zap.Error(err))
		recs = partition.Unwritten(recs, err)
		if f.e.cfg.Clock.Sleep(ctx, time.Second) != nil {
			return false
		}
	}
	f.e.cfg.Logger.Warn("status webhook events dead-lettered", zap.String("tenant", t.name), zap.Int("events", len(batch)),
		zap.String("reason", reason), zap.String("error", last.Reason))
	f.sends.WithLabelValues(t.name, "dead_lettered").Add(float64(len(batch)))
	return true
}
