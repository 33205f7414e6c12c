package providers

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/goutong/goutong/notification"
)

// SendGridConfig configures an e-mail provider speaking SendGrid's v3
// mail/send: POST {base}/v3/mail/send with a bearer key; one request carries
// up to 1,000 personalizations (recipients) sharing one content.
type SendGridConfig struct {
	Name      string // default "sendgrid"
	Endpoint  EndpointConfig
	APIKey    string // secret: never logged
	From      string
	FromName  string
	MaxBatch  int // personalizations per request, at most 1,000 (the API's limit)
	Templates *Templates
	// TemplateIDs maps a notification template to a SendGrid dynamic
	// template id; such sends carry their vars as dynamic_template_data and
	// are rendered by SendGrid, not by Templates.
	TemplateIDs map[string]string
	Concurrency int // default 16
	// EventVerificationKey is the Event Webhook's verification key (base64
	// DER ECDSA public key); when set, receipts must carry its signature.
	EventVerificationKey string
}

// SendGrid is the e-mail adapter.
type SendGrid struct {
	cfg       SendGridConfig
	ep        *Endpoint
	url       string
	auth      string
	verifyKey *ecdsa.PublicKey
}

// NewSendGrid builds the adapter.
func NewSendGrid(cfg SendGridConfig) (*SendGrid, error) {
	if cfg.APIKey == "" || cfg.From == "" {
		return nil, fmt.Errorf("providers: sendgrid needs api_key and from")
	}
	if cfg.Name == "" {
		cfg.Name = "sendgrid"
	}
	if cfg.MaxBatch <= 0 || cfg.MaxBatch > 1000 {
		cfg.MaxBatch = 1000
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 16
	}
	if cfg.Endpoint.BaseURL == "" {
		cfg.Endpoint.BaseURL = "https://api.sendgrid.com"
	}
	ep, err := NewEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	sg := &SendGrid{cfg: cfg, ep: ep, url: ep.URL("/v3/mail/send"), auth: "Bearer " + cfg.APIKey}
	if cfg.EventVerificationKey != "" {
		if sg.verifyKey, err = parseVerificationKey(cfg.EventVerificationKey); err != nil {
			return nil, err
		}
	}
	return sg, nil
}

// Templates implements Renderer.
func (s *SendGrid) Templates() *Templates { return s.cfg.Templates }

func (s *SendGrid) Name() string     { return s.cfg.Name }
func (s *SendGrid) MaxBatch() int    { return s.cfg.MaxBatch }
func (s *SendGrid) Concurrency() int { return s.cfg.Concurrency }

type sgAddress struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
}

type sgPersonalization struct {
	To                  []sgAddress       `json:"to"`
	Subject             string            `json:"subject,omitempty"`
	DynamicTemplateData map[string]string `json:"dynamic_template_data,omitempty"`
	CustomArgs          map[string]string `json:"custom_args"`
}

type sgContent struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type sgMail struct {
	Personalizations []sgPersonalization `json:"personalizations"`
	From             sgAddress           `json:"from"`
	Subject          string              `json:"subject,omitempty"`
	Content          []sgContent         `json:"content,omitempty"`
	TemplateID       string              `json:"template_id,omitempty"`
}

// group is the items of a batch that share one request: same dynamic
// template, or same rendered body.
type sgGroup struct {
	mail  sgMail
	items []int // batch indexes, in personalization order
}

// Send implements Provider: items are grouped by content, each group is
// one request, and a 400 that names personalizations fails only those items
// while the rest are sent again without them.
func (s *SendGrid) Send(ctx context.Context, batch []*notification.Notification, results []Result) {
	groups := s.groups(batch, results)
	for _, g := range groups {
		s.sendGroup(ctx, g, results)
	}
	for i := range results {
		results[i].Provider = s.cfg.Name
	}
}

