package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/goutong/goutong/bench"
)

func newBench() *cobra.Command {
	var out string
	var kafkaFake, noProgress bool
	var scale, timeScale float64
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "bench [scenario | file.yaml | all] ...",
		Short: "Run capacity scenarios in-process against the mock provider and write a report",
		Long: `bench runs the real engine in-process (the embedded log, or kfake over
loopback with --kafka-fake) against the mock provider, drives it with the
scenarios' loads through the ingest path, and measures throughput, latency
percentiles per channel and priority (HDR histograms), backlog, retries, dead
letters, duplicates and losses as the mock provider counts them.

Built-in scenarios: ` + strings.Join(bench.BuiltinNames, ", ") + ` ("all" runs them in
turn); a YAML file (see bench/scenarios/ for the format) runs a scenario of
your own. --scale and --time-scale shrink a scenario for a quick look.

It writes <out>/results.json (the input of goutong plan) and <out>/report.html
(self-contained, readable offline) and prints a short summary.`,
		Example: `  goutong bench otp-during-burst
  goutong bench all --out results/$(hostname)
  goutong bench my-scenario.yaml --kafka-fake
  goutong bench marketing-burst --scale 0.1 --time-scale 0.5`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if scale <= 0 || timeScale <= 0 {
				return errors.New("--scale and --time-scale must be positive")
			}
			setProcs(0) // as serve runs; the results record it
			scenarios, err := loadScenarios(args)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			var progress io.Writer
			if f, ok := cmd.ErrOrStderr().(*os.File); ok && !noProgress && term.IsTerminal(int(f.Fd())) {
				progress = f
			}
			res := &bench.Results{Version: bench.ResultsVersion, Machine: bench.Machine(), Scale: scale, TimeScale: timeScale}
			for _, sc := range scenarios {
				if progress == nil {
					fmt.Fprintf(w, "running %s ...\n", sc.Name)
				}
				r, err := bench.Run(cmd.Context(), sc.Scaled(scale, timeScale), bench.Options{KafkaFake: kafkaFake,
					Interval: interval, Progress: progress})
				if err != nil {
					return fmt.Errorf("scenario %s: %w", sc.Name, err)
				}
				res.Scenarios = append(res.Scenarios, *r)
			}
			jsonPath, htmlPath := filepath.Join(out, "results.json"), filepath.Join(out, "report.html")
			if err := res.WriteJSON(jsonPath); err != nil {
				return err
			}
			f, err := os.Create(htmlPath)
			if err != nil {
				return err
			}
			if err := res.WriteHTML(f); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			res.Summary(w)
			fmt.Fprintf(w, "\nresults: %s\nreport:  %s\n", jsonPath, htmlPath)
			for _, s := range res.Scenarios {
				switch {
				case s.Unsettled:
					return fmt.Errorf("scenario %s: %d notifications unfinished when its drain time (%s) ran out", s.Name, s.Lost, s.Scenario.Drain.D())
				case s.Lost > 0 || s.ProviderDuplicates > 0:
					return fmt.Errorf("scenario %s: %d lost, %d sent more than once", s.Name, s.Lost, s.ProviderDuplicates)
				}
				for _, l := range s.Loads {
					if l.Early > 0 {
						return fmt.Errorf("scenario %s: %d of %s sent before their not_before", s.Name, l.Early, l.Name)
					}
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "bench-results", "directory for results.json and report.html")
	f.BoolVar(&kafkaFake, "kafka-fake", false, "run on an in-process Kafka (kfake) over loopback instead of the embedded log, as one serve --kafka node (with a node id)")
	f.Float64Var(&scale, "scale", 1, "multiply every count by this (rates follow, see --time-scale)")
	f.Float64Var(&timeScale, "time-scale", 1, "multiply every duration by this; rates are multiplied by scale/time-scale")
	f.DurationVar(&interval, "interval", time.Second, "sampling interval of the time series")
	f.BoolVar(&noProgress, "no-progress", false, "no progress bar (it is drawn only on a terminal anyway)")
	return cmd
}

// loadScenarios resolves each argument: "all", a built-in name, or a file.
func loadScenarios(args []string) ([]bench.Scenario, error) {
	var out []bench.Scenario
	for _, a := range args {
		switch {
		case a == "all":
			for _, name := range bench.BuiltinNames {
				sc, err := bench.Builtin(name)
				if err != nil {
					return nil, err
				}
				out = append(out, sc)
			}
		case strings.HasSuffix(a, ".yaml") || strings.HasSuffix(a, ".yml") || strings.ContainsRune(a, os.PathSeparator):
			f, err := os.Open(a)
			if err != nil {
				return nil, err
			}
			sc, err := bench.ParseScenario(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", a, err)
			}
			out = append(out, sc)
		default:
			sc, err := bench.Builtin(a)
			if err != nil {
				return nil, err
			}
			out = append(out, sc)
		}
	}
	return out, nil
}

func newPlan() *cobra.Command {
	var resultsPath, targetPath string
	var asJSON bool
	var t bench.Target
	var otpP99, within, bufRet, dlqRet, provLat time.Duration
	cmd := &cobra.Command{
		Use:   "plan --results results.json [--target target.yaml] [flags]",
		Short: "Size a fleet (nodes, partitions, ring sizes, rate limits, memory, disk) from bench results and a target",
		Long: `plan reads the results of goutong bench and a target (a YAML file, flags, or
both; flags win) and prints the nodes, partitions, ring size, per-node rate
limits and provider concurrency, memory per node and disk the target needs, each with its
arithmetic, and warns where the target goes past what was measured.

The target's keys: otp_rate, otp_p99, otp_channel, campaign_size,
campaign_within, campaign_channel, campaigns_per_day, peak_hours_per_day,
buffer_retention, dlq_retention, dedupe_window, status_window,
dead_letter_share, headroom, provider_latency, provider_limits (per channel),
replication. See bench/README.md.`,
		Example: `  goutong plan --results bench-results/results.json \
    --otp-rate 50000 --otp-p99 1s --campaign-size 10000000 --campaign-within 30m \
    --buffer-retention 2h --dlq-retention 24h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := bench.ReadResults(resultsPath)
			if err != nil {
				return err
			}
			target := bench.Target{}
			if targetPath != "" {
				f, err := os.Open(targetPath)
				if err != nil {
					return err
				}
				target, err = bench.ParseTarget(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", targetPath, err)
				}
			}
			fl := cmd.Flags()
			set := func(name string, apply func()) {
				if fl.Changed(name) {
					apply()
				}
			}
			set("otp-rate", func() { target.OTPRate = t.OTPRate })
			set("otp-p99", func() { target.OTPP99 = bench.Duration(otpP99) })
			set("otp-channel", func() { target.OTPChannel = t.OTPChannel })
			set("campaign-size", func() { target.CampaignSize = t.CampaignSize })
			set("campaign-within", func() { target.CampaignWithin = bench.Duration(within) })
			set("campaign-channel", func() { target.CampaignChannel = t.CampaignChannel })
			set("buffer-retention", func() { target.BufferRetention = bench.Duration(bufRet) })
			set("dlq-retention", func() { target.DLQRetention = bench.Duration(dlqRet) })
			set("headroom", func() { target.Headroom = t.Headroom })
			set("provider-latency", func() { target.ProviderLatency = bench.Duration(provLat) })
			set("peak-hours", func() { target.PeakHoursPerDay = t.PeakHoursPerDay })
			plan, err := bench.MakePlan(res, target)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(plan)
			}
			plan.Print(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&resultsPath, "results", "bench-results/results.json", "results file written by goutong bench")
	f.StringVar(&targetPath, "target", "", "target YAML file")
	f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	f.Float64Var(&t.OTPRate, "otp-rate", 0, "verification codes/s at the peak")
	f.DurationVar(&otpP99, "otp-p99", 0, "p99 from acceptance to provider ack the codes must hold")
	f.StringVar(&t.OTPChannel, "otp-channel", "sms", "channel of the codes")
	f.Int64Var(&t.CampaignSize, "campaign-size", 0, "notifications in a campaign")
	f.DurationVar(&within, "campaign-within", 0, "time a campaign must be delivered in")
	f.StringVar(&t.CampaignChannel, "campaign-channel", "email", "channel of the campaign")
	f.DurationVar(&bufRet, "buffer-retention", 2*time.Hour, "retention of the buffer (lane topics)")
	f.DurationVar(&dlqRet, "dlq-retention", 24*time.Hour, "retention of dead letters")
	f.Float64Var(&t.Headroom, "headroom", 0.3, "share of every node kept free")
	f.DurationVar(&provLat, "provider-latency", 200*time.Millisecond, "the real providers' response time")
	f.Float64Var(&t.PeakHoursPerDay, "peak-hours", 24, "hours a day the OTP peak lasts (for the stores' sizes)")
	return cmd
}
