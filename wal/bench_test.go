package wal

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// record300 is a 300-byte notification-shaped JSON record, the size the
// issue's targets are stated for. Ids, numbers and codes are random so the
// codecs see realistic entropy, not a repeated string.
func record300(i int) []byte {
	r := rand.New(rand.NewPCG(uint64(i), 42))
	const b32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	id := make([]byte, 26)
	for j := range id {
		id[j] = b32[r.IntN(32)]
	}
	b := fmt.Appendf(nil, `{"id":"%s","idempotency_key":"k1-%016x%016x","tenant":"t%d","channel":"sms","priority":"bulk","recipient":"+86%011d","template":"promo_%d","vars":{"name":"u%d","code":"%06d"},"metadata":{"c":"%x"}}`,
		id, r.Uint64(), r.Uint64(), r.IntN(100), r.Int64N(1e11), r.IntN(20), r.IntN(1e6), r.IntN(1e6), r.Uint64())
	for len(b) < 300 {
		b = append(b[:len(b)-1], ' ', '}')
	}
	return b[:300]
}

// BenchmarkAppend runs 64 producers, each appending batches of `batch`
// 300-byte records, against one topic of 4 partitions.
func BenchmarkAppend(b *testing.B) {
	for _, pol := range []FsyncPolicy{FsyncEveryGroup, FsyncInterval, FsyncNever} {
		for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
			for _, batch := range []int{1, 100} {
				b.Run(fmt.Sprintf("fsync=%s/codec=%s/batch=%d", pol, codec, batch), func(b *testing.B) {
					benchAppend(b, pol, codec, batch)
				})
			}
		}
	}
}

// BenchmarkAppendBaseline is what group commit is measured against: the
// same 64 producers and batches, each append written and fsynced on its own
// under a mutex, as a log without group commit would.
func BenchmarkAppendBaseline(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("naive-fsync-per-append/batch=%d", batch), func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "naive.log"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			const producers = 64
			bufs := make([][]byte, producers)
			for w := range bufs {
				for i := range batch {
					bufs[w] = append(bufs[w], record300(w*batch+i)...)
				}
			}
			var mu sync.Mutex
			var next atomic.Int64
			total := int64(b.N)
			b.SetBytes(int64(300 * batch))
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range producers {
				wg.Go(func() {
					for next.Add(1) <= total {
						mu.Lock()
						_, err := f.Write(bufs[w])
						if err == nil {
							err = f.Sync()
						}
						mu.Unlock()
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

func benchAppend(b *testing.B, pol FsyncPolicy, codec Codec, batch int) {
	l := mustOpen(b, b.TempDir())
	defer l.Close()
	const parts, producers = 4, 64
	if err := l.CreateTopic("t", TopicConfig{Partitions: parts, Codec: codec, Fsync: pol}); err != nil {
		b.Fatal(err)
	}
	// Each producer appends its own records, so a group commit does not
	// compress one batch repeated 64 times.
	recs := make([][]Record, producers)
	for w := range recs {
		recs[w] = make([]Record, batch)
		for i := range recs[w] {
			recs[w][i].Value = record300(w*batch + i)
		}
	}
	var next atomic.Int64
	total := int64(b.N)
	b.SetBytes(int64(300 * batch))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range producers {
		wg.Go(func() {
			for next.Add(1) <= total {
				if _, err := l.Append(context.Background(), "t", int32(w%parts), recs[w]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkRead reads a pre-filled partition from start to end.
func BenchmarkRead(b *testing.B) {
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		b.Run("codec="+codec.String(), func(b *testing.B) {
			l := mustOpen(b, b.TempDir())
			defer l.Close()
			l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: codec, Fsync: FsyncNever})
			const n = 200_000
			recs := make([]Record, 1000)
			for i := range recs {
				recs[i].Value = record300(i)
			}
			for i := 0; i < n; i += len(recs) {
				if _, err := l.Append(context.Background(), "t", 0, recs); err != nil {
					b.Fatal(err)
				}
			}
			readAround(b, l, 4096)
		})
	}
}

// BenchmarkReadSmallSteps reads frames of 4,000 records 100 at a time, as
// a consumer sharing its polls among many partitions does, with the frame
// cache (the default) and without it (each read decodes the frame again).
func BenchmarkReadSmallSteps(b *testing.B) {
	for _, cache := range []int64{64 << 20, 0} {
		b.Run(fmt.Sprintf("cache=%v", cache > 0), func(b *testing.B) {
			l := mustOpen(b, b.TempDir(), WithFrameCache(cache))
			defer l.Close()
			l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: CodecS2, Fsync: FsyncNever})
			recs := make([]Record, 4000)
			for i := range recs {
				recs[i].Value = record300(i)
			}
			for range 50 {
				if _, err := l.Append(context.Background(), "t", 0, recs); err != nil {
					b.Fatal(err)
				}
			}
			readAround(b, l, 100)
		})
	}
}

// readAround reads b.N 300-byte records from partition t/0, step at a
// time, from its start again whenever it reaches the end, and reports
// records/s.
func readAround(b *testing.B, l *Log, step int) {
	b.SetBytes(300)
	b.ReportAllocs()
	b.ResetTimer()
	var off int64
	for read := 0; read < b.N; {
		got, err := l.Read("t", 0, off, step, 8<<20)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			off = 0
			continue
		}
		read += len(got)
		off = got[len(got)-1].Offset + 1
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
