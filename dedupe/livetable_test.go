package dedupe

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// The live table agrees with a Go map through sets, deletes and sweeps,
// with keys crowded onto a few home slots (runs that wrap around the end
// of the table, deletes in their middle) and the all-zero digest among them.
func TestLiveTableMatchesMap(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 11))
	universe := make([]digest, 400)
	for i := range universe {
		if i == 0 {
			continue // the all-zero digest
		}
		homes := []byte{0, 1, 2, 61, 62, 63}
		universe[i][0] = homes[rnd.IntN(len(homes))]
		if i%5 == 0 {
			universe[i][0] = byte(rnd.Uint32()) // spread in bigger tables
		}
		binary.LittleEndian.PutUint64(universe[i][8:], uint64(i))
	}
	var lt liveTable
	model := map[digest]liveClaim{}
	check := func(step int) {
		t.Helper()
		if lt.len() != len(model) {
			t.Fatalf("step %d: len %d, the map has %d", step, lt.len(), len(model))
		}
		for _, d := range universe {
			got, ok := lt.get(d)
			want, wantOK := model[d]
			if ok != wantOK || got != want {
				t.Fatalf("step %d: get(%x) = %+v %v, want %+v %v", step, d[:1], got, ok, want, wantOK)
			}
		}
	}
	for step := range 20_000 {
		d := universe[rnd.IntN(len(universe))]
		switch op := rnd.IntN(100); {
		case op < 45:
			c := liveClaim{id: "id", claimedAt: int64(step), leaseTill: rnd.Int64(), bucket: uint32(step)}
			lt.set(d, c)
			model[d] = c
		case op < 99:
			lt.del(d)
			delete(model, d)
		default:
			cut := rnd.Int64()
			lt.deleteIf(func(c liveClaim) bool { return c.leaseTill < cut })
			for k, c := range model {
				if c.leaseTill < cut {
					delete(model, k)
				}
			}
		}
		check(step)
	}
}

// Deleting every entry leaves every slot empty: nothing like a tombstone
// stays behind to lengthen later probes.
func TestLiveTableDeleteLeavesNoTrace(t *testing.T) {
	var lt liveTable
	var ds []digest
	for i := range 10_000 {
		var d digest
		binary.LittleEndian.PutUint64(d[:], uint64(i)*0x9E3779B97F4A7C15)
		binary.LittleEndian.PutUint64(d[8:], uint64(i))
		ds = append(ds, d)
		lt.set(d, liveClaim{id: "x"})
	}
	if 2*lt.len() > len(lt.keys) {
		t.Fatalf("%d entries in %d slots: more than half full", lt.len(), len(lt.keys))
	}
	for _, d := range ds {
		lt.del(d)
	}
	for i := range lt.keys {
		if lt.keys[i] != (digest{}) || lt.vals[i] != (liveClaim{}) {
			t.Fatalf("slot %d still holds %x %+v", i, lt.keys[i], lt.vals[i])
		}
	}
}

// A sweep that leaves the table mostly empty shrinks it, and keeps what is
// left: a burst's peak of open claims does not hold its memory for good.
func TestLiveTableShrinksAfterASweep(t *testing.T) {
	var lt liveTable
	var ds []digest
	for i := range 100_000 {
		var d digest
		binary.LittleEndian.PutUint64(d[:], uint64(i+1)*0x9E3779B97F4A7C15)
		binary.LittleEndian.PutUint64(d[8:], uint64(i))
		ds = append(ds, d)
		lt.set(d, liveClaim{id: "x", leaseTill: int64(i)})
	}
	peak := len(lt.keys)
	lt.deleteIf(func(c liveClaim) bool { return c.leaseTill >= 100 }) // 100 left
	if len(lt.keys) > peak/256 || 8*lt.len() < len(lt.keys) {
		t.Fatalf("%d slots for %d entries after the sweep (%d at the peak)", len(lt.keys), lt.len(), peak)
	}
	for i, d := range ds {
		c, ok := lt.get(d)
		if ok != (i < 100) || (ok && c.leaseTill != int64(i)) {
			t.Fatalf("entry %d after the shrink: %+v %v", i, c, ok)
		}
	}
}
