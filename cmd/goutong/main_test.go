package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

func runCmd(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("goutong %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestSelfcheckEmbeddedTwice(t *testing.T) {
	dir := t.TempDir()
	for range 2 { // the second run must skip nothing and find the first's commits
		out := runCmd(t, "selfcheck", "--data", dir, "--count", "2000", "--batch", "300")
		if !strings.Contains(out, "selfcheck ok") || !strings.Contains(out, "sms 500") {
			t.Fatal(out)
		}
	}
	out := runCmd(t, "topics", "--data", dir)
	if !strings.Contains(out, "goutong.notifications") || !strings.Contains(out, "goutong.dlq") {
		t.Fatal(out)
	}
}

func TestSelfcheckKafka(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := runCmd(t, "selfcheck", "--kafka", strings.Join(c.ListenAddrs(), ","), "--count", "2000", "--partitions", "4")
	if !strings.Contains(out, "selfcheck ok") {
		t.Fatal(out)
	}
}

func TestMockProviderCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"mock-provider", "--listen", "127.0.0.1:0", "--error-rate", "0"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "mock provider listening on http://127.0.0.1:") || !strings.Contains(out.String(), "received 0") {
		t.Fatal(out.String())
	}
	root = newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"mock-provider", "--error-rate", "2"})
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "error-rate") {
		t.Fatalf("bad rate accepted: %v", err)
	}
}
