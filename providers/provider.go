// Package providers delivers notifications through providers' HTTP APIs.
//
// A Provider sends a batch and returns one Result per item: sent (with the
// provider's message id), retriable (with an optional Retry-After) or
// permanent (with the reason), so one bad recipient never fails its batch.
// Adapters speak the real wire formats (Twilio Messages, SendGrid v3
// mail/send, FCM HTTP v1, signed webhooks) over pooled fasthttp clients, and
// their base URLs can point at the mock provider (package mockserver) for
// tests, demos and load tests. Protection sits around any Provider: a
// circuit breaker per endpoint, an adaptive (AIMD) rate limit, and failover
// across several providers of one channel.
//
// Adding a provider is one file: a type with Name, MaxBatch, Concurrency and
// Send, built on Endpoint for HTTP.
package providers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/goutong/goutong/notification"
)

// Outcome classifies the result of sending one item.
type Outcome uint8

const (
	// Sent: the provider accepted the message.
	Sent Outcome = iota + 1
	// Retriable: a timeout, 5xx, 429 or open breaker; try again later.
	Retriable
	// Permanent: the provider refused the message itself (bad number,
	// unregistered token); retrying cannot help.
	Permanent
)

func (o Outcome) String() string {
	switch o {
	case Sent:
		return "sent"
	case Retriable:
		return "retriable"
	case Permanent:
		return "permanent"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Result is the outcome of one item of a batch.
type Result struct {
	Outcome    Outcome
	MessageID  string        // the provider's id, with Sent
	RetryAfter time.Duration // the provider's hint, with Retriable; 0 if none
	Reason     string        // why, with Retriable and Permanent
	Provider   string        // which provider answered (failover may pick another)
	Throttled  bool          // the provider said 429: slow down
}

// Provider sends batches of notifications.
type Provider interface {
	// Name identifies the provider in results, metrics and config.
	Name() string
	// MaxBatch is the largest batch Send accepts.
	MaxBatch() int
	// Concurrency is how many Send calls may run at once.
	Concurrency() int
	// Send delivers batch and fills results[i] for batch[i]. It does not
	// return an error: every failure is some item's Result.
	Send(ctx context.Context, batch []*notification.Notification, results []Result)
}

// Renderer is a provider that must render a notification's template to
// send it (Twilio, SendGrid, FCM): a template it lacks, or a var the
// template reads, fails the send for good. The API checks both at ingest
// against the provider's templates, on the channels of such providers.
type Renderer interface {
	Templates() *Templates
}

// ErrBreakerOpen is the reason of results failed fast by an open breaker.
var ErrBreakerOpen = errors.New("circuit breaker open")

func fillAll(results []Result, r Result) {
	for i := range results {
		results[i] = r
	}
}
