package engine

import (
	"context"
	cryptorand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// eventEncoder appends status events' JSON to one buffer, encoding/json's
// bytes (FuzzEventEncoding holds it to them) written field by field. A
// batch's events share the buffer; a slice into an array the buffer has
// outgrown stays valid.
type eventEncoder struct {
	buf []byte
	at  notification.TimeCache
	// reserved ids made by reserveIDs are left, the next at buf[nextID:].
	nextID, reserved int
}

func (w *eventEncoder) encode(ev *StatusEvent) ([]byte, error) {
	start := len(w.buf)
	b, err := appendEvent(w.buf, ev, &w.at)
	if err != nil {
		w.buf = b[:start]
		return nil, err
	}
	w.buf = b
	return b[start:len(b):len(b)], nil
}

// appendEvent appends ev as encoding/json writes a StatusEvent.
func appendEvent(b []byte, ev *StatusEvent, at *notification.TimeCache) ([]byte, error) {
	b = notification.AppendJSONString(append(b, `{"event_id":`...), ev.EventID)
	b = notification.AppendJSONString(append(b, `,"id":`...), ev.ID)
	b = notification.AppendJSONString(append(b, `,"state":`...), string(ev.State))
	b, err := at.Append(append(b, `,"at":`...), ev.At)
	if err != nil {
		return b, fmt.Errorf("json: error calling MarshalJSON for type time.Time: %w", err)
	}
	b = notification.AppendJSONField(b, `,"tenant":`, ev.Tenant)
	b = notification.AppendJSONField(b, `,"channel":`, ev.Channel)
	b = notification.AppendJSONField(b, `,"priority":`, ev.Priority)
	b = strconv.AppendInt(append(b, `,"attempts":`...), int64(ev.Attempts), 10)
	b = notification.AppendJSONField(b, `,"provider":`, ev.Provider)
	b = notification.AppendJSONField(b, `,"provider_message_id":`, ev.ProviderMessageID)
	b = notification.AppendJSONField(b, `,"reason":`, ev.Reason)
	b = notification.AppendJSONField(b, `,"duplicate_of":`, ev.DuplicateOf)
	b = notification.AppendJSONField(b, `,"idempotency_key":`, ev.IdempotencyKey)
	b = notification.AppendJSONField(b, `,"node":`, ev.Node)
	return append(b, '}'), nil
}

// bytes appends s to the buffer and returns its copy there.
func (w *eventEncoder) bytes(s string) []byte {
	start := len(w.buf)
	w.buf = append(w.buf, s...)
	return w.buf[start:len(w.buf):len(w.buf)]
}

// id appends a new ULID to the buffer and returns it, or returns the next
// of those reserveIDs made.
func (w *eventEncoder) id(src *idSource) string {
	if w.reserved > 0 {
		s := unsafe.String(&w.buf[w.nextID], ulid.EncodedSize)
		w.nextID += ulid.EncodedSize
		w.reserved--
		return s
	}
	start := len(w.buf)
	w.buf = src.append(w.buf)
	return unsafe.String(&w.buf[start], len(w.buf)-start)
}

// reserveIDs makes n ids for the events to come in one call of src (one
// clock read and one lock, not n: at the API's ingest, n per-event calls
// from every handler cost 6 % of its CPU, most of it reading the clock).
func (w *eventEncoder) reserveIDs(src *idSource, n int) {
	w.nextID, w.reserved = len(w.buf), n
	w.buf = src.appendN(w.buf, n)
}

// idSource makes event ids: ULIDs, monotonic within a millisecond, like
// notification.NewID, written straight into a buffer.
type idSource struct {
	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
	id      ulid.ULID // scratch under mu: entropy reads through an interface, which would move a local to the heap
}

func newIDSource() *idSource {
	var seed [32]byte
	_, _ = cryptorand.Read(seed[:])
	return &idSource{entropy: ulid.Monotonic(rand.NewChaCha8(seed), 0)}
}

func (s *idSource) append(dst []byte) []byte { return s.appendN(dst, 1) }

// appendN appends n ids, all of this millisecond, in increasing order.
func (s *idSource) appendN(dst []byte, n int) []byte {
	if n <= 0 {
		return dst
	}
	ms := ulid.Now()
	start := len(dst)
	dst = slices.Grow(dst, n*ulid.EncodedSize)[:start+n*ulid.EncodedSize]
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.id.SetTime(ms)
	for i := range n {
		id := &s.id
		if err := s.entropy.MonotonicRead(ms, s.id[6:]); err != nil {
			made := ulid.Make() // the millisecond's entropy ran out: extremely unlikely
			id = &made
		}
		at := start + i*ulid.EncodedSize
		_ = id.MarshalTextTo(dst[at : at+ulid.EncodedSize]) // exactly its size, or it writes nothing
	}
	return dst
}

// dispatch is a channel's dispatcher: it gathers batches from the priority
// lanes (critical first, the rest by weight) within the tokens the
// channel's bucket has now, and hands them to the channel's senders. It
// never sleeps holding a batch for tokens, so a verification code that
// arrives while bulk waits for its share goes out with the next pick.
// After the poller stops (pollDone) it exits once the rings are empty;
// stop makes it exit at once.
func (e *Engine) dispatch(cs *channelState, pollDone, stop <-chan struct{}) {
	defer close(cs.urgent)
	defer close(cs.jobs)
	clock := e.cfg.Clock
	batch := make([]*item, 0, cs.cfg.Batch)
	var late outcomes
	var lingerFrom time.Time
	urgentIn := false
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		select {
		case <-stop:
			e.abandon(batch)
			return
		default:
		}
		if cs.paused.Load() && len(batch) == 0 {
			// Paused by an operator: what the rings hold stays unsent and,
			// at shutdown, uncommitted, so the next run sends it.
			if isClosed(pollDone) {
				return
			}
			e.waitWork(cs, idle, 50*time.Millisecond, stop)
			continue
		}
		now := clock.Now()
		urgent, low := cs.limit.Budget(now)
		var tookU, tookL int
		var lens [notification.NumPriorities]int
		for len(batch) < cs.cfg.Batch {
			for i, r := range cs.rings {
				lens[i] = r.Len()
			}
			if tookU+tookL >= urgent {
				break
			}
			// A batch is all urgent or all not, decided by its first pick:
			// an urgent batch goes to the urgent senders without waiting on
			// bulk, and the rest fill their own batches (the next pass
			// picks up urgent work that arrives meanwhile).
			if tookL >= low || (len(batch) > 0 && urgentIn) {
				lens[notification.Normal.Index()], lens[notification.Bulk.Index()] = 0, 0
			}
			if len(batch) > 0 && !urgentIn {
				lens[notification.Critical.Index()], lens[notification.High.Index()] = 0, 0
			}
			p, ok := cs.picker.Pick(lens)
			if !ok {
				break
			}
			it := e.popLane(cs, p, now, &late)
			if it == nil {
				continue
			}
			if isUrgent(p) {
				tookU++
				urgentIn = true
			} else {
				tookL++
			}
			batch = append(batch, it)
		}
		cs.limit.Take(now, tookU, tookL)
		e.finishLate(&late)
		ringsEmpty := true
		for _, r := range cs.rings {
			if r.Len() > 0 {
				ringsEmpty = false
			}
		}
		if len(batch) > 0 {
			full := len(batch) == cs.cfg.Batch
			if lingerFrom.IsZero() {
				lingerFrom = now
			}
			// A normal or bulk batch waits to fill while the rings are
			// empty (Linger) and while the bucket is what stops it (up to
			// budgetLinger): a rate-limited burst then goes out in full
			// batches, not one request per token. Urgent work waiting
			// ends the wait.
			since := now.Sub(lingerFrom)
			budgetBound := !ringsEmpty && (tookU+tookL >= urgent || tookL >= low)
			urgentWaiting := cs.rings[notification.Critical.Index()].Len()+cs.rings[notification.High.Index()].Len() > 0
			lingering := !full && !urgentIn && !urgentWaiting && cs.cfg.Linger > 0 &&
				((ringsEmpty && since < cs.cfg.Linger) || (budgetBound && since < budgetLinger))
			if !lingering || isClosed(pollDone) {
				if !e.handOff(cs, batch, urgentIn, stop) {
					return
				}
				batch, urgentIn, lingerFrom = make([]*item, 0, cs.cfg.Batch), false, time.Time{}
				continue
			}
			d := cs.cfg.Linger - since
			if budgetBound {
				d = max(min(cs.limit.LowTimeFor(now, cs.cfg.Batch-len(batch)), budgetLinger-since), time.Millisecond)
			}
			e.waitWork(cs, idle, d, stop)
			continue
		}
		if !ringsEmpty {
			// Work waits for tokens: sleep until the next one, briefly, so
			// an urgent arrival is picked up soon.
			var wait time.Duration
			for i, r := range cs.rings {
				if r.Len() > 0 {
					wait = cs.limit.NextToken(now, notification.Priority(i+1))
					break
				}
			}
			wait = min(wait, 5*time.Millisecond)
			e.m.limitWait.WithLabelValues(string(cs.name)).Add(wait.Seconds())
			_ = clock.Sleep(context.Background(), wait)
			continue
		}
		if isClosed(pollDone) {
			return
		}
		e.waitWork(cs, idle, 50*time.Millisecond, stop)
	}
}

