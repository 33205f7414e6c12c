package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// ingestScope is the dedupe scope of ingest idempotency: separate from the
// send claims (scoped by channel), so a key answers "already accepted" at
// the door and, independently, "already sent" at the provider.
const ingestScope = "ingest"

// appendIngestKey appends the dedupe key that answers "already accepted"
// for a tenant's idempotency key: the send key behind the ingest scope.
func appendIngestKey(dst []byte, tenant, key string) []byte {
	return appendSendKey(append(append(dst, ingestScope...), 0), tenant, key)
}

// appendSendKey appends the dedupe key that answers "already sent" (in the
// channel's scope) for a tenant's idempotency key.
func appendSendKey(dst []byte, tenant, key string) []byte {
	return append(append(append(dst, tenant...), 0), key...)
}

// Admission is what became of one notification handed to Ingest.
type Admission struct {
	ID        string // the notification's id, or the original's for a duplicate
	Duplicate bool   // its idempotency key was already accepted; nothing was enqueued
}

// ErrUnavailable wraps failures of the stores or the log during ingest:
// nothing of the call was accepted, and the caller may retry it whole.
var ErrUnavailable = errors.New("engine: unavailable")

// ErrInProgress is the error of an Ingest refused because an item's key is
// held by another call still writing its notification (InProgressError
// says which item): nothing of the call was accepted, and the caller may
// retry it whole once that call is done.
var ErrInProgress = errors.New("engine: idempotency key in progress")

// InProgressError names the item (its index in Ingest's notifications)
// whose key another call held past inFlightWait.
type InProgressError struct{ Index int }

func (e *InProgressError) Error() string {
	return fmt.Sprintf("engine: item %d: its idempotency key is held by a request still being accepted", e.Index)
}

func (e *InProgressError) Unwrap() error { return ErrInProgress }

// inFlightWait bounds how long Ingest waits for another call's claims of
// its keys to be confirmed or released (a log append takes milliseconds;
// one that takes seconds is a disk or broker in trouble).
const inFlightWait = 2 * time.Second

