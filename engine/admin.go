package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// ChannelStats is what the admin API shows of a channel.
type ChannelStats struct {
	Channel  string         `json:"channel"`
	Provider string         `json:"provider"`
	Rate     float64        `json:"rate_per_sec"`
	Paused   bool           `json:"paused"`
	Depth    map[string]int `json:"depth"` // queued in the rings, per priority
	Breakers []BreakerStats `json:"breakers,omitempty"`
}

// BreakerStats is one provider endpoint's circuit breaker.
type BreakerStats struct {
	Provider string `json:"provider"`
	State    string `json:"state"`
}

// Stats describes every channel, sorted by name.
func (e *Engine) Stats() []ChannelStats {
	out := make([]ChannelStats, 0, len(e.chans))
	for name, cs := range e.chans {
		st := ChannelStats{Channel: string(name), Provider: cs.cfg.Provider.Name(), Rate: cs.limit.Rate(),
			Paused: cs.paused.Load(), Depth: map[string]int{}}
		for i, r := range cs.rings {
			st.Depth[notification.Priority(i+1).String()] = r.Len()
		}
		var guards []*providers.Guarded
		switch p := cs.cfg.Provider.(type) {
		case *providers.Guarded:
			guards = []*providers.Guarded{p}
		case *providers.Failover:
			guards = p.Members()
		}
		for _, g := range guards {
			st.Breakers = append(st.Breakers, BreakerStats{Provider: g.Name(), State: g.Breaker.State().String()})
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ChannelStats) int { return strings.Compare(a.Channel, b.Channel) })
	return out
}

// ErrUnknownChannel: no channel of that name is configured.
var ErrUnknownChannel = errors.New("engine: unknown channel")

// PauseChannel stops a channel's dispatcher from sending; its rings fill
// and backpressure pauses the partitions feeding them, so nothing is lost
// and nothing piles up in memory. ResumeChannel undoes it.
func (e *Engine) PauseChannel(ch notification.Channel, paused bool) error {
	cs, ok := e.chans[ch]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownChannel, ch)
	}
	cs.paused.Store(paused)
	wake(cs.notify)
	return nil
}

// Backlog is how many records the engine has yet to finish, as of the
// last lag measurement (about every second): the API sheds low-priority
// ingest when it passes a maximum.
func (e *Engine) Backlog() int64 { return e.backlog.Load() }

// ReceiptParser finds the configured provider named name that parses
// delivery receipts.
func (e *Engine) ReceiptParser(name string) (providers.ReceiptParser, bool) {
	for _, cs := range e.chans {
		if rp, ok := providers.AsReceiptParser(cs.cfg.Provider, name); ok {
			return rp, true
		}
	}
	return nil, false
}

// ApplyReceipts turns final receipts into delivered or failed status
// events, on the status topic and in the status store. Receipts for ids the
// status store does not know are returned as unknown (reconciliation's
// business), not errors.
func (e *Engine) ApplyReceipts(ctx context.Context, provider string, rs []providers.Receipt) (applied int, unknown []string, err error) {
	var o outcomes
	var orphans []UnknownReceipt
	final := make([]providers.Receipt, 0, len(rs))
	for _, r := range rs {
		if r.Final {
			final = append(final, r)
		}
	}
	var cur []StatusEvent
	var found []bool
	if e.cfg.Status != nil {
		ids := make([]string, len(final))
		for i, r := range final {
			ids[i] = r.ID
		}
		if cur, found, err = e.cfg.Status.latest(ids); err != nil {
			return 0, nil, err
		}
	}
	for i, r := range final {
		ev := StatusEvent{EventID: notification.NewID(), ID: r.ID, State: StateFailed, At: r.At, Provider: provider,
			ProviderMessageID: r.ProviderMessageID, Reason: r.Reason}
		if r.Delivered {
			ev.State = StateDelivered
		}
		if e.cfg.Status != nil {
			if !found[i] {
				unknown = append(unknown, r.ID)
				orphans = append(orphans, UnknownReceipt{Provider: provider, ID: r.ID, ProviderMessageID: r.ProviderMessageID,
					State: ev.State, Reason: r.Reason, At: r.At, ReceivedAt: e.cfg.Clock.Now()})
				continue
			}
			ev.Tenant, ev.Channel, ev.Priority, ev.Attempts = cur[i].Tenant, cur[i].Channel, cur[i].Priority, cur[i].Attempts
		}
		o.addEvent(e, ev)
	}
	if err := e.emit(ctx, &o); err != nil {
		return 0, nil, err
	}
	// Kept for reconciliation: a receipt for an id Goutong never recorded.
	if e.cfg.Status != nil {
		if err := e.cfg.Status.AddUnknownReceipts(orphans); err != nil {
			return 0, nil, err
		}
	}
	return len(o.events), unknown, nil
}

