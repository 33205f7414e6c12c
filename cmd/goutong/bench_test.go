package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBenchThenPlan(t *testing.T) {
	dir := t.TempDir()
	out := runCmd(t, "bench", "otp-flood", "marketing-burst", "--scale", "0.002", "--time-scale", "0.1",
		"--interval", "100ms", "--out", dir)
	for _, want := range []string{"otp-flood (wal", "marketing-burst (wal", "lost 0", "report:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("bench output lacks %q:\n%s", want, out)
		}
	}
	html, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil || !strings.Contains(string(html), `id="otp-flood"`) {
		t.Fatalf("report: %v", err)
	}
	// The campaign alone: a scaled otp-flood on a loaded CI machine may break
	// at its first step, which plan rightly refuses to size codes from
	// (bench's TestPlan* cover the codes' arithmetic).
	results := filepath.Join(dir, "results.json")
	plan := runCmd(t, "plan", "--results", results, "--campaign-size", "10000000", "--campaign-within", "30m")
	for _, want := range []string{"nodes", "partitions per lane topic", "engine.ring_size", "disk, whole fleet", "scaled run"} {
		if !strings.Contains(plan, want) {
			t.Fatalf("plan lacks %q:\n%s", want, plan)
		}
	}
	target := filepath.Join(dir, "target.yaml")
	os.WriteFile(target, []byte("campaign_size: 1000000\ncampaign_within: 1h\n"), 0o644)
	var p struct {
		Nodes int `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(runCmd(t, "plan", "--results", results, "--target", target, "--json")), &p); err != nil || p.Nodes < 1 {
		t.Fatalf("plan --json: %v %+v", err, p)
	}
}

func TestBenchScenarioFileAndErrors(t *testing.T) {
	dir := t.TempDir()
	sc := filepath.Join(dir, "mine.yaml")
	os.WriteFile(sc, []byte(`name: mine
channels: {push: {rate: 5000}}
loads:
  - {name: pushes, channel: push, priority: normal, count: 300, batch: 100}
  - {name: codes, channel: sms, priority: critical, rate: 200, for: 1s}
`), 0o644)
	out := runCmd(t, "bench", sc, "--out", dir, "--interval", "100ms")
	if !strings.Contains(out, "mine (wal") || !strings.Contains(out, "accepted 500") {
		t.Fatal(out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "no-such-scenario"}, "built in: marketing-burst"},
		{[]string{"bench", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"bench", "otp-flood", "--scale", "0"}, "--scale"},
		{[]string{"plan", "--results", filepath.Join(dir, "nope.json"), "--otp-rate", "1", "--otp-p99", "1s"}, "no such file"},
		{[]string{"plan", "--results", filepath.Join(dir, "results.json")}, "otp_rate, campaign_size"},
		{[]string{"plan", "--results", filepath.Join(dir, "results.json"), "--otp-rate", "100", "--otp-p99", "1s"}, "otp-flood"},
	} {
		var buf bytes.Buffer
		root := newRoot()
		root.SetOut(&buf)
		root.SetErr(&buf)
		root.SetArgs(c.args)
		if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("goutong %s: error %v, want %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
