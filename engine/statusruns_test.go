package engine

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/oklog/ulid/v2"
)

// TestStatusRunsReadAsEvents writes the same events to two stores, one
// with Ingest's accepted events as runs and one with a key each, and
// reads both back the same: Get, latest and Scan (whole and cut through a
// run), with later events of some notifications, an accepted event
// applied again from the topic (a replay after a crash), events that
// cannot join a run, and the window's reclaim.
func TestStatusRunsReadAsEvents(t *testing.T) {
	base := time.Unix(1_800_000_000, 0).UTC()
	at := base.Add(5 * time.Second)
	entropy := ulid.Monotonic(&constReader{7}, 1)
	var accepted []StatusEvent
	var ids []string
	for i := range 2600 {
		// Ids over several milliseconds, so a Scan by time cuts a run.
		id := ulid.MustNew(ulid.Timestamp(base.Add(time.Duration(i)*time.Millisecond)), entropy).String()
		ids = append(ids, id)
		ev := StatusEvent{EventID: "ev-" + id, ID: id, State: StateAccepted, At: at, Tenant: "acme", Channel: "email", Priority: "bulk"}
		switch i {
		case 1500:
			ev.At = at.Add(time.Millisecond) // another time: ends a run
		case 2000:
			ev.EventID = "" // no id to tell a repeat of it by: ends a run
		}
		accepted = append(accepted, ev)
	}
	var later []StatusEvent
	for i := 0; i < len(ids); i += 97 {
		later = append(later, StatusEvent{EventID: "sent-" + ids[i], ID: ids[i], State: StateSent, At: at.Add(time.Second),
			Tenant: "acme", Channel: "email", Priority: "bulk", Attempts: 1, Provider: "sendgrid"})
	}
	replayed := []StatusEvent{accepted[10], accepted[1100]}

	open := func(runs bool) *StatusStore {
		s, err := OpenStatus(t.TempDir(), time.Hour, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := s.apply(accepted, nil, runs); err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(later); err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(replayed); err != nil {
			t.Fatal(err)
		}
		return s
	}
	withRuns, perEvent := open(true), open(false)
	if n := countKeys(t, withRuns, []byte{runPrefix}, []byte{runPrefix + 1}); n < 3 || n > 6 {
		t.Fatalf("%d runs, want 3-6 for 2,600 events cut twice", n)
	}
	if n := countKeys(t, withRuns, []byte{'s'}, []byte{'t'}); n != 2+len(later)+len(replayed) {
		t.Fatalf("%d events under keys of their own, want the 2 that cannot join a run and %d more", n, len(later)+len(replayed))
	}

	for _, id := range append(ids, idAt(base, 1)) {
		a, aerr := withRuns.Get(id)
		b, berr := perEvent.Get(id)
		if !errors.Is(aerr, berr) && (aerr == nil || berr == nil || aerr.Error() != berr.Error()) || !reflect.DeepEqual(a, b) {
			t.Fatalf("Get(%s): runs %+v, %v; events %+v, %v", id, a, aerr, b, berr)
		}
	}
	la, fa, err := withRuns.latest(ids)
	if err != nil {
		t.Fatal(err)
	}
	lb, fb, err := perEvent.latest(ids)
	if err != nil || !reflect.DeepEqual(la, lb) || !reflect.DeepEqual(fa, fb) {
		t.Fatalf("latest differs (%v)", err)
	}
	sa, err := withRuns.latestStates(ids)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ids {
		if sa[i] != la[i].State {
			t.Fatalf("latestStates of %s: %q, latest's %q", ids[i], sa[i], la[i].State)
		}
	}
	scan := func(s *StatusStore, from, to time.Time) map[string][]StatusEvent {
		out := map[string][]StatusEvent{}
		var last string
		if err := s.Scan(from, to, func(id string, hist []StatusEvent) error {
			if id <= last {
				t.Fatalf("Scan gave %s after %s", id, last)
			}
			last = id
			out[id] = append([]StatusEvent(nil), hist...)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, r := range [][2]time.Duration{{0, time.Hour}, {700 * time.Millisecond, 1900 * time.Millisecond}, {2599 * time.Millisecond, time.Hour}} {
		a, b := scan(withRuns, base.Add(r[0]), base.Add(r[1])), scan(perEvent, base.Add(r[0]), base.Add(r[1]))
		if len(b) == 0 || !reflect.DeepEqual(a, b) {
			t.Fatalf("Scan %v: runs gave %d ids, events %d, or their histories differ", r, len(a), len(b))
		}
	}

	if err := withRuns.Reclaim(base.Add(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := withRuns.Get(ids[5]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the window: %v, want not found", err)
	}
	if n := countKeys(t, withRuns, []byte{runPrefix}, []byte{runPrefix + 1}); n != 0 {
		t.Fatalf("%d runs left after the window", n)
	}
}

func countKeys(t *testing.T, s *StatusStore, lo, hi []byte) int {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n
}

// FuzzStoredRun reads any bytes as a run's value (a store copied from
// another node is read as it is): errors, never a panic, and a run this
// process wrote reads back whole.
func FuzzStoredRun(f *testing.F) {
	at := time.Unix(1_800_000_000, 5).UTC()
	evs := []StatusEvent{
		{EventID: "e1", ID: "01M8A0Q7Z9H5Y0R4T2B6W8D3JQ", State: StateAccepted, At: at, Tenant: "acme", Channel: "sms", Priority: "critical"},
		{EventID: "e2", ID: "01M8A0Q7Z9H5Y0R4T2B6W8D3JR", State: StateAccepted, At: at, Tenant: "acme", Channel: "email"},
	}
	_, _, v, err := appendRunKV(nil, evs)
	if err != nil {
		f.Fatal(err)
	}
	r, err := parseRun(v)
	if err != nil || r.len() != 2 {
		f.Fatalf("own run: %d entries, %v", r.len(), err)
	}
	for _, want := range evs {
		v, ok, err := r.findEntry(want.ID)
		var got StatusEvent
		if ok && err == nil {
			got, err = decodeStoredEventAt(want.ID, r.at, v)
		}
		if !ok || err != nil || !reflect.DeepEqual(got, want) {
			f.Fatalf("own run: %+v, %v, %v; want %+v", got, ok, err, want)
		}
	}
	f.Add(v, "01M8A0Q7Z9H5Y0R4T2B6W8D3JR")
	f.Add(v[:len(v)-3], "01M8A0Q7Z9H5Y0R4T2B6W8D3JQ")
	f.Add([]byte{storedRunV1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1}, "x")
	f.Fuzz(func(t *testing.T, v []byte, id string) {
		r, err := parseRun(v)
		if err != nil {
			return
		}
		for i := range r.len() {
			rid, ev, err := r.entry(i)
			if err != nil {
				break
			}
			_, _ = r.event(rid, ev)
		}
		if v, ok, err := r.findEntry(id); ok && err == nil {
			_, _ = decodeStoredEventAt(id, r.at, v)
		}
	})
}

// BenchmarkStatusGetFromRuns reads the status of notifications accepted in
// NDJSON-sized requests and not sent yet: each Get finds its event in a
// run.
func BenchmarkStatusGetFromRuns(b *testing.B) {
	s, err := OpenStatus(b.TempDir(), time.Hour, true)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	entropy := ulid.Monotonic(&constReader{3}, 1)
	var ids []string
	at := time.Now().UTC()
	for range 200 {
		evs := make([]StatusEvent, 1000)
		for i := range evs {
			id := ulid.MustNew(ulid.Timestamp(at), entropy).String()
			ids = append(ids, id)
			evs[i] = StatusEvent{EventID: "e" + id, ID: id, State: StateAccepted, At: at, Tenant: "acme", Channel: "email", Priority: "normal"}
		}
		if err := s.apply(evs, nil, true); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Checkpoint(); err != nil { // flushed: reads from tables, as most would
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if st, err := s.Get(ids[(i*7919)%len(ids)]); err != nil || st.State != StateAccepted {
			b.Fatalf("status %+v, %v", st, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gets/s")
}

// TestStatusRunsNeverOverlap: after a reopen, accepted events whose ids
// fall within the runs the store already held (made under a clock set
// back, or those of a store copied from another node) are kept under keys
// of their own, so every id's run is the first that does not end below it.
func TestStatusRunsNeverOverlap(t *testing.T) {
	dir := t.TempDir()
	at := time.Unix(1_800_000_000, 0).UTC()
	batch := func(ids ...string) []StatusEvent {
		evs := make([]StatusEvent, len(ids))
		for i, id := range ids {
			evs[i] = StatusEvent{EventID: "ev-" + id, ID: id, State: StateAccepted, At: at, Tenant: "acme", Channel: "sms"}
		}
		return evs
	}
	id := func(n byte) string { return idAt(at, n) }
	s, err := OpenStatus(dir, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.apply(batch(id(10), id(20), id(30)), nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenStatus(dir, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Within the run held at open, then above it.
	if err := s.apply(append(batch(id(15), id(25)), batch(id(40), id(50))...), nil, true); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, s, []byte{runPrefix}, []byte{runPrefix + 1}); n != 2 {
		t.Fatalf("%d runs, want the one held at open and 40-50", n)
	}
	if n := countKeys(t, s, []byte{'s'}, []byte{'t'}); n != 2 {
		t.Fatalf("%d events under keys of their own, want 15 and 25", n)
	}
	for _, n := range []byte{10, 15, 20, 25, 30, 40, 50} {
		if st, err := s.Get(id(n)); err != nil || st.State != StateAccepted || st.ID != id(n) {
			t.Fatalf("Get(%d): %+v, %v", n, st, err)
		}
	}
}
