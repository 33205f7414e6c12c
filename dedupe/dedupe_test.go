package dedupe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{now: time.Unix(1_800_000_000, 0)} }

func open(t testing.TB, dir string, clk *clock, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, append([]Option{WithCreate(), WithClock(clk.Now), WithReclaimInterval(0), WithSync(false)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var ctx = context.Background()

// claimBoth claims reqs on two stores that must agree, for tests that
// compare a store with a feature against one without it.
func claimBoth(t testing.TB, a, b *Store, reqs []ClaimRequest) (outA, outB []ClaimResult) {
	t.Helper()
	outA, outB = make([]ClaimResult, len(reqs)), make([]ClaimResult, len(reqs))
	if err := a.Claim(ctx, reqs, outA); err != nil {
		t.Fatal(err)
	}
	if err := b.Claim(ctx, reqs, outB); err != nil {
		t.Fatal(err)
	}
	return outA, outB
}

// lookupBoth looks keys up on both stores and fails on the first answer
// they differ in; what names the feature a has and b lacks.
func lookupBoth(t testing.TB, a, b *Store, keys []string, what string) []LookupResult {
	t.Helper()
	la, err := a.Lookup(keys, "")
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.Lookup(keys, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if la[i] != lb[i] {
			t.Fatalf("lookup %q: with %s %+v, without %+v", keys[i], what, la[i], lb[i])
		}
	}
	return la
}

func claim1(t testing.TB, s *Store, key, scope, id string) ClaimResult {
	t.Helper()
	out := make([]ClaimResult, 1)
	if err := s.Claim(ctx, []ClaimRequest{{Key: key, Scope: scope, ID: id}}, out); err != nil {
		t.Fatal(err)
	}
	return out[0]
}

func confirm1(t testing.TB, s *Store, key string, r ClaimResult, outcome string) {
	t.Helper()
	if err := s.Confirm(ctx, []Done{{Key: key, Token: r.Token, ID: r.OriginalID, Outcome: outcome}}); err != nil {
		t.Fatal(err)
	}
}

func TestClaimConfirmDuplicate(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk)
	defer s.Close()
	r := claim1(t, s, "otp-1", "", "id-A")
	if r.Status != Claimed || !r.Status.ShouldSend() || r.OriginalID != "id-A" {
		t.Fatalf("%+v", r)
	}
	if r2 := claim1(t, s, "otp-1", "", "id-B"); r2.Status != InFlight || r2.OriginalID != "id-A" || r2.Status.ShouldSend() {
		t.Fatalf("claim during a live lease: %+v", r2)
	}
	confirm1(t, s, "otp-1", r, "SM123")
	r3 := claim1(t, s, "otp-1", "", "id-C")
	if r3.Status != Duplicate || r3.OriginalID != "id-A" || r3.Outcome != "SM123" {
		t.Fatalf("after confirm: %+v", r3)
	}
	lr, err := s.Lookup([]string{"otp-1", "never"}, "")
	if err != nil || !lr[0].Found || !lr[0].Confirmed || lr[0].ID != "id-A" || lr[1].Found {
		t.Fatalf("lookup %+v %v", lr, err)
	}
	m := s.Metrics()
	if m.Claims != 1 || m.Hits != 1 || m.InFlight != 1 || m.Confirms != 1 {
		t.Fatalf("metrics %v", m)
	}
}

// Pebble charges memtables to the block cache: a cache no larger than the
// memtables kept no block. Lookups that reach Pebble hit its cache.
func TestLookupsHitTheBlockCache(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	opts := []Option{WithCacheSize(1 << 20), WithFilter(0), WithRecent(0)}
	s := open(t, dir, clk, opts...)
	for i := range 1000 {
		key := fmt.Sprintf("k%d", i)
		confirm1(t, s, key, claim1(t, s, key, "", "id"), "sent")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, clk, opts...) // the write buffer's logs ingested as sstables
	defer s.Close()
	for range 2 {
		if lr, err := s.Lookup([]string{"k500"}, ""); err != nil || !lr[0].Found {
			t.Fatalf("lookup %+v %v", lr, err)
		}
	}
	if m := s.Metrics(); m.CacheHits == 0 || s.db.Metrics().BlockCache.Size == 0 {
		t.Fatalf("block cache: %d hits, %d misses: the second lookup found nothing cached", m.CacheHits, m.CacheMisses)
	}
}

func TestReleaseAllowsRetry(t *testing.T) {
	s := open(t, t.TempDir(), newClock())
	defer s.Close()
	r := claim1(t, s, "k", "", "a")
	if err := s.Release(ctx, []Done{{Key: "k", Token: r.Token}}); err != nil {
		t.Fatal(err)
	}
	if r2 := claim1(t, s, "k", "", "b"); r2.Status != Claimed || r2.OriginalID != "b" {
		t.Fatalf("after release: %+v", r2)
	}
}

// A claim renewed before its send keeps its key past the lease it was
// taken with; one taken over meanwhile, or confirmed, is not the renewer's
// to send; one nobody holds any more is claimed anew.
func TestRenewHoldsClaims(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithLease(10*time.Second))
	defer s.Close()
	renew1 := func(key, id string, seq uint64) ClaimResult {
		t.Helper()
		out := make([]ClaimResult, 1)
		if err := s.Renew(ctx, []RenewRequest{{ClaimRequest{Key: key, ID: id}, seq}}, out); err != nil {
			t.Fatal(err)
		}
		return out[0]
	}

	held := claim1(t, s, "held", "", "a")
	clk.Add(8 * time.Second)
	if r := renew1("held", "a", held.Seq); r.Status != Claimed || r.Seq != held.Seq || r.OriginalID != "a" {
		t.Fatalf("renewed in time: %+v", r)
	}
	clk.Add(8 * time.Second) // 16 s after the claim, 8 after the renewal
	if r := claim1(t, s, "held", "", "b"); r.Status != InFlight || r.OriginalID != "a" {
		t.Fatalf("a later record of a renewed key: %+v, want in-flight", r)
	}

	late := claim1(t, s, "late", "", "a")
	clk.Add(11 * time.Second) // not renewed: a later record takes it over
	over := claim1(t, s, "late", "", "b")
	if over.Status != TakenOver || over.Seq == late.Seq {
		t.Fatalf("takeover: %+v after %+v", over, late)
	}
	if r := renew1("late", "a", late.Seq); r.Status.ShouldSend() || r.OriginalID != "b" {
		t.Fatalf("renewing a claim taken over: %+v, want b's", r)
	}
	if err := s.Confirm(ctx, []Done{{Key: "late", Token: over.Token, ID: "b", Outcome: "sent"}}); err != nil {
		t.Fatal(err)
	}
	if r := renew1("late", "a", late.Seq); r.Status != Duplicate || r.OriginalID != "b" {
		t.Fatalf("renewing after the key was confirmed: %+v", r)
	}

	gone := claim1(t, s, "gone", "", "a")
	clk.Add(31 * time.Second) // past two leases after the first ran out
	s.sweepAbandoned(clk.Now())
	if r := renew1("gone", "a", gone.Seq); r.Status != Claimed || r.Seq == gone.Seq || r.OriginalID != "a" {
		t.Fatalf("renewing a swept claim: %+v", r)
	}
	if r := renew1("none", "a", 0); r.Status != Claimed {
		t.Fatalf("a request without a claim is claimed: %+v", r)
	}
}

func TestReleaseDropsItsOwnClaimOnly(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithLease(10*time.Second), WithUncertainPolicy("email", Skip))
	defer s.Close()
	release1 := func(key, id string, r ClaimResult) {
		t.Helper()
		if err := s.Release(ctx, []Done{{Key: key, Token: r.Token, ID: id, Seq: r.Seq}}); err != nil {
			t.Fatal(err)
		}
	}

	// a's send outlived its lease; b took the key over, then a failed.
	slow := claim1(t, s, "k", "", "a")
	clk.Add(11 * time.Second)
	over := claim1(t, s, "k", "", "b")
	release1("k", "a", slow)
	if r := claim1(t, s, "k", "", "c"); r.Status != InFlight || r.OriginalID != "b" {
		t.Fatalf("after a released a claim b holds: %+v, want b's in flight", r)
	}
	if err := s.Confirm(ctx, []Done{{Key: "k", Token: over.Token, ID: "b", Outcome: "sent"}}); err != nil {
		t.Fatal(err)
	}
	release1("k", "a", slow) // again, once b's send is confirmed
	if r := claim1(t, s, "k", "", "c"); r.Status != Duplicate || r.OriginalID != "b" {
		t.Fatalf("after a released a key b confirmed: %+v, want b's duplicate", r)
	}

	own := claim1(t, s, "mine", "", "a")
	release1("mine", "a", own)
	if r := claim1(t, s, "mine", "", "a"); r.Status != Claimed {
		t.Fatalf("a released claim is claimed anew: %+v", r)
	}

	// A Skip scope persists its claims: a claim swept from memory (its
	// send slower than two leases) still releases its own stored claim,
	// else the retry would be taken for an uncertain send and skipped.
	kept := claim1(t, s, "mail", "email", "m")
	clk.Add(31 * time.Second)
	s.sweepAbandoned(clk.Now())
	release1("mail", "m", kept)
	if r := claim1(t, s, "mail", "email", "m"); r.Status != Claimed {
		t.Fatalf("a swept Skip claim released by its own: %+v, want claimed", r)
	}

	first := claim1(t, s, "bare", "", "a")
	clk.Add(11 * time.Second)
	claim1(t, s, "bare", "", "b")
	if err := s.Release(ctx, []Done{{Key: "bare", Token: first.Token, ID: "a"}}); err != nil {
		t.Fatal(err)
	}
	if r := claim1(t, s, "bare", "", "c"); r.Status != Claimed {
		t.Fatalf("a release without a Seq drops whatever holds the key: %+v", r)
	}
	if got := s.Metrics().Releases; got != 3 {
		t.Fatalf("releases counted %d, want the 3 that dropped a claim", got)
	}
}

