package providers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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

// MaxRetryAfter caps a provider's Retry-After. The hint holds a retry, a
// channel's adaptive rate and a breaker's probe back, and it comes from
// outside: a "Retry-After: 86400000" (or one near 2^63 seconds, which
// wrapped to a negative duration) must not park a record past the retry
// topic's retention or stop a channel for years.
const MaxRetryAfter = 15 * time.Minute

// retryAfter parses a Retry-After header (RFC 9110: delta seconds or an
// HTTP date), capped at MaxRetryAfter; 0 when absent or unreadable.
func retryAfter(resp *fasthttp.Response, now time.Time) time.Duration {
	return parseRetryAfter(resp.Header.Peek("Retry-After"), now)
}

func parseRetryAfter(v []byte, now time.Time) time.Duration {
	if len(v) == 0 {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		// Delta seconds are digits only (no sign, no space); any number of
		// them saturates at the cap instead of overflowing. A value with
		// anything else in it is no hint at all, however long its digits.
		var secs int64
		for _, c := range v {
			if c < '0' || c > '9' {
				return 0
			}
			secs = min(10*secs+int64(c-'0'), int64(MaxRetryAfter/time.Second)+1)
		}
		return min(time.Duration(secs)*time.Second, MaxRetryAfter)
	}
	if t, err := http.ParseTime(string(v)); err == nil && t.After(now) {
		return min(t.Sub(now), MaxRetryAfter)
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

// truncate keeps provider error text short enough for a status record,
// cut at a character's start so a multi-byte one is not split in two.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
