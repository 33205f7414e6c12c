// Package mockserver is Goutong's mock provider: one loopback HTTP server
// that speaks every adapter's API (Twilio Messages, SendGrid v3 mail/send,
// FCM HTTP v1, signed webhooks), counts every notification it accepts by id
// so tests and benchmarks can prove "each once", and injects faults on
// demand: latency, 5xx, 429 with Retry-After, per-item failures inside a
// batch, full outages and responses slower than the client's timeout.
//
// It parses requests as the real APIs would and rejects malformed ones with
// their error shapes, so it checks the adapters as much as it serves them.
package mockserver

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	gojson "github.com/goccy/go-json"
	"github.com/golang-jwt/jwt/v5"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/goutong/goutong/providers"
)

// Duration is a time.Duration that reads and writes JSON as "150ms".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"150ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Faults is what the mock injects. Rates are probabilities per request
// (ItemFailureRate: per item). Set them at start or at runtime with
// POST /faults.
type Faults struct {
	LatencyMin      Duration  `json:"latency_min"`       // added to every response, uniform in [min, max]
	LatencyMax      Duration  `json:"latency_max"`       //
	ErrorRate       float64   `json:"error_rate"`        // 500/503 answers
	ThrottleRate    float64   `json:"throttle_rate"`     // 429 answers
	RetryAfter      Duration  `json:"retry_after"`       // sent with 429 and 503 (whole seconds, rounded up)
	ItemFailureRate float64   `json:"item_failure_rate"` // permanent per-item failures (bad number, bad token)
	SlowRate        float64   `json:"slow_rate"`         // responses held for SlowDelay
	SlowDelay       Duration  `json:"slow_delay"`        // set it past the client's timeout
	OutageFor       Duration  `json:"outage_for"`        // on POST: answer 503 to everything for this long
	OutageUntil     time.Time `json:"outage_until,omitzero"`
}

// Validate checks what POST /faults and Start take: rates are shares of
// requests, durations are not negative, and the latency range is a range.
func (f Faults) Validate() error {
	for _, r := range []struct {
		name string
		v    float64
	}{{"error_rate", f.ErrorRate}, {"throttle_rate", f.ThrottleRate}, {"item_failure_rate", f.ItemFailureRate}, {"slow_rate", f.SlowRate}} {
		if !(r.v >= 0 && r.v <= 1) { // NaN too
			return fmt.Errorf("faults: %s: %v, want a share between 0 and 1", r.name, r.v)
		}
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"latency_min", f.LatencyMin}, {"latency_max", f.LatencyMax}, {"retry_after", f.RetryAfter}, {"slow_delay", f.SlowDelay}, {"outage_for", f.OutageFor}} {
		if d.v < 0 {
			return fmt.Errorf("faults: %s: %v, want a duration not below zero", d.name, time.Duration(d.v))
		}
	}
	if f.LatencyMax > 0 && f.LatencyMin > f.LatencyMax {
		return fmt.Errorf("faults: latency_min %v is above latency_max %v", time.Duration(f.LatencyMin), time.Duration(f.LatencyMax))
	}
	return nil
}

// Config configures the server.
type Config struct {
	Addr          string // host:port; use 127.0.0.1:0 in tests
	WebhookSecret string // when set, webhook signatures are verified
	Faults        Faults
	Seed          uint64 // fault randomness; 0 picks one
	// GoogleKey, when set, makes the mock Google's OAuth2 server too:
	// POST /token grants access tokens for JWT assertions signed with the
	// matching private key (RS256, audience {URL}/token, the FCM scope),
	// and the FCM endpoint accepts only those tokens, until they expire.
	GoogleKey *rsa.PublicKey
	TokenTTL  time.Duration // of the tokens granted (default 1 h)
}

// Stats is what GET /stats returns.
type Stats struct {
	Received   int64            `json:"received"`   // accepted notifications, repeats included
	Unique     int64            `json:"unique"`     // distinct notification ids accepted
	Duplicates int64            `json:"duplicates"` // accepted more than once
	Requests   int64            `json:"requests"`
	Faulted    int64            `json:"faulted"`  // requests answered with an injected 5xx, 429, outage
	Rejected   int64            `json:"rejected"` // items refused (injected per-item failures, malformed input)
	Tokens     int64            `json:"tokens"`   // OAuth2 access tokens granted (with Config.GoogleKey)
	ByChannel  map[string]int64 `json:"by_channel"`
}

