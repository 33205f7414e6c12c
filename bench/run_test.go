package bench

import (
	"context"
	"os"
	"testing"
	"time"
)

// runScaled runs a built-in scenario shrunk by count and time factors.
func runScaled(t *testing.T, name string, count, timeScale float64, kafka bool) *ScenarioResult {
	t.Helper()
	sc, err := Builtin(name)
	if err != nil {
		t.Fatal(err)
	}
	sc = sc.Scaled(count, timeScale)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress *os.File
	if testing.Verbose() {
		progress = os.Stderr
	}
	opt := Options{KafkaFake: kafka, Dir: t.TempDir(), Interval: 200 * time.Millisecond}
	if progress != nil {
		opt.Progress = progress
	}
	res, err := Run(ctx, sc, opt)
	if err != nil {
		t.Fatal(err)
	}
	r := &Results{Version: ResultsVersion, Machine: Machine(), Scale: count, TimeScale: timeScale, Scenarios: []ScenarioResult{*res}}
	if testing.Verbose() {
		r.Summary(os.Stderr)
	}
	return res
}

func TestScratch(t *testing.T) {
	runScaled(t, os.Getenv("SC"), 0.02, 0.2, false)
}
