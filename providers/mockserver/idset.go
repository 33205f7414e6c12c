package mockserver

// idSet counts ids by their 128-bit hash in one flat, pointer-free table
// probed linearly. In a capacity run the mock counts a million ids or more
// beside the engine on the same cores; a Go map of that size took 147 ns a
// new id on its own (its directory, then a group's control word, then the
// slot, each a cache miss at this size) against 62 ns here, and counting
// was the largest single cost of the mock.
type idSet struct {
	hashes []idHash
	counts []uint32 // 0: the slot is empty
	used   int
}

type idHash [2]uint64

// inc counts h once more and returns its new count.
func (s *idSet) inc(h idHash) uint32 {
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
func (s *idSet) count(h idHash) uint32 {
	if len(s.hashes) == 0 {
		return 0
	}
	return s.counts[s.slot(h)]
}

// len is the number of distinct hashes counted.
func (s *idSet) len() int { return s.used }

// slot is h's slot, or the empty one where it would go. The table is never
// full (grow keeps a quarter free), so the probe ends.
func (s *idSet) slot(h idHash) uint64 {
	mask := uint64(len(s.hashes) - 1)
	i := h[0] & mask
	for s.counts[i] != 0 && s.hashes[i] != h {
		i = (i + 1) & mask
	}
	return i
}

func (s *idSet) grow() {
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