// Server is a running mock provider.
type Server struct {
	cfg Config
	ln  net.Listener
	srv *fasthttp.Server
	wg  sync.WaitGroup

	mu     sync.Mutex
	faults Faults
	rnd    *rand.Rand
	// seen counts the accepted ids by a 128-bit hash of each: no pointers,
	// which the GC does not scan, and no copy of the ids (with a million
	// string keys, counting was a third of the mock's CPU in a capacity
	// run). Two ids collide with odds of about n²/2¹²⁹.
	seen    idSet
	seeds   [2]maphash.Seed
	stats   Stats
	seq     uint64
	parsers fastjson.ParserPool
	tokens  map[string]time.Time // granted access tokens and their expiry
}

// Start listens on cfg.Addr and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:9090"
	}
	if err := cfg.Faults.Validate(); err != nil {
		return nil, fmt.Errorf("mockserver: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("mockserver: %w", err)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	s := &Server{cfg: cfg, ln: ln, faults: cfg.Faults, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, tokens: map[string]time.Time{}}
	s.stats.ByChannel = map[string]int64{}
	s.setOutage(&s.faults, time.Now())
	s.srv = &fasthttp.Server{Handler: s.handle, Name: "goutong-mock-provider", ReadTimeout: 30 * time.Second,
		MaxRequestBodySize: 32 << 20, NoDefaultDate: true}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL is the base URL to give the adapters.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops the server, giving requests in flight (a slow fault may be
// holding some) two seconds to finish.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.ShutdownWithContext(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = nil // the held requests are dropped, as a provider going away would
	}
	// Serve may not have registered the listener before Shutdown ran;
	// closing it ourselves makes Serve return either way.
	s.ln.Close()
	s.wg.Wait()
	return err
}

// SetFaults replaces the faults at runtime.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setOutage(&f, time.Now())
	s.faults = f
}

func (s *Server) setOutage(f *Faults, now time.Time) {
	if f.OutageFor > 0 {
		f.OutageUntil = now.Add(time.Duration(f.OutageFor))
		f.OutageFor = 0
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByChannel = make(map[string]int64, len(s.stats.ByChannel))
	for k, v := range s.stats.ByChannel {
		st.ByChannel[k] = v
	}
	return st
}

// Count returns how many times id was accepted.
func (s *Server) Count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.seen.count(s.hash(id)))
}

// Reset clears the counters.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = idSet{}
	s.stats = Stats{ByChannel: map[string]int64{}}
}

func (s *Server) accept(channel string, ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Received += int64(len(ids))
	s.stats.ByChannel[channel] += int64(len(ids))
	for _, id := range ids {
		switch s.seen.inc(s.hash(id)) {
		case 1:
			s.stats.Unique++
		case 2:
			s.stats.Duplicates++
		}
	}
}

func (s *Server) hash(id string) idHash {
	return idHash{maphash.String(s.seeds[0], id), maphash.String(s.seeds[1], id)}
}

// decision is what the faults decided for one request.
type decision struct {
	delay      time.Duration
	status     int // 0: answer normally
	retryAfter time.Duration
	itemRate   float64
}

func (s *Server) decide() decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	f := s.faults
	var d decision
	if lo, hi := time.Duration(f.LatencyMin), time.Duration(f.LatencyMax); hi > 0 {
		d.delay = lo
		if span := hi - lo; span > 0 { // not when it wrapped: Int64N panics on a negative span
			d.delay += time.Duration(s.rnd.Int64N(int64(span)))
		}
	}
	if f.SlowRate > 0 && s.rnd.Float64() < f.SlowRate {
		d.delay += time.Duration(f.SlowDelay)
	}
	d.retryAfter = time.Duration(f.RetryAfter)
	switch {
	case time.Now().Before(f.OutageUntil):
		d.status = 503
		d.retryAfter = time.Until(f.OutageUntil)
	case f.ThrottleRate > 0 && s.rnd.Float64() < f.ThrottleRate:
		d.status = 429
	case f.ErrorRate > 0 && s.rnd.Float64() < f.ErrorRate:
		d.status = 500 + 3*s.rnd.IntN(2) // 500 or 503
	}
	if d.status != 0 {
		s.stats.Faulted++
	}
	d.itemRate = f.ItemFailureRate
	return d
}

// itemFails decides one item's injected failure; recipients containing
// "invalid" always fail, so tests can plant failures deterministically.
func (s *Server) itemFails(d decision, recipient string) bool {
	if strings.Contains(recipient, "invalid") {
		return true
	}
	if d.itemRate <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rnd.Float64() < d.itemRate
}

