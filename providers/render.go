package providers

import (
	"fmt"
	"strings"
	"sync"
	"text/template"

	"github.com/goutong/goutong/notification"
)

// Templates renders a notification's template and vars into a subject and
// body for providers whose API takes text (SMS, push). Templates use Go's
// text/template syntax over the vars: "Your code is {{.code}}".
type Templates struct {
	mu sync.RWMutex
	m  map[string]compiled
}

type compiled struct {
	subject, body *template.Template
}

// TemplateSource is one template's text.
type TemplateSource struct {
	Subject string // optional: e-mail subject, push title
	Body    string
}

// NewTemplates compiles every template; a syntax error names the template.
func NewTemplates(src map[string]TemplateSource) (*Templates, error) {
	t := &Templates{m: map[string]compiled{}}
	for name, s := range src {
		var c compiled
		var err error
		if c.body, err = template.New(name).Option("missingkey=error").Parse(s.Body); err != nil {
			return nil, fmt.Errorf("providers: template %q body: %w", name, err)
		}
		if s.Subject != "" {
			if c.subject, err = template.New(name + ".subject").Option("missingkey=error").Parse(s.Subject); err != nil {
				return nil, fmt.Errorf("providers: template %q subject: %w", name, err)
			}
		}
		t.m[name] = c
	}
	return t, nil
}

// Has reports whether a template of that name is configured (the API
// rejects a notification naming another at once, rather than accept it
// and dead-letter it at its send).
func (t *Templates) Has(name string) bool {
	if t == nil {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.m[name]
	return ok
}

// Render returns the subject and body of n: its literal content, or its
// template rendered over its vars. An unknown template or a missing var is
// an error (the send is permanently failed: retrying cannot fix it).
func (t *Templates) Render(n *notification.Notification) (subject, body string, err error) {
	if n.Content != nil {
		return n.Content.Subject, n.Content.Body, nil
	}
	if t == nil {
		return "", "", fmt.Errorf("unknown template %q (no templates configured)", n.Template)
	}
	t.mu.RLock()
	c, ok := t.m[n.Template]
	t.mu.RUnlock()
	if !ok {
		return "", "", fmt.Errorf("unknown template %q", n.Template)
	}
	var sb strings.Builder
	if err := c.body.Execute(&sb, n.Vars); err != nil {
		return "", "", fmt.Errorf("template %q: %w", n.Template, err)
	}
	body = sb.String()
	if c.subject != nil {
		sb.Reset()
		if err := c.subject.Execute(&sb, n.Vars); err != nil {
			return "", "", fmt.Errorf("template %q subject: %w", n.Template, err)
		}
		subject = sb.String()
	}
	return subject, body, nil
}
