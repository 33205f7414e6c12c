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
// every answer must be the same. Tiny filters (64 keys a bucket) make
// false positives common, so both paths of the filter are exercised.
func TestFiltersNeverHideAKey(t *testing.T) {
	clk := newClock()
	dirA, dirB := t.TempDir(), t.TempDir()
	opts := []Option{WithWindow(4 * time.Hour), WithBucket(time.Hour)}
	a := open(t, dirA, clk, append(opts, WithFilter(64))...)
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
			a = open(t, dirA, clk, append(opts, WithFilter(64))...)
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
	f := newFilters(keys)
	bf := newBlockFilter(keys)
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
