// Package api is Goutong's HTTP surface on fasthttp: ingest, status,
// delivery receipts, admin, metrics and health, over a running engine.
//
// The ingest contract: 202 means every accepted notification is durably in
// the log (it will be delivered or dead-lettered). A batch is
// all-or-nothing: one invalid item rejects the request with every item's
// error and nothing is enqueued, so a client fixes and resends the whole
// batch; idempotency keys make that resend safe.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
)

// Key is an API key as configured: only its SHA-256 is stored.
type Key struct {
	Name   string `koanf:"name"`
	SHA256 string `koanf:"sha256"` // hex of sha256(key)
	Tenant string `koanf:"tenant"`
	Admin  bool   `koanf:"admin"`
}

// HashKey is what goes into Key.SHA256 for a raw key.
func HashKey(raw string) string {
	h := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(h[:])
}

// Quota limits a tenant's ingest in notifications per second.
type Quota struct {
	PerSec float64 `koanf:"per_sec"`
	Burst  int     `koanf:"burst"`
}

// Config configures a Server.
type Config struct {
	Engine *engine.Engine

	// Keys enable authentication; with none, every request is admitted
	// (the default on a fresh machine, listening on loopback only).
	Keys         []Key
	Quotas       map[string]Quota // per tenant
	DefaultQuota Quota            // for tenants not listed; zero: unlimited
	// MaxBacklog sheds normal and bulk ingest (503 with Retry-After) while
	// the engine's backlog is above it; critical and high are still
	// accepted. Zero: no shedding.
	MaxBacklog   int64
	MaxBodyBytes int // default 64 MiB; larger bodies get 413
	MaxItems     int // per request, default 100,000
	// MaxScheduleAhead refuses a not_before further ahead (default 35
	// days, Twilio's bound on scheduled messages; negative: no bound). A
	// parked notification is re-parked every hour until near its time: a
	// typo's year 2206 would be rewritten hourly for two centuries.
	MaxScheduleAhead time.Duration
	// CheckTemplate, when set, is asked about every notification that names
	// a template: an error (a *notification.FieldError naming "template" or
	// "vars.<name>", or any error, taken as about "template") rejects the
	// request with 400 naming the item and the field, where without it the
	// notification was accepted and dead-lettered at its send. Nil: every
	// template is accepted.
	CheckTemplate func(n *notification.Notification) error

	// SnapshotDir is where GET /v1/admin/snapshot copies the stores before
	// sending them: on their file system, so the copy is hard links. Empty:
	// the node takes no snapshots.
	SnapshotDir string

	Ready    func() error // extra readiness beyond the engine's (nil error: ready); nil: none
	Gatherer prometheus.Gatherer
	Registry prometheus.Registerer
	Logger   *zap.Logger
	Now      func() time.Time
}

// Server serves the API.
type Server struct {
	cfg    Config
	srv    *fasthttp.Server
	keys   map[string]Key // by hash
	prom   fasthttp.RequestHandler
	limits sync.Map // tenant -> *rate.Limiter
	m      *apiMetrics
}

type apiMetrics struct {
	requests *prometheus.CounterVec
	accepted *prometheus.CounterVec
	dups     prometheus.Counter
	panics   prometheus.Counter
}

// DefaultMaxScheduleAhead is Config.MaxScheduleAhead's default.
const DefaultMaxScheduleAhead = 35 * 24 * time.Hour

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil {
		return nil, errors.New("api: Engine is required")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 20
	}
	if cfg.MaxScheduleAhead == 0 {
		cfg.MaxScheduleAhead = DefaultMaxScheduleAhead
	}
	if cfg.MaxItems <= 0 {
		cfg.MaxItems = 100_000
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	s := &Server{cfg: cfg, keys: map[string]Key{}}
	for _, k := range cfg.Keys {
		h := strings.ToLower(k.SHA256)
		if len(h) != 64 {
			return nil, errors.New("api: key " + k.Name + ": sha256 must be 64 hex digits")
		}
		if k.Tenant == "" && !k.Admin {
			return nil, errors.New("api: key " + k.Name + ": tenant is required")
		}
		s.keys[h] = k
	}
	s.m = &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_api_requests_total",
			Help: "API requests by route and status code."}, []string{"route", "code"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "goutong_api_accepted_total",
			Help: "Notifications accepted into the log, by priority."}, []string{"priority"}),
		dups: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_api_duplicates_total",
			Help: "Ingested notifications answered with an earlier one's id (repeated idempotency key)."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "goutong_api_panics_total",
			Help: "Requests whose handler panicked (a bug: each is logged with its stack), answered 500."}),
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{s.m.requests, s.m.accepted, s.m.dups, s.m.panics} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, err
			}
		}
	}
	s.prom = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "goutong",
		MaxRequestBodySize: cfg.MaxBodyBytes,
		// Bodies over the limit reach the handler as a stream, so it can
		// answer 413 after draining a bounded amount instead of resetting
		// the connection under a client that is still writing.
		StreamRequestBody: true,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		// A snapshot streams gigabytes for as long as it takes.
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			if string(h.RequestURI()) == "/v1/admin/snapshot" {
				return fasthttp.RequestConfig{WriteTimeout: snapshotWriteTimeout}
			}
			return fasthttp.RequestConfig{}
		},
		IdleTimeout: 2 * time.Minute,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				writeError(ctx, fasthttp.StatusRequestEntityTooLarge, bodyTooLarge(cfg.MaxBodyBytes))
				return
			}
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "bad_request", Message: err.Error()})
		},
		Logger: zapPrintf{cfg.Logger},
	}
	return s, nil
}

