package dedupe

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/oklog/ulid/v2"
)

func FuzzParseEntry(f *testing.F) {
	e := entry{state: stateConfirmed, claimedAt: 1, leaseTill: 2, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "SM1"}
	f.Add(e.append(nil))
	f.Add(e.appendFixed(nil))
	f.Add((&entry{state: stateClaimed, claimedAt: 5, leaseTill: 9, id: "not-a-ulid", outcome: "SM1"}).append(nil))
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
		writes := make([][]byte, 0, n)
		for range int(n) {
			if len(writes) > 0 && rnd.IntN(8) == 0 {
				writes = append(writes, writes[rnd.IntN(len(writes))]) // a newer write of a key
				continue
			}
			k := append([]byte(nil), prefix...)
			for range rnd.IntN(int(maxLen) + 1) {
				k = append(k, alphabet[rnd.IntN(len(alphabet))])
			}
			writes = append(writes, entryKey(nil, uint32(rnd.IntN(2)), string(k)))
		}
		checkGenerationSort(t, &bufGen{idx: newHashIndex(int(n))}, writes)
	})
}

// FuzzParseKeyForm feeds arbitrary bytes to the key-form marker's parser,
// as a damaged store (or a newer version's) would hold: it refuses or
// returns a form that append writes back byte for byte.
func FuzzParseKeyForm(f *testing.F) {
	f.Add(keyForm{k0: 1, k1: 2}.append(nil))
	f.Add(keyForm{k0: 1, k1: 2, legacy: true, legacyTop: 7}.append(nil))
	f.Add([]byte{keyFormDigests})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := parseKeyForm(b)
		if err != nil {
			return
		}
		if again := kf.append(nil); !bytes.Equal(again, b) {
			t.Fatalf("append gives back %x, not %x", again, b)
		}
	})
}

// FuzzULIDBytes holds ulidBytes to its definition: the text is a ULID in
// canonical form exactly when it parses and encodes back to itself.
func FuzzULIDBytes(f *testing.F) {
	for _, s := range []string{"01M8DXK03QZBG1EW72PMDRQ92D", "01m8dxk03qzbg1ew72pmdrq92d", "81M8DXK03QZBG1EW72PMDRQ92D",
		"01M8DXK03QZBG1EW72PMDRQ92", "01M8DXK03QZBG1EW72PMDRQ9UD", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		u, ok := ulidBytes(id)
		p, err := ulid.ParseStrict(id)
		want := len(id) == ulid.EncodedSize && err == nil && p.String() == id
		if ok != want || (ok && u != p) {
			t.Fatalf("ulidBytes(%q) = %v, %v; want %v", id, u, ok, want)
		}
	})
}
