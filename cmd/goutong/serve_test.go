package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers/mockserver"
)

// buildBinary compiles goutong once per test binary run.
var buildOnce struct {
	sync.Once
	path string
	err  error
}

func goutongBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "goutong-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "goutong")
		out, err := exec.Command("go", "build", "-o", buildOnce.path, ".").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

type served struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

// startServe runs `goutong serve` as a subprocess and waits until ready.
func startServe(t testing.TB, args ...string) *served {
	t.Helper()
	cmd := exec.Command(goutongBinary(t), append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{cmd: cmd, done: make(chan error, 1)}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "goutong serving on "); ok {
				urls <- strings.Fields(u)[0]
			}
		}
		s.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
	})
	select {
	case s.url = <-urls:
	case err := <-s.done:
		t.Fatalf("serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start")
	}
	waitReady(t, s.url)
	return s
}

// slowMock is a mock provider answering in 5-20 ms: slow sends keep work
// in flight when a kill lands. It stops when the test ends.
func slowMock(t testing.TB) *mockserver.Server {
	t.Helper()
	mock, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", WebhookSecret: "whsec"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mock.Close() })
	mock.SetFaults(mockserver.Faults{LatencyMin: mockserver.Duration(5 * time.Millisecond), LatencyMax: mockserver.Duration(20 * time.Millisecond)})
	return mock
}

