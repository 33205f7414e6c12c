package engine

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// Record headers the engine writes on retry and dead-letter records.
const (
	HeaderDue       = "goutong-due"       // retry and parked: unix milliseconds before which it must not be sent
	HeaderWake      = "goutong-wake"      // parked: unix milliseconds before which it is not read again
	HeaderReason    = "goutong-reason"    // dead letter: decode, no-provider, permanent, retries-exhausted
	HeaderError     = "goutong-error"     // dead letter and retry: the last error
	HeaderAttempts  = "goutong-attempts"  // dead letter: send attempts made
	HeaderSource    = "goutong-source"    // dead letter: topic/partition@offset it came from
	HeaderFailedAt  = "goutong-failed-at" // dead letter: RFC 3339
	HeaderTenant    = "goutong-tenant"    // status-webhook dead letter: whose endpoint refused it
	reasonDecode    = "decode"
	reasonNoChannel = "no-provider"
	reasonPermanent = "permanent"
	reasonExhausted = "retries-exhausted"
)

// Engine runs the pipeline. Create it with New, run it with Run.
type Engine struct {
	cfg   Config
	log   partition.Log
	m     *metrics
	chans map[notification.Channel]*channelState

	mu       sync.Mutex // guards parts and pause bookkeeping
	parts    map[partition.TopicPartition]*partState
	blocked  map[blocker]map[partition.TopicPartition]bool
	pauseRef map[partition.TopicPartition]int

	// Poller-owned.
	delayed delayHeap
	// held are the items of delayed read from a parking topic before
	// their wake time (their due), their partitions paused, with when each
	// may be sent: beside the heap, not in every item of every poll.
	held map[*item]time.Time
	// sentElsewhere are items another node sent before this one took their
	// partition over (takeover.go), with the provider's answer: claim
	// finishes them without a send.
	sentElsewhere map[*item]string
	outCtx        context.Context // for producing outcomes; outlives Run's ctx until shutdown ends
	// When writes of outcomes the log refuses stop being tried again: at
	// Run's end for the poller, at the drain deadline for the dispatchers
	// and senders.
	pollStop, drainStop <-chan struct{}

	claimed atomic.Int64 // claims open (sent to rings, not finished)
	ids     *idSource    // status event ids
	dlqMu   sync.Mutex   // one dead-letter consumer (list or replay) at a time
	reconMu sync.Mutex   // one reconciliation at a time
	// logReady is closed once New has set log: a Kafka group may assign
	// partitions (onAssigned uses log) before cfg.Open has returned.
	logReady chan struct{}
	hooks    *hookForwarder // nil without status webhooks
	backlog  atomic.Int64   // total consumer lag at the last measurement
	// lagShown: the partitions the lag gauge has a series for. Committer-owned.
	lagShown map[partition.TopicPartition]bool
	ready    atomic.Bool // topics exist and the poller runs
	ckpt     statusCheckpoints
	// Guarded by mu: assignments held until the status replica catches up.
	takeovers []*takeover
	heldBy    map[partition.TopicPartition]*takeover // the assignment holding each partition
	kickPoll  context.CancelFunc                     // ends the poll under way (nil between polls)
	// pollForRoom: the poll under way waits for room in the rings.
	pollForRoom atomic.Bool
	replica     replicaPositions
	// replicaCaughtUp: the status replica has applied what the status
	// topic held when it started, or gave up waiting for that (see
	// followStatus); replicaCovered: it has applied it.
	replicaCaughtUp *latch
	replicaCovered  atomic.Bool
	snapshots       chan snapshotReq // to the status replica (Snapshot)
	// ownApplyFailed: a write of this process's events to the status
	// store failed (see followStatus).
	ownApplyFailed atomic.Bool
}

// blocker is a reason a partition is paused: a full lane of a channel, or
// the delay heap (ch == "").
type blocker struct {
	ch   notification.Channel
	lane int
}

type partState struct {
	tp        partition.TopicPartition
	mu        sync.Mutex
	wm        *Watermark
	dirty     bool
	committed int64
	revoked   atomic.Bool
	inflight  atomic.Int64
	delayed   atomic.Int64
	// What the topic holds, known once rather than looked up per record.
	retry, park bool
	tier        int // the parking tier of a parking topic, else -1
	// checkBelow, when set, ends the records another node may have sent
	// before this one took the partition over (takeover.go). Poller-owned.
	checkBelow int64
}

type item struct {
	n      *notification.Notification
	raw    []byte // the record's value, kept as the payload once sent
	key    string // the dedupe key (tenant, idempotency key)
	ps     *partState
	off    int64
	due    time.Time
	token  uint32
	retry  bool
	polled time.Time
	// The claim's Seq and when it was taken, for holdClaims.
	seq       uint64
	claimedAt time.Time
}

// claimRequest claims it.key for its send (it.key must be set).
func (it *item) claimRequest() dedupe.ClaimRequest {
	return dedupe.ClaimRequest{Key: it.key, Scope: string(it.n.Channel), ID: it.n.ID}
}

// holds records the claim r, taken (or renewed) at, that it sends on.
func (it *item) holds(r dedupe.ClaimResult, at time.Time) {
	it.token, it.seq, it.claimedAt = r.Token, r.Seq, at
}

type channelState struct {
	name      notification.Channel
	cfg       ChannelConfig
	rings     [notification.NumPriorities]*Ring[*item]
	pending   [notification.NumPriorities][]*item // poller-owned overflow of a full ring
	notify    chan struct{}
	limit     *ChannelLimit
	picker    *Picker
	jobs      chan []*item // normal and bulk batches
	urgent    chan []*item // critical and high batches: never queued behind jobs
	gate      *lowGate
	provLimit *providers.AdaptiveLimit
	paused    atomic.Bool // by the admin API
	latency   *latencyObservers
}

