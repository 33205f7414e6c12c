package engine

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
)

func idAt(t time.Time, n byte) string {
	return ulid.MustNew(ulid.Timestamp(t), &constReader{n}).String()
}

type constReader struct{ b byte }

func (c *constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.b
	}
	return len(p), nil
}

func TestStatusStoreHistoryAndWindow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "status")
	if _, err := OpenStatus(dir, time.Hour, false); err == nil {
		t.Fatal("a missing status directory opened without create")
	}
	s, err := OpenStatus(dir, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_900_000_000, 0)
	old, fresh := idAt(t0, 1), idAt(t0.Add(90*time.Minute), 2)
	evs := []StatusEvent{
		{ID: old, State: StateAccepted, At: t0},
		{ID: old, State: StateRetrying, At: t0.Add(time.Second), Attempts: 1, Reason: "HTTP 503"},
		{ID: old, State: StateSent, At: t0.Add(2 * time.Second), Attempts: 2, Provider: "twilio", ProviderMessageID: "SM1"},
		{ID: fresh, State: StateExpired, At: t0.Add(90 * time.Minute)},
	}
	if err := s.Apply(evs); err != nil {
		t.Fatal(err)
	}
	st, err := s.Get(old)
	if err != nil || st.State != StateSent || len(st.History) != 3 || st.Current.ProviderMessageID != "SM1" ||
		st.History[1].Reason != "HTTP 503" {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := s.Get(idAt(t0, 3)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	// Survives a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenStatus(dir, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// An hour and a half later, the first notification is past the window.
	if err := s.Reclaim(t0.Add(100 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(old); !errors.Is(err, ErrNotFound) {
		t.Fatalf("status older than the window kept: %v", err)
	}
	if st, err := s.Get(fresh); err != nil || st.State != StateExpired {
		t.Fatalf("status inside the window dropped: %+v %v", st, err)
	}
}