// Ingest accepts notifications at the door: it prepares them (id, accepted
// time, idempotency key), claims their keys for their tenant (every key,
// or only those given: Config.IngestDedupe), and produces
// the new ones to their lanes with their "accepted" status events, durably,
// before it returns. A key already accepted within the dedupe window is a
// duplicate of the first notification and is not enqueued again.
func (e *Engine) Ingest(ctx context.Context, ns []*notification.Notification, now time.Time) ([]Admission, int, error) {
	ib := ingestPool.Get().(*ingestBuffers)
	defer ib.put()
	reqs := reuse(ib.reqs, len(ns))
	// The ids, default keys and claim keys of the batch share one buffer;
	// strings made in an array the buffer outgrows stay valid.
	buf := make([]byte, 0, len(ns)*(ulid.EncodedSize+2*notification.DefaultKeyLen+16))
	str := func(start int) string { return unsafe.String(&buf[start], len(buf)-start) }
	// The ids the batch needs, made in one call (see reserveIDs).
	missing := 0
	for _, n := range ns {
		if n.ID == "" {
			missing++
		}
	}
	nextID := len(buf)
	buf = e.ids.appendN(buf, missing)
	// unclaimed[i]: ns[i] is not claimed at the door (IngestDedupeKeyed, no
	// key of its own); reqs and claims then hold the others only.
	var unclaimed []bool
	if e.cfg.IngestDedupe == IngestDedupeKeyed {
		unclaimed = make([]bool, len(ns))
	}
	reqs = reqs[:0]
	for i, n := range ns {
		if n.ID == "" {
			n.ID = unsafe.String(&buf[nextID], ulid.EncodedSize)
			nextID += ulid.EncodedSize
		}
		if n.IdempotencyKey == "" {
			if unclaimed != nil {
				unclaimed[i] = true
				if e.cfg.Topics.KeylessLanes {
					// Neither the door nor the lane's record key needs it:
					// the poller derives it for the send claim, as for any
					// record without one, off the ingest's path. Deriving
					// it here (a SHA-256, and 35 more bytes a record and
					// event) was a fifth of a keyed NDJSON ingest's CPU.
					n.Stamp(now)
					continue
				}
			}
			start := len(buf)
			buf = notification.AppendDefaultIdempotencyKey(buf, n)
			n.IdempotencyKey = str(start)
		}
		n.Prepare(now) // the accepted time
		if unclaimed != nil && unclaimed[i] {
			continue
		}
		start := len(buf)
		buf = appendIngestKey(buf, n.Tenant, n.IdempotencyKey)
		reqs = append(reqs, dedupe.ClaimRequest{Key: str(start), Scope: ingestScope, ID: n.ID})
	}
	claims := reuse(ib.claims, len(reqs))
	clear(claims)
	if err := e.cfg.Dedupe.Claim(ctx, reqs, claims); err != nil {
		return nil, 0, fmt.Errorf("%w: idempotency store: %v", ErrUnavailable, err)
	}
	if k, err := e.awaitInFlight(ctx, reqs, claims); err != nil {
		if k >= 0 {
			return nil, 0, &InProgressError{Index: itemOfClaim(unclaimed, k)}
		}
		return nil, 0, err
	}
	out := make([]Admission, len(ns))
	o := &ib.out
	o.reuse(2*len(ns), len(ns), 0) // a record and an event each
	// Runs need ids from one call of ids, which no other run's overlap; an
	// id a caller gave could fall anywhere.
	o.runs = missing == len(ns)
	o.enc.reserveIDs(e.ids, len(ns))
	done := ib.done[:0]
	// Where each accepted item's record, and each of done's, is in o.recs.
	recAt, doneRec := ib.recAt[:0], ib.doneRec[:0]
	// The records' values share one buffer (a value keeps the array it was
	// written into if the buffer outgrows it), not an allocation each.
	values := slices.Grow(ib.values[:0], len(ns)*recordSizeHint)
	defer func() {
		ib.reqs, ib.claims, ib.done, ib.values, ib.recAt, ib.doneRec = reqs, claims, done, values, recAt, doneRec
	}()
	accepted, k := 0, 0 // k: the next of reqs and claims
	for i, n := range ns {
		door := unclaimed == nil || !unclaimed[i]
		if door {
			if c := claims[k]; !c.Status.ShouldSend() {
				out[i] = Admission{ID: c.OriginalID, Duplicate: true}
				k++
				continue
			}
		}
		out[i] = Admission{ID: n.ID}
		accepted++
		// The record first, its event after: addEvent appends to o.recs too.
		start := len(values)
		values = e.cfg.Codec.AppendEncodeCached(values, n, &ib.accepted)
		var key []byte
		if !e.cfg.Topics.KeylessLanes {
			key = o.enc.bytes(n.IdempotencyKey)
		}
		rec := len(o.recs)
		o.recs = append(o.recs, laneRecord(e.cfg.Topics, n, key, values[start:len(values):len(values)]))
		ev := e.statusEvent(n, StateAccepted, now, "", "", "")
		if !door {
			ev.IdempotencyKey = "" // the other nodes need not claim it at their doors either
		}
		events := len(o.events)
		o.addEvent(e, ev)
		if len(o.events) > events {
			o.announces = append(o.announces, rec)
		}
		recAt = append(recAt, rec)
		if door {
			done = append(done, dedupe.Done{Key: reqs[k].Key, Token: claims[k].Token, ID: n.ID, Outcome: "accepted", Seq: claims[k].Seq})
			doneRec = append(doneRec, rec)
			k++
		}
	}
	if accepted == 0 {
		return out, 0, nil
	}
	if err := e.emitIngest(ctx, o); err != nil {
		var pe *partition.ProduceError
		if errors.As(err, &pe) {
			err := e.partlyWritten(ctx, pe, recAt, done, doneRec)
			e.mendEvents(ctx, o.withdrawn, o.owed)
			if err == nil {
				return out, accepted, nil
			}
			return nil, 0, err
		}
		return nil, 0, e.releaseHeld(ctx, reqs, claims, fmt.Errorf("%w: log: %v", ErrUnavailable, err))
	}
	// Not synced: the records are durable already, and a confirm lost in a
	// crash only means a repeat of the key is accepted again, where the
	// send claim stops the second send. Waiting for the disk here doubled
	// the fsyncs on the path of every request.
	if err := e.cfg.Dedupe.ConfirmNoSync(context.WithoutCancel(ctx), done); err != nil {
		// Accepted and durable: a lost confirm only means a repeat of the
		// key is accepted again, and the send claim stops the second send.
		e.cfg.Logger.Warn("confirm of ingest claims failed", zap.Error(err))
	}
	return out, accepted, nil
}

