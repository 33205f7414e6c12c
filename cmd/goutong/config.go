package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"

	"github.com/goutong/goutong/api"
	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/providers"
)

// Config is goutong serve's configuration: defaults, then the YAML file,
// then environment variables (GOUTONG_ + the key path upper-cased, levels
// joined by "__": GOUTONG_API__MAX_BACKLOG=50000,
// GOUTONG_CHANNELS__SMS__TWILIO__AUTH_TOKEN=...), then flags. Every key is
// documented in docs/config.md.
type Config struct {
	Data   string   `koanf:"data"`
	Listen string   `koanf:"listen"`
	Kafka  []string `koanf:"kafka"`
	// NodeID names this node in a Kafka cluster (default: one generated
	// and kept in <data>/node-id); its status store follows the whole
	// status topic under it.
	NodeID string `koanf:"node_id"`
	// Join is a running node's API URL, or a file goutong snapshot saved:
	// a Kafka node whose data directory has no stores yet starts from a
	// snapshot of that node's (GET /v1/admin/snapshot, with JoinAPIKey).
	Join       string `koanf:"join"`
	JoinAPIKey string `koanf:"join_api_key"`
	Partitions int32  `koanf:"partitions"`
	LogLevel   string `koanf:"log_level"`
	// MockProvider, when set, starts the mock provider on that address and
	// points every channel without a provider of its own at it.
	MockProvider string `koanf:"mock_provider"`
	// GoMaxProcs is the Go scheduler's processors: 0 for one more than the
	// CPUs the process may use (see setProcs), n for exactly n.
	GoMaxProcs int `koanf:"gomaxprocs"`

	Engine    EngineConfig            `koanf:"engine"`
	Dedupe    DedupeConfig            `koanf:"dedupe"`
	API       APIConfig               `koanf:"api"`
	Channels  map[string]ChannelConf  `koanf:"channels"`
	Templates map[string]TemplateConf `koanf:"templates"`
	Reconcile ReconcileConf           `koanf:"reconcile"`
	// StatusWebhooks: per tenant, where its status events are POSTed.
	StatusWebhooks map[string]StatusWebhookConf `koanf:"status_webhooks"`
}

// ReconcileConf schedules reconciliation inside serve.
type ReconcileConf struct {
	// Schedule is a cron expression in UTC ("0 3 * * *": 03:00 every day);
	// each run takes the previous UTC day. Empty: on demand only.
	Schedule  string                   `koanf:"schedule"`
	Redrive   []string                 `koanf:"redrive"`   // kinds the scheduled runs redrive
	Deadlines map[string]time.Duration `koanf:"deadlines"` // per channel; a channel not listed expects no receipts
}

// StatusWebhookConf is one tenant's outbound status webhook.
type StatusWebhookConf struct {
	URL         string        `koanf:"url"`
	Secret      string        `koanf:"secret"`
	States      []string      `koanf:"states"` // default: every state
	Batch       int           `koanf:"batch"`
	MaxAttempts int           `koanf:"max_attempts"`
	Timeout     time.Duration `koanf:"timeout"`
}

type EngineConfig struct {
	RingSize       int           `koanf:"ring_size"`
	PollMax        int           `koanf:"poll_max"`
	MaxDelayed     int           `koanf:"max_delayed"`
	MaxAttempts    int           `koanf:"max_attempts"`
	BackoffBase    time.Duration `koanf:"backoff_base"`
	BackoffMax     time.Duration `koanf:"backoff_max"`
	MaxRetryAfter  time.Duration `koanf:"max_retry_after"`
	DrainTimeout   time.Duration `koanf:"drain_timeout"`
	CommitInterval time.Duration `koanf:"commit_interval"`
	StatusWindow   time.Duration `koanf:"status_window"`
	// StatusCheckpointInterval bounds the status topic's replay into the
	// status store after a crash.
	StatusCheckpointInterval time.Duration `koanf:"status_checkpoint_interval"`
	// KeepPayloads keeps sent notifications in the status store for its
	// window, so reconciliation can redrive them.
	KeepPayloads bool `koanf:"keep_payloads"`
}

type DedupeConfig struct {
	Window time.Duration `koanf:"window"`
	Lease  time.Duration `koanf:"lease"`
	Sync   bool          `koanf:"sync"`
	// SyncDelay: a synced confirm that starts an fsync waits this long for
	// others to share it (0: never waits).
	SyncDelay time.Duration `koanf:"sync_delay"`
	// FilterKeys sizes the in-memory filter of each time bucket (window/4)
	// at first: new keys skip the disk probe. 0 turns the filters off.
	FilterKeys uint `koanf:"filter_keys"`
	// FilterMaxBytes bounds the filters' memory as they grow with their
	// buckets' keys.
	FilterMaxBytes int `koanf:"filter_max_bytes"`
	// RecentBytes is the memory for copies of the newest entries, which
	// lookups of recent keys read before Pebble. 0 turns them off.
	RecentBytes int `koanf:"recent_bytes"`
	// WriteBufferBytes is one generation of writes collected (in memory and
	// a log) before they go into Pebble as one sorted sstable. 0: off.
	WriteBufferBytes int `koanf:"write_buffer_bytes"`
	// AtIngest: which items are claimed at the door, "keyed" (default: only
	// those with a producer's key) or "all" (see engine.IngestDedupe).
	AtIngest string `koanf:"at_ingest"`
}

type APIConfig struct {
	Keys         []api.Key            `koanf:"keys"`
	Quotas       map[string]api.Quota `koanf:"quotas"`
	DefaultQuota api.Quota            `koanf:"default_quota"`
	MaxBacklog   int64                `koanf:"max_backlog"`
	MaxBodyBytes int                  `koanf:"max_body_bytes"`
	MaxItems     int                  `koanf:"max_items"`
	// MaxScheduleAhead refuses a not_before further ahead; negative: none.
	MaxScheduleAhead time.Duration `koanf:"max_schedule_ahead"`
}

