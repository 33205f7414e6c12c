package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/goutong/goutong/notification"
)

// Kinds of difference reconciliation reports.
const (
	DiffMissingReceipt   = "missing-receipt"   // sent, and no receipt after the channel's deadline
	DiffLateReceipt      = "late-receipt"      // a receipt came, after the deadline
	DiffUnknownReceipt   = "unknown-receipt"   // a receipt for an id Goutong never recorded
	DiffReceiptNotSent   = "receipt-not-sent"  // a receipt for a notification Goutong did not record as sent
	DiffStateMismatch    = "state-mismatch"    // receipts disagree with each other or with Goutong's final state
	DiffDuplicateReceipt = "duplicate-receipt" // more than one final receipt
	DiffDuplicateSend    = "duplicate-send"    // sent more than once (different provider message ids)
)

// ReconcileOptions is one reconciliation run.
type ReconcileOptions struct {
	// From and To bound the notifications compared, by creation time (their
	// ULIDs), and the unknown receipts, by arrival.
	From, To time.Time
	// Deadlines are how long after a send each channel's provider has to
	// send its receipt; a channel not listed expects none (FCM sends no
	// delivery receipts). Default: DefaultReceiptDeadlines.
	Deadlines map[string]time.Duration
	// Redrive re-enqueues, as new notifications, the differences of these
	// kinds (missing-receipt, and state-mismatch where the provider said
	// failed) whose payload was kept and which have not expired: never a
	// verification code past its expiry.
	Redrive []string
}

// RedriveKinds are the differences Reconcile can redrive.
var RedriveKinds = []string{DiffMissingReceipt, DiffStateMismatch}

// Yesterday is the default window: the previous UTC day.
func Yesterday(now time.Time) ReconcileOptions {
	to := now.UTC().Truncate(24 * time.Hour)
	return ReconcileOptions{From: to.Add(-24 * time.Hour), To: to}
}

// receiptDeadlines are the configured deadlines, or the defaults.
func (e *Engine) receiptDeadlines() map[string]time.Duration {
	if e.cfg.ReceiptDeadlines != nil {
		return e.cfg.ReceiptDeadlines
	}
	return DefaultReceiptDeadlines
}

// DefaultReceiptDeadlines: SMS and e-mail providers send receipts within
// minutes to an hour; webhooks that acknowledge synchronously send none.
var DefaultReceiptDeadlines = map[string]time.Duration{"sms": 30 * time.Minute, "email": 2 * time.Hour}

// Difference is one disagreement between Goutong and a provider.
type Difference struct {
	Kind              string    `json:"kind"`
	ID                string    `json:"id"`
	Tenant            string    `json:"tenant,omitempty"`
	Channel           string    `json:"channel,omitempty"`
	Priority          string    `json:"priority,omitempty"`
	Provider          string    `json:"provider,omitempty"`
	ProviderMessageID string    `json:"provider_message_id,omitempty"`
	State             State     `json:"state,omitempty"`         // Goutong's last state
	ReceiptState      State     `json:"receipt_state,omitempty"` // what the provider said
	SentAt            time.Time `json:"sent_at,omitzero"`
	ReceiptAt         time.Time `json:"receipt_at,omitzero"`
	Detail            string    `json:"detail"`
	RedrivenAs        string    `json:"redriven_as,omitempty"`  // the new notification's id
	NotRedriven       string    `json:"not_redriven,omitempty"` // why a redrive was refused
}

// ReconcileReport sums up a run.
type ReconcileReport struct {
	From          time.Time      `json:"from"`
	To            time.Time      `json:"to"`
	RanAt         time.Time      `json:"ran_at"`
	Notifications int64          `json:"notifications"`
	Sent          int64          `json:"sent"`
	WithReceipt   int64          `json:"with_receipt"`
	Differences   map[string]int `json:"differences"` // per kind
	Redriven      int            `json:"redriven"`
}

// ErrNoStatusStore: reconciliation needs the status store.
var ErrNoStatusStore = errors.New("engine: reconciliation needs the status store")

