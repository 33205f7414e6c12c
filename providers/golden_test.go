package providers

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/notification"
)

var update = flag.Bool("update", false, "rewrite golden files")

func otp() *notification.Notification {
	return &notification.Notification{ID: "01JD3ZQ8X4K2M9N7P5R3T1V0WY", IdempotencyKey: "login-42", Tenant: "acme",
		Channel: notification.SMS, Priority: notification.Critical, Recipient: "+8613800138000", Template: "otp",
		Vars: map[string]string{"code": "731904"}, ExpiresAt: time.Date(2026, 11, 24, 10, 5, 0, 0, time.UTC)}
}

func testTemplates(t testing.TB) *Templates {
	tpl, err := NewTemplates(map[string]TemplateSource{
		"otp":     {Subject: "Your code", Body: "Your verification code is {{.code}}. It expires in 5 minutes."},
		"welcome": {Subject: "Welcome, {{.name}}", Body: "Hello {{.name}}, welcome aboard."},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// dump renders a request in a stable text form: request line, headers
// sorted, blank line, body.
func dump(req *fasthttp.Request) []byte {
	var hs []string
	for k, v := range req.Header.All() {
		hs = append(hs, fmt.Sprintf("%s: %s", k, v))
	}
	slices.Sort(hs)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s\n%s\n\n%s\n", req.Header.Method(), req.URI().FullURI(), strings.Join(hs, "\n"), req.Body())
	return b.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./providers -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGoldenTwilio(t *testing.T) {
	tw, err := NewTwilio(TwilioConfig{Endpoint: EndpointConfig{BaseURL: "https://api.twilio.example"}, AccountSID: "ACtest",
		AuthToken: "secret-token", From: "+15005550006", Templates: testTemplates(t)})
	if err != nil {
		t.Fatal(err)
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	_, body, _ := tw.cfg.Templates.Render(otp())
	tw.buildRequest(otp(), body, req)
	golden(t, "twilio", dump(req))
}

func TestGoldenSendGrid(t *testing.T) {
	sg, err := NewSendGrid(SendGridConfig{Endpoint: EndpointConfig{BaseURL: "https://api.sendgrid.example"}, APIKey: "SG.secret",
		From: "noreply@acme.example", FromName: "Acme", Templates: testTemplates(t), TemplateIDs: map[string]string{"welcome": "d-123"}})
	if err != nil {
		t.Fatal(err)
	}
	batch := []*notification.Notification{
		{ID: "01JD3ZQ8X4K2M9N7P5R3T1V0W1", Channel: notification.Email, Recipient: "a@example.com", Template: "welcome", Vars: map[string]string{"name": "Ann"}},
		{ID: "01JD3ZQ8X4K2M9N7P5R3T1V0W2", Channel: notification.Email, Recipient: "b@example.com", Template: "welcome", Vars: map[string]string{"name": "Bo"}},
		{ID: "01JD3ZQ8X4K2M9N7P5R3T1V0W3", Channel: notification.Email, Recipient: "c@example.com", Content: &notification.Content{Subject: "Sale", Body: "50% off"}},
	}
	results := make([]Result, len(batch))
	groups := sg.groups(batch, results)
	if len(groups) != 2 || len(groups[0].items) != 2 {
		t.Fatalf("want the two template sends in one request and the literal one in another, got %d groups", len(groups))
	}
	var all bytes.Buffer
	for _, g := range groups {
		req := fasthttp.AcquireRequest()
		if err := sg.buildRequest(&g.mail, req); err != nil {
			t.Fatal(err)
		}
		all.Write(dump(req))
		fasthttp.ReleaseRequest(req)
	}
	golden(t, "sendgrid", all.Bytes())
}

func TestGoldenFCM(t *testing.T) {
	f, err := NewFCM(FCMConfig{Endpoint: EndpointConfig{BaseURL: "https://fcm.example"}, ProjectID: "acme-app", Token: "ya29.secret", Templates: testTemplates(t)})
	if err != nil {
		t.Fatal(err)
	}
	n := otp()
	n.Channel, n.Recipient = notification.Push, "fcm-token-3f9a"
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	title, body, _ := f.cfg.Templates.Render(n)
	if err := f.buildRequest(n, title, body, f.auth, req); err != nil {
		t.Fatal(err)
	}
	golden(t, "fcm", dump(req))
}

func TestGoldenWebhook(t *testing.T) {
	for _, batch := range []int{1, 10} {
		w, err := NewWebhook(WebhookConfig{Endpoint: EndpointConfig{BaseURL: "https://hooks.example"}, Path: "/orders", Secret: "whsec", Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		w.now = func() time.Time { return time.Unix(1_790_000_000, 0) }
		n := otp()
		n.Channel, n.Recipient, n.Template, n.Vars = notification.Webhook, "https://hooks.example/orders", "", nil
		n.Content = &notification.Content{Body: `{"order":"A-1001"}`}
		req := fasthttp.AcquireRequest()
		items := []*notification.Notification{n}
		if batch > 1 {
			n2 := *n
			n2.ID = "01JD3ZQ8X4K2M9N7P5R3T1V0WZ"
			items = append(items, &n2)
		}
		w.buildRequest(items, req, nil)
		golden(t, fmt.Sprintf("webhook-batch%d", batch), dump(req))
		if err := VerifySignature([]byte("whsec"), string(req.Header.Peek(TimestampHeader)), string(req.Header.Peek(SignatureHeader)),
			req.Body(), time.Unix(1_790_000_010, 0), time.Minute); err != nil {
			t.Fatalf("our own signature does not verify: %v", err)
		}
		fasthttp.ReleaseRequest(req)
	}
}

func TestSignatureRejectsTamperingAndStaleness(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	body := []byte(`{"id":"x"}`)
	sig := Sign([]byte("k"), "1790000000", body)
	if VerifySignature([]byte("k"), "1790000000", sig, []byte(`{"id":"y"}`), now, time.Minute) == nil {
		t.Fatal("tampered body verified")
	}
	if VerifySignature([]byte("other"), "1790000000", sig, body, now, time.Minute) == nil {
		t.Fatal("wrong secret verified")
	}
	if VerifySignature([]byte("k"), "1790000000", sig, body, now.Add(10*time.Minute), time.Minute) == nil {
		t.Fatal("stale timestamp verified")
	}
}

func TestTemplates(t *testing.T) {
	tpl := testTemplates(t)
	subject, body, err := tpl.Render(otp())
	if err != nil || subject != "Your code" || body != "Your verification code is 731904. It expires in 5 minutes." {
		t.Fatalf("%q %q %v", subject, body, err)
	}
	n := otp()
	n.Vars = nil
	if _, _, err := tpl.Render(n); err == nil {
		t.Fatal("missing var rendered")
	}
	n.Template = "nope"
	if _, _, err := tpl.Render(n); err == nil || !strings.Contains(err.Error(), "unknown template") {
		t.Fatal(err)
	}
	if _, err := NewTemplates(map[string]TemplateSource{"bad": {Body: "{{.x"}}); err == nil {
		t.Fatal("syntax error accepted")
	}
}

func TestLogProvider(t *testing.T) {
	var buf bytes.Buffer
	l := NewLog("", &buf, testTemplates(t))
	res := make([]Result, 2)
	n2 := otp()
	n2.ID, n2.Template = "other", "unknown-template"
	l.Send(t.Context(), []*notification.Notification{otp(), n2}, res)
	if res[0].Outcome != Sent || res[0].MessageID != "log-"+otp().ID || res[1].Outcome != Sent {
		t.Fatalf("%+v", res)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "731904") || !strings.Contains(lines[1], `"template":"unknown-template"`) {
		t.Fatal(buf.String())
	}
}

// What Check refuses never renders (a valid request must not be answered
// 400); without branches it refuses exactly what fails to render (those
// would be dead-lettered at their send).
func TestTemplateCheckAgreesWithRender(t *testing.T) {
	tpl, err := NewTemplates(map[string]TemplateSource{
		"two":    {Body: "Hi {{.name}}, your code is {{.code}}"},
		"title":  {Subject: "{{.title}}", Body: "{{if .vip}}VIP {{end}}{{.msg}}"},
		"with":   {Body: "{{with .x}}{{.}}{{end}}!"},
		"pipe":   {Body: `{{.a | printf "%s-%s" .b}}`},
		"static": {Body: "hello"},
		"range":  {Body: "{{range $k, $v := .}}{{$k}}={{$v}} {{end}}"},
		"else":   {Body: "{{if .a}}{{.b}}{{else}}{{.x}}{{end}}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"name", "code", "title", "vip", "msg", "x", "a", "b"}
	for _, tname := range []string{"two", "title", "with", "pipe", "static", "range", "else", "missing"} {
		for mask := range 1 << len(names) {
			vars := map[string]string{}
			for i, v := range names {
				if mask&(1<<i) != 0 {
					vars[v] = "v"
				}
			}
			n := &notification.Notification{Template: tname, Vars: vars}
			_, _, rerr := tpl.Render(n)
			cerr := tpl.Check(n)
			branches := tname == "else" || tname == "with"
			if cerr != nil && rerr == nil || !branches && cerr == nil && rerr != nil {
				t.Fatalf("template %q vars %v: Check %v, Render %v", tname, vars, cerr, rerr)
			}
		}
	}
	if err := tpl.Check(&notification.Notification{Content: &notification.Content{Body: "b"}}); err != nil {
		t.Fatalf("literal content checked: %v", err)
	}
}