// PartlyWrittenError is Ingest's error when the log wrote some of the
// request's notifications and not the others (see partlyWritten). It
// wraps ErrUnavailable: the request is to be sent again.
type PartlyWrittenError struct {
	Written, Of int   // notifications written, of those the request would have accepted
	Err         error // the log's
}

func (e *PartlyWrittenError) Error() string {
	return fmt.Sprintf("%v: log: %d of the request's %d new notifications were written and will be sent, the others were not (%v); "+
		"send the request again: its idempotency keys keep the written ones from being sent twice", ErrUnavailable, e.Written, e.Of, e.Err)
}

func (e *PartlyWrittenError) Unwrap() error { return ErrUnavailable }

// awaitInFlight waits for the keys another call holds (InFlight: its
// notification is not durable yet) to be confirmed or released, and takes
// their outcome: a Duplicate once confirmed, the key itself once released.
// Answering such a repeat as a duplicate at once promised the first call's
// notification, which that call could still fail to write (a log error, a
// crash): the client of the repeat was told 200 for a notification that
// never was. A repeat within claims itself stays InFlight: it shares the
// call's fate, and answers as a duplicate of its first.
//
// Past inFlightWait (or ctx) it releases every claim it holds and returns
// the index in reqs of a key still held elsewhere; k is -1 with any other
// error.
func (e *Engine) awaitInFlight(ctx context.Context, reqs []dedupe.ClaimRequest, claims []dedupe.ClaimResult) (k int, err error) {
	var ours map[string]bool // the call's ids, made only when a key is held
	var wait []int
	for k, c := range claims {
		if c.Status != dedupe.InFlight {
			continue
		}
		if ours == nil {
			ours = make(map[string]bool, len(reqs))
			for _, r := range reqs {
				ours[r.ID] = true
			}
		}
		if !ours[c.OriginalID] {
			wait = append(wait, k)
		}
	}
	if len(wait) == 0 {
		return -1, nil
	}
	retry := make([]dedupe.ClaimRequest, 0, len(wait))
	out := make([]dedupe.ClaimResult, len(wait))
	deadline := time.Now().Add(inFlightWait)
	delay := time.Millisecond
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-ctx.Done():
			e.m.ingestWaits.WithLabelValues("in_progress").Inc()
			return wait[0], e.releaseHeld(ctx, reqs, claims, ctx.Err())
		}
		retry = retry[:0]
		for _, k := range wait {
			retry = append(retry, reqs[k])
		}
		if err := e.cfg.Dedupe.Claim(ctx, retry, out[:len(retry)]); err != nil {
			return -1, e.releaseHeld(ctx, reqs, claims, fmt.Errorf("%w: idempotency store: %v", ErrUnavailable, err))
		}
		still := wait[:0]
		for j, k := range wait {
			if c := out[j]; c.Status == dedupe.InFlight && !ours[c.OriginalID] {
				still = append(still, k)
			} else {
				claims[k] = c
			}
		}
		if wait = still; len(wait) == 0 {
			e.m.ingestWaits.WithLabelValues("resolved").Inc()
			return -1, nil
		}
		delay = min(2*delay, 50*time.Millisecond)
		if time.Now().Add(delay).After(deadline) {
			e.m.ingestWaits.WithLabelValues("in_progress").Inc()
			return wait[0], e.releaseHeld(ctx, reqs, claims, ErrInProgress)
		}
		timer.Reset(delay)
	}
}

