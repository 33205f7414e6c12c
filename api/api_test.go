package api_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/api"
	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/partition/logtest"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
	"github.com/goutong/goutong/wal"
)

const (
	tenantKey = "key-acme"
	otherKey  = "key-globex"
	adminKey  = "key-admin"
)

// node is a whole Goutong node in-process: the embedded log, the stores,
// the engine sending to the mock provider, and the API on loopback.
type node struct {
	t    testing.TB
	url  string
	mock *mockserver.Server
	eng  *engine.Engine
}

type nodeOpts struct {
	auth       bool
	quota      api.Quota
	maxBacklog int64
	maxBody    int
	maxItems   int
	syncDedupe bool         // as goutong serve does (dedupe.sync: true)
	dedupeFS   vfs.FS       // the dedupe store's files; nil: the OS's
	ready      func() error // api.Config.Ready
	snapshots  bool         // api.Config.SnapshotDir: the node's directory
	atIngest   engine.IngestDedupe
	wrapLog    func(partition.Log) partition.Log // every Log the engine opens, when set
}

func newNode(t testing.TB, o nodeOpts) *node {
	dir := t.TempDir()
	m, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	w, err := wal.Open(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	open := func(cc partition.ConsumerConfig) (partition.Log, error) {
		if o.wrapLog != nil {
			return o.wrapLog(partition.NewWAL(w, cc)), nil
		}
		return partition.NewWAL(w, cc), nil
	}
	dopts := []dedupe.Option{dedupe.WithCreate(), dedupe.WithSync(o.syncDedupe)}
	if o.dedupeFS != nil {
		dopts = append(dopts, dedupe.WithFS(o.dedupeFS))
	}
	dd, err := dedupe.Open(filepath.Join(dir, "dedupe"), dopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dd.Close() })
	st, err := engine.OpenStatus(filepath.Join(dir, "status"), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tpl, err := providers.NewTemplates(map[string]providers.TemplateSource{"otp": {Subject: "Code", Body: "Your code is {{.code}}"}})
	if err != nil {
		t.Fatal(err)
	}
	ep := providers.EndpointConfig{BaseURL: m.URL(), RequestTimeout: 5 * time.Second}
	wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: ep, Path: "/webhook/orders", Secret: "whsec", Batch: 100})
	if err != nil {
		t.Fatal(err)
	}
	tw, err := providers.NewTwilio(providers.TwilioConfig{Endpoint: ep, AccountSID: "ACmock", AuthToken: "tok", From: "+15005550006", Templates: tpl})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	topics := engine.DefaultTopics()
	topics.KeylessLanes = true // as serve runs on the embedded log
	eng, err := engine.New(engine.Config{Open: open, Topics: topics, Dedupe: dd, Status: st, Registry: reg, Partitions: 4, IngestDedupe: o.atIngest,
		Channels: map[notification.Channel]engine.ChannelConfig{
			notification.Webhook: {Provider: wh, Rate: 50_000},
			notification.SMS:     {Provider: tw, Rate: 50_000},
		},
		MaxAttempts: 3, Backoff: engine.Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		CommitInterval: 50 * time.Millisecond, DrainTimeout: 2 * time.Second,
		KeepPayloads: true, ReconcileDir: filepath.Join(dir, "reconcile")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	cfg := api.Config{Engine: eng, Registry: reg, Gatherer: reg, MaxBacklog: o.maxBacklog, Ready: o.ready,
		SnapshotDir:  map[bool]string{true: dir}[o.snapshots],
		MaxBodyBytes: o.maxBody, MaxItems: o.maxItems, DefaultQuota: o.quota,
		// As serve builds it: the SMS provider renders templates, the webhook does not.
		CheckTemplate: func(n *notification.Notification) error {
			if n.Template == panicTemplate {
				panic("test: a bug reached from a request's bytes")
			}
			if n.Channel == notification.SMS {
				return tpl.Check(n)
			}
			return nil
		}}
	if o.auth {
		cfg.Keys = []api.Key{{Name: "acme", SHA256: api.HashKey(tenantKey), Tenant: "acme"},
			{Name: "globex", SHA256: api.HashKey(otherKey), Tenant: "globex"},
			{Name: "ops", SHA256: api.HashKey(adminKey), Admin: true}}
	}
	srv, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
	})
	n := &node{t: t, url: "http://" + ln.Addr().String(), mock: m, eng: eng}
	waitFor(t, 10*time.Second, "readiness", func() bool { return n.do("GET", "/readyz", "", "", "").code == 200 })
	return n
}

type reply struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

func (n *node) do(method, path, key, contentType, body string) reply {
	n.t.Helper()
	return n.doHeaders(method, path, key, contentType, nil, body)
}

// doEncoded is do with a Content-Encoding header.
func (n *node) doEncoded(method, path, key, contentType, encoding, body string) reply {
	n.t.Helper()
	return n.doHeaders(method, path, key, contentType, map[string]string{"Content-Encoding": encoding}, body)
}

// doHeaders is do with more headers.
func (n *node) doHeaders(method, path, key, contentType string, headers map[string]string, body string) reply {
	n.t.Helper()
	req, err := http.NewRequest(method, n.url+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := reply{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			n.t.Fatalf("%s %s: answer is not JSON: %v: %s", method, path, err, raw)
		}
	}
	return r
}

func (r reply) errField() (code, field string, index float64) {
	e, _ := r.body["error"].(map[string]any)
	code, _ = e["code"].(string)
	field, _ = e["field"].(string)
	index = -1
	if i, ok := e["index"].(float64); ok {
		index = i
	}
	return
}

func webhookJSON(i int, extra string) string {
	return string(appendWebhookJSON(nil, i, extra))
}

