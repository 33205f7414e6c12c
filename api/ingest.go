package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
	"go.uber.org/zap"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
)

// maxErrors bounds the errors listed for one rejected batch.
const maxErrors = 100

var parserPool fastjson.ParserPool

// ingest handles POST /v1/notifications: one JSON object, a JSON array, or
// NDJSON (Content-Type application/x-ndjson).
func (s *Server) ingest(ctx *fasthttp.RequestCtx, key Key) {
	if err := s.readiness(); err != nil {
		ctx.Response.Header.Set("Retry-After", "1")
		code, reason := notReady(err)
		if reason == "" {
			reason = "not ready yet"
		}
		writeError(ctx, fasthttp.StatusServiceUnavailable, apiError{Code: code, Message: reason})
		return
	}
	now := s.cfg.Now()
	body, release, ok := s.decodedBody(ctx)
	if !ok {
		return
	}
	defer release()
	ns, single, errs, status := decodeBody(s.cfg.Engine.Codec(), body, string(ctx.Request.Header.ContentType()), key, s.cfg.MaxItems, s.cfg.CheckTemplate)
	if status != 0 {
		if len(errs) == 1 {
			writeError(ctx, status, errs[0])
		} else {
			writeErrors(ctx, status, errs)
		}
		return
	}
	if h := ctx.Request.Header.Peek("Idempotency-Key"); len(h) > 0 {
		if e := applyRequestKey(ns, single, string(h)); e != nil {
			writeError(ctx, fasthttp.StatusBadRequest, *e)
			return
		}
	}
	if ahead := s.cfg.MaxScheduleAhead; ahead > 0 {
		for i, n := range ns {
			if n.NotBefore.Sub(now) > ahead {
				writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Index: ptr(i), Field: "not_before",
					Message: fmt.Sprintf("more than %v ahead (api.max_schedule_ahead)", ahead)})
				return
			}
		}
	}
	// Backlog shedding: urgent traffic still gets in when the log is deep.
	if s.cfg.MaxBacklog > 0 && s.cfg.Engine.Backlog() > s.cfg.MaxBacklog {
		for i, n := range ns {
			if n.Priority == notification.Normal || n.Priority == notification.Bulk {
				ctx.Response.Header.Set("Retry-After", "5")
				writeError(ctx, fasthttp.StatusServiceUnavailable, apiError{Code: "backlog", Index: ptr(i), Field: "priority",
					Message: "backlog above its maximum: " + n.Priority.String() + " notifications are refused for now; critical and high are accepted"})
				return
			}
		}
	}
	tenant := key.Tenant
	if tenant == "" {
		tenant = ns[0].Tenant
	}
	if l := s.limiter(tenant); l != nil {
		if len(ns) > l.Burst() {
			writeError(ctx, fasthttp.StatusTooManyRequests, apiError{Code: "quota", Field: "items",
				Message: fmt.Sprintf("%d items exceed the tenant's burst of %d; split the batch", len(ns), l.Burst())})
			return
		}
		r := l.ReserveN(now, len(ns))
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
			writeError(ctx, fasthttp.StatusTooManyRequests, apiError{Code: "quota", Message: "tenant " + tenant + " is over its ingest quota"})
			return
		}
	}
	pctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	adm, accepted, err := s.cfg.Engine.Ingest(pctx, ns, now)
	cancel()
	var inProgress *engine.InProgressError
	var partly *engine.PartlyWrittenError
	switch {
	case errors.As(err, &inProgress):
		// The first request with this key is still writing it: a 200 now
		// would promise a notification that request may yet fail to write.
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusConflict, apiError{Code: "in_progress", Index: ptr(inProgress.Index), Field: "idempotency_key",
			Message: "another request with this idempotency key is still being accepted; nothing of this request was accepted, retry it"})
		return
	case errors.As(err, &partly):
		// Not "nothing was accepted": what was written will be sent, and
		// the resend finds it by its keys.
		s.cfg.Logger.Warn("request failed", zap.String("stage", "ingest"), zap.Error(err))
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusServiceUnavailable, apiError{Code: "partly_written",
			Message: fmt.Sprintf("the log wrote %d of this request's %d new notifications, which will be sent, and failed the others; "+
				"send the request again: its idempotency keys keep the written ones from being sent twice", partly.Written, partly.Of)})
		return
	case err != nil:
		s.unavailable(ctx, "ingest", err)
		return
	}
	for i, n := range ns {
		if !adm[i].Duplicate {
			s.m.accepted.WithLabelValues(n.Priority.String()).Inc()
		}
	}
	s.respond(ctx, adm, accepted, single)
}

