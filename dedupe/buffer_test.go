package dedupe

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// confirmKeys claims and confirms n keys named prefix-i and returns them.
func confirmKeys(t *testing.T, s *Store, prefix string, n int) []string {
	t.Helper()
	keys, err := tryConfirmKeys(s, prefix, n)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// tryConfirmKeys is confirmKeys for goroutines other than the test's.
func tryConfirmKeys(s *Store, prefix string, n int) ([]string, error) {
	keys := make([]string, n)
	reqs := make([]ClaimRequest, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s-%d", prefix, i)
		reqs[i] = ClaimRequest{Key: keys[i], ID: "id-" + keys[i]}
	}
	out := make([]ClaimResult, n)
	if err := s.Claim(ctx, reqs, out); err != nil {
		return nil, err
	}
	done := make([]Done, n)
	for i := range out {
		if out[i].Status != Claimed {
			return nil, fmt.Errorf("%s: %v", keys[i], out[i].Status)
		}
		done[i] = Done{Key: keys[i], Token: out[i].Token, ID: reqs[i].ID, Outcome: "sent"}
	}
	return keys, s.Confirm(ctx, done)
}

func requireConfirmed(t *testing.T, s *Store, keys []string) {
	t.Helper()
	res, err := s.Lookup(keys, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.Found || !r.Confirmed || r.ID != "id-"+keys[i] {
			t.Fatalf("%s after reopening: %+v", keys[i], r)
		}
	}
}

func bufferLogs(t *testing.T, dir string) []string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "write-buffer", "*"+bufLogExt))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(logs)
	return logs
}

// What a store buffered when it closed (or crashed) is in Pebble after the
// next open, and the logs that held it are gone; a torn frame at the end of
// the newest log (a write that never returned) is dropped, not fatal.
func TestWriteBufferReplayedAtOpen(t *testing.T) {
	clk, dir := newClock(), t.TempDir()
	s := open(t, dir, clk)
	keys := confirmKeys(t, s, "k", 500)
	if m := s.Metrics(); m.BufferKeys != 1000 && m.BufferKeys != 500 {
		t.Fatalf("buffered %d records, want the 500 confirms", m.BufferKeys)
	}
	s.Close()
	logs := bufferLogs(t, dir)
	if len(logs) != 1 {
		t.Fatalf("logs after close: %v", logs)
	}
	f, err := os.OpenFile(logs[0], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn := appendFrame(nil, []writeOp{{key: entryKey(nil, 1, "torn"), val: recentEntry("x")}})
	f.Write(torn[:len(torn)-3])
	f.Close()

	s = open(t, dir, clk)
	defer s.Close()
	requireConfirmed(t, s, keys)
	if m := s.Metrics(); m.BufferKeys != 0 {
		t.Fatalf("%d records still buffered after the replay", m.BufferKeys)
	}
	// The active generation's log and, once the ingester made it, the next.
	if got := bufferLogs(t, dir); len(got) == 0 || len(got) > 2 || slices.Contains(got, logs[0]) {
		t.Fatalf("logs after the replay: %v (before: %v)", got, logs)
	}
}

// A damaged log that is not the newest, or a buffer directory that vanished,
// fails the open: both held acknowledged writes.
func TestWriteBufferDamageFailsOpen(t *testing.T) {
	clk := newClock()
	t.Run("corrupt", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, clk)
		confirmKeys(t, s, "k", 100)
		s.Close()
		logs := bufferLogs(t, dir)
		data, err := os.ReadFile(logs[0])
		if err != nil {
			t.Fatal(err)
		}
		next := filepath.Join(filepath.Dir(logs[0]), fmt.Sprintf("%020d%s", 99, bufLogExt))
		if err := os.WriteFile(next, data, 0o644); err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(logs[0], data, 0o644); err != nil {
			t.Fatal(err)
		}
		if s, err := Open(dir, WithClock(clk.Now)); err == nil {
			s.Close()
			t.Fatal("opened over a corrupt log")
		}
	})
	t.Run("missing", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, clk)
		confirmKeys(t, s, "k", 100)
		s.Close()
		if err := os.RemoveAll(filepath.Join(dir, "write-buffer")); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, WithClock(clk.Now), WithCreate())
		if !errors.Is(err, ErrMissing) {
			if err == nil {
				s.Close()
			}
			t.Fatalf("open without the write buffer: %v, want ErrMissing", err)
		}
	})
}

