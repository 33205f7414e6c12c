package providers_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
)

// BenchmarkAdapters sends through each adapter to the mock on loopback,
// in batches of up to 100 (what the adapter takes per request, concurrently
// for one-message APIs) and one notification per Send, from GOMAXPROCS*8
// goroutines.
func BenchmarkAdapters(b *testing.B) {
	m := startMock(b, mockserver.Faults{})
	for _, ch := range []notification.Channel{notification.SMS, notification.Email, notification.Push, notification.Webhook} {
		p := adapters(b, m.URL(), 5*time.Second)[ch]
		for _, size := range []int{1, 100} {
			name := "batched"
			if size == 1 {
				name = "unbatched"
			}
			b.Run(fmt.Sprintf("%s/%s", ch, name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					batch := batchOf(ch, size, func(i int) string { return recipientFor(ch, i) })
					res := make([]providers.Result, size)
					for pb.Next() {
						for _, n := range batch {
							n.ID = notification.NewID() // the mock counts by id, and checks it is a ULID
						}
						p.Send(context.Background(), batch, res)
						if res[0].Outcome != providers.Sent {
							b.Fatalf("%+v", res[0])
						}
					}
				})
				b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "notifications/s")
			})
		}
	}
}

// BenchmarkHTTPClient compares the fasthttp client the adapters use with
// net/http on the same signed webhook request to the same mock: the
// baseline for choosing fasthttp.
func BenchmarkHTTPClient(b *testing.B) {
	m := startMock(b, mockserver.Faults{})
	n := batchOf(notification.Webhook, 1, func(int) string { return "https://hooks.example/1" })[0]
	b.Run("fasthttp", func(b *testing.B) {
		w, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: providers.EndpointConfig{BaseURL: m.URL()}, Path: "/webhook/x", Secret: "whsec"})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			res := make([]providers.Result, 1)
			batch := []*notification.Notification{n}
			for pb.Next() {
				w.Send(context.Background(), batch, res)
				if res[0].Outcome != providers.Sent {
					b.Fatalf("%+v", res[0])
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
	})
	b.Run("net-http-baseline", func(b *testing.B) {
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
		codec := notification.NewCodec()
		url := m.URL() + "/webhook/x"
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				body := codec.Encode(n)
				ts := strconv.FormatInt(time.Now().Unix(), 10)
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(providers.TimestampHeader, ts)
				req.Header.Set(providers.SignatureHeader, providers.Sign([]byte("whsec"), ts, body))
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 204 {
					b.Fatal(resp.Status)
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
	})
}