// Reconcile compares what Goutong recorded as sent in the window with the
// receipts providers returned, calls emit for each difference, and, for the
// kinds opts.Redrive names, re-enqueues the notification under a new id and
// idempotency key (the original's key is spent: the dedupe store would stop
// a resend) with metadata redrive_of, recording a retrying event on the
// original.
func (e *Engine) Reconcile(ctx context.Context, opts ReconcileOptions, emit func(Difference) error) (ReconcileReport, error) {
	st := e.cfg.Status
	if st == nil {
		return ReconcileReport{}, ErrNoStatusStore
	}
	if !opts.To.After(opts.From) {
		return ReconcileReport{}, fmt.Errorf("engine: reconcile window %s..%s is empty", opts.From, opts.To)
	}
	if opts.Deadlines == nil {
		opts.Deadlines = e.receiptDeadlines()
	}
	now := e.cfg.Clock.Now()
	rep := ReconcileReport{From: opts.From, To: opts.To, RanAt: now, Differences: map[string]int{}}
	var redrive []*notification.Notification
	var marks outcomes
	// Redrives go out a thousand at a time, so memory follows the chunk,
	// not the day's differences.
	flush := func() error {
		if len(redrive) == 0 {
			return nil
		}
		if _, _, err := e.Ingest(ctx, redrive, now); err != nil {
			return fmt.Errorf("engine: redrive: %w", err)
		}
		if err := e.emit(ctx, &marks); err != nil {
			return err
		}
		rep.Redriven += len(redrive)
		redrive, marks = redrive[:0], outcomes{}
		return nil
	}
	report := func(d Difference) error {
		rep.Differences[d.Kind]++
		if slices.Contains(opts.Redrive, d.Kind) && (d.Kind != DiffStateMismatch || d.ReceiptState == StateFailed) {
			n, why := e.redriveOf(d, now)
			if n != nil {
				d.RedrivenAs = n.ID
				redrive = append(redrive, n)
				orig := StatusEvent{EventID: notification.NewID(), ID: d.ID, State: StateRetrying, At: now, Tenant: d.Tenant,
					Channel: d.Channel, Priority: d.Priority, Reason: "reconcile: " + d.Kind + ", redriven as " + n.ID}
				marks.addEvent(e, orig)
			} else {
				d.NotRedriven = why
			}
		}
		if err := emit(d); err != nil {
			return err
		}
		if len(redrive) >= 1000 {
			return flush()
		}
		return nil
	}
	err := st.Scan(opts.From, opts.To, func(id string, hist []StatusEvent) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		rep.Notifications++
		return classifyHistory(id, hist, opts.Deadlines, now, &rep, report)
	})
	if err != nil {
		return rep, err
	}
	err = st.UnknownReceipts(opts.From, opts.To, func(r UnknownReceipt) error {
		return report(Difference{Kind: DiffUnknownReceipt, ID: r.ID, Provider: r.Provider, ProviderMessageID: r.ProviderMessageID,
			ReceiptState: r.State, ReceiptAt: r.At, Detail: "no notification with this id"})
	})
	if err != nil {
		return rep, err
	}
	// Ingest gives the resends ids, keys, lanes and accepted events as the
	// API would.
	return rep, flush()
}