func TestExpiredLeaseTakeoverPolicies(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithLease(10*time.Second), WithUncertainPolicy("email", Skip))
	defer s.Close()
	claim1(t, s, "sms-k", "sms", "a")
	claim1(t, s, "mail-k", "email", "m")
	clk.Add(11 * time.Second) // the claimant died without confirm or release
	r := claim1(t, s, "sms-k", "sms", "b")
	if r.Status != TakenOver || !r.Status.ShouldSend() || r.OriginalID != "b" {
		t.Fatalf("resend policy: %+v", r)
	}
	if r2 := claim1(t, s, "sms-k", "sms", "c"); r2.Status != InFlight {
		t.Fatalf("taken-over claim holds a new lease: %+v", r2)
	}
	m := claim1(t, s, "mail-k", "email", "n")
	if m.Status != Uncertain || m.Status.ShouldSend() || m.OriginalID != "m" {
		t.Fatalf("skip policy: %+v", m)
	}
	if m2 := claim1(t, s, "mail-k", "email", "o"); m2.Status != Duplicate || m2.Outcome != "uncertain" {
		t.Fatalf("after skip: %+v", m2)
	}
	if got := s.Metrics(); got.TakenOver != 1 || got.Uncertain != 1 {
		t.Fatalf("metrics %v", got)
	}
}