// respond answers 202 when anything was accepted, 200 when every item
// repeated an earlier one; a single object gets a single object back.
func (s *Server) respond(ctx *fasthttp.RequestCtx, adm []engine.Admission, accepted int, single bool) {
	code := fasthttp.StatusAccepted
	if accepted == 0 {
		code = fasthttp.StatusOK
	}
	// The duplicates' current states, looked up together.
	var dupIDs []string
	for i := range adm {
		if adm[i].Duplicate {
			dupIDs = append(dupIDs, adm[i].ID)
		}
	}
	var states []engine.State
	if len(dupIDs) > 0 {
		states, _ = s.cfg.Engine.States(dupIDs) // without them, each answers "accepting"
	}
	dup := 0
	item := func(b []byte, i int) []byte {
		if !adm[i].Duplicate {
			b = append(b, `{"id":"`...)
			b = append(b, adm[i].ID...)
			return append(b, `","status":"accepted"}`...)
		}
		s.m.dups.Inc()
		// The original is durable (Ingest waits for a key in progress), but
		// its accepted event can be missing from the status store: a failed
		// write of it, which the status replica makes good.
		st := "accepting"
		if dup < len(states) && states[dup] != "" {
			st = string(states[dup])
		}
		dup++
		b = append(b, `{"id":`...)
		b = strconv.AppendQuote(b, adm[i].ID)
		b = append(b, `,"status":`...)
		b = strconv.AppendQuote(b, st)
		return append(b, `,"duplicate":true}`...)
	}
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(code)
	// One allocation for the whole answer (~55 bytes an item), not a
	// doubling at a time.
	b := slices.Grow(ctx.Response.Body()[:0], 64+len(adm)*56)
	if single {
		b = item(b, 0)
	} else {
		b = append(b, `{"accepted":`...)
		b = strconv.AppendInt(b, int64(accepted), 10)
		b = append(b, `,"duplicates":`...)
		b = strconv.AppendInt(b, int64(len(adm)-accepted), 10)
		b = append(b, `,"items":[`...)
		for i := range adm {
			if i > 0 {
				b = append(b, ',')
			}
			b = item(b, i)
		}
		b = append(b, "]}"...)
	}
	ctx.Response.SetBodyRaw(append(b, '\n'))
}

func (s *Server) unavailable(ctx *fasthttp.RequestCtx, what string, err error) {
	s.cfg.Logger.Warn("request failed", zap.String("stage", what), zap.Error(err))
	ctx.Response.Header.Set("Retry-After", "1")
	writeError(ctx, fasthttp.StatusServiceUnavailable, apiError{Code: "unavailable",
		Message: what + " unavailable; nothing of this request was accepted"})
}