// New validates cfg, opens the Log through cfg.Open and registers metrics.
func New(cfg Config) (*Engine, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, m: newMetrics(), chans: map[notification.Channel]*channelState{},
		parts: map[partition.TopicPartition]*partState{}, held: map[*item]time.Time{}, sentElsewhere: map[*item]string{}, blocked: map[blocker]map[partition.TopicPartition]bool{},
		pauseRef: map[partition.TopicPartition]int{}, logReady: make(chan struct{}), ids: newIDSource(),
		replicaCaughtUp: newLatch(), snapshots: make(chan snapshotReq), lagShown: map[partition.TopicPartition]bool{}}
	defer close(e.logReady)
	collectors := append(e.m.collectors(), storeCollector[dedupe.Metrics]{cfg.Dedupe.Metrics, dedupeMetrics})
	if cfg.Status != nil {
		collectors = append(collectors, storeCollector[StatusMetrics]{cfg.Status.Metrics, statusMetrics})
	}
	if len(cfg.StatusWebhooks) > 0 {
		hooks, err := newHookForwarder(e)
		if err != nil {
			return nil, err
		}
		e.hooks = hooks
		collectors = append(collectors, hooks.sends, hooks.backlog, hooks.readErrors)
	}
	for name, cc := range cfg.Channels {
		lim, err := NewChannelLimit(cc.Rate, cc.Burst, cc.Reserve)
		if err != nil {
			return nil, fmt.Errorf("engine: channel %s: %w", name, err)
		}
		picker, err := NewPicker(cfg.Weights)
		if err != nil {
			return nil, err
		}
		cs := &channelState{name: name, cfg: cc, notify: make(chan struct{}, 1), limit: lim, picker: picker,
			jobs: make(chan []*item, cc.Concurrency), urgent: make(chan []*item, cc.Concurrency),
			gate: newLowGate(cc.Concurrency), latency: e.m.observers(name)}
		if g, ok := cc.Provider.(*providers.Guarded); ok {
			cs.provLimit = g.Limit
			collectors = append(collectors, breakerGauge(string(name), g))
		}
		if f, ok := cc.Provider.(*providers.Failover); ok {
			for _, g := range f.Members() {
				collectors = append(collectors, breakerGauge(string(name), g))
			}
		}
		for i := range cs.rings {
			r := NewRing[*item](cfg.RingSize)
			cs.rings[i] = r
			collectors = append(collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "goutong_ring_depth",
				Help:        "Notifications queued in a channel's priority lane.",
				ConstLabels: prometheus.Labels{"channel": string(name), "priority": notification.Priority(i + 1).String()}},
				func() float64 { return float64(r.Len()) }))
		}
		e.chans[name] = cs
	}
	if cfg.Registry != nil {
		for _, c := range collectors {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("engine: register metrics: %w", err)
			}
		}
	}
	// A node with a status replica joins its group once the replica has
	// caught up (pollLoop): the partitions it is given wait for that.
	log, err := cfg.Open(partition.ConsumerConfig{Group: cfg.Group, Topics: cfg.Topics.Consumed(),
		OnAssigned: e.onAssigned, OnRevoked: e.onRevoked, JoinLater: e.takeoverOn()})
	if err != nil {
		return nil, err
	}
	e.log = log
	return e, nil
}

func breakerGauge(channel string, g *providers.Guarded) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "goutong_breaker_state",
		Help:        "Circuit breaker of a provider endpoint: 0 closed, 1 half-open, 2 open.",
		ConstLabels: prometheus.Labels{"channel": channel, "provider": g.Name()}},
		func() float64 {
			switch g.Breaker.State() {
			case providers.Open:
				return 2
			case providers.HalfOpen:
				return 1
			}
			return 0
		})
}

// Log is the engine's log, for producing (the API enqueues through it).
func (e *Engine) Log() partition.Log { return e.log }

// Topics are the engine's topics.
func (e *Engine) Topics() Topics { return e.cfg.Topics }

// SetRate changes a channel's rate at runtime.
func (e *Engine) SetRate(ch notification.Channel, perSec float64) error {
	cs, ok := e.chans[ch]
	if !ok {
		return fmt.Errorf("engine: unknown channel %q", ch)
	}
	return cs.limit.SetRate(e.cfg.Clock.Now(), perSec)
}

