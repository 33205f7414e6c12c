package engine

import (
	"context"
	"maps"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/partition"
)

// Taking over partitions from another node.
//
// A node that dies after sending, before its offset commit, leaves the new
// owner of its partitions to replay those records. The new owner's dedupe
// store never saw their keys, so on its own it would send them again. Its
// status store has seen them: with a NodeID it follows the whole status
// topic, which carries the old owner's `sent` events, and copies their
// idempotency keys into the dedupe store (rememberKeys). So a newly
// assigned partition is held (paused) until the status replica has
// applied the status topic up to where it ended at the assignment. Then a
// record repeating a key the old owner sent, at any time in the window,
// is a duplicate here too; and the records below the partition's end at
// the assignment (the only ones the old owner can have read) are also
// looked up by id, so that those already sent, delivered or answered as
// duplicates are finished without a send even when their events carry no
// key (written by a node without this code). Their keys are confirmed in
// the dedupe store.
//
// What this does not cover: a send whose `sent` event the old owner never
// produced (it died between the provider's answer and the produce). The
// provider sees that one twice, as on any at-least-once boundary; the
// notification's id rides in every provider request for the provider to
// deduplicate on.

// takeoverWait bounds how long new partitions wait for the status replica.
// Past it they are read anyway, and records the replica had not yet seen
// may be sent again (logged).
const takeoverWait = 30 * time.Second

var takeoverBlocker = blocker{lane: -3}

// takeover is one assignment's partitions, held until the status replica
// has caught up with what the old owners produced.
type takeover struct {
	tps   []partition.TopicPartition
	start time.Time
	// want is the status topic's end offsets at the assignment; nil until
	// read.
	want map[partition.TopicPartition]int64
	// retryAt spaces the reads of a failing broker.
	retryAt time.Time
}

// replicaPositions is how far the status replica has applied the status
// topic, per partition: the next offset to apply.
type replicaPositions struct {
	mu  sync.Mutex
	pos map[partition.TopicPartition]int64
	// asked is set while a takeover waits: the replica then also works out
	// the positions of partitions it had nothing new to apply from.
	asked bool
}

func (r *replicaPositions) covers(want map[partition.TopicPartition]int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = true
	for tp, end := range want {
		if end > 0 && r.pos[tp] < end {
			return false
		}
	}
	return true
}

// advance records what the replica applied (next offsets).
func (r *replicaPositions) advance(next map[partition.TopicPartition]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pos == nil {
		r.pos = map[partition.TopicPartition]int64{}
	}
	for tp, off := range next {
		r.pos[tp] = max(r.pos[tp], off)
	}
}

// raise lifts each offset in m to the replica's position, where that is
// further.
func (r *replicaPositions) raise(m map[partition.TopicPartition]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for tp, off := range m {
		m[tp] = max(off, r.pos[tp])
	}
}

func (r *replicaPositions) wanted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asked
}

// measure sets the positions of the replica's partitions from its
// committed offsets, for those it has applied nothing new from since its
// start (committedOffsets), and returns how many records of topic it has
// yet to apply (ok is false when the log did not answer).
func (r *replicaPositions) measure(ctx context.Context, log partition.Log, topic string) (behind int64, ok bool) {
	ends, committed, err := committedOffsets(ctx, log, topic)
	if err != nil {
		return 0, false
	}
	r.advance(committed)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = false
	for tp, end := range ends {
		if pos, known := r.pos[tp]; known {
			behind += max(end-pos, 0)
		}
	}
	return behind, true
}

// committedOffsets reads topic's end offsets, then the group's lag, and
// returns the ends and, for each partition the group holds, its committed
// offset as the end less the lag. The ends are read first: a record
// produced in between makes a committed offset look lower, never higher.
func committedOffsets(ctx context.Context, log partition.Log, topic string) (ends, committed map[partition.TopicPartition]int64, err error) {
	if ends, err = log.EndOffsets(ctx, topic); err != nil {
		return nil, nil, err
	}
	lag, err := log.Lag(ctx)
	if err != nil {
		return nil, nil, err
	}
	committed = map[partition.TopicPartition]int64{}
	for tp, l := range lag {
		if end, ok := ends[tp]; ok {
			committed[tp] = end - l
		}
	}
	return ends, committed, nil
}

// takeoverOn: only a node that follows the status topic can know what
// another node sent.
func (e *Engine) takeoverOn() bool { return e.cfg.NodeID != "" && e.cfg.Status != nil }