// appendWebhookJSON appends webhookJSON(i, extra) to dst: the benchmarks'
// clients build every body this way, into a buffer they reuse. With
// fmt.Sprintf and a fresh buffer a batch, the clients took ~3 % of the
// process's CPU, which the server then did not have.
func appendWebhookJSON(dst []byte, i int, extra string) []byte {
	dst = append(dst, `{"channel":"webhook","recipient":"https://hooks.example/orders","content":{"body":"{\"order\":`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	dst = append(dst, `}"}`...)
	dst = append(dst, extra...)
	return append(dst, '}')
}

// appendBenchWebhook appends webhook i, with an idempotency_key of its own
// when keyed (appended in place: the clients share the server's cores).
func appendBenchWebhook(dst []byte, i int, keyed bool) []byte {
	dst = appendWebhookJSON(dst, i, "")
	if !keyed {
		return dst
	}
	dst = append(dst[:len(dst)-1], `,"idempotency_key":"order-`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	return append(dst, `"}`...)
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIngestFormatsDeliverEachOnce(t *testing.T) {
	n := newNode(t, nodeOpts{})
	one := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(0, `,"priority":"critical"`))
	if one.code != 202 || one.body["status"] != "accepted" || one.body["id"] == "" {
		t.Fatalf("single: %d %s", one.code, one.raw)
	}
	arr := n.do("POST", "/v1/notifications", "", "application/json", "["+webhookJSON(1, "")+","+webhookJSON(2, "")+"]")
	if arr.code != 202 || arr.body["accepted"] != 2.0 {
		t.Fatalf("array: %d %s", arr.code, arr.raw)
	}
	var nd strings.Builder
	for i := range 1000 {
		nd.WriteString(webhookJSON(100+i, `,"priority":"bulk"`) + "\n")
	}
	bulk := n.do("POST", "/v1/notifications", "", "application/x-ndjson", nd.String())
	if bulk.code != 202 || bulk.body["accepted"] != 1000.0 || len(bulk.body["items"].([]any)) != 1000 {
		t.Fatalf("ndjson: %d %.200s", bulk.code, bulk.raw)
	}
	waitFor(t, 30*time.Second, "every notification at the provider", func() bool { return n.mock.Stats().Unique == 1003 })
	id := one.body["id"].(string)
	waitFor(t, 10*time.Second, "status sent", func() bool {
		st := n.do("GET", "/v1/notifications/"+id, "", "", "")
		return st.code == 200 && st.body["state"] == "sent"
	})
	st := n.do("GET", "/v1/notifications/"+id, "", "", "")
	hist := st.body["history"].([]any)
	if len(hist) != 2 || hist[0].(map[string]any)["state"] != "accepted" {
		t.Fatalf("history: %s", st.raw)
	}
	if s := n.mock.Stats(); s.Received != 1003 {
		t.Fatalf("provider received %d, want 1003 each once", s.Received)
	}
	if r := n.do("GET", "/v1/notifications/01NOPE", "", "", ""); r.code != 404 {
		t.Fatalf("unknown id: %d %s", r.code, r.raw)
	}
}

// A repeat of a key whose first request is still being written is not
// answered 200 (that promised a notification the first could yet fail to
// write): it waits up to 2 s for the first's outcome, then answers 409
// in_progress naming the item and the field, with Retry-After.
func TestRepeatWhileFirstInProgress(t *testing.T) {
	held := logtest.NewHeldProduce("held-order-4")
	n := newNode(t, nodeOpts{wrapLog: func(l partition.Log) partition.Log { h := held; h.Log = l; return h }})
	body := webhookJSON(4, `,"idempotency_key":"held-order-4"`)
	first := make(chan reply, 1)
	go func() { first <- n.do("POST", "/v1/notifications", "", "application/json", body) }()
	<-held.Entered
	r := n.do("POST", "/v1/notifications", "", "application/json", "["+webhookJSON(5, "")+","+body+"]")
	close(held.Release)
	if code, field, index := r.errField(); r.code != 409 || code != "in_progress" || field != "idempotency_key" || index != 1 ||
		r.header.Get("Retry-After") != "1" {
		t.Fatalf("repeat while the first is held: %d %s (Retry-After %q)", r.code, r.raw, r.header.Get("Retry-After"))
	}
	f := <-first
	if f.code != 202 {
		t.Fatalf("first: %d %s", f.code, f.raw)
	}
	again := n.do("POST", "/v1/notifications", "", "application/json", body)
	if again.code != 200 || again.body["id"] != f.body["id"] || again.body["duplicate"] != true {
		t.Fatalf("repeat once the first is written: %d %s (first %s)", again.code, again.raw, f.raw)
	}
}

// A request the log wrote in part answers 503 partly_written (not
// "nothing was accepted") with Retry-After, and its resend answers the
// written item as a duplicate of its id and accepts the other: two sends.
func TestPartlyWrittenRequest(t *testing.T) {
	n := newNode(t, nodeOpts{wrapLog: func(l partition.Log) partition.Log {
		// The notification record keyed lost-5 (not its accepted event).
		lose := func(r *partition.Record) bool {
			return r.Topic != engine.DefaultTopics().Status && bytes.Contains(r.Value, []byte("lost-5"))
		}
		return logtest.PartialProduce{Log: l, Lose: lose, Calls: new(atomic.Int64)}
	}})
	body := "[" + webhookJSON(4, `,"idempotency_key":"kept-4"`) + "," + webhookJSON(5, `,"idempotency_key":"lost-5"`) + "]"
	r := n.do("POST", "/v1/notifications", "", "application/json", body)
	if code, _, _ := r.errField(); r.code != 503 || code != "partly_written" || r.header.Get("Retry-After") != "1" ||
		!strings.Contains(r.raw, "wrote 1 of this request's 2") {
		t.Fatalf("a request written in part: %d %s (Retry-After %q)", r.code, r.raw, r.header.Get("Retry-After"))
	}
	again := n.do("POST", "/v1/notifications", "", "application/json", body)
	items, _ := again.body["items"].([]any)
	if again.code != 202 || again.body["accepted"] != 1.0 || len(items) != 2 || items[0].(map[string]any)["duplicate"] != true ||
		items[1].(map[string]any)["duplicate"] != nil {
		t.Fatalf("resend: %d %s, want the written item a duplicate and the other accepted", again.code, again.raw)
	}
	waitFor(t, 20*time.Second, "both sends", func() bool { return n.mock.Stats().Unique == 2 })
	time.Sleep(200 * time.Millisecond)
	if s := n.mock.Stats(); s.Received != 2 {
		t.Fatalf("provider received %d, want 2", s.Received)
	}
}

// Bodies may come gzipped or zstd-compressed; the body limit holds for
// them decompressed (a bomb is 413), and a body that is not what its
// Content-Encoding says, or an encoding the server lacks, is refused
// naming the header.
func TestCompressedBodies(t *testing.T) {
	n := newNode(t, nodeOpts{maxBody: 64 << 10})
	var ndjson strings.Builder
	for i := range 3 {
		ndjson.WriteString(webhookJSON(i, "") + "\n")
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(ndjson.String()))
	zw.Close()
	zenc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zenc.Close()
	zs := zenc.EncodeAll([]byte("["+webhookJSON(7, "")+","+webhookJSON(8, "")+"]"), nil)
	if r := n.doEncoded("POST", "/v1/notifications", "", "application/x-ndjson", "gzip", gz.String()); r.code != 202 || r.body["accepted"] != 3.0 {
		t.Fatalf("gzipped NDJSON: %d %s", r.code, r.raw)
	}
	if r := n.doEncoded("POST", "/v1/notifications", "", "application/json", "zstd", string(zs)); r.code != 202 || r.body["accepted"] != 2.0 {
		t.Fatalf("zstd JSON: %d %s", r.code, r.raw)
	}
	// Bombs: 1 MiB of spaces, a few KiB compressed, past the 64 KiB limit.
	spaces := bytes.Repeat([]byte(" "), 1<<20)
	var bomb bytes.Buffer
	zw = gzip.NewWriter(&bomb)
	zw.Write(spaces)
	zw.Close()
	zbomb := zenc.EncodeAll(spaces, nil)
	for _, c := range []struct {
		name, enc, body string
		code            int
		errCode         string
	}{
		{"gzip bomb", "gzip", bomb.String(), 413, "body_too_large"},
		{"zstd bomb", "zstd", string(zbomb), 413, "body_too_large"},
		{"not gzip", "gzip", webhookJSON(1, ""), 400, "malformed_body"},
		{"truncated gzip", "gzip", gz.String()[:gz.Len()/2], 400, "malformed_body"},
		{"not zstd", "zstd", webhookJSON(1, ""), 400, "malformed_body"},
		{"brotli", "br", webhookJSON(1, ""), 415, "unsupported_encoding"},
	} {
		if bomb.Len() > 64<<10 || len(zbomb) > 64<<10 {
			t.Fatalf("bombs of %d and %d bytes are not below the limit", bomb.Len(), len(zbomb))
		}
		r := n.doEncoded("POST", "/v1/notifications", "", "application/json", c.enc, c.body)
		if code, field, _ := r.errField(); r.code != c.code || code != c.errCode || field != "Content-Encoding" {
			t.Fatalf("%s: %d %s, want %d %s naming Content-Encoding", c.name, r.code, r.raw, c.code, c.errCode)
		}
	}
	waitFor(t, 20*time.Second, "the sends", func() bool { return n.mock.Stats().Unique == 5 })
}

// The Idempotency-Key header keys a single notification, or each keyless
// item of a batch by its index: a resend with the header answers them as
// duplicates, with dedupe.at_ingest keyed too (where keyless items are not
// claimed at the door without it).
func TestIdempotencyKeyHeader(t *testing.T) {
	n := newNode(t, nodeOpts{atIngest: engine.IngestDedupeKeyed})
	post := func(key, body string) reply {
		return n.doHeaders("POST", "/v1/notifications", "", "application/json", map[string]string{"Idempotency-Key": key}, body)
	}
	first := post("req-1", webhookJSON(1, ""))
	again := post("req-1", webhookJSON(1, ""))
	if first.code != 202 || again.code != 200 || again.body["id"] != first.body["id"] || again.body["duplicate"] != true {
		t.Fatalf("single: %d %s, then %d %s", first.code, first.raw, again.code, again.raw)
	}
	batch := "[" + webhookJSON(2, "") + "," + webhookJSON(3, `,"idempotency_key":"own-3"`) + "," + webhookJSON(4, "") + "]"
	b1, b2 := post("req-2", batch), post("req-2", batch)
	if b1.code != 202 || b2.code != 200 || b2.body["duplicates"] != 3.0 {
		t.Fatalf("batch: %d %s, then %d %s", b1.code, b1.raw, b2.code, b2.raw)
	}
	for i, it := range b2.body["items"].([]any) {
		if want := b1.body["items"].([]any)[i].(map[string]any)["id"]; it.(map[string]any)["id"] != want {
			t.Fatalf("batch resend item %d: %v, want id %v", i, it, want)
		}
	}
	// Without the header, keyed takes the keyless batch again.
	if r := n.do("POST", "/v1/notifications", "", "application/json", batch); r.code != 202 || r.body["accepted"] != 2.0 {
		t.Fatalf("batch without the header: %d %s", r.code, r.raw)
	}
	if r := post("req-3", webhookJSON(5, `,"idempotency_key":"other"`)); r.code != 400 {
		t.Fatalf("a body key other than the header: %d %s", r.code, r.raw)
	} else if code, field, _ := r.errField(); code != "invalid_field" || field != "idempotency_key" {
		t.Fatalf("a body key other than the header: %s", r.raw)
	}
	if r := post(strings.Repeat("k", 300), webhookJSON(6, "")); r.code != 400 {
		t.Fatalf("a header of 300 bytes: %d %s", r.code, r.raw)
	} else if _, field, _ := r.errField(); field != "Idempotency-Key" {
		t.Fatalf("a header of 300 bytes: %s", r.raw)
	}
}

// Under serve's default (dedupe.at_ingest keyed) a repeat of a keyless
// notification is accepted again under a new id, and its send is stopped
// as a duplicate of the first: the provider gets it once, and the second
// id reads duplicate, naming the first.
func TestKeylessRepeatStoppedAtSend(t *testing.T) {
	n := newNode(t, nodeOpts{atIngest: engine.IngestDedupeKeyed})
	body := webhookJSON(1, "")
	first := n.do("POST", "/v1/notifications", "", "application/json", body)
	again := n.do("POST", "/v1/notifications", "", "application/json", body)
	if first.code != 202 || again.code != 202 || again.body["id"] == first.body["id"] || again.body["duplicate"] != nil {
		t.Fatalf("keyless repeat: %d %s, then %d %s", first.code, first.raw, again.code, again.raw)
	}
	var nd strings.Builder
	for i := range 100 {
		nd.WriteString(webhookJSON(10+i, `,"priority":"bulk"`) + "\n")
	}
	var repeats []any
	for range 2 {
		r := n.do("POST", "/v1/notifications", "", "application/x-ndjson", nd.String())
		if r.code != 202 || r.body["accepted"] != 100.0 {
			t.Fatalf("keyless batch: %d %.200s", r.code, r.raw)
		}
		repeats = r.body["items"].([]any)
	}
	state := func(id any) reply { return n.do("GET", "/v1/notifications/"+id.(string), "", "", "") }
	waitFor(t, 20*time.Second, "the second id closed as a duplicate", func() bool { return state(again.body["id"]).body["state"] == "duplicate" })
	if st := state(again.body["id"]); st.body["current"].(map[string]any)["duplicate_of"] != first.body["id"] {
		t.Fatalf("second id: %s, want duplicate_of %v", st.raw, first.body["id"])
	}
	waitFor(t, 20*time.Second, "the batch's repeats closed as duplicates", func() bool {
		for _, it := range repeats {
			if state(it.(map[string]any)["id"]).body["state"] != "duplicate" {
				return false
			}
		}
		return true
	})
	if s := n.mock.Stats(); s.Received != 101 || state(first.body["id"]).body["state"] != "sent" {
		t.Fatalf("provider received %d, want 101 each once; first: %s", s.Received, state(first.body["id"]).raw)
	}
}

func TestIdempotentRepeat(t *testing.T) {
	n := newNode(t, nodeOpts{})
	body := webhookJSON(1, `,"idempotency_key":"order-1-shipped"`)
	first := n.do("POST", "/v1/notifications", "", "application/json", body)
	if first.code != 202 {
		t.Fatalf("first: %d %s", first.code, first.raw)
	}
	again := n.do("POST", "/v1/notifications", "", "application/json", body)
	if again.code != 200 || again.body["id"] != first.body["id"] || again.body["duplicate"] != true {
		t.Fatalf("repeat: %d %s (first %s)", again.code, again.raw, first.raw)
	}
	// The same key in a batch: that item is a duplicate, the new one is not.
	mixed := n.do("POST", "/v1/notifications", "", "application/json", "["+body+","+webhookJSON(2, "")+"]")
	items := mixed.body["items"].([]any)
	if mixed.code != 202 || mixed.body["duplicates"] != 1.0 || items[0].(map[string]any)["id"] != first.body["id"] {
		t.Fatalf("mixed: %d %s", mixed.code, mixed.raw)
	}
	waitFor(t, 20*time.Second, "both sends", func() bool { return n.mock.Stats().Unique == 2 })
	time.Sleep(200 * time.Millisecond)
	if s := n.mock.Stats(); s.Received != 2 {
		t.Fatalf("provider received %d, want 2", s.Received)
	}
	done := n.do("POST", "/v1/notifications", "", "application/json", body)
	if done.body["status"] != "sent" {
		t.Fatalf("repeat after send reports %s", done.raw)
	}
	// In a batch, a duplicate after a new item reports its own original's status.
	later := n.do("POST", "/v1/notifications", "", "application/json", "["+webhookJSON(3, "")+","+body+"]")
	items = later.body["items"].([]any)
	fresh, dup := items[0].(map[string]any), items[1].(map[string]any)
	if later.code != 202 || fresh["status"] != "accepted" || dup["id"] != first.body["id"] || dup["status"] != "sent" || dup["duplicate"] != true {
		t.Fatalf("a batch with a repeat: %d %s", later.code, later.raw)
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	n := newNode(t, nodeOpts{maxBody: 64 << 10, maxItems: 50})
	big := "[" + strings.Repeat(webhookJSON(1, "")+",", 51)
	big = big[:len(big)-1] + "]"
	cases := []struct {
		name, ct, body string
		code           int
		errCode, field string
		index          float64
	}{
		{"malformed", "application/json", `{"channel":`, 400, "malformed_json", "", -1},
		{"unknown field", "application/json", webhookJSON(1, `,"colour":"red"`), 400, "invalid_field", "colour", -1},
		{"unknown channel", "application/json", `{"channel":"fax","recipient":"x","content":{"body":"b"}}`, 400, "invalid_field", "channel", -1},
		{"missing recipient", "application/json", `[` + webhookJSON(0, "") + `,{"channel":"webhook","content":{"body":"b"}}]`, 400, "invalid_field", "recipient", 1},
		{"bad timestamp", "application/json", webhookJSON(1, `,"not_before":"tomorrow"`), 400, "invalid_field", "not_before", -1},
		{"bad priority", "application/x-ndjson", webhookJSON(0, "") + "\n" + webhookJSON(1, `,"priority":"urgent"`) + "\n", 400, "invalid_field", "priority", 1},
		{"unknown template", "application/x-ndjson", `{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":"1"}}` + "\n" +
			`{"channel":"sms","recipient":"+15551234567","template":"promo"}` + "\n", 400, "invalid_field", "template", 1},
		{"missing template var", "application/json", `[{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":"1"}},` +
			`{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"kode":"1"}}]`, 400, "invalid_field", "vars.code", 1},
		{"malformed ndjson line", "application/x-ndjson", webhookJSON(0, "") + "\n\n" + webhookJSON(1, "") + "\n{oops\n", 400, "malformed_json", "", 2},
		// What fastjson's parser lets through and JSON does not.
		{"invalid escape", "application/json", webhookJSON(1, `,"metadata":{"k":"a\qb"}`), 400, "malformed_json", "", -1},
		{"control character", "application/x-ndjson", webhookJSON(0, "") + "\n" + webhookJSON(1, `,"metadata":{"k":"a`+"\x01"+`b"}`) + "\n", 400, "malformed_json", "", 1},
		{"lone surrogate", "application/json", `[` + webhookJSON(0, `,"metadata":{"k":"\ud800"}`) + `]`, 400, "malformed_json", "", -1},
		{"NaN", "application/json", `[{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":"1"}},` +
			`{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":NaN}}]`, 400, "invalid_field", "vars.code", 1},
		{"scheduled too far ahead", "application/json", `[` + webhookJSON(0, `,"not_before":"`+time.Now().Add(30*24*time.Hour).UTC().Format(time.RFC3339)+`"`) + `,` +
			webhookJSON(1, `,"not_before":"`+time.Now().Add(36*24*time.Hour).UTC().Format(time.RFC3339)+`"`) + `]`, 400, "invalid_field", "not_before", 1},
		{"too many items", "application/json", big, 413, "too_many_items", "items", -1},
		{"oversize", "application/json", `{"channel":"webhook","recipient":"x","content":{"body":"` + strings.Repeat("a", 70<<10) + `"}}`, 413, "body_too_large", "", -1},
		{"empty", "application/json", "  ", 400, "invalid_body", "", -1},
		{"not json", "text/plain", "hello", 400, "invalid_body", "", -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := n.do("POST", "/v1/notifications", "", c.ct, c.body)
			code, field, index := r.errField()
			if r.code != c.code || code != c.errCode || field != c.field || index != c.index {
				t.Fatalf("got %d %s field %q index %v; want %d %s field %q index %v\n%.300s", r.code, code, field, index, c.code, c.errCode, c.field, c.index, r.raw)
			}
		})
	}
	// All-or-nothing: the valid first item of the rejected NDJSON batch was
	// not enqueued, so sending it now is new (202, not a 200 repeat).
	r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(0, ""))
	if r.code != 202 {
		t.Fatalf("the valid item of a rejected batch was enqueued: %d %s", r.code, r.raw)
	}
	// Pretty-printed JSON and every escape JSON has are accepted.
	pretty := "[\n\t{\n\t\t\"channel\": \"webhook\",\r\n\t\t\"recipient\": \"https://hooks.example/x\",\n" +
		"\t\t\"content\": {\"body\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}\n\t}\n]\n"
	if r := n.do("POST", "/v1/notifications", "", "application/json", pretty); r.code != 202 {
		t.Fatalf("%s: %d %s", pretty, r.code, r.raw)
	}
	// A template is checked only where the provider renders it.
	body := `{"channel":"webhook","recipient":"https://hooks.example/x","template":"promo"}`
	if r := n.do("POST", "/v1/notifications", "", "application/json", body); r.code != 202 {
		t.Fatalf("%s: %d %s", body, r.code, r.raw)
	}
	if r := n.do("GET", "/v1/notifications", "", "", ""); r.code != 405 || r.header.Get("Allow") != "POST" {
		t.Fatalf("wrong method: %d", r.code)
	}
	if r := n.do("GET", "/v2/anything", "", "", ""); r.code != 404 {
		t.Fatalf("unknown route: %d", r.code)
	}
	// The server is still serving after all that.
	if r := n.do("GET", "/healthz", "", "", ""); r.code != 200 {
		t.Fatalf("healthz %d", r.code)
	}
}

// Bodies are read by their declared length into pooled buffers, or to
// their end when chunked: a small body after a large one is read alone,
// and a chunked body over the limit is refused like a declared one.
func TestBodiesDeclaredAndChunked(t *testing.T) {
	n := newNode(t, nodeOpts{maxBody: 64 << 10, maxItems: 500})
	post := func(body string, chunked bool) reply {
		var r io.Reader = strings.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // hides the length: net/http sends it chunked
		}
		req, err := http.NewRequest("POST", n.url+"/v1/notifications", r)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var rep reply
		rep.code, rep.raw = resp.StatusCode, string(raw)
		_ = json.Unmarshal(raw, &rep.body)
		return rep
	}
	ndjson := func(from, count int) string {
		var b strings.Builder
		for i := range count {
			b.WriteString(webhookJSON(from+i, ""))
			b.WriteByte('\n')
		}
		return b.String()
	}
	for i, c := range []struct {
		body     string
		chunked  bool
		code     int
		accepted int
	}{
		{ndjson(0, 300), false, 202, 300}, // ~40 KB
		{ndjson(1000, 1), false, 202, 1},  // into the same pooled buffer
		{ndjson(2000, 2), true, 202, 2},
		{ndjson(3000, 600), true, 413, 0}, // ~80 KB, over the limit
		{ndjson(4000, 600), false, 413, 0},
		{ndjson(5000, 3), false, 202, 3}, // the server is still serving
	} {
		r := post(c.body, c.chunked)
		accepted, _ := r.body["accepted"].(float64)
		if r.code != c.code || int(accepted) != c.accepted {
			t.Fatalf("request %d (chunked %v): %d with %v accepted, want %d with %d\n%.300s", i, c.chunked, r.code, accepted, c.code, c.accepted, r.raw)
		}
	}
}

