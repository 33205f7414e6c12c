package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"text/tabwriter"
	"time"
)

// ResultsVersion is the version of the results file's layout.
const ResultsVersion = 1

// Results is what `goutong bench` writes and `goutong plan` reads.
type Results struct {
	Version   int              `json:"version"`
	Machine   MachineInfo      `json:"machine"`
	Scale     float64          `json:"scale"`      // counts and rates were multiplied by this
	TimeScale float64          `json:"time_scale"` // durations were multiplied by this
	Scenarios []ScenarioResult `json:"scenarios"`
}

// MachineInfo describes where results were measured.
type MachineInfo struct {
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	Host       string `json:"host"`
}

// ScenarioResult is one scenario's measurements.
type ScenarioResult struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Backend     string    `json:"backend"` // wal or kfake
	Scenario    Scenario  `json:"scenario"`
	StartedAt   time.Time `json:"started_at"`
	Seconds     float64   `json:"seconds"`      // the whole run, drain included
	LoadSeconds float64   `json:"load_seconds"` // until the last load ended
	// Unsettled: the drain time ran out with notifications unfinished
	// (they are in Lost).
	Unsettled bool `json:"unsettled"`

	Accepted           int64 `json:"accepted"`            // new notifications admitted by ingest
	Repeats            int64 `json:"repeats"`             // ingest requests answered as repeats of an accepted key
	Delivered          int64 `json:"delivered"`           // distinct notifications the mock provider accepted
	ProviderReceived   int64 `json:"provider_received"`   // sends the mock accepted, resends included
	ProviderDuplicates int64 `json:"provider_duplicates"` // notifications the mock accepted more than once
	Retries            int64 `json:"retries"`
	DeadLetters        int64 `json:"dead_letters"`
	Expired            int64 `json:"expired"`
	EngineDuplicates   int64 `json:"engine_duplicates"` // replayed records the dedupe store stopped
	Parked             int64 `json:"parked,omitempty"`  // hops through the parking topics (a record re-parked counts again)
	// Lost: accepted but neither delivered, dead-lettered nor expired when
	// the run ended; when Unsettled, these may still have been on their way.
	Lost int64 `json:"lost"`

	AcceptedPerSec      float64 `json:"accepted_per_sec"`  // ingest requests (repeats included) over the load time
	DeliveredPerSec     float64 `json:"delivered_per_sec"` // from the first delivery to the last
	PeakDeliveredPerSec float64 `json:"peak_delivered_per_sec"`
	PeakBacklog         int64   `json:"peak_backlog"`
	// CPUSeconds is the process's CPU time over the run: the API, the
	// engine, the stores and the in-process mock provider. Per accepted
	// notification it is the figure to size machines by, and the one that
	// holds still on a shared machine when the rates do not.
	CPUSeconds               float64 `json:"cpu_seconds"`
	CPUMicrosPerNotification float64 `json:"cpu_us_per_notification"`

	Channels map[string]ChannelInfo `json:"channels"`
	Latency  []Latency              `json:"latency"` // per channel and priority
	Loads    []LoadResult           `json:"loads"`
	Series   []Sample               `json:"series"`
	Disk     Disk                   `json:"disk"`
}

// ChannelInfo is a channel as the run configured it.
type ChannelInfo struct {
	Provider    string  `json:"provider"`
	Rate        float64 `json:"rate"`        // token bucket, sends/s
	Batch       int     `json:"batch"`       // notifications per provider call (Send)
	Concurrency int     `json:"concurrency"` // provider calls in flight
	PerRequest  int     `json:"per_request"` // notifications per HTTP request (1: the API takes one message a request)
}

// Latency is a distribution of acceptance-to-provider-ack times, in ms.
type Latency struct {
	Name     string  `json:"name"`
	Channel  string  `json:"channel"`
	Priority string  `json:"priority"`
	Count    int64   `json:"count"`
	P50      float64 `json:"p50_ms"`
	P90      float64 `json:"p90_ms"`
	P99      float64 `json:"p99_ms"`
	P999     float64 `json:"p999_ms"`
	Max      float64 `json:"max_ms"`
}