// Writes keep going while generations fill faster than one is ingested:
// the writer waits for the ingest instead of growing memory.
func TestWriteBufferBoundedUnderLoad(t *testing.T) {
	s := open(t, t.TempDir(), newClock(), WithWriteBuffer(1<<20))
	defer s.Close()
	var all []string
	for i := range 60 { // ~6 MiB of entries through a 1 MiB buffer
		all = append(all, confirmKeys(t, s, fmt.Sprintf("batch%d", i), 1000)...)
		if m := s.Metrics(); m.BufferBytes > 2*(1<<20)+(1<<20)/8+200_000 {
			t.Fatalf("buffer holds %d bytes", m.BufferBytes)
		}
	}
	if err := s.buf.flush(); err != nil {
		t.Fatal(err)
	}
	if m := s.Metrics(); m.BufferIngests < 3 {
		t.Fatalf("%d ingests", m.BufferIngests)
	}
	requireConfirmed(t, s, all)
}

// FuzzBufferLog feeds arbitrary bytes to the log replay (they come from
// disk): no panic, and what it accepts encodes back to what it decoded.
func FuzzBufferLog(f *testing.F) {
	ok := appendFrame(nil, []writeOp{{key: entryKey(nil, 3, "key"), val: recentEntry("id")}, {key: entryKey(nil, 3, "gone"), del: true}})
	f.Add(ok, false)
	f.Add(ok[:len(ok)-1], true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, data []byte, tail bool) {
		g := &bufGen{idx: newHashIndex(0)}
		if err := replayLog(g, data, tail); err != nil {
			return
		}
		var ops []writeOp
		for off := 0; off < len(g.data); {
			_, del, k, v := g.record(uint32(off))
			ops = append(ops, writeOp{key: k, val: v, del: del})
			off += 5 + varintLen(len(k)) + len(k) + varintLen(len(v)) + len(v)
		}
		again := &bufGen{idx: newHashIndex(0)}
		if err := replayLog(again, appendFrame(nil, ops), false); err != nil {
			t.Fatalf("re-encoded log refused: %v", err)
		}
		if again.keys != g.keys || again.dels != g.dels {
			t.Fatalf("re-encoded: %d records %d deletes, want %d %d", again.keys, again.dels, g.keys, g.dels)
		}
		for _, op := range ops {
			gd, gk, gv, gok := g.newest(xxhashOf(op.key[5:]), op.key[5:])
			ad, ak, av, aok := again.newest(xxhashOf(op.key[5:]), op.key[5:])
			if gd != ad || gok != aok || string(gk) != string(ak) || string(gv) != string(av) {
				t.Fatalf("key %q differs after re-encoding", op.key)
			}
		}
	})
}

func varintLen(n int) int { return len(binary.AppendUvarint(nil, uint64(n))) }

func xxhashOf(b []byte) uint64 { return xxhash.Sum64(b) }

// The ingest's sort orders entry keys as Pebble does, whatever prefixes
// they share and however their lengths end inside a 16-byte digit.
func TestWriteBufferSortByKey(t *testing.T) {
	rnd := rand.New(rand.NewPCG(9, 9))
	for _, c := range []struct {
		name string
		key  func() []byte
	}{
		{"tenants and short alphabets", func() []byte {
			k := []byte(fmt.Sprintf("ingest\x00tenant-%d\x00", rnd.IntN(3)))
			for range rnd.IntN(40) {
				k = append(k, "ab\x00"[rnd.IntN(3)])
			}
			return k
		}},
		// One tenant's default keys: everything up to the hash is shared.
		{"one tenant's hashes", func() []byte {
			return fmt.Appendf(nil, "ingest\x00acme\x00k1-%032x", rnd.Uint64()>>rnd.IntN(64))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var writes [][]byte
			for len(writes) < 5000 {
				ekey := entryKey(nil, uint32(rnd.IntN(2)), string(c.key()))
				if len(writes) > 0 && rnd.IntN(10) == 0 {
					ekey = writes[rnd.IntN(len(writes))] // a newer write of a key
				}
				writes = append(writes, ekey)
			}
			checkGenerationSort(t, &bufGen{idx: newHashIndex(0)}, writes)
		})
	}
}

