package dedupe

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func (r *recent) put(bucket uint32, key, val []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putLocked(bucket, key, val)
}

func (r *recent) get(key string, oldest uint32) (found, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.getLocked(key, oldest)
}

func recentEntry(id string) []byte {
	return (&entry{state: stateConfirmed, claimedAt: 1, id: id, outcome: "sent"}).append(nil)
}

// The cache answers what was put last, forgets what was dropped, hides
// buckets below the floor asked for, and stays within its budget by
// dropping the oldest entries first.
func TestRecentBoundedNewestWins(t *testing.T) {
	r := newRecent(4 * slabBytes)
	r.put(7, []byte("k"), recentEntry("first"))
	r.put(8, []byte("k"), recentEntry("second"))
	if f, ok := r.get("k", 0); !ok || f.bucket != 8 || f.e.id != "second" {
		t.Fatalf("got %+v %v, want bucket 8 id second", f, ok)
	}
	if _, ok := r.get("k", 9); ok {
		t.Fatal("an entry below the oldest live bucket was answered")
	}
	r.apply([]writeOp{{key: entryKey(nil, 8, "k"), del: true}})
	if _, ok := r.get("k", 0); ok {
		t.Fatal("a dropped key was answered")
	}

	const n = 200_000 // about 20 MiB of records: several times the budget
	for i := range n {
		r.put(9, fmt.Appendf(nil, "key-%07d", i), recentEntry(fmt.Sprintf("id-%07d", i)))
		if got := r.bytes(); got > r.budget+2*slabBytes {
			t.Fatalf("after %d puts: %d bytes used, budget %d", i, got, r.budget)
		}
	}
	if _, ok := r.get("key-0000000", 0); ok {
		t.Fatal("the oldest key survived eviction")
	}
	f, ok := r.get(fmt.Sprintf("key-%07d", n-1), 0)
	if !ok || f.e.id != fmt.Sprintf("id-%07d", n-1) {
		t.Fatalf("the newest key: %+v %v", f, ok)
	}
	if got := r.len(); got == 0 || got >= n {
		t.Fatalf("%d keys cached of %d", got, n)
	}
}

// A store with the recent entries answers every claim and lookup exactly as
// one without them, over random claims, confirms, releases, expired leases
// and windows, with a cache small enough to evict, and across a restart
// (which warms it from disk).
func TestRecentMatchesPebbleOnly(t *testing.T) {
	a := matchesPebbleOnly(t, "recent entries", []Option{WithRecent(2 * slabBytes)}, nil)
	if a.rec.len() == 0 {
		t.Fatal("the cache never held a key: the comparison proved nothing")
	}
}

// The same with the write buffer small enough to freeze and ingest several
// generations, ingests forced at random points (so releases meet their keys
// in Pebble), and the restart replaying what its logs still hold.
func TestWriteBufferMatchesPebbleOnly(t *testing.T) {
	var ingests int64
	matchesPebbleOnly(t, "write buffer", []Option{WithWriteBuffer(1 << 20)}, func(a *Store, rnd *rand.Rand) {
		if rnd.IntN(8) == 0 {
			if err := a.buf.flush(); err != nil {
				t.Fatal(err)
			}
		}
		ingests = max(ingests, a.Metrics().BufferIngests)
	})
	if ingests < 3 {
		t.Fatalf("%d ingests: the comparison did not exercise the buffer", ingests)
	}
}

