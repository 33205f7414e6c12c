package providers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
	"testing"
	"time"
)

func headers(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestWebhookReceipts(t *testing.T) {
	w, err := NewWebhook(WebhookConfig{Secret: "whsec", Endpoint: EndpointConfig{BaseURL: "http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`[{"id":"01A","status":"delivered"},{"id":"01B","status":"failed","reason":"mailbox full"}]`)
	ts := strconv.FormatInt(now.Unix(), 10)
	h := map[string]string{TimestampHeader: ts, SignatureHeader: Sign([]byte("whsec"), ts, body)}
	rs, err := w.ParseReceipts(ReceiptRequest{Header: headers(h), Body: body, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || !rs[0].Delivered || rs[1].Delivered || rs[1].Reason != "mailbox full" || !rs[1].Final {
		t.Fatalf("receipts %+v", rs)
	}
	h[SignatureHeader] = Sign([]byte("other"), ts, body)
	if _, err := w.ParseReceipts(ReceiptRequest{Header: headers(h), Body: body, Now: now}); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("foreign signature: %v", err)
	}
	bad := []byte(`{"id":"01A","status":"lost"}`)
	h[SignatureHeader] = Sign([]byte("whsec"), ts, bad)
	if _, err := w.ParseReceipts(ReceiptRequest{Header: headers(h), Body: bad, Now: now}); err == nil || errors.Is(err, ErrBadSignature) {
		t.Fatalf("unknown status: %v", err)
	}
}

func TestTwilioReceipts(t *testing.T) {
	tw, err := NewTwilio(TwilioConfig{AccountSID: "AC1", AuthToken: "tok", From: "+1", StatusCallback: "https://goutong.example/v1/receipts/twilio"})
	if err != nil {
		t.Fatal(err)
	}
	u := "https://goutong.example/v1/receipts/twilio?goutong_id=01ABC"
	form := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"undelivered"}, "ErrorCode": {"30003"}}
	body := []byte(form.Encode())
	h := map[string]string{"X-Twilio-Signature": TwilioSignature("tok", u, form)}
	rs, err := tw.ParseReceipts(ReceiptRequest{URL: u, Header: headers(h), Body: body, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].ID != "01ABC" || rs[0].Delivered || !rs[0].Final || rs[0].Reason != "undelivered 30003" || rs[0].ProviderMessageID != "SM1" {
		t.Fatalf("receipt %+v", rs)
	}
	// The signature covers the URL: the same body to another id is refused.
	if _, err := tw.ParseReceipts(ReceiptRequest{URL: u + "X", Header: headers(h), Body: body}); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered url: %v", err)
	}
}

func TestSendGridReceipts(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	sg, err := NewSendGrid(SendGridConfig{APIKey: "k", From: "a@b.example", EventVerificationKey: base64.StdEncoding.EncodeToString(der)})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`[{"event":"processed","goutong_id":"01A"},{"event":"delivered","goutong_id":"01A","sg_message_id":"m1","timestamp":1800000000},{"event":"bounce","goutong_id":"01B","reason":"550 no such user"}]`)
	ts := "1800000000"
	h := sha256.Sum256(append([]byte(ts), body...))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, h[:])
	hd := map[string]string{SendGridTimestampHeader: ts, SendGridSignatureHeader: base64.StdEncoding.EncodeToString(sig)}
	rs, err := sg.ParseReceipts(ReceiptRequest{Header: headers(hd), Body: body, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].Final || !rs[1].Delivered || !rs[1].At.Equal(time.Unix(1800000000, 0)) || rs[2].Reason != "bounce 550 no such user" {
		t.Fatalf("receipts %+v", rs)
	}
	hd[SendGridTimestampHeader] = "1800000001"
	if _, err := sg.ParseReceipts(ReceiptRequest{Header: headers(hd), Body: body}); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered timestamp: %v", err)
	}
}