// handOff gives a batch to the senders; false when stop came first. While
// a normal or bulk batch waits for a free sender, urgent work that arrives
// goes out past it, so a code never waits for a bulk batch's turn.
func (e *Engine) handOff(cs *channelState, batch []*item, urgent bool, stop <-chan struct{}) bool {
	if urgent {
		cs.gate.enterUrgent()
		select {
		case cs.urgent <- batch:
			return true
		case <-stop:
			cs.gate.exitUrgent()
			e.abandon(batch)
			return false
		}
	}
	for {
		select {
		case cs.jobs <- batch:
			return true
		case <-stop:
			e.abandon(batch)
			return false
		case <-cs.notify:
			if !e.dispatchUrgent(cs, stop) {
				e.abandon(batch)
				return false
			}
		}
	}
}

// dispatchUrgent sends what the critical and high lanes hold, within the
// channel's tokens, in batches to the urgent senders; false when stop came
// first.
func (e *Engine) dispatchUrgent(cs *channelState, stop <-chan struct{}) bool {
	for !cs.paused.Load() {
		now := e.cfg.Clock.Now()
		budget, _ := cs.limit.Budget(now)
		batch := make([]*item, 0, min(cs.cfg.Batch, max(budget, 0)))
		var late outcomes
		var lens [notification.NumPriorities]int
		for len(batch) < cap(batch) {
			lens[notification.Critical.Index()] = cs.rings[notification.Critical.Index()].Len()
			lens[notification.High.Index()] = cs.rings[notification.High.Index()].Len()
			p, ok := cs.picker.Pick(lens)
			if !ok {
				break
			}
			if it := e.popLane(cs, p, now, &late); it != nil {
				batch = append(batch, it)
			}
		}
		cs.limit.Take(now, len(batch), 0)
		e.finishLate(&late)
		if len(batch) == 0 {
			return true
		}
		if !e.handOff(cs, batch, true, stop) {
			return false
		}
	}
	return true
}