// Run consumes and sends until ctx ends, then shuts down: it stops
// polling, keeps sending what the rings hold for up to DrainTimeout, waits
// for the sends in flight, commits what finished and closes the Log. What
// was not sent stays uncommitted and is replayed by the next run.
func (e *Engine) Run(ctx context.Context) error {
	outCtx, cancelOut := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelOut()
	e.outCtx = outCtx
	e.pollStop = ctx.Done()
	if err := e.log.EnsureTopics(ctx, e.cfg.Topics.Specs(e.cfg.Partitions)...); err != nil {
		_ = e.log.Close()
		return err
	}
	// The store's events have no WAL: what a crash took from it is
	// replayed before anything new is written. A node following the whole
	// status topic replays through its replica instead.
	var ckpt *statusCheckpointer
	if e.cfg.Status != nil && e.cfg.NodeID == "" {
		var replayed int
		var err error
		if ckpt, replayed, err = e.openStatusCheckpointer(ctx); err != nil {
			_ = e.log.Close()
			if ctx.Err() != nil {
				return nil // stopped while replaying: the next start replays again
			}
			return err
		}
		e.m.replayed.Add(float64(replayed))
		if replayed > 0 {
			e.cfg.Logger.Info("status store: replayed the status topic since the last checkpoint", zap.Int("records", replayed))
		}
	}
	ckptStop := make(chan struct{})
	ckptDone := make(chan struct{})
	go func() {
		defer close(ckptDone)
		if ckpt != nil {
			ckpt.run(e.cfg.StatusCheckpointInterval, e.cfg.DrainTimeout, ckptStop)
		}
	}()
	e.ready.Store(true)
	defer e.ready.Store(false)
	pollDone := make(chan struct{})
	stopDispatch := make(chan struct{})
	e.drainStop = stopDispatch
	var pollErr error
	go func() {
		defer close(pollDone)
		pollErr = e.pollLoop(ctx)
	}()
	var dispatchers, workers sync.WaitGroup
	for _, cs := range e.chans {
		dispatchers.Go(func() { e.dispatch(cs, pollDone, stopDispatch) })
		// Concurrency senders take urgent batches first, then the rest; one
		// more takes only urgent ones, so a verification code never waits
		// for a slot held by a bulk batch.
		for range cs.cfg.Concurrency {
			workers.Go(func() { e.sender(outCtx, cs) })
		}
		workers.Go(func() {
			var bufs sendBuffers
			for batch := range cs.urgent {
				e.sendUrgent(outCtx, cs, batch, &bufs)
			}
		})
	}
	commitStop := make(chan struct{})
	commitDone := make(chan struct{})
	go func() {
		defer close(commitDone)
		e.commitLoop(commitStop)
	}()
	hooksCtx, stopHooks := context.WithCancel(ctx)
	defer stopHooks()
	hooksDone := make(chan struct{})
	go func() {
		defer close(hooksDone)
		if e.hooks == nil {
			return
		}
		if err := e.hooks.run(hooksCtx, e.cfg.DrainTimeout); err != nil {
			e.cfg.Logger.Error("status webhooks stopped", zap.Error(err))
		}
	}()

	// The status store's helpers stop with the webhooks, before the drain.
	var statusAux sync.WaitGroup
	if e.cfg.Status != nil {
		if e.cfg.NodeID != "" {
			statusAux.Go(func() {
				if err := e.followStatus(hooksCtx, e.cfg.StatusCheckpointInterval); err != nil {
					e.cfg.Logger.Error("status replica stopped", zap.Error(err))
				}
				// Without it, the node works as one without a replica would
				// rather than wait for it for ever.
				e.replicaCaughtUp.set()
			})
		}
		statusAux.Go(func() { e.retryUnknownReceipts(hooksCtx, e.cfg.ReceiptRetryInterval) })
	}

	<-pollDone
	stopHooks()
	statusAux.Wait()
	if pollErr != nil {
		e.cfg.Logger.Error("poller stopped", zap.Error(pollErr))
	}
	drained := make(chan struct{})
	go func() { dispatchers.Wait(); close(drained) }()
	deadline := time.NewTimer(e.cfg.DrainTimeout)
	defer deadline.Stop()
	stopDispatching := sync.OnceFunc(func() { close(stopDispatch) })
	select {
	case <-drained:
	case <-deadline.C:
		e.cfg.Logger.Warn("drain deadline passed; the rest stays in the log", zap.Duration("timeout", e.cfg.DrainTimeout))
		stopDispatching()
		<-drained
	}
	// The senders finish their sends; one whose outcomes the log refuses
	// keeps trying until the deadline (if it has passed already, stop was
	// closed above and the timer does not fire again).
	sent := make(chan struct{})
	go func() { workers.Wait(); close(sent) }()
	select {
	case <-sent:
	case <-deadline.C:
		stopDispatching()
		<-sent
	}
	// What the rings and overflows still hold was claimed but not sent.
	for _, cs := range e.chans {
		for lane, r := range cs.rings {
			var left []*item
			for it, ok := r.Pop(); ok; it, ok = r.Pop() {
				left = append(left, it)
			}
			e.abandon(append(left, cs.pending[lane]...))
			cs.pending[lane] = nil
		}
	}
	close(commitStop)
	<-commitDone
	close(ckptStop)
	<-ckptDone
	// The forwarder's dead letters go through e.log: it stops first.
	<-hooksDone
	err := e.log.Close()
	if pollErr != nil {
		return pollErr
	}
	return err
}

// ---- partitions, tracking and commits ----

func (e *Engine) onAssigned(_ context.Context, tps []partition.TopicPartition) {
	<-e.logReady
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, tp := range tps {
		tier := e.cfg.Topics.parkTier(tp.Topic)
		e.parts[tp] = &partState{tp: tp, wm: NewWatermark(0), committed: -1,
			retry: e.cfg.Topics.isRetry(tp.Topic), park: tier >= 0, tier: tier}
		delete(e.pauseRef, tp)
	}
	// A partition coming back may still be paused from its last stay.
	e.log.Resume(tps...)
	if e.takeoverOn() {
		e.holdForTakeoverLocked(tps)
	}
}

// onRevoked gives the records of leaving partitions RevokeWait to finish,
// commits what finished and forgets the rest: the new owner replays it.
func (e *Engine) onRevoked(ctx context.Context, tps []partition.TopicPartition) {
	<-e.logReady
	e.mu.Lock()
	var leaving []*partState
	for _, tp := range tps {
		if ps := e.parts[tp]; ps != nil {
			leaving = append(leaving, ps)
		}
	}
	e.mu.Unlock()
	deadline := time.Now().Add(e.cfg.RevokeWait)
	for _, ps := range leaving {
		for ps.inflight.Load()-ps.delayed.Load() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		ps.revoked.Store(true)
	}
	e.commit(ctx, leaving)
	e.mu.Lock()
	for _, ps := range leaving {
		delete(e.parts, ps.tp)
		delete(e.pauseRef, ps.tp)
		for _, set := range e.blocked {
			delete(set, ps.tp)
		}
	}
	e.mu.Unlock()
}

func (e *Engine) part(tp partition.TopicPartition) *partState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.parts[tp]
}

func (e *Engine) finish(items ...*item) {
	for _, it := range items {
		ps := it.ps
		ps.mu.Lock()
		if ps.wm.Done(it.off) {
			ps.dirty = true
			ps.inflight.Add(-1)
		}
		ps.mu.Unlock()
	}
}

func (e *Engine) commitLoop(stop <-chan struct{}) {
	t := time.NewTicker(e.cfg.CommitInterval)
	defer t.Stop()
	lagEvery := max(1, int(time.Second/e.cfg.CommitInterval))
	reclaimEvery := max(1, int(10*time.Minute/e.cfg.CommitInterval))
	ctx := context.Background()
	for i := 0; ; i++ {
		select {
		case <-stop:
			e.commit(ctx, nil)
			return
		case <-t.C:
			e.commit(ctx, nil)
			if i%lagEvery == 0 {
				e.updateLag(ctx)
			}
			if e.cfg.Status != nil && i%reclaimEvery == 0 {
				if err := e.cfg.Status.Reclaim(e.cfg.Clock.Now()); err != nil {
					e.cfg.Logger.Warn("status reclaim failed", zap.Error(err))
				}
			}
		}
	}
}

