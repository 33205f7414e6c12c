package providers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
)

func startMock(t testing.TB, f mockserver.Faults) *mockserver.Server {
	t.Helper()
	m, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", WebhookSecret: "whsec", Faults: f, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func templates(t testing.TB) *providers.Templates {
	tpl, err := providers.NewTemplates(map[string]providers.TemplateSource{"otp": {Subject: "Code", Body: "Your code is {{.code}}"}})
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// adapters builds every adapter pointed at the mock.
func adapters(t testing.TB, base string, timeout time.Duration) map[notification.Channel]providers.Provider {
	t.Helper()
	ep := providers.EndpointConfig{BaseURL: base, RequestTimeout: timeout, ReadTimeout: timeout}
	tw, err := providers.NewTwilio(providers.TwilioConfig{Endpoint: ep, AccountSID: "ACmock", AuthToken: "tw-secret-XYZ", From: "+15005550006", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	sg, err := providers.NewSendGrid(providers.SendGridConfig{Endpoint: ep, APIKey: "SG.secret-XYZ", From: "noreply@acme.example", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	fc, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ProjectID: "acme", Token: "fcm-secret-XYZ", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	wh, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: ep, Path: "/webhook/orders", Secret: "whsec", Batch: 50})
	if err != nil {
		t.Fatal(err)
	}
	return map[notification.Channel]providers.Provider{notification.SMS: tw, notification.Email: sg, notification.Push: fc, notification.Webhook: wh}
}

func batchOf(ch notification.Channel, n int, recipient func(i int) string) []*notification.Notification {
	out := make([]*notification.Notification, n)
	for i := range out {
		out[i] = &notification.Notification{ID: notification.NewID(), Channel: ch, Priority: notification.Normal,
			Recipient: recipient(i), Template: "otp", Vars: map[string]string{"code": fmt.Sprintf("%06d", i)}}
	}
	return out
}

func recipientFor(ch notification.Channel, i int) string {
	switch ch {
	case notification.SMS:
		return fmt.Sprintf("+86138%08d", i)
	case notification.Email:
		return fmt.Sprintf("user%d@example.com", i)
	case notification.Push:
		return fmt.Sprintf("token-%d", i)
	}
	return fmt.Sprintf("https://hooks.example/%d", i)
}

func TestEveryAdapterAgainstTheMock(t *testing.T) {
	m := startMock(t, mockserver.Faults{})
	for ch, p := range adapters(t, m.URL(), 5*time.Second) {
		t.Run(string(ch), func(t *testing.T) {
			m.Reset()
			batch := batchOf(ch, 120, func(i int) string { return recipientFor(ch, i) })
			res := make([]providers.Result, len(batch))
			for start := 0; start < len(batch); start += p.MaxBatch() {
				end := min(start+p.MaxBatch(), len(batch))
				p.Send(context.Background(), batch[start:end], res[start:end])
			}
			ids := map[string]bool{}
			for i, r := range res {
				if r.Outcome != providers.Sent || r.MessageID == "" || r.Provider != p.Name() {
					t.Fatalf("item %d: %+v", i, r)
				}
				if ids[r.MessageID] {
					t.Fatalf("message id %s given twice", r.MessageID)
				}
				ids[r.MessageID] = true
				if m.Count(batch[i].ID) != 1 {
					t.Fatalf("mock counted %s %d times", batch[i].ID, m.Count(batch[i].ID))
				}
			}
			st := m.Stats()
			if st.Received != 120 || st.Unique != 120 || st.Duplicates != 0 || st.ByChannel[string(ch)] != 120 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// One bad recipient must not fail its batch, on every adapter.
func TestPerItemFailuresAreIsolated(t *testing.T) {
	m := startMock(t, mockserver.Faults{})
	for ch, p := range adapters(t, m.URL(), 5*time.Second) {
		t.Run(string(ch), func(t *testing.T) {
			m.Reset()
			batch := batchOf(ch, 10, func(i int) string {
				if i == 3 || i == 7 {
					return "invalid-" + recipientFor(ch, i)
				}
				return recipientFor(ch, i)
			})
			res := make([]providers.Result, len(batch))
			p.Send(context.Background(), batch, res)
			for i, r := range res {
				bad := i == 3 || i == 7
				if bad && (r.Outcome != providers.Permanent || r.Reason == "") {
					t.Fatalf("bad item %d: %+v", i, r)
				}
				if !bad && r.Outcome != providers.Sent {
					t.Fatalf("good item %d failed with its batch: %+v", i, r)
				}
			}
			if st := m.Stats(); st.Unique != 8 || st.Duplicates != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestInjectedFaultsClassify(t *testing.T) {
	m := startMock(t, mockserver.Faults{})
	ps := adapters(t, m.URL(), 300*time.Millisecond)
	cases := []struct {
		name   string
		faults mockserver.Faults
		check  func(r providers.Result) bool
	}{
		{"429 with Retry-After", mockserver.Faults{ThrottleRate: 1, RetryAfter: mockserver.Duration(2 * time.Second)},
			func(r providers.Result) bool {
				return r.Outcome == providers.Retriable && r.Throttled && r.RetryAfter == 2*time.Second
			}},
		{"5xx", mockserver.Faults{ErrorRate: 1},
			func(r providers.Result) bool { return r.Outcome == providers.Retriable && !r.Throttled }},
		{"outage", mockserver.Faults{OutageFor: mockserver.Duration(time.Minute)},
			func(r providers.Result) bool {
				return r.Outcome == providers.Retriable && r.RetryAfter > 50*time.Second
			}},
		{"slower than the client timeout", mockserver.Faults{SlowRate: 1, SlowDelay: mockserver.Duration(time.Second)},
			func(r providers.Result) bool { return r.Outcome == providers.Retriable && r.Reason == "timeout" }},
	}
	for i, c := range cases {
		if i == len(cases)-1 {
			// Faulted answers are not deliveries; a slow one below may be.
			if st := m.Stats(); st.Received != 0 || st.Faulted == 0 {
				t.Fatalf("faulted requests must not count as received: %+v", st)
			}
		}
		t.Run(c.name, func(t *testing.T) {
			m.SetFaults(c.faults)
			for ch, p := range ps {
				batch := batchOf(ch, 2, func(i int) string { return recipientFor(ch, i) })
				res := make([]providers.Result, len(batch))
				p.Send(context.Background(), batch, res)
				for _, r := range res {
					if !c.check(r) {
						t.Fatalf("%s: %+v", ch, r)
					}
					if strings.Contains(r.Reason, "XYZ") {
						t.Fatalf("%s: a secret leaked into a reason: %q", ch, r.Reason)
					}
				}
			}
		})
	}
}

// The mock's control surface over plain HTTP, as people use it in demos.
func TestMockHTTPControl(t *testing.T) {
	m := startMock(t, mockserver.Faults{})
	resp, err := http.Post(m.URL()+"/faults", "application/json", strings.NewReader(`{"error_rate":0.5,"latency_max":"2ms"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	resp.Body.Close()
	resp, _ = http.Post(m.URL()+"/faults", "application/json", strings.NewReader(`{"error_rte":0.5}`))
	if resp.StatusCode != 400 {
		t.Fatalf("unknown fault field accepted: %d", resp.StatusCode)
	}
	resp.Body.Close()
	resp, err = http.Get(m.URL() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st mockserver.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.ByChannel == nil {
		t.Fatalf("%+v %v", st, err)
	}
}

func TestFailoverAcrossMocks(t *testing.T) {
	down := startMock(t, mockserver.Faults{OutageFor: mockserver.Duration(time.Hour)})
	up := startMock(t, mockserver.Faults{})
	mk := func(name, base string) *providers.Guarded {
		tw, err := providers.NewTwilio(providers.TwilioConfig{Name: name, Endpoint: providers.EndpointConfig{BaseURL: base},
			AccountSID: "AC", AuthToken: "t", From: "+1", Templates: templates(t)})
		if err != nil {
			t.Fatal(err)
		}
		return providers.Guard(tw, providers.NewBreaker(providers.BreakerConfig{ConsecutiveFailures: 2, OpenFor: time.Hour}, nil),
			providers.NewAdaptiveLimit(1000, 100), nil)
	}
	f := providers.NewFailover("sms", []*providers.Guarded{mk("twilio-a", down.URL()), mk("twilio-b", up.URL())}, nil)
	var sentBy []string
	for i := range 5 {
		batch := batchOf(notification.SMS, 1, func(int) string { return fmt.Sprintf("+1555%07d", i) })
		res := make([]providers.Result, 1)
		f.Send(context.Background(), batch, res)
		sentBy = append(sentBy, res[0].Provider+":"+res[0].Outcome.String())
	}
	want := "twilio-a:retriable twilio-a:retriable twilio-b:sent twilio-b:sent twilio-b:sent"
	if got := strings.Join(sentBy, " "); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if up.Stats().Unique != 3 {
		t.Fatal(up.Stats())
	}
}
