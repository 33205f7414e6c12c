package engine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers"
)

// startKeepingPayloads starts an engine on the embedded log that keeps
// payloads for redrives, stopped when the test ends.
func startKeepingPayloads(t *testing.T) (*rig, *engine.Engine) {
	r := newRig(t, backends[0])
	cfg := r.config(r.channels(false))
	cfg.KeepPayloads = true
	e, stop := r.start(cfg)
	t.Cleanup(stop)
	waitFor(t, 10*time.Second, "the engine", e.Ready)
	return r, e
}

// TestReconcilePlantedDifferences sends SMS through the engine, plants
// receipts (on time, twice, contradictory, late, for an unknown id, for a
// notification that was dead-lettered, none at all) and checks that
// reconciliation finds exactly those, and redrives only what may be resent.
func TestReconcilePlantedDifferences(t *testing.T) {
	r, e := startKeepingPayloads(t)
	start := time.Now()
	ns := make([]*notification.Notification, 11)
	for i := range ns {
		ns[i] = &notification.Notification{Channel: notification.SMS, Priority: notification.High, Tenant: "acme",
			Recipient: recipient(notification.SMS, i), Template: "otp", Vars: map[string]string{"code": "123456"}}
	}
	ns[9].ExpiresAt = start.Add(2 * time.Second) // a code: expired by the time it is reconciled
	ns[10].Recipient = "invalid-number"          // refused for good: dead-lettered
	if _, _, err := e.Ingest(context.Background(), ns, start); err != nil {
		t.Fatal(err)
	}
	// The mock counts a send when it answers; the engine records it just
	// after: wait for the records too.
	waitFor(t, 20*time.Second, "the sends", func() bool {
		st, err := e.Status(ns[10].ID)
		if r.mock.Stats().Unique != 10 || err != nil || st.State != engine.StateDeadLettered {
			return false
		}
		for _, n := range ns[:10] {
			if st, err := e.Status(n.ID); err != nil || st.State == engine.StateAccepted {
				return false
			}
		}
		return true
	})
	sentAt := map[string]time.Time{}
	for _, n := range ns[:10] {
		st, err := e.Status(n.ID)
		if err != nil || st.State != engine.StateSent {
			t.Fatalf("%s: %v %v", n.ID, st.State, err)
		}
		sentAt[n.ID] = st.Current.At
	}
	rc := func(i int, delivered bool, after time.Duration) providers.Receipt {
		return providers.Receipt{ID: ns[i].ID, ProviderMessageID: fmt.Sprintf("SM%d", i), Delivered: delivered, Final: true,
			At: sentAt[ns[i].ID].Add(after)}
	}
	receipts := []providers.Receipt{
		rc(0, true, 10*time.Millisecond), rc(1, true, 20*time.Millisecond), rc(2, false, 20*time.Millisecond), rc(3, true, time.Millisecond),
		rc(4, true, 10*time.Millisecond), rc(4, true, 30*time.Millisecond), // twice
		rc(5, true, 10*time.Millisecond), rc(5, false, 40*time.Millisecond), // contradictory
		rc(6, true, 2*time.Second), // late: past the 300 ms deadline
		// 7: on time below; 8 and 9: none.
		rc(7, true, 50*time.Millisecond),
		{ID: "01JUNKNOWNUNKNOWNUNKNOWN00", ProviderMessageID: "SMx", Delivered: true, Final: true, At: start},
		{ID: ns[10].ID, ProviderMessageID: "SM10", Delivered: true, Final: true, At: start}, // it was never sent
	}
	_, unknown, err := e.ApplyReceipts(context.Background(), "twilio", receipts)
	if err != nil || len(unknown) != 1 {
		t.Fatalf("receipts: unknown %v, %v", unknown, err)
	}
	// Past 8's and 9's receipt deadline (300 ms), and 9's expiry.
	time.Sleep(max(500*time.Millisecond, time.Until(ns[9].ExpiresAt.Add(100*time.Millisecond))))
	var diffs []engine.Difference
	rep, err := e.Reconcile(context.Background(), engine.ReconcileOptions{From: start.Add(-time.Second), To: time.Now().Add(time.Second),
		Deadlines: map[string]time.Duration{"sms": 300 * time.Millisecond}, Redrive: []string{engine.DiffMissingReceipt}},
		func(d engine.Difference) error { diffs = append(diffs, d); return nil })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{engine.DiffDuplicateReceipt: 1, engine.DiffStateMismatch: 1, engine.DiffLateReceipt: 1,
		engine.DiffMissingReceipt: 2, engine.DiffUnknownReceipt: 1, engine.DiffReceiptNotSent: 1}
	if fmt.Sprint(rep.Differences) != fmt.Sprint(want) {
		t.Fatalf("differences %v, want %v\n%+v", rep.Differences, want, diffs)
	}
	if rep.Notifications != 11 || rep.Sent != 10 || rep.WithReceipt != 9 || rep.Redriven != 1 {
		t.Fatalf("report %+v", rep)
	}
	byID := map[string]engine.Difference{}
	for _, d := range diffs {
		byID[d.ID+"/"+d.Kind] = d
	}
	d8, d9 := byID[ns[8].ID+"/"+engine.DiffMissingReceipt], byID[ns[9].ID+"/"+engine.DiffMissingReceipt]
	if d8.RedrivenAs == "" || d8.Provider != "twilio" || d8.Tenant != "acme" {
		t.Fatalf("8 was not redriven: %+v\n%+v", d8, diffs)
	}
	if d9.RedrivenAs != "" || d9.NotRedriven == "" {
		t.Fatalf("9, an expired code, was redriven: %+v", d9)
	}
	if d := byID[ns[5].ID+"/"+engine.DiffStateMismatch]; d.RedrivenAs != "" {
		t.Fatalf("a mismatch was redriven though only missing receipts were asked: %+v", d)
	}
	// The resend reaches the provider under its new id; the original
	// records that it was redriven.
	waitFor(t, 20*time.Second, "the redriven send", func() bool { return r.mock.Count(d8.RedrivenAs) == 1 })
	if r.mock.Count(ns[8].ID) != 1 || r.mock.Stats().Unique != 11 {
		t.Fatalf("mock: original %d, unique %d", r.mock.Count(ns[8].ID), r.mock.Stats().Unique)
	}
	st, err := e.Status(ns[8].ID)
	if err != nil || st.State != engine.StateRetrying {
		t.Fatalf("original after redrive: %v %v", st.State, err)
	}
	nst, err := e.Status(d8.RedrivenAs)
	if err != nil || nst.History[0].State != engine.StateAccepted {
		t.Fatalf("redriven notification: %+v %v", nst, err)
	}

	// A second run finds 8 still without a receipt but does not redrive it
	// again (its window ends before the resend was created).
	diffs = nil
	rep, err = e.Reconcile(context.Background(), engine.ReconcileOptions{From: start.Add(-time.Second), To: start.Add(300 * time.Millisecond),
		Deadlines: map[string]time.Duration{"sms": 300 * time.Millisecond}, Redrive: []string{engine.DiffMissingReceipt}},
		func(d engine.Difference) error { diffs = append(diffs, d); return nil })
	if err != nil || rep.Redriven != 0 {
		t.Fatalf("second run: %+v %v", rep, err)
	}
	again := false
	for _, d := range diffs {
		if d.ID == ns[8].ID && d.Kind == engine.DiffMissingReceipt {
			again = d.NotRedriven == "already redriven" && d.RedrivenAs == ""
		}
	}
	if !again {
		t.Fatalf("second run's differences: %+v", diffs)
	}

	// A window before any of it finds nothing.
	rep, err = e.Reconcile(context.Background(), engine.ReconcileOptions{From: start.Add(-time.Hour), To: start.Add(-time.Minute)},
		func(engine.Difference) error { t.Fatal("a difference outside the window"); return nil })
	if err != nil || rep.Notifications != 0 {
		t.Fatalf("empty window: %+v %v", rep, err)
	}
}