// finishLate finishes the items popLane found expired (their claims
// released, their events produced) and empties late.
func (e *Engine) finishLate(late *outcomes) {
	if len(late.done) > 0 {
		e.releaseClaims(late.done)
		late.flush(e.outCtx, e, e.drainStop)
		*late = outcomes{}
	}
}

// popLane takes the next item of lane p, or nil when that item is not to
// be sent here: its partition was revoked (the new owner sends it) or it
// expired while queued (finished through late, never sent).
func (e *Engine) popLane(cs *channelState, p notification.Priority, now time.Time, late *outcomes) *item {
	it, _ := cs.rings[p.Index()].Pop()
	if it.ps.revoked.Load() {
		e.abandon([]*item{it})
		return nil
	}
	if it.n.Expired(now) {
		// A code that expired while queued is never sent.
		e.m.expired.WithLabelValues(string(cs.name)).Inc()
		late.event(e, it.n, StateExpired, now, "", "", "expired while queued")
		late.done = append(late.done, it)
		return nil
	}
	return it
}

// budgetLinger bounds how long a normal or bulk batch waits for the tokens
// to fill it.
const budgetLinger = 100 * time.Millisecond

func isUrgent(p notification.Priority) bool {
	return p == notification.Critical || p == notification.High
}

// sender sends batches until both job channels are closed, urgent ones
// first whenever both are waiting.
func (e *Engine) sender(ctx context.Context, cs *channelState) {
	var bufs sendBuffers
	urgent, low := cs.urgent, cs.jobs
	for urgent != nil || low != nil {
		if urgent != nil {
			select {
			case b, ok := <-urgent:
				if !ok {
					urgent = nil
				} else {
					e.sendUrgent(ctx, cs, b, &bufs)
				}
				continue
			default:
			}
		}
		select {
		case b, ok := <-urgent:
			if !ok {
				urgent = nil
				continue
			}
			e.sendUrgent(ctx, cs, b, &bufs)
		case b, ok := <-low:
			if !ok {
				low = nil
				continue
			}
			cs.gate.enterLow()
			e.send(ctx, cs, b, &bufs)
			cs.gate.exitLow()
		}
	}
}