// decodeBody parses a request body of outside bytes into notifications,
// validated and bound to the caller's tenant: single reports a lone JSON
// object; a non-zero status rejects the request with errs, which name the
// item index and the field (any invalid item rejects the batch).
func decodeBody(codec *notification.Codec, body []byte, ct string, key Key, maxItems int,
	checkTemplate func(*notification.Notification) error) (ns []*notification.Notification, single bool, errs []apiError, status int) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, false, []apiError{{Code: "invalid_body", Message: "empty body: send a JSON object, a JSON array or NDJSON"}}, fasthttp.StatusBadRequest
	}
	p := parserPool.Get()
	defer parserPool.Put(p)
	// The request's notifications live until it is answered: one arena.
	arena := notification.NewArena(bytes.Count(body, []byte{'\n'})+1, len(body))
	// raw is the text v was parsed from alone, nil for an array's item.
	add := func(i int, v *fastjson.Value, raw []byte) {
		n, err := codec.DecodeParsedIn(arena, v, raw)
		if err == nil {
			err = bindTenant(n, key)
		}
		if err == nil && checkTemplate != nil && n.Template != "" {
			if err = checkTemplate(n); err != nil && !errors.As(err, new(*notification.FieldError)) {
				err = &notification.FieldError{Field: "template", Reason: err.Error()}
			}
		}
		if err != nil {
			if len(errs) < maxErrors {
				errs = append(errs, fieldError(i, err))
			}
			return
		}
		ns = append(ns, n)
	}
	switch {
	case bytesContains(ct, "ndjson") || bytesContains(ct, "jsonl") || bytesContains(ct, "json-seq"):
		i := 0
		for line := range bytes.SplitSeq(body, []byte{'\n'}) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			if i >= maxItems {
				return nil, false, []apiError{tooMany(maxItems)}, fasthttp.StatusRequestEntityTooLarge
			}
			v, err := parseChecked(p, line)
			if err != nil {
				if len(errs) < maxErrors {
					errs = append(errs, apiError{Code: "malformed_json", Index: ptr(i), Message: "malformed JSON: " + err.Error()})
				}
			} else {
				add(i, v, line)
			}
			i++
		}
	case trimmed[0] == '[':
		v, err := parseChecked(p, body)
		if err != nil {
			return nil, false, []apiError{{Code: "malformed_json", Message: "malformed JSON: " + err.Error()}}, fasthttp.StatusBadRequest
		}
		arr, _ := v.Array()
		if len(arr) > maxItems {
			return nil, false, []apiError{tooMany(maxItems)}, fasthttp.StatusRequestEntityTooLarge
		}
		for i, it := range arr {
			add(i, it, nil)
		}
	case trimmed[0] == '{':
		v, err := parseChecked(p, body)
		if err != nil {
			return nil, false, []apiError{{Code: "malformed_json", Message: "malformed JSON: " + err.Error()}}, fasthttp.StatusBadRequest
		}
		single = true
		add(0, v, body)
		if len(errs) == 1 {
			errs[0].Index = nil
		}
	default:
		return nil, false, []apiError{{Code: "invalid_body", Message: "the body must be a JSON object, a JSON array, or NDJSON with Content-Type application/x-ndjson"}}, fasthttp.StatusBadRequest
	}
	if len(errs) > 0 {
		for _, e := range errs {
			if e.Code == "forbidden" {
				return nil, false, errs, fasthttp.StatusForbidden
			}
		}
		return nil, false, errs, fasthttp.StatusBadRequest
	}
	if len(ns) == 0 {
		return nil, false, []apiError{{Code: "invalid_body", Message: "no notifications in the body"}}, fasthttp.StatusBadRequest
	}
	return ns, single, nil, 0
}

// parseChecked parses JSON text after refusing what fastjson's parser would
// let through and JSON does not (see notification.CheckJSON).
func parseChecked(p *fastjson.Parser, text []byte) (*fastjson.Value, error) {
	if err := notification.CheckJSON(text); err != nil {
		return nil, err
	}
	return p.ParseBytes(text)
}

var errForeignTenant = errors.New("tenant differs from the API key's tenant")

// tenant binds n to the caller's tenant.
func bindTenant(n *notification.Notification, key Key) error {
	switch {
	case key.Tenant == "":
		if n.Tenant == "" {
			n.Tenant = "default"
		}
	case n.Tenant == "":
		n.Tenant = key.Tenant
	case n.Tenant != key.Tenant:
		return errForeignTenant
	}
	return nil
}

