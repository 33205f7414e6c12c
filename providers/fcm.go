package providers

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/notification"
)

// FCMConfig configures a push provider speaking FCM HTTP v1:
// POST {base}/v1/projects/{ProjectID}/messages:send with a bearer token,
// one message per request. Minting the OAuth2 token from a service account
// is left to the deployment (it refreshes Token through config or env).
type FCMConfig struct {
	Name        string // default "fcm"
	Endpoint    EndpointConfig
	ProjectID   string
	Token       string // secret: never logged
	Concurrency int    // default 256: FCM takes one message per request
	Templates   *Templates
}

// FCM is the push adapter.
type FCM struct {
	cfg  FCMConfig
	ep   *Endpoint
	url  string
	auth string
}

// NewFCM builds the adapter.
func NewFCM(cfg FCMConfig) (*FCM, error) {
	if cfg.ProjectID == "" || cfg.Token == "" {
		return nil, fmt.Errorf("providers: fcm needs project_id and token")
	}
	if cfg.Name == "" {
		cfg.Name = "fcm"
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 256
	}
	if cfg.Endpoint.BaseURL == "" {
		cfg.Endpoint.BaseURL = "https://fcm.googleapis.com"
	}
	ep, err := NewEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	return &FCM{cfg: cfg, ep: ep, url: ep.URL("/v1/projects/" + cfg.ProjectID + "/messages:send"), auth: "Bearer " + cfg.Token}, nil
}

func (f *FCM) Name() string     { return f.cfg.Name }
func (f *FCM) MaxBatch() int    { b, _ := perItemShape(f.cfg.Concurrency); return b }
func (f *FCM) Concurrency() int { _, c := perItemShape(f.cfg.Concurrency); return c }

// Send implements Provider.
func (f *FCM) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	fan, _ := perItemShape(f.cfg.Concurrency)
	eachItem(ctx, batch, results, fan, f.sendOne)
	for i := range results {
		results[i].Provider = f.cfg.Name
	}
}

type fcmMessage struct {
	Message struct {
		Token        string            `json:"token"`
		Notification *fcmNotification  `json:"notification,omitempty"`
		Data         map[string]string `json:"data,omitempty"`
	} `json:"message"`
}

type fcmNotification struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body"`
}

func (f *FCM) buildRequest(n *notification.Notification, title, body string, req *fasthttp.Request) error {
	var m fcmMessage
	m.Message.Token = n.Recipient
	m.Message.Notification = &fcmNotification{Title: title, Body: body}
	m.Message.Data = map[string]string{"goutong_id": n.ID}
	b, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(f.url)
	req.Header.Set("Authorization", f.auth)
	req.Header.SetContentType("application/json")
	req.Header.Set(IDHeader, n.ID)
	req.SetBodyRaw(b)
	return nil
}

func (f *FCM) sendOne(ctx context.Context, n *notification.Notification) Result {
	title, body, err := f.cfg.Templates.Render(n)
	if err != nil {
		return Result{Outcome: Permanent, Reason: err.Error()}
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if err := f.buildRequest(n, title, body, req); err != nil {
		return Result{Outcome: Permanent, Reason: err.Error()}
	}
	if err := f.ep.Do(ctx, req, resp); err != nil {
		return transportResult(err)
	}
	var out struct {
		Name  string `json:"name"`
		Error struct {
			Code    int    `json:"code"`
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(resp.Body(), &out)
	r := httpResult(resp, "")
	switch {
	case r.Outcome == Sent && out.Name == "":
		return Result{Outcome: Retriable, Reason: "fcm: success without a message name"}
	case r.Outcome == Sent:
		r.MessageID = out.Name
	case out.Error.Status != "":
		r.Reason = truncate("fcm "+out.Error.Status+": "+out.Error.Message, 200)
		// UNREGISTERED tokens come back 404: permanent, as classify says.
	}
	return r
}