func TestRepeatsInOneBatch(t *testing.T) {
	s := open(t, t.TempDir(), newClock())
	defer s.Close()
	reqs := []ClaimRequest{{Key: "x", ID: "1"}, {Key: "y", ID: "2"}, {Key: "x", ID: "3"}}
	out := make([]ClaimResult, 3)
	if err := s.Claim(ctx, reqs, out); err != nil {
		t.Fatal(err)
	}
	if out[0].Status != Claimed || out[1].Status != Claimed || out[2].Status != InFlight || out[2].OriginalID != "1" {
		t.Fatalf("%+v", out)
	}
}

func TestWindowsPerScope(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithWindow(24*time.Hour), WithScopeWindow("tenant-otp", time.Hour))
	defer s.Close()
	for _, k := range []string{"a", "b"} {
		r := claim1(t, s, k, map[string]string{"a": "", "b": "tenant-otp"}[k], "id-"+k)
		confirm1(t, s, k, r, "ok")
	}
	clk.Add(2 * time.Hour)
	if r := claim1(t, s, "a", "", "x"); r.Status != Duplicate {
		t.Fatalf("24 h scope forgot after 2 h: %+v", r)
	}
	if r := claim1(t, s, "b", "tenant-otp", "y"); r.Status != Claimed {
		t.Fatalf("1 h scope still deduplicates after 2 h: %+v", r)
	}
	clk.Add(23 * time.Hour)
	if r := claim1(t, s, "a", "", "z"); r.Status != Claimed {
		t.Fatalf("24 h scope after 25 h: %+v", r)
	}
}

func TestConcurrentClaimsOneWinner(t *testing.T) {
	s := open(t, t.TempDir(), newClock())
	defer s.Close()
	const workers, keys = 8, 300
	winners := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			reqs := make([]ClaimRequest, keys)
			for i := range reqs {
				reqs[i] = ClaimRequest{Key: fmt.Sprintf("k%d", (i*7+w)%keys), ID: fmt.Sprint(w)}
			}
			out := make([]ClaimResult, keys)
			if err := s.Claim(ctx, reqs, out); err != nil {
				t.Error(err)
				return
			}
			for i, r := range out {
				if r.Status == Claimed {
					winners[w] = append(winners[w], reqs[i].Key)
				}
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, ks := range winners {
		for _, k := range ks {
			if seen[k] {
				t.Fatalf("key %s claimed twice", k)
			}
			seen[k] = true
		}
	}
	if len(seen) != keys {
		t.Fatalf("%d keys claimed, want %d", len(seen), keys)
	}
}

func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := open(t, dir, clk)
	r := claim1(t, s, "k", "", "orig")
	confirm1(t, s, "k", r, "sent")
	s.Close()
	s = open(t, dir, clk)
	defer s.Close()
	if r := claim1(t, s, "k", "", "new"); r.Status != Duplicate || r.OriginalID != "orig" {
		t.Fatalf("after restart: %+v", r)
	}
}

