package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
)

// apiError is the JSON error body: {"error": {...}} or {"errors": [...]}.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	Index   *int   `json:"index,omitempty"` // the item of a batch
}

func ptr(i int) *int { return &i }

func itoa(i int) string { return strconv.Itoa(i) }

func writeJSON(ctx *fasthttp.RequestCtx, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = fasthttp.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encoding the answer failed"}}`)
	}
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(code)
	ctx.Response.SetBodyRaw(append(b, '\n'))
}

func writeError(ctx *fasthttp.RequestCtx, code int, e apiError) {
	writeJSON(ctx, code, map[string]apiError{"error": e})
}

func writeErrors(ctx *fasthttp.RequestCtx, code int, es []apiError) {
	writeJSON(ctx, code, map[string]any{"error": es[0], "errors": es})
}

// status handles GET /v1/notifications/{id}. Another tenant's notification
// is reported as not found: its existence is not the caller's business.
func (s *Server) status(ctx *fasthttp.RequestCtx, key Key, id string) {
	if id == "" || strings.Contains(id, "/") {
		writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Field: "id", Message: "a notification id is required"})
		return
	}
	st, err := s.cfg.Engine.Status(id)
	if err == nil && !key.Admin && key.Tenant != "" && st.Current.Tenant != "" && st.Current.Tenant != key.Tenant {
		err = engine.ErrNotFound
	}
	switch {
	case errors.Is(err, engine.ErrNotFound):
		writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Field: "id", Message: "no notification " + id})
	case err != nil:
		s.cfg.Logger.Warn("status read failed", zap.Error(err))
		writeError(ctx, fasthttp.StatusInternalServerError, apiError{Code: "internal", Message: "status store read failed"})
	default:
		writeJSON(ctx, fasthttp.StatusOK, st)
	}
}

// receipts handles POST /v1/receipts/{provider}: the provider's own
// signature, not an API key, authenticates it.
func (s *Server) receipts(ctx *fasthttp.RequestCtx, provider string) {
	rp, ok := s.cfg.Engine.ReceiptParser(provider)
	if !ok {
		writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Field: "provider",
			Message: "no configured provider " + provider + " takes receipts"})
		return
	}
	scheme := "http"
	if ctx.IsTLS() || string(ctx.Request.Header.Peek("X-Forwarded-Proto")) == "https" {
		scheme = "https"
	}
	req := engine.ReceiptRequest{
		URL:    scheme + "://" + string(ctx.Host()) + string(ctx.RequestURI()),
		Header: func(k string) string { return string(ctx.Request.Header.Peek(k)) },
		Body:   ctx.PostBody(),
		Now:    s.cfg.Now(),
	}
	rs, err := rp.ParseReceipts(req)
	switch {
	case errors.Is(err, engine.ErrBadSignature):
		writeError(ctx, fasthttp.StatusUnauthorized, apiError{Code: "bad_signature", Message: err.Error()})
		return
	case err != nil:
		writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_receipt", Message: err.Error()})
		return
	}
	// Not the RequestCtx as the parent: fasthttp reuses it once the handler
	// returns, while a timer of a context derived from it may still read it
	// (a data race the race detector caught in the dead-letter listing).
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	applied, unknown, err := s.cfg.Engine.ApplyReceipts(rctx, provider, rs)
	if err != nil {
		s.unavailable(ctx, "status", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"applied": applied, "unknown": unknown})
}

// admin handles /v1/admin/...:
//
//	GET  channels                      stats of every channel
//	PUT  channels/{ch}/rate            {"rate_per_sec": 250}
//	POST channels/{ch}/pause | resume
//	GET  dlq?limit=100                 dead letters not replayed yet
//	POST dlq/replay                    {"reason": "permanent"} (optional filter)
func (s *Server) admin(ctx *fasthttp.RequestCtx, method, path string) {
	parts := strings.Split(path, "/")
	switch {
	case path == "channels":
		if allow(ctx, method, "GET") {
			writeJSON(ctx, fasthttp.StatusOK, map[string]any{"channels": s.cfg.Engine.Stats(), "backlog": s.cfg.Engine.Backlog()})
		}
	case len(parts) == 3 && parts[0] == "channels" && parts[2] == "rate":
		if !allow(ctx, method, "PUT") {
			return
		}
		var body struct {
			Rate *float64 `json:"rate_per_sec"`
		}
		if err := strictJSON(ctx.PostBody(), &body); err != nil || body.Rate == nil {
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Field: "rate_per_sec", Message: "want {\"rate_per_sec\": <positive number>}"})
			return
		}
		if err := s.cfg.Engine.SetRate(notification.Channel(parts[1]), *body.Rate); err != nil {
			code := fasthttp.StatusBadRequest
			if strings.Contains(err.Error(), "unknown channel") {
				code = fasthttp.StatusNotFound
			}
			writeError(ctx, code, apiError{Code: "invalid_field", Field: "rate_per_sec", Message: err.Error()})
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"channel": parts[1], "rate_per_sec": *body.Rate})
	case len(parts) == 3 && parts[0] == "channels" && (parts[2] == "pause" || parts[2] == "resume"):
		if !allow(ctx, method, "POST") {
			return
		}
		if err := s.cfg.Engine.PauseChannel(notification.Channel(parts[1]), parts[2] == "pause"); err != nil {
			writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Field: "channel", Message: err.Error()})
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"channel": parts[1], "paused": parts[2] == "pause"})
	case path == "snapshot":
		if allow(ctx, method, "GET") {
			s.snapshot(ctx)
		}
	case path == "dlq":
		if allow(ctx, method, "GET") {
			s.dlqList(ctx)
		}
	case path == "dlq/replay":
		if allow(ctx, method, "POST") {
			s.dlqReplay(ctx)
		}
	case path == "reconcile":
		switch method {
		case "GET":
			runs, err := s.cfg.Engine.ReconcileRuns()
			if err != nil {
				s.unavailable(ctx, "reconciliation runs", err)
				return
			}
			writeJSON(ctx, fasthttp.StatusOK, map[string]any{"runs": runs})
		case "POST":
			s.reconcile(ctx)
		default:
			allow(ctx, method, "GET, POST")
		}
	case len(parts) == 3 && parts[0] == "reconcile" && parts[2] == "differences":
		if allow(ctx, method, "GET") {
			s.reconcileDifferences(ctx, parts[1])
		}
	default:
		writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Message: "no admin route " + path})
	}
}