// matchesPebbleOnly drives a store with optsA and one writing straight into
// Pebble with the same random operations and fails on the first answer they
// differ in. each runs on a after the claims and at the end of every round. It returns a, still open.
func matchesPebbleOnly(t *testing.T, what string, optsA []Option, each func(a *Store, rnd *rand.Rand)) *Store {
	clk := newClock()
	opts := []Option{WithWindow(time.Hour), WithLease(time.Minute), WithUncertainPolicy("skip", Skip)}
	optsA = append(append([]Option{}, opts...), optsA...)
	optsB := append(append([]Option{}, opts...), WithRecent(0), WithWriteBuffer(0))
	dirA, dirB := t.TempDir(), t.TempDir()
	a := open(t, dirA, clk, optsA...)
	b := open(t, dirB, clk, optsB...)
	t.Cleanup(func() { a.Close(); b.Close() })
	rnd := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, 30_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant-%d/key-%d-%x", i%7, i, rnd.Uint64())
	}
	scopes := []string{"", "skip"}
	for round := range 120 {
		if round == 60 { // restart both
			a.Close()
			b.Close()
			a = open(t, dirA, clk, optsA...)
			b = open(t, dirB, clk, optsB...)
		}
		n := 1 + rnd.IntN(500)
		reqs := make([]ClaimRequest, n)
		for i := range reqs {
			reqs[i] = ClaimRequest{Key: keys[rnd.IntN(len(keys))], Scope: scopes[rnd.IntN(2)], ID: fmt.Sprintf("id-%d-%d", round, i)}
		}
		outA, outB := claimBoth(t, a, b, reqs)
		if each != nil {
			each(a, rnd) // between claims and their outcomes too
		}
		var confirm, release []Done
		for i := range reqs {
			if outA[i] != outB[i] {
				t.Fatalf("round %d key %q: with %s %+v, without %+v", round, reqs[i].Key, what, outA[i], outB[i])
			}
			if !outA[i].Status.ShouldSend() {
				continue
			}
			d := Done{Key: reqs[i].Key, Token: outA[i].Token, ID: reqs[i].ID, Outcome: "sent"}
			switch rnd.IntN(10) {
			case 0: // the claimant dies: its lease runs out
			case 1, 2:
				release = append(release, d)
			default:
				confirm = append(confirm, d)
			}
		}
		for _, s := range []*Store{a, b} {
			if err := s.Confirm(ctx, confirm); err != nil {
				t.Fatal(err)
			}
			if err := s.Release(ctx, release); err != nil {
				t.Fatal(err)
			}
		}
		look := make([]string, 200)
		for i := range look {
			look[i] = keys[rnd.IntN(len(keys))]
		}
		lookupBoth(t, a, b, look, what)
		clk.Add(time.Duration(rnd.IntN(120)) * time.Second) // leases expire, windows pass
		if round%20 == 19 {
			for _, s := range []*Store{a, b} {
				if err := s.Reclaim(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		if each != nil {
			each(a, rnd)
		}
	}
	return a
}

// The flat index answers as a map does over random puts, swaps, deletes
// and gets, with hashes crowded into few slots so probes run long and pass
// tombstones, until it reports full.
func TestHashIndexMatchesMap(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	x, model := newHashIndex(5000), map[uint64]uint64{}
	for step := 0; !x.full(); step++ {
		h := rnd.Uint64N(8000) << 40 // same low bits: every key starts at slot 0
		switch rnd.IntN(4) {
		case 0:
			x.del(h)
			delete(model, h)
		case 1:
			ref := rnd.Uint64N(1 << 40)
			x.put(h, ref)
			model[h] = ref
		default:
			ref := rnd.Uint64N(1 << 40)
			prev, ok := x.swap(h, ref)
			if want, wantOK := model[h]; ok != wantOK || prev != want {
				t.Fatalf("step %d: swap(%x) replaced %d %v, want %d %v", step, h, prev, ok, want, wantOK)
			}
			model[h] = ref
		}
		probe := rnd.Uint64N(8000) << 40
		got, ok := x.get(probe)
		want, wantOK := model[probe]
		if ok != wantOK || got != want {
			t.Fatalf("step %d: get(%x) = %d %v, want %d %v", step, probe, got, ok, want, wantOK)
		}
		if x.live != len(model) {
			t.Fatalf("step %d: %d live, the map has %d", step, x.live, len(model))
		}
	}
}

// Growing keeps every entry and makes room.
func TestHashIndexGrow(t *testing.T) {
	x := newHashIndex(0)
	for h := range uint64(10_000) {
		if !x.room(1) {
			x.grow()
		}
		x.put(h*0x9E3779B97F4A7C15, h)
	}
	for h := range uint64(10_000) {
		if ref, ok := x.get(h * 0x9E3779B97F4A7C15); !ok || ref != h {
			t.Fatalf("%d: %d %v", h, ref, ok)
		}
	}
}