// TestConfirmNoSync: an unsynced confirm deduplicates like a synced one,
// and survives a clean restart.
func TestConfirmNoSync(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := open(t, dir, clk)
	r := claim1(t, s, "k", "", "orig")
	if err := s.ConfirmNoSync(ctx, []Done{{Key: "k", Token: r.Token, ID: "orig", Outcome: "accepted"}}); err != nil {
		t.Fatal(err)
	}
	if r := claim1(t, s, "k", "", "again"); r.Status != Duplicate || r.OriginalID != "orig" || r.Outcome != "accepted" {
		t.Fatalf("after ConfirmNoSync: %+v", r)
	}
	s.Close()
	s = open(t, dir, clk)
	defer s.Close()
	if r := claim1(t, s, "k", "", "new"); r.Status != Duplicate || r.OriginalID != "orig" {
		t.Fatalf("after restart: %+v", r)
	}
}

func TestMissingOrCorruptFailsLoudly(t *testing.T) {
	clk := newClock()
	gone := filepath.Join(t.TempDir(), "dedupe")
	if _, err := Open(gone, WithClock(clk.Now)); !errors.Is(err, ErrMissing) {
		t.Fatalf("missing directory: %v", err)
	}
	empty := t.TempDir()
	if _, err := Open(empty, WithClock(clk.Now)); err == nil {
		t.Fatal("an existing directory without a store opened without WithCreate")
	}
	dir := t.TempDir()
	s := open(t, dir, clk)
	claim1(t, s, "k", "", "x")
	s.Close()
	// Damage every manifest: the store must refuse to open, not start empty.
	manifests, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	for _, m := range manifests {
		os.WriteFile(m, []byte("this is not a manifest"), 0o644)
	}
	if s, err := Open(dir, WithClock(clk.Now)); err == nil {
		s.Close()
		t.Fatal("corrupt store opened")
	}
	dir2 := t.TempDir()
	open(t, dir2, clk, WithBucket(time.Hour)).Close()
	if _, err := Open(dir2, WithClock(clk.Now), WithBucket(2*time.Hour)); !errors.Is(err, ErrLayout) {
		t.Fatalf("bucket size changed: %v", err)
	}
}

