package mockserver

// idSet counts ids by their 128-bit hash in flat, pointer-free tables
// probed linearly. In a capacity run the mock counts a million ids or more
// beside the engine on the same cores; a Go map of that size took 147 ns a
// new id on its own (its directory, then a group's control word, then the
// slot, each a cache miss at this size) against 62 ns here, and counting
// was the largest single cost of the mock.
//
// The ids are spread over idShards tables by their hash, each growing on
// its own: a table's growth rehashes everything in it under the server's
// lock, and one table of a million ids took 20-40 ms to grow, a stall of
// every request in flight (the critical codes of a latency benchmark
// among them) that no real provider has.
type idSet struct {
	shards [idShards]idTable
}

const idShards = 64

type idHash [2]uint64

// shard is h's table: by bits of the half the tables do not probe with.
func (s *idSet) shard(h idHash) *idTable { return &s.shards[h[1]>>58] }

func (s *idSet) inc(h idHash) uint32   { return s.shard(h).inc(h) }
func (s *idSet) count(h idHash) uint32 { return s.shard(h).count(h) }

// len is the number of distinct hashes counted.
func (s *idSet) len() int {
	n := 0
	for i := range s.shards {
		n += s.shards[i].used
	}
	return n
}

// idTable is one shard of an idSet.
type idTable struct {
	hashes []idHash
	counts []uint32 // 0: the slot is empty
	used   int
}

// inc counts h once more and returns its new count.
func (s *idTable) inc(h idHash) uint32 {
	if 4*(s.used+1) > 3*len(s.hashes) {
		s.grow()
	}
	i := s.slot(h)
	if s.counts[i] == 0 {
		s.hashes[i] = h
		s.used++
	}
	s.counts[i]++
	return s.counts[i]
}

// count is how many times h was counted.
func (s *idTable) count(h idHash) uint32 {
	if len(s.hashes) == 0 {
		return 0
	}
	return s.counts[s.slot(h)]
}

// slot is h's slot, or the empty one where it would go. The table is never
// full (grow keeps a quarter free), so the probe ends.
func (s *idTable) slot(h idHash) uint64 {
	mask := uint64(len(s.hashes) - 1)
	i := h[0] & mask
	for s.counts[i] != 0 && s.hashes[i] != h {
		i = (i + 1) & mask
	}
	return i
}

func (s *idTable) grow() {
	old, oldCounts := s.hashes, s.counts
	n := max(2*len(old), 1024)
	s.hashes, s.counts = make([]idHash, n), make([]uint32, n)
	for i, c := range oldCounts {
		if c != 0 {
			j := s.slot(old[i])
			s.hashes[j], s.counts[j] = old[i], c
		}
	}
}
