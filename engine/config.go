package engine

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
)

// Topics names the topics of a deployment.
//
// Notifications enter through a lane topic per priority, so that pausing a
// full bulk lane (backpressure) never stops the partitions that carry
// verification codes. Ingress is a mixed topic for producers that cannot
// choose a lane (any Kafka client writing the wire format); it works, but
// its records share partitions whatever their priority.
type Topics struct {
	Ingress string
	Lanes   [notification.NumPriorities]string
	// RetryLanes take retries by priority, as Lanes take first sends: a
	// full bulk ring pauses the partitions its records came from, and in
	// one retry topic those carried the codes' retries too. Retry is the
	// mixed topic of earlier versions, still consumed (and the one used
	// when a lane is unnamed).
	RetryLanes [notification.NumPriorities]string
	Retry      string
	DLQ        string
	Status     string
	// StatusDLQ holds status events tenants' webhooks did not take.
	StatusDLQ string
	// StatusHooks prefixes each webhook tenant's own topic of events to
	// send, so one tenant's failing endpoint never holds up another's.
	StatusHooks string
	// Park prefixes the parking topics (ParkTiers): a notification not due
	// for a while waits in the log, not in the engine's delay heap, so that
	// tomorrow's campaign never fills the heap and stalls today's sends
	// behind it. Empty: no parking; the heap's overflow pauses partitions.
	Park string
	// ParkTiers are the parking topics' hops, shortest first (nil:
	// DefaultParkTiers).
	ParkTiers []ParkTier

	// KeylessLanes produces notifications to the lanes without a record
	// key. Keyed (the default, and what the wire format documents), a
	// record's key is its idempotency key: repeats of a send land on one
	// partition, and so on the node whose dedupe store claimed the first,
	// which matters where several nodes share the log (Kafka). Where one
	// engine consumes every partition (the embedded log) where a record
	// lands changes nothing, and keyless records go to a partition in runs
	// shared by every request: concurrent requests' records are one group
	// commit, where keyed ones made one per partition (the API's NDJSON
	// ingest +18-23 %, its single objects +25-50 %, alternated).
	KeylessLanes bool
}

// StatusHooksTopic is tenant's topic of status events for its webhook: the
// tenant's name where it is a valid topic name, else its valid characters
// and a hash that keeps two such names apart.
func (t Topics) StatusHooksTopic(tenant string) string {
	safe := []byte(tenant)
	changed := len(safe) == 0 || len(safe) > 120
	for i, c := range safe {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			safe[i], changed = '_', true
		}
	}
	name := string(safe[:min(len(safe), 120)])
	if changed {
		sum := sha256.Sum256([]byte(tenant))
		name += "-" + hex.EncodeToString(sum[:4])
	}
	return cmp.Or(t.StatusHooks, "goutong.status.hooks.") + name
}

// DefaultTopics are the names the CLI and the API use.
func DefaultTopics() Topics {
	t := Topics{Ingress: "goutong.notifications", Retry: "goutong.retry", DLQ: "goutong.dlq", Status: "goutong.status",
		StatusDLQ: "goutong.status.dlq", StatusHooks: "goutong.status.hooks.", Park: "goutong.park."}
	for i := range t.Lanes {
		t.Lanes[i] = "goutong.notifications." + notification.Priority(i+1).String()
		t.RetryLanes[i] = "goutong.retry." + notification.Priority(i+1).String()
	}
	return t
}

// RetryLane is the topic a retry of priority p is produced to.
func (t Topics) RetryLane(p notification.Priority) string {
	if p.Valid() && t.RetryLanes[p.Index()] != "" {
		return t.RetryLanes[p.Index()]
	}
	return t.Retry
}

// isRetry reports whether topic holds retries.
func (t Topics) isRetry(topic string) bool {
	return topic == t.Retry || (topic != "" && slices.Contains(t.RetryLanes[:], topic))
}

// Lane is the topic a notification of priority p is produced to.
func (t Topics) Lane(p notification.Priority) string {
	if p.Valid() && t.Lanes[p.Index()] != "" {
		return t.Lanes[p.Index()]
	}
	return t.Ingress
}

// DefaultParkTiers are the parking topics' hops. A parked record is read
// again one hop after it was parked (the topic holds it until then, its
// partition paused), so a notification due in a day is re-parked about 37
// times on its way: 23 one-hour hops, then shorter ones. The delay heap
// keeps what is due within the second hop (10 minutes) while it has room.
var DefaultParkTiers = []ParkTier{
	{Hop: time.Minute, Suffix: "1m", Retention: 2 * time.Hour},
	{Hop: 10 * time.Minute, Suffix: "10m", Retention: 2 * time.Hour},
	{Hop: time.Hour, Suffix: "1h", Retention: 6 * time.Hour},
}