func dirSize(t testing.TB, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// TestDiskBoundedOverManyWindows claims 10,000 new keys per (fake) second
// for twenty windows and reclaims as the server would: the directory must
// stop growing once the first windows have passed, while every key inside
// its window still deduplicates.
func TestDiskBoundedOverManyWindows(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	const window, perSec, windows = 2 * time.Second, 10_000, 20
	// The memtable and write buffer are sized down with the test: at their
	// defaults they alone would hold more than its 200,000 keys.
	s := open(t, dir, clk, WithWindow(window), WithBucket(time.Second), WithMemTableSize(1<<20), WithWriteBuffer(1<<20))
	defer s.Close()
	reqs := make([]ClaimRequest, 1000)
	out := make([]ClaimResult, len(reqs))
	done := make([]Done, len(reqs))
	var sizes []int64
	seq := 0
	for sec := 0; sec < int(window/time.Second)*windows; sec++ {
		for range perSec / len(reqs) {
			for i := range reqs {
				reqs[i] = ClaimRequest{Key: fmt.Sprintf("tenant-%d/key-%012d", seq%7, seq), ID: fmt.Sprint(seq)}
				seq++
			}
			if err := s.Claim(ctx, reqs, out); err != nil {
				t.Fatal(err)
			}
			for i := range out {
				if out[i].Status != Claimed {
					t.Fatalf("new key %s: %v", reqs[i].Key, out[i].Status)
				}
				done[i] = Done{Key: reqs[i].Key, Token: out[i].Token, ID: reqs[i].ID, Outcome: "ok"}
			}
			if err := s.Confirm(ctx, done); err != nil {
				t.Fatal(err)
			}
		}
		// A key claimed a second ago is still a duplicate.
		if r := claim1(t, s, reqs[0].Key, "", "again"); r.Status != Duplicate {
			t.Fatalf("key inside its window: %v", r.Status)
		}
		clk.Add(time.Second)
		if err := s.Reclaim(ctx); err != nil {
			t.Fatal(err)
		}
		if (sec+1)%int(window/time.Second) == 0 {
			sizes = append(sizes, dirSize(t, dir))
		}
	}
	t.Logf("directory size at the end of each window: %v", sizes)
	// A snapshot finds the write buffer's log anywhere from empty to full
	// (1 MiB here) and a compaction's inputs perhaps not deleted yet, so
	// one window's size may be ~2.5 times another's. Growth without bound
	// is 2 windows' keys more each window: by the last, 7 times the third.
	settled := slices.Max(sizes[1:4])
	for w, sz := range sizes[4:] {
		if sz > settled*3 {
			t.Fatalf("window %d: %d bytes, more than three times the %d of windows 2-4: disk is not bounded (%v)", w+5, sz, settled, sizes)
		}
	}
	if last, total := sizes[len(sizes)-1], int64(seq)*60; last > total/3 {
		t.Fatalf("%d bytes on disk after %d keys (~%d bytes written): reclaim is not working", last, seq, total)
	}
	if m := s.Metrics(); m.Reclaims == 0 || m.BucketFloor == 0 {
		t.Fatalf("metrics %v", m)
	}
}

// Under Resend a claim lives in memory: after a crash between claim and
// confirm the key is simply claimable again. Under Skip the claim is on
// disk, and after its lease the uncertain send is closed, not repeated.
func TestCrashBetweenClaimAndConfirm(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	opts := []Option{WithLease(5 * time.Second), WithUncertainPolicy("email", Skip)}
	s := open(t, dir, clk, opts...)
	claim1(t, s, "sms-k", "sms", "a")
	claim1(t, s, "mail-k", "email", "m")
	s.Close() // no confirm: the process died mid-send
	s = open(t, dir, clk, opts...)
	defer s.Close()
	if r := claim1(t, s, "sms-k", "sms", "b"); r.Status != Claimed {
		t.Fatalf("resend scope after crash: %+v", r)
	}
	if r := claim1(t, s, "mail-k", "email", "n"); r.Status != InFlight || r.OriginalID != "m" {
		t.Fatalf("skip scope within the dead claimant's lease: %+v", r)
	}
	clk.Add(6 * time.Second)
	if r := claim1(t, s, "mail-k", "email", "n"); r.Status != Uncertain || r.OriginalID != "m" {
		t.Fatalf("skip scope after the lease: %+v", r)
	}
}

func TestOpenClaimsBounded(t *testing.T) {
	clk := newClock()
	s := open(t, t.TempDir(), clk, WithMaxOpenClaims(2), WithLease(time.Second))
	defer s.Close()
	claim1(t, s, "a", "", "1")
	claim1(t, s, "b", "", "2")
	out := make([]ClaimResult, 1)
	if err := s.Claim(ctx, []ClaimRequest{{Key: "c", ID: "3"}}, out); !errors.Is(err, ErrTooManyClaims) {
		t.Fatalf("third open claim: %v", err)
	}
	// Abandoned claims are forgotten after twice their lease.
	clk.Add(4 * time.Second)
	if err := s.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	if r := claim1(t, s, "c", "", "3"); r.Status != Claimed {
		t.Fatalf("%+v", r)
	}
}

// TestClaimRacingConfirm: while one claimant confirms keys, another keeps
// claiming them. The second must only ever see InFlight and then
// Duplicate, never a claim of its own, however its disk lookup and the
// confirm's write interleave (the lookup runs outside the claim lock).
func TestClaimRacingConfirm(t *testing.T) {
	s := open(t, t.TempDir(), newClock(), WithSync(false))
	defer s.Close()
	const n = 3000
	claimed := make(chan string, n)
	errs := make(chan error, 2)
	quit := make(chan struct{})
	stopped := func() bool {
		select {
		case <-quit:
			return true
		default:
			return false
		}
	}
	go func() {
		defer close(claimed)
		for i := range n {
			if stopped() {
				break
			}
			k := fmt.Sprintf("race-%d", i)
			var out [1]ClaimResult
			if err := s.Claim(ctx, []ClaimRequest{{Key: k, ID: "first"}}, out[:]); err != nil || out[0].Status != Claimed {
				errs <- fmt.Errorf("first claim of %s: %v %v", k, out[0].Status, err)
				return
			}
			claimed <- k
			if err := s.Confirm(ctx, []Done{{Key: k, Token: out[0].Token, ID: "first", Outcome: "sent"}}); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for k := range claimed {
			for !stopped() {
				var out [1]ClaimResult
				if err := s.Claim(ctx, []ClaimRequest{{Key: k, ID: "second"}}, out[:]); err != nil {
					errs <- err
					return
				}
				if out[0].Status.ShouldSend() {
					errs <- fmt.Errorf("%s claimed twice (%v) while its first claim was being confirmed", k, out[0].Status)
					return
				}
				if out[0].Status == Duplicate {
					break
				}
			}
		}
		errs <- nil
	}()
	var first error
	for range 2 {
		if err := <-errs; err != nil && first == nil {
			first = err
			close(quit) // the other goroutine stops before the store closes
		}
	}
	if first != nil {
		t.Fatal(first)
	}
}

// Entries are written compact and read in both forms: a store written
// before the compact form keeps answering for its keys.
func TestEntryForms(t *testing.T) {
	for _, e := range []entry{
		{state: stateConfirmed, claimedAt: 1795667791472846500, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "accepted"},
		{state: stateConfirmed, claimedAt: 1795667791472846500, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "SM5f2a"},
		{state: stateClaimed, claimedAt: 1795667791472846500, leaseTill: 1795667821472846500, id: "01jd3zq8x4k2m9n7p5r3t1v0wy"},
		{state: stateConfirmed, claimedAt: 3, id: "order-42", outcome: "uncertain"},
		{state: stateClaimed, claimedAt: -1, leaseTill: -2, id: "x"}, // only the fixed form holds these
	} {
		for form, b := range map[string][]byte{"compact": e.append(nil), "fixed": e.appendFixed(nil)} {
			got, err := parseEntry(b)
			if err != nil || got != e {
				t.Fatalf("%s form of %+v read back as %+v, %v", form, e, got, err)
			}
		}
	}
	ingest := entry{state: stateConfirmed, claimedAt: 1795667791472846500, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "accepted"}
	if c, f := len(ingest.append(nil)), len(ingest.appendFixed(nil)); c > 30 || f != 53 {
		t.Fatalf("an ingest entry takes %d bytes compact, %d fixed; want at most 30 and 53", c, f)
	}
}

// A store holding entries in the fixed form (as written before the compact
// one) still answers for their keys after an upgrade, beside new entries.
func TestFixedFormEntriesStillAnswer(t *testing.T) {
	clk, dir := newClock(), t.TempDir()
	s := open(t, dir, clk)
	old := entry{state: stateConfirmed, claimedAt: clk.Now().UnixNano(), id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "SM-old"}
	stored := string(s.appendDigest(nil, "acme\x00old-key"))
	if err := s.db.Set(entryKey(nil, s.bucketOf(clk.Now()), stored), old.appendFixed(nil), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	confirm1(t, s, "acme\x00new-key", claim1(t, s, "acme\x00new-key", "sms", "01JD3ZQ8X4K2M9N7P5R3T1V0WZ"), "SM-new")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, clk) // the filters are rebuilt from what is on disk
	defer s.Close()
	for key, want := range map[string]ClaimResult{
		"acme\x00old-key": {Status: Duplicate, OriginalID: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", Outcome: "SM-old"},
		"acme\x00new-key": {Status: Duplicate, OriginalID: "01JD3ZQ8X4K2M9N7P5R3T1V0WZ", Outcome: "SM-new"},
	} {
		got := claim1(t, s, key, "sms", "01JD3ZQ8X4K2M9N7P5R3T1V0X0")
		if got.Status != want.Status || got.OriginalID != want.OriginalID || got.Outcome != want.Outcome {
			t.Fatalf("%q: %+v, want %+v", key, got, want)
		}
	}
}

// TestLegacyKeysStillAnswer opens a store as it was before keys were stored
// as digests (entries under the keys themselves, no key-form marker): its
// keys must answer until the window has passed them, the writes since go
// under digests and win, and the secret survives a reopen.
func TestLegacyKeysStillAnswer(t *testing.T) {
	clk, dir := newClock(), t.TempDir()
	s := open(t, dir, clk, WithUncertainPolicy("push", Skip))
	if s.form.legacy {
		t.Fatal("a new store has no legacy keys")
	}
	b := s.bucketOf(clk.Now())
	for key, e := range map[string]entry{
		"acme\x00sent":  {state: stateConfirmed, claimedAt: clk.Now().UnixNano(), id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "SM-1"},
		"acme\x00fixed": {state: stateConfirmed, claimedAt: clk.Now().UnixNano(), id: "id-fixed", outcome: "SM-2"},
		// A Skip scope's claim whose lease ran out before the upgrade.
		"acme\x00claimed": {state: stateClaimed, claimedAt: clk.Now().UnixNano(), leaseTill: clk.Now().Add(time.Second).UnixNano(), id: "id-claimed"},
	} {
		v := e.append(nil)
		if key == "acme\x00fixed" {
			v = e.appendFixed(nil)
		}
		if err := s.db.Set(entryKey(nil, b, key), v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	// As before the digests: no key form, the layout the bucket size alone.
	if err := s.db.Delete(keyFormKey, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Set(layoutKey, binary.BigEndian.AppendUint64(nil, uint64(s.bucketSec)), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	s = open(t, dir, clk, WithUncertainPolicy("push", Skip))
	if !s.form.legacy || s.form.legacyTop < b {
		t.Fatalf("key form %+v: want legacy up to at least bucket %d", s.form, b)
	}
	// An older binary, which reads the layout as the bucket size alone,
	// must now refuse the store rather than miss its digests.
	if v, closer, err := s.db.Get(layoutKey); err != nil || len(v) == 8 {
		t.Fatalf("layout %x, %v: an older binary would open this store", v, err)
	} else {
		closer.Close()
	}
	want := map[string]ClaimResult{
		"acme\x00sent":    {Status: Duplicate, OriginalID: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", Outcome: "SM-1"},
		"acme\x00fixed":   {Status: Duplicate, OriginalID: "id-fixed", Outcome: "SM-2"},
		"acme\x00claimed": {Status: Uncertain, OriginalID: "id-claimed", Outcome: "uncertain"},
		"acme\x00new":     {Status: Claimed, OriginalID: "id-new"},
	}
	check := func(when string, want map[string]ClaimResult) {
		t.Helper()
		for key, w := range want {
			got := claim1(t, s, key, "push", "id-new")
			if got.Status != w.Status || got.OriginalID != w.OriginalID || got.Outcome != w.Outcome {
				t.Fatalf("%s: %q: %+v, want %+v", when, key, got, w)
			}
			if got.Status == Claimed {
				confirm1(t, s, key, got, "SM-new")
			}
		}
	}
	check("after the upgrade", want)
	lr, err := s.Lookup([]string{"acme\x00sent", "acme\x00never"}, "push")
	if err != nil || !lr[0].Found || lr[0].ID != "01JD3ZQ8X4K2M9N7P5R3T1V0WY" || lr[1].Found {
		t.Fatalf("lookup %+v %v", lr, err)
	}
	// The uncertain outcome and the new key went under digests, which win
	// over the legacy claim; the secret they were made with is kept.
	after := map[string]ClaimResult{
		"acme\x00sent":    want["acme\x00sent"],
		"acme\x00claimed": {Status: Duplicate, OriginalID: "id-claimed", Outcome: "uncertain"},
		"acme\x00new":     {Status: Duplicate, OriginalID: "id-new", Outcome: "SM-new"},
	}
	check("again", after)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, clk, WithUncertainPolicy("push", Skip))
	defer s.Close()
	check("after a reopen", after)
	if _, _, ok := s.legacyRange(clk.Now()); !ok {
		t.Fatal("legacy buckets are still in the window")
	}
	clk.Add(s.maxWindow + 2*time.Duration(s.bucketSec)*time.Second)
	if err := s.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.legacyRange(clk.Now()); ok {
		t.Fatal("lookups still search legacy buckets the window has passed")
	}
}

// Keys another node confirmed answer Duplicate here, with that node's id
// and outcome, for their scope's window counted from their own time; they
// survive a restart, and a claim this process holds is not disturbed.
func TestRemember(t *testing.T) {
	t.Run("filters", func(t *testing.T) { testRemember(t) })
	t.Run("recent", func(t *testing.T) { testRemember(t, WithRecent(1<<20)) })
}

func testRemember(t *testing.T, extra ...Option) {
	dir := t.TempDir()
	clk := newClock()
	opts := append([]Option{WithWindow(24 * time.Hour), WithScopeWindow("otp", time.Hour)}, extra...)
	s := open(t, dir, clk, opts...)
	now := clk.Now()
	mine := claim1(t, s, "mine", "", "id-mine")
	// Sent here, confirmed, then sent by another node after a release here.
	confirm1(t, s, "k-here", claim1(t, s, "k-here", "", "id-here"), "sent")
	rel := claim1(t, s, "k-released", "", "id-failed")
	if err := s.Release(ctx, []Done{{Key: "k-released", Token: rel.Token, ID: rel.OriginalID}}); err != nil {
		t.Fatal(err)
	}
	err := s.Remember(ctx, []Remembered{
		{Key: "k-here", ID: "id-there", Outcome: "sent", At: now},
		{Key: "k-released", ID: "id-there-2", Outcome: "sent", At: now},
		{Key: "k-day", ID: "id-1", Outcome: "SM1", At: now.Add(-23 * time.Hour)},
		{Key: "k-otp", Scope: "otp", ID: "id-2", Outcome: "sent", At: now.Add(-30 * time.Minute)},
		{Key: "k-old", Scope: "otp", ID: "id-3", Outcome: "sent", At: now.Add(-61 * time.Minute)},
		{Key: "mine", ID: "id-other", Outcome: "sent", At: now},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Metrics().Remembered; got != 5 {
		t.Fatalf("remembered %d keys, want 5 (one was out of its window)", got)
	}
	for key, want := range map[string]string{"k-here": "id-there", "k-released": "id-there-2"} {
		if r := claim1(t, s, key, "", "again"); r.Status != Duplicate || r.OriginalID != want {
			t.Fatalf("%s remembered after its entry here: %+v, want a duplicate of %s", key, r, want)
		}
	}
	if r := claim1(t, s, "k-day", "", "x"); r.Status != Duplicate || r.OriginalID != "id-1" || r.Outcome != "SM1" {
		t.Fatalf("a remembered key: %+v", r)
	}
	if r := claim1(t, s, "k-old", "otp", "y"); r.Status != Claimed {
		t.Fatalf("a key remembered past its window: %+v", r)
	}
	if r := claim1(t, s, "mine", "", "z"); r.Status != InFlight || r.OriginalID != "id-mine" {
		t.Fatalf("this process's live claim: %+v", r)
	}
	confirm1(t, s, "mine", mine, "sent")
	s.Close()

	s = open(t, dir, clk, opts...)
	defer s.Close()
	if r := claim1(t, s, "k-otp", "otp", "w"); r.Status != Duplicate || r.OriginalID != "id-2" {
		t.Fatalf("a remembered key after a restart: %+v", r)
	}
	if r := claim1(t, s, "mine", "", "v"); r.Status != Duplicate || r.OriginalID != "id-mine" {
		t.Fatalf("the confirm of this process's claim after a remembered write: %+v", r)
	}
	// The window runs from the other node's time, not from Remember's.
	clk.Add(31 * time.Minute)
	if r := claim1(t, s, "k-otp", "otp", "u"); r.Status != Claimed {
		t.Fatalf("a remembered key an hour after its time: %+v", r)
	}
	clk.Add(23 * time.Hour)
	if r := claim1(t, s, "k-day", "", "t"); r.Status != Claimed {
		t.Fatalf("a remembered key a day after its time: %+v", r)
	}
}

// Forget drops a remembered key only while it names the notification
// given: a key remembered again for another, or confirmed here meanwhile,
// stays; a dropped key is claimed anew, after a reopen too.
func TestForget(t *testing.T) {
	t.Run("filters", func(t *testing.T) { testForget(t) })
	t.Run("recent", func(t *testing.T) { testForget(t, WithRecent(1<<20)) })
}

func testForget(t *testing.T, extra ...Option) {
	dir := t.TempDir()
	clk := newClock()
	opts := append([]Option{WithWindow(24 * time.Hour)}, extra...)
	s := open(t, dir, clk, opts...)
	now := clk.Now()
	confirm1(t, s, "k-here", claim1(t, s, "k-here", "", "id-here"), "accepted")
	mine := claim1(t, s, "k-live", "", "id-live")
	err := s.Remember(ctx, []Remembered{
		{Key: "k-gone", ID: "id-gone", Outcome: "accepted", At: now},
		{Key: "k-again", ID: "id-first", Outcome: "accepted", At: now},
		{Key: "k-again", ID: "id-second", Outcome: "accepted", At: now.Add(time.Millisecond)},
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Forget(ctx, []Remembered{
		{Key: "k-gone", ID: "id-gone"},
		{Key: "k-again", ID: "id-first"},    // since remembered for id-second
		{Key: "k-here", ID: "id-elsewhere"}, // confirmed here for id-here
		{Key: "k-live", ID: "id-live"},      // a live claim, not an entry
		{Key: "k-never", ID: "id-never"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Metrics().Forgotten; got != 1 {
		t.Fatalf("forgot %d keys, want 1", got)
	}
	check := func(when string) {
		t.Helper()
		for key, want := range map[string]string{"k-again": "id-second", "k-here": "id-here"} {
			if r := claim1(t, s, key, "", "x-"+when); r.Status != Duplicate || r.OriginalID != want {
				t.Fatalf("%s %s: %+v, want a duplicate of %s", key, when, r, want)
			}
		}
	}
	check("after the forget")
	if r := claim1(t, s, "k-live", "", "y"); r.Status != InFlight || r.OriginalID != "id-live" {
		t.Fatalf("the live claim after the forget: %+v", r)
	}
	confirm1(t, s, "k-live", mine, "accepted")
	gone := claim1(t, s, "k-gone", "", "id-resent")
	if gone.Status != Claimed {
		t.Fatalf("the forgotten key: %+v, want claimed anew", gone)
	}
	if err := s.Release(ctx, []Done{{Key: "k-gone", Token: gone.Token, ID: gone.OriginalID, Seq: gone.Seq}}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, dir, clk, opts...)
	defer s.Close()
	check("after a reopen")
	if r := claim1(t, s, "k-gone", "", "id-resent"); r.Status != Claimed {
		t.Fatalf("the forgotten key after a reopen: %+v, want claimed anew", r)
	}
}