func (e *Engine) sendUrgent(ctx context.Context, cs *channelState, batch []*item, bufs *sendBuffers) {
	defer cs.gate.exitUrgent()
	e.send(ctx, cs, batch, bufs)
}

// sendBuffers are one sender's slices, reused batch after batch: nothing
// keeps them once send returns (the provider answers in results before it
// returns, the log and the stores copy what they write). Made anew, they
// were ~200 KB to zero per batch of 500. Reused, their stale pointers hold
// at most one earlier batch's memory a sender.
type sendBuffers struct {
	ns      []*notification.Notification
	results []providers.Result
	confirm []dedupe.Done
	out     outcomes
}

// lowGate holds a channel's normal and bulk sends to an eighth of its
// senders (at least one) while critical or high batches are queued or in
// flight, and for urgentHold after the last of them was sent. On a
// saturated machine (or provider) every send in flight slows the others,
// and each hop of a code (poll, dispatch, the provider call) waits behind
// the bulk work for a CPU. Without the hold, a steady trickle of codes (a
// login flood) let bulk widen to every sender each time the last code was
// sent, so the next code met eight bulk batches in flight: in the 1M-burst
// benchmark an eighth plus the hold cut the critical p50 ~3x and the p99
// ~2x, for ~20-25 % of the bulk rate while codes flow.
type lowGate struct {
	mu     sync.Mutex
	cond   sync.Cond
	urgent int       // urgent batches handed off and not yet sent
	low    int       // normal and bulk sends in flight
	max    int       // low sends allowed while urgent work is about
	until  time.Time // the hold after the last urgent batch ends then
	hold   time.Duration
}

// urgentHold is how long bulk stays narrow after the last urgent batch.
const urgentHold = 100 * time.Millisecond

func newLowGate(concurrency int) *lowGate {
	g := &lowGate{max: max(1, concurrency/8), hold: urgentHold}
	g.cond.L = &g.mu
	return g
}

func (g *lowGate) enterLow() {
	g.mu.Lock()
	for g.low >= g.max {
		if g.urgent == 0 {
			wait := time.Until(g.until)
			if wait <= 0 {
				break
			}
			// Woken by the timer, or earlier by a slot freeing. The timer
			// takes the lock first, so its wake-up cannot fall before
			// this Wait.
			t := time.AfterFunc(wait, func() {
				g.mu.Lock()
				g.cond.Broadcast()
				g.mu.Unlock()
			})
			g.cond.Wait()
			t.Stop()
			continue
		}
		g.cond.Wait()
	}
	g.low++
	g.mu.Unlock()
}

func (g *lowGate) exitLow() {
	g.mu.Lock()
	g.low--
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *lowGate) enterUrgent() {
	g.mu.Lock()
	g.urgent++
	g.mu.Unlock()
}

func (g *lowGate) exitUrgent() {
	g.mu.Lock()
	g.urgent--
	done := g.urgent == 0
	if done {
		g.until = time.Now().Add(g.hold)
	}
	g.mu.Unlock()
	if done {
		g.cond.Broadcast() // waiters time the hold from here
	}
}