func (s *SendGrid) groups(batch []*notification.Notification, results []Result) []*sgGroup {
	byKey := map[string]*sgGroup{}
	var order []*sgGroup
	from := sgAddress{Email: s.cfg.From, Name: s.cfg.FromName}
	for i, n := range batch {
		p := sgPersonalization{To: []sgAddress{{Email: n.Recipient}}, CustomArgs: map[string]string{"goutong_id": n.ID}}
		var key string
		var mail sgMail
		if tid, ok := s.cfg.TemplateIDs[n.Template]; ok && n.Template != "" {
			key = "t\x00" + tid
			p.DynamicTemplateData = n.Vars
			mail = sgMail{From: from, TemplateID: tid}
		} else {
			subject, body, err := s.cfg.Templates.Render(n)
			if err != nil {
				results[i] = Result{Outcome: Permanent, Reason: err.Error()}
				continue
			}
			key = "c\x00" + body
			p.Subject = subject
			mail = sgMail{From: from, Content: []sgContent{{Type: "text/plain", Value: body}}}
		}
		g := byKey[key]
		if g == nil || len(g.items) >= s.cfg.MaxBatch {
			g = &sgGroup{mail: mail}
			byKey[key] = g
			order = append(order, g)
		}
		g.mail.Personalizations = append(g.mail.Personalizations, p)
		g.items = append(g.items, i)
	}
	return order
}

var sgFieldIndex = regexp.MustCompile(`^personalizations\.(\d+)\.`)

func (s *SendGrid) sendGroup(ctx context.Context, g *sgGroup, results []Result) {
	// At most two rounds: the second resends what the first did not blame.
	for round := 0; round < 2 && len(g.items) > 0; round++ {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		err := s.buildRequest(&g.mail, req)
		if err == nil {
			err = s.ep.Do(ctx, req, resp)
		}
		if err != nil {
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			for _, i := range g.items {
				results[i] = transportResult(err)
			}
			return
		}
		r := httpResult(resp, "")
		msgID := string(resp.Header.Peek("X-Message-Id"))
		var out struct {
			Errors []struct {
				Message string `json:"message"`
				Field   string `json:"field"`
			} `json:"errors"`
		}
		_ = json.Unmarshal(resp.Body(), &out)
		status := resp.StatusCode()
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
		if r.Outcome == Sent {
			for k, i := range g.items {
				// One X-Message-Id per request; the index keeps ids unique
				// per recipient, as SendGrid's own event ids do.
				results[i] = Result{Outcome: Sent, MessageID: msgID + "." + strconv.Itoa(k)}
			}
			return
		}
		blamed := map[int]string{}
		if status == 400 {
			for _, e := range out.Errors {
				if m := sgFieldIndex.FindStringSubmatch(e.Field); m != nil {
					if k, err := strconv.Atoi(m[1]); err == nil && k < len(g.items) {
						blamed[k] = truncate("sendgrid: "+e.Field+": "+e.Message, 200)
					}
				}
			}
		}
		if len(blamed) == 0 || len(blamed) == len(g.items) || round == 1 {
			if len(out.Errors) > 0 && r.Reason == "HTTP "+strconv.Itoa(status) {
				r.Reason = truncate("sendgrid: "+out.Errors[0].Message, 200)
			}
			for k, i := range g.items {
				if reason, ok := blamed[k]; ok {
					results[i] = Result{Outcome: Permanent, Reason: reason}
				} else {
					results[i] = r
				}
			}
			return
		}
		// Fail the blamed recipients, resend the others.
		var keepItems []int
		var keepP []sgPersonalization
		for k, i := range g.items {
			if reason, ok := blamed[k]; ok {
				results[i] = Result{Outcome: Permanent, Reason: reason}
				continue
			}
			keepItems = append(keepItems, i)
			keepP = append(keepP, g.mail.Personalizations[k])
		}
		g.items, g.mail.Personalizations = keepItems, keepP
	}
}

func (s *SendGrid) buildRequest(m *sgMail, req *fasthttp.Request) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(s.url)
	req.Header.Set("Authorization", s.auth)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(b)
	return nil
}