// emitIngest writes an Ingest's records and their accepted events. On a
// node among several (NodeID set) the events go after the records, and
// only those of records written: the other nodes copy an accepted event's
// key into their dedupe stores and answer a resend as its duplicate, so an
// event out without its record lost the notification. Written together, a
// write in part could take the event and refuse the record; the withdrawn
// event that followed left two windows, a node dying before writing it and
// a replica reading between the two. This costs the request one more
// produce round trip. The embedded log has no other node: one write.
//
// A ProduceError's Written is over o.recs. Once every record is written
// the request is accepted, and the events the log refuses are mended
// (mendEvents) before it returns.
func (e *Engine) emitIngest(ctx context.Context, o *outcomes) error {
	if e.cfg.NodeID == "" || len(o.announces) == 0 {
		return e.emit(ctx, o)
	}
	status := e.cfg.Topics.Status
	var lanes []partition.Record
	var at []int // lanes[j] is o.recs[at[j]]
	for i, r := range o.recs {
		if r.Topic != status {
			lanes, at = append(lanes, r), append(at, i)
		}
	}
	if err := e.log.Produce(ctx, lanes); err != nil {
		pe, err := writtenInPart(err, len(lanes))
		if pe == nil {
			return err
		}
		written := make([]bool, len(o.recs))
		for j, i := range at {
			written[i] = pe.Written[j]
		}
		// No event is written yet: o.owed gets those of the records that
		// were, for Ingest to write (mendEvents), and no event announces a
		// record that was not.
		_ = e.keepUnwritten(o, written) // the store's error is logged there
		return &partition.ProduceError{Written: written, Err: pe.Err}
	}
	o.recs = slices.DeleteFunc(o.recs, func(r partition.Record) bool { return r.Topic != status })
	o.announces = o.announces[:0] // each event's record is written
	applyErr, err := e.produceAndApply(ctx, o)
	if err != nil {
		// o keeps the events not written.
		e.mendEvents(ctx, nil, o.events)
		return nil
	}
	return applyErr
}

// releaseHeld releases the claims of reqs that claims says this call holds
// (those of the items it would accept), for an Ingest that ends in cause,
// and returns cause.
func (e *Engine) releaseHeld(ctx context.Context, reqs []dedupe.ClaimRequest, claims []dedupe.ClaimResult, cause error) error {
	var done []dedupe.Done
	for k, c := range claims {
		if c.Status.ShouldSend() {
			done = append(done, dedupe.Done{Key: reqs[k].Key, Token: c.Token, ID: reqs[k].ID, Seq: c.Seq})
		}
	}
	if err := e.cfg.Dedupe.Release(context.WithoutCancel(ctx), done); err != nil {
		e.cfg.Logger.Warn("release of ingest claims failed", zap.Error(err))
	}
	return cause
}

