package dedupe

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// benchKeys returns n distinct keys of 16 to 40 bytes.
func benchKeys(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 7))
	keys := make([]string, n)
	for i := range keys {
		k := fmt.Sprintf("t%d/%x-%d", r.IntN(100), r.Uint64(), i)
		for len(k) < 16 {
			k += "x"
		}
		if l := 16 + r.IntN(25); len(k) > l {
			k = k[len(k)-l:]
		}
		keys[i] = k
	}
	return keys
}

const benchBatch = 1000

// preload claims and confirms the 1,000,000 stored keys the benchmarks run
// against (benchKeys seed 1), then settles them; it returns reusable
// request and result slices.
func preload(b *testing.B, s *Store) ([]ClaimRequest, []ClaimResult, []Done) {
	reqs, out, done := make([]ClaimRequest, benchBatch), make([]ClaimResult, benchBatch), make([]Done, benchBatch)
	pre := benchKeys(1_000_000, 1)
	for i := 0; i < len(pre); i += benchBatch {
		claimConfirm(b, s, pre[i:i+benchBatch], reqs, out, done)
	}
	settle(b, s)
	return reqs, out, done
}

// settle flushes and compacts the pre-loaded keys so the measured part does
// not compete with the compaction debt of loading them.
func settle(b *testing.B, s *Store) {
	if s.buf != nil {
		if err := s.buf.flush(); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := s.db.Compact(ctx, []byte{'b'}, []byte{'c'}, true); err != nil {
		b.Fatal(err)
	}
}

func claimConfirm(b *testing.B, s *Store, keys []string, reqs []ClaimRequest, out []ClaimResult, done []Done) {
	for i := range keys {
		reqs[i] = ClaimRequest{Key: keys[i], ID: "01JD3ZQ8X4K2M9N7P5R3T1V0WY"}
	}
	if err := s.Claim(ctx, reqs, out); err != nil {
		b.Fatal(err)
	}
	for i := range out {
		done[i] = Done{Key: keys[i], Token: out[i].Token, ID: reqs[i].ID, Outcome: "sent"}
	}
	if err := s.Confirm(ctx, done); err != nil {
		b.Fatal(err)
	}
}

// keyBytes is the key bytes of one batch, for b.SetBytes.
func keyBytes(keys []string) int64 {
	var n int64
	for _, k := range keys {
		n += int64(len(k))
	}
	return n
}

// BenchmarkClaimConfirmNew claims and confirms new keys in batches of
// 1,000 on top of 1,000,000 keys already stored, with the per-bucket
// filters (the default) and without them (the baseline they are measured
// against), with the recent entries on (what copying each write into them
// costs), and with the write buffer off (every batch into Pebble's memtable:
// the baseline the buffer is measured against). The past-size variants size
// the filters for an eighth of the stored keys: "grows" as they do (in
// stages, within their memory), "held" at that size (the filters before
// they grew, answering "maybe" to nearly every new key).
func BenchmarkClaimConfirmNew(b *testing.B) {
	for _, filter := range []bool{true, false} {
		for _, sync := range []bool{true, false} {
			for _, variant := range []string{"", "recent=on", "buffer=off", "past-size=grows", "past-size=held", "open-claims=16000"} {
				if variant != "" && (!filter || sync) {
					continue // one comparison each is enough
				}
				name := fmt.Sprintf("filter=%v/sync=%v", filter, sync)
				if variant != "" {
					name += "/" + variant
				}
				b.Run(name, func(b *testing.B) {
					opts := []Option{WithSync(sync)}
					if !filter {
						opts = append(opts, WithFilter(0))
					}
					switch variant {
					case "recent=on":
						opts = append(opts, WithRecent(256<<20))
					case "buffer=off":
						opts = append(opts, WithWriteBuffer(0))
					case "past-size=grows":
						opts = append(opts, WithFilter(125_000))
					case "past-size=held":
						opts = append(opts, WithFilter(125_000), WithFilterMemory(0))
					}
					s := open(b, b.TempDir(), newClock(), opts...)
					defer s.Close()
					reqs, out, done := preload(b, s)
					if variant == "open-claims=16000" {
						// Claims left open, as sends waiting on a paused
						// channel and concurrent requests leave them: the
						// claims in memory no longer fit a core's cache.
						open := benchKeys(16_000, 3)
						for i := 0; i < len(open); i += benchBatch {
							for j, k := range open[i : i+benchBatch] {
								reqs[j] = ClaimRequest{Key: k, ID: "01JD3ZQ8X4K2M9N7P5R3T1V0WY"}
							}
							if err := s.Claim(ctx, reqs, out); err != nil {
								b.Fatal(err)
							}
						}
					}
					fresh := benchKeys(max(b.N, 1)*benchBatch, 2)
					b.SetBytes(keyBytes(fresh[:benchBatch]))
					b.ReportAllocs()
					b.ResetTimer()
					cpu := cpuMicros()
					for i := range b.N {
						claimConfirm(b, s, fresh[i*benchBatch:(i+1)*benchBatch], reqs, out, done)
					}
					b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "keys/s")
					b.ReportMetric((cpuMicros()-cpu)/float64(b.N*benchBatch), "cpu-us/key")
				})
			}
		}
	}
}

