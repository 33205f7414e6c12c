package engine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers"
)

func webhookBatch(n, from int) []*notification.Notification {
	out := make([]*notification.Notification, n)
	for i := range out {
		out[i] = &notification.Notification{Channel: notification.Webhook, Priority: notification.Priority(1 + i%notification.NumPriorities),
			Recipient: "https://hooks.example/orders", Content: &notification.Content{Body: fmt.Sprintf(`{"order":%d}`, from+i)},
			Tenant: "acme"}
	}
	return out
}

// BenchmarkEngineEndToEnd drives b.N notifications from the log through the
// whole pipeline (decode, dedupe claim and confirm, rings, dispatcher,
// batched webhook sends to the mock on loopback, status events, commits)
// and reports delivered records/s. The baseline sub-benchmark sends the
// same notifications straight through the provider, so the ratio is the
// engine's cost over the HTTP floor on this machine.
func BenchmarkEngineEndToEnd(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			r := newRig(b, be)
			ch := r.channels(false)
			wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: providers.EndpointConfig{BaseURL: r.mock.URL()},
				Path: "/webhook/orders", Secret: "whsec", Batch: 500, Concurrency: 8})
			if err != nil {
				b.Fatal(err)
			}
			ch[notification.Webhook] = engine.ChannelConfig{Provider: wh, Rate: 1e9}
			ns := webhookBatch(b.N, 0)
			r.enqueue(ns...)
			cfg := r.config(ch)
			b.ReportAllocs()
			b.ResetTimer()
			_, stop := r.start(cfg)
			waitFor(b, 2*time.Minute, "every send", func() bool { return r.mock.Stats().Unique == int64(b.N) })
			b.StopTimer()
			stop()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
	b.Run("baseline-provider-only", func(b *testing.B) {
		r := newRig(b, backends[0])
		wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: providers.EndpointConfig{BaseURL: r.mock.URL()},
			Path: "/webhook/orders", Secret: "whsec", Batch: 500, Concurrency: 8})
		if err != nil {
			b.Fatal(err)
		}
		ns := webhookBatch(b.N, 0)
		for _, n := range ns {
			n.Prepare(time.Now())
		}
		b.ReportAllocs()
		b.ResetTimer()
		sem := make(chan struct{}, 8)
		res := make([]providers.Result, len(ns))
		for i := 0; i < len(ns); i += 500 {
			j := min(i+500, len(ns))
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				wh.Send(context.Background(), ns[i:j], res[i:j])
			}()
		}
		for range cap(sem) {
			sem <- struct{}{}
		}
		b.StopTimer()
		if got := r.mock.Stats().Unique; got != int64(b.N) {
			b.Fatalf("mock got %d of %d", got, b.N)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
