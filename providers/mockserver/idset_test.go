package mockserver

import (
	"math/rand/v2"
	"testing"
)

// The ids spread over the shards, so no one table holds (and, growing,
// rehashes) much more than its share: the stall a growth makes is a 64th
// of one table's.
func TestIDSetGrowsByShard(t *testing.T) {
	const n = 200_000
	rnd := rand.New(rand.NewPCG(1, 2))
	var s idSet
	hs := make([]idHash, n)
	for i := range hs {
		hs[i] = idHash{rnd.Uint64(), rnd.Uint64()}
		if got := s.inc(hs[i]); got != 1 {
			t.Fatalf("new hash %d counted %d", i, got)
		}
	}
	for _, h := range hs[:1000] {
		if got := s.inc(h); got != 2 {
			t.Fatalf("repeat counted %d", got)
		}
	}
	if s.len() != n {
		t.Fatalf("len %d, want %d", s.len(), n)
	}
	if got := s.count(hs[0]); got != 2 {
		t.Fatalf("count %d, want 2", got)
	}
	if got := s.count(hs[n-1]); got != 1 {
		t.Fatalf("count %d, want 1", got)
	}
	if got := s.count(idHash{1, 2}); got != 0 {
		t.Fatalf("count of a hash never counted: %d", got)
	}
	share := n / idShards
	for i := range s.shards {
		if sh := &s.shards[i]; sh.used < share/2 || len(sh.hashes) > 4*share {
			t.Fatalf("shard %d: %d ids in %d slots, a share being %d", i, sh.used, len(sh.hashes), share)
		}
	}
}