// commit stores the watermark of the given partitions (all when nil).
func (e *Engine) commit(ctx context.Context, only []*partState) {
	if only == nil {
		e.mu.Lock()
		for _, ps := range e.parts {
			only = append(only, ps)
		}
		e.mu.Unlock()
	}
	offsets := map[partition.TopicPartition]int64{}
	var set []*partState
	for _, ps := range only {
		ps.mu.Lock()
		if ps.dirty {
			if off := ps.wm.Committable(); off > ps.committed {
				offsets[ps.tp] = off
				set = append(set, ps)
			}
			ps.dirty = false
		}
		ps.mu.Unlock()
	}
	if len(offsets) == 0 {
		return
	}
	retryLater := func(msg string, err error) {
		e.cfg.Logger.Warn(msg, zap.Error(err))
		for _, ps := range set {
			ps.mu.Lock()
			ps.dirty = true
			ps.mu.Unlock()
		}
	}
	if e.cfg.Status != nil {
		// The events of the records being committed, and their kept
		// payloads, must outlive a power cut: after the commit nothing
		// replays them. The events are on the status topic, whose produce
		// returns before its fsync (LazySync); the store replays them from
		// it after a crash.
		if s, ok := e.log.(partition.Syncer); ok {
			if err := s.Sync(ctx, e.cfg.Topics.Status); err != nil {
				retryLater("status topic sync failed; commit postponed", err)
				return
			}
		}
		if err := e.cfg.Status.Sync(); err != nil {
			retryLater("status store sync failed; commit postponed", err)
			return
		}
	}
	if err := e.log.Commit(ctx, offsets); err != nil {
		retryLater("commit failed; will retry", err)
		return
	}
	e.m.commits.Inc()
	for _, ps := range set {
		ps.mu.Lock()
		ps.committed = max(ps.committed, offsets[ps.tp])
		ps.mu.Unlock()
	}
}

func (e *Engine) updateLag(ctx context.Context) {
	lag, err := e.log.Lag(ctx)
	if err != nil {
		return
	}
	// A partition that moved to another node is that node's to show: a
	// series left here would count its lag twice in a fleet's sum, frozen.
	for tp := range e.lagShown {
		if _, ok := lag[tp]; !ok {
			e.m.lag.DeleteLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition)))
			delete(e.lagShown, tp)
		}
	}
	var total int64
	for tp, n := range lag {
		e.lagShown[tp] = true
		e.m.lag.WithLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition))).Set(float64(n))
		// Parked records are scheduled for later, not work behind.
		if e.cfg.Topics.parkTier(tp.Topic) < 0 {
			total += n
		}
	}
	e.backlog.Store(total)
}

// ---- backpressure ----

func (e *Engine) pause(tp partition.TopicPartition, b blocker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.parts[tp]; !ok {
		return
	}
	set := e.blocked[b]
	if set == nil {
		set = map[partition.TopicPartition]bool{}
		e.blocked[b] = set
	}
	if set[tp] {
		return
	}
	set[tp] = true
	e.pauseRef[tp]++
	if e.pauseRef[tp] == 1 {
		e.log.Pause(tp)
		e.m.paused.Inc()
	}
}

// resume lifts blocker b from tp alone.
func (e *Engine) resume(tp partition.TopicPartition, b blocker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.resumeLocked(tp, b)
}

func (e *Engine) resumeLocked(tp partition.TopicPartition, b blocker) {
	set := e.blocked[b]
	if !set[tp] {
		return
	}
	delete(set, tp)
	if e.pauseRef[tp]--; e.pauseRef[tp] <= 0 {
		delete(e.pauseRef, tp)
		e.m.paused.Dec()
		e.log.Resume(tp)
	}
}

func (e *Engine) unblock(b blocker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	set := e.blocked[b]
	if len(set) == 0 {
		return
	}
	var resume []partition.TopicPartition
	for tp := range set {
		e.pauseRef[tp]--
		if e.pauseRef[tp] <= 0 {
			delete(e.pauseRef, tp)
			resume = append(resume, tp)
			e.m.paused.Dec()
		}
	}
	clear(set)
	e.log.Resume(resume...)
}

// ---- the poller: decode, expire, delay, dedupe, route ----

type delayHeap []*item

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h delayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *delayHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

var (
	delayBlocker = blocker{lane: -1}
	// parkBlocker pauses a parking topic's partition while its head waits
	// for its wake time: what follows it there was parked later, for the
	// same hop, so it is not due sooner (but in the shortest hop's topic;
	// see where it is set).
	parkBlocker = blocker{lane: -2}
)

func (e *Engine) pollLoop(ctx context.Context) error {
	if e.takeoverOn() {
		// The first Poll joins the group (JoinLater): partitions given
		// before the status replica has read the other nodes' keys would
		// have to wait for it, or send their repeats again. The replica
		// says it has caught up within takeoverWait whatever happens.
		select {
		case <-ctx.Done():
			return nil
		case <-e.replicaCaughtUp.done():
		}
	}
	var lastUrgent time.Time // the last poll with critical or high records
	for {
		if ctx.Err() != nil {
			return nil
		}
		e.flushPending()
		e.advanceTakeovers(ctx)
		e.releaseDue(ctx)
		pctx, cancel := ctx, context.CancelFunc(func() {})
		wait, busy, room := e.pollWait()
		if busy {
			pctx, cancel = context.WithTimeout(ctx, wait)
		} else if e.takeoverOn() {
			// An assignment to hold must wake a poll that would block.
			pctx, cancel = context.WithCancel(ctx)
		}
		kickable := e.takeoverOn() || room
		if kickable {
			e.mu.Lock()
			e.kickPoll = cancel
			e.mu.Unlock()
			e.pollForRoom.Store(room)
		}
		// While codes flow, polls are a quarter of the size: a code that
		// comes in while the poller decodes and claims bulk waits for one
		// poll's worth of it.
		max := e.cfg.PollMax
		if time.Since(lastUrgent) < urgentHold {
			max = (max + 3) / 4
		}
		recs, err := e.log.Poll(pctx, max)
		cancel()
		if kickable {
			e.pollForRoom.Store(false)
			e.mu.Lock()
			e.kickPoll = nil
			e.mu.Unlock()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			if errors.Is(err, partition.ErrClosed) {
				return err
			}
			e.cfg.Logger.Warn("poll failed", zap.Error(err))
			_ = e.cfg.Clock.Sleep(ctx, 100*time.Millisecond)
		}
		if len(recs) > 0 {
			e.m.polled.Add(float64(len(recs)))
			// The critical and high lanes' records are decoded, claimed and
			// routed before the rest of the poll is even decoded: a code in a
			// poll of a thousand bulk records waited for all of them.
			urgent, rest := e.splitUrgent(recs)
			if len(urgent) > 0 {
				lastUrgent = time.Now()
			}
			for _, part := range [][]partition.Record{urgent, rest} {
				if len(part) > 0 {
					e.ingest(ctx, part)
				}
			}
		}
	}
}

