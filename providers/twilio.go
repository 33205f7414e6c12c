package providers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/notification"
)

// TwilioConfig configures an SMS provider speaking Twilio's Messages API:
// POST {base}/2010-04-01/Accounts/{AccountSID}/Messages.json, form encoded,
// basic auth, one message per request.
type TwilioConfig struct {
	Name        string // default "twilio"
	Endpoint    EndpointConfig
	AccountSID  string
	AuthToken   string // secret: never logged
	From        string // sender number, or
	ServiceSID  string // a Messaging Service SID instead of From
	Concurrency int    // parallel requests (default 64)
	// StatusCallback, when set, is the URL Twilio posts delivery status to
	// (goutong serve's /v1/receipts/{name}); the adapter appends
	// goutong_id=<notification id> so the callback names the notification.
	StatusCallback string
	Templates      *Templates
}

// Twilio is the SMS adapter.
type Twilio struct {
	cfg  TwilioConfig
	ep   *Endpoint
	url  string
	auth string
}

// NewTwilio builds the adapter.
func NewTwilio(cfg TwilioConfig) (*Twilio, error) {
	if cfg.AccountSID == "" || cfg.AuthToken == "" || (cfg.From == "" && cfg.ServiceSID == "") {
		return nil, fmt.Errorf("providers: twilio needs account_sid, auth_token and from or messaging_service_sid")
	}
	if cfg.Name == "" {
		cfg.Name = "twilio"
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 64
	}
	if cfg.Endpoint.BaseURL == "" {
		cfg.Endpoint.BaseURL = "https://api.twilio.com"
	}
	ep, err := NewEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	return &Twilio{cfg: cfg, ep: ep,
		url:  ep.URL("/2010-04-01/Accounts/" + cfg.AccountSID + "/Messages.json"),
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.AccountSID+":"+cfg.AuthToken))}, nil
}

// Templates implements Renderer.
func (t *Twilio) Templates() *Templates { return t.cfg.Templates }

func (t *Twilio) Name() string     { return t.cfg.Name }
func (t *Twilio) MaxBatch() int    { b, _ := perItemShape(t.cfg.Concurrency); return b }
func (t *Twilio) Concurrency() int { _, c := perItemShape(t.cfg.Concurrency); return c }

// Send sends each item as its own request, concurrently when given more
// than one.
func (t *Twilio) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	fan, _ := perItemShape(t.cfg.Concurrency)
	eachItem(ctx, batch, results, fan, t.sendOne)
	for i := range results {
		results[i].Provider = t.cfg.Name
	}
}

// buildRequest writes the Messages request for n into req.
func (t *Twilio) buildRequest(n *notification.Notification, body string, req *fasthttp.Request) {
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(t.url)
	req.Header.Set("Authorization", t.auth)
	req.Header.SetContentType("application/x-www-form-urlencoded")
	req.Header.Set(IDHeader, n.ID)
	args := fasthttp.AcquireArgs()
	args.Add("To", n.Recipient)
	if t.cfg.ServiceSID != "" {
		args.Add("MessagingServiceSid", t.cfg.ServiceSID)
	} else {
		args.Add("From", t.cfg.From)
	}
	args.Add("Body", body)
	if t.cfg.StatusCallback != "" {
		sep := "?"
		if strings.Contains(t.cfg.StatusCallback, "?") {
			sep = "&"
		}
		args.Add("StatusCallback", t.cfg.StatusCallback+sep+ReceiptIDParam+"="+url.QueryEscape(n.ID))
	}
	req.SetBodyRaw(args.AppendBytes(req.Body()[:0]))
	fasthttp.ReleaseArgs(args)
}

func (t *Twilio) sendOne(ctx context.Context, n *notification.Notification) Result {
	_, body, err := t.cfg.Templates.Render(n)
	if err != nil {
		return Result{Outcome: Permanent, Reason: err.Error()}
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	t.buildRequest(n, body, req)
	if err := t.ep.Do(ctx, req, resp); err != nil {
		return transportResult(err)
	}
	var out struct {
		SID     string `json:"sid"`
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(resp.Body(), &out)
	r := httpResult(resp, "")
	switch {
	case r.Outcome == Sent && out.SID == "":
		return Result{Outcome: Retriable, Reason: "twilio: success without a message sid"}
	case r.Outcome == Sent:
		r.MessageID = out.SID
	case out.Message != "":
		r.Reason = truncate(fmt.Sprintf("twilio %d: %s", out.Code, out.Message), 200)
	}
	return r
}

// IDHeader carries the notification id on one-message-per-request APIs, so
// the receiving side (and the mock provider) can count sends per id.
const IDHeader = "X-Goutong-Notification-Id"

// eachItem runs send for every item, at most conc at once.
// perItemCalls is how many Send calls an adapter whose API takes one
// message per request runs at once; each call fans its batch out over
// Concurrency/perItemCalls requests. The engine then hands it batches (one
// dedupe confirm and one status write per batch, not per message) while at
// most Concurrency requests are in flight.
const perItemCalls = 4

// perItemShape is such an adapter's MaxBatch (= its fan-out per call) and
// Concurrency (calls at once) for conc requests in flight.
func perItemShape(conc int) (batch, calls int) {
	calls = max(1, min(perItemCalls, conc))
	return max(1, conc/calls), calls
}

func eachItem(ctx context.Context, batch []*notification.Notification, results []Result, conc int,
	send func(context.Context, *notification.Notification) Result) {
	if len(batch) == 1 || conc <= 1 {
		for i, n := range batch {
			results[i] = send(ctx, n)
		}
		return
	}
	sem := make(chan struct{}, min(conc, len(batch)))
	var wg sync.WaitGroup
	for i, n := range batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = send(ctx, n)
		})
	}
	wg.Wait()
}
