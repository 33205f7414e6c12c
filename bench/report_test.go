package bench

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// reportResults are knownResults with a time series to chart.
func reportResults() *Results {
	r := knownResults()
	r.Machine = Machine()
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		s.Latency = []Latency{{Name: "sms/critical", Channel: "sms", Priority: "critical", Count: 10, P50: 1, P90: 2, P99: 3, P999: 4, Max: 5}}
		for j := range 20 {
			s.Series = append(s.Series, Sample{T: float64(j), AcceptedPerSec: float64(1000 * j), DeliveredPerSec: float64(900 * j),
				Backlog: int64(100 * j), Queued: int64(10 * j), Lag: int64(50 * j), P99ms: map[string]float64{s.Loads[0].Name: float64(j)}})
		}
	}
	r.Scenarios[0].CPUSeconds, r.Scenarios[0].CPUMicrosPerNotification = 12.5, 8.3
	// A scenario with a single sample still renders, with a note.
	r.Scenarios = append(r.Scenarios, ScenarioResult{Name: "tiny", Backend: "wal", Series: []Sample{{T: 1}}})
	return r
}

func TestReportHTML(t *testing.T) {
	var buf bytes.Buffer
	if err := reportResults().WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	if n := strings.Count(html, "<svg"); n != 6 {
		t.Errorf("%d charts, want 3 for each of the two scenarios with a series", n)
	}
	if !strings.Contains(html, "fewer than two samples") {
		t.Error("the one-sample scenario has no note")
	}
	// Self-contained: no scripts, nothing fetched.
	if regexp.MustCompile(`(?i)<script|(src|href)\s*=\s*"(https?:)?//`).MatchString(html) {
		t.Error("the report loads something from elsewhere")
	}
	if n := strings.Count(html, "CPU a notification"); n != 1 {
		t.Errorf("CPU shown for %d scenarios, want the one that measured it", n)
	}
	for _, want := range []string{`id="otp-flood"`, `id="marketing-burst"`, "campaign-email", "held rate/s", "12.5 s", "8.3 µs"} {
		if !strings.Contains(html, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// chromium finds a headless browser; CI installs Debian's (.ci/run).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI needs chromium for the report test (.ci/run installs it)")
	}
	t.Skip("no chromium on this machine: apt-get install chromium")
	return ""
}

// TestReportOpensInChromium renders the report in headless Chromium: the
// DOM it builds has every section and chart, nothing is logged to its
// console, and the screenshot is not blank.
func TestReportOpensInChromium(t *testing.T) {
	bin := chromium(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := reportResults().WriteHTML(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run := func(args ...string) (string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--enable-logging=stderr", "--v=0", "--window-size=1000,3000"}
		cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, errb.String())
		}
		return out.String(), errb.String()
	}
	dom, logs := run("--dump-dom", "file://"+page)
	for _, want := range []string{"Goutong capacity report", `id="otp-flood"`, `id="marketing-burst"`, "<svg"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the DOM Chromium built lacks %q", want)
		}
	}
	if strings.Count(dom, "<svg") != 6 {
		t.Errorf("Chromium's DOM has %d charts, want 6", strings.Count(dom, "<svg"))
	}
	if strings.Contains(logs, "CONSOLE") {
		t.Errorf("the page logged to the console:\n%s", logs)
	}
	shot := filepath.Join(dir, "shot.png")
	run("--screenshot="+shot, "file://"+page)
	sf, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	img, err := png.Decode(sf)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	inked := 0
	for y := b.Min.Y; y < b.Max.Y; y += 4 {
		for x := b.Min.X; x < b.Max.X; x += 4 {
			if r, g, bl, _ := img.At(x, y).RGBA(); r < 0xc000 || g < 0xc000 || bl < 0xc000 {
				inked++
			}
		}
	}
	if total := (b.Dx() / 4) * (b.Dy() / 4); inked < total/100 {
		t.Errorf("the screenshot is nearly blank: %d of %d sampled pixels drawn", inked, total)
	}
}