func (e *Engine) waitWork(cs *channelState, t *time.Timer, d time.Duration, stop <-chan struct{}) {
	t.Reset(max(d, 0))
	select {
	case <-cs.notify:
	case <-t.C:
	case <-stop:
	}
	t.Stop()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// abandon drops claimed items that will not be sent here (a hard stop, a
// revoked partition): their records stay unfinished and are replayed, and
// their claims are released so that replay is not taken for a duplicate.
func (e *Engine) abandon(items []*item) {
	if len(items) > 0 {
		e.releaseClaims(items)
	}
}

func (e *Engine) releaseClaims(items []*item) {
	done := make([]dedupe.Done, len(items))
	for i, it := range items {
		done[i] = dedupe.Done{Key: it.key, Token: it.token, ID: it.n.ID, Seq: it.seq}
	}
	_ = e.cfg.Dedupe.Release(e.outCtx, done)
	e.claimed.Add(-int64(len(items)))
}

// holdClaims renews, before their send, the claims of a batch's items
// taken half a lease or more ago (dedupe.Store.Renew). A claim is taken
// when its record is polled; an item that then waits behind a paused
// channel, an open breaker or a backlog would lose its key to a later
// record of it once the lease ran out, and both would be sent. An item
// whose key another record now holds, or was confirmed meanwhile, is
// finished unsent, as a duplicate. It returns the items to send; the
// claims of the others are not theirs to confirm or release.
func (e *Engine) holdClaims(batch []*item) []*item {
	now := e.cfg.Clock.Now()
	stale := e.cfg.Dedupe.Lease() / 2
	var reqs []dedupe.RenewRequest
	var at []int
	for i, it := range batch {
		if now.Sub(it.claimedAt) >= stale {
			reqs = append(reqs, dedupe.RenewRequest{ClaimRequest: it.claimRequest(), Seq: it.seq})
			at = append(at, i)
		}
	}
	if len(reqs) == 0 {
		return batch
	}
	res := make([]dedupe.ClaimResult, len(reqs))
	if err := e.cfg.Dedupe.Renew(e.outCtx, reqs, res); err != nil {
		// What a send did before renewals: go out on the claim as taken.
		e.cfg.Logger.Warn("dedupe renew failed; sending on the claims as taken", zap.Error(err))
		return batch
	}
	var lost outcomes
	for j, i := range at {
		it, r := batch[i], res[j]
		if r.Status.ShouldSend() {
			it.holds(r, now)
			continue
		}
		e.m.duplicates.WithLabelValues(string(it.n.Channel)).Inc()
		if r.OriginalID != it.n.ID {
			lost.duplicate(e, it.n, r, now, " while it waited")
		}
		lost.done = append(lost.done, it)
		batch[i] = nil
	}
	if len(lost.done) == 0 {
		return batch
	}
	e.claimed.Add(-int64(len(lost.done)))
	lost.flush(e.outCtx, e, e.drainStop)
	return slices.DeleteFunc(batch, func(it *item) bool { return it == nil })
}

// send calls the provider with one batch and turns every item's result
// into its outcome: sent (confirm the key, status event), retriable (retry
// topic after backoff, or dead letters once attempts are used up) or
// permanent (dead letters). Outcomes are produced before the records are
// marked finished, so a crash between the two replays, and the dedupe
// store keeps the replay from sending twice.
func (e *Engine) send(ctx context.Context, cs *channelState, batch []*item, bufs *sendBuffers) {
	clock := e.cfg.Clock
	for cs.provLimit != nil {
		w, ok := cs.provLimit.Reserve(clock.Now(), len(batch))
		if w > 0 {
			e.m.limitWait.WithLabelValues(string(cs.name)).Add(w.Seconds())
			if clock.Sleep(ctx, w) != nil {
				break // shutting down: the drain sends what it holds
			}
		}
		if ok {
			break
		}
	}
	if batch = e.holdClaims(batch); len(batch) == 0 {
		return
	}
	ns := reuse(bufs.ns, len(batch))
	for i, it := range batch {
		it.n.Attempts++
		ns[i] = it.n
	}
	results := reuse(bufs.results, len(batch))
	clear(results) // a provider may leave an item's result unset
	start := clock.Now()
	cs.cfg.Provider.Send(ctx, ns, results)
	now := clock.Now()

	out := &bufs.out
	out.reuse(len(batch), len(batch), len(batch))
	confirm := bufs.confirm[:0]
	defer func() { bufs.ns, bufs.results, bufs.confirm = ns, results, confirm }()
	var release []*item
	// Sends are counted per run of equal labels (a batch usually has one),
	// not per item: the label lookup costs more than the count.
	var counted struct {
		provider string
		outcome  providers.Outcome
		n        int
	}
	countSends := func() {
		if counted.n > 0 {
			e.m.sends.WithLabelValues(string(cs.name), counted.provider, counted.outcome.String()).Add(float64(counted.n))
		}
	}
	for i, it := range batch {
		n, r := it.n, results[i]
		provider := r.Provider
		if provider == "" {
			provider = cs.cfg.Provider.Name()
		}
		if r.Outcome == 0 {
			r = providers.Result{Outcome: providers.Retriable, Reason: "provider returned no result"}
		}
		if counted.n > 0 && (counted.provider != provider || counted.outcome != r.Outcome) {
			countSends()
			counted.n = 0
		}
		counted.provider, counted.outcome = provider, r.Outcome
		counted.n++
		out.done = append(out.done, it)
		switch r.Outcome {
		case providers.Sent:
			outcome := r.MessageID
			if outcome == "" {
				outcome = "sent"
			}
			confirm = append(confirm, dedupe.Done{Key: it.key, Token: it.token, ID: n.ID, Outcome: outcome})
			out.event(e, n, StateSent, now, provider, r.MessageID, "")
			out.keepPayload(e, it)
			if p := n.Priority; p.Valid() {
				cs.latency.total[p.Index()].Observe(now.Sub(n.AcceptedAt).Seconds())
				if n.Attempts == 1 && !it.retry {
					st := &cs.latency.stage[p.Index()]
					st[stageLog].Observe(it.polled.Sub(n.AcceptedAt).Seconds())
					st[stageEngine].Observe(start.Sub(it.polled).Seconds())
					st[stageProvider].Observe(now.Sub(start).Seconds())
				}
			}
		case providers.Retriable:
			release = append(release, it)
			if n.Attempts >= e.cfg.MaxAttempts {
				reason := "after " + strconv.Itoa(n.Attempts) + " attempts: " + r.Reason
				out.deadLetter(e, []byte(n.ID), e.cfg.Codec.Encode(n), reasonExhausted, reason, n.Attempts, string(cs.name), now)
				out.event(e, n, StateDeadLettered, now, provider, "", reasonExhausted+": "+r.Reason)
				continue
			}
			due := now.Add(e.cfg.Backoff.Delay(n.Attempts, r.RetryAfter))
			e.m.retries.WithLabelValues(string(cs.name)).Inc()
			out.recs = append(out.recs, partition.Record{Topic: e.cfg.Topics.RetryLane(n.Priority), Key: []byte(n.ID), Value: e.cfg.Codec.Encode(n),
				Headers: []partition.Header{
					{Key: HeaderDue, Value: strconv.AppendInt(nil, due.UnixMilli(), 10)},
					{Key: HeaderError, Value: []byte(r.Reason)},
				}})
			out.event(e, n, StateRetrying, now, provider, "", r.Reason)
		default:
			release = append(release, it)
			out.deadLetter(e, []byte(n.ID), e.cfg.Codec.Encode(n), reasonPermanent, r.Reason, n.Attempts, string(cs.name), now)
			out.event(e, n, StateDeadLettered, now, provider, "", r.Reason)
		}
	}
	countSends()
	// The send happened whatever comes next: record it first. The confirm's
	// fsync runs while the outcomes are produced; the records are marked
	// finished (their offsets may commit) only once it is done.
	durable := noWait
	if len(confirm) > 0 {
		// A confirm the store fails to make durable does not undo the sends:
		// the records still finish (held, they would replay and send again
		// after a restart). Their keys are then lost to the store: a repeat
		// is held while the claims' leases run, and after them is sent again
		// (policy resend) or closed unsent (skip). The store refuses every
		// write from then on and the node turns unready (Readiness).
		failed := func(err error) {
			e.cfg.Logger.Error("dedupe confirm failed: these sends' keys will not stop a later repeat",
				zap.Int("keys", len(confirm)), zap.Error(err))
		}
		wait, err := e.cfg.Dedupe.ConfirmThenSync(e.outCtx, confirm)
		if err != nil {
			failed(err)
		} else {
			durable = func() {
				if err := wait(); err != nil {
					failed(err)
				}
			}
		}
		e.claimed.Add(-int64(len(confirm)))
	}
	// Retried and dead-lettered keys are free again: the retry record (or a
	// deliberate resend) claims them anew. Released before the retry record
	// exists, or its claim could find the old one still in flight.
	if len(release) > 0 {
		e.releaseClaims(release)
	}
	out.flushThen(e.outCtx, e, e.drainStop, durable)
}

func noWait() {}
