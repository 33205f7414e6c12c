package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/providers/mockserver"
)

// TestReconcileAgainstServe: SMS sent through a serve subprocess get no
// receipt; goutong reconcile reports each as missing-receipt, writes them as
// JSON lines and redrives them; the scheduled runs show in the run list.
func TestReconcileAgainstServe(t *testing.T) {
	mock, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer mock.Close()
	cfg := filepath.Join(t.TempDir(), "goutong.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
log_level: warn
partitions: 2
channels:
  sms: {provider: twilio, base_url: %s, account_sid: ACtest, auth_token: tok, from: "+15005550006", rate: 1000}
reconcile:
  schedule: "@every 1s"
  deadlines: {sms: 1ms}
`, mock.URL())), 0o644)
	s := startServe(t, "--config", cfg, "--data", t.TempDir())
	var ids []string
	for i := range 3 {
		out := runCmd(t, "send", "--server", s.url, "--channel", "sms", "--to", fmt.Sprintf("+1555000000%d", i), "--body", "hello")
		var r struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(out)
		}
		ids = append(ids, r.ID)
	}
	for _, id := range ids {
		waitUntil(t, 30*time.Second, "sent", func() bool { return statusOf(s.url, id) == "sent" })
	}
	out := filepath.Join(t.TempDir(), "diffs.jsonl")
	from, to := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	summary := runCmd(t, "reconcile", "--server", s.url, "--from", from, "--to", to, "--redrive", "missing-receipt", "--out", out)
	if !strings.Contains(summary, "missing-receipt    3") || !strings.Contains(summary, "redriven 3") {
		t.Fatalf("summary:\n%s", summary)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]engine.Difference{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var d engine.Difference
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got[d.ID] = d
	}
	for _, id := range ids {
		if d := got[id]; d.Kind != "missing-receipt" || d.Provider != "twilio" || d.RedrivenAs == "" {
			t.Fatalf("difference of %s: %+v", id, d)
		}
	}
	waitUntil(t, 30*time.Second, "the redriven sends", func() bool { return mock.Stats().Unique == 6 })
	// The schedule runs every second; its runs are kept beside the CLI's.
	waitUntil(t, 10*time.Second, "a scheduled run", func() bool {
		resp, err := http.Get(s.url + "/v1/admin/reconcile")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `"trigger":"schedule"`) && strings.Contains(string(b), `"trigger":"api"`)
	})
	if l := runCmd(t, "reconcile", "list", "--server", s.url); !strings.Contains(l, `"runs"`) {
		t.Fatalf("reconcile list: %s", l)
	}
}
