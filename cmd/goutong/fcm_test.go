package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An FCM channel with a service-account key sends through the mock acting
// as Google's token server (mock-provider --google-key, the config's
// token_url): serve mints a token, the mock grants and checks it.
func TestServeFCMServiceAccount(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := json.Marshal(map[string]string{"type": "service_account", "project_id": "acme-push",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "goutong@acme-push.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"})
	dir := t.TempDir()
	saPath := filepath.Join(dir, "sa.json")
	if err := os.WriteFile(saPath, sa, 0o600); err != nil {
		t.Fatal(err)
	}

	mctx, stopMock := context.WithCancel(context.Background())
	defer stopMock()
	pr, pw := io.Pipe()
	root := newRoot()
	root.SetOut(pw)
	root.SetArgs([]string{"mock-provider", "--listen", "127.0.0.1:0", "--google-key", saPath})
	mockDone := make(chan error, 1)
	go func() { mockDone <- root.ExecuteContext(mctx); pw.Close() }()
	mockURL := urlAfter(pr, "mock provider listening on ")
	if mockURL == "" {
		t.Fatalf("mock-provider did not start: %v", <-mockDone)
	}

	cfgPath := filepath.Join(dir, "goutong.yaml")
	yaml := fmt.Sprintf(`
log_level: warn
partitions: 2
engine:
  drain_timeout: 2s
channels:
  push:
    provider: fcm
    base_url: %s
    credentials_file: %s
    token_url: %s/token
    rate: 1000
`, mockURL, saPath, mockURL)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Data, cfg.Listen = filepath.Join(dir, "data"), "127.0.0.1:0"
	url, stop := serveInProcess(t, cfg)
	id := postOne(t, url, `{"channel":"push","recipient":"fcm-device-token-1","content":{"subject":"Hi","body":"via a service account"}}`)
	waitUntil(t, 30*time.Second, "the push sent", func() bool { return statusOf(url, id) == "sent" })
	st, err := http.Get(mockURL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Tokens int64            `json:"tokens"`
		By     map[string]int64 `json:"by_channel"`
	}
	_ = json.NewDecoder(st.Body).Decode(&stats)
	st.Body.Close()
	if stats.Tokens != 1 || stats.By["push"] != 1 {
		t.Fatalf("mock stats %+v: want one token granted and one push", stats)
	}
	stop()
	stopMock()
	if err := <-mockDone; err != nil {
		t.Fatal(err)
	}

	// A bad --google-key fails at start, naming the flag.
	root = newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"mock-provider", "--listen", "127.0.0.1:0", "--google-key", cfgPath})
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "--google-key") {
		t.Fatalf("bad key file: %v", err)
	}
}
