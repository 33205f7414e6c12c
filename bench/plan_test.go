package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/goutong/goutong/dedupe"
)

// knownResults are results with round numbers, as if measured: one node
// held 10,000 codes/s at p99 <= 250 ms and drained bulk at 40,000/s.
func knownResults() *Results {
	disk := Disk{BufferBytesPerNotification: 100, StatusEventBytesPerNotification: 200, DedupeBytesPerNotification: 150,
		StatusBytesPerNotification: 500}
	return &Results{Version: ResultsVersion, Scale: 1, TimeScale: 1, Scenarios: []ScenarioResult{
		{Name: "otp-flood", Backend: "wal", Scenario: Scenario{LatencyTarget: Duration(250 * time.Millisecond)},
			Channels: map[string]ChannelInfo{"sms": {Provider: "twilio", Rate: 1e6, Batch: 16, PerRequest: 1}},
			Loads:    []LoadResult{{Name: "otp", Channel: "sms", Priority: "critical", MaxGoodRate: 10_000, BrokeAt: 12_000, BreakReason: "p99"}},
			Disk:     disk},
		{Name: "marketing-burst", Backend: "wal", DeliveredPerSec: 40_000,
			Channels: map[string]ChannelInfo{"email": {Provider: "sendgrid", Rate: 1e6, Batch: 1000}, "sms": {Rate: 1e6, Batch: 1}},
			Loads:    []LoadResult{{Name: "campaign-email", Channel: "email", Priority: "bulk", Accepted: 100}},
			Disk:     disk},
	}}
}

func stepValue(t *testing.T, p *Plan, what string) string {
	t.Helper()
	for _, s := range p.Steps {
		if s.What == what {
			return s.Value
		}
	}
	t.Fatalf("plan has no step %q: %+v", what, p.Steps)
	return ""
}

