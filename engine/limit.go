package engine

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/goutong/goutong/notification"
)

// ChannelLimit is a channel's token bucket with a share of its rate
// reserved for critical and high traffic. Every send takes tokens from the
// channel bucket; normal and bulk sends must also take them from a second
// bucket that refills at (1-reserve) of the rate, so a bulk burst can use at
// most that share and urgent sends always find tokens. The rate can change
// at runtime. Times are explicit so tests run on a fake clock.
type ChannelLimit struct {
	mu      sync.Mutex
	all     *rate.Limiter
	low     *rate.Limiter
	reserve float64
}

// NewChannelLimit returns a limit of perSec sends/s with burst, reserving
// the share reserve (0..1) for critical and high.
func NewChannelLimit(perSec float64, burst int, reserve float64) (*ChannelLimit, error) {
	if perSec <= 0 || burst < 1 || reserve < 0 || reserve >= 1 {
		return nil, fmt.Errorf("engine: limit needs rate > 0, burst >= 1, reserve in [0,1); got %v, %d, %v", perSec, burst, reserve)
	}
	lowBurst := max(1, int(float64(burst)*(1-reserve)))
	return &ChannelLimit{
		all:     rate.NewLimiter(rate.Limit(perSec), burst),
		low:     rate.NewLimiter(rate.Limit(perSec*(1-reserve)), lowBurst),
		reserve: reserve,
	}, nil
}

// Reserve takes n tokens for sends of priority p at now and returns how
// long to wait before sending them. Batches larger than the burst are
// split, so Reserve never refuses.
func (c *ChannelLimit) Reserve(now time.Time, p notification.Priority, n int) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var wait time.Duration
	if p != notification.Critical && p != notification.High {
		wait = reserve(c.low, now, n)
	}
	return max(wait, reserve(c.all, now, n))
}

// reserve takes n tokens from l at now, in pieces of at most a burst
// (ReserveN refuses more), and returns how long until the last may go.
// Tokens past what l holds become a debt later reservations pay.
func reserve(l *rate.Limiter, now time.Time, n int) time.Duration {
	var wait time.Duration
	for n > 0 {
		k := min(n, l.Burst())
		wait = max(wait, l.ReserveN(now, k).DelayFrom(now))
		n -= k
	}
	return wait
}

// SetRate changes the channel's rate at runtime, keeping the reserve.
func (c *ChannelLimit) SetRate(now time.Time, perSec float64) error {
	if perSec <= 0 {
		return fmt.Errorf("engine: rate must be positive, got %v", perSec)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all.SetLimitAt(now, rate.Limit(perSec))
	c.low.SetLimitAt(now, rate.Limit(perSec*(1-c.reserve)))
	return nil
}

// Rate is the channel's current rate in sends/s.
func (c *ChannelLimit) Rate() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return float64(c.all.Limit())
}

// DefaultRates are the seed's per-channel limits in sends/s; other
// channels get DefaultOtherRate.
var DefaultRates = map[notification.Channel]float64{notification.SMS: 1000, notification.Email: 500}

// DefaultOtherRate is the limit of channels not in DefaultRates.
const DefaultOtherRate = 100

// Budget is how many sends may go now without waiting: urgent counts
// critical and high, low counts normal and bulk (never more than urgent).
// The dispatcher gathers a batch within the budget and then Takes it, so it
// never sleeps holding a bulk batch while a verification code arrives.
func (c *ChannelLimit) Budget(now time.Time) (urgent, low int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	urgent = int(c.all.TokensAt(now))
	low = min(urgent, int(c.low.TokensAt(now)))
	return max(urgent, 0), max(low, 0)
}

// Take spends the tokens of a batch gathered within Budget. Tokens taken
// past the bucket's content (a batch gathered over a larger budget) become
// a debt the next budgets pay, where AllowN would take nothing at all and
// let the whole batch go free.
func (c *ChannelLimit) Take(now time.Time, urgent, low int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	reserve(c.low, now, low)
	reserve(c.all, now, urgent+low)
}

// LowTimeFor is how long until n sends of normal or bulk may go (forever,
// in effect, when n exceeds the bucket: callers cap the wait).
func (c *ChannelLimit) LowTimeFor(now time.Time, n int) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	need := func(l *rate.Limiter) time.Duration {
		t := l.TokensAt(now)
		if t >= float64(n) {
			return 0
		}
		return time.Duration((float64(n) - t) / float64(l.Limit()) * float64(time.Second))
	}
	return max(need(c.all), need(c.low))
}

// NextToken is how long until one send of priority p may go.
func (c *ChannelLimit) NextToken(now time.Time, p notification.Priority) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	need := func(l *rate.Limiter) time.Duration {
		t := l.TokensAt(now)
		if t >= 1 {
			return 0
		}
		return time.Duration((1 - t) / float64(l.Limit()) * float64(time.Second))
	}
	w := need(c.all)
	if p != notification.Critical && p != notification.High {
		w = max(w, need(c.low))
	}
	return max(w, time.Millisecond/10)
}
