package providers

import (
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Receipt is a provider's word on what became of a notification after it
// accepted it: delivered, or failed with a reason.
type Receipt struct {
	ID                string // the notification id, as the provider echoes it back
	ProviderMessageID string
	Delivered         bool
	Final             bool   // false for progress reports (queued, sending) that change nothing
	Reason            string // with a failure
	At                time.Time
}

// ReceiptRequest is an inbound receipt call, as the API received it.
type ReceiptRequest struct {
	URL    string              // the full URL the provider called (Twilio signs it)
	Header func(string) string // request header lookup
	Body   []byte
	Now    time.Time
}

// ReceiptParser is implemented by adapters whose provider reports delivery
// receipts. It checks the provider's signature (ErrBadSignature) before it
// trusts a byte of the body.
type ReceiptParser interface {
	ParseReceipts(r ReceiptRequest) ([]Receipt, error)
}

// ErrBadSignature: the receipt is not signed by the provider.
var ErrBadSignature = errors.New("receipt signature does not verify")

// AsReceiptParser finds the receipt parser behind a configured provider
// (through Guarded and Failover wrappers) by provider name.
func AsReceiptParser(p Provider, name string) (ReceiptParser, bool) {
	switch v := p.(type) {
	case *Guarded:
		return AsReceiptParser(v.Provider, name)
	case *Failover:
		for _, m := range v.members {
			if rp, ok := AsReceiptParser(m.Provider, name); ok {
				return rp, true
			}
		}
		return nil, false
	}
	rp, ok := p.(ReceiptParser)
	return rp, ok && p.Name() == name
}

// ---- webhook ----

// ParseReceipts takes {"id":"...","status":"delivered|failed","reason":"..."}
// or an array of them, signed like the webhook's own requests.
func (w *Webhook) ParseReceipts(r ReceiptRequest) ([]Receipt, error) {
	if err := VerifySignature([]byte(w.cfg.Secret), r.Header(TimestampHeader), r.Header(SignatureHeader), r.Body, r.Now, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	type wire struct {
		ID                string `json:"id"`
		ProviderMessageID string `json:"provider_message_id"`
		Status            string `json:"status"`
		Reason            string `json:"reason"`
	}
	var items []wire
	body := strings.TrimSpace(string(r.Body))
	if strings.HasPrefix(body, "[") {
		if err := json.Unmarshal(r.Body, &items); err != nil {
			return nil, fmt.Errorf("receipt body: %w", err)
		}
	} else {
		var one wire
		if err := json.Unmarshal(r.Body, &one); err != nil {
			return nil, fmt.Errorf("receipt body: %w", err)
		}
		items = []wire{one}
	}
	out := make([]Receipt, 0, len(items))
	for i, it := range items {
		if it.ID == "" {
			return nil, fmt.Errorf("receipt %d: field \"id\" is required", i)
		}
		rc := Receipt{ID: it.ID, ProviderMessageID: it.ProviderMessageID, Reason: it.Reason, At: r.Now, Final: true}
		switch it.Status {
		case "delivered":
			rc.Delivered = true
		case "failed":
		default:
			return nil, fmt.Errorf("receipt %d: field \"status\" must be delivered or failed, not %q", i, it.Status)
		}
		out = append(out, rc)
	}
	return out, nil
}

// ---- twilio ----

// ReceiptIDParam is the query parameter the Twilio adapter adds to its
// StatusCallback URL so the callback names the notification.
const ReceiptIDParam = "goutong_id"

// TwilioSignature computes X-Twilio-Signature as Twilio defines it:
// base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value,
// sorted by name)).
func TwilioSignature(authToken, fullURL string, form url.Values) string {
	keys := make([]string, 0, len(form))
	for k := range form {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	m := hmac.New(sha1.New, []byte(authToken))
	m.Write([]byte(fullURL))
	for _, k := range keys {
		for _, v := range form[k] {
			m.Write([]byte(k))
			m.Write([]byte(v))
		}
	}
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ParseReceipts takes a Twilio message status callback (form encoded:
// MessageSid, MessageStatus, ErrorCode) to the StatusCallback URL.
func (t *Twilio) ParseReceipts(r ReceiptRequest) ([]Receipt, error) {
	form, err := url.ParseQuery(string(r.Body))
	if err != nil {
		return nil, fmt.Errorf("receipt body: %w", err)
	}
	want := TwilioSignature(t.cfg.AuthToken, r.URL, form)
	if !hmac.Equal([]byte(r.Header("X-Twilio-Signature")), []byte(want)) {
		return nil, ErrBadSignature
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return nil, fmt.Errorf("receipt url: %w", err)
	}
	id := u.Query().Get(ReceiptIDParam)
	if id == "" {
		return nil, fmt.Errorf("receipt: query parameter %q is required", ReceiptIDParam)
	}
	rc := Receipt{ID: id, ProviderMessageID: form.Get("MessageSid"), At: r.Now}
	switch st := form.Get("MessageStatus"); st {
	case "delivered", "read":
		rc.Delivered, rc.Final = true, true
	case "failed", "undelivered":
		rc.Final, rc.Reason = true, strings.TrimSpace(st+" "+form.Get("ErrorCode"))
	case "":
		return nil, errors.New("receipt: field \"MessageStatus\" is required")
	}
	return []Receipt{rc}, nil
}

// ---- sendgrid ----

// SendGrid's signed Event Webhook headers.
const (
	SendGridSignatureHeader = "X-Twilio-Email-Event-Webhook-Signature"
	SendGridTimestampHeader = "X-Twilio-Email-Event-Webhook-Timestamp"
)

// ParseReceipts takes a SendGrid Event Webhook POST: a JSON array of
// events; delivered, bounce and dropped are final, the rest are progress.
// With a verification key configured, the ECDSA signature over timestamp
// and body must verify.
func (s *SendGrid) ParseReceipts(r ReceiptRequest) ([]Receipt, error) {
	if s.verifyKey != nil {
		sig, err := base64.StdEncoding.DecodeString(r.Header(SendGridSignatureHeader))
		if err != nil {
			return nil, ErrBadSignature
		}
		h := sha256.Sum256(append([]byte(r.Header(SendGridTimestampHeader)), r.Body...))
		if !ecdsa.VerifyASN1(s.verifyKey, h[:], sig) {
			return nil, ErrBadSignature
		}
	}
	var events []struct {
		Event       string `json:"event"`
		SGMessageID string `json:"sg_message_id"`
		GoutongID   string `json:"goutong_id"` // custom_args are flattened into the event
		Reason      string `json:"reason"`
		Timestamp   int64  `json:"timestamp"`
	}
	if err := json.Unmarshal(r.Body, &events); err != nil {
		return nil, fmt.Errorf("receipt body: %w", err)
	}
	out := make([]Receipt, 0, len(events))
	for i, ev := range events {
		if ev.GoutongID == "" {
			return nil, fmt.Errorf("receipt %d: field \"goutong_id\" is required", i)
		}
		rc := Receipt{ID: ev.GoutongID, ProviderMessageID: ev.SGMessageID, At: r.Now}
		if ev.Timestamp > 0 {
			rc.At = time.Unix(ev.Timestamp, 0)
		}
		switch ev.Event {
		case "delivered":
			rc.Delivered, rc.Final = true, true
		case "bounce", "dropped":
			rc.Final, rc.Reason = true, strings.TrimSpace(ev.Event+" "+ev.Reason)
		}
		out = append(out, rc)
	}
	return out, nil
}

// parseVerificationKey reads SendGrid's verification key: base64 DER of an
// ECDSA public key, as the console shows it.
func parseVerificationKey(b64 string) (*ecdsa.PublicKey, error) {
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("providers: sendgrid verification key: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("providers: sendgrid verification key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("providers: sendgrid verification key is not ECDSA")
	}
	return ek, nil
}