// splitUrgent moves the records of the critical and high lanes out of
// recs, keeping the order of the rest (and so of every partition).
func (e *Engine) splitUrgent(recs []partition.Record) (urgent, rest []partition.Record) {
	t := &e.cfg.Topics
	crit, high := t.Lane(notification.Critical), t.Lane(notification.High)
	rcrit, rhigh := t.RetryLane(notification.Critical), t.RetryLane(notification.High)
	if crit == t.Ingress && high == t.Ingress && rcrit == t.Retry && rhigh == t.Retry {
		return nil, recs // one topic for every priority: nothing to tell apart
	}
	isUrgent := func(topic string) bool {
		return (topic == crit || topic == high) && topic != t.Ingress || (topic == rcrit || topic == rhigh) && topic != t.Retry
	}
	k := 0
	for i := range recs {
		if isUrgent(recs[i].Topic) {
			k++
		}
	}
	if k == 0 {
		return nil, recs
	}
	urgent = make([]partition.Record, 0, k)
	n := 0
	for i := range recs {
		if isUrgent(recs[i].Topic) {
			urgent = append(urgent, recs[i])
		} else {
			recs[n] = recs[i]
			n++
		}
	}
	return urgent, recs[:n]
}

// pollWait says how long Poll may block when the poller has work of its own
// (overflow to push, delayed records coming due); room: some of it waits
// for room in the rings, which a sender's flush may have made (roomMade).
func (e *Engine) pollWait() (wait time.Duration, busy, room bool) {
	wait = 50 * time.Millisecond
	for _, cs := range e.chans {
		for _, p := range cs.pending {
			if len(p) > 0 {
				wait, busy, room = 2*time.Millisecond, true, true
			}
		}
	}
	// A lane blocker is lifted only by flushPending, once its ring has
	// drained below half: while one is set the poller must come round again
	// even if every partition is paused and Poll would block for ever.
	e.mu.Lock()
	for b, set := range e.blocked {
		if b.ch != "" && len(set) > 0 {
			wait, busy, room = min(wait, 5*time.Millisecond), true, true
		}
	}
	if len(e.takeovers) > 0 {
		wait, busy = min(wait, 20*time.Millisecond), true
	}
	e.mu.Unlock()
	if len(e.delayed) > 0 {
		d := e.delayed[0].due.Sub(e.cfg.Clock.Now())
		wait, busy = max(min(wait, d), time.Millisecond), true
	}
	return wait, busy, room
}

// roomMade ends a poll that waits out its timer while records wait for
// room in the rings: a sender's flush means it took records from them.
// Until the poll watched only its own topics, every append to the log
// (these flushes' events among them) woke it; without this the rings ran
// dry for up to the timer, and a drain was ~3 % slower.
func (e *Engine) roomMade() {
	if !e.pollForRoom.Load() {
		return
	}
	e.mu.Lock()
	kick := e.kickPoll
	e.mu.Unlock()
	if kick != nil {
		kick()
	}
}

// recordID gives a record that arrived without an id one derived from its
// place in the log, so a replay of the record gets the same id.
func recordID(r *partition.Record) string {
	h := sha256.New()
	h.Write([]byte(r.Topic))
	_ = binary.Write(h, binary.BigEndian, r.Partition)
	_ = binary.Write(h, binary.BigEndian, r.Offset)
	id, err := ulid.New(ulid.Timestamp(r.Timestamp), bytes.NewReader(h.Sum(nil)))
	if err != nil {
		return notification.NewID()
	}
	return id.String()
}

// outcomes collects what a stage produces (dead letters, retries, status
// events) so it goes to the log in one Produce before the records it
// finishes are marked done.
type outcomes struct {
	recs   []partition.Record
	events []StatusEvent
	keep   []payload
	done   []*item
	enc    eventEncoder // the events' ids, keys and JSON
	// runs: the accepted events may be stored as runs (Ingest's).
	runs bool
	// announces, when set, is for each event the index in recs of the
	// record it announces (Ingest's: a notification and its accepted
	// event), which must be written for the event to be true.
	announces []int
	// withdrawn: the accepted events a Produce wrote whose records it did
	// not; owed: those it did not write whose records it did
	// (keepUnwritten), for Ingest to mend (mendEvents).
	withdrawn, owed []StatusEvent
}

// reuse empties o for a stage producing up to records records (its events'
// included) and events events, and finishing done items, over the arrays
// of its last use where they are large enough (what they held must be
// dead). Sized to what the stage makes, not one bound for all: the ingest
// of a 1,000-item request reserved ~1.5 MB where it used half, and zeroing
// it showed in profiles.
func (o *outcomes) reuse(records, events, done int) {
	o.recs = reuse(o.recs, records)[:0]
	o.events = reuse(o.events, events)[:0]
	o.done = reuse(o.done, done)[:0]
	o.keep = o.keep[:0]
	o.enc.buf = slices.Grow(o.enc.buf[:0], events*eventSizeHint)
	o.enc.reserved = 0
	o.runs = false
	o.announces = o.announces[:0]
	o.withdrawn, o.owed = o.withdrawn[:0], o.owed[:0]
}