func TestAuthAndTenants(t *testing.T) {
	n := newNode(t, nodeOpts{auth: true})
	body := webhookJSON(1, "")
	if r := n.do("POST", "/v1/notifications", "", "application/json", body); r.code != 401 {
		t.Fatalf("no key: %d", r.code)
	}
	if r := n.do("POST", "/v1/notifications", "wrong", "application/json", body); r.code != 401 {
		t.Fatalf("wrong key: %d", r.code)
	}
	if r := n.do("POST", "/v1/notifications", tenantKey, "application/json", webhookJSON(1, `,"tenant":"globex"`)); r.code != 403 {
		t.Fatalf("foreign tenant: %d %s", r.code, r.raw)
	}
	ok := n.do("POST", "/v1/notifications", tenantKey, "application/json", body)
	if ok.code != 202 {
		t.Fatalf("tenant key: %d %s", ok.code, ok.raw)
	}
	id := ok.body["id"].(string)
	waitFor(t, 10*time.Second, "status", func() bool { return n.do("GET", "/v1/notifications/"+id, tenantKey, "", "").code == 200 })
	if r := n.do("GET", "/v1/notifications/"+id, otherKey, "", ""); r.code != 404 {
		t.Fatalf("other tenant sees status: %d", r.code)
	}
	if r := n.do("GET", "/v1/admin/channels", tenantKey, "", ""); r.code != 403 {
		t.Fatalf("tenant on admin: %d", r.code)
	}
	if r := n.do("GET", "/v1/admin/channels", adminKey, "", ""); r.code != 200 {
		t.Fatalf("admin: %d %s", r.code, r.raw)
	}
	// The same idempotency key from two tenants is two notifications.
	k := webhookJSON(9, `,"idempotency_key":"same"`)
	a := n.do("POST", "/v1/notifications", tenantKey, "application/json", k)
	b := n.do("POST", "/v1/notifications", otherKey, "application/json", k)
	if a.code != 202 || b.code != 202 {
		t.Fatalf("per-tenant keys: %d %d", a.code, b.code)
	}
}

