package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/goutong/goutong/api"
	"github.com/goutong/goutong/dedupe"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/partition"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
	"github.com/goutong/goutong/wal"
)

func newServe() *cobra.Command {
	var configPath string
	var over Config
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Goutong node: the log, the stores, the engine and the HTTP API",
		Long: `serve runs one node from a YAML config (--config; every key documented in
docs/config.md and overridable by GOUTONG_* environment variables). With no
config it runs on defaults: data in ./data, the log provider for every channel
(sends are written to ./data/sends-<channel>.jsonl), the API on 127.0.0.1:8080.
--mock-provider 127.0.0.1:9090 also starts the mock provider and points every
channel without its own provider at it. --kafka host:port,... uses Kafka
topics instead of the embedded log, created when missing.

SIGTERM or Ctrl-C: the API stops accepting and finishes requests in flight,
the engine drains its rings within engine.drain_timeout, commits and closes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("data") {
				cfg.Data = over.Data
			}
			if f.Changed("listen") {
				cfg.Listen = over.Listen
			}
			if f.Changed("kafka") {
				cfg.Kafka = over.Kafka
			}
			if f.Changed("mock-provider") {
				cfg.MockProvider = over.MockProvider
			}
			setProcs(cfg.GoMaxProcs)
			return serve(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "YAML config file")
	f.StringVar(&over.Data, "data", "./data", "data directory (embedded log, dedupe and status stores)")
	f.StringVar(&over.Listen, "listen", "127.0.0.1:8080", "API address")
	f.StringSliceVar(&over.Kafka, "kafka", nil, "Kafka seed brokers host:port,...; empty uses the embedded log")
	f.StringVar(&over.MockProvider, "mock-provider", "", "start the mock provider on this address (e.g. 127.0.0.1:9090) and send to it")
	return cmd
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("config log_level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	return zc.Build()
}

// ingestDedupe reads dedupe.at_ingest.
func ingestDedupe(cfg Config) (engine.IngestDedupe, error) {
	d, err := engine.ParseIngestDedupe(cfg.Dedupe.AtIngest)
	if err != nil {
		return 0, fmt.Errorf("config dedupe.at_ingest: %w", err)
	}
	return d, nil
}

// serve runs a node until ctx ends.
func serve(ctx context.Context, cfg Config, out io.Writer) error {
	lg, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer lg.Sync() //nolint:errcheck
	if err := os.MkdirAll(cfg.Data, 0o755); err != nil {
		return err
	}
	// Before the leftovers go: an interrupted join's stores are in one.
	if err := finishJoin(cfg.Data); err != nil {
		return fmt.Errorf("finishing the join a crash interrupted: %w", err)
	}
	removeLeftovers(cfg.Data, lg)
	if cfg.Join != "" {
		if err := joinFrom(ctx, cfg, lg); err != nil {
			return err
		}
	}
	// A data directory with a log but no dedupe store lost something: fail
	// loudly rather than forget which notifications were sent.
	fresh := !exists(filepath.Join(cfg.Data, "log")) && !exists(filepath.Join(cfg.Data, "dedupe"))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var mock *mockserver.Server
	if cfg.MockProvider != "" {
		if mock, err = mockserver.Start(mockserver.Config{Addr: cfg.MockProvider}); err != nil {
			return err
		}
		defer mock.Close()
		fmt.Fprintf(out, "mock provider on %s (stats at %s/stats)\n", mock.URL(), mock.URL())
	}

	var open func(partition.ConsumerConfig) (partition.Log, error)
	var w *wal.Log
	nodeID := ""
	if len(cfg.Kafka) > 0 {
		open = func(cc partition.ConsumerConfig) (partition.Log, error) {
			return partition.NewKafka(partition.KafkaConfig{Brokers: cfg.Kafka}, cc)
		}
		if nodeID, err = nodeIDOf(cfg); err != nil {
			return err
		}
	} else {
		if w, err = wal.Open(filepath.Join(cfg.Data, "log")); err != nil {
			return err
		}
		defer w.Close()
		reg.MustRegister(logCollector{w})
		open = func(cc partition.ConsumerConfig) (partition.Log, error) { return partition.NewWAL(w, cc), nil }
	}
	ddOpts, err := dedupeOptions(cfg)
	if err != nil {
		return err
	}
	if fresh {
		ddOpts = append(ddOpts, dedupe.WithCreate())
	}
	dd, err := dedupe.Open(filepath.Join(cfg.Data, "dedupe"), ddOpts...)
	if err != nil {
		return err
	}
	defer dd.Close()
	st, err := engine.OpenStatus(filepath.Join(cfg.Data, "status"), cfg.Engine.StatusWindow, true)
	if err != nil {
		return err
	}
	defer st.Close()

	built, err := buildChannels(cfg, mock)
	if err != nil {
		return err
	}
	channels := built.configs
	defer func() {
		for _, c := range built.closers {
			c.Close()
		}
	}()
	hooks, err := statusWebhooks(cfg)
	if err != nil {
		return err
	}
	atIngest, err := ingestDedupe(cfg)
	if err != nil {
		return err
	}
	for _, k := range cfg.Reconcile.Redrive {
		if !slices.Contains(engine.RedriveKinds, k) {
			return fmt.Errorf("config reconcile.redrive: %q, want some of %v", k, engine.RedriveKinds)
		}
	}
	// One engine consumes every partition of the embedded log: keyless
	// lane records of concurrent requests share a group commit
	// (Topics.KeylessLanes).
	topics := engine.DefaultTopics()
	topics.KeylessLanes = len(cfg.Kafka) == 0
	eng, err := engine.New(engine.Config{Open: open, Topics: topics, Channels: channels, Dedupe: dd, Status: st, StatusWebhooks: hooks,
		KeepPayloads: cfg.Engine.KeepPayloads, IngestDedupe: atIngest, NodeID: nodeID, ReconcileDir: filepath.Join(cfg.Data, "reconcile"), ReceiptDeadlines: cfg.Reconcile.Deadlines,
		Partitions: cfg.Partitions, PollMax: cfg.Engine.PollMax, RingSize: cfg.Engine.RingSize,
		MaxDelayed: cfg.Engine.MaxDelayed, MaxAttempts: cfg.Engine.MaxAttempts,
		Backoff:        engine.Backoff{Base: cfg.Engine.BackoffBase, Max: cfg.Engine.BackoffMax, MaxRetryAfter: cfg.Engine.MaxRetryAfter},
		CommitInterval: cfg.Engine.CommitInterval, DrainTimeout: cfg.Engine.DrainTimeout,
		StatusCheckpointInterval: cfg.Engine.StatusCheckpointInterval,
		Logger:                   lg, Registry: reg})
	if err != nil {
		return err
	}
	srv, err := api.New(api.Config{Engine: eng, Keys: cfg.API.Keys, Quotas: cfg.API.Quotas,
		DefaultQuota: cfg.API.DefaultQuota, MaxBacklog: cfg.API.MaxBacklog, MaxBodyBytes: cfg.API.MaxBodyBytes,
		MaxItems: cfg.API.MaxItems, MaxScheduleAhead: cfg.API.MaxScheduleAhead, CheckTemplate: built.checkTemplate, Gatherer: reg, Registry: reg, Logger: lg,
		Ready: logReady(w), SnapshotDir: cfg.Data})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	// Scheduled runs stop with ctx (SIGTERM), before the engine does.
	sched, err := scheduleReconcile(ctx, cfg.Reconcile, eng, lg)
	if err != nil {
		return err
	}
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()
	apiDone := make(chan error, 1)
	go func() { apiDone <- srv.Serve(ln) }()
	lg.Info("serving", zap.String("api", "http://"+ln.Addr().String()), zap.String("data", cfg.Data),
		zap.Strings("kafka", cfg.Kafka), zap.Int("channels", len(channels)), zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)))
	fmt.Fprintf(out, "goutong serving on http://%s (data %s)\n", ln.Addr(), cfg.Data)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-engDone:
		engDone <- runErr
	case runErr = <-apiDone:
	}
	// Stop the door first (requests in flight finish and are durable), then
	// the engine (it drains, commits and closes the log).
	lg.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		lg.Warn("API shutdown", zap.Error(err))
	}
	if sched != nil {
		<-sched.Stop().Done()
	}
	stopEngine()
	if err := <-engDone; err != nil && runErr == nil {
		runErr = err
	}
	if mock != nil {
		s := mock.Stats()
		fmt.Fprintf(out, "mock provider: received %d, unique %d, duplicates %d\n", s.Received, s.Unique, s.Duplicates)
	}
	return runErr
}

// builtChannels is what buildChannels makes of the channel config.
type builtChannels struct {
	configs map[notification.Channel]engine.ChannelConfig
	closers []io.Closer
	// checkTemplate rejects a notification whose template the channel's
	// provider cannot render (the API's Config.CheckTemplate).
	checkTemplate func(*notification.Notification) error
}

// buildChannels turns the channel config into providers. Channels not
// configured get the log provider, or the mock when one runs.
func buildChannels(cfg Config, mock *mockserver.Server) (builtChannels, error) {
	srcs := map[string]providers.TemplateSource{}
	for name, t := range cfg.Templates {
		srcs[name] = providers.TemplateSource{Subject: t.Subject, Body: t.Body}
	}
	tpl, err := providers.NewTemplates(srcs)
	if err != nil {
		return builtChannels{}, fmt.Errorf("config templates: %w", err)
	}
	confs := map[string]ChannelConf{}
	for _, ch := range []string{"sms", "email", "push", "webhook"} {
		confs[ch] = ChannelConf{}
	}
	for name, c := range cfg.Channels {
		confs[name] = c
	}
	out := map[notification.Channel]engine.ChannelConfig{}
	var closers []io.Closer
	// The templates of channels whose provider must render one to send
	// (providers.Renderer); the log provider writes an unknown one's name
	// and vars, a webhook sends them.
	renders := map[notification.Channel]*providers.Templates{}
	names := make([]string, 0, len(confs))
	for n := range confs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		c := confs[name]
		if c.Provider == "" {
			c.Provider = "log"
			if mock != nil {
				c.Provider, c.BaseURL = mockKind(name), mock.URL()
				c.AccountSID, c.AuthToken, c.From = "ACmock", "mock-token", "+15005550006"
				c.APIKey, c.ProjectID, c.Token, c.Secret, c.Path, c.Batch = "SG.mock", "goutong-mock", "mock", "mock-secret", "/webhook/"+name, 100
				if name == "email" {
					c.From = "noreply@goutong.example"
				}
			}
		}
		p, closer, err := buildProvider(cfg, name, c, tpl)
		if err != nil {
			return builtChannels{}, fmt.Errorf("config channels.%s: %w", name, err)
		}
		if r, ok := p.(providers.Renderer); ok {
			renders[notification.Channel(name)] = r.Templates()
		}
		if closer != nil {
			closers = append(closers, closer)
		}
		if c.Breaker {
			b := providers.NewBreaker(providers.BreakerConfig{}, nil)
			p = providers.Guard(p, b, providers.NewAdaptiveLimit(max(c.Rate, 1), max(c.Burst, 1)), nil)
		}
		out[notification.Channel(name)] = engine.ChannelConfig{Provider: p, Rate: c.Rate, Burst: c.Burst, Reserve: c.Reserve,
			Linger: c.Linger, Concurrency: c.Concurrency}
	}
	check := func(n *notification.Notification) error {
		t := renders[n.Channel]
		if t == nil {
			return nil
		}
		return t.Check(n)
	}
	return builtChannels{configs: out, closers: closers, checkTemplate: check}, nil
}

func mockKind(channel string) string {
	switch channel {
	case "sms":
		return "twilio"
	case "email":
		return "sendgrid"
	case "push":
		return "fcm"
	}
	return "webhook"
}

func buildProvider(cfg Config, name string, c ChannelConf, tpl *providers.Templates) (providers.Provider, io.Closer, error) {
	ep := providers.EndpointConfig{BaseURL: c.BaseURL}
	switch c.Provider {
	case "log":
		if c.File == "-" {
			return providers.NewLog("log", os.Stdout, tpl), nil, nil
		}
		path := c.File
		if path == "" {
			path = filepath.Join(cfg.Data, "sends-"+name+".jsonl")
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, nil, err
		}
		return providers.NewLog("log", f, tpl), f, nil
	case "twilio":
		p, err := providers.NewTwilio(providers.TwilioConfig{Endpoint: ep, AccountSID: c.AccountSID, AuthToken: c.AuthToken,
			From: c.From, StatusCallback: c.StatusCallback, Concurrency: c.Concurrency, Templates: tpl})
		return p, nil, err
	case "sendgrid":
		p, err := providers.NewSendGrid(providers.SendGridConfig{Endpoint: ep, APIKey: c.APIKey, From: c.From,
			MaxBatch: c.Batch, Concurrency: c.Concurrency, EventVerificationKey: c.EventVerificationKey, Templates: tpl})
		return p, nil, err
	case "fcm":
		var key []byte
		if c.CredentialsFile != "" {
			var err error
			if key, err = os.ReadFile(c.CredentialsFile); err != nil {
				return nil, nil, fmt.Errorf("fcm credentials_file: %w", err)
			}
		}
		p, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ProjectID: c.ProjectID, ServiceAccount: key, TokenURL: c.TokenURL, Token: c.Token,
			Concurrency: c.Concurrency, Templates: tpl})
		return p, nil, err
	case "webhook":
		p, err := providers.NewWebhook(providers.WebhookConfig{Endpoint: ep, Path: c.Path, Secret: c.Secret,
			Batch: c.Batch, Concurrency: c.Concurrency})
		return p, nil, err
	}
	return nil, nil, fmt.Errorf("provider %q: want log, twilio, sendgrid, fcm or webhook", c.Provider)
}

// dedupeOptions maps the config to the dedupe store: the window, the lease,
// and per channel what happens to a send whose claimant died (the send
// claims are scoped by channel).
func dedupeOptions(cfg Config) ([]dedupe.Option, error) {
	opts := []dedupe.Option{dedupe.WithWindow(cfg.Dedupe.Window), dedupe.WithLease(cfg.Dedupe.Lease), dedupe.WithSync(cfg.Dedupe.Sync),
		dedupe.WithSyncDelay(cfg.Dedupe.SyncDelay), dedupe.WithFilter(cfg.Dedupe.FilterKeys), dedupe.WithFilterMemory(cfg.Dedupe.FilterMaxBytes), dedupe.WithRecent(cfg.Dedupe.RecentBytes),
		dedupe.WithWriteBuffer(cfg.Dedupe.WriteBufferBytes)}
	for name, c := range cfg.Channels {
		switch c.Uncertain {
		case "", "resend":
		case "skip":
			opts = append(opts, dedupe.WithUncertainPolicy(name, dedupe.Skip))
		default:
			return nil, fmt.Errorf("config channels.%s.uncertain: %q, want resend or skip", name, c.Uncertain)
		}
	}
	return opts, nil
}

// scheduleReconcile starts the cron schedule of reconciliation runs, each
// over the previous UTC day; nil when no schedule is set.
func scheduleReconcile(ctx context.Context, rc ReconcileConf, eng *engine.Engine, lg *zap.Logger) (*cron.Cron, error) {
	if rc.Schedule == "" {
		return nil, nil
	}
	c := cron.New(cron.WithLocation(time.UTC))
	_, err := c.AddFunc(rc.Schedule, func() {
		opts := engine.Yesterday(time.Now())
		opts.Redrive = rc.Redrive
		if _, err := eng.RunReconcile(ctx, opts, "schedule"); err != nil {
			lg.Error("scheduled reconciliation", zap.Error(err))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("config reconcile.schedule %q: %w", rc.Schedule, err)
	}
	c.Start()
	return c, nil
}

// statusWebhooks maps the config's per-tenant webhooks to the engine's.
func statusWebhooks(cfg Config) (map[string]engine.StatusWebhook, error) {
	out := map[string]engine.StatusWebhook{}
	for tenant, c := range cfg.StatusWebhooks {
		h := engine.StatusWebhook{URL: c.URL, Secret: c.Secret, Batch: c.Batch, MaxAttempts: c.MaxAttempts, Timeout: c.Timeout}
		for _, s := range c.States {
			st := engine.State(s)
			if !slices.Contains(engine.States, st) {
				return nil, fmt.Errorf("config status_webhooks.%s.states: %q, want one of %v", tenant, s, engine.States)
			}
			h.States = append(h.States, st)
		}
		if c.URL == "" || c.Secret == "" {
			return nil, fmt.Errorf("config status_webhooks.%s: url and secret are required", tenant)
		}
		out[tenant] = h
	}
	return out, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}

// nodeIDOf is the configured node id, or the one kept in <data>/node-id
// (generated on the first start), so a node keeps its name, and its status
// replica's offsets, across restarts.
func nodeIDOf(cfg Config) (string, error) {
	if cfg.NodeID != "" {
		return cfg.NodeID, nil
	}
	path := filepath.Join(cfg.Data, "node-id")
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("node id: %w", err)
	}
	host, _ := os.Hostname()
	id := strings.ToLower(cmp.Or(host, "node")) + "-" + strings.ToLower(notification.NewID()[20:])
	if err := os.MkdirAll(cfg.Data, 0o755); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// logReady is the API's readiness beyond the engine's: an embedded log
// with a partition that refuses appends needs a restart, and requests are
// better taken by another node meanwhile.
func logReady(w *wal.Log) func() error {
	if w == nil {
		return nil
	}
	return func() error {
		if err := w.Err(); err != nil {
			return engine.NeedsRestart("the log refuses appends", err)
		}
		return nil
	}
}