// reuse returns s resliced to n, or a new slice when s is too small.
func reuse[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// eventSizeHint is an encoded status event with its id and key.
const eventSizeHint = 384

func (o *outcomes) event(e *Engine, n *notification.Notification, st State, at time.Time, provider, msgID, reason string) {
	o.addEvent(e, e.statusEvent(n, st, at, provider, msgID, reason))
}

func (e *Engine) statusEvent(n *notification.Notification, st State, at time.Time, provider, msgID, reason string) StatusEvent {
	ev := StatusEvent{ID: n.ID, State: st, At: at, Tenant: n.Tenant,
		Channel: string(n.Channel), Priority: n.Priority.String(), Attempts: n.Attempts, Provider: provider,
		ProviderMessageID: msgID, Reason: reason}
	if e.cfg.NodeID != "" && (st == StateAccepted || st == StateSent) {
		ev.IdempotencyKey = n.IdempotencyKey
	}
	return ev
}

// duplicate records that n is not sent: the claim of its key answered r,
// held by the notification r.OriginalID. when says when it was found, if
// not at its claim.
func (o *outcomes) duplicate(e *Engine, n *notification.Notification, r dedupe.ClaimResult, now time.Time, when string) {
	o.addEvent(e, StatusEvent{ID: n.ID, State: StateDuplicate, At: now, Tenant: n.Tenant,
		Channel: string(n.Channel), Priority: n.Priority.String(), DuplicateOf: r.OriginalID,
		Reason: "idempotency key " + r.Status.String() + when})
}

// keepPayload keeps a sent item's record for reconciliation to resend:
// only on channels that expect receipts, since a redrive answers a missing
// or failed receipt and nothing else.
func (o *outcomes) keepPayload(e *Engine, it *item) {
	if e.cfg.KeepPayloads && e.cfg.Status != nil && e.receiptDeadlines()[string(it.n.Channel)] > 0 {
		v := it.raw
		if v == nil {
			v = e.cfg.Codec.Encode(it.n)
		}
		o.keep = append(o.keep, payload{id: it.n.ID, value: v})
	}
}

// addEvent encodes ev (giving it an event id when it has none) for the
// status topic and keeps it for the store, which encodes its own form.
func (o *outcomes) addEvent(e *Engine, ev StatusEvent) {
	if ev.EventID == "" {
		ev.EventID = o.enc.id(e.ids)
	}
	if ev.Node == "" {
		ev.Node = e.cfg.NodeID
	}
	o.events = append(o.events, ev)
	v, err := o.enc.encode(&o.events[len(o.events)-1])
	if err != nil {
		o.events = o.events[:len(o.events)-1]
		return
	}
	o.recs = append(o.recs, partition.Record{Topic: e.cfg.Topics.Status, Key: o.enc.bytes(ev.ID), Value: v})
}

func (o *outcomes) deadLetter(e *Engine, key, value []byte, reason, errText string, attempts int, src string, at time.Time) {
	e.m.deadLetter.WithLabelValues(reason).Inc()
	o.recs = append(o.recs, deadLetterRecord(e.cfg.Topics.DLQ, key, value, reason, errText, attempts, src, at))
}

// deadLetterRecord is a record for a dead-letter topic, with the headers
// ParseDeadLetter reads.
func deadLetterRecord(topic string, key, value []byte, reason, errText string, attempts int, src string, at time.Time) partition.Record {
	return partition.Record{Topic: topic, Key: key, Value: value, Headers: []partition.Header{
		{Key: HeaderReason, Value: []byte(reason)},
		{Key: HeaderError, Value: []byte(errText)},
		{Key: HeaderAttempts, Value: []byte(strconv.Itoa(attempts))},
		{Key: HeaderSource, Value: []byte(src)},
		{Key: HeaderFailedAt, Value: []byte(at.UTC().Format(time.RFC3339Nano))},
	}}
}

// flush produces the outcomes, then applies the status events and
// finishes the records. When it gives up (at shutdown, see flushThen),
// nothing is finished: the records are replayed.
func (o *outcomes) flush(ctx context.Context, e *Engine, stop <-chan struct{}) bool {
	return o.flushThen(ctx, e, stop, noWait)
}

// flushThen is flush with before run ahead of marking the items finished:
// what must be durable before their offsets may commit.
//
// A write the log refuses is tried again, backing off to 5 s, for as long as
// the engine runs: its items were sent (or must be retried), and given up
// they would stay in flight, holding their partitions' commits, until the
// next start replayed them. The caller waits meanwhile, which holds back the
// rest: nothing can finish without the log. It gives up only when stop is
// closed (the poller's is Run's end, the dispatchers' and senders' the
// drain deadline); the next start replays what was in flight.
func (o *outcomes) flushThen(ctx context.Context, e *Engine, stop <-chan struct{}, before func()) bool {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		_, err := e.produceAndApply(ctx, o)
		if err == nil {
			break
		}
		if ctx.Err() == nil {
			e.m.writeRetries.Inc()
			e.cfg.Logger.Warn("produce outcomes failed; trying again", zap.Int("records", len(o.recs)),
				zap.Duration("in", wait), zap.Error(err))
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
			case <-stop:
			}
			t.Stop()
		}
		e.cfg.Logger.Warn("produce outcomes failed at shutdown; records stay in flight and will be replayed",
			zap.Int("records", len(o.recs)), zap.Error(err))
		before()
		return false
	}
	before()
	e.finish(o.done...)
	e.roomMade()
	return true
}

func source(r *partition.Record) string {
	return r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "@" + strconv.FormatInt(r.Offset, 10)
}