func TestQuotaAndBacklogShedding(t *testing.T) {
	n := newNode(t, nodeOpts{quota: api.Quota{PerSec: 1, Burst: 5}, maxBacklog: 20})
	for i := range 5 {
		if r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(i, "")); r.code != 202 {
			t.Fatalf("within quota: %d %s", r.code, r.raw)
		}
	}
	r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(5, ""))
	if code, _, _ := r.errField(); r.code != 429 || code != "quota" || r.header.Get("Retry-After") == "" {
		t.Fatalf("over quota: %d %s", r.code, r.raw)
	}

	m := newNode(t, nodeOpts{maxBacklog: 20})
	if err := m.eng.PauseChannel(notification.Webhook, true); err != nil {
		t.Fatal(err)
	}
	var nd strings.Builder
	for i := range 100 {
		nd.WriteString(webhookJSON(i, `,"priority":"bulk"`) + "\n")
	}
	if r := m.do("POST", "/v1/notifications", "", "application/x-ndjson", nd.String()); r.code != 202 {
		t.Fatalf("fill: %d %s", r.code, r.raw)
	}
	waitFor(t, 10*time.Second, "the backlog to be measured", func() bool { return m.eng.Backlog() > 20 })
	shed := m.do("POST", "/v1/notifications", "", "application/json", webhookJSON(200, `,"priority":"bulk"`))
	if code, field, _ := shed.errField(); shed.code != 503 || code != "backlog" || field != "priority" || shed.header.Get("Retry-After") == "" {
		t.Fatalf("bulk over backlog: %d %s", shed.code, shed.raw)
	}
	if r := m.do("POST", "/v1/notifications", "", "application/json", webhookJSON(201, `,"priority":"critical"`)); r.code != 202 {
		t.Fatalf("critical over backlog: %d %s", r.code, r.raw)
	}
	if err := m.eng.PauseChannel(notification.Webhook, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the backlog to drain", func() bool { return m.mock.Stats().Unique == 101 })
}