// unknownReceiptRetry is how long a receipt for an unknown id is tried
// again: its notification's events may still be on their way (another
// node's, through the status topic, or this node's own send an instant
// before the receipt).
const unknownReceiptRetry = 15 * time.Minute

// retryUnknownReceipts applies, every interval until ctx ends, the recent
// receipts whose notification has become known since they arrived; the
// rest stay for reconciliation.
func (e *Engine) retryUnknownReceipts(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := e.cfg.Clock.Now()
		var o outcomes
		err := e.cfg.Status.ResolveUnknownReceipts(now.Add(-unknownReceiptRetry), now.Add(time.Nanosecond), func(rs []UnknownReceipt, resolved []bool) error {
			ids := make([]string, len(rs))
			for i, r := range rs {
				ids[i] = r.ID
			}
			cur, found, err := e.cfg.Status.latest(ids)
			if err != nil {
				return err
			}
			for i, r := range rs {
				if !found[i] {
					continue
				}
				o.addEvent(e, StatusEvent{ID: r.ID, State: r.State, At: r.At, Provider: r.Provider, ProviderMessageID: r.ProviderMessageID,
					Reason: r.Reason, Tenant: cur[i].Tenant, Channel: cur[i].Channel, Priority: cur[i].Priority,
					Attempts: cur[i].Attempts})
				resolved[i] = true
			}
			return nil
		}, func() error { return e.emit(ctx, &o) })
		if err != nil && ctx.Err() == nil {
			e.cfg.Logger.Warn("retrying unknown receipts", zap.Error(err))
		}
	}
}

func (e *Engine) emit(ctx context.Context, o *outcomes) error {
	applyErr, err := e.produceAndApply(ctx, o)
	if err != nil {
		return err
	}
	return applyErr
}

// produceAndApply produces o's records, then writes its events (and kept
// payloads) to the status store, inside a status checkpoint's epoch (see
// statusCheckpoints). err is the produce's; applyErr the store's, logged
// (the events are on the status topic either way).
func (e *Engine) produceAndApply(ctx context.Context, o *outcomes) (applyErr, err error) {
	if e.cfg.Status != nil {
		ep := e.ckpt.enter()
		defer e.ckpt.exit(ep)
	}
	if len(o.recs) > 0 {
		if err := e.log.Produce(ctx, o.recs); err != nil {
			pe, err := writtenInPart(err, len(o.recs))
			if pe != nil {
				applyErr = e.keepUnwritten(o, pe.Written)
			}
			return applyErr, err
		}
	}
	if e.cfg.Status == nil {
		return nil, nil
	}
	e.ckpt.produced(e.cfg.Topics.Status, o.recs)
	if err := e.cfg.Status.apply(o.events, o.keep, o.runs); err != nil {
		e.cfg.Logger.Warn("status store write failed", zap.Error(err))
		// The status replica skips this process's events, counting on
		// this write: it has to read them again.
		e.ownApplyFailed.Store(true)
		return err, nil
	}
	return nil, nil
}

// writtenInPart returns the ProduceError in err, from a Produce of n
// records, when its Written covers them, and err. One whose Written does
// not is not a Log's answer: it is taken as nothing written, and the error
// returned says so.
func writtenInPart(err error, n int) (*partition.ProduceError, error) {
	var pe *partition.ProduceError
	if !errors.As(err, &pe) {
		return nil, err
	}
	if len(pe.Written) != n {
		return nil, fmt.Errorf("%d records, a ProduceError for %d: %w", n, len(pe.Written), pe.Err)
	}
	return pe, err
}

