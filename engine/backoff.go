package engine

import (
	"math/rand/v2"
	"time"
)

// Backoff computes retry delays: exponential from Base, capped at Max, with
// full jitter (a uniform draw between zero and the exponential bound, which
// spreads a failed burst's retries instead of sending them back together),
// and never sooner than the provider's Retry-After.
type Backoff struct {
	Base, Max time.Duration
	// MaxRetryAfter caps the provider's hint (Config's default:
	// providers.MaxRetryAfter; 0 here: no cap). A provider of one's own may
	// return any RetryAfter, and a retry due past the retry topic's
	// retention could be gone (on Kafka) before it is sent.
	MaxRetryAfter time.Duration
	Rand          func(n int64) int64 // rand.Int64N by default; tests fix it
}

// Delay is the wait before attempt number attempt (1 for the first retry).
func (b Backoff) Delay(attempt int, retryAfter time.Duration) time.Duration {
	bound := b.Max
	if attempt < 1 {
		attempt = 1
	}
	if shift := attempt - 1; shift < 62 && b.Base<<shift > 0 && b.Base<<shift < b.Max {
		bound = b.Base << shift
	}
	draw := b.Rand
	if draw == nil {
		draw = rand.Int64N
	}
	d := time.Duration(draw(int64(bound) + 1))
	if b.MaxRetryAfter > 0 {
		retryAfter = min(retryAfter, b.MaxRetryAfter)
	}
	return max(d, retryAfter)
}