func (e *Engine) ingest(ctx context.Context, recs []partition.Record) {
	now := e.cfg.Clock.Now()
	var out outcomes
	var ready []*item
	var ps *partState
	// The poll's items and notifications come from two slabs and its
	// strings from one buffer, not several allocations a record.
	slab := make([]item, len(recs))
	size := 0
	for i := range recs {
		size += len(recs[i].Value)
	}
	arena := notification.NewArena(len(recs), size)
	for i := range recs {
		r := &recs[i]
		if ps == nil || ps.tp.Topic != r.Topic || ps.tp.Partition != r.Partition {
			ps = e.part(partition.TopicPartition{Topic: r.Topic, Partition: r.Partition})
		}
		if ps == nil || ps.revoked.Load() {
			continue // not ours (any more): the owner reads it
		}
		ps.mu.Lock()
		err := ps.wm.Track(r.Offset)
		ps.mu.Unlock()
		if err != nil {
			continue // a repeat of a record already in flight
		}
		ps.inflight.Add(1)
		it := &slab[i]
		*it = item{ps: ps, off: r.Offset, retry: ps.retry, polled: now}
		n, err := e.cfg.Codec.DecodeIn(arena, r.Value)
		if err != nil {
			out.deadLetter(e, r.Key, r.Value, reasonDecode, err.Error(), 0, source(r), now)
			out.done = append(out.done, it)
			continue
		}
		it.n = n
		if e.cfg.KeepPayloads {
			it.raw = r.Value
		}
		if n.ID == "" {
			n.ID = recordID(r)
		}
		if n.AcceptedAt.IsZero() {
			n.AcceptedAt = r.Timestamp
		}
		if n.IdempotencyKey == "" {
			n.IdempotencyKey = notification.DefaultIdempotencyKey(n)
		}
		if _, ok := e.chans[n.Channel]; !ok {
			out.deadLetter(e, []byte(n.ID), r.Value, reasonNoChannel, "no provider configured for channel "+string(n.Channel), n.Attempts, source(r), now)
			out.event(e, n, StateDeadLettered, now, "", "", reasonNoChannel)
			out.done = append(out.done, it)
			continue
		}
		if n.Expired(now) {
			e.m.expired.WithLabelValues(string(n.Channel)).Inc()
			out.event(e, n, StateExpired, now, "", "", "expired before it could be sent")
			out.done = append(out.done, it)
			continue
		}
		it.due = n.NotBefore
		if d := headerTime(r, HeaderDue); d.After(it.due) {
			it.due = d
		}
		if it.due.After(now) || e.mayBeCopied(it) {
			if wake := headerTime(r, HeaderWake); wake.After(now) && ps.park {
				// Released at its wake, or at its time if that comes first
				// (parked for the shortest hop by a full heap, or to meet
				// its copies: see mayBeCopied).
				own := e.own(it)
				own.due = wake
				if it.due.Before(wake) {
					own.due = it.due
				}
				e.held[own] = it.due
				e.delay(own)
				// The shortest hop's topic holds records due before their
				// wake, behind heads that wake later: it is read ahead
				// while the heap has room, so that they are not late.
				if ps.tier != 0 || len(e.held) >= e.cfg.MaxDelayed {
					e.pause(ps.tp, parkBlocker)
				}
				continue
			}
			e.wait(it, now, &out, false)
			continue
		}
		ready = append(ready, it)
	}
	if e.takeoverOn() {
		e.skipSent(ready)
	}
	// Critical and high items are claimed and routed first, so a code in
	// a poll full of bulk does not wait for the bulk's claims.
	var urgent []*item
	rest := ready[:0]
	for _, it := range ready {
		if isUrgent(it.n.Priority) {
			urgent = append(urgent, it)
		} else {
			rest = append(rest, it)
		}
	}
	for _, part := range [][]*item{urgent, rest} {
		if len(part) == 0 && len(out.recs)+len(out.done) == 0 {
			continue
		}
		part = e.claim(ctx, part, &out, now)
		if !out.flush(e.outCtx, e, e.pollStop) {
			return
		}
		e.route(part)
		out = outcomes{}
	}
}

// mayBeCopied reports whether another copy of it may wait elsewhere in
// the fleet, due at the same instant: it was read from a parking topic
// other than the shortest hop's (its copies hop through the tiers out of
// step), or it is a scheduled record in a takeover window (the old owner
// may have parked it before dying uncommitted). Such a record is not sent
// from where it is, nor held in this node's heap: it waits in the shortest
// hop's topic, keyed by its idempotency key like every copy of it, so all
// of them end in one partition and on one node, whose dedupe claim lets
// one go. A single node (no NodeID) has one dedupe store for every copy
// already.
func (e *Engine) mayBeCopied(it *item) bool {
	if e.cfg.Topics.Park == "" || !e.takeoverOn() {
		return false
	}
	switch ps := it.ps; {
	case ps.tier > 0:
		return true
	case ps.tier == 0:
		return false
	default:
		return ps.checkBelow != 0 && it.off < ps.checkBelow && !it.due.IsZero()
	}
}

// headerTime is the unix-milliseconds time in r's header key, or zero.
func headerTime(r *partition.Record, key string) time.Time {
	if v, ok := r.HeaderValue(key); ok {
		if ms, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return time.UnixMilli(ms)
		}
	}
	return time.Time{}
}

// own copies an item that will wait (maybe hours) so that it holds neither
// its poll's other items nor the log's buffer its record is in.
func (e *Engine) own(it *item) *item {
	own := *it
	own.n, own.raw = it.n.Clone(), bytes.Clone(it.raw)
	return &own
}

// wait holds an item until it.due: in the delay heap, or parked in the
// parking topic of the longest hop that does not pass its time (finished
// here once the parked copy is in the log). A full heap parks even an
// item due sooner, for the shortest hop: without parking it would pause
// the item's partition, and everything behind it there, until the heap
// drained, which for tomorrow's campaign is tomorrow.
// An owned item is already a copy of its own (see own).
func (e *Engine) wait(it *item, now time.Time, out *outcomes, owned bool) {
	d := it.due.Sub(now)
	// Held parked records do not count: they would crowd out what is due
	// soon, which would then wait a whole hop.
	if e.cfg.Topics.Park == "" || (d < e.cfg.Topics.heapHorizon() && len(e.delayed)-len(e.held) < e.cfg.MaxDelayed && !e.mayBeCopied(it)) {
		if !owned {
			it = e.own(it)
		}
		e.delay(it)
		return
	}
	tiers := e.cfg.Topics.parkTiers()
	tier := 0
	for i, t := range tiers {
		if t.Hop <= d {
			tier = i
		}
	}
	wake := now.Add(tiers[tier].Hop)
	n := it.n
	e.m.parked.WithLabelValues(tiers[tier].Suffix).Inc()
	// Keyed as the lanes are, by the idempotency key: every copy of a
	// notification, and every notification sharing its key, meets in one
	// partition of a parking topic (see mayBeCopied).
	out.recs = append(out.recs, partition.Record{Topic: e.cfg.Topics.ParkTopic(tier), Key: []byte(n.IdempotencyKey), Value: e.cfg.Codec.Encode(n),
		Headers: []partition.Header{
			{Key: HeaderDue, Value: strconv.AppendInt(nil, it.due.UnixMilli(), 10)},
			{Key: HeaderWake, Value: strconv.AppendInt(nil, wake.UnixMilli(), 10)},
		}})
	out.done = append(out.done, it)
}

func (e *Engine) delay(it *item) {
	heap.Push(&e.delayed, it)
	it.ps.delayed.Add(1)
	e.m.delayed.Set(float64(len(e.delayed)))
	if e.cfg.Topics.Park == "" && len(e.delayed) >= e.cfg.MaxDelayed {
		e.pause(it.ps.tp, delayBlocker)
	}
}

