package partition

import (
	"context"
	"fmt"
	"testing"
)

func benchValue(i int) []byte {
	b := fmt.Appendf(nil, `{"id":"01JD3ZQ8X4K2M9N7P5R3T%05d","channel":"sms","priority":"bulk","recipient":"+86138%08d","template":"promo","vars":{"code":"%06d"}}`, i%100000, i, (i*7919)%1000000)
	for len(b) < 300 {
		b = append(b, ' ')
	}
	return b[:300]
}

func benchBackends() []backend { return []backend{walBackend(), kafkaBackend()} }

// BenchmarkProduce produces batches of 1,000 keyed 300-byte records to 8
// partitions.
func BenchmarkProduce(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			open := be.setup(b)
			l := open(ConsumerConfig{})
			if err := l.EnsureTopics(context.Background(), TopicSpec{Name: "bench", Partitions: 8, Compression: "s2"}); err != nil {
				b.Fatal(err)
			}
			const batch = 1000
			recs := make([]Record, batch)
			for j := range recs {
				recs[j] = Record{Topic: "bench", Key: fmt.Appendf(nil, "%d", j), Value: benchValue(j)}
			}
			b.SetBytes(300 * batch)
			b.ReportAllocs()
			for b.Loop() {
				if err := l.Produce(context.Background(), recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkPoll consumes pre-produced records in polls of up to 10,000.
func BenchmarkPoll(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			open := be.setup(b)
			p := open(ConsumerConfig{})
			if err := p.EnsureTopics(context.Background(), TopicSpec{Name: "bench", Partitions: 8, Compression: "s2"}); err != nil {
				b.Fatal(err)
			}
			total := max(b.N, 1)
			recs := make([]Record, 0, 5000)
			for i := 0; i < total; i++ {
				recs = append(recs, Record{Topic: "bench", Key: fmt.Appendf(nil, "%d", i), Value: benchValue(i)})
				if len(recs) == cap(recs) || i == total-1 {
					if err := p.Produce(context.Background(), recs); err != nil {
						b.Fatal(err)
					}
					recs = recs[:0]
				}
			}
			c := open(ConsumerConfig{Group: fmt.Sprintf("bench-%d", total), Topics: []string{"bench"}})
			b.SetBytes(300)
			b.ReportAllocs()
			b.ResetTimer()
			for got := 0; got < total; {
				recs, err := c.Poll(context.Background(), 10_000)
				if err != nil {
					b.Fatal(err)
				}
				got += len(recs)
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