func fieldError(i int, err error) apiError {
	if errors.Is(err, errForeignTenant) {
		return apiError{Code: "forbidden", Index: ptr(i), Field: "tenant", Message: err.Error()}
	}
	var fe *notification.FieldError
	if errors.As(err, &fe) {
		return apiError{Code: "invalid_field", Index: ptr(i), Field: fe.Field, Message: fe.Error()}
	}
	return apiError{Code: "invalid", Index: ptr(i), Message: err.Error()}
}

func tooMany(n int) apiError {
	return apiError{Code: "too_many_items", Field: "items", Message: "more than " + strconv.Itoa(n) + " notifications in one request"}
}

func bytesContains(s, sub string) bool { return bytes.Contains([]byte(s), []byte(sub)) }

// body reads the request body up to MaxBodyBytes; release hands its
// buffer back once nothing refers to it (the decoder copies what it keeps
// into the request's arena). A larger body is drained (up to four times
// the limit, then the connection is closed) so the client reads the 413
// rather than a reset.
func (s *Server) body(ctx *fasthttp.RequestCtx) (body []byte, release func(), ok bool) {
	stream := ctx.Request.BodyStream()
	if stream == nil {
		return ctx.PostBody(), func() {}, true
	}
	limit := int64(s.cfg.MaxBodyBytes)
	switch cl := ctx.Request.Header.ContentLength(); {
	case cl >= 0 && int64(cl) <= limit:
		// Read into a buffer of the declared size, from a pool: ReadAll
		// grew every 100 KB batch from 512 bytes, copying it ~8 times.
		buf := bodyBuffers.Get().(*[]byte)
		b := slices.Grow((*buf)[:0], cl)[:cl]
		if _, err := io.ReadFull(stream, b); err == nil {
			return b, func() {
				if cap(b) <= maxPooledBody {
					*buf = b
					bodyBuffers.Put(buf)
				}
			}, true
		}
		bodyBuffers.Put(buf)
	case cl < 0: // chunked: no size to read into
		b, err := io.ReadAll(io.LimitReader(stream, limit+1))
		if err == nil && int64(len(b)) <= limit {
			return b, func() {}, true
		}
	}
	_, _ = io.CopyN(io.Discard, stream, 4*limit)
	ctx.SetConnectionClose()
	return nil, nil, false
}

// bodyBuffers hold request bodies between requests.
var bodyBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBody keeps the pool from pinning one huge body.
const maxPooledBody = 4 << 20

func bodyTooLarge(limit int) apiError {
	return apiError{Code: "body_too_large", Message: "request body exceeds the limit of " + strconv.Itoa(limit) + " bytes"}
}

// applyRequestKey gives a request's Idempotency-Key header (the HTTP
// convention for a retried request, and what a 500 asks a client to resend
// with) to its notifications: a single one takes it as its idempotency_key
// (one of its own must be the same); in a batch, each item without one of
// its own takes the header and its index, key/index, so a resend of the
// batch with the header answers those items as duplicates, with
// dedupe.at_ingest keyed too. Reusing a header for another request is like
// reusing any key: its items answer as the first's.
func applyRequestKey(ns []*notification.Notification, single bool, key string) *apiError {
	limit := notification.MaxKeyLen
	if !single {
		limit -= 1 + len(strconv.Itoa(len(ns)-1))
	}
	if len(key) > limit || !utf8.ValidString(key) {
		return &apiError{Code: "invalid_field", Field: "Idempotency-Key",
			Message: fmt.Sprintf("the header must be valid UTF-8 of at most %d bytes (idempotency keys are %d, and a batch's items add /index)", limit, notification.MaxKeyLen)}
	}
	if single {
		if n := ns[0]; n.IdempotencyKey != "" && n.IdempotencyKey != key {
			return &apiError{Code: "invalid_field", Field: "idempotency_key", Message: "differs from the request's Idempotency-Key header"}
		}
		ns[0].IdempotencyKey = key
		return nil
	}
	for i, n := range ns {
		if n.IdempotencyKey == "" {
			n.IdempotencyKey = key + "/" + strconv.Itoa(i)
		}
	}
	return nil
}