func (s *Server) reject(n int) {
	s.mu.Lock()
	s.stats.Rejected += int64(n)
	s.mu.Unlock()
}

func (s *Server) nextID() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return s.seq
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	b, _ := gojson.Marshal(v)
	ctx.SetBody(b)
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	// fasthttp does not recover a handler's panic; the mock runs inside
	// serve (--mock-provider), which must outlive a bug of the mock's.
	defer func() {
		if v := recover(); v != nil {
			ctx.Response.Reset()
			writeJSON(ctx, 500, map[string]string{"error": fmt.Sprintf("mock provider bug: %v", v)})
		}
	}()
	path := string(ctx.Path())
	method := string(ctx.Method())
	switch {
	case path == "/stats" && method == "GET":
		writeJSON(ctx, 200, s.Stats())
		return
	case path == "/faults" && method == "GET":
		s.mu.Lock()
		f := s.faults
		s.mu.Unlock()
		writeJSON(ctx, 200, f)
		return
	case path == "/faults" && method == "POST":
		var f Faults
		dec := json.NewDecoder(strings.NewReader(string(ctx.PostBody())))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			writeJSON(ctx, 400, map[string]string{"error": "faults: " + err.Error()})
			return
		}
		if err := f.Validate(); err != nil {
			writeJSON(ctx, 400, map[string]string{"error": err.Error()})
			return
		}
		s.SetFaults(f)
		writeJSON(ctx, 200, f)
		return
	case path == "/reset" && method == "POST":
		s.Reset()
		ctx.SetStatusCode(204)
		return
	case path == "/healthz":
		ctx.SetStatusCode(200)
		return
	case path == "/token" && method == "POST" && s.cfg.GoogleKey != nil:
		s.grantToken(ctx)
		return
	}
	if method != "POST" {
		writeJSON(ctx, 405, map[string]string{"error": "method not allowed"})
		return
	}
	var route func(*fasthttp.RequestCtx, decision)
	switch {
	case strings.HasPrefix(path, "/2010-04-01/Accounts/") && strings.HasSuffix(path, "/Messages.json"):
		route = s.twilio
	case path == "/v3/mail/send":
		route = s.sendgrid
	case strings.HasPrefix(path, "/v1/projects/") && strings.HasSuffix(path, "/messages:send"):
		route = s.fcm
	case strings.HasPrefix(path, "/webhook"):
		route = s.webhook
	default:
		writeJSON(ctx, 404, map[string]string{"error": "no such endpoint: " + path})
		return
	}
	d := s.decide()
	if d.delay > 0 {
		time.Sleep(d.delay)
	}
	if d.status != 0 {
		if d.retryAfter > 0 {
			secs := int((d.retryAfter + time.Second - 1) / time.Second)
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
		}
		writeJSON(ctx, d.status, map[string]string{"error": "injected fault"})
		return
	}
	route(ctx, d)
}

func (s *Server) twilio(ctx *fasthttp.RequestCtx, d decision) {
	if !strings.HasPrefix(string(ctx.Request.Header.Peek("Authorization")), "Basic ") {
		writeJSON(ctx, 401, map[string]any{"code": 20003, "message": "Authenticate", "status": 401})
		return
	}
	args := ctx.PostArgs()
	to, body := string(args.Peek("To")), string(args.Peek("Body"))
	if to == "" || body == "" || (len(args.Peek("From")) == 0 && len(args.Peek("MessagingServiceSid")) == 0) {
		s.reject(1)
		writeJSON(ctx, 400, map[string]any{"code": 21604, "message": "A 'To', 'Body' and 'From' or 'MessagingServiceSid' are required.", "status": 400})
		return
	}
	if s.itemFails(d, to) {
		s.reject(1)
		writeJSON(ctx, 400, map[string]any{"code": 21211, "message": fmt.Sprintf("The 'To' number %s is not a valid phone number.", to), "status": 400})
		return
	}
	id := string(ctx.Request.Header.Peek(providers.IDHeader))
	s.accept("sms", id)
	writeJSON(ctx, 201, map[string]any{"sid": fmt.Sprintf("SM%032x", s.nextID()), "status": "queued", "to": to})
}