// classifyHistory finds the differences in one notification's history.
func classifyHistory(id string, hist []StatusEvent, deadlines map[string]time.Duration, now time.Time,
	rep *ReconcileReport, report func(Difference) error) error {
	var sent, receipts []StatusEvent
	last := hist[len(hist)-1]
	base := Difference{ID: id}
	for _, ev := range hist {
		if ev.Tenant != "" {
			base.Tenant, base.Channel, base.Priority = ev.Tenant, ev.Channel, ev.Priority
		}
		switch ev.State {
		case StateSent:
			sent = append(sent, ev)
		case StateDelivered, StateFailed:
			receipts = append(receipts, ev)
		}
	}
	// The last state of Goutong's own making, receipts aside.
	own := StateAccepted
	for _, ev := range hist {
		if ev.State != StateDelivered && ev.State != StateFailed {
			own = ev.State
		}
	}
	base.State = last.State
	if len(sent) > 0 {
		rep.Sent++
		s := sent[len(sent)-1]
		base.Provider, base.ProviderMessageID, base.SentAt = s.Provider, s.ProviderMessageID, s.At
	}
	if len(receipts) > 0 {
		rep.WithReceipt++
		base.ReceiptState, base.ReceiptAt = receipts[len(receipts)-1].State, receipts[len(receipts)-1].At
	}
	diff := func(kind, detail string) error {
		d := base
		d.Kind, d.Detail = kind, detail
		return report(d)
	}
	msgIDs := map[string]bool{}
	for _, s := range sent {
		if s.ProviderMessageID != "" {
			msgIDs[s.ProviderMessageID] = true
		}
	}
	if len(msgIDs) > 1 {
		if err := diff(DiffDuplicateSend, fmt.Sprintf("sent %d times with different provider message ids", len(msgIDs))); err != nil {
			return err
		}
	}
	deadline, expects := deadlines[base.Channel]
	switch {
	case len(sent) == 0 && len(receipts) > 0:
		return diff(DiffReceiptNotSent, fmt.Sprintf("receipt %s, but Goutong's state is %s", base.ReceiptState, own))
	case len(sent) == 0:
		return nil
	case len(receipts) == 0:
		if expects && now.Sub(base.SentAt) > deadline {
			return diff(DiffMissingReceipt, fmt.Sprintf("no receipt %s after the send (deadline %s)", now.Sub(base.SentAt).Round(time.Second), deadline))
		}
		return nil
	}
	if len(receipts) > 1 {
		states := map[State]bool{}
		for _, r := range receipts {
			states[r.State] = true
		}
		if len(states) > 1 {
			if err := diff(DiffStateMismatch, "the provider sent both delivered and failed"); err != nil {
				return err
			}
		} else if err := diff(DiffDuplicateReceipt, fmt.Sprintf("%d receipts", len(receipts))); err != nil {
			return err
		}
	}
	if own != StateSent {
		if err := diff(DiffStateMismatch, fmt.Sprintf("receipt %s, but Goutong's state after the send is %s", base.ReceiptState, own)); err != nil {
			return err
		}
	}
	first := receipts[0]
	if expects && first.At.Sub(base.SentAt) > deadline {
		return diff(DiffLateReceipt, fmt.Sprintf("receipt %s after the send (deadline %s)", first.At.Sub(base.SentAt).Round(time.Second), deadline))
	}
	return nil
}

// redriveOf builds the resend of a difference, or says why there is none.
func (e *Engine) redriveOf(d Difference, now time.Time) (*notification.Notification, string) {
	if d.State == StateRetrying {
		// After a send, only reconciliation writes "retrying": an earlier
		// run redrove it already.
		return nil, "already redriven"
	}
	raw, err := e.cfg.Status.Payload(d.ID)
	if err != nil {
		return nil, "payload not kept (engine.keep_payloads) or past the status window"
	}
	n, err := e.cfg.Codec.Decode(raw)
	if err != nil {
		return nil, "payload unreadable: " + err.Error()
	}
	if n.Expired(now) {
		return nil, "expired at " + n.ExpiresAt.UTC().Format(time.RFC3339)
	}
	orig := d.ID // a record produced without an id has none in its payload
	n.ID, n.AcceptedAt, n.Attempts = notification.NewID(), time.Time{}, 0
	n.IdempotencyKey = "redrive:" + orig // the original key is spent
	if n.Metadata == nil {
		n.Metadata = map[string]string{}
	}
	n.Metadata["redrive_of"] = orig
	return n, ""
}

// ReconcileRun is a stored reconciliation: its report and where its
// differences are (one JSON object per line).
type ReconcileRun struct {
	ID      string          `json:"id"`
	Trigger string          `json:"trigger"` // api, schedule
	Options ReconcileRunOpt `json:"options"`
	Report  ReconcileReport `json:"report"`
	Error   string          `json:"error,omitempty"`
}

