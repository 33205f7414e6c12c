package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// finiteFloats reports the first float field of v (walking structs,
// slices and maps) that is NaN or infinite.
func finiteFloats(v reflect.Value, path string) (string, bool) {
	switch v.Kind() {
	case reflect.Float32, reflect.Float64:
		f := v.Float()
		return path, !math.IsNaN(f) && !math.IsInf(f, 0)
	case reflect.Struct:
		for i := range v.NumField() {
			if p, ok := finiteFloats(v.Field(i), path+"."+v.Type().Field(i).Name); !ok {
				return p, false
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if p, ok := finiteFloats(v.Index(i), path+"[]"); !ok {
				return p, false
			}
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			if p, ok := finiteFloats(v.MapIndex(k), path+"."+k.String()); !ok {
				return p, false
			}
		}
	}
	return path, true
}

func addScenarioSeeds(f *testing.F) {
	ents, err := os.ReadDir("scenarios")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("scenarios", e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"name: x\nloads: [{channel: sms, priority: bulk, rate: .nan, for: 1s}]\n",
		"name: x\nloads: [{channel: sms, priority: bulk, rate: 10, for: 1h, rate_step: 1, step: 1ns}]\n",
		"name: x\nchannels: {sms: {rate: .inf}}\nloads: [{channel: sms, priority: bulk, count: 5}]\n",
		"name: x\nloads: [{channel: sms, priority: bulk, rate: 1e300, for: 1h}]\n",
		"name: x\nloads: [{channel: sms, priority: bulk, count: 5, invalid: .nan}]\nfaults: [{error_rate: .nan}]\n",
		"name: x\nloads: [{channel: sms, priority: bulk, count: 5, start: -1s}]\n",
	} {
		f.Add([]byte(s))
	}
}

// FuzzParseScenario feeds scenario files: a scenario is refused with an
// error, or it is one the runner can play. Every number is finite, its
// loads' expected counts are non-negative (and computed in bounded time),
// it survives scaling, and it reads back the same from the YAML it is
// echoed as in results.json.
func FuzzParseScenario(f *testing.F) {
	addScenarioSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := ParseScenario(bytes.NewReader(b))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "scenario") {
				t.Fatalf("error without its subject: %v", err)
			}
			return
		}
		if p, ok := finiteFloats(reflect.ValueOf(sc), "scenario"); !ok {
			t.Fatalf("accepted a non-finite %s", p)
		}
		for _, l := range sc.Loads {
			if n := l.Expected(); n < 0 {
				t.Fatalf("load %s expects %d notifications", l.Name, n)
			}
		}
		small := sc.Scaled(0.1, 0.5)
		if err := small.Validate(); err != nil {
			t.Fatalf("scaled copy refused: %v", err)
		}
		out, err := yaml.Marshal(sc)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseScenario(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("its own YAML refused: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalised(sc), normalised(again)) {
			t.Fatalf("round trip changed the scenario:\n%+v\n%+v", sc, again)
		}
	})
}

// normalised makes empty and nil collections equal for comparison.
func normalised(sc Scenario) Scenario {
	if len(sc.Faults) == 0 {
		sc.Faults = nil
	}
	return sc
}

// FuzzPlan feeds targets: a target is refused with an error, or its plan
// has at least one node, finite figures and a ring size that is a power of
// two, and prints.
func FuzzPlan(f *testing.F) {
	known, err := json.Marshal(knownResults())
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"otp_rate: .nan\notp_p99: 1s\n", "otp_rate: 1e308\notp_p99: 1s\n",
		"campaign_size: 1\ncampaign_within: 1ns\nheadroom: .nan\n",
		"otp_rate: 10\notp_p99: 1s\nprovider_limits: {sms: .inf}\npeak_hours_per_day: .nan\n",
		"otp_rate: 10\notp_p99: 1s\ncampaigns_per_day: -1\n",
	} {
		f.Add([]byte(s), known)
	}
	for _, s := range []string{
		"otp_rate: 50000\notp_p99: 1s\ncampaign_size: 10000000\ncampaign_within: 30m\n",
		"campaign_size: 1000000000000\ncampaign_within: 1ns\n", "otp_rate: 1000\notp_p99: 1s\nprovider_latency: 1000000h\n",
	} {
		for _, res := range []string{
			string(known),
			strings.Replace(string(known), `"delivered_per_sec":40000`, `"delivered_per_sec":-40000`, 1),
			strings.Replace(string(known), `"max_good_rate":10000`, `"max_good_rate":1e-300`, 1),
			strings.Replace(string(known), `"buffer_bytes_per_notification":100`, `"buffer_bytes_per_notification":1e308`, 1),
		} {
			f.Add([]byte(s), []byte(res))
		}
	}
	f.Fuzz(func(t *testing.T, b, res []byte) {
		tg, err := ParseTarget(bytes.NewReader(b))
		if err != nil {
			return
		}
		r, err := decodeResults(bytes.NewReader(res), "results")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "results") {
				t.Fatalf("error without its subject: %v", err)
			}
			return
		}
		p, err := MakePlan(r, tg)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "target") && !strings.HasPrefix(err.Error(), "plan") {
				t.Fatalf("error without its subject: %v", err)
			}
			return
		}
		if p.Nodes < 1 || p.Partitions < 1 || p.RingSize < 1 || p.RingSize&(p.RingSize-1) != 0 {
			t.Fatalf("plan of %d nodes, %d partitions, ring %d", p.Nodes, p.Partitions, p.RingSize)
		}
		if path, ok := finiteFloats(reflect.ValueOf(*p), "plan"); !ok {
			t.Fatalf("plan has a non-finite %s", path)
		}
		var out bytes.Buffer
		p.Print(&out)
		if s := out.String(); strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
			t.Fatalf("plan prints a non-finite figure:\n%s", s)
		}
	})
}