type sgRequest struct {
	Personalizations []struct {
		To []struct {
			Email string `json:"email"`
		} `json:"to"`
		CustomArgs map[string]string `json:"custom_args"`
	} `json:"personalizations"`
	From struct {
		Email string `json:"email"`
	} `json:"from"`
	Content []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"content"`
	TemplateID string `json:"template_id"`
}

type sgError struct {
	Message string `json:"message"`
	Field   string `json:"field"`
}

func (s *Server) sendgrid(ctx *fasthttp.RequestCtx, d decision) {
	if !strings.HasPrefix(string(ctx.Request.Header.Peek("Authorization")), "Bearer ") {
		writeJSON(ctx, 401, map[string]any{"errors": []sgError{{Message: "authorization required"}}})
		return
	}
	var req sgRequest
	if err := gojson.Unmarshal(ctx.PostBody(), &req); err != nil {
		writeJSON(ctx, 400, map[string]any{"errors": []sgError{{Message: "Bad Request: " + err.Error()}}})
		return
	}
	var errs []sgError
	switch {
	case len(req.Personalizations) == 0 || len(req.Personalizations) > 1000:
		errs = append(errs, sgError{Field: "personalizations", Message: "must have between 1 and 1000 items"})
	case req.From.Email == "":
		errs = append(errs, sgError{Field: "from.email", Message: "The from email does not contain a valid address."})
	case req.TemplateID == "" && len(req.Content) == 0:
		errs = append(errs, sgError{Field: "content", Message: "Unless a valid template_id is provided, the content parameter is required."})
	}
	for i, p := range req.Personalizations {
		if len(p.To) == 0 || !strings.Contains(p.To[0].Email, "@") || s.itemFails(d, p.To[0].Email) {
			errs = append(errs, sgError{Field: fmt.Sprintf("personalizations.%d.to.0.email", i), Message: "Does not contain a valid address."})
		}
	}
	if len(errs) > 0 {
		s.reject(len(errs))
		writeJSON(ctx, 400, map[string]any{"errors": errs})
		return
	}
	ids := make([]string, 0, len(req.Personalizations))
	for _, p := range req.Personalizations {
		ids = append(ids, p.CustomArgs["goutong_id"])
	}
	s.accept("email", ids...)
	ctx.Response.Header.Set("X-Message-Id", fmt.Sprintf("mock%016x", s.nextID()))
	ctx.SetStatusCode(202)
}

// grantToken is Google's OAuth2 token endpoint for service accounts: the
// JWT bearer grant (RFC 7523) with an RS256 assertion.
func (s *Server) grantToken(ctx *fasthttp.RequestCtx) {
	refuse := func(why string) {
		writeJSON(ctx, 400, map[string]string{"error": "invalid_grant", "error_description": why})
	}
	if string(ctx.PostArgs().Peek("grant_type")) != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		refuse("grant_type must be urn:ietf:params:oauth:grant-type:jwt-bearer")
		return
	}
	var claims struct {
		jwt.RegisteredClaims
		Scope string `json:"scope"`
	}
	_, err := jwt.ParseWithClaims(string(ctx.PostArgs().Peek("assertion")), &claims,
		func(*jwt.Token) (any, error) { return s.cfg.GoogleKey, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(s.URL()+"/token"), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	if err != nil {
		refuse("assertion: " + err.Error())
		return
	}
	if !slices.Contains(strings.Fields(claims.Scope), providers.FCMScope) || claims.Issuer == "" {
		refuse("the assertion needs an issuer and the scope " + providers.FCMScope)
		return
	}
	ttl := s.cfg.TokenTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	tok := fmt.Sprintf("ya29.mock-%016x", s.nextID())
	s.mu.Lock()
	now := time.Now()
	for t, exp := range s.tokens {
		if now.After(exp) {
			delete(s.tokens, t)
		}
	}
	s.tokens[tok] = now.Add(ttl)
	s.stats.Tokens++
	s.mu.Unlock()
	writeJSON(ctx, 200, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl.Seconds())})
}

// authorized checks an FCM request's bearer token: any with no GoogleKey
// configured, else one the mock granted that has not expired.
func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	tok, ok := strings.CutPrefix(string(ctx.Request.Header.Peek("Authorization")), "Bearer ")
	if !ok || tok == "" {
		return false
	}
	if s.cfg.GoogleKey == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && time.Now().Before(exp)
}

func (s *Server) fcm(ctx *fasthttp.RequestCtx, d decision) {
	if !s.authorized(ctx) {
		writeJSON(ctx, 401, map[string]any{"error": map[string]any{"code": 401, "status": "UNAUTHENTICATED",
			"message": "Request had invalid authentication credentials. Expected OAuth 2 access token."}})
		return
	}
	var req struct {
		Message struct {
			Token        string                        `json:"token"`
			Notification *struct{ Title, Body string } `json:"notification"`
			Data         map[string]string             `json:"data"`
		} `json:"message"`
	}
	if err := gojson.Unmarshal(ctx.PostBody(), &req); err != nil || req.Message.Token == "" {
		s.reject(1)
		writeJSON(ctx, 400, map[string]any{"error": map[string]any{"code": 400, "status": "INVALID_ARGUMENT", "message": "message.token is required"}})
		return
	}
	if s.itemFails(d, req.Message.Token) {
		s.reject(1)
		writeJSON(ctx, 404, map[string]any{"error": map[string]any{"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
			"details": []map[string]string{{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}}}})
		return
	}
	s.accept("push", req.Message.Data["goutong_id"])
	project := strings.TrimSuffix(strings.TrimPrefix(string(ctx.Path()), "/v1/projects/"), "/messages:send")
	writeJSON(ctx, 200, map[string]string{"name": fmt.Sprintf("projects/%s/messages/%d", project, s.nextID())})
}

func (s *Server) webhook(ctx *fasthttp.RequestCtx, d decision) {
	body := ctx.PostBody()
	if s.cfg.WebhookSecret != "" {
		err := providers.VerifySignature([]byte(s.cfg.WebhookSecret), string(ctx.Request.Header.Peek(providers.TimestampHeader)),
			string(ctx.Request.Header.Peek(providers.SignatureHeader)), body, time.Now(), 5*time.Minute)
		if err != nil {
			writeJSON(ctx, 401, map[string]string{"error": err.Error()})
			return
		}
	}
	// fastjson and the codec's arena, as the engine reads: at a few hundred
	// thousand items a second the mock must not be what a capacity run
	// measures (encoding/json here took a fifth of an end-to-end run's CPU).
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil {
		writeJSON(ctx, 400, map[string]string{"error": err.Error()})
		return
	}
	items := []*fastjson.Value{v}
	batched := v.Type() == fastjson.TypeArray
	if batched {
		items, _ = v.Array()
	}
	results := make([]providers.WebhookItemResult, 0, len(items))
	var ok []string
	for _, item := range items {
		n, err := webhookItem(item)
		if err != nil {
			s.reject(1)
			if !batched {
				writeJSON(ctx, 400, map[string]string{"error": err.Error()})
				return
			}
			results = append(results, providers.WebhookItemResult{Status: "failed", Error: err.Error()})
			continue
		}
		if s.itemFails(d, n.recipient) {
			s.reject(1)
			if !batched {
				writeJSON(ctx, 422, map[string]string{"error": "recipient refused"})
				return
			}
			results = append(results, providers.WebhookItemResult{ID: n.id, Status: "failed", Error: "recipient refused"})
			continue
		}
		ok = append(ok, n.id)
		results = append(results, providers.WebhookItemResult{ID: n.id, Status: "ok"})
	}
	s.accept("webhook", ok...)
	if batched {
		writeJSON(ctx, 200, map[string]any{"results": results})
		return
	}
	ctx.SetStatusCode(204)
}

// webhookNote is what the mock reads of a webhook item: a receiver needs
// no more to answer, and a full decode took a third of the mock's CPU,
// which a capacity run on the same cores then measured as the engine's.
type webhookNote struct{ id, recipient string }

// webhookItem reads v's id and recipient. Both alias the parser's memory,
// so they are valid only until the handler returns and its parser is
// reused: accept hashes the ids and the answer is encoded before that.
func webhookItem(v *fastjson.Value) (webhookNote, error) {
	o, err := v.Object()
	if err != nil {
		return webhookNote{}, err
	}
	id, err := nonEmpty(o, "id")
	if err != nil {
		return webhookNote{}, err
	}
	recipient, err := nonEmpty(o, "recipient")
	if err != nil {
		return webhookNote{}, err
	}
	return webhookNote{id: id, recipient: recipient}, nil
}

func nonEmpty(o *fastjson.Object, field string) (string, error) {
	v := o.Get(field)
	var b []byte
	if v != nil && v.Type() == fastjson.TypeString {
		b = v.GetStringBytes()
	}
	if len(b) == 0 {
		return "", fmt.Errorf("%s: a non-empty string is required", field)
	}
	return unsafe.String(&b[0], len(b)), nil
}