func TestPlanArithmetic(t *testing.T) {
	// The example: 50,000 codes/s at p99 under 1 s, a campaign of
	// 10,000,000 within 30 minutes, buffer 2 h, dead letters 24 h.
	p, err := MakePlan(knownResults(), Target{OTPRate: 50_000, OTPP99: Duration(time.Second), CampaignSize: 10_000_000,
		CampaignWithin: Duration(30 * time.Minute), BufferRetention: Duration(2 * time.Hour), DLQRetention: Duration(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	// Campaign: 10M / 1800 s = 5,555.6/s. Load: 50,000/10,000 +
	// 5,555.6/40,000 = 5.139; / 0.7 = 7.34 -> 8 nodes.
	if p.Nodes != 8 {
		t.Errorf("nodes %d, want 8", p.Nodes)
	}
	if p.Partitions != 16 {
		t.Errorf("partitions %d, want 16", p.Partitions)
	}
	// Busiest lane per node: 50,000/8 = 6,250/s; x 2 x 0.2 s = 2,500 -> 4,096.
	if p.RingSize != 4096 {
		t.Errorf("ring size %d, want 4096", p.RingSize)
	}
	// SMS: 6,250/s per node, reserve 1 (all of it is codes); 6,250 x 0.2 s / 1 = 1,250 requests in flight.
	if v := stepValue(t, p, "channels.sms.rate (per node)"); v != "6250/s, reserve 1.00" {
		t.Errorf("sms rate %q", v)
	}
	if v := stepValue(t, p, "channels.sms.concurrency (per node)"); v != "1250" {
		t.Errorf("sms concurrency %q", v)
	}
	// E-mail: the bulk share (0.8) must carry 5,555.6/s: 6,944/s / 8 = 868/s; 868 x 0.2 / 1000 -> 1.
	if v := stepValue(t, p, "channels.email.rate (per node)"); v != "868/s, reserve 0.20" {
		t.Errorf("email rate %q", v)
	}
	if v := stepValue(t, p, "channels.email.concurrency (per node)"); v != "1" {
		t.Errorf("email concurrency %q", v)
	}
	// Daily: 50,000 x 86,400 + 10M = 4.33G; per hour 180.4M.
	// Buffer: (50,000 x 7,200 + 10M) x 100 B = 37 GB; status events:
	// 4.33G x 200 B; dead letters: 180.4M x 24 x 0.01 x 200 B; dedupe:
	// 4.33G x 150 B; status: 4.33G x 500 B; log x 3 replicas; each of the
	// 8 nodes keeps the whole fleet's stores.
	daily := 50_000.0*86_400 + 10_000_000
	log := (50_000.0*7_200+10_000_000)*100 + daily*200 + daily*0.01*200
	want := log*3 + 8*(daily*150+daily*500)
	if d := p.DiskBytes - want; d > 1 || d < -1 {
		t.Errorf("disk %.0f, want %.0f", p.DiskBytes, want)
	}
	// Memory: twice the rings (2 channels x 4 lanes x 4,096 slots x 1 KiB =
	// 32 MiB) and the stores' and log's fixed share (the status store: four
	// 64 MiB memtables, aux's two of 4 MiB, 8 MiB of cache); the dedupe write buffer
	// is two generations of 22 MiB, 2.75 MiB slack and a 16 MiB index.
	fixed := float64(4*64<<20+2*4<<20+8<<20) + float64(2*8<<20+256<<20) + 5*float64(dedupe.FilterBytes(4<<20)) + 64<<20 +
		2*(22<<20+22<<20/8+16<<20)
	if want := 2 * (32<<20 + fixed); p.MemoryBytes != want {
		t.Errorf("memory %.0f, want %.0f", p.MemoryBytes, want)
	}
	if v := stepValue(t, p, "memory per node"); v != bytesIEC(p.MemoryBytes) {
		t.Errorf("memory step %q", v)
	}
	if v := stepValue(t, p, "log: buffer"); v != "34.5 GiB" {
		t.Errorf("buffer %q", v)
	}
	warnings := strings.Join(p.Warnings, "\n")
	for _, w := range []string{"Kafka mode", "mock provider"} {
		if !strings.Contains(warnings, w) {
			t.Errorf("warnings lack %q:\n%s", w, warnings)
		}
	}
	if strings.Contains(warnings, "stricter") {
		t.Errorf("a 1 s target is looser than the measured 250 ms, yet: %s", warnings)
	}
	var buf bytes.Buffer
	p.Print(&buf)
	if !strings.Contains(buf.String(), "ceil((50.0K/10.0K + 5556/40.0K) / (1 - 0.30 headroom)) = ceil(7.34)") {
		t.Errorf("the printed plan does not show the nodes' arithmetic:\n%s", buf.String())
	}
}

func TestPlanWarnsPastTheMeasurement(t *testing.T) {
	r := knownResults()
	r.Scale = 0.1
	r.Scenarios[0].Loads[0].BrokeAt = 0 // never broke: a lower bound
	p, err := MakePlan(r, Target{OTPRate: 5_000, OTPP99: Duration(100 * time.Millisecond),
		ProviderLimits: map[string]float64{"sms": 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Nodes != 1 {
		t.Errorf("nodes %d, want 1 (5,000/10,000/0.7)", p.Nodes)
	}
	warnings := strings.Join(p.Warnings, "\n")
	for _, w := range []string{"stricter than the 250 ms", "never broke", "provider allows 1000/s", "scaled run"} {
		if !strings.Contains(warnings, w) {
			t.Errorf("warnings lack %q:\n%s", w, warnings)
		}
	}
	if strings.Contains(warnings, "Kafka mode") {
		t.Errorf("one node needs no Kafka: %s", warnings)
	}
}

func TestPlanIsolationIgnoresFaultScenarios(t *testing.T) {
	r := knownResults()
	slow := ScenarioResult{Name: "provider-faults", Backend: "wal", Scenario: Scenario{Faults: []FaultStep{{ErrorRate: 0.2}}},
		Loads:   []LoadResult{{Name: "otp", Priority: "critical"}, {Name: "news", Priority: "bulk"}},
		Latency: []Latency{{Name: "sms/critical", Priority: "critical", P99: 30_000}}}
	calm := ScenarioResult{Name: "otp-during-burst", Backend: "wal",
		Loads:   []LoadResult{{Name: "otp", Priority: "critical"}, {Name: "campaign", Priority: "bulk"}},
		Latency: []Latency{{Name: "sms/critical", Priority: "critical", P99: 1500}}}
	r.Scenarios = append(r.Scenarios, slow, calm)
	p, err := MakePlan(r, Target{OTPRate: 1000, OTPP99: Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(p.Warnings, "\n")
	if !strings.Contains(w, "critical p99 was 1500 ms") || strings.Contains(w, "30000") {
		t.Fatalf("isolation warning should come from the burst without faults:\n%s", w)
	}
}

// Disk per notification is read off the largest run, not the worst one: a
// small run is mostly the stores' fixed overhead.
func TestPlanDiskFromTheLargestRun(t *testing.T) {
	r := knownResults()
	r.Scenarios[0].Accepted, r.Scenarios[1].Accepted = 2_500, 1_000_000
	r.Scenarios[0].Disk.StatusBytesPerNotification = 5_000 // the small run's overhead
	p, err := MakePlan(r, Target{OTPRate: 50_000, OTPP99: Duration(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if v := stepValue(t, p, "status store"); !strings.Contains(p.Steps[len(p.Steps)-2].Math, "x 500 B") {
		t.Fatalf("status store %s from %q, want the large run's 500 B", v, p.Steps[len(p.Steps)-2].Math)
	}
}

func TestPlanNeedsTheRightScenarios(t *testing.T) {
	r := knownResults()
	r.Scenarios = r.Scenarios[1:] // no otp-flood
	_, err := MakePlan(r, Target{OTPRate: 1000, OTPP99: Duration(time.Second)})
	if err == nil || !strings.Contains(err.Error(), "otp-flood") {
		t.Fatalf("error %v, want one naming otp-flood", err)
	}
	r = knownResults()
	r.Scenarios[0].Loads[0].MaxGoodRate = 0 // broke at its first step
	_, err = MakePlan(r, Target{OTPRate: 1000, OTPP99: Duration(time.Second)})
	if err == nil || !strings.Contains(err.Error(), "broke at its first step (12000/s") {
		t.Fatalf("error %v, want one saying the flood broke at its first step", err)
	}
	for _, bad := range []Target{{}, {CampaignSize: 10}, {OTPRate: 10}, {OTPRate: 10, OTPP99: 1, Headroom: 1}} {
		if _, err := MakePlan(knownResults(), bad); err == nil {
			t.Errorf("target %+v accepted", bad)
		}
	}
}

func TestParseTarget(t *testing.T) {
	tg, err := ParseTarget(strings.NewReader("otp_rate: 50000\notp_p99: 1s\ncampaign_size: 10000000\ncampaign_within: 30m\nprovider_limits: {sms: 60000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tg.OTPRate != 50000 || tg.OTPP99.D() != time.Second || tg.CampaignWithin.D() != 30*time.Minute || tg.ProviderLimits["sms"] != 60000 {
		t.Fatalf("%+v", tg)
	}
	if _, err := ParseTarget(strings.NewReader("otp_rte: 5\n")); err == nil || !strings.Contains(err.Error(), "otp_rte") {
		t.Fatalf("unknown key: %v", err)
	}
}
