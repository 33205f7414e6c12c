package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
)

func newMockProvider() *cobra.Command {
	var cfg mockserver.Config
	var latMin, latMax, retryAfter, slowDelay, outage time.Duration
	var googleKey string
	cmd := &cobra.Command{
		Use:   "mock-provider",
		Short: "Run the mock provider: Twilio, SendGrid, FCM and webhook endpoints on one port, with fault injection and /stats",
		Long: `mock-provider serves every adapter's API on --listen and counts each
notification it accepts by id (GET /stats: received, unique, duplicates, per
channel). Faults can be set by flags at start and changed at runtime with
POST /faults, for example:

  curl -d '{"error_rate":0.2,"throttle_rate":0.05,"retry_after":"2s"}' localhost:9090/faults
  curl -d '{"outage_for":"10s"}' localhost:9090/faults
  curl localhost:9090/stats

Endpoints: POST /2010-04-01/Accounts/{sid}/Messages.json (Twilio),
POST /v3/mail/send (SendGrid), POST /v1/projects/{id}/messages:send (FCM),
POST /webhook/... (signed webhooks; checked when --webhook-secret is set),
POST /token (Google's OAuth2 token endpoint, with --google-key),
GET /stats, GET|POST /faults, POST /reset, GET /healthz.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Faults.LatencyMin, cfg.Faults.LatencyMax = mockserver.Duration(latMin), mockserver.Duration(latMax)
			cfg.Faults.RetryAfter, cfg.Faults.SlowDelay = mockserver.Duration(retryAfter), mockserver.Duration(slowDelay)
			cfg.Faults.OutageFor = mockserver.Duration(outage)
			if latMax < latMin {
				return fmt.Errorf("--latency-max %v is below --latency-min %v", latMax, latMin)
			}
			for name, r := range map[string]float64{"error-rate": cfg.Faults.ErrorRate, "throttle-rate": cfg.Faults.ThrottleRate,
				"item-failure-rate": cfg.Faults.ItemFailureRate, "slow-rate": cfg.Faults.SlowRate} {
				if r < 0 || r > 1 {
					return fmt.Errorf("--%s must be within 0..1, got %v", name, r)
				}
			}
			if googleKey != "" {
				key, err := readGooglePublicKey(googleKey)
				if err != nil {
					return fmt.Errorf("--google-key: %w", err)
				}
				cfg.GoogleKey = key
			}
			s, err := mockserver.Start(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mock provider listening on %s (stats at %s/stats)\n", s.URL(), s.URL())
			<-cmd.Context().Done()
			st := s.Stats()
			fmt.Fprintf(cmd.OutOrStdout(), "received %d, unique %d, duplicates %d, requests %d, faulted %d, rejected %d\n",
				st.Received, st.Unique, st.Duplicates, st.Requests, st.Faulted, st.Rejected)
			return s.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "listen", "127.0.0.1:9090", "address to serve on")
	f.StringVar(&cfg.WebhookSecret, "webhook-secret", "", "verify webhook signatures with this secret")
	f.Uint64Var(&cfg.Seed, "seed", 0, "seed for fault randomness (0: random)")
	f.DurationVar(&latMin, "latency-min", 0, "minimum added latency")
	f.DurationVar(&latMax, "latency-max", 0, "maximum added latency (uniform between min and max)")
	f.Float64Var(&cfg.Faults.ErrorRate, "error-rate", 0, "share of requests answered 500/503")
	f.Float64Var(&cfg.Faults.ThrottleRate, "throttle-rate", 0, "share of requests answered 429")
	f.DurationVar(&retryAfter, "retry-after", time.Second, "Retry-After sent with 429")
	f.Float64Var(&cfg.Faults.ItemFailureRate, "item-failure-rate", 0, "share of items refused permanently (bad number, bad token)")
	f.Float64Var(&cfg.Faults.SlowRate, "slow-rate", 0, "share of requests held for --slow-delay")
	f.DurationVar(&slowDelay, "slow-delay", 30*time.Second, "how long slow requests are held (past the client timeout)")
	f.DurationVar(&outage, "outage", 0, "answer 503 to everything for this long from start")
	f.StringVar(&googleKey, "google-key", "", "a Google service-account key file (or its PEM public key): serve POST /token for it, "+
		"as Google's OAuth2 server, and accept only the tokens granted there at the FCM endpoint")
	return cmd
}

// readGooglePublicKey reads the public half of a service-account key file,
// or a PEM public key.
func readGooglePublicKey(path string) (*rsa.PublicKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var sa struct {
		PrivateKey string `json:"private_key"`
	}
	if json.Unmarshal(raw, &sa) == nil && sa.PrivateKey != "" {
		raw = []byte(sa.PrivateKey)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("neither a service-account key file nor a PEM key")
	}
	if block.Type != "PUBLIC KEY" {
		k, err := providers.ParseRSAPrivateKey(string(raw))
		if err != nil {
			return nil, err
		}
		return &k.PublicKey, nil
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, errors.New("not an RSA key")
	}
	return rk, nil
}