// partlyWritten ends an Ingest whose records the log wrote in part (some
// partitions took theirs, others failed): the notifications written will
// be sent, so their door claims are confirmed, and a resend of the request
// answers them as duplicates with their ids; the others' claims are
// released, for the resend to accept them. Answering the request as if
// nothing were written, and releasing every claim, made the resend accept
// the written ones again under new ids, whose copies then ended as
// duplicates at their sends: ids the client never saw were the ones sent.
// It returns nil when every notification was written (a write in part of
// their events alone).
func (e *Engine) partlyWritten(ctx context.Context, pe *partition.ProduceError, recAt []int, done []dedupe.Done, doneRec []int) error {
	written, wrote := pe.Written, 0
	for _, r := range recAt {
		if written[r] {
			wrote++
		}
	}
	var confirm, release []dedupe.Done
	for j, d := range done {
		if written[doneRec[j]] {
			confirm = append(confirm, d)
		} else {
			release = append(release, d)
		}
	}
	ctx = context.WithoutCancel(ctx)
	if err := e.cfg.Dedupe.ConfirmNoSync(ctx, confirm); err != nil {
		e.cfg.Logger.Warn("confirm of ingest claims failed", zap.Error(err))
	}
	if err := e.cfg.Dedupe.Release(ctx, release); err != nil {
		e.cfg.Logger.Warn("release of ingest claims failed", zap.Error(err))
	}
	if wrote == len(recAt) {
		// Every notification was written, and only events were refused
		// (mended after): the request is accepted.
		return nil
	}
	e.m.ingestPartlyWritten.Add(float64(wrote))
	return &PartlyWrittenError{Written: wrote, Of: len(recAt), Err: pe.Err}
}

// mendEvents mends the status topic after an Ingest the log wrote in
// part, where a notification and its accepted event can each have been
// written without the other:
//
//   - withdrawn: accepted events of notifications not written (the
//     embedded log's, which writes both at once; see emitIngest). Status
//     webhooks forwarded them: a withdrawn event follows each, and webhook
//     subscribers learn the id is done with. Replicas of other nodes drop
//     the key such an event carried (withdrawnKeys), for nodes that wrote
//     them on Kafka before 2026-11-27.
//   - owed: accepted events not written of notifications that were. They
//     are written now, so that the other nodes answer a resend as a
//     duplicate of the notification's id (without them they accepted it
//     anew, to be stopped at its send under a new id) and the history
//     starts where it should.
//
// Each is tried 5 times; goutong_ingest_mended_events_total counts them.
func (e *Engine) mendEvents(ctx context.Context, withdrawn, owed []StatusEvent) {
	if len(withdrawn)+len(owed) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	var o outcomes
	now := e.cfg.Clock.Now()
	for _, ev := range withdrawn {
		ev.EventID, ev.State, ev.Reason = "", StateWithdrawn, "the log failed to write the notification (the request was answered 503 partly_written): it will not be sent"
		at := now
		if !at.After(ev.At) {
			at = ev.At.Add(time.Nanosecond) // after the accepted event in its history
		}
		ev.At = at
		o.addEvent(e, ev)
	}
	for _, ev := range owed {
		o.addEvent(e, ev) // its own event id: it was never written
	}
	all := slices.Clone(o.events)
	// A write in part leaves o with the rest. The store's error is logged
	// there: the events are on the topic.
	err := writeRest(ctx, e.cfg.Clock.Sleep, func(error) bool { return true }, func() error {
		_, err := e.produceAndApply(ctx, &o)
		return err
	})
	left := map[string]bool{} // what was not written
	if err != nil {
		for _, ev := range o.events {
			left[ev.EventID] = true
		}
	}
	var ids []string // the first 100 withdrawals lost, for their clients to resend
	for _, ev := range all {
		result := "produced"
		if left[ev.EventID] {
			result = "failed"
			if ev.State == StateWithdrawn && len(ids) < 100 {
				ids = append(ids, ev.Tenant+" "+ev.ID+" "+ev.IdempotencyKey)
			}
		}
		e.m.ingestMended.WithLabelValues(string(ev.State), result).Inc()
	}
	switch {
	case len(ids) > 0:
		e.cfg.Logger.Error("status events mending a write in part not produced: the status topic keeps accepted events of notifications "+
			"that were not written and will not be sent (a resend of the request is accepted)",
			zap.Int("events", len(o.events)), zap.Strings("withdrawn_tenant_id_key", ids), zap.Error(err))
	case err != nil:
		// Only accepted events: their notifications are written and will
		// be sent; their histories start later, and another node accepts
		// a resend of one anew, to stop it at its send.
		e.cfg.Logger.Warn("accepted events of written notifications not produced", zap.Int("events", len(o.events)), zap.Error(err))
	}
}