// ReconcileRunOpt is what a stored run was asked.
type ReconcileRunOpt struct {
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Redrive []string  `json:"redrive,omitempty"`
}

// keepRuns bounds the stored runs: the oldest are removed past it.
const keepRuns = 100

// ErrReconcileBusy: a run is already going.
var ErrReconcileBusy = errors.New("engine: a reconciliation is already running")

// ErrUnknownRun: no stored run has that id.
var ErrUnknownRun = errors.New("engine: no such reconciliation run")

// RunReconcile runs Reconcile and stores its report and differences in
// Config.ReconcileDir, where ReconcileRuns and ReconcileDifferences find
// them. One run at a time.
func (e *Engine) RunReconcile(ctx context.Context, opts ReconcileOptions, trigger string) (ReconcileRun, error) {
	if e.cfg.ReconcileDir == "" {
		return ReconcileRun{}, errors.New("engine: Config.ReconcileDir is not set")
	}
	if !e.reconMu.TryLock() {
		return ReconcileRun{}, ErrReconcileBusy
	}
	defer e.reconMu.Unlock()
	if err := os.MkdirAll(e.cfg.ReconcileDir, 0o755); err != nil {
		return ReconcileRun{}, err
	}
	run := ReconcileRun{ID: notification.NewID(), Trigger: trigger,
		Options: ReconcileRunOpt{From: opts.From, To: opts.To, Redrive: opts.Redrive}}
	f, err := os.Create(filepath.Join(e.cfg.ReconcileDir, run.ID+".jsonl"))
	if err != nil {
		return run, err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	rep, rerr := e.Reconcile(ctx, opts, func(d Difference) error { return enc.Encode(&d) })
	run.Report = rep
	if rerr != nil {
		run.Error = rerr.Error()
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil && rerr == nil {
		rerr = err
		run.Error = err.Error()
	}
	b, err := json.MarshalIndent(&run, "", "  ")
	if err != nil {
		return run, err
	}
	if err := os.WriteFile(filepath.Join(e.cfg.ReconcileDir, run.ID+".json"), b, 0o644); err != nil {
		return run, err
	}
	e.pruneRuns()
	e.cfg.Logger.Info("reconciliation", zap.String("run", run.ID), zap.String("trigger", trigger),
		zap.Int64("notifications", rep.Notifications), zap.Any("differences", rep.Differences), zap.Int("redriven", rep.Redriven))
	return run, rerr
}

// ReconcileRuns lists the stored runs, newest first (ids are ULIDs).
func (e *Engine) ReconcileRuns() ([]ReconcileRun, error) {
	ents, err := os.ReadDir(e.cfg.ReconcileDir)
	if errors.Is(err, os.ErrNotExist) {
		return []ReconcileRun{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []ReconcileRun{}
	for i := len(ents) - 1; i >= 0; i-- {
		name := ents[i].Name()
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(e.cfg.ReconcileDir, name))
		if err != nil {
			return nil, err
		}
		var r ReconcileRun
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("engine: reconciliation run %s: %w", name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// ReconcileDifferences opens a stored run's differences (JSON lines).
func (e *Engine) ReconcileDifferences(id string) (io.ReadCloser, error) {
	if _, err := ulid.ParseStrict(id); err != nil {
		return nil, ErrUnknownRun
	}
	f, err := os.Open(filepath.Join(e.cfg.ReconcileDir, id+".jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrUnknownRun
	}
	return f, err
}

func (e *Engine) pruneRuns() {
	ents, err := os.ReadDir(e.cfg.ReconcileDir)
	if err != nil {
		return
	}
	var ids []string
	for _, ent := range ents {
		if id, ok := strings.CutSuffix(ent.Name(), ".json"); ok {
			ids = append(ids, id)
		}
	}
	for len(ids) > keepRuns {
		_ = os.Remove(filepath.Join(e.cfg.ReconcileDir, ids[0]+".json"))
		_ = os.Remove(filepath.Join(e.cfg.ReconcileDir, ids[0]+".jsonl"))
		ids = ids[1:]
	}
}
