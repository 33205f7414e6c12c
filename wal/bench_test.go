package wal

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// record300 is a 300-byte notification-shaped JSON record, the size the
// issue's targets are stated for.
func record300(i int) []byte {
	b := fmt.Appendf(nil, `{"id":"01JD3ZQ8X4K2M9N7P5R3T%05d","channel":"sms","priority":"bulk","recipient":"+86138%08d","template":"promo","vars":{"name":"user%d","code":"%06d"},"tenant":"acme","metadata":{"campaign":"double-eleven"}}`, i%100000, i, i, i%1000000)
	for len(b) < 299 {
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

func benchAppend(b *testing.B, pol FsyncPolicy, codec Codec, batch int) {
	l := mustOpen(b, b.TempDir())
	defer l.Close()
	const parts, producers = 4, 64
	if err := l.CreateTopic("t", TopicConfig{Partitions: parts, Codec: codec, Fsync: pol}); err != nil {
		b.Fatal(err)
	}
	recs := make([]Record, batch)
	for i := range recs {
		recs[i].Value = record300(i)
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
				if _, err := l.Append(context.Background(), "t", int32(w%parts), recs); err != nil {
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
			b.SetBytes(300)
			b.ReportAllocs()
			b.ResetTimer()
			var off int64
			for read := 0; read < b.N; {
				got, err := l.Read("t", 0, off, 4096, 8<<20)
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
		})
	}
}