// itemOfClaim is the index among Ingest's notifications of its k-th claim
// (unclaimed, when set, marks the items that made none).
func itemOfClaim(unclaimed []bool, k int) int {
	if unclaimed == nil {
		return k
	}
	for i, u := range unclaimed {
		if !u {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return -1
}

// ingestBuffers are an Ingest call's working slices, pooled: nothing keeps
// them once it returns (the log and the stores copy what they write, and
// the ids and keys live in a buffer of their own, which is not pooled). A
// 1,000-item request made ~1.3 MB of them anew.
type ingestBuffers struct {
	reqs           []dedupe.ClaimRequest
	claims         []dedupe.ClaimResult
	done           []dedupe.Done
	values         []byte
	out            outcomes
	recAt, doneRec []int
	// The records' accepted time, in UTC; the events' is in out.enc.
	accepted notification.TimeCache
}

var ingestPool = sync.Pool{New: func() any { return new(ingestBuffers) }}

// maxPooledIngest keeps the pool from pinning the buffers of one huge
// request.
const maxPooledIngest = 4 << 20

func (ib *ingestBuffers) put() {
	if cap(ib.values) > maxPooledIngest || cap(ib.out.enc.buf) > maxPooledIngest {
		return
	}
	ingestPool.Put(ib)
}

// recordSizeHint is a typical notification's encoded record.
const recordSizeHint = 320

// replayGroup is the consumer group whose committed offset marks what has
// been replayed from the dead-letter topic; listing reads from it without
// committing.
const replayGroup = "goutong-dlq-replay"

// openDLQ opens a consumer of the dead-letter topic in the replay group;
// the caller holds e.dlqMu (one such consumer at a time) and closes it.
func (e *Engine) openDLQ() (partition.Log, error) {
	log, err := e.cfg.Open(partition.ConsumerConfig{Group: replayGroup, Topics: []string{e.cfg.Topics.DLQ}})
	if err != nil {
		return nil, fmt.Errorf("%w: dead-letter topic: %v", ErrUnavailable, err)
	}
	return log, nil
}

// DeadLetters lists up to limit dead letters not replayed yet, oldest first.
func (e *Engine) DeadLetters(ctx context.Context, limit int) ([]DeadLetter, error) {
	e.dlqMu.Lock()
	defer e.dlqMu.Unlock()
	log, err := e.openDLQ()
	if err != nil {
		return nil, err
	}
	defer log.Close()
	out := []DeadLetter{}
	for len(out) < limit {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		recs, err := log.Poll(pctx, limit-len(out))
		cancel()
		if len(recs) == 0 || (err != nil && !errors.Is(err, context.DeadlineExceeded)) {
			break
		}
		for _, r := range recs {
			out = append(out, ParseDeadLetter(r))
		}
	}
	return out, nil
}

// ReplayDeadLettersOf replays the dead letters with the given reason (all
// when empty) through the replay group; see ReplayDeadLetters.
func (e *Engine) ReplayDeadLettersOf(ctx context.Context, reason string) (ReplayReport, error) {
	e.dlqMu.Lock()
	defer e.dlqMu.Unlock()
	log, err := e.openDLQ()
	if err != nil {
		return ReplayReport{}, err
	}
	defer log.Close()
	var keep func(DeadLetter) bool
	if reason != "" {
		keep = func(d DeadLetter) bool { return d.Reason == reason }
	}
	return ReplayDeadLetters(ctx, log, e.cfg.Topics, e.cfg.Codec, keep)
}

// ReceiptRequest and ErrBadSignature are the providers' receipt types, so
// the API speaks to the engine alone.
type ReceiptRequest = providers.ReceiptRequest

var ErrBadSignature = providers.ErrBadSignature
