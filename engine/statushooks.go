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

// statusHooksGroup is the consumer group of the status-webhook forwarder.
const statusHooksGroup = "goutong-status-webhooks"

// hookQueue bounds the events waiting for one tenant's endpoint: a full
// queue blocks the forwarder's poller (backpressure) rather than growing.
const hookQueue = 4096

type hookItem struct {
	tp  partition.TopicPartition
	off int64
	src string // topic/partition@offset, for a dead letter
	raw []byte
	ev  StatusEvent
}

type hookTenant struct {
	name   string
	cfg    StatusWebhook
	ep     *providers.Endpoint
	states map[State]bool
	queue  chan hookItem
}

// hookForwarder consumes the status topic and feeds each tenant's sender.
type hookForwarder struct {
	e       *Engine
	log     partition.Log
	tenants map[string]*hookTenant

	mu    sync.Mutex
	marks map[partition.TopicPartition]*Watermark
	// committed is the last offset committed per partition (commit only).
	committed map[partition.TopicPartition]int64

	sends *prometheus.CounterVec // per tenant and outcome: delivered, retried, dead_lettered
}

func newHookForwarder(e *Engine) (*hookForwarder, error) {
	f := &hookForwarder{e: e, tenants: map[string]*hookTenant{}, marks: map[partition.TopicPartition]*Watermark{},
		committed: map[partition.TopicPartition]int64{},
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_status_webhook_events_total",
			Help: "Status events sent to tenants' webhooks, by tenant and outcome (delivered, retried, dead_lettered)."},
			[]string{"tenant", "outcome"})}
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
		t := &hookTenant{name: tenant, cfg: c, ep: ep, queue: make(chan hookItem, hookQueue)}
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

// run forwards until ctx ends, then gives the queued events drain to go
// out, commits what was sent or dead-lettered and closes its consumer.
// What was not finished is replayed by the next run.
func (f *hookForwarder) run(ctx context.Context, drain time.Duration) error {
	log, err := f.e.cfg.Open(partition.ConsumerConfig{Group: statusHooksGroup, Topics: []string{f.e.cfg.Topics.Status}})
	if err != nil {
		return fmt.Errorf("engine: status webhooks: %w", err)
	}
	f.log = log
	defer log.Close()
	sendCtx, stopSend := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSend()
	var senders sync.WaitGroup
	for _, t := range f.tenants {
		senders.Go(func() { f.send(sendCtx, t) })
	}
	commitStop := make(chan struct{})
	var committer sync.WaitGroup
	committer.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				f.commit()
			case <-commitStop:
				return
			}
		}
	})
	pollErr := f.poll(ctx)
	for _, t := range f.tenants {
		close(t.queue)
	}
	done := make(chan struct{})
	go func() { senders.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		stopSend()
		<-done
	}
	close(commitStop)
	committer.Wait()
	f.commit()
	return pollErr
}

func (f *hookForwarder) poll(ctx context.Context) error {
	for ctx.Err() == nil {
		recs, err := f.log.Poll(ctx, 500)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, r := range recs {
			tp := partition.TopicPartition{Topic: r.Topic, Partition: r.Partition}
			f.mu.Lock()
			wm := f.marks[tp]
			if wm == nil {
				wm = NewWatermark(r.Offset)
				f.marks[tp] = wm
			}
			_ = wm.Track(r.Offset)
			f.mu.Unlock()
			var ev StatusEvent
			var t *hookTenant
			if json.Unmarshal(r.Value, &ev) == nil {
				t = f.tenants[ev.Tenant]
			}
			if t == nil || (t.states != nil && !t.states[ev.State]) {
				f.done(tp, r.Offset)
				continue
			}
			select {
			case t.queue <- hookItem{tp: tp, off: r.Offset, src: source(&r), raw: r.Value, ev: ev}:
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}

func (f *hookForwarder) done(tp partition.TopicPartition, off int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marks[tp].Done(off)
}

// commit commits the partitions whose watermark moved since the last
// commit: an idle forwarder writes nothing.
func (f *hookForwarder) commit() {
	f.mu.Lock()
	offs := map[partition.TopicPartition]int64{}
	for tp, wm := range f.marks {
		if c := wm.Committable(); c != f.committed[tp] {
			offs[tp] = c
		}
	}
	f.mu.Unlock()
	if len(offs) == 0 {
		return
	}
	if err := f.log.Commit(context.Background(), offs); err != nil {
		f.e.cfg.Logger.Warn("status webhooks: commit", zap.Error(err))
		return
	}
	f.mu.Lock()
	maps.Copy(f.committed, offs)
	f.mu.Unlock()
}

// send delivers one tenant's queue in batches, retrying a batch until it
// is sent, refused, or out of attempts (then dead letters).
func (f *hookForwarder) send(ctx context.Context, t *hookTenant) {
	batch := make([]hookItem, 0, t.cfg.Batch)
	for it := range t.queue {
		batch = append(batch[:0], it)
	fill:
		for len(batch) < t.cfg.Batch {
			select {
			case more, ok := <-t.queue:
				if !ok {
					break fill
				}
				batch = append(batch, more)
			default:
				break fill
			}
		}
		if !f.deliver(ctx, t, batch) {
			return // stopped: what is left is replayed
		}
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
			f.finish(batch)
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
		recs[i] = deadLetterRecord(f.e.cfg.Topics.StatusDLQ, []byte(it.ev.ID), it.raw, reason, last.Reason, attempt, it.src, now)
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
		if f.e.cfg.Clock.Sleep(ctx, time.Second) != nil {
			return false
		}
	}
	f.e.cfg.Logger.Warn("status webhook events dead-lettered", zap.String("tenant", t.name), zap.Int("events", len(batch)),
		zap.String("reason", reason), zap.String("error", last.Reason))
	f.sends.WithLabelValues(t.name, "dead_lettered").Add(float64(len(batch)))
	f.finish(batch)
	return true
}

func (f *hookForwarder) finish(batch []hookItem) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, it := range batch {
		f.marks[it.tp].Done(it.off)
	}
}