func TestReceipts(t *testing.T) {
	n := newNode(t, nodeOpts{})
	r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(1, ""))
	id := r.body["id"].(string)
	waitFor(t, 10*time.Second, "sent", func() bool { return n.do("GET", "/v1/notifications/"+id, "", "", "").body["state"] == "sent" })
	body := `{"id":"` + id + `","status":"delivered"}`
	post := func(sig string) reply {
		req, _ := http.NewRequest("POST", n.url+"/v1/receipts/webhook", strings.NewReader(body))
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set(providers.TimestampHeader, ts)
		if sig == "" {
			sig = providers.Sign([]byte("whsec"), ts, []byte(body))
		}
		req.Header.Set(providers.SignatureHeader, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return reply{code: resp.StatusCode, raw: string(raw)}
	}
	if r := post("v1=00"); r.code != 401 {
		t.Fatalf("bad signature: %d %s", r.code, r.raw)
	}
	if r := post(""); r.code != 200 || !strings.Contains(r.raw, `"applied":1`) {
		t.Fatalf("receipt: %d %s", r.code, r.raw)
	}
	if st := n.do("GET", "/v1/notifications/"+id, "", "", ""); st.body["state"] != "delivered" {
		t.Fatalf("after receipt: %s", st.raw)
	}
	if r := n.do("POST", "/v1/receipts/carrier-pigeon", "", "", "{}"); r.code != 404 {
		t.Fatalf("unknown provider: %d", r.code)
	}
}

func TestAdminRatePauseAndDeadLetters(t *testing.T) {
	n := newNode(t, nodeOpts{})
	if r := n.do("PUT", "/v1/admin/channels/sms/rate", "", "application/json", `{"rate_per_sec": 250}`); r.code != 200 {
		t.Fatalf("rate: %d %s", r.code, r.raw)
	}
	if r := n.do("PUT", "/v1/admin/channels/sms/rate", "", "application/json", `{"rate_per_sec": -1}`); r.code != 400 {
		t.Fatalf("negative rate: %d %s", r.code, r.raw)
	}
	if r := n.do("PUT", "/v1/admin/channels/sms/rate", "", "application/json", `{"rate": 5}`); r.code != 400 {
		t.Fatalf("unknown field: %d %s", r.code, r.raw)
	}
	if r := n.do("POST", "/v1/admin/channels/fax/pause", "", "", ""); r.code != 404 {
		t.Fatalf("unknown channel: %d", r.code)
	}
	if r := n.do("POST", "/v1/admin/channels/sms/pause", "", "", ""); r.code != 200 {
		t.Fatalf("pause: %d", r.code)
	}
	stats := n.do("GET", "/v1/admin/channels", "", "", "")
	var sms map[string]any
	for _, c := range stats.body["channels"].([]any) {
		if c.(map[string]any)["channel"] == "sms" {
			sms = c.(map[string]any)
		}
	}
	if sms == nil || sms["paused"] != true || sms["rate_per_sec"] != 250.0 {
		t.Fatalf("stats: %s", stats.raw)
	}
	n.do("POST", "/v1/admin/channels/sms/resume", "", "", "")
	// A recipient the provider refuses fails permanently.
	r := n.do("POST", "/v1/notifications", "", "application/json", `{"channel":"webhook","recipient":"https://hooks.example/invalid","content":{"body":"b"}}`)
	if r.code != 202 {
		t.Fatalf("enqueue: %d %s", r.code, r.raw)
	}
	id := r.body["id"].(string)
	waitFor(t, 10*time.Second, "dead-lettered", func() bool {
		return n.do("GET", "/v1/notifications/"+id, "", "", "").body["state"] == "dead-lettered"
	})
	list := n.do("GET", "/v1/admin/dlq?limit=10", "", "", "")
	letters, _ := list.body["dead_letters"].([]any)
	if list.code != 200 || len(letters) != 1 || letters[0].(map[string]any)["reason"] != "permanent" {
		t.Fatalf("dlq list: %d %s", list.code, list.raw)
	}
	if r := n.do("GET", "/v1/admin/dlq?limit=0", "", "", ""); r.code != 400 {
		t.Fatalf("bad limit: %d", r.code)
	}
	rep := n.do("POST", "/v1/admin/dlq/replay", "", "application/json", `{"reason":"permanent"}`)
	if rep.code != 200 || rep.body["replayed"] != 1.0 {
		t.Fatalf("replay: %d %s", rep.code, rep.raw)
	}
	// Replayed, it fails again and is dead-lettered anew; the first letter
	// is no longer listed.
	waitFor(t, 10*time.Second, "second dead letter", func() bool {
		l := n.do("GET", "/v1/admin/dlq", "", "", "")
		ls, _ := l.body["dead_letters"].([]any)
		return len(ls) == 1 && ls[0].(map[string]any)["offset"] != letters[0].(map[string]any)["offset"]
	})
}