type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Printf(format string, args ...any) { z.l.Sugar().Debugf(format, args...) }

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Shutdown stops accepting, waits for requests in flight (bounded by ctx).
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.ShutdownWithContext(ctx) }

// readiness is the engine's, then the extra check's.
func (s *Server) readiness() error {
	if err := s.cfg.Engine.Readiness(); err != nil {
		return err
	}
	if s.cfg.Ready != nil {
		return s.cfg.Ready()
	}
	return nil
}

// notReady names a readiness error for /readyz and the 503s: its status
// code, and the reason when there is more to say than the code.
func notReady(err error) (code, reason string) {
	code = "unavailable"
	if errors.Is(err, engine.ErrStarting) {
		code = "starting"
	}
	if reason = err.Error(); reason == code {
		reason = ""
	}
	return code, reason
}

// Handler is the request handler (for tests and embedding).
func (s *Server) Handler() fasthttp.RequestHandler { return s.handle }

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	route := "panicked"
	// fasthttp does not recover a handler's panic: without this, one bad
	// request (a bug reachable from its bytes) would stop the node for
	// every client. What the request did before is durable or not, as at
	// a crash; a retry with the same idempotency key is safe either way.
	defer func() {
		if v := recover(); v != nil {
			s.cfg.Logger.Error("request panicked", zap.String("method", string(ctx.Method())), zap.String("path", path),
				zap.Any("panic", v), zap.Stack("stack"))
			s.m.panics.Inc()
			ctx.Response.Reset()
			writeError(ctx, fasthttp.StatusInternalServerError, apiError{Code: "internal",
				Message: "internal error (logged); whether the request took effect is unknown: retry it with the same Idempotency-Key"})
		}
		s.m.requests.WithLabelValues(route, itoa(ctx.Response.StatusCode())).Inc()
	}()
	route = s.route(ctx, path)
}

// route dispatches and returns the route's name for metrics.
func (s *Server) route(ctx *fasthttp.RequestCtx, path string) string {
	method := string(ctx.Method())
	switch {
	case path == "/healthz":
		writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ok"})
		return "healthz"
	case path == "/readyz":
		if err := s.readiness(); err != nil {
			code, reason := notReady(err)
			body := map[string]string{"status": code}
			if reason != "" {
				body["reason"] = reason
			}
			writeJSON(ctx, fasthttp.StatusServiceUnavailable, body)
		} else {
			writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ready"})
		}
		return "readyz"
	case path == "/metrics":
		s.prom(ctx)
		return "metrics"
	case path == "/v1/notifications":
		if !allow(ctx, method, "POST") {
			return "notifications"
		}
		if k, ok := s.auth(ctx, false); ok {
			s.ingest(ctx, k)
		}
		return "ingest"
	case strings.HasPrefix(path, "/v1/notifications/"):
		if !allow(ctx, method, "GET") {
			return "status"
		}
		if k, ok := s.auth(ctx, false); ok {
			s.status(ctx, k, strings.TrimPrefix(path, "/v1/notifications/"))
		}
		return "status"
	case strings.HasPrefix(path, "/v1/receipts/"):
		if allow(ctx, method, "POST") {
			s.receipts(ctx, strings.TrimPrefix(path, "/v1/receipts/"))
		}
		return "receipts"
	case strings.HasPrefix(path, "/v1/admin/"):
		if _, ok := s.auth(ctx, true); ok {
			s.admin(ctx, method, strings.TrimPrefix(path, "/v1/admin/"))
		}
		return "admin"
	}
	writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Message: "no route " + path})
	return "none"
}

func allow(ctx *fasthttp.RequestCtx, method, want string) bool {
	if method == want {
		return true
	}
	ctx.Response.Header.Set("Allow", want)
	writeError(ctx, fasthttp.StatusMethodNotAllowed, apiError{Code: "method_not_allowed", Message: "use " + want})
	return false
}

// auth finds the caller's key. Without configured keys everyone is an
// admin of tenant "" (the tenant then comes from each notification).
func (s *Server) auth(ctx *fasthttp.RequestCtx, admin bool) (Key, bool) {
	if len(s.keys) == 0 {
		return Key{Admin: true}, true
	}
	raw := string(ctx.Request.Header.Peek("X-API-Key"))
	if raw == "" {
		if h := string(ctx.Request.Header.Peek("Authorization")); strings.HasPrefix(h, "Bearer ") {
			raw = strings.TrimPrefix(h, "Bearer ")
		}
	}
	if raw == "" {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="goutong"`)
		writeError(ctx, fasthttp.StatusUnauthorized, apiError{Code: "unauthenticated", Message: "an API key is required (Authorization: Bearer <key>)"})
		return Key{}, false
	}
	k, ok := s.keys[HashKey(raw)]
	if !ok {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="goutong", error="invalid_token"`)
		writeError(ctx, fasthttp.StatusUnauthorized, apiError{Code: "unauthenticated", Message: "unknown API key"})
		return Key{}, false
	}
	if admin && !k.Admin {
		writeError(ctx, fasthttp.StatusForbidden, apiError{Code: "forbidden", Message: "this key is not an admin key"})
		return Key{}, false
	}
	return k, true
}

func (s *Server) limiter(tenant string) *rate.Limiter {
	if l, ok := s.limits.Load(tenant); ok {
		return l.(*rate.Limiter)
	}
	q, ok := s.cfg.Quotas[tenant]
	if !ok {
		q = s.cfg.DefaultQuota
	}
	if q.PerSec <= 0 {
		return nil
	}
	l, _ := s.limits.LoadOrStore(tenant, rate.NewLimiter(rate.Limit(q.PerSec), max(q.Burst, int(q.PerSec), 1)))
	return l.(*rate.Limiter)
}
