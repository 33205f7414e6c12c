package dedupe

import "testing"

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
