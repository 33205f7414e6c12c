package dedupe

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestFiltersNeverHideAKey runs the same random workload (claims of new
// and repeated keys, confirms, releases, across buckets, a reopen and a
// reclaim) against a store with the per-bucket filters and one without:
// every answer must be the same. Tiny filters (64 keys a bucket at first)
// grow by stages; held to their first stage they make false positives
// common, so both paths of the filter are exercised.
func TestFiltersNeverHideAKey(t *testing.T) {
	t.Run("growing", func(t *testing.T) { filtersNeverHideAKey(t, WithFilter(64)) })
	t.Run("held", func(t *testing.T) { filtersNeverHideAKey(t, WithFilter(64), WithFilterMemory(0)) })
}

func filtersNeverHideAKey(t *testing.T, filter ...Option) {
	clk := newClock()
	dirA, dirB := t.TempDir(), t.TempDir()
	opts := []Option{WithWindow(4 * time.Hour), WithBucket(time.Hour)}
	a := open(t, dirA, clk, append(opts, filter...)...)
	b := open(t, dirB, clk, append(opts, WithFilter(0))...)
	defer func() { a.Close(); b.Close() }()
	r := rand.New(rand.NewPCG(11, 12))
	key := func() string { return fmt.Sprintf("tenant/%d", r.IntN(3000)) }
	step := func(round int) {
		n := 50 + r.IntN(200)
		reqs := make([]ClaimRequest, n)
		seen := map[string]bool{}
		for i := range reqs {
			k := key()
			for seen[k] {
				k = key()
			}
			seen[k] = true
			reqs[i] = ClaimRequest{Key: k, ID: fmt.Sprintf("01JD3ZQ8X4K2M9N7P5R3T1V%03d", round%1000)}
		}
		outA, outB := claimBoth(t, a, b, reqs)
		var confA, confB, relA, relB []Done
		for i := range reqs {
			if outA[i].Status != outB[i].Status || outA[i].OriginalID != outB[i].OriginalID {
				t.Fatalf("round %d key %s: with filters %+v, without %+v", round, reqs[i].Key, outA[i], outB[i])
			}
			if !outA[i].Status.ShouldSend() {
				continue
			}
			dA := Done{Key: reqs[i].Key, Token: outA[i].Token, ID: reqs[i].ID, Outcome: "sent"}
			dB := Done{Key: reqs[i].Key, Token: outB[i].Token, ID: reqs[i].ID, Outcome: "sent"}
			if r.IntN(10) == 0 {
				relA, relB = append(relA, dA), append(relB, dB)
			} else {
				confA, confB = append(confA, dA), append(confB, dB)
			}
		}
		for _, f := range []func() error{
			func() error { return a.Confirm(ctx, confA) }, func() error { return b.Confirm(ctx, confB) },
			func() error { return a.Release(ctx, relA) }, func() error { return b.Release(ctx, relB) },
		} {
			if err := f(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for round := range 60 {
		step(round)
		clk.Add(7 * time.Minute) // 60 rounds cross seven buckets and the window
		if round == 30 {
			// Reopen: the filters are rebuilt from disk.
			a.Close()
			a = open(t, dirA, clk, append(opts, filter...)...)
		}
		if round == 45 {
			for _, s := range []*Store{a, b} {
				if err := s.Reclaim(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// A final lookup of every key agrees too.
	keys := make([]string, 3000)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant/%d", i)
	}
	found := 0
	for _, r := range lookupBoth(t, a, b, keys, "filters") {
		if r.Found {
			found++
		}
	}
	if found == 0 {
		t.Fatal("the workload left no key to find")
	}
}

// TestBlockFilterFalsePositives fills a filter to the key count it was sized
// for and checks that every key added tests present (a Bloom filter never
// forgets) and that keys never added pass at about the rate filterBitsPerKey
// promises. The rate is an average over random hashes: 100,000 probes put
// its standard error near 0.06 %, far inside the bounds.
func TestBlockFilterFalsePositives(t *testing.T) {
	const keys = 200_000
	f := newFilters(keys, 0)
	bf := newStage(keys, filterBitsPerKey)
	for i := range keys {
		bf.add(f.hash(fmt.Appendf(nil, "k1-%032x", i)))
	}
	for i := range keys {
		if !bf.test(f.hash(fmt.Appendf(nil, "k1-%032x", i))) {
			t.Fatalf("key %d added but not found", i)
		}
	}
	const probes = 100_000
	fp := 0
	for i := range probes {
		if bf.test(f.hash(fmt.Appendf(nil, "other-%d", i))) {
			fp++
		}
	}
	if rate := float64(fp) / probes; rate < 0.005 || rate > 0.04 {
		t.Fatalf("false-positive rate %.2f %% at the sized key count, want about 3 %%", rate*100)
	}
	if got, want := FilterBytes(keys), keys*filterBitsPerKey/8; got < want || got > want+blockBytes {
		t.Fatalf("FilterBytes(%d) = %d, want %d (rounded up to a block)", keys, got, want)
	}
}

// A bucket's filter past its size grows stages of twice the keys (and two
// more bits a key) and keeps its false positives near the stages' sum,
// where a filter held to its size (no memory for more) answers "maybe" to
// nearly every new key.
// Reclaiming a bucket gives its memory back to the others.
func TestFilterGrowsWithinItsMemory(t *testing.T) {
	const size, keys, probes = 10_000, 70_000, 50_000
	key := func(i int) []byte { return fmt.Appendf(nil, "k1-%032x", i) }
	fpRate := func(f *filters, b uint32) float64 {
		fp := 0
		for i := range probes {
			if f.m[b].test(f.hash(fmt.Appendf(nil, "other-%d", i))) {
				fp++
			}
		}
		return float64(fp) / probes
	}
	grown := newFilters(size, 1<<30)
	held := newFilters(size, 0)
	for _, f := range []*filters{grown, held} {
		for i := range keys {
			f.addLocked(7, key(i))
		}
		for i := range keys {
			if !f.m[7].test(f.hash(key(i))) {
				t.Fatalf("key %d added but not found", i)
			}
		}
	}
	stageBytes := func(keys uint, i int) int { return int(stageBlocks(keys, stageBits(i))) * blockBytes }
	bytes, stages, _ := grown.memory()
	if stages != 3 || bytes != stageBytes(size, 0)+stageBytes(2*size, 1)+stageBytes(4*size, 2) {
		t.Fatalf("%d keys in stages from %d: %d stages of %d bytes, want 3 (%d, %d, %d keys)", keys, size, stages, bytes, size, 2*size, 4*size)
	}
	if rate := fpRate(grown, 7); rate > 0.065 {
		t.Errorf("grown filter: %.1f %% false positives, want at most the stages' ~5 %%", rate*100)
	}
	if rate := fpRate(held, 7); rate < 0.9 {
		t.Errorf("held filter at %d times its keys: %.1f %% false positives, expected most", keys/size, rate*100)
	}
	if bytes, stages, refused := held.memory(); stages != 1 || bytes != FilterBytes(size) || refused == 0 {
		t.Fatalf("held filter: %d stages, %d bytes, %d refused; want its first stage only, and refusals", stages, bytes, refused)
	}

	// A budget of two first stages and a second: bucket 1 grows once, then
	// bucket 2 gets its first stage and no more until bucket 1 is dropped.
	budget := 2*stageBytes(size, 0) + stageBytes(2*size, 1)
	f := newFilters(size, budget)
	for i := range 4 * size {
		f.addLocked(1, key(i))
	}
	for i := range 4 * size {
		f.addLocked(2, fmt.Appendf(key(i), "b2"))
	}
	if len(f.m[1].stages) != 2 || len(f.m[2].stages) != 1 || f.bytes != budget {
		t.Fatalf("within %d bytes: bucket 1 has %d stages, bucket 2 %d, %d bytes in all", budget, len(f.m[1].stages), len(f.m[2].stages), f.bytes)
	}
	f.dropBelow(2)
	if f.bytes != stageBytes(size, 0) {
		t.Fatalf("after dropping bucket 1: %d bytes, want bucket 2's %d", f.bytes, stageBytes(size, 0))
	}
	for i := range size {
		f.addLocked(2, fmt.Appendf(key(i), "more"))
	}
	if len(f.m[2].stages) != 2 {
		t.Fatalf("bucket 2 did not grow into the freed memory: %d stages", len(f.m[2].stages))
	}
}