// LoadResult is one load's share of a run.
type LoadResult struct {
	Name         string `json:"name"`
	Channel      string `json:"channel"`
	Priority     string `json:"priority"`
	Accepted     int64  `json:"accepted"`
	Repeats      int64  `json:"repeats"`
	IngestErrors int64  `json:"ingest_errors"`
	// Latency runs from acceptance to the provider's ack, or for a load
	// with a delay from each notification's not_before; Early counts the
	// sends that came before it (there must be none).
	Latency Latency `json:"latency"`
	Early   int64   `json:"early,omitempty"`
	// For a rising load: the highest rate whose step held the target, and
	// the rate at which it broke, with why.
	MaxGoodRate float64 `json:"max_good_rate,omitempty"`
	BrokeAt     float64 `json:"broke_at,omitempty"`
	BreakReason string  `json:"break_reason,omitempty"`
}

// Sample is one point of a run's time series.
type Sample struct {
	T               float64            `json:"t"` // seconds since the start
	AcceptedPerSec  float64            `json:"accepted_per_sec"`
	DeliveredPerSec float64            `json:"delivered_per_sec"`
	Backlog         int64              `json:"backlog"` // accepted, not yet finished
	Lag             int64              `json:"lag"`     // the engine's consumer lag
	Queued          int64              `json:"queued"`  // in the rings
	Retries         int64              `json:"retries"`
	DeadLetters     int64              `json:"dead_letters"`
	P99ms           map[string]float64 `json:"p99_ms"` // per load, of the sends acked in this interval
}

// Disk is what a run left on disk, in bytes per accepted notification
// (per dead letter for DeadLetterBytes). The log's figures are of the
// embedded log, compressed as it stores them; a kfake run has none.
type Disk struct {
	BufferBytesPerNotification      float64 `json:"buffer_bytes_per_notification,omitempty"`       // lane and retry topics
	StatusEventBytesPerNotification float64 `json:"status_event_bytes_per_notification,omitempty"` // status topic
	DeadLetterBytes                 float64 `json:"dead_letter_bytes,omitempty"`                   // dead-letter topic, per dead letter
	DedupeBytesPerNotification      float64 `json:"dedupe_bytes_per_notification"`
	StatusBytesPerNotification      float64 `json:"status_bytes_per_notification"`
}

// Find returns the named scenario's result.
func (r *Results) Find(name string) (*ScenarioResult, bool) {
	for i := range r.Scenarios {
		if r.Scenarios[i].Name == name {
			return &r.Scenarios[i], true
		}
	}
	return nil, false
}