// checkGenerationSort writes ekeys into g in order (the value of the i-th
// names i) and checks that the ingest's sort returns them by key, the
// newest write of a key first, as the sstable writer needs them.
func checkGenerationSort(t testing.TB, g *bufGen, ekeys [][]byte) {
	t.Helper()
	type write struct {
		ekey []byte
		nth  int
	}
	want := make([]write, len(ekeys))
	for i, ekey := range ekeys {
		want[i] = write{ekey, i}
		g.add(false, ekey, recentEntry(strconv.Itoa(i)))
	}
	refs := g.sortRefs(0)
	g.sortByKey(refs)
	slices.SortFunc(want, func(a, b write) int {
		return cmp.Or(bytes.Compare(a.ekey, b.ekey), cmp.Compare(b.nth, a.nth))
	})
	if len(refs) != len(want) {
		t.Fatalf("%d sorted, want %d", len(refs), len(want))
	}
	for i, r := range refs {
		_, _, got, val := g.record(r.ref - 1)
		e, err := parseEntry(val)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[i].ekey) || e.id != strconv.Itoa(want[i].nth) {
			t.Fatalf("position %d: %q (write %s), want %q (write %d)", i, got, e.id, want[i].ekey, want[i].nth)
		}
	}
}

// Synced writers confirming at once share fsyncs while generations freeze
// under them; everything they were told is durable is there after a reopen.
func TestWriteBufferConcurrentSyncedWriters(t *testing.T) {
	clk, dir := newClock(), t.TempDir()
	s := open(t, dir, clk, WithSync(true), WithWriteBuffer(1<<20))
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	firstSeq := s.buf.activeSeq()
	var wg sync.WaitGroup
	keys := make([][]string, 4)
	errs := make([]error, len(keys))
	for w := range keys {
		wg.Go(func() {
			for i := range 15 {
				k, err := tryConfirmKeys(s, fmt.Sprintf("w%d-b%d", w, i), 500)
				if err != nil {
					errs[w] = err
					return
				}
				keys[w] = append(keys[w], k...)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// The ingest runs behind the writers, so whether one finished yet is
	// timing; that a generation froze under them is not.
	if seq := s.buf.activeSeq(); seq == firstSeq {
		t.Fatalf("no generation froze under the writers (active generation %d)", seq)
	}
	closed = true
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, clk)
	closed = false
	for _, k := range keys {
		requireConfirmed(t, s, k)
	}
}

// A store reopened with the buffer off still takes in what the buffer held.
func TestWriteBufferReplayedWhenTurnedOff(t *testing.T) {
	clk, dir := newClock(), t.TempDir()
	s := open(t, dir, clk)
	keys := confirmKeys(t, s, "k", 300)
	s.Close()
	s = open(t, dir, clk, WithWriteBuffer(0))
	defer s.Close()
	requireConfirmed(t, s, keys)
	if logs := bufferLogs(t, dir); len(logs) != 0 {
		t.Fatalf("logs left: %v", logs)
	}
}

func (b *writeBuffer) activeSeq() uint64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.active.seq
}

// TestSyncDelaySharesFsyncs confirms from eight goroutines at once with a
// sync delay: the fsyncs must be shared (fewer than a quarter of the confirms), and
// every confirmed key must still answer Duplicate after a reopen. (10 for
// 80 confirms here; 42 without the delay.)
func TestSyncDelaySharesFsyncs(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := open(t, dir, clk, WithSync(true), WithSyncDelay(5*time.Millisecond))
	const workers, rounds, batch = 8, 10, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				reqs := make([]ClaimRequest, batch)
				for i := range reqs {
					reqs[i] = ClaimRequest{Key: fmt.Sprintf("w%d-r%d-k%d", w, r, i), ID: fmt.Sprintf("id-%d-%d-%d", w, r, i)}
				}
				out := make([]ClaimResult, batch)
				if err := s.Claim(ctx, reqs, out); err != nil {
					errs <- err
					return
				}
				done := make([]Done, batch)
				for i := range done {
					done[i] = Done{Key: reqs[i].Key, Token: out[i].Token, ID: reqs[i].ID, Outcome: "sent"}
				}
				if err := s.Confirm(ctx, done); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	m := s.Metrics()
	if m.Syncs == 0 || m.Syncs >= workers*rounds/4 {
		t.Fatalf("%d fsyncs for %d synced confirms: the delay should let them share", m.Syncs, workers*rounds)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, clk)
	defer s.Close()
	reqs := []ClaimRequest{{Key: "w0-r0-k0", ID: "again"}, {Key: fmt.Sprintf("w%d-r%d-k%d", workers-1, rounds-1, batch-1), ID: "again"}}
	out := make([]ClaimResult, len(reqs))
	if err := s.Claim(ctx, reqs, out); err != nil {
		t.Fatal(err)
	}
	for i, r := range out {
		if r.Status != Duplicate {
			t.Fatalf("key %s after reopen: %+v, want Duplicate", reqs[i].Key, r)
		}
	}
}

// TestConfirmThenSync: the confirm answers claims as soon as it returns,
// and its fsync happens in wait (none before, one after).
func TestConfirmThenSync(t *testing.T) {
	s := open(t, t.TempDir(), newClock(), WithSync(true), WithSyncDelay(0*time.Millisecond))
	defer s.Close()
	reqs := []ClaimRequest{{Key: "k", ID: "id-1"}}
	out := make([]ClaimResult, 1)
	if err := s.Claim(ctx, reqs, out); err != nil {
		t.Fatal(err)
	}
	wait, err := s.ConfirmThenSync(ctx, []Done{{Key: "k", Token: out[0].Token, ID: "id-1", Outcome: "sent"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Metrics().Syncs; n != 0 {
		t.Fatalf("%d fsyncs before wait", n)
	}
	again := make([]ClaimResult, 1)
	if err := s.Claim(ctx, []ClaimRequest{{Key: "k", ID: "id-2"}}, again); err != nil {
		t.Fatal(err)
	}
	if again[0].Status != Duplicate || again[0].OriginalID != "id-1" {
		t.Fatalf("claim after the confirm returned: %+v, want Duplicate of id-1", again[0])
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if n := s.Metrics().Syncs; n != 1 {
		t.Fatalf("%d fsyncs after wait, want 1", n)
	}
}

// The generation logs' writeback (startWriteback) needs the OS's file
// descriptor, which it reaches through syscall.Conn: a Pebble whose
// default files stopped offering it would silently let dirty pages pile
// up behind every fsync.
func TestDefaultFilesReachTheirDescriptor(t *testing.T) {
	f, err := vfs.Default.Create(filepath.Join(t.TempDir(), "f"), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.(syscall.Conn); !ok {
		t.Fatalf("%T does not implement syscall.Conn", f)
	}
}

// A write or fsync the buffer's log refuses (a full or failing disk) is
// counted, makes the store refuse every later write with the same error
// (the log's tail is unknown), and is reported by Err; a reopen on a
// healthy disk replays the log and finds every key confirmed before.
func TestFailedLogWriteIsStickyAndReported(t *testing.T) {
	for _, c := range []struct {
		name string
		kind errorfs.OpKind
		// whether the confirm during the failure reached the log: an fsync
		// that failed leaves its write in the file, which the replay reads
		during string
	}{
		{"write", errorfs.OpFileWrite, "new"},
		{"sync", errorfs.OpFileSync, "confirmed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := newClock()
			var failing atomic.Bool
			fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
				if failing.Load() && op.Kind == c.kind && strings.HasSuffix(op.Path, bufLogExt) {
					return errorfs.ErrInjected
				}
				return nil
			}))
			s := open(t, dir, clk, WithFS(fs), WithWriteBuffer(1<<20), WithSync(true))
			claimConfirm := func(key string) error {
				t.Helper()
				res := make([]ClaimResult, 1)
				if err := s.Claim(ctx, []ClaimRequest{{Key: key, ID: "id-" + key}}, res); err != nil {
					t.Fatalf("claim %s: %v", key, err)
				}
				if res[0].Status != Claimed {
					t.Fatalf("claim %s = %v, want Claimed", key, res[0].Status)
				}
				return s.Confirm(ctx, []Done{{Key: key, Token: res[0].Token, ID: "id-" + key, Outcome: "sent"}})
			}
			if err := claimConfirm("before"); err != nil {
				t.Fatal(err)
			}
			if s.Err() != nil || s.Metrics().WriteErrors != 0 {
				t.Fatalf("healthy store: Err %v, write errors %d", s.Err(), s.Metrics().WriteErrors)
			}
			failing.Store(true)
			if err := claimConfirm("during"); !errors.Is(err, errorfs.ErrInjected) {
				t.Fatalf("confirm on a failing disk = %v, want the injected error", err)
			}
			failing.Store(false)
			if err := claimConfirm("after"); !errors.Is(err, errorfs.ErrInjected) {
				t.Fatalf("confirm after a failure = %v, want the first failure again", err)
			}
			if err := s.Err(); !errors.Is(err, errorfs.ErrInjected) {
				t.Fatalf("Err = %v, want the injected error", err)
			}
			if n := s.Metrics().WriteErrors; n != 2 {
				t.Fatalf("write errors = %d, want 2", n)
			}
			s.Close()

			s = open(t, dir, clk, WithWriteBuffer(1<<20))
			defer s.Close()
			if s.Err() != nil {
				t.Fatalf("reopened store: Err %v", s.Err())
			}
			res := make([]ClaimResult, 3)
			if err := s.Claim(ctx, []ClaimRequest{{Key: "before", ID: "x"}, {Key: "during", ID: "x"}, {Key: "after", ID: "x"}}, res); err != nil {
				t.Fatal(err)
			}
			if res[0].Status != Duplicate || res[0].OriginalID != "id-before" {
				t.Errorf("key confirmed before the failure: %v %q, want Duplicate of id-before", res[0].Status, res[0].OriginalID)
			}
			want := map[string]Status{"new": Claimed, "confirmed": Duplicate}[c.during]
			if res[1].Status != want {
				t.Errorf("key confirmed during the failure: %v, want %v", res[1].Status, want)
			}
			// The confirm after never reached the log: its key is new again.
			if res[2].Status != Claimed {
				t.Errorf("key confirmed after the failure: %v, want Claimed", res[2].Status)
			}
		})
	}
}

// A checkpoint copies every key confirmed before it, those still in the
// write buffer included, into a store that opens on its own; the original
// goes on taking writes that the copy does not see.
func TestCheckpoint(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithWriteBuffer(1<<20))
	defer s.Close()
	confirm := func(s *Store, keys ...string) {
		t.Helper()
		reqs := make([]ClaimRequest, len(keys))
		for i, k := range keys {
			reqs[i] = ClaimRequest{Key: k, ID: "id-" + k}
		}
		res := make([]ClaimResult, len(keys))
		if err := s.Claim(ctx, reqs, res); err != nil {
			t.Fatal(err)
		}
		done := make([]Done, len(keys))
		for i, k := range keys {
			if res[i].Status != Claimed {
				t.Fatalf("claim %s: %v", k, res[i].Status)
			}
			done[i] = Done{Key: k, Token: res[i].Token, ID: "id-" + k, Outcome: "sent"}
		}
		if err := s.Confirm(ctx, done); err != nil {
			t.Fatal(err)
		}
	}
	var before []string
	for i := range 3000 {
		before = append(before, fmt.Sprintf("before-%d", i))
	}
	confirm(s, before[:2000]...)
	if err := s.buf.flush(); err != nil { // some in Pebble, the rest buffered
		t.Fatal(err)
	}
	confirm(s, before[2000:]...)
	dir := filepath.Join(t.TempDir(), "copy")
	if err := s.Checkpoint(dir); err != nil {
		t.Fatal(err)
	}
	confirm(s, "after")
	c := open(t, dir, clk, WithWriteBuffer(1<<20))
	defer c.Close()
	reqs := []ClaimRequest{{Key: before[0]}, {Key: before[1999]}, {Key: before[2999]}, {Key: "after"}}
	res := make([]ClaimResult, len(reqs))
	if err := c.Claim(ctx, reqs, res); err != nil {
		t.Fatal(err)
	}
	for i, r := range res[:3] {
		if r.Status != Duplicate || r.OriginalID != "id-"+reqs[i].Key {
			t.Errorf("copy: %s = %v %q, want a duplicate of id-%s", reqs[i].Key, r.Status, r.OriginalID, reqs[i].Key)
		}
	}
	if res[3].Status != Claimed {
		t.Errorf("copy: a key confirmed after the checkpoint = %v, want new", res[3].Status)
	}
	if err := s.Checkpoint(dir); err == nil {
		t.Error("a checkpoint into an existing directory succeeded")
	}
}