// keepUnwritten handles a Produce that wrote some of o's records and not
// the others: the written events go to the status store (their records are
// on the status topic, and their notifications will be sent), and o keeps
// only what was not written, so a retry produces no record twice (a
// retry record twice is two attempts; a dead letter twice, two replays).
func (e *Engine) keepUnwritten(o *outcomes, written []bool) (applyErr error) {
	var wroteEvents []StatusEvent
	var wroteRecs []partition.Record
	// Status-topic records and o.events correspond one to one, in order
	// (addEvent makes both).
	recs, events, ev := o.recs[:0], o.events[:0], 0
	for i, r := range o.recs {
		status := r.Topic == e.cfg.Topics.Status
		// announced: the event announces a record (Ingest's), and
		// announcedWritten says whether that record was written.
		announced := status && ev < len(o.announces)
		announcedWritten := announced && written[o.announces[ev]]
		switch {
		case written[i] && status:
			// An accepted event whose notification was not written stays
			// out of the store: it announces nothing that will be sent.
			if announced && !announcedWritten {
				o.withdrawn = append(o.withdrawn, o.events[ev])
			} else {
				wroteEvents = append(wroteEvents, o.events[ev])
			}
			wroteRecs = append(wroteRecs, r)
		case !written[i]:
			recs = append(recs, r)
			if status {
				events = append(events, o.events[ev])
				if announcedWritten {
					o.owed = append(o.owed, o.events[ev])
				}
			}
		}
		if status {
			ev++
		}
	}
	o.recs, o.events, o.announces = recs, events, o.announces[:0]
	if e.cfg.Status == nil || len(wroteEvents) == 0 {
		return nil
	}
	e.ckpt.produced(e.cfg.Topics.Status, wroteRecs)
	if err := e.cfg.Status.apply(wroteEvents, nil, o.runs); err != nil {
		e.cfg.Logger.Warn("status store write failed", zap.Error(err))
		e.ownApplyFailed.Store(true)
		return err
	}
	return nil
}

// Status returns a notification's status and history.
func (e *Engine) Status(id string) (Status, error) {
	if e.cfg.Status == nil {
		return Status{}, ErrNotFound
	}
	return e.cfg.Status.Get(id)
}

// States returns the current state of each id, "" for one the status
// store does not know (yet), in one sorted pass over the store: a batch's
// duplicates are answered together.
func (e *Engine) States(ids []string) ([]State, error) {
	if e.cfg.Status == nil {
		return make([]State, len(ids)), nil
	}
	return e.cfg.Status.latestStates(ids)
}

// Codec is the engine's codec (it knows the configured channels).
func (e *Engine) Codec() *notification.Codec { return e.cfg.Codec }

// Ready reports whether the node should take requests (see Readiness).
func (e *Engine) Ready() bool { return e.Readiness() == nil }

// ErrStarting is Readiness's answer while the node is coming up.
var ErrStarting = errors.New("starting")

// Readiness is nil when the node should take requests. It wraps
// ErrStarting until Run has created the topics and is consuming and, on a
// node with a NodeID, until its status replica has caught up with the
// status topic as it was at the start (at most takeoverWait). It wraps
// ErrUnavailable once the dedupe store refuses writes. The API accepts
// nothing meanwhile, and /readyz says why.
func (e *Engine) Readiness() error {
	switch {
	case !e.ready.Load():
		return ErrStarting
	case e.cfg.NodeID != "" && e.cfg.Status != nil && !e.replicaCaughtUp.isSet():
		return fmt.Errorf("%w: reading the other nodes' status events", ErrStarting)
	}
	// A store that refuses writes keeps no key accepted or sent from now
	// on: requests are better taken by a node that can, and only a restart
	// (which replays the store's logs) mends it.
	if err := e.cfg.Dedupe.Err(); err != nil {
		return NeedsRestart("the dedupe store refuses writes", err)
	}
	return nil
}

// NeedsRestart is the readiness error of a store that failed for good
// (what it refuses, and why): it wraps ErrUnavailable.
func NeedsRestart(what string, err error) error {
	return fmt.Errorf("%w: %s (restart the node once its disk is mended): %v", ErrUnavailable, what, err)
}
