package mockserver

import (
	"bytes"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// request runs one request through the server's handler, as the network
// would hand it over.
func request(s *Server, method, path, contentType, auth string, body []byte) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	req.Header.SetContentType(contentType)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.SetBody(body)
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, nil)
	s.handle(ctx)
	return ctx
}

var fuzzRoutes = []struct{ path, contentType, auth string }{
	{"/2010-04-01/Accounts/AC1/Messages.json", "application/x-www-form-urlencoded", "Basic QUM6dG9r"},
	{"/v3/mail/send", "application/json", "Bearer key"},
	{"/v1/projects/p/messages:send", "application/json", "Bearer token"},
	{"/webhook/orders", "application/json", ""},
}

// FuzzMockRequests feeds the mock provider (goutong mock-provider, and
// serve --mock-provider) fault settings and provider requests of outside
// bytes: it never panics, it refuses what it cannot take with a 4xx and a
// JSON error, and it counts a notification as received only when it
// answered 2xx.
func FuzzMockRequests(f *testing.F) {
	s, err := Start(Config{Addr: "127.0.0.1:0", Seed: 1})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	f.Add(uint8(0), []byte("To=%2B15551234567&From=%2B1555&Body=hi"), []byte(`{}`))
	f.Add(uint8(1), []byte(`{"personalizations":[{"to":[{"email":"a@b.c"}],"custom_args":{"goutong_id":"x"}}],"from":{"email":"f@b.c"},"content":[{"type":"text/plain","value":"v"}]}`), []byte(`{"item_failure_rate":0.5}`))
	f.Add(uint8(2), []byte(`{"message":{"token":"t","data":{"goutong_id":"y"}}}`), []byte(`{"throttle_rate":1,"retry_after":"2s"}`))
	f.Add(uint8(3), []byte(`[{"channel":"webhook","recipient":"https://h.example","content":{"body":"b"}}]`), []byte(`{"error_rate":1}`))
	f.Add(uint8(3), []byte(`[1,{"id":"x"}]`), []byte(`{"latency_min":"-2562047h","latency_max":"2562047h"}`))
	f.Add(uint8(0), []byte(``), []byte(`{"error_rate":2}`))
	f.Fuzz(func(t *testing.T, route uint8, body, faults []byte) {
		defer s.SetFaults(Faults{})
		ctx := request(s, "POST", "/faults", "application/json", "", faults)
		switch st := ctx.Response.StatusCode(); st {
		case 200:
			var got Faults
			if err := json.Unmarshal(ctx.Response.Body(), &got); err != nil {
				t.Fatalf("faults answered %q: %v", ctx.Response.Body(), err)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("faults taken that Validate refuses: %v", err)
			}
			// Injected waits are what they were asked to be; the fuzzer
			// has no time for them.
			if got.LatencyMax > Duration(time.Millisecond) || (got.SlowRate > 0 && got.SlowDelay > Duration(time.Millisecond)) {
				s.SetFaults(Faults{})
			}
		case 400:
			if !json.Valid(ctx.Response.Body()) {
				t.Fatalf("faults refused without a JSON error: %q", ctx.Response.Body())
			}
		default:
			t.Fatalf("faults answered %d", st)
		}
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		before := s.Stats()
		ctx = request(s, "POST", r.path, r.contentType, r.auth, body)
		after := s.Stats()
		st := ctx.Response.StatusCode()
		if b := ctx.Response.Body(); len(b) > 0 && !json.Valid(b) {
			t.Fatalf("%s answered %d with %q", r.path, st, b)
		}
		if bytes.Contains(ctx.Response.Body(), []byte("mock provider bug")) {
			t.Fatalf("%s panicked: %s", r.path, ctx.Response.Body())
		}
		received := after.Received - before.Received
		switch {
		case st >= 200 && st < 300:
			if received < 0 {
				t.Fatalf("%s: received went down by %d", r.path, -received)
			}
		case st >= 400 && st < 600:
			if received != 0 {
				t.Fatalf("%s answered %d and counted %d received", r.path, st, received)
			}
		default:
			t.Fatalf("%s answered %d", r.path, st)
		}
	})
}
