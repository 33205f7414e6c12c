package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/goutong/goutong/partition"
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

// openTempStatus opens a status store in a directory of t's, closed when
// t ends.
func openTempStatus(t *testing.T) *StatusStore {
	t.Helper()
	s, err := OpenStatus(t.TempDir(), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// latest finds each id's newest event in one sorted pass, as Get would:
// unknown ids, an id asked twice, and ids that are prefixes of other ids
// (receipts carry whatever id the provider echoes back) among them.
func TestStatusStoreLatest(t *testing.T) {
	s := openTempStatus(t)
	t0 := time.Unix(1_900_000_000, 0)
	a, b := idAt(t0, 1), idAt(t0, 2)
	longer, onlyLonger := a+"Z", idAt(t0, 3)+"Q" // onlyLonger's prefix is stored under no id of its own
	evs := []StatusEvent{
		{ID: a, State: StateAccepted, At: t0},
		{ID: longer, State: StateExpired, At: t0.Add(time.Millisecond)},
		{ID: a, State: StateRetrying, At: t0.Add(time.Second), Attempts: 1},
		{ID: a, State: StateSent, At: t0.Add(2 * time.Second), Attempts: 2, Tenant: "acme", Channel: "sms", Provider: "twilio"},
		{ID: b, State: StateAccepted, At: t0.Add(time.Minute), Tenant: "globex"},
		{ID: onlyLonger, State: StateAccepted, At: t0},
	}
	if err := s.Apply(evs); err != nil {
		t.Fatal(err)
	}
	ids := []string{longer, idAt(t0, 9), a, b, a, onlyLonger[:len(onlyLonger)-1]}
	out, found, err := s.latest(ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		st, err := s.Get(id)
		if errors.Is(err, ErrNotFound) {
			if found[i] {
				t.Errorf("%d: %s found %+v, Get does not know it", i, id, out[i])
			}
			continue
		}
		if err != nil || !found[i] || !reflect.DeepEqual(out[i], st.Current) {
			t.Errorf("%d: %s: latest %+v %v, Get's current %+v %v", i, id, out[i], found[i], st.Current, err)
		}
	}
	if want := []bool{true, false, true, true, true, false}; !reflect.DeepEqual(found, want) {
		t.Fatalf("found %v, want %v", found, want)
	}
	if out[2].State != StateSent || out[2].Attempts != 2 || out[2].Tenant != "acme" || out[4] != out[2] {
		t.Fatalf("a's newest event: %+v and %+v", out[2], out[4])
	}
	states, err := s.latestStates(ids)
	if want := []State{StateExpired, "", StateSent, StateAccepted, StateSent, ""}; err != nil || !reflect.DeepEqual(states, want) {
		t.Fatalf("latestStates %v, %v; want %v", states, err, want)
	}
}

// Pebble charges memtables to the block cache: a cache no larger than the
// memtables kept no block, and every read decompressed its blocks again.
// The store's reads hit its cache.
func TestStatusStoreReadsHitTheBlockCache(t *testing.T) {
	s := openTempStatus(t)
	// Memtables start at 256 KiB and double as they fill, up to 64 MiB:
	// these events take them well past the 8 MiB of blocks the store keeps.
	t0 := time.Unix(1_900_000_000, 0)
	evs := make([]StatusEvent, 1000)
	for round := range 400 {
		for i := range evs {
			id := idAt(t0.Add(time.Duration(round*len(evs)+i)*time.Millisecond), 1)
			evs[i] = StatusEvent{ID: id, State: StateSent, At: t0, Tenant: "acme", Channel: "webhook", Provider: "webhook"}
		}
		if err := s.Apply(evs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Checkpoint(); err != nil { // the rest into sstables too
		t.Fatal(err)
	}
	if m := s.db.Metrics(); m.MemTable.Size <= StatusCacheSize || m.DiskSpaceUsage() == 0 {
		t.Fatalf("memtables of %d bytes, %d on disk: not what this test needs", m.MemTable.Size, m.DiskSpaceUsage())
	}
	for range 2 {
		if _, err := s.Get(idAt(t0.Add(1000*time.Millisecond), 1)); err != nil {
			t.Fatal(err)
		}
	}
	if m := s.Metrics(); m.CacheHits == 0 || s.db.Metrics().BlockCache.Size == 0 {
		t.Fatalf("block cache: %d hits, %d misses: the second read found nothing cached", m.CacheHits, m.CacheMisses)
	}
}

// Unknown receipts are resolved in chunks: every one is offered once, in
// chunks no larger than resolveChunk, and only those marked resolved are
// forgotten, after apply succeeds; a failed apply forgets none.
func TestResolveUnknownReceiptsInChunks(t *testing.T) {
	s := openTempStatus(t)
	now := time.Unix(1_900_000_000, 0)
	const n = 2*resolveChunk + 500
	rs := make([]UnknownReceipt, n)
	for i := range rs {
		rs[i] = UnknownReceipt{Provider: "webhook", ID: fmt.Sprintf("id-%05d", i), State: StateDelivered, At: now, ReceivedAt: now}
	}
	if err := s.AddUnknownReceipts(rs); err != nil {
		t.Fatal(err)
	}
	// Every third: chunks of 1,000 then start at different places in the
	// pattern, so a mark left over from the chunk before would show.
	third := func(id string) bool {
		k, _ := strconv.Atoi(id[len("id-"):])
		return k%3 == 0
	}
	resolveThirds := func(offered map[string]int) func([]UnknownReceipt, []bool) error {
		return func(chunk []UnknownReceipt, resolved []bool) error {
			if len(chunk) > resolveChunk || len(resolved) != len(chunk) {
				t.Fatalf("a chunk of %d with %d marks", len(chunk), len(resolved))
			}
			for i, r := range chunk {
				offered[r.ID]++
				if third(r.ID) { // marks only, as the engine does: the rest must come unmarked
					resolved[i] = true
				}
			}
			return nil
		}
	}
	left := func() (ids []string) {
		if err := s.UnknownReceipts(now.Add(-time.Second), now.Add(time.Second), func(r UnknownReceipt) error {
			ids = append(ids, r.ID)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	offered := map[string]int{}
	failed := errors.New("the log is down")
	if err := s.ResolveUnknownReceipts(now.Add(-time.Second), now.Add(time.Second), resolveThirds(offered), func() error { return failed }); !errors.Is(err, failed) {
		t.Fatalf("apply's error: %v", err)
	}
	if got := len(left()); got != n {
		t.Fatalf("%d left after a failed apply, want all %d", got, n)
	}
	offered, applied := map[string]int{}, 0
	if err := s.ResolveUnknownReceipts(now.Add(-time.Second), now.Add(time.Second), resolveThirds(offered), func() error { applied++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(offered) != n || applied != 1 {
		t.Fatalf("%d receipts offered, apply called %d times", len(offered), applied)
	}
	for id, k := range offered {
		if k != 1 {
			t.Fatalf("%s offered %d times", id, k)
		}
	}
	rest := left()
	if want := n - (n+2)/3; len(rest) != want {
		t.Fatalf("%d left, want %d", len(rest), want)
	}
	for _, id := range rest {
		if third(id) {
			t.Fatalf("%s was resolved and is still kept", id)
		}
	}
}

// A store written before the events lost their WAL: its unflushed events
// are in Pebble's WAL, its payloads and unknown receipts among the events.
// It opens with every one of them, the payloads and receipts moved to aux,
// durably (a crash right after the open keeps them).
func TestStatusStoreOpensOlderLayout(t *testing.T) {
	fs := vfs.NewCrashableMem()
	db, err := pebble.Open("status", &pebble.Options{FS: fs, Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	id := idAt(now, 1)
	ev := StatusEvent{EventID: "e1", ID: id, State: StateSent, At: now, Channel: "sms"}
	key := statusKey(nil, id, ev.At, eventSeq(&ev, 0))
	val, err := appendStoredEvent(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	receipt := []byte(`{"provider":"twilio","id":"x","state":"delivered","at":"2026-11-26T00:00:00Z","received_at":"2026-11-26T00:00:00Z"}`)
	ukey := binary.BigEndian.AppendUint64([]byte{'u'}, uint64(now.UnixNano()))
	for _, kv := range [][2][]byte{{key, val}, {append([]byte{'p'}, id...), []byte("payload")}, {append(ukey, 0, 0, 'x'), receipt}} {
		if err := db.Set(kv[0], kv[1], pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	// As a kill -9 leaves it: nothing flushed, all in the WAL.
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	db.Close()

	s, err := openStatus("status", time.Hour, false, crashed)
	if err != nil {
		t.Fatal(err)
	}
	check := func(s *StatusStore) {
		t.Helper()
		if st, err := s.Get(id); err != nil || st.State != StateSent {
			t.Fatalf("event: %+v %v", st, err)
		}
		if p, err := s.Payload(id); err != nil || string(p) != "payload" {
			t.Fatalf("payload %q %v", p, err)
		}
		var got []UnknownReceipt
		if err := s.UnknownReceipts(now.Add(-time.Second), now.Add(time.Second), func(r UnknownReceipt) error { got = append(got, r); return nil }); err != nil || len(got) != 1 || got[0].ID != "x" {
			t.Fatalf("unknown receipts %+v %v", got, err)
		}
	}
	check(s)
	for _, prefix := range []byte{'p', 'u'} {
		if ok, err := anyIn(s.db, []byte{prefix}, []byte{prefix + 1}); err != nil || ok {
			t.Fatalf("%c keys left among the events: %v %v", prefix, ok, err)
		}
	}
	again := crashed.CrashClone(vfs.CrashCloneCfg{})
	s.Close()
	s, err = openStatus("status", time.Hour, false, again)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
}

// A checkpoint's offsets are settled only once every writer that entered
// before them has applied its events.
func TestStatusCheckpointWaitsForWriters(t *testing.T) {
	var c statusCheckpoints
	ep := c.enter()
	c.produced("status", []partition.Record{{Topic: "status", Partition: 2, Offset: 41}, {Topic: "lanes", Partition: 2, Offset: 900}})
	got := make(chan map[partition.TopicPartition]int64, 1)
	go func() {
		o, err := c.settled(context.Background(), "status")
		if err != nil {
			t.Error(err)
		}
		got <- o
	}()
	select {
	case o := <-got:
		t.Fatalf("settled %v while a writer had not applied its events", o)
	case <-time.After(50 * time.Millisecond):
	}
	// A writer entering now joins the next epoch: it does not hold this
	// checkpoint back.
	later := c.enter()
	c.exit(ep)
	o := <-got
	if len(o) != 1 || o[partition.TopicPartition{Topic: "status", Partition: 2}] != 42 {
		t.Fatalf("settled %v, want status/2 at 42", o)
	}
	// The next waits for that later writer.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.settled(ctx, "status"); err == nil {
		t.Fatal("settled while a writer of the last epoch was inside")
	}
	c.exit(later)
	if _, err := c.settled(context.Background(), "status"); err != nil {
		t.Fatal(err)
	}
}

// Sync makes payloads and unknown receipts durable (aux keeps a WAL); the
// events need a checkpoint (they have none: the status topic is theirs).
func TestStatusStoreSyncAndCheckpoint(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := openStatus("status", time.Hour, true, fs)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, b := idAt(now, 1), idAt(now, 2)
	if err := s.apply([]StatusEvent{{EventID: "e1", ID: a, State: StateSent, At: now}}, []payload{{id: a, value: []byte("pa")}}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.AddUnknownReceipts([]UnknownReceipt{{Provider: "twilio", ID: "x", State: StateDelivered, At: now, ReceivedAt: now}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	afterSync := fs.CrashClone(vfs.CrashCloneCfg{})
	if err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply([]StatusEvent{{EventID: "e2", ID: b, State: StateSent, At: now}}); err != nil {
		t.Fatal(err)
	}
	afterCheckpoint := fs.CrashClone(vfs.CrashCloneCfg{})
	s.Close()

	crashed, err := openStatus("status", time.Hour, false, afterSync)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := crashed.Payload(a); err != nil || string(p) != "pa" {
		t.Fatalf("payload after a synced crash: %q %v", p, err)
	}
	n := 0
	if err := crashed.UnknownReceipts(now.Add(-time.Second), now.Add(time.Second), func(UnknownReceipt) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("unknown receipts after a synced crash: %d %v", n, err)
	}
	if _, err := crashed.Get(a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an event survived a crash before any checkpoint (%v): does the store have a WAL again?", err)
	}
	crashed.Close()

	crashed, err = openStatus("status", time.Hour, false, afterCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	if st, err := crashed.Get(a); err != nil || st.State != StateSent {
		t.Fatalf("an event checkpointed before the crash: %+v %v", st, err)
	}
	if _, err := crashed.Get(b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an event applied after the last checkpoint survived: %v", err)
	}
}

// BenchmarkStatusGetAfterBacklog writes a backlog's events the way a drain
// does (4M notifications accepted in order, then sent across 32 lanes at
// once, so every flush of the sends spans the whole range of ids and
// overlaps the others), lets the store settle, and reads random
// notifications' status: the GET of the API, a duplicate's answer, a
// receipt's lookup. It reports both sides of the store's compaction
// setting: write-events/s while the backlog goes in, gets/s after.
func BenchmarkStatusGetAfterBacklog(b *testing.B) {
	st, err := OpenStatus(b.TempDir(), time.Hour, true)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ids, writes := WriteDrainBacklog(b, st, 4_000_000)
	time.Sleep(3 * time.Second) // the compactions the writes started
	l0 := st.Metrics().L0Files
	r := rand.New(rand.NewPCG(9, 9))
	b.ResetTimer()
	for range b.N {
		if s, err := st.Get(ids[r.IntN(len(ids))]); err != nil || len(s.History) != 2 {
			b.Fatalf("status %+v, %v", s, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gets/s")
	b.ReportMetric(writes, "write-events/s")
	b.ReportMetric(float64(l0), "l0-files")
}
