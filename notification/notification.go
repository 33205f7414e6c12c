// Package notification owns the Notification type, its JSON wire codec, its
// validation rules and the derivation of default idempotency keys.
//
// The wire format is plain JSON so that any Kafka producer (kcat, Java,
// Python) can write a record the engine will accept; it is documented in
// docs/wire-format.md. Decoding is strict: an unknown field, channel or
// priority, a missing recipient or a malformed timestamp is an error that
// names the field.
package notification

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
)

// Channel names a delivery channel. The four built-in channels are always
// known; a Codec may be configured with more.
type Channel string

// Built-in channels.
const (
	SMS     Channel = "sms"
	Email   Channel = "email"
	Push    Channel = "push"
	Webhook Channel = "webhook"
)

// Priority orders notifications on the same channel. Lower values are more
// urgent, so the zero value is never valid on the wire; use ParsePriority.
type Priority uint8

// Priorities, most urgent first.
const (
	Critical Priority = iota + 1
	High
	Normal
	Bulk
)

// NumPriorities is the number of defined priorities; handy for sizing
// per-priority arrays indexed by Priority.Index.
const NumPriorities = 4

var priorityNames = [...]string{Critical: "critical", High: "high", Normal: "normal", Bulk: "bulk"}

func (p Priority) String() string {
	if p >= Critical && p <= Bulk {
		return priorityNames[p]
	}
	return fmt.Sprintf("priority(%d)", uint8(p))
}

// Index maps a valid priority to 0..NumPriorities-1.
func (p Priority) Index() int { return int(p) - 1 }

// Valid reports whether p is one of the defined priorities.
func (p Priority) Valid() bool { return p >= Critical && p <= Bulk }

// ParsePriority maps a wire name to a Priority.
func ParsePriority(s string) (Priority, bool) {
	switch s {
	case "critical":
		return Critical, true
	case "high":
		return High, true
	case "normal":
		return Normal, true
	case "bulk":
		return Bulk, true
	}
	return 0, false
}

// Content is a literal message, used instead of a template.
type Content struct {
	Subject string // e-mail subject or push title; optional
	Body    string
}

// Notification is one message to one recipient over one channel.
type Notification struct {
	ID             string // ULID; assigned at ingest when absent
	IdempotencyKey string // defaults to DefaultIdempotencyKey
	Tenant         string
	Channel        Channel
	Priority       Priority
	Recipient      string // phone number, address, device token or URL, per channel
	Template       string
	Vars           map[string]string
	Content        *Content
	NotBefore      time.Time // zero: send as soon as possible
	ExpiresAt      time.Time // zero: never expires
	AcceptedAt     time.Time // set at ingest; the start of end-to-end latency
	Attempts       int
	Metadata       map[string]string
}

// ErrInvalid is wrapped by every validation and decoding error, so callers
// can branch on errors.Is(err, ErrInvalid).
var ErrInvalid = errors.New("invalid notification")

// FieldError says which field of a notification is wrong and why.
type FieldError struct {
	Field  string // wire name, dotted for nested fields (vars.code)
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("field %q: %s", e.Field, e.Reason) }

// Unwrap lets errors.Is(err, ErrInvalid) hold for every FieldError.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// NewID returns a fresh ULID string. ulid.Make is safe for concurrent use
// and monotonic within a millisecond.
func NewID() string { return ulid.Make().String() }

// Clone returns a deep copy of n that shares no memory with it.
func (n *Notification) Clone() *Notification {
	c := *n
	for _, s := range []*string{&c.ID, &c.IdempotencyKey, &c.Tenant, &c.Recipient, &c.Template} {
		*s = strings.Clone(*s)
	}
	c.Channel = Channel(strings.Clone(string(c.Channel)))
	c.Vars, c.Metadata = cloneMap(c.Vars), cloneMap(c.Metadata)
	if n.Content != nil {
		c.Content = &Content{Subject: strings.Clone(n.Content.Subject), Body: strings.Clone(n.Content.Body)}
	}
	return &c
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.Clone(k)] = strings.Clone(v)
	}
	return out
}

// Expired reports whether n must no longer be sent at now.
func (n *Notification) Expired(now time.Time) bool {
	return !n.ExpiresAt.IsZero() && !now.Before(n.ExpiresAt)
}

// Due reports whether n may be sent at now.
func (n *Notification) Due(now time.Time) bool {
	return n.NotBefore.IsZero() || !now.Before(n.NotBefore)
}

// Stamp sets what Prepare does but the idempotency key: the id and the
// accepted time, where they are not set.
func (n *Notification) Stamp(now time.Time) {
	if n.ID == "" {
		n.ID = NewID()
	}
	if n.AcceptedAt.IsZero() {
		n.AcceptedAt = now
	}
}

// Prepare fills what ingest assigns (id, accepted time, idempotency key).
func (n *Notification) Prepare(now time.Time) {
	n.Stamp(now)
	if n.IdempotencyKey == "" {
		n.IdempotencyKey = DefaultIdempotencyKey(n)
	}
}