// postStream posts webhook notifications to url from 8 workers until the
// returned stop is called, which returns the ids answered 202. A refused
// connection (the server gone) is not accepted, and is tried again.
func postStream(url string) (stop func() []string) {
	var mu sync.Mutex
	var accepted []string
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				body := fmt.Sprintf(`{"channel":"webhook","recipient":"https://hooks.example/o","content":{"body":"w%d-%d"}}`, w, i)
				resp, err := http.Post(url+"/v1/notifications", "application/json", strings.NewReader(body))
				if err != nil {
					continue
				}
				var r struct {
					ID string `json:"id"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				if resp.StatusCode == 202 {
					mu.Lock()
					accepted = append(accepted, r.ID)
					mu.Unlock()
				}
			}
		})
	}
	return func() []string {
		close(done)
		wg.Wait()
		return accepted
	}
}

// waitReady waits for a node's /readyz to answer 200.
func waitReady(t testing.TB, url string) {
	t.Helper()
	waitUntil(t, 30*time.Second, "readiness", func() bool {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// urlAfter reads r up to the first line starting with prefix and returns
// the URL that follows it ("" if r ends first); the rest of r is drained.
func urlAfter(r io.Reader, prefix string) string {
	sc := bufio.NewScanner(r)
	defer func() { go io.Copy(io.Discard, r) }()
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return strings.Fields(u)[0]
		}
	}
	return ""
}

// serveInProcess runs serve with cfg in this process until ready; stop
// ends it and fails the test unless it ended cleanly.
func serveInProcess(t *testing.T, cfg Config) (url string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, pw); pw.Close() }()
	if url = urlAfter(pr, "goutong serving on "); url == "" {
		cancel()
		t.Fatalf("serve did not start: %v", <-done)
	}
	waitReady(t, url)
	return url, func() {
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
	}
}

// postOne posts one notification and returns its id; anything but 202
// fails the test.
func postOne(t *testing.T, url, body string) string {
	t.Helper()
	resp, err := http.Post(url+"/v1/notifications", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		ID string `json:"id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&r)
	if resp.StatusCode != 202 {
		t.Fatalf("ingest: %d", resp.StatusCode)
	}
	return r.ID
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeConfig(t testing.TB, mockURL string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "goutong.yaml")
	cfg := fmt.Sprintf(`
log_level: warn
partitions: 4
engine:
  drain_timeout: 2s
  status_checkpoint_interval: 100ms
channels:
  webhook:
    provider: webhook
    base_url: %s
    path: /webhook/orders
    secret: whsec
    batch: 50
    rate: 20000
`, mockURL)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// metricValue is the value of an unlabelled series on url's /metrics.
func metricValue(t testing.TB, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("%s not on /metrics", name)
	}
	if c := mf.GetMetric()[0].GetCounter(); c != nil {
		return c.GetValue()
	}
	return mf.GetMetric()[0].GetGauge().GetValue()
}

func statusOf(url, id string) string {
	resp, err := http.Get(url + "/v1/notifications/" + id)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st struct {
		State string `json:"state"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return st.State
}

// A kill -9 of `goutong serve` during a stream of accepted requests loses
// none of them: the restart delivers every notification that got a 202.
func TestServeKill9DeliversEveryAccepted(t *testing.T) {
	mock := slowMock(t)
	conf := writeConfig(t, mock.URL())
	data := t.TempDir()
	s := startServe(t, "--config", conf, "--data", data)

	stopPosting := postStream(s.url)
	time.Sleep(1500 * time.Millisecond)
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	kill := time.Now()
	<-s.done
	t.Logf("exited %v after kill -9", time.Since(kill))
	accepted := stopPosting()
	t.Logf("posters stopped %v after kill -9", time.Since(kill))
	if len(accepted) < 100 {
		t.Fatalf("only %d accepted before the kill; the test proves little", len(accepted))
	}
	before := mock.Stats().Unique

	restart := time.Now()
	s2 := startServe(t, "--config", conf, "--data", data)
	t.Logf("restarted and ready in %v", time.Since(restart))
	// The kill took the status store's memtables (it keeps no WAL); the
	// start put back what came after the last checkpoint from the status
	// topic, before it was ready.
	if n := metricValue(t, s2.url, "goutong_status_replayed_events_total"); n <= 0 {
		t.Fatalf("the restart replayed %v status events; the kill landed mid-stream, so some came after the last checkpoint", n)
	} else {
		t.Logf("the restart replayed %v status events", n)
	}
	pending := map[string]bool{}
	for _, id := range accepted {
		pending[id] = true
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(pending) > 0 {
		for id := range pending {
			if statusOf(s2.url, id) == "sent" {
				delete(pending, id)
			}
		}
		if time.Now().After(deadline) {
			states := map[string]int{}
			for id := range pending {
				states[statusOf(s2.url, id)]++
			}
			t.Fatalf("%d of %d accepted notifications not sent after the restart; their states: %v; provider unique %d",
				len(pending), len(accepted), states, mock.Stats().Unique)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("every accepted notification sent %v after the restart", time.Since(restart))
	st := mock.Stats()
	if st.Unique < int64(len(accepted)) {
		t.Fatalf("provider saw %d distinct notifications, %d were accepted", st.Unique, len(accepted))
	}
	t.Logf("accepted %d before kill -9; provider had %d then, %d after restart; %d sent twice (in flight at the kill)",
		len(accepted), before, st.Unique, st.Duplicates)
	// The embedded log shows what it wrote since the restart: the sends'
	// events at least, none refused.
	if n := metricValue(t, s2.url, "goutong_log_records_total"); n <= 0 {
		t.Errorf("goutong_log_records_total = %v after the restart's sends", n)
	}
	if n := metricValue(t, s2.url, "goutong_log_append_errors_total"); n != 0 {
		t.Errorf("goutong_log_append_errors_total = %v", n)
	}

	// SIGTERM: a clean, prompt exit.
	term := time.Now()
	defer func() { t.Logf("exited %v after SIGTERM", time.Since(term)) }()
	if err := s2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s2.done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
}

// The CLI commands talk to a running server.
func TestCLIAgainstServe(t *testing.T) {
	mock, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer mock.Close()
	s := startServe(t, "--config", writeConfig(t, mock.URL()), "--data", t.TempDir())
	out := runCmd(t, "send", "--server", s.url, "--channel", "webhook", "--to", "https://hooks.example/x", "--body", `{"a":1}`, "--priority", "critical")
	var r struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Status != "accepted" {
		t.Fatalf("send: %v %s", err, out)
	}
	file := filepath.Join(t.TempDir(), "batch.ndjson")
	var nd strings.Builder
	for i := range 20 {
		fmt.Fprintf(&nd, `{"channel":"webhook","recipient":"https://hooks.example/x","content":{"body":"n%d"},"idempotency_key":"n%d"}`+"\n", i, i)
	}
	if err := os.WriteFile(file, []byte(nd.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := runCmd(t, "send", "--server", s.url, "--file", file); !strings.Contains(out, `"accepted": 20`) {
		t.Fatalf("send --file: %s", out)
	}
	// Again, gzipped, 7 a request: three requests, every item a duplicate
	// of its key (serve's dedupe.at_ingest keyed answers keyed items at the
	// door).
	if out := runCmd(t, "send", "--server", s.url, "--file", file, "--batch", "7", "--gzip"); strings.Count(out, `{"from":`) != 3 ||
		!strings.Contains(out, `{"from":15,"to":20,"answer":{"accepted":0,"duplicates":6,`) ||
		!strings.Contains(out, "20 notifications in 3 requests: 0 accepted, 20 duplicates") {
		t.Fatalf("send --file --batch 7 --gzip: %s", out)
	}
	waitUntil(t, 30*time.Second, "sent", func() bool { return statusOf(s.url, r.ID) == "sent" })
	if out := runCmd(t, "status", "--server", s.url, r.ID); !strings.Contains(out, `"state": "sent"`) {
		t.Fatalf("status: %s", out)
	}
	if out := runCmd(t, "dlq", "list", "--server", s.url); !strings.Contains(out, `"count": 0`) {
		t.Fatalf("dlq list: %s", out)
	}
	if out := runCmd(t, "dlq", "replay", "--server", s.url); !strings.Contains(out, `"replayed": 0`) {
		t.Fatalf("dlq replay: %s", out)
	}
	// An error from the server is an error of the command, with its message.
	root := newRoot()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"send", "--server", s.url, "--channel", "fax", "--to", "x", "--body", "b"})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "channel") {
		t.Fatalf("bad send: %v", err)
	}
}

func TestConfigLayers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("listen: 127.0.0.1:9999\napi:\n  max_backlog: 10\nchannels:\n  sms:\n    rate: 50\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOUTONG_API__MAX_BACKLOG", "500")
	t.Setenv("GOUTONG_ENGINE__DRAIN_TIMEOUT", "3s")
	c, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9999" || c.API.MaxBacklog != 500 || c.Engine.DrainTimeout != 3*time.Second ||
		c.Channels["sms"].Rate != 50 || c.Engine.RingSize != 8192 {
		t.Fatalf("layers: %+v", c)
	}
	// Keys the file leaves out keep the stores' own defaults (the filters
	// were off in serve while the docs said on).
	if c.Dedupe.FilterKeys != dedupe.DefaultFilterKeys || c.Dedupe.FilterMaxBytes != dedupe.DefaultFilterBytes || c.Dedupe.RecentBytes != dedupe.DefaultRecentBytes ||
		c.Dedupe.WriteBufferBytes != dedupe.DefaultWriteBufferBytes {
		t.Fatalf("dedupe defaults: %+v", c.Dedupe)
	}
	if err := os.WriteFile(path, []byte("engine:\n  ring_sise: 5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), "ring_sise") {
		t.Fatalf("misspelt key: %v", err)
	}
	// A variable that names no key is named as the variable it is.
	if err := os.WriteFile(path, []byte("engine:\n  ring_size: 1024\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOUTONG_MEASURE", "1")
	t.Setenv("GOUTONG_DEDUPE__WINDOWW", "1h")
	_, err = loadConfig(path)
	if err == nil || !strings.Contains(err.Error(), "from the environment: GOUTONG_DEDUPE__WINDOWW, GOUTONG_MEASURE;") {
		t.Fatalf("stray environment variables: %v", err)
	}
}

// The documented example config parses: docs and code do not drift apart.
func TestDocumentedConfigParses(t *testing.T) {
	doc, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml block in docs/config.md")
	}
	path := filepath.Join(t.TempDir(), "doc.yaml")
	if err := os.WriteFile(path, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Channels["sms"].Provider != "twilio" || c.API.Quotas["acme"].PerSec != 20000 || len(c.API.Keys) != 2 {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := dedupeOptions(c); err != nil {
		t.Fatal(err)
	}
	if d, err := ingestDedupe(c); err != nil || d != engine.IngestDedupeKeyed {
		t.Fatalf("dedupe.at_ingest (default keyed): %v, %v", d, err)
	}
	c.Dedupe.AtIngest = "all"
	if d, err := ingestDedupe(c); err != nil || d != engine.IngestDedupeAll {
		t.Fatalf("dedupe.at_ingest all: %v, %v", d, err)
	}
	c.Dedupe.AtIngest = "some"
	if _, err := ingestDedupe(c); err == nil || !strings.Contains(err.Error(), "dedupe.at_ingest") {
		t.Fatalf("bad dedupe.at_ingest: %v", err)
	}
	c.Channels["push"] = ChannelConf{Uncertain: "maybe"}
	if _, err := dedupeOptions(c); err == nil || !strings.Contains(err.Error(), "channels.push.uncertain") {
		t.Fatalf("bad uncertain policy: %v", err)
	}
}

// serve --kafka: the topics are created on the cluster and a notification
// goes from the API through Kafka to the provider.
func TestServeKafka(t *testing.T) {
	c, mock := kafkaAndMock(t)
	url, cfg, stop := kafkaServe(t, c, mock, "")
	id := postOne(t, url, `{"channel":"webhook","recipient":"https://hooks.example/k","content":{"body":"via kafka"}}`)
	waitUntil(t, 30*time.Second, "the send", func() bool { return statusOf(url, id) == "sent" })
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	topics, err := adm.ListTopics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"goutong.notifications.critical", "goutong.retry", "goutong.dlq", "goutong.status"} {
		if !topics.Has(want) {
			t.Fatalf("topic %s not created on the cluster: %v", want, topics.Names())
		}
	}
	// The node named itself once, and its status store follows the status
	// topic in a group of that name.
	nodeID, err := os.ReadFile(filepath.Join(cfg.Data, "node-id"))
	if err != nil || strings.TrimSpace(string(nodeID)) == "" {
		t.Fatalf("node id: %q, %v", nodeID, err)
	}
	waitUntil(t, 30*time.Second, "the status replica's group", func() bool {
		groups, err := adm.ListGroups(context.Background())
		return err == nil && slices.Contains(groups.Groups(), "goutong-status-store."+strings.TrimSpace(string(nodeID)))
	})
	stop()
}

// kafkaAndMock starts a Kafka cluster (kfake) and the mock provider, both
// closed when the test ends.
func kafkaAndMock(t *testing.T) (*kfake.Cluster, *mockserver.Server) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	mock, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mock.Close() })
	return c, mock
}

// kafkaServe runs serve in-process on cluster c, sending to mock, with a
// data directory of its own; join, when set, is its config's join.
func kafkaServe(t *testing.T, c *kfake.Cluster, mock *mockserver.Server, join string) (url string, cfg Config, stop func()) {
	t.Helper()
	cfg, err := loadConfig(writeConfig(t, mock.URL()))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Data, cfg.Listen, cfg.Kafka, cfg.Join = t.TempDir(), "127.0.0.1:0", c.ListenAddrs(), join
	url, stop = serveInProcess(t, cfg)
	return url, cfg, stop
}

// postKeyed posts one webhook notification to url with an Idempotency-Key
// and returns the answer's code and body.
func postKeyed(t *testing.T, url, recipient, key string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest("POST", url+"/v1/notifications",
		strings.NewReader(`{"channel":"webhook","recipient":"`+recipient+`","content":{"body":"once"}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// sendKeyed posts n keyed webhook notifications (keys order-<from>...) to
// url and returns their ids once each is sent, its event produced.
func sendKeyed(t *testing.T, url string, from, n int) []string {
	t.Helper()
	var ids []string
	for i := from; i < from+n; i++ {
		code, body := postKeyed(t, url, fmt.Sprintf("https://hooks.example/%d", i), fmt.Sprintf("order-%d", i))
		if code != 202 {
			t.Fatalf("request %d: %d %v", i, code, body)
		}
		ids = append(ids, body["id"].(string))
	}
	waitUntil(t, 30*time.Second, "the sends", func() bool {
		return !slices.ContainsFunc(ids, func(id string) bool { return statusOf(url, id) != "sent" })
	})
	return ids
}

// A request retried at another node of the cluster is answered with the
// first node's notification (200, duplicate), not accepted again.
func TestServeKafkaKeysAcrossNodes(t *testing.T) {
	c, mock := kafkaAndMock(t)
	var urls []string
	for range 2 {
		url, _, stop := kafkaServe(t, c, mock, "")
		defer stop()
		urls = append(urls, url)
	}
	post := func(url string) (int, map[string]any) {
		return postKeyed(t, url, "https://hooks.example/k", "order-42-shipped")
	}
	code, first := post(urls[0])
	if code != 202 {
		t.Fatalf("first request: %d %v", code, first)
	}
	id, _ := first["id"].(string)
	waitUntil(t, 30*time.Second, "the send", func() bool { return statusOf(urls[0], id) == "sent" })
	waitUntil(t, 30*time.Second, "the other node to know it", func() bool { return statusOf(urls[1], id) == "sent" })
	code, again := post(urls[1])
	if code != 200 || again["id"] != id || again["duplicate"] != true || again["status"] != "sent" {
		t.Fatalf("the request retried at the other node: %d %v, want 200, a duplicate of %s, sent", code, again, id)
	}
	time.Sleep(500 * time.Millisecond)
	if st := mock.Stats(); st.Received != 1 {
		t.Fatalf("provider received %d, want 1", st.Received)
	}
}

// A node added to a running fleet with join starts from a snapshot of
// another node's stores: it answers for that node's notifications and keys
// at once, and its status replica reads nothing from before the copy.
func TestServeJoinsFromASnapshot(t *testing.T) {
	c, mock := kafkaAndMock(t)
	urlA, cfgA, stopA := kafkaServe(t, c, mock, "")
	defer stopA()
	post := func(url string, i int) (int, map[string]any) {
		return postKeyed(t, url, fmt.Sprintf("https://hooks.example/%d", i), fmt.Sprintf("order-%d", i))
	}
	// Every sent event produced: nothing reaches the status topic after the
	// snapshot below (which waits for a's replica to read what came before).
	ids := sendKeyed(t, urlA, 0, 20)

	urlB, _, stopB := kafkaServe(t, c, mock, urlA)
	defer stopB()
	for _, id := range ids {
		if st := statusOf(urlB, id); st != "sent" {
			t.Fatalf("%s at the joined node: %q, want sent", id, st)
		}
	}
	code, again := post(urlB, 7)
	if code != 200 || again["id"] != ids[7] || again["duplicate"] != true {
		t.Fatalf("a request repeated at the joined node: %d %v, want 200, a duplicate of %s", code, again, ids[7])
	}
	if n := metricValue(t, urlB, "goutong_dedupe_remembered_total"); n != 0 {
		t.Fatalf("the joined node copied %v keys from the status topic; it read from where the snapshot was taken, and nothing came after", n)
	}
	if entries, _ := os.ReadDir(cfgA.Data); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".snapshot-") }) {
		t.Fatalf("the snapshot's copy was left in %s", cfgA.Data)
	}
	// A third node joins the second from a file goutong snapshot saved.
	// The second's replica has committed nothing yet: the copy starts
	// where the second's was seeded, not at the topic's start.
	saved := filepath.Join(t.TempDir(), "b.tar")
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"snapshot", "--server", urlB, "--out", saved})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("goutong snapshot: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(saved)); len(entries) != 1 || !strings.HasPrefix(out.String(), "saved ") {
		t.Fatalf("goutong snapshot printed %q and left %d files, want the tar alone", out.String(), len(entries))
	}
	urlC, _, stopC := kafkaServe(t, c, mock, saved)
	defer stopC()
	if st := statusOf(urlC, ids[0]); st != "sent" {
		t.Fatalf("%s at the third node: %q, want sent", ids[0], st)
	}
	// b's own duplicate answer above produced nothing; the third node read
	// no event of a's.
	if n := metricValue(t, urlC, "goutong_dedupe_remembered_total"); n != 0 {
		t.Fatalf("the third node copied %v keys from the status topic", n)
	}
	time.Sleep(300 * time.Millisecond)
	if st := mock.Stats(); st.Received != 20 {
		t.Fatalf("provider received %d, want 20", st.Received)
	}
}

// A snapshot whose offsets the status topic's retention has dropped is
// refused at join: the events in between would be missing on the new node.
func TestJoinRefusesASnapshotPastRetention(t *testing.T) {
	c, mock := kafkaAndMock(t)
	urlA, _, stopA := kafkaServe(t, c, mock, "")
	defer stopA()
	sendKeyed(t, urlA, 0, 10)
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := downloadSnapshot(ctx, urlA+"/v1/admin/snapshot", "", dir); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(dir, engine.SnapshotStatusDir)
	if err := checkSnapshotOffsets(ctx, c.ListenAddrs(), status); err != nil {
		t.Fatalf("a fresh snapshot: %v", err)
	}
	sendKeyed(t, urlA, 10, 10)
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := adm.ListEndOffsets(ctx, engine.DefaultTopics().Status)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.DeleteRecords(ctx, ends.Offsets()); err != nil { // retention, all at once
		t.Fatal(err)
	}
	if err := checkSnapshotOffsets(ctx, c.ListenAddrs(), status); err == nil || !strings.Contains(err.Error(), "older than the status topic's retention") {
		t.Fatalf("a snapshot past retention: %v", err)
	}
}

// join is for Kafka nodes, and a node it cannot reach fails the start.
func TestServeJoinRefusals(t *testing.T) {
	cfg := defaultConfig()
	cfg.Data, cfg.Listen, cfg.Join = t.TempDir(), "127.0.0.1:0", "http://127.0.0.1:1"
	if err := serve(context.Background(), cfg, io.Discard); err == nil || !strings.Contains(err.Error(), "only a Kafka node") {
		t.Fatalf("join on the embedded log: %v", err)
	}
	cfg.Kafka = []string{"127.0.0.1:1"}
	if err := serve(context.Background(), cfg, io.Discard); err == nil || !strings.Contains(err.Error(), "join http://127.0.0.1:1") {
		t.Fatalf("join of a node that does not answer: %v", err)
	}
	if entries, _ := os.ReadDir(cfg.Data); len(entries) != 0 {
		t.Fatalf("a failed join left %v in the data directory", entries)
	}
}

// The API rejects a template name only on channels whose provider renders
// templates (twilio, sendgrid, fcm): the log provider writes the name and
// vars, a webhook sends them on.
func TestTemplateCheckFollowsTheProviders(t *testing.T) {
	m, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	for _, mock := range []*mockserver.Server{m, nil} {
		built, err := buildChannels(cfg, mock)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range built.closers {
			defer c.Close()
		}
		for _, ch := range []notification.Channel{notification.SMS, notification.Email, notification.Push, notification.Webhook} {
			renders := mock != nil && ch != notification.Webhook
			for _, c := range []struct {
				n     notification.Notification
				field string // refused naming it where the provider renders
			}{
				{notification.Notification{Channel: ch, Template: "otp", Vars: map[string]string{"code": "1"}}, ""},
				{notification.Notification{Channel: ch, Template: "promo"}, "template"},
				{notification.Notification{Channel: ch, Template: "otp"}, "vars.code"},
			} {
				err := built.checkTemplate(&c.n)
				var fe *notification.FieldError
				switch {
				case !renders || c.field == "":
					if err != nil {
						t.Errorf("mock %v, %s, %+v: refused: %v", mock != nil, ch, c.n, err)
					}
				case !errors.As(err, &fe) || fe.Field != c.field:
					t.Errorf("mock %v, %s, %+v: %v, want a field error on %s", mock != nil, ch, c.n, err, c.field)
				}
			}
		}
	}
}