// holdForTakeover pauses newly assigned partitions until advanceTakeovers
// lets them go. Called with e.mu held.
func (e *Engine) holdForTakeoverLocked(tps []partition.TopicPartition) {
	set := e.blocked[takeoverBlocker]
	if set == nil {
		set = map[partition.TopicPartition]bool{}
		e.blocked[takeoverBlocker] = set
	}
	for _, tp := range tps {
		if !set[tp] {
			set[tp] = true
			e.pauseRef[tp]++
			e.m.paused.Inc()
		}
	}
	e.log.Pause(tps...)
	t := &takeover{tps: tps, start: time.Now()}
	if e.heldBy == nil {
		e.heldBy = map[partition.TopicPartition]*takeover{}
	}
	for _, tp := range tps {
		e.heldBy[tp] = t // a later assignment of tp supersedes an earlier one's hold
	}
	e.takeovers = append(e.takeovers, t)
	if e.kickPoll != nil {
		e.kickPoll()
	}
}

// advanceTakeovers runs on the poller: it reads the end offsets a new
// assignment needs and releases its partitions once the status replica has
// caught up (or takeoverWait has passed).
func (e *Engine) advanceTakeovers(ctx context.Context) {
	e.mu.Lock()
	pending := e.takeovers
	e.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	var left []*takeover
	for _, t := range pending {
		if t.want == nil && (time.Now().Before(t.retryAt) || !e.prepareTakeover(ctx, t)) {
			if time.Since(t.start) < takeoverWait {
				left = append(left, t)
				continue
			}
		}
		switch {
		case t.want == nil:
			e.cfg.Logger.Warn("taking over partitions without their offsets (the log did not answer); records another node sent may be sent again",
				zap.Duration("waited", takeoverWait))
		case len(t.want) == 0 || e.replica.covers(t.want):
		case time.Since(t.start) >= takeoverWait:
			e.cfg.Logger.Warn("taking over partitions before the status replica caught up; records another node sent may be sent again",
				zap.Duration("waited", takeoverWait))
		default:
			left = append(left, t)
			continue
		}
		e.release(t)
	}
	e.mu.Lock()
	// Assignments that came in meanwhile stay.
	e.takeovers = append(left, e.takeovers[len(pending):]...)
	e.mu.Unlock()
}

// release resumes t's partitions, those no later assignment holds.
func (e *Engine) release(t *takeover) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, tp := range t.tps {
		if e.heldBy[tp] == t {
			delete(e.heldBy, tp)
			e.resumeLocked(tp, takeoverBlocker)
		}
	}
}

// prepareTakeover reads which records of t's partitions another node may
// have sent (those below each one's end) and where the status topic ends.
// A partition with nothing uncommitted has no record to check, but waits
// all the same once the replica has read what the topic held at its start:
// the keys the old owner sent come with the status topic (rememberKeys),
// and a new record repeating one must find it.
func (e *Engine) prepareTakeover(ctx context.Context, t *takeover) bool {
	t.retryAt = time.Now().Add(250 * time.Millisecond)
	lag, err := e.log.Lag(ctx)
	if err != nil {
		return false
	}
	// A partition the lag does not list (the group still settling) is
	// checked as if it had some.
	uncommitted := func(tp partition.TopicPartition) bool {
		l, ok := lag[tp]
		return !ok || l > 0
	}
	byTopic := map[string]bool{}
	for _, tp := range t.tps {
		if uncommitted(tp) {
			byTopic[tp.Topic] = true
		}
	}
	if len(byTopic) == 0 && !e.replicaCovered.Load() {
		// Nothing to check, and the replica is still reading what the
		// topic held at its start (the node joined its group after
		// takeoverWait anyway): waiting for it would hold these
		// partitions, and the codes in them, as long again. Keys the old
		// owner sent that the replica has not read yet may then be sent
		// again here.
		t.want = map[partition.TopicPartition]int64{}
		return true
	}
	want, err := e.log.EndOffsets(ctx, e.cfg.Topics.Status)
	if err != nil {
		return false
	}
	ends := map[partition.TopicPartition]int64{}
	for topic := range byTopic {
		te, err := e.log.EndOffsets(ctx, topic)
		if err != nil {
			return false
		}
		maps.Copy(ends, te)
	}
	for _, tp := range t.tps {
		if !uncommitted(tp) {
			continue
		}
		if ps := e.part(tp); ps != nil {
			ps.checkBelow = max(ps.checkBelow, ends[tp])
		}
	}
	t.want = want
	return true
}