func TestAdminReconcile(t *testing.T) {
	n := newNode(t, nodeOpts{auth: true})
	from := time.Now().Add(-time.Minute).UTC()
	r := n.do("POST", "/v1/notifications", tenantKey, "application/json", webhookJSON(1, ""))
	if r.code != 202 {
		t.Fatalf("ingest: %d %s", r.code, r.raw)
	}
	// A receipt for an id nobody knows: the one difference to find.
	if _, unknown, err := n.eng.ApplyReceipts(context.Background(), "twilio", []providers.Receipt{
		{ID: "01JNOSUCHNOTIFICATION00000", Delivered: true, Final: true, At: time.Now()}}); err != nil || len(unknown) != 1 {
		t.Fatalf("receipt: %v %v", unknown, err)
	}
	window := fmt.Sprintf(`{"from": %q, "to": %q}`, from.Format(time.RFC3339), time.Now().Add(time.Minute).UTC().Format(time.RFC3339))
	if r := n.do("POST", "/v1/admin/reconcile", tenantKey, "application/json", window); r.code != 403 {
		t.Fatalf("a tenant key ran a reconciliation: %d", r.code)
	}
	r = n.do("POST", "/v1/admin/reconcile", adminKey, "application/json", window)
	if r.code != 200 {
		t.Fatalf("reconcile: %d %s", r.code, r.raw)
	}
	id, _ := r.body["id"].(string)
	rep, _ := r.body["report"].(map[string]any)
	diffs, _ := rep["differences"].(map[string]any)
	if id == "" || rep["notifications"] != 1.0 || diffs["unknown-receipt"] != 1.0 || len(diffs) != 1 {
		t.Fatalf("run: %s", r.raw)
	}
	d := n.do("GET", "/v1/admin/reconcile/"+id+"/differences", adminKey, "", "")
	if d.code != 200 || !strings.HasPrefix(d.header.Get("Content-Type"), "application/x-ndjson") ||
		strings.Count(d.raw, "\n") != 1 || !strings.Contains(d.raw, `"kind":"unknown-receipt"`) {
		t.Fatalf("differences: %d %q", d.code, d.raw)
	}
	if l := n.do("GET", "/v1/admin/reconcile", adminKey, "", ""); l.code != 200 || !strings.Contains(l.raw, id) {
		t.Fatalf("runs: %d %s", l.code, l.raw)
	}
	for _, c := range []struct {
		method, path, body string
		code               int
		field              string
	}{
		{"POST", "/v1/admin/reconcile", `{"from": "yesterday"}`, 400, ""},
		{"POST", "/v1/admin/reconcile", `{"window": 1}`, 400, ""},
		{"POST", "/v1/admin/reconcile", `{"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}`, 400, "to"},
		{"POST", "/v1/admin/reconcile", `{"redrive": ["everything"]}`, 400, "redrive"},
		{"GET", "/v1/admin/reconcile/01JNOSUCHRUN0000000000000/differences", "", 404, "id"},
		{"GET", "/v1/admin/reconcile/../../etc/differences", "", 404, ""},
		{"PUT", "/v1/admin/reconcile", "", 405, ""},
	} {
		r := n.do(c.method, c.path, adminKey, "application/json", c.body)
		code, field, _ := r.errField()
		if r.code != c.code || code == "" || (c.field != "" && field != c.field) {
			t.Errorf("%s %s %s: %d %s, want %d naming %q", c.method, c.path, c.body, r.code, r.raw, c.code, c.field)
		}
	}
}

// panicTemplate makes the test node's template check panic, as a bug
// reachable from a request would.
const panicTemplate = "panic-in-handler"

// A handler's panic is answered 500 with a JSON error, counted and logged;
// the node keeps serving (fasthttp itself would let it end the process).
func TestHandlerPanicIsAnsweredAndServingGoesOn(t *testing.T) {
	n := newNode(t, nodeOpts{})
	r := n.do("POST", "/v1/notifications", "", "application/json",
		`{"channel":"webhook","recipient":"https://hooks.example/x","template":"`+panicTemplate+`"}`)
	if code, _, _ := r.errField(); r.code != 500 || code != "internal" {
		t.Fatalf("panicking request: %d %s", r.code, r.raw)
	}
	if r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(1, "")); r.code != 202 {
		t.Fatalf("after the panic: %d %s", r.code, r.raw)
	}
	m := n.do("GET", "/metrics", "", "", "").raw
	if !strings.Contains(m, "goutong_api_panics_total 1") || !strings.Contains(m, `goutong_api_requests_total{code="500",route="panicked"} 1`) {
		t.Fatalf("the panic is not in the metrics:\n%s", m)
	}
}

// A dedupe store whose disk fails stops taking writes for good. The node
// then still sends everything it accepted (each once), but turns unready
// and refuses requests with the reason, and the metrics say so.
func TestDedupeStoreFailure(t *testing.T) {
	var failing atomic.Bool
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && op.Kind == errorfs.OpFileWrite && strings.HasSuffix(op.Path, ".log") &&
			strings.Contains(op.Path, "write-buffer") {
			return errorfs.ErrInjected
		}
		return nil
	}))
	n := newNode(t, nodeOpts{syncDedupe: true, dedupeFS: fs})
	post := func(from int) reply {
		var nd strings.Builder
		for i := range 100 {
			nd.WriteString(webhookJSON(from+i, `,"idempotency_key":"k-`+strconv.Itoa(from+i)+`"`) + "\n")
		}
		return n.do("POST", "/v1/notifications", "", "application/x-ndjson", nd.String())
	}
	if r := post(0); r.code != 202 {
		t.Fatalf("healthy: %d %s", r.code, r.raw)
	}
	waitFor(t, 20*time.Second, "the first 100 sent", func() bool { return n.mock.Stats().Unique == 100 })
	failing.Store(true)
	// Accepted: the records are in the log; only their keys' confirm fails.
	if r := post(100); r.code != 202 {
		t.Fatalf("on the failing disk: %d %s", r.code, r.raw)
	}
	waitFor(t, 20*time.Second, "every accepted notification sent", func() bool { return n.mock.Stats().Unique == 200 })
	if st := n.mock.Stats(); st.Duplicates != 0 {
		t.Fatalf("%d sent twice", st.Duplicates)
	}
	ready := n.do("GET", "/readyz", "", "", "")
	if ready.code != 503 || ready.body["status"] != "unavailable" ||
		!strings.Contains(fmt.Sprint(ready.body["reason"]), "dedupe store refuses writes") {
		t.Fatalf("readyz: %d %s", ready.code, ready.raw)
	}
	r := post(200)
	if code, _, _ := r.errField(); r.code != 503 || code != "unavailable" || r.header.Get("Retry-After") == "" ||
		!strings.Contains(r.raw, "dedupe store refuses writes") {
		t.Fatalf("a request to the unready node: %d %s", r.code, r.raw)
	}
	m := n.do("GET", "/metrics", "", "", "").raw
	if !strings.Contains(m, "goutong_dedupe_refusing_writes 1") || strings.Contains(m, "goutong_dedupe_write_errors_total 0") ||
		!strings.Contains(m, "goutong_dedupe_write_errors_total") {
		t.Fatalf("the failure is not in the metrics:\n%s", grepLines(m, "goutong_dedupe_"))
	}
	failing.Store(false) // the store stays refusing: only a restart mends it
	if r := n.do("GET", "/readyz", "", "", ""); r.code != 503 {
		t.Fatalf("readyz once the disk works again: %d", r.code)
	}
}