// BenchmarkLookupExisting looks up stored keys in batches of 1,000 out of
// 1,000,000: from Pebble on the defaults, from Pebble without the filters
// (which only cost here: every key exists), and with recent entries large
// enough for every key.
func BenchmarkLookupExisting(b *testing.B) {
	for _, c := range []struct {
		name string
		opts []Option
	}{
		{"defaults", nil},
		{"filter=false", []Option{WithFilter(0)}},
		{"recent=256MiB", []Option{WithRecent(256 << 20)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := open(b, b.TempDir(), newClock(), c.opts...)
			defer s.Close()
			preload(b, s)
			keys := benchKeys(1_000_000, 1)
			r := rand.New(rand.NewPCG(3, 3))
			batch := make([]string, benchBatch)
			b.SetBytes(keyBytes(keys[:benchBatch]))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for i := range batch {
					batch[i] = keys[r.IntN(len(keys))]
				}
				res, err := s.Lookup(batch, "")
				if err != nil {
					b.Fatal(err)
				}
				if !res[0].Found {
					b.Fatal("stored key not found")
				}
			}
			b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "lookups/s")
		})
	}
}

// BenchmarkBaselinePerKey is the baseline the batched store is compared
// with: the same 1,000,000 stored keys and the same new keys, but one
// Pebble Get and one unbatched, unsynced Set per key.
func BenchmarkBaselinePerKey(b *testing.B) {
	s := open(b, b.TempDir(), newClock(), WithSync(false))
	defer s.Close()
	preload(b, s)
	keys := benchKeys(max(b.N, 1)*benchBatch, 2)
	bucket := s.bucketOf(s.o.now())
	val := (&entry{state: stateConfirmed, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "sent"}).append(nil)
	b.ResetTimer()
	for _, k := range keys[:b.N*benchBatch] {
		key := entryKey(nil, bucket, k)
		if _, c, err := s.db.Get(key); err == nil {
			c.Close()
			continue
		}
		if err := s.db.Set(key, val, pebble.NoSync); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkSortGeneration sorts a frozen generation of 300,000 records for
// its sstable, as the ingest does: one tenant's default keys (everything
// before the hash shared) and a hundred tenants' mixed ones.
func BenchmarkSortGeneration(b *testing.B) {
	const n = 300_000
	for _, c := range []struct {
		name string
		key  func(r *rand.Rand) string
	}{
		{"one-tenant", func(r *rand.Rand) string {
			return fmt.Sprintf("ingest\x00acme\x00k1-%016x%016x", r.Uint64(), r.Uint64())
		}},
		{"tenants", func(r *rand.Rand) string {
			return fmt.Sprintf("ingest\x00tenant-%d\x00k1-%016x%016x", r.IntN(100), r.Uint64(), r.Uint64())
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			g := &bufGen{idx: newHashIndex(n)}
			val := (&entry{state: stateConfirmed, id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "sent"}).append(nil)
			for range n {
				g.add(false, entryKey(nil, 7, c.key(r)), val)
			}
			for b.Loop() {
				refs := g.sortRefs(0)
				g.sortByKey(refs)
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkWriteGeneration writes a sorted generation of 500,000 records
// of digest keys as the ingest does, into an sstable in memory: the
// records are read in key order, at random in the generation's data.
func BenchmarkWriteGeneration(b *testing.B) {
	const n = 500_000
	r := rand.New(rand.NewPCG(1, 2))
	g := &bufGen{idx: newHashIndex(n)}
	val := (&entry{state: stateConfirmed, claimedAt: time.Now().UnixNano(), id: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", outcome: "accepted"}).append(nil)
	var key [digestLen]byte
	for range n {
		binary.LittleEndian.PutUint64(key[:], r.Uint64())
		binary.LittleEndian.PutUint64(key[8:], r.Uint64())
		g.add(false, entryKey(nil, 7, string(key[:])), val)
	}
	refs := g.sortRefs(0)
	g.sortByKey(refs)
	opts := &pebble.Options{}
	opts.EnsureDefaults()
	// The table format of a store opened on Pebble's default format.
	wopts := opts.MakeWriterOptions(0, pebble.FormatMinSupported.MaxTableFormat())
	fs := vfs.NewMem()
	for b.Loop() {
		f, err := fs.Create("t.sst", vfs.WriteCategoryUnspecified)
		if err != nil {
			b.Fatal(err)
		}
		if err := g.writeTable(sstable.NewWriter(objstorageprovider.NewFileWritable(f), wopts), refs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
}

// cpuMicros is the process's CPU time in µs, user and system: per key it
// counts the write buffer's ingests and Pebble's compactions, which run
// beside the claims.
func cpuMicros() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}