// WriteJSON writes results to path.
func (r *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadResults reads a results file written by WriteJSON.
func ReadResults(path string) (*Results, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodeResults(f, path)
}

// decodeResults reads results written by WriteJSON from r, named name in
// errors.
func decodeResults(rd io.Reader, name string) (*Results, error) {
	var r Results
	dec := json.NewDecoder(rd)
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: not a results file: %w", name, err)
	}
	if r.Version != ResultsVersion {
		return nil, fmt.Errorf("%s: results version %d, this goutong reads %d", name, r.Version, ResultsVersion)
	}
	if len(r.Scenarios) == 0 {
		return nil, errors.New(name + ": no scenarios in the results")
	}
	if err := r.checkFigures(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &r, nil
}

// checkFigures refuses results whose figures no run could have measured
// (negative, or past any machine), so a hand-edited or damaged file does
// not size a fleet: a plan divides by the rates and multiplies the bytes.
func (r *Results) checkFigures() error {
	const maxRate, maxBytes = 1e9, 1 << 30
	in := func(field string, v, hi float64) error {
		if !(v >= 0 && v <= hi) { // NaN too
			return fmt.Errorf("%s: %v, want 0 to %g", field, v, hi)
		}
		return nil
	}
	for _, s := range r.Scenarios {
		f := "scenarios." + s.Name + "."
		d := s.Disk
		for _, c := range []struct {
			field  string
			v, max float64
		}{
			{"delivered_per_sec", s.DeliveredPerSec, maxRate},
			{"disk.buffer_bytes_per_notification", d.BufferBytesPerNotification, maxBytes},
			{"disk.status_event_bytes_per_notification", d.StatusEventBytesPerNotification, maxBytes},
			{"disk.dead_letter_bytes", d.DeadLetterBytes, maxBytes},
			{"disk.dedupe_bytes_per_notification", d.DedupeBytesPerNotification, maxBytes},
			{"disk.status_bytes_per_notification", d.StatusBytesPerNotification, maxBytes},
		} {
			if err := in(f+c.field, c.v, c.max); err != nil {
				return err
			}
		}
		for ch, c := range s.Channels {
			if err := in(f+"channels."+ch+".rate", c.Rate, maxRate); err != nil {
				return err
			}
			if c.Batch < 0 || c.PerRequest < 0 {
				return fmt.Errorf("%schannels.%s: negative batch or per_request", f, ch)
			}
		}
		for _, l := range s.Loads {
			for _, c := range []struct {
				field string
				v     float64
			}{{"max_good_rate", l.MaxGoodRate}, {"broke_at", l.BrokeAt}} {
				if err := in(f+"loads."+l.Name+"."+c.field, c.v, maxRate); err != nil {
					return err
				}
			}
		}
		for _, lat := range s.Latency {
			if err := in(f+"latency."+lat.Name+".p99_ms", lat.P99, math.MaxFloat64); err != nil {
				return err
			}
		}
	}
	return nil
}

// Summary prints a short text account of the results.
func (r *Results) Summary(w io.Writer) {
	fmt.Fprintf(w, "%s/%s, %d CPUs (GOMAXPROCS %d), %s", r.Machine.OS, r.Machine.Arch, r.Machine.CPUs, r.Machine.GOMAXPROCS, r.Machine.GoVersion)
	if r.Scale != 1 || r.TimeScale != 1 {
		fmt.Fprintf(w, ", scaled: counts x%g, times x%g", r.Scale, r.TimeScale)
	}
	fmt.Fprintln(w)
	for _, s := range r.Scenarios {
		fmt.Fprintf(w, "\n%s (%s, %.1fs): accepted %d, delivered %d at %.0f/s (peak %.0f/s), repeats %d, retries %d, dead letters %d, expired %d, provider duplicates %d",
			s.Name, s.Backend, s.Seconds, s.Accepted, s.Delivered, s.DeliveredPerSec, s.PeakDeliveredPerSec,
			s.Repeats, s.Retries, s.DeadLetters, s.Expired, s.ProviderDuplicates)
		if s.Unsettled {
			fmt.Fprintf(w, ", unfinished %d when the drain time ran out", s.Lost)
		} else {
			fmt.Fprintf(w, ", lost %d", s.Lost)
		}
		if s.CPUSeconds > 0 {
			fmt.Fprintf(w, "; CPU %.1fs, %.1f µs a notification", s.CPUSeconds, s.CPUMicrosPerNotification)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "  channel/priority\tcount\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\t")
		for _, l := range s.Latency {
			fmt.Fprintf(tw, "  %s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", l.Name, l.Count, l.P50, l.P90, l.P99, l.P999, l.Max)
		}
		tw.Flush()
		for _, l := range s.Loads {
			if d := l.delay(s.Scenario); d > 0 {
				fmt.Fprintf(w, "  %s: scheduled %v ahead, sent after its time by p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d before it\n",
					l.Name, d, l.Latency.P50, l.Latency.P99, l.Latency.Max, l.Early)
			}
			if l.MaxGoodRate > 0 || l.BrokeAt > 0 {
				fmt.Fprintf(w, "  %s: held %.0f/s", l.Name, l.MaxGoodRate)
				if l.BrokeAt > 0 {
					fmt.Fprintf(w, ", broke at %.0f/s: %s", l.BrokeAt, l.BreakReason)
				} else {
					fmt.Fprint(w, " (never broke: raise the load)")
				}
				fmt.Fprintln(w)
			}
		}
	}
}

// delay is the load's not_before offset in the scenario it ran in.
func (l LoadResult) delay(sc Scenario) time.Duration {
	for _, spec := range sc.Loads {
		if spec.Name == l.Name {
			return spec.Delay.D()
		}
	}
	return 0
}