// The readiness serve adds (its embedded log refusing appends) answers
// like the engine's own: /readyz and ingest say unavailable and why, and
// the node takes requests again once it is ready.
func TestExtraReadiness(t *testing.T) {
	var refusing atomic.Bool
	n := newNode(t, nodeOpts{ready: func() error {
		if refusing.Load() {
			return fmt.Errorf("%w: the log refuses appends", engine.ErrUnavailable)
		}
		return nil
	}})
	waitFor(t, 10*time.Second, "ready", func() bool { return n.do("GET", "/readyz", "", "", "").code == 200 })
	refusing.Store(true)
	if r := n.do("GET", "/readyz", "", "", ""); r.code != 503 || r.body["status"] != "unavailable" ||
		!strings.Contains(fmt.Sprint(r.body["reason"]), "the log refuses appends") {
		t.Fatalf("readyz: %d %s", r.code, r.raw)
	}
	r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(1, ""))
	if code, _, _ := r.errField(); r.code != 503 || code != "unavailable" || !strings.Contains(r.raw, "the log refuses appends") {
		t.Fatalf("ingest: %d %s", r.code, r.raw)
	}
	refusing.Store(false)
	if r := n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(1, "")); r.code != 202 {
		t.Fatalf("ingest once ready: %d %s", r.code, r.raw)
	}
}

// Snapshots are for Kafka nodes (cmd/goutong's TestServeJoinsFromASnapshot
// takes one): a node on the embedded log refuses with 409, and one without
// a snapshot directory has no such route.
func TestSnapshotRefusals(t *testing.T) {
	n := newNode(t, nodeOpts{snapshots: true})
	r := n.do("GET", "/v1/admin/snapshot", "", "", "")
	if code, _, _ := r.errField(); r.code != 409 || code != "not_supported" {
		t.Fatalf("snapshot on the embedded log: %d %s", r.code, r.raw)
	}
	if r := n.do("POST", "/v1/admin/snapshot", "", "", ""); r.code != 405 {
		t.Fatalf("POST snapshot: %d %s", r.code, r.raw)
	}
	if r := newNode(t, nodeOpts{}).do("GET", "/v1/admin/snapshot", "", "", ""); r.code != 404 {
		t.Fatalf("snapshot without a directory: %d %s", r.code, r.raw)
	}
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			b.WriteString(line)
		}
	}
	return b.String()
}