// ParkTier is one parking topic: records wait Hop in it.
type ParkTier struct {
	Hop       time.Duration
	Suffix    string
	Retention time.Duration // well past Hop: on Kafka, what no node reads for that long is deleted unread
}

func (t Topics) parkTiers() []ParkTier {
	if t.ParkTiers != nil {
		return t.ParkTiers
	}
	return DefaultParkTiers
}

// heapHorizon: an item due sooner waits in the delay heap while it has
// room; one due later is parked (the second tier's hop).
func (t Topics) heapHorizon() time.Duration {
	tiers := t.parkTiers()
	return tiers[min(1, len(tiers)-1)].Hop
}

// ParkTopic is tier's topic; "" without parking.
func (t Topics) ParkTopic(tier int) string {
	if t.Park == "" {
		return ""
	}
	return t.Park + t.parkTiers()[tier].Suffix
}

// parkTier is the tier of a parking topic, or -1.
func (t Topics) parkTier(topic string) int {
	suffix, ok := strings.CutPrefix(topic, t.Park)
	if t.Park == "" || !ok {
		return -1
	}
	for i, tier := range t.parkTiers() {
		if tier.Suffix == suffix {
			return i
		}
	}
	return -1
}

// Consumed are the topics the engine consumes.
func (t Topics) Consumed() []string {
	out := []string{t.Ingress}
	for _, l := range t.Lanes {
		if l != "" && l != t.Ingress {
			out = append(out, l)
		}
	}
	out = append(out, t.Retry)
	for _, l := range t.RetryLanes {
		if l != "" && l != t.Retry {
			out = append(out, l)
		}
	}
	if t.Park != "" {
		for i := range t.parkTiers() {
			out = append(out, t.ParkTopic(i))
		}
	}
	return out
}

// MaxRingSize bounds Config.RingSize: 2^24 pointers are 128 MiB a ring,
// and a channel has four.
const MaxRingSize = 1 << 24

// RetryRetention is how long the retry topic keeps a record (the seed's
// plan). A retry's wait, backoff or Retry-After, must stay under it: on
// Kafka the broker deletes by age whether the record was sent or not.
const RetryRetention = time.Hour

// Specs are the topics with the seed's retention plan: the buffer keeps
// 2 h, the retry (processing) topic RetryRetention, dead letters 24 h. Status events
// are for other systems; nobody in Goutong commits on them, so their
// retention does not wait for a group.
func (t Topics) Specs(partitions int32) []partition.TopicSpec {
	var specs []partition.TopicSpec
	for _, name := range t.Consumed() {
		age := 2 * time.Hour
		if t.isRetry(name) {
			age = RetryRetention
		}
		if tier := t.parkTier(name); tier >= 0 {
			age = t.parkTiers()[tier].Retention
		}
		specs = append(specs, partition.TopicSpec{Name: name, Partitions: partitions, RetentionAge: age, Compression: "s2"})
	}
	if t.StatusDLQ != "" {
		specs = append(specs, partition.TopicSpec{Name: t.StatusDLQ, Partitions: 1, RetentionAge: 24 * time.Hour, Compression: "zstd"})
	}
	return append(specs,
		partition.TopicSpec{Name: t.DLQ, Partitions: 1, RetentionAge: 24 * time.Hour, Compression: "zstd"},
		// Status events are a record for people and other systems, not
		// what delivery depends on: they do not wait for an fsync.
		partition.TopicSpec{Name: t.Status, Partitions: partitions, RetentionAge: 24 * time.Hour, DeleteUncommitted: true, Compression: "s2", LazySync: true},
	)
}

// ChannelConfig binds a channel to its provider and limits.
type ChannelConfig struct {
	// Provider sends the channel's batches: an adapter, a *providers.Guarded
	// (whose adaptive limit the engine also respects) or a *providers.Failover.
	Provider providers.Provider
	// Rate is the channel's token bucket in sends/s (0: the seed's default
	// for the channel); Burst its bucket size (0: Rate/10, at least the
	// batch size); Reserve the share kept for critical and high (default 0.2).
	Rate    float64
	Burst   int
	Reserve float64
	// Batch caps a provider call (0: the provider's MaxBatch); Linger is
	// how long a partial batch of normal or bulk waits to fill (0: 5 ms;
	// negative: never). Batches holding critical or high never linger.
	Batch  int
	Linger time.Duration
	// Concurrency is how many provider calls run at once (0: the provider's).
	Concurrency int
}

