package notification

import (
	"encoding/json"
	"testing"
	"time"
)

// stdWire mirrors the wire format for encoding/json, the baseline the
// fastjson codec is measured against.
type stdWire struct {
	ID             string                          `json:"id"`
	IdempotencyKey string                          `json:"idempotency_key"`
	Tenant         string                          `json:"tenant"`
	Channel        string                          `json:"channel"`
	Priority       string                          `json:"priority"`
	Recipient      string                          `json:"recipient"`
	Template       string                          `json:"template"`
	Vars           map[string]any                  `json:"vars"`
	Content        *struct{ Subject, Body string } `json:"content"`
	NotBefore      *time.Time                      `json:"not_before"`
	ExpiresAt      *time.Time                      `json:"expires_at"`
	AcceptedAt     *time.Time                      `json:"accepted_at"`
	Attempts       int                             `json:"attempts"`
	Metadata       map[string]string               `json:"metadata"`
}

func BenchmarkDecode(b *testing.B) {
	data := []byte(otpJSON)
	b.Run("fastjson", func(b *testing.B) {
		c := NewCodec()
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Decode(data); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("encoding-json-baseline", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var w stdWire
			if err := json.Unmarshal(data, &w); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

func BenchmarkEncode(b *testing.B) {
	c := NewCodec()
	n, err := c.Decode([]byte(otpJSON))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = c.AppendEncode(buf[:0], n)
		}
		b.SetBytes(int64(len(buf)))
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("encoding-json-baseline", func(b *testing.B) {
		var w stdWire
		_ = json.Unmarshal([]byte(otpJSON), &w)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&w); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

func BenchmarkDefaultIdempotencyKey(b *testing.B) {
	n, _ := NewCodec().Decode([]byte(otpJSON))
	b.ReportAllocs()
	for b.Loop() {
		_ = DefaultIdempotencyKey(n)
	}
}
