package providers

import (
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/notification"
)

// BenchmarkBuildRequest measures what each adapter allocates to turn one
// notification into its request, without the network or the mock (whose
// allocations would otherwise count in the same process).
func BenchmarkBuildRequest(b *testing.B) {
	tpl := testTemplates(b)
	n := otp()
	b.Run("twilio", func(b *testing.B) {
		tw, _ := NewTwilio(TwilioConfig{Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}, AccountSID: "AC", AuthToken: "t", From: "+1", Templates: tpl})
		req := fasthttp.AcquireRequest()
		_, body, _ := tpl.Render(n)
		b.ReportAllocs()
		for b.Loop() {
			tw.buildRequest(n, body, req)
		}
	})
	b.Run("fcm", func(b *testing.B) {
		f, _ := NewFCM(FCMConfig{Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}, ProjectID: "p", Token: "t", Templates: tpl})
		req := fasthttp.AcquireRequest()
		b.ReportAllocs()
		for b.Loop() {
			_ = f.buildRequest(n, "t", "body", f.auth, req)
		}
	})
	b.Run("webhook", func(b *testing.B) {
		w, _ := NewWebhook(WebhookConfig{Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}, Secret: "s"})
		req := fasthttp.AcquireRequest()
		batch := []*notification.Notification{n}
		var body []byte
		b.ReportAllocs()
		for b.Loop() {
			body = w.buildRequest(batch, req, body)
		}
	})
	b.Run("sendgrid-100", func(b *testing.B) {
		sg, _ := NewSendGrid(SendGridConfig{Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}, APIKey: "k", From: "a@b.c", Templates: tpl})
		batch := make([]*notification.Notification, 100)
		for i := range batch {
			batch[i] = otp()
		}
		res := make([]Result, 100)
		req := fasthttp.AcquireRequest()
		b.ReportAllocs()
		for b.Loop() {
			for _, g := range sg.groups(batch, res) {
				_ = sg.buildRequest(&g.mail, req)
			}
		}
	})
}