// Clock is the engine's time; tests replace it to check rates without
// sleeping.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx ends.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IngestDedupe is which notifications Ingest claims at the door, so that a
// repeat answers as a duplicate of the first instead of being enqueued.
// Every one is still claimed before its send, under its given or derived
// key: either way a repeat is sent once.
type IngestDedupe uint8

const (
	// IngestDedupeAll claims every item's key, given or derived from its
	// content.
	IngestDedupeAll IngestDedupe = iota
	// IngestDedupeKeyed claims only keys a producer gave. A repeat of an
	// item without one is accepted again, with a new id, and stopped at its
	// send as a duplicate: the door's claim and confirm of derived keys
	// were over half of an NDJSON ingest's CPU at 10M keys. goutong serve's
	// default (dedupe.at_ingest).
	IngestDedupeKeyed
)

// ParseIngestDedupe reads the names "all" and "keyed".
func ParseIngestDedupe(s string) (IngestDedupe, error) {
	switch s {
	case "all", "":
		return IngestDedupeAll, nil
	case "keyed":
		return IngestDedupeKeyed, nil
	}
	return 0, fmt.Errorf("ingest dedupe %q: want all or keyed", s)
}

// Config configures an Engine.
type Config struct {
	// Open makes the Log the engine consumes from and produces to; the
	// engine fills in the consumer config (group, topics, rebalance hooks)
	// and owns (closes) the Log.
	Open   func(partition.ConsumerConfig) (partition.Log, error)
	Group  string // default "goutong-engine"
	Topics Topics // default DefaultTopics()

	Channels map[notification.Channel]ChannelConfig
	Codec    *notification.Codec // default NewCodec() with the configured channels
	Dedupe   *dedupe.Store       // required; the caller opens and closes it
	Status   *StatusStore        // optional; the caller opens and closes it
	// KeepPayloads keeps each sent notification in the status store for its
	// window, so reconciliation can resend one whose receipt never came.
	KeepPayloads bool
	// NodeID names this node among several sharing a Kafka cluster. When
	// set, the status store also follows the whole status topic (in the
	// consumer group goutong-status-store.<NodeID>), so every node answers
	// for every notification and matches every receipt, whichever node
	// accepted or sent it. Each node needs its own, kept across restarts.
	// Without it the engine takes itself for the status topic's only
	// writer: it checkpoints the topic for its store's replay after a
	// crash (consumer group goutong-status-checkpoint.<store id>, see
	// checkpoint.go).
	NodeID string
	// IngestDedupe says which items Ingest deduplicates at the door. The
	// zero value is IngestDedupeAll, the stricter answer, for embedders
	// and tests; goutong serve sets IngestDedupeKeyed unless configured.
	IngestDedupe IngestDedupe
	// ReconcileDir keeps reconciliation runs (RunReconcile).
	ReconcileDir string
	// ReceiptDeadlines: per channel, how long its provider has to send a
	// receipt (default DefaultReceiptDeadlines; a channel not listed expects
	// none).
	ReceiptDeadlines map[string]time.Duration
	// ReceiptRetryInterval: how often receipts that arrived for ids not
	// known yet are tried again, for 15 minutes (default 5 s).
	ReceiptRetryInterval time.Duration
	// StatusCheckpointInterval: how often the status store's events are
	// flushed and the status topic's applied offsets recorded (default 5
	// s). After a crash the store replays the topic from the last one, so
	// it bounds that replay, not what is kept.
	StatusCheckpointInterval time.Duration

	Partitions  int32   // of topics the engine creates (default 8)
	PollMax     int     // records per poll (default 1000)
	RingSize    int     // slots per channel and priority (default 8192)
	MaxDelayed  int     // records held for not_before or retry backoff (default 100,000)
	MaxAttempts int     // send attempts before dead letters (default 8)
	Backoff     Backoff // default 500 ms .. 5 min
	Weights     map[notification.Priority]int

	CommitInterval time.Duration // default 200 ms
	// DrainTimeout bounds how long Close keeps sending what the rings
	// hold; what is left stays uncommitted in the log and is replayed.
	DrainTimeout time.Duration // default 10 s
	// RevokeWait bounds how long a rebalance waits for the in-flight records
	// of partitions leaving this node before committing them.
	RevokeWait time.Duration // default 5 s
	// NodeIDSharedAfter: how long the status replica may be assigned only
	// part of the status topic (a rebalance settling) before it takes that
	// for another process running with this NodeID.
	NodeIDSharedAfter time.Duration // default 30 s

	// StatusWebhooks send each tenant's status events to its endpoint.
	StatusWebhooks map[string]StatusWebhook

	Clock    Clock
	Logger   *zap.Logger
	Registry prometheus.Registerer // metrics are registered here when set
}

