package providers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// EndpointConfig describes one provider endpoint.
type EndpointConfig struct {
	// BaseURL is scheme://host[:port][/prefix]; tests point it at the mock.
	BaseURL string
	// MaxConns bounds the pooled connections (default 256).
	MaxConns int
	// DialTimeout, ReadTimeout and WriteTimeout bound each phase (defaults
	// 2s, 10s, 5s); RequestTimeout bounds a whole request (default 10s).
	DialTimeout    time.Duration
	ReadTimeout    time.Duration
	WriteTimeout   time.Duration
	RequestTimeout time.Duration
	// MaxIdleConnDuration closes idle keep-alive connections (default 30s).
	MaxIdleConnDuration time.Duration
	// TLS configures https endpoints; nil uses the system roots.
	TLS *tls.Config
}

// Endpoint is a pooled fasthttp client for one host. Requests and responses
// come from fasthttp's pools; the hot path allocates only what the body
// needs.
type Endpoint struct {
	hc      *fasthttp.HostClient
	base    string // scheme://host/prefix, without userinfo
	timeout time.Duration
}

// NewEndpoint validates cfg and builds the client.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("providers: base URL must be http(s)://host[:port][/path], got %q", redact(cfg.BaseURL))
	}
	if u.User != nil {
		return nil, errors.New("providers: put credentials in the provider config, not in the base URL")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 2*time.Second)
	def(&cfg.ReadTimeout, 10*time.Second)
	def(&cfg.WriteTimeout, 5*time.Second)
	def(&cfg.RequestTimeout, 10*time.Second)
	def(&cfg.MaxIdleConnDuration, 30*time.Second)
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 256
	}
	host := u.Host
	isTLS := u.Scheme == "https"
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), map[bool]string{true: "443", false: "80"}[isTLS])
	}
	dial := cfg.DialTimeout
	hc := &fasthttp.HostClient{
		Addr:                          host,
		IsTLS:                         isTLS,
		TLSConfig:                     cfg.TLS,
		MaxConns:                      cfg.MaxConns,
		MaxIdleConnDuration:           cfg.MaxIdleConnDuration,
		ReadTimeout:                   cfg.ReadTimeout,
		WriteTimeout:                  cfg.WriteTimeout,
		MaxConnWaitTimeout:            cfg.RequestTimeout,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: false,
		Dial:                          func(addr string) (net.Conn, error) { return fasthttp.DialTimeout(addr, dial) },
	}
	return &Endpoint{hc: hc, base: strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), timeout: cfg.RequestTimeout}, nil
}

// URL joins the base URL and path.
func (e *Endpoint) URL(path string) string { return e.base + path }

// Do sends req and reads resp before ctx's deadline or the request timeout,
// whichever is sooner.
func (e *Endpoint) Do(ctx context.Context, req *fasthttp.Request, resp *fasthttp.Response) error {
	deadline := time.Now().Add(e.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return e.hc.DoDeadline(req, resp, deadline)
}

// classify maps an HTTP status to an outcome: 2xx sent; 408, 425, 429 and
// 5xx retriable; other 4xx permanent.
func classify(status int) Outcome {
	switch {
	case status >= 200 && status < 300:
		return Sent
	case status == 408 || status == 425 || status == 429 || status >= 500:
		return Retriable
	}
	return Permanent
}

// retryAfter parses a Retry-After header: delta seconds or an HTTP date.
func retryAfter(resp *fasthttp.Response, now time.Time) time.Duration {
	v := resp.Header.Peek("Retry-After")
	if len(v) == 0 {
		return 0
	}
	if secs, err := strconv.Atoi(string(v)); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := time.Parse(time.RFC1123, string(v)); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// transportResult turns a client error into a retriable result.
func transportResult(err error) Result {
	reason := "transport: " + err.Error()
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		reason = "timeout"
	}
	return Result{Outcome: Retriable, Reason: reason}
}

// httpResult is the result of a whole response with no per-item detail.
func httpResult(resp *fasthttp.Response, reason string) Result {
	st := resp.StatusCode()
	r := Result{Outcome: classify(st), Reason: reason}
	if r.Outcome == Retriable {
		r.RetryAfter = retryAfter(resp, time.Now())
		// Only 429 is "slow down"; a 503 with Retry-After is the endpoint
		// being unavailable, which is the breaker's business.
		r.Throttled = st == 429
	}
	if r.Reason == "" && r.Outcome != Sent {
		r.Reason = "HTTP " + strconv.Itoa(st)
	}
	return r
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

// truncate keeps provider error text short enough for a status record.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