func (e *Engine) releaseDue(ctx context.Context) {
	if len(e.delayed) == 0 {
		return
	}
	now := e.cfg.Clock.Now()
	var ready []*item
	var out outcomes
	for len(e.delayed) > 0 && !e.delayed[0].due.After(now) && len(ready) < e.cfg.PollMax {
		it := heap.Pop(&e.delayed).(*item)
		it.ps.delayed.Add(-1)
		sendAt, held := e.held[it]
		delete(e.held, it)
		if it.ps.revoked.Load() {
			if len(e.sentElsewhere) > 0 {
				delete(e.sentElsewhere, it)
			}
			continue
		}
		if held {
			// Awake: what follows it in its parking partition may be too.
			it.due = sendAt
			e.resume(it.ps.tp, parkBlocker)
			if it.due.After(now) || e.mayBeCopied(it) {
				e.wait(it, now, &out, true)
				continue
			}
		}
		if it.n.Expired(now) {
			e.m.expired.WithLabelValues(string(it.n.Channel)).Inc()
			out.event(e, it.n, StateExpired, now, "", "", "expired before it could be sent")
			out.done = append(out.done, it)
			continue
		}
		ready = append(ready, it)
	}
	e.m.delayed.Set(float64(len(e.delayed)))
	if len(e.delayed) < e.cfg.MaxDelayed/2 {
		e.unblock(delayBlocker)
	}
	ready = e.claim(ctx, ready, &out, now)
	if !out.flush(e.outCtx, e, e.pollStop) {
		return
	}
	e.route(ready)
}

// claim asks the dedupe store about a batch in one call and returns the
// items to send; duplicates are finished through out. When the store
// refuses, the items wait a little in the delay heap and try again.
func (e *Engine) claim(ctx context.Context, items []*item, out *outcomes, now time.Time) []*item {
	if len(items) == 0 {
		return nil
	}
	reqs := make([]dedupe.ClaimRequest, len(items))
	res := make([]dedupe.ClaimResult, len(items))
	// The batch's keys share one buffer (they live as long as the claims).
	size := 0
	for _, it := range items {
		if it.key == "" {
			size += len(it.n.Tenant) + 1 + len(it.n.IdempotencyKey)
		}
	}
	kbuf := make([]byte, 0, size)
	for i, it := range items {
		if it.key == "" {
			start := len(kbuf)
			kbuf = appendSendKey(kbuf, it.n.Tenant, it.n.IdempotencyKey)
			it.key = unsafe.String(&kbuf[start], len(kbuf)-start)
		}
		reqs[i] = it.claimRequest()
	}
	if err := e.cfg.Dedupe.Claim(ctx, reqs, res); err != nil {
		e.cfg.Logger.Warn("dedupe claim failed; holding the batch", zap.Error(err))
		for _, it := range items {
			it.due = now.Add(100 * time.Millisecond)
			e.delay(it)
		}
		return nil
	}
	send := items[:0]
	var elsewhere []dedupe.Done
	for i, it := range items {
		r := res[i]
		if len(e.sentElsewhere) > 0 {
			if outcome, ok := e.sentElsewhere[it]; ok {
				delete(e.sentElsewhere, it)
				// The old owner finished it and recorded so. Its key is
				// usually known already, from the old owner's event
				// (rememberKeys); a claim won here is confirmed.
				if r.Status.ShouldSend() {
					elsewhere = append(elsewhere, dedupe.Done{Key: it.key, Token: r.Token, ID: it.n.ID, Outcome: outcome})
				}
				out.done = append(out.done, it)
				e.m.takenOver.WithLabelValues(string(it.n.Channel)).Inc()
				continue
			}
		}
		if r.Status.ShouldSend() {
			it.holds(r, now)
			send = append(send, it)
			continue
		}
		e.m.duplicates.WithLabelValues(string(it.n.Channel)).Inc()
		if r.OriginalID == it.n.ID && r.Status == dedupe.Duplicate {
			// Its own replay: sent and confirmed before a crash that came
			// before the offset commit, or sent by a node whose partition
			// this one took over. Record the send again, in case the crash
			// also took the status event.
			reason := "confirmed before a restart"
			if e.cfg.NodeID != "" {
				reason = "confirmed before a restart, or by another node"
			}
			out.event(e, it.n, StateSent, now, "", r.Outcome, reason)
		} else if r.OriginalID != it.n.ID {
			out.duplicate(e, it.n, r, now, "")
		}
		out.done = append(out.done, it)
	}
	// Before the items are finished (their offsets may then commit).
	e.finishSentElsewhere(ctx, elsewhere)
	e.claimed.Add(int64(len(send)))
	return send
}

// route pushes items into their lane's ring; when a ring is full the item
// waits in the lane's overflow and its partition is paused.
func (e *Engine) route(items []*item) {
	touched := map[*channelState]bool{}
	for _, it := range items {
		cs := e.chans[it.n.Channel]
		lane := it.n.Priority.Index()
		if len(cs.pending[lane]) > 0 || !cs.rings[lane].Push(it) {
			cs.pending[lane] = append(cs.pending[lane], it)
			e.pause(it.ps.tp, blocker{cs.name, lane})
			continue
		}
		touched[cs] = true
	}
	for cs := range touched {
		wake(cs.notify)
	}
}

func (e *Engine) flushPending() {
	for _, cs := range e.chans {
		pushed := false
		for lane, p := range cs.pending {
			if len(p) > 0 {
				k := 0
				for k < len(p) && cs.rings[lane].Push(p[k]) {
					p[k] = nil
					k++
				}
				pushed = pushed || k > 0
				if k == len(p) {
					cs.pending[lane] = nil
				} else {
					cs.pending[lane] = p[k:]
				}
			}
			if len(cs.pending[lane]) == 0 && cs.rings[lane].Len() <= cs.rings[lane].Cap()/2 {
				e.unblock(blocker{cs.name, lane})
			}
		}
		if pushed {
			wake(cs.notify)
		}
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// latch is a flag set once, which can be waited for.
type latch struct {
	once sync.Once
	ch   chan struct{}
}

func newLatch() *latch { return &latch{ch: make(chan struct{})} }

func (l *latch) set() { l.once.Do(func() { close(l.ch) }) }

func (l *latch) isSet() bool {
	select {
	case <-l.ch:
		return true
	default:
		return false
	}
}

func (l *latch) done() <-chan struct{} { return l.ch }
