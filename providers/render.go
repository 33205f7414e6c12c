package providers

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"

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
	vars          []string // the vars it reads ({{.code}}), sorted
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
		c.vars = readVars(c.body.Tree.Root, nil)
		if c.subject != nil {
			c.vars = readVars(c.subject.Tree.Root, c.vars)
		}
		slices.Sort(c.vars)
		c.vars = slices.Compact(c.vars)
		t.m[name] = c
	}
	return t, nil
}

// readVars appends the vars a template reads whatever the vars' values:
// with missingkey=error each is required. The branches of if, range and
// with run or not depending on values (and inside range and with dot is
// something else), so only their pipelines are walked: what this finds
// missing fails every rendering, and a var missing in a branch is still
// reported by the send.
func readVars(n parse.Node, vars []string) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				vars = readVars(c, vars)
			}
		}
	case *parse.ActionNode:
		vars = readVars(n.Pipe, vars)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				vars = readVars(c, vars)
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			vars = readVars(a, vars)
		}
	case *parse.FieldNode:
		vars = append(vars, n.Ident[0])
	case *parse.IfNode:
		vars = readVars(n.Pipe, vars)
	case *parse.RangeNode:
		vars = readVars(n.Pipe, vars)
	case *parse.WithNode:
		vars = readVars(n.Pipe, vars)
	}
	return vars
}

// Check reports, as a field error, what stops n's template from
// rendering: an unknown name, or a var it reads on every path that n
// lacks. What it refuses never renders; what it passes may still fail in a
// branch (see readVars).
func (t *Templates) Check(n *notification.Notification) error {
	if n.Content != nil {
		return nil
	}
	c, ok := t.get(n.Template)
	if !ok {
		return &notification.FieldError{Field: "template", Reason: fmt.Sprintf("unknown template %q", n.Template)}
	}
	for _, v := range c.vars {
		if _, ok := n.Vars[v]; !ok {
			return &notification.FieldError{Field: "vars." + v, Reason: fmt.Sprintf("missing: template %q reads it", n.Template)}
		}
	}
	return nil
}

// get returns the template called name; a nil t has none.
func (t *Templates) get(name string) (compiled, bool) {
	if t == nil {
		return compiled{}, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	c, ok := t.m[name]
	return c, ok
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
	c, ok := t.get(n.Template)
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