func TestMetricsAndHealth(t *testing.T) {
	n := newNode(t, nodeOpts{})
	n.do("POST", "/v1/notifications", "", "application/json", webhookJSON(1, ""))
	r := n.do("GET", "/metrics", "", "", "")
	for _, want := range []string{"goutong_api_requests_total", "goutong_api_accepted_total", "goutong_ring_depth"} {
		if !strings.Contains(r.raw, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	if r := n.do("GET", "/readyz", "", "", ""); r.code != 200 {
		t.Fatalf("readyz %d", r.code)
	}
}

// benchClient is the benchmarks' HTTP client, up to conns connections:
// fasthttp's, as a load generator should be cheap. The clients share the
// two cores with the server they measure, and net/http's took ~20 µs of
// CPU a request, as much as the server's HTTP handling.
func benchClient(conns int) *fasthttp.Client {
	return &fasthttp.Client{MaxConnsPerHost: conns, MaxConnWaitTimeout: time.Minute,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute}
}

// postAccepted posts body for ingest and reports whether it got a 202.
func postAccepted(b *testing.B, c *fasthttp.Client, url, contentType string, body []byte) bool {
	return post(b, c, url, contentType, body, fasthttp.StatusAccepted)
}

// post sends body to the ingest endpoint and reports whether the answer
// had status want.
func post(b *testing.B, c *fasthttp.Client, url, contentType string, body []byte, want int) bool {
	return postEncoded(b, c, url, contentType, "", body, want)
}

// postEncoded is post with a Content-Encoding ("" for none).
func postEncoded(b *testing.B, c *fasthttp.Client, url, contentType, encoding string, body []byte, want int) bool {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(url + "/v1/notifications")
	req.Header.SetContentType(contentType)
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	req.SetBodyRaw(body) // the caller reuses body only after Do returns
	if err := c.Do(req, resp); err != nil {
		b.Error(err)
		return false
	}
	if resp.StatusCode() != want {
		b.Errorf("status %d: %s", resp.StatusCode(), resp.Body())
		return false
	}
	return true
}

// cpuMicros is the process's CPU time in µs, user and system, the clients'
// included: per notification, the figure that holds still on a shared
// machine when the rate does not.
func cpuMicros() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}

// BenchmarkIngest measures accepted notifications/s over loopback HTTP:
// single-object requests from 64 clients, and NDJSON batches of 1,000, on
// serve's durability settings (every produce and dedupe claim synced) and
// its dedupe.at_ingest (keyed, unless a name says all). The clients
// (fasthttp's, see benchClient) run on the same cores.
func BenchmarkIngest(b *testing.B) {
	const serveAtIngest = engine.IngestDedupeKeyed
	b.Run("single", func(b *testing.B) {
		n := newNode(b, nodeOpts{syncDedupe: true, atIngest: serveAtIngest})
		_ = n.eng.PauseChannel(notification.Webhook, true) // measure ingest, not delivery
		var seq atomic.Int64
		b.SetParallelism(32)
		client := benchClient(32 * runtime.GOMAXPROCS(0))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuMicros()
		b.RunParallel(func(pb *testing.PB) {
			var body []byte
			for pb.Next() {
				body = appendWebhookJSON(body[:0], int(seq.Add(1)), "") // distinct, or every repeat is a duplicate
				if !postAccepted(b, client, n.url, "application/json", body) {
					return
				}
			}
		})
		b.ReportMetric((cpuMicros()-cpu)/float64(b.N), "cpu-us/notification")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
	})
	// 8 clients, each on a kept-alive connection of its own. 16 or 32 gave
	// the same rate and more CPU a notification: the CPU is the limit.
	// ownKeys: each item carries an idempotency_key, claimed at the door
	// under either at_ingest.
	ndjson := func(b *testing.B, o nodeOpts, ownKeys bool) {
		const clients = 8
		n := newNode(b, o)
		_ = n.eng.PauseChannel(notification.Webhook, true)
		var seq atomic.Int64
		batch := func(dst []byte) []byte {
			base := int(seq.Add(1000))
			for i := range 1000 {
				dst = appendBenchWebhook(dst, base+i, ownKeys)
				dst = append(dst, '\n')
			}
			return dst
		}
		b.SetBytes(int64(len(batch(nil))))
		client := benchClient(clients)
		b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuMicros()
		b.RunParallel(func(pb *testing.PB) {
			var body []byte
			for pb.Next() {
				body = batch(body[:0])
				if !postAccepted(b, client, n.url, "application/x-ndjson", body) {
					return
				}
			}
		})
		b.ReportMetric((cpuMicros()-cpu)/float64(b.N*1000), "cpu-us/notification")
		b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "notifications/s")
	}
	// Keyless items: no claim and confirm at the door (their sends are
	// still claimed).
	b.Run("ndjson-1000", func(b *testing.B) {
		ndjson(b, nodeOpts{syncDedupe: true, atIngest: serveAtIngest}, false)
	})
	b.Run("ndjson-1000-own-keys", func(b *testing.B) {
		ndjson(b, nodeOpts{syncDedupe: true, atIngest: serveAtIngest}, true)
	})
	// Keyless items claimed at the door by their derived keys.
	b.Run("ndjson-1000-at-ingest-all", func(b *testing.B) {
		ndjson(b, nodeOpts{syncDedupe: true, atIngest: engine.IngestDedupeAll}, false)
	})
	// The same from 16 batches built before the timer and sent again and
	// again, which keyed takes as new notifications (their door is their
	// sends): plain, and gzipped (a client compresses on a machine of its
	// own). The pair is what decompressing costs the server.
	reused := func(b *testing.B, encoding string) {
		const clients = 8
		n := newNode(b, nodeOpts{syncDedupe: true, atIngest: serveAtIngest})
		_ = n.eng.PauseChannel(notification.Webhook, true)
		var bodies [][]byte
		for k := range 16 {
			var body bytes.Buffer
			for i := range 1000 {
				body.Write(appendWebhookJSON(nil, k*1000+i, ""))
				body.WriteByte('\n')
			}
			b.SetBytes(int64(body.Len()))
			if encoding == "gzip" {
				var gz bytes.Buffer
				zw := gzip.NewWriter(&gz)
				zw.Write(body.Bytes())
				zw.Close()
				body = gz
			}
			bodies = append(bodies, body.Bytes())
		}
		client := benchClient(clients)
		b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.ReportAllocs()
		var seq atomic.Int64
		b.ResetTimer()
		cpu := cpuMicros()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if !postEncoded(b, client, n.url, "application/x-ndjson", encoding, bodies[seq.Add(1)%16], fasthttp.StatusAccepted) {
					return
				}
			}
		})
		b.ReportMetric((cpuMicros()-cpu)/float64(b.N*1000), "cpu-us/notification")
		b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "notifications/s")
		b.ReportMetric(float64(len(bodies[0])), "body-bytes/batch")
	}
	b.Run("ndjson-1000-reused", func(b *testing.B) { reused(b, "") })
	b.Run("ndjson-1000-reused-gzip", func(b *testing.B) { reused(b, "gzip") })
	// A client that resends batches of keyed items already accepted (a
	// retry after a timeout): every item is a duplicate, answered 200 with
	// the original id and its current status, and nothing is enqueued.
	b.Run("ndjson-1000-repeated", func(b *testing.B) {
		const clients, batches = 8, 300
		n := newNode(b, nodeOpts{syncDedupe: true, atIngest: serveAtIngest})
		_ = n.eng.PauseChannel(notification.Webhook, true)
		bodies := make([][]byte, batches)
		client := benchClient(clients)
		for k := range bodies {
			for i := range 1000 {
				bodies[k] = append(appendBenchWebhook(bodies[k], k*1000+i, true), '\n')
			}
			if !postAccepted(b, client, n.url, "application/x-ndjson", bodies[k]) {
				return
			}
		}
		var seq atomic.Int64
		b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuMicros()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if !post(b, client, n.url, "application/x-ndjson", bodies[int(seq.Add(1))%batches], fasthttp.StatusOK) {
					return
				}
			}
		})
		b.ReportMetric((cpuMicros()-cpu)/float64(b.N*1000), "cpu-us/notification")
		b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "notifications/s")
	})
}

// BenchmarkReceipts measures delivery receipts applied a second over
// loopback HTTP, in the webhook provider's signed arrays of 1,000, for
// 200,000 notifications accepted and sent through the mock first, in the
// order they were sent. Each receipt is looked up in the status store and
// becomes a delivered event on the status topic and in the store.
func BenchmarkReceipts(b *testing.B) {
	const clients, total, batch = 8, 200_000, 1000
	n := newNode(b, nodeOpts{})
	client := benchClient(clients)
	var ids []string
	for k := 0; k < total; k += batch {
		var body []byte
		for i := range batch {
			body = append(appendWebhookJSON(body, k+i, ""), '\n')
		}
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetRequestURI(n.url + "/v1/notifications")
		req.Header.SetContentType("application/x-ndjson")
		req.SetBodyRaw(body)
		var accepted struct{ Items []struct{ ID string } }
		if err := client.Do(req, resp); err != nil || resp.StatusCode() != 202 || json.Unmarshal(resp.Body(), &accepted) != nil {
			b.Fatalf("ingest: %v %d %s", err, resp.StatusCode(), resp.Body())
		}
		for _, it := range accepted.Items {
			ids = append(ids, it.ID)
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	waitFor(b, time.Minute, "the sends", func() bool { return n.mock.Stats().Unique == total })
	waitFor(b, 10*time.Second, "the last sent event", func() bool {
		return n.do("GET", "/v1/notifications/"+ids[len(ids)-1], "", "", "").body["state"] == "sent"
	})
	type signed struct{ body, ts, sig []byte }
	bodies := make([]signed, total/batch)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	for k := range bodies {
		body := []byte{'['}
		for i, id := range ids[k*batch : (k+1)*batch] {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(append(append(body, `{"id":"`...), id...), `","status":"delivered"}`...)
		}
		body = append(body, ']')
		bodies[k] = signed{body: body, ts: []byte(ts), sig: []byte(providers.Sign([]byte("whsec"), ts, body))}
	}
	want := []byte(`"applied":1000`)
	var seq atomic.Int64
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	cpu := cpuMicros()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		for pb.Next() {
			s := bodies[int(seq.Add(1)-1)%len(bodies)]
			req.Reset()
			req.Header.SetMethod(fasthttp.MethodPost)
			req.SetRequestURI(n.url + "/v1/receipts/webhook")
			req.Header.SetContentType("application/json")
			req.Header.SetBytesV(providers.TimestampHeader, s.ts)
			req.Header.SetBytesV(providers.SignatureHeader, s.sig)
			req.SetBodyRaw(s.body)
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), want) {
				b.Errorf("receipts: %v %d %s", err, resp.StatusCode(), resp.Body())
				return
			}
		}
	})
	b.ReportMetric((cpuMicros()-cpu)/float64(b.N*batch), "cpu-us/receipt")
	b.ReportMetric(float64(b.N)*batch/b.Elapsed().Seconds(), "receipts/s")
}
