package providers

import (
	"net/url"
	"strconv"
	"testing"
	"time"
)

// FuzzReceipts feeds receipt bodies of outside bytes, correctly signed, to
// every receipt parser: no panic, and every receipt returned names a
// notification.
func FuzzReceipts(f *testing.F) {
	for _, s := range []string{
		`{"id":"01A","status":"delivered"}`, `[{"id":"01A","status":"failed","reason":"r"}]`,
		`MessageSid=SM1&MessageStatus=delivered`, `MessageStatus=undelivered&ErrorCode=30003`,
		`[{"event":"delivered","goutong_id":"01A","timestamp":-5}]`, `[{"event":"bounce"}]`, `[`, "\x00", `%zz`,
	} {
		f.Add([]byte(s))
	}
	wh, _ := NewWebhook(WebhookConfig{Secret: "s", Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}})
	tw, _ := NewTwilio(TwilioConfig{AccountSID: "AC", AuthToken: "tok", From: "+1"})
	sg, _ := NewSendGrid(SendGridConfig{APIKey: "k", From: "a@b.example"})
	now := time.Unix(1_800_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(rs []Receipt, err error) {
			if err != nil {
				return
			}
			for _, r := range rs {
				if r.ID == "" {
					t.Fatalf("receipt without an id: %+v", r)
				}
			}
		}
		h := map[string]string{TimestampHeader: ts, SignatureHeader: Sign([]byte("s"), ts, body)}
		check(wh.ParseReceipts(ReceiptRequest{Header: func(k string) string { return h[k] }, Body: body, Now: now}))
		u := "https://g.example/v1/receipts/twilio?goutong_id=01A"
		form, _ := url.ParseQuery(string(body))
		th := TwilioSignature("tok", u, form)
		check(tw.ParseReceipts(ReceiptRequest{URL: u, Header: func(string) string { return th }, Body: body, Now: now}))
		check(sg.ParseReceipts(ReceiptRequest{Header: func(string) string { return "" }, Body: body, Now: now}))
	})
}
