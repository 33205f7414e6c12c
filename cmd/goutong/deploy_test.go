package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/goutong/goutong/api"
	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/wal"
)

// recordingRegisterer keeps the name of every series registered on it.
type recordingRegisterer struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}
func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}
func (r *recordingRegisterer) Unregister(prometheus.Collector) bool { return true }

// exportedSeries builds a node (engine with its status store and API,
// every channel behind a breaker, a tenant's status webhook) and returns the names of the series it
// registers.
func exportedSeries(t *testing.T) map[string]bool {
	dir := t.TempDir()
	w, err := wal.Open(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	dd, err := dedupe.Open(filepath.Join(dir, "dedupe"), dedupe.WithCreate())
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Close()
	st, err := engine.OpenStatus(filepath.Join(dir, "status"), time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := defaultConfig()
	cfg.Data = dir
	cfg.Channels = map[string]ChannelConf{"sms": {Breaker: true, Rate: 100}}
	built, err := buildChannels(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	chans := built.configs
	for _, c := range built.closers {
		defer c.Close()
	}
	reg := &recordingRegisterer{names: map[string]bool{}}
	reg.MustRegister(logCollector{w}) // as serve does on the embedded log
	eng, err := engine.New(engine.Config{Open: func(cc partition.ConsumerConfig) (partition.Log, error) { return partition.NewWAL(w, cc), nil },
		Channels: chans, Dedupe: dd, Status: st, Registry: reg, DrainTimeout: time.Second,
		StatusWebhooks: map[string]engine.StatusWebhook{"acme": {URL: "http://127.0.0.1:1/events", Secret: "s"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.New(api.Config{Engine: eng, Registry: reg}); err != nil {
		t.Fatal(err)
	}
	return reg.names
}

var seriesRef = regexp.MustCompile(`goutong_[a-z0-9_]+`)

// checkSeries fails for every goutong_* series expr uses that no node exports.
func checkSeries(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	for _, s := range seriesRef.FindAllString(expr, -1) {
		base := s
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(s, suf) && known[strings.TrimSuffix(s, suf)] {
				base = strings.TrimSuffix(s, suf)
			}
		}
		if !known[base] {
			t.Errorf("%s uses %s, which no node exports", where, s)
		}
	}
}

// TestAlertRulesPromtool checks the rules with Prometheus's own promtool
// (Debian's prometheus package; .ci/run installs it) and runs their unit
// tests: each alert fires on the series it is meant for and not on others.
func TestAlertRulesPromtool(t *testing.T) {
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI needs promtool (.ci/run installs Debian's prometheus package)")
		}
		t.Skip("no promtool: apt-get install prometheus")
	}
	for _, args := range [][]string{
		{"check", "rules", "../../deploy/prometheus/goutong-alerts.yml"},
		{"test", "rules", "../../deploy/prometheus/goutong-alerts_test.yml"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestAlertRules(t *testing.T) {
	known := exportedSeries(t)
	raw, err := os.ReadFile("../../deploy/prometheus/goutong-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || alerts[r.Alert] {
				t.Errorf("rule %q: name missing or repeated, or no expr", r.Alert)
			}
			alerts[r.Alert] = true
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: severity %q", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description are required", r.Alert)
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") {
				t.Errorf("%s: unbalanced parentheses", r.Alert)
			}
			checkSeries(t, r.Alert, r.Expr, known)
		}
	}
	for _, want := range []string{"GoutongBacklogHigh", "GoutongConsumerLagGrowing", "GoutongSuccessRateLow",
		"GoutongCriticalLatencyHigh", "GoutongBreakerOpen", "GoutongDeadLettersGrowing"} {
		if !alerts[want] {
			t.Errorf("alert %s missing", want)
		}
	}
}

func TestGrafanaDashboard(t *testing.T) {
	known := exportedSeries(t)
	raw, err := os.ReadFile("../../deploy/grafana/goutong-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkSeries(t, p.Title, tg.Expr, known)
		}
	}
}