func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

type deadLetterJSON struct {
	Reason       string          `json:"reason"`
	Error        string          `json:"error"`
	Attempts     int             `json:"attempts"`
	Source       string          `json:"source"`
	FailedAt     time.Time       `json:"failed_at"`
	Topic        string          `json:"topic"`
	Partition    int32           `json:"partition"`
	Offset       int64           `json:"offset"`
	Notification json.RawMessage `json:"notification,omitempty"`
	Raw          string          `json:"raw,omitempty"` // when the value is not JSON
}

func (s *Server) dlqList(ctx *fasthttp.RequestCtx) {
	limit := 100
	if v := ctx.QueryArgs().Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 10_000 {
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Field: "limit", Message: "limit must be 1..10000"})
			return
		}
		limit = n
	}
	// A context of its own, not the RequestCtx (see receipts).
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dls, err := s.cfg.Engine.DeadLetters(rctx, limit)
	if err != nil {
		s.unavailable(ctx, "dead letters", err)
		return
	}
	out := make([]deadLetterJSON, 0, len(dls))
	for _, d := range dls {
		r := d.Record
		j := deadLetterJSON{Reason: d.Reason, Error: d.Error, Attempts: d.Attempts, Source: d.Source, FailedAt: d.FailedAt,
			Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
		if json.Valid(r.Value) {
			j.Notification = r.Value
		} else {
			j.Raw = string(r.Value)
		}
		out = append(out, j)
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"dead_letters": out, "count": len(out)})
}

// reconcile runs a reconciliation now: POST /v1/admin/reconcile
// {"from": RFC 3339, "to": RFC 3339, "redrive": ["missing-receipt"]};
// without from and to it takes yesterday (UTC).
func (s *Server) reconcile(ctx *fasthttp.RequestCtx) {
	var body struct {
		From    *time.Time `json:"from"`
		To      *time.Time `json:"to"`
		Redrive []string   `json:"redrive"`
	}
	if b := ctx.PostBody(); len(bytes.TrimSpace(b)) > 0 {
		if err := strictJSON(b, &body); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_body",
				Message: `want {"from": "2026-11-24T00:00:00Z", "to": "...", "redrive": ["missing-receipt"]}: ` + err.Error()})
			return
		}
	}
	opts := engine.Yesterday(time.Now())
	if body.From != nil {
		opts.From = *body.From
	}
	if body.To != nil {
		opts.To = *body.To
	}
	if !opts.To.After(opts.From) {
		writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Field: "to", Message: "to must be after from"})
		return
	}
	for _, k := range body.Redrive {
		if !slices.Contains(engine.RedriveKinds, k) {
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_field", Field: "redrive",
				Message: fmt.Sprintf("%q cannot be redriven; want some of %v", k, engine.RedriveKinds)})
			return
		}
	}
	opts.Redrive = body.Redrive
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	run, err := s.cfg.Engine.RunReconcile(rctx, opts, "api")
	switch {
	case errors.Is(err, engine.ErrReconcileBusy):
		writeError(ctx, fasthttp.StatusConflict, apiError{Code: "busy", Message: err.Error()})
	case errors.Is(err, engine.ErrNoStatusStore):
		writeError(ctx, fasthttp.StatusNotImplemented, apiError{Code: "no_status_store", Message: err.Error()})
	case err != nil:
		s.unavailable(ctx, "reconciliation", err)
	default:
		writeJSON(ctx, fasthttp.StatusOK, run)
	}
}

func (s *Server) reconcileDifferences(ctx *fasthttp.RequestCtx, id string) {
	rc, err := s.cfg.Engine.ReconcileDifferences(id)
	if errors.Is(err, engine.ErrUnknownRun) {
		writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Field: "id", Message: "no reconciliation run " + id})
		return
	}
	if err != nil {
		s.unavailable(ctx, "reconciliation differences", err)
		return
	}
	ctx.SetContentType("application/x-ndjson")
	ctx.SetStatusCode(fasthttp.StatusOK)
	// fasthttp streams the file and closes it when the response is sent.
	ctx.SetBodyStream(rc, -1)
}

func (s *Server) dlqReplay(ctx *fasthttp.RequestCtx) {
	var body struct {
		Reason string `json:"reason"`
	}
	if b := ctx.PostBody(); len(bytes.TrimSpace(b)) > 0 {
		if err := strictJSON(b, &body); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "invalid_body", Message: "want {} or {\"reason\": \"...\"}: " + err.Error()})
			return
		}
	}
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := s.cfg.Engine.ReplayDeadLettersOf(rctx, body.Reason)
	if err != nil {
		s.unavailable(ctx, "replay", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, rep)
}