// ChannelConf configures one channel and its provider.
type ChannelConf struct {
	Provider    string        `koanf:"provider"` // log, twilio, sendgrid, fcm, webhook
	Rate        float64       `koanf:"rate"`
	Burst       int           `koanf:"burst"`
	Reserve     float64       `koanf:"reserve"`
	Linger      time.Duration `koanf:"linger"`
	Concurrency int           `koanf:"concurrency"`
	Breaker     bool          `koanf:"breaker"` // circuit breaker and adaptive rate in front of the provider
	// Uncertain: what happens to a send in flight when its node died —
	// "resend" (default: at least once, right for verification codes) or
	// "skip" (at most once: the key is closed as uncertain, never resent).
	Uncertain string `koanf:"uncertain"`

	BaseURL string `koanf:"base_url"` // the provider's API (tests and the mock point it elsewhere)
	// Log provider.
	File string `koanf:"file"` // default <data>/sends-<channel>.jsonl; "-" is stdout
	// Twilio.
	AccountSID     string `koanf:"account_sid"`
	AuthToken      string `koanf:"auth_token"`
	From           string `koanf:"from"`
	StatusCallback string `koanf:"status_callback"`
	// SendGrid.
	APIKey               string `koanf:"api_key"`
	EventVerificationKey string `koanf:"event_verification_key"`
	// FCM: a service-account key file (tokens minted and renewed from it)
	// or a fixed access token.
	CredentialsFile string `koanf:"credentials_file"`
	TokenURL        string `koanf:"token_url"` // overrides the key's token_uri (a mock, a private endpoint)
	ProjectID       string `koanf:"project_id"`
	Token           string `koanf:"token"`
	// Webhook.
	Path   string `koanf:"path"`
	Secret string `koanf:"secret"`
	Batch  int    `koanf:"batch"`
}

type TemplateConf struct {
	Subject string `koanf:"subject"`
	Body    string `koanf:"body"`
}

func defaultConfig() Config {
	return Config{
		Data: "./data", Listen: "127.0.0.1:8080", Partitions: 8, LogLevel: "info",
		Engine: EngineConfig{RingSize: 8192, PollMax: 1000, MaxDelayed: 100_000, MaxAttempts: 8,
			BackoffBase: 500 * time.Millisecond, BackoffMax: 5 * time.Minute, MaxRetryAfter: providers.MaxRetryAfter, DrainTimeout: 10 * time.Second,
			CommitInterval: 200 * time.Millisecond, StatusWindow: 7 * 24 * time.Hour, StatusCheckpointInterval: 5 * time.Second, KeepPayloads: true},
		Reconcile: ReconcileConf{Deadlines: map[string]time.Duration{"sms": 30 * time.Minute, "email": 2 * time.Hour}},
		Dedupe: DedupeConfig{Window: 24 * time.Hour, Lease: 30 * time.Second, Sync: true, SyncDelay: dedupe.DefaultSyncDelay,
			FilterKeys: dedupe.DefaultFilterKeys, FilterMaxBytes: dedupe.DefaultFilterBytes, RecentBytes: dedupe.DefaultRecentBytes,
			WriteBufferBytes: dedupe.DefaultWriteBufferBytes, AtIngest: "keyed"},
		API: APIConfig{MaxBodyBytes: 64 << 20, MaxItems: 100_000, MaxScheduleAhead: api.DefaultMaxScheduleAhead},
		Templates: map[string]TemplateConf{
			"otp": {Subject: "Your verification code", Body: "Your verification code is {{.code}}"},
		},
	}
}

// loadConfig layers defaults, the file (when path is set), the environment.
func loadConfig(path string) (Config, error) {
	k := koanf.New(".")
	if err := k.Load(structs.Provider(defaultConfig(), "koanf"), nil); err != nil {
		return Config{}, err
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	fromEnv := map[string]string{} // key: the variable that set it
	err := k.Load(env.Provider(".", env.Opt{Prefix: "GOUTONG_", TransformFunc: func(name, v string) (string, any) {
		key := strings.ToLower(strings.TrimPrefix(name, "GOUTONG_"))
		key = strings.ReplaceAll(key, "__", ".")
		fromEnv[key] = name
		if key == "kafka" {
			return key, strings.Split(v, ",")
		}
		return key, v
	}}), nil)
	if err != nil {
		return Config{}, err
	}
	c, err := decodeConfig(k)
	if err != nil {
		// A variable meant for something else would otherwise read as a
		// key nobody wrote.
		var bad []string
		for key, name := range fromEnv {
			one := koanf.New(".")
			if one.Load(structs.Provider(defaultConfig(), "koanf"), nil) != nil || one.Set(key, k.Get(key)) != nil {
				continue
			}
			if _, err := decodeConfig(one); err != nil {
				bad = append(bad, name)
			}
		}
		if len(bad) > 0 {
			slices.Sort(bad)
			return Config{}, fmt.Errorf("config: %w\n(from the environment: %s; every GOUTONG_ variable is read as a config key, see docs/config.md)",
				err, strings.Join(bad, ", "))
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

func decodeConfig(k *koanf.Koanf) (Config, error) {
	var c Config
	// ErrorUnused: a misspelt key fails the start instead of being ignored.
	dc := &mapstructure.DecoderConfig{Result: &c, TagName: "koanf", ErrorUnused: true, WeaklyTypedInput: true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc(), mapstructure.StringToSliceHookFunc(","))}
	err := k.UnmarshalWithConf("", &c, koanf.UnmarshalConf{Tag: "koanf", DecoderConfig: dc})
	return c, err
}
