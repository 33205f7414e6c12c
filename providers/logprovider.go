package providers

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"time"

	"github.com/goutong/goutong/notification"
)

// Log is the provider of a fresh install: it "delivers" by writing one JSON
// line per send to w (a file or standard output), so the whole pipeline can
// run with nothing configured.
type Log struct {
	name      string
	templates *Templates
	mu        sync.Mutex
	enc       *json.Encoder
	now       func() time.Time
}

// NewLog returns a Log provider writing to w.
func NewLog(name string, w io.Writer, templates *Templates) *Log {
	if name == "" {
		name = "log"
	}
	return &Log{name: name, templates: templates, enc: json.NewEncoder(w), now: time.Now}
}

func (l *Log) Name() string     { return l.name }
func (l *Log) MaxBatch() int    { return 1000 }
func (l *Log) Concurrency() int { return 1 }

type logLine struct {
	Time      time.Time         `json:"time"`
	ID        string            `json:"id"`
	Channel   string            `json:"channel"`
	Priority  string            `json:"priority"`
	Recipient string            `json:"recipient"`
	Template  string            `json:"template,omitempty"`
	Vars      map[string]string `json:"vars,omitempty"`
	Subject   string            `json:"subject,omitempty"`
	Body      string            `json:"body,omitempty"`
}

// Send implements Provider. Templates are rendered when configured;
// otherwise the line carries the template name and vars.
func (l *Log) Send(_ context.Context, batch []*notification.Notification, results []Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now().UTC()
	for i, n := range batch {
		line := logLine{Time: now, ID: n.ID, Channel: string(n.Channel), Priority: n.Priority.String(), Recipient: n.Recipient}
		if subject, body, err := l.templates.Render(n); err == nil {
			line.Subject, line.Body = subject, body
		} else {
			line.Template, line.Vars = n.Template, n.Vars
		}
		if err := l.enc.Encode(&line); err != nil {
			results[i] = Result{Outcome: Retriable, Reason: "log: " + err.Error(), Provider: l.name}
			continue
		}
		results[i] = Result{Outcome: Sent, MessageID: "log-" + n.ID, Provider: l.name}
	}
}
