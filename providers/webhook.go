package providers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/goutong/goutong/notification"
)

// Webhook signature headers. The signature is
// "v1=" + hex(HMAC-SHA256(secret, timestamp + "." + body)), so a receiver
// can check both origin and freshness; see VerifySignature.
const (
	TimestampHeader = "X-Goutong-Timestamp"
	SignatureHeader = "X-Goutong-Signature"
)

// WebhookConfig configures a webhook provider: a JSON POST of the
// notification (its wire format) to URL, signed. With Batch > 1 a request
// carries a JSON array of up to Batch notifications; the endpoint may answer
// per item with {"results":[{"id":"...","status":"ok|retry|failed","error":"..."}]},
// otherwise a 2xx means every item was accepted.
type WebhookConfig struct {
	Name        string // default "webhook"
	Endpoint    EndpointConfig
	Path        string // appended to the base URL
	Secret      string // HMAC key: never logged
	Batch       int    // items per request; 1 sends single objects
	Concurrency int    // default 32
}

// Webhook is the webhook adapter.
type Webhook struct {
	cfg   WebhookConfig
	ep    *Endpoint
	url   string
	codec *notification.Codec
	now   func() time.Time
}

// NewWebhook builds the adapter.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	if cfg.Secret == "" {
		return nil, errors.New("providers: webhook needs a signing secret")
	}
	if cfg.Name == "" {
		cfg.Name = "webhook"
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 32
	}
	ep, err := NewEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	return &Webhook{cfg: cfg, ep: ep, url: ep.URL(cfg.Path), codec: notification.NewCodec(), now: time.Now}, nil
}

func (w *Webhook) Name() string     { return w.cfg.Name }
func (w *Webhook) MaxBatch() int    { return w.cfg.Batch }
func (w *Webhook) Concurrency() int { return w.cfg.Concurrency }

// Sign returns the signature header value for body at ts.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// VerifySignature checks a webhook request on the receiving side: the
// signature must match and the timestamp be within tolerance of now.
func VerifySignature(secret []byte, ts, sig string, body []byte, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("webhook: bad timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhook: timestamp outside tolerance")
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(secret, ts, body))) {
		return errors.New("webhook: signature mismatch")
	}
	return nil
}

// Send implements Provider.
func (w *Webhook) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	if w.cfg.Batch == 1 {
		eachItem(ctx, batch, results, w.cfg.Concurrency, func(ctx context.Context, n *notification.Notification) Result {
			var rs [1]Result
			w.sendBatch(ctx, []*notification.Notification{n}, rs[:])
			return rs[0]
		})
	} else {
		for start := 0; start < len(batch); start += w.cfg.Batch {
			end := min(start+w.cfg.Batch, len(batch))
			w.sendBatch(ctx, batch[start:end], results[start:end])
		}
	}
	for i := range results {
		results[i].Provider = w.cfg.Name
	}
}

// buildRequest makes req the POST of batch, its body written over body
// (returned, for the caller to reuse once the request is done).
func (w *Webhook) buildRequest(batch []*notification.Notification, req *fasthttp.Request, body []byte) []byte {
	body = body[:0]
	if w.cfg.Batch > 1 {
		body = append(body, '[')
		for i, n := range batch {
			if i > 0 {
				body = append(body, ',')
			}
			body = w.codec.AppendEncode(body, n)
		}
		body = append(body, ']')
	} else {
		body = w.codec.AppendEncode(body, batch[0])
	}
	signedPost(req, w.url, []byte(w.cfg.Secret), body, w.now())
	return body
}

// bodyBuffers hold batch bodies between sends: a request only references
// the body it is given (SetBodyRaw), so without them every batch grew a new
// buffer from nothing, about 1.5 KB of garbage per notification sent.
var bodyBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBody keeps the pool from pinning the buffer of one huge batch.
const maxPooledBody = 4 << 20

// signedPost makes req a JSON POST of body to url, signed with secret at
// now (TimestampHeader, SignatureHeader).
func signedPost(req *fasthttp.Request, url string, secret, body []byte, now time.Time) {
	ts := strconv.FormatInt(now.Unix(), 10)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(url)
	req.Header.SetContentType("application/json")
	req.Header.Set(TimestampHeader, ts)
	req.Header.Set(SignatureHeader, Sign(secret, ts, body))
	req.SetBodyRaw(body)
}

