package dedupe

import (
	"bytes"
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

func FuzzParseEntry(f *testing.F) {
	e := entry{state: stateConfirmed, claimedAt: 1, leaseTill: 2, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "SM1"}
	f.Add(e.append(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEntry(b)
		if err != nil {
			return
		}
		again, err := parseEntry(e.append(nil))
		if err != nil || again != e {
			t.Fatalf("round trip: %+v %+v %v", e, again, err)
		}
	})
}

// A generation's sort orders any keys as bytes.Compare does, the newest
// write of a key first: the sstable writer refuses keys out of order, and a
// generation it refuses is never ingested. The keys share a prefix and draw
// from a small alphabet, so digits tie and runs recurse; n past radixMin
// takes the radix path.
func FuzzSortByKey(f *testing.F) {
	f.Add(uint64(1), []byte("ingest\x00acme\x00k1-"), []byte("0123456789abcdef"), uint16(2000), uint8(32))
	f.Add(uint64(2), []byte{}, []byte("ab\x00"), uint16(1500), uint8(40))
	f.Add(uint64(3), []byte("t"), []byte("\xff\x00"), uint16(100), uint8(20))
	f.Fuzz(func(t *testing.T, seed uint64, prefix, alphabet []byte, n uint16, maxLen uint8) {
		if len(alphabet) == 0 || len(prefix) > 64 {
			return
		}
		n %= 3000
		rnd := rand.New(rand.NewPCG(seed, 1))
		g := &bufGen{idx: newHashIndex(int(n))}
		type rec struct {
			ekey []byte
			nth  int
		}
		want := make([]rec, 0, n)
		for i := range int(n) {
			var ekey []byte
			if i > 0 && rnd.IntN(8) == 0 {
				ekey = want[rnd.IntN(len(want))].ekey // a newer write of a key
			} else {
				k := append([]byte(nil), prefix...)
				for range rnd.IntN(int(maxLen) + 1) {
					k = append(k, alphabet[rnd.IntN(len(alphabet))])
				}
				ekey = entryKey(nil, uint32(rnd.IntN(2)), string(k))
			}
			want = append(want, rec{ekey, i})
			g.add(false, ekey, (&entry{state: stateConfirmed, id: strconv.Itoa(i)}).append(nil))
		}
		refs, depth := g.sortRefs(0)
		g.sortByKey(refs, depth)
		slices.SortStableFunc(want, func(a, b rec) int {
			return cmp.Or(bytes.Compare(a.ekey, b.ekey), cmp.Compare(b.nth, a.nth))
		})
		if len(refs) != len(want) {
			t.Fatalf("%d sorted, want %d", len(refs), len(want))
		}
		for i, r := range refs {
			_, _, ekey, val := g.record(r.ref - 1)
			e, err := parseEntry(val)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ekey, want[i].ekey) || e.id != strconv.Itoa(want[i].nth) {
				t.Fatalf("position %d: %q (write %s), want %q (write %d)", i, ekey, e.id, want[i].ekey, want[i].nth)
			}
		}
	})
}