func (c *Config) defaults() error {
	if c.Open == nil {
		return errors.New("engine: Config.Open is required")
	}
	if c.Dedupe == nil {
		return errors.New("engine: Config.Dedupe is required")
	}
	if len(c.Channels) == 0 {
		return errors.New("engine: no channels configured")
	}
	if c.Group == "" {
		c.Group = "goutong-engine"
	}
	if c.Topics.Ingress == "" {
		c.Topics = DefaultTopics()
	}
	if c.Codec == nil {
		var extra []string
		for ch := range c.Channels {
			extra = append(extra, string(ch))
		}
		c.Codec = notification.NewCodec(extra...)
	}
	for ch, cc := range c.Channels {
		if cc.Provider == nil {
			return fmt.Errorf("engine: channel %s has no provider", ch)
		}
		if cc.Rate == 0 {
			cc.Rate = DefaultOtherRate
			if r, ok := DefaultRates[ch]; ok {
				cc.Rate = r
			}
		}
		if cc.Batch <= 0 {
			cc.Batch = max(1, cc.Provider.MaxBatch())
		}
		if cc.Burst <= 0 {
			cc.Burst = max(int(cc.Rate/10), cc.Batch, 1)
		}
		if cc.Reserve == 0 {
			cc.Reserve = 0.2
		}
		if cc.Linger == 0 {
			cc.Linger = 5 * time.Millisecond
		}
		if cc.Concurrency <= 0 {
			cc.Concurrency = max(1, cc.Provider.Concurrency())
		}
		c.Channels[ch] = cc
	}
	if c.Partitions <= 0 {
		c.Partitions = 8
	}
	if c.PollMax <= 0 {
		c.PollMax = 1000
	}
	if c.RingSize <= 0 {
		c.RingSize = 8192
	}
	if tiers := c.Topics.ParkTiers; c.Topics.Park != "" && tiers != nil {
		if len(tiers) == 0 {
			return errors.New("engine: parking topics need at least one tier")
		}
		for i, t := range tiers {
			if t.Hop <= 0 || t.Suffix == "" || t.Retention <= t.Hop || (i > 0 && t.Hop <= tiers[i-1].Hop) {
				return fmt.Errorf("engine: parking tier %d (%+v): want a suffix, hops growing from one tier to the next and a retention past the hop", i, t)
			}
		}
	}
	if c.RingSize > MaxRingSize {
		return fmt.Errorf("engine: ring size %d: at most %d (every channel has a ring of it per priority, allocated at start)", c.RingSize, MaxRingSize)
	}
	if c.ReceiptRetryInterval <= 0 {
		c.ReceiptRetryInterval = 5 * time.Second
	}
	if c.MaxDelayed <= 0 {
		c.MaxDelayed = 100_000
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.Backoff.Base <= 0 {
		c.Backoff.Base = 500 * time.Millisecond
	}
	if c.Backoff.Max <= 0 {
		c.Backoff.Max = 5 * time.Minute
	}
	if c.Backoff.MaxRetryAfter <= 0 {
		c.Backoff.MaxRetryAfter = providers.MaxRetryAfter
	}
	if c.Backoff.Max >= RetryRetention || c.Backoff.MaxRetryAfter >= RetryRetention {
		return fmt.Errorf("engine: backoff max %v and max Retry-After %v must be under the retry topic's retention (%v)",
			c.Backoff.Max, c.Backoff.MaxRetryAfter, RetryRetention)
	}
	if c.Weights == nil {
		c.Weights = DefaultWeights
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = 200 * time.Millisecond
	}
	if c.StatusCheckpointInterval <= 0 {
		c.StatusCheckpointInterval = 5 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.NodeIDSharedAfter <= 0 {
		c.NodeIDSharedAfter = takeoverWait
	}
	if c.RevokeWait <= 0 {
		c.RevokeWait = 5 * time.Second
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}
