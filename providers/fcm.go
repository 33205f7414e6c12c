package providers

import (
	"cmp"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/goutong/goutong/notification"
)

// FCMConfig configures a push provider speaking FCM HTTP v1:
// POST {base}/v1/projects/{ProjectID}/messages:send with a bearer token,
// one message per request.
//
// The token comes from a Google service-account key (ServiceAccount): the
// adapter mints OAuth2 access tokens from it with the JWT bearer grant and
// refreshes them before they expire (they last an hour), through
// golang.org/x/oauth2. A fixed Token is for tests and for deployments that
// mint tokens themselves; exactly one of the two is set.
type FCMConfig struct {
	Name           string // default "fcm"
	Endpoint       EndpointConfig
	ProjectID      string // default: the service account's project
	ServiceAccount []byte // the key file's JSON; secret: never logged
	TokenURL       string // overrides the key's token_uri (tests)
	Token          string // a fixed access token; secret: never logged
	Concurrency    int    // default 256: FCM takes one message per request
	Templates      *Templates
}

// FCMScope is the OAuth2 scope of FCM HTTP v1.
const FCMScope = "https://www.googleapis.com/auth/firebase.messaging"

// FCM is the push adapter.
type FCM struct {
	cfg    FCMConfig
	ep     *Endpoint
	url    string
	auth   string             // with a fixed Token
	tokens oauth2.TokenSource // with a service account: cached, refreshed when near expiry
}

// serviceAccount is what FCM needs of a Google service-account key file.
type serviceAccount struct {
	Type        string `json:"type"`
	ProjectID   string `json:"project_id"`
	PrivateKey  string `json:"private_key"`
	ClientEmail string `json:"client_email"`
	TokenURI    string `json:"token_uri"`
}

// fcmTokenTimeout bounds one token request to Google's OAuth2 server.
const fcmTokenTimeout = 10 * time.Second

// NewFCM builds the adapter.
func NewFCM(cfg FCMConfig) (*FCM, error) {
	var tokens oauth2.TokenSource
	switch {
	case len(cfg.ServiceAccount) > 0 && cfg.Token != "":
		return nil, fmt.Errorf("providers: fcm takes a service account or a token, not both")
	case len(cfg.ServiceAccount) > 0:
		var sa serviceAccount
		if err := json.Unmarshal(cfg.ServiceAccount, &sa); err != nil {
			return nil, fmt.Errorf("providers: fcm service account: %w", err)
		}
		if sa.Type != "service_account" || sa.PrivateKey == "" || sa.ClientEmail == "" {
			return nil, fmt.Errorf("providers: fcm service account: want a key file of type service_account with private_key and client_email")
		}
		if cfg.ProjectID == "" {
			cfg.ProjectID = sa.ProjectID
		}
		tokenURL := cmp.Or(cfg.TokenURL, sa.TokenURI, "https://oauth2.googleapis.com/token")
		jc := &jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), Scopes: []string{FCMScope}, TokenURL: tokenURL}
		// Check the key now: a bad key fails at start, not at the first send.
		if _, err := ParseRSAPrivateKey(sa.PrivateKey); err != nil {
			return nil, fmt.Errorf("providers: fcm service account: %w", err)
		}
		ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Timeout: fcmTokenTimeout})
		tokens = jc.TokenSource(ctx)
	case cfg.Token == "":
		return nil, fmt.Errorf("providers: fcm needs service_account (a key file) or token")
	}
	if cfg.ProjectID == "" {
		return nil, fmt.Errorf("providers: fcm needs project_id")
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
	f := &FCM{cfg: cfg, ep: ep, url: ep.URL("/v1/projects/" + cfg.ProjectID + "/messages:send"), tokens: tokens}
	if tokens == nil {
		f.auth = "Bearer " + cfg.Token
	}
	return f, nil
}

// ParseRSAPrivateKey reads an RSA private key from PEM: PKCS #8, as Google
// writes service-account keys, or PKCS #1.
func ParseRSAPrivateKey(pemKey string) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode([]byte(pemKey))
	if block == nil {
		return nil, errors.New("private_key is not PEM")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, errors.New("private_key is not an RSA key")
		}
		return rk, nil
	}
	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private_key: %w", err)
	}
	return k, nil
}

// authorization is the Authorization header for the next request.
func (f *FCM) authorization() (string, error) {
	if f.tokens == nil {
		return f.auth, nil
	}
	t, err := f.tokens.Token()
	if err != nil {
		return "", err
	}
	return "Bearer " + t.AccessToken, nil
}

// Templates implements Renderer.
func (f *FCM) Templates() *Templates { return f.cfg.Templates }

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

func (f *FCM) buildRequest(n *notification.Notification, title, body, auth string, req *fasthttp.Request) error {
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
	req.Header.Set("Authorization", auth)
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
	auth, err := f.authorization()
	if err != nil {
		// Google's OAuth2 server refused or was unreachable: nothing was sent.
		return Result{Outcome: Retriable, Reason: truncate("fcm: access token: "+err.Error(), 200)}
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if err := f.buildRequest(n, title, body, auth, req); err != nil {
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
