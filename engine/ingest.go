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
			start := len(buf)
			buf = notification.AppendDefaultIdempotencyKey(buf, n)
			n.IdempotencyKey = str(start)
			if unclaimed != nil {
				unclaimed[i] = true
			}
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
	out := make([]Admission, len(ns))
	o := &ib.out
	o.reuse(2*len(ns), len(ns), 0) // a record and an event each
	// Runs need ids from one call of ids, which no other run's overlap; an
	// id a caller gave could fall anywhere.
	o.runs = missing == len(ns)
	o.enc.reserveIDs(e.ids, len(ns))
	done := ib.done[:0]
	// The records' values share one buffer (a value keeps the array it was
	// written into if the buffer outgrows it), not an allocation each.
	values := slices.Grow(ib.values[:0], len(ns)*recordSizeHint)
	defer func() { ib.reqs, ib.claims, ib.done, ib.values = reqs, claims, done, values }()
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
		o.recs = append(o.recs, laneRecord(e.cfg.Topics, n, key, values[start:len(values):len(values)]))
		ev := e.statusEvent(n, StateAccepted, now, "", "", "")
		if !door {
			ev.IdempotencyKey = "" // the other nodes need not claim it at their doors either
		}
		o.addEvent(e, ev)
		if door {
			done = append(done, dedupe.Done{Key: reqs[k].Key, Token: claims[k].Token, ID: n.ID, Outcome: "accepted", Seq: claims[k].Seq})
			k++
		}
	}
	if accepted == 0 {
		return out, 0, nil
	}
	if err := e.emit(ctx, o); err != nil {
		if rerr := e.cfg.Dedupe.Release(context.WithoutCancel(ctx), done); rerr != nil {
			e.cfg.Logger.Warn("release of ingest claims failed", zap.Error(rerr))
		}
		return nil, 0, fmt.Errorf("%w: log: %v", ErrUnavailable, err)
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

// ingestBuffers are an Ingest call's working slices, pooled: nothing keeps
// them once it returns (the log and the stores copy what they write, and
// the ids and keys live in a buffer of their own, which is not pooled). A
// 1,000-item request made ~1.3 MB of them anew.
type ingestBuffers struct {
	reqs   []dedupe.ClaimRequest
	claims []dedupe.ClaimResult
	done   []dedupe.Done
	values []byte
	out    outcomes
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