// WebhookItemResult is one entry of a batched webhook's optional answer.
type WebhookItemResult struct {
	ID     string `json:"id"`
	Status string `json:"status"` // ok, retry or failed
	Error  string `json:"error,omitempty"`
}

func (w *Webhook) sendBatch(ctx context.Context, batch []*notification.Notification, results []Result) {
	buf := bodyBuffers.Get().(*[]byte)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer func() {
		// The client is done with the body once Do returns (it sets
		// connection deadlines; no goroutine outlives the call).
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
		if cap(*buf) <= maxPooledBody {
			bodyBuffers.Put(buf)
		}
	}()
	*buf = w.buildRequest(batch, req, *buf)
	if r := w.ep.exchange(ctx, req, resp); r.Outcome != Sent {
		fillAll(results, r)
		return
	}
	readWebhookAnswer(resp.Body(), batch, results)
}

// readWebhookAnswer sets results from a 2xx answer's body: per item when
// it carries {"results":[{"id","status","error"}]}, else all sent.
func readWebhookAnswer(body []byte, batch []*notification.Notification, results []Result) {
	p := answerParsers.Get()
	defer answerParsers.Put(p)
	v, err := p.ParseBytes(body)
	var items []*fastjson.Value
	if err == nil {
		items = v.GetArray("results")
	}
	if len(items) == 0 { // no per-item answer: the 2xx covers the batch
		for i, n := range batch {
			results[i] = Result{Outcome: Sent, MessageID: n.ID}
		}
		return
	}
	// Endpoints answer in the batch's order; only one that does not pays
	// for a map. Its keys point into the parser, alive until we return.
	var byID map[string]*fastjson.Value
	for i, n := range batch {
		var it *fastjson.Value
		if i < len(items) && string(items[i].GetStringBytes("id")) == n.ID {
			it = items[i]
		} else {
			if byID == nil {
				byID = make(map[string]*fastjson.Value, len(items))
				for _, item := range items {
					id := item.GetStringBytes("id")
					byID[unsafe.String(unsafe.SliceData(id), len(id))] = item
				}
			}
			it = byID[n.ID]
		}
		if it == nil {
			results[i] = Result{Outcome: Retriable, Reason: "webhook: no result for this item"}
			continue
		}
		switch status := string(it.GetStringBytes("status")); status {
		case "ok":
			results[i] = Result{Outcome: Sent, MessageID: n.ID}
		case "retry":
			results[i] = Result{Outcome: Retriable, Reason: truncate("webhook: "+string(it.GetStringBytes("error")), 200)}
		default:
			results[i] = Result{Outcome: Permanent, Reason: truncate(fmt.Sprintf("webhook: %s %s", status, it.GetStringBytes("error")), 200)}
		}
	}
}

// answerParsers parse batched webhooks' per-item answers without
// allocating per item.
var answerParsers fastjson.ParserPool

// PostSigned POSTs a JSON body to url through the endpoint's pooled client,
// signed as webhooks are (TimestampHeader, SignatureHeader), and classifies
// the answer as a provider's: 2xx sent; 408, 425, 429, 5xx and transport
// errors retriable (with Retry-After); other 4xx permanent. Outbound status
// webhooks use it.
func (e *Endpoint) PostSigned(ctx context.Context, url string, secret, body []byte, now time.Time) Result {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	signedPost(req, url, secret, body, now)
	return e.exchange(ctx, req, resp)
}

// exchange sends req and classifies the whole answer; a failure's reason
// carries the start of the body the endpoint sent.
func (e *Endpoint) exchange(ctx context.Context, req *fasthttp.Request, resp *fasthttp.Response) Result {
	if err := e.Do(ctx, req, resp); err != nil {
		return transportResult(err)
	}
	return answerResult(resp)
}

// answerResult classifies a whole answer; a failure's reason carries the
// start of its body.
func answerResult(resp *fasthttp.Response) Result {
	r := httpResult(resp, "")
	if r.Outcome != Sent {
		r.Reason = truncate(r.Reason+": "+strings.TrimSpace(string(resp.Body())), 200)
	}
	return r
}