// Payloads are kept where a redrive can use them: on channels that expect
// receipts (sms here), not on those that do not (webhook).
func TestPayloadsKeptWhereReceiptsAreExpected(t *testing.T) {
	r, e := startKeepingPayloads(t)
	sms := &notification.Notification{Channel: notification.SMS, Tenant: "acme", Recipient: recipient(notification.SMS, 1),
		Template: "otp", Vars: map[string]string{"code": "123456"}}
	hook := webhookBatch(1, 0)[0]
	if _, _, err := e.Ingest(context.Background(), []*notification.Notification{sms, hook}, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "both sends", func() bool {
		a, errA := e.Status(sms.ID)
		b, errB := e.Status(hook.ID)
		return errA == nil && errB == nil && a.State == engine.StateSent && b.State == engine.StateSent
	})
	if p, err := r.status.Payload(sms.ID); err != nil || len(p) == 0 {
		t.Fatalf("sms payload: %q, %v", p, err)
	}
	if _, err := r.status.Payload(hook.ID); err != engine.ErrNotFound {
		t.Fatalf("webhook payload kept (%v): no receipt can ever ask for it", err)
	}
}

// A receipt that arrives before its notification is known (another node's
// send still on its way through the status topic, or this node's an
// instant before) is applied once the notification is known, and is then
// no "unknown receipt" for reconciliation.
func TestEarlyReceiptIsApplied(t *testing.T) {
	r := newRig(t, backends[0])
	cfg := r.config(r.channels(false))
	cfg.ReceiptRetryInterval = 50 * time.Millisecond
	e, stop := r.start(cfg)
	defer stop()
	waitFor(t, 10*time.Second, "the engine", e.Ready)
	start := time.Now()
	n := webhookBatch(1, 0)[0]
	n.ID = notification.NewID()
	_, unknown, err := e.ApplyReceipts(context.Background(), "webhook",
		[]providers.Receipt{{ID: n.ID, ProviderMessageID: "wh-1", Delivered: true, Final: true, At: start.Add(2 * time.Second)}})
	if err != nil || len(unknown) != 1 {
		t.Fatalf("early receipt: unknown %v, %v", unknown, err)
	}
	if _, _, err := e.Ingest(context.Background(), []*notification.Notification{n}, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the early receipt applied", func() bool {
		st, err := e.Status(n.ID)
		return err == nil && st.State == engine.StateDelivered && st.Current.ProviderMessageID == "wh-1"
	})
	var diffs []engine.Difference
	if _, err := e.Reconcile(context.Background(), engine.ReconcileOptions{From: start.Add(-time.Minute), To: time.Now().Add(time.Minute)},
		func(d engine.Difference) error { diffs = append(diffs, d); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		if d.ID == n.ID {
			t.Fatalf("reconciliation still reports %+v", d)
		}
	}
}