// skipSent marks the items of ready that another node already sent (their
// partitions' records below checkBelow, looked up in the status store);
// claim finishes them without a send.
func (e *Engine) skipSent(ready []*item) {
	var check []*item
	for _, it := range ready {
		below := it.ps.checkBelow
		if below == 0 {
			continue
		}
		if it.off >= below-1 {
			// The window's last record, or past it: what follows was
			// produced after the assignment.
			it.ps.checkBelow = 0
		}
		if it.off < below {
			check = append(check, it)
		}
	}
	if len(check) == 0 {
		return
	}
	ids := make([]string, len(check))
	for i, it := range check {
		ids[i] = it.n.ID
	}
	evs, found, err := e.cfg.Status.latest(ids)
	if err != nil {
		e.cfg.Logger.Warn("takeover: status lookup failed; sending without it", zap.Error(err))
		return
	}
	for i, it := range check {
		if !found[i] {
			continue
		}
		switch evs[i].State {
		case StateSent, StateDelivered, StateDuplicate:
			outcome := evs[i].ProviderMessageID
			if outcome == "" {
				outcome = string(evs[i].State)
			}
			e.sentElsewhere[it] = outcome
		}
	}
}

// finishSentElsewhere confirms the claims of items another node sent, so
// their keys answer as duplicates here from now on.
func (e *Engine) finishSentElsewhere(ctx context.Context, done []dedupe.Done) {
	if len(done) == 0 {
		return
	}
	if err := e.cfg.Dedupe.Confirm(ctx, done); err != nil {
		e.cfg.Logger.Warn("takeover: dedupe confirm failed", zap.Error(err))
	}
}

// rememberKeys copies into the dedupe store the idempotency keys of the
// notifications other nodes accepted and sent (their events carry them),
// so that here too a repeat of one answers as a duplicate: a request
// retried at another node is answered with the first notification, and
// after a rebalance the new owner of a partition does not send again what
// the old one sent, however long ago within the window. This node's own
// keys are in its store already.
func (e *Engine) rememberKeys(ctx context.Context, events []StatusEvent) error {
	n, size := 0, 0
	for i := range events {
		if ev := &events[i]; e.remembers(ev) {
			n++
			size += len(ingestScope) + 2 + len(ev.Tenant) + len(ev.IdempotencyKey)
		}
	}
	if n == 0 {
		return nil
	}
	rs := make([]dedupe.Remembered, 0, n)
	buf := make([]byte, 0, size) // the keys share it; it does not grow
	for i := range events {
		ev := &events[i]
		if !e.remembers(ev) {
			continue
		}
		start := len(buf)
		r := dedupe.Remembered{ID: ev.ID, At: ev.At}
		if ev.State == StateAccepted {
			buf = appendIngestKey(buf, ev.Tenant, ev.IdempotencyKey)
			r.Scope, r.Outcome = ingestScope, "accepted"
		} else {
			buf = appendSendKey(buf, ev.Tenant, ev.IdempotencyKey)
			r.Scope, r.Outcome = ev.Channel, ev.ProviderMessageID
			if r.Outcome == "" {
				r.Outcome = "sent"
			}
		}
		r.Key = unsafe.String(&buf[start], len(buf)-start)
		rs = append(rs, r)
	}
	return e.cfg.Dedupe.Remember(ctx, rs)
}

// withdrawnKeys is the ingest keys that other nodes' withdrawn events in
// events drop (see Engine.mendEvents; Kafka nodes wrote them before
// 2026-11-27, and write accepted events after their records since), each
// while it names the withdrawn notification: a resend accepted since holds
// it under another id.
func (e *Engine) withdrawnKeys(events []StatusEvent) []dedupe.Remembered {
	var rs []dedupe.Remembered
	for i := range events {
		ev := &events[i]
		if ev.State != StateWithdrawn || !e.keyedElsewhere(ev) {
			continue
		}
		rs = append(rs, dedupe.Remembered{Key: string(appendIngestKey(nil, ev.Tenant, ev.IdempotencyKey)), Scope: ingestScope, ID: ev.ID})
	}
	return rs
}

func (e *Engine) remembers(ev *StatusEvent) bool {
	return e.keyedElsewhere(ev) && (ev.State == StateAccepted || ev.State == StateSent)
}

// keyedElsewhere says whether ev is another node's and carries its
// notification's idempotency key.
func (e *Engine) keyedElsewhere(ev *StatusEvent) bool {
	return ev.IdempotencyKey != "" && ev.Node != "" && ev.Node != e.cfg.NodeID
}
