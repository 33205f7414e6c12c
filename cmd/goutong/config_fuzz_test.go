package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfig feeds config files: a file is refused with an error that
// says it is the config's, or it loads and passes through the checks
// serve makes before it opens anything (dedupe options, status webhooks).
func FuzzConfig(f *testing.F) {
	doc, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		f.Fatal(err)
	}
	if _, rest, ok := strings.Cut(string(doc), "```yaml\n"); ok {
		block, _, _ := strings.Cut(rest, "```")
		f.Add([]byte(block))
	}
	for _, s := range []string{
		"engine: {ring_size: -5, backoff_max: 1y}\n", "kafka: {a: b}\n", "channels: {sms: [1, 2]}\n",
		"dedupe: {window: .nan}\n", "status_webhooks: {acme: {states: [sent, bogus]}}\n", "partitions: 1e400\n",
		"api: {keys: [{name: x, sha256: zz}]}\n", "templates: {otp: {body: '{{.code'}}\n", "\x00", "- a\n- b\n",
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := loadConfig(path)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config") {
				t.Fatalf("error that does not name the config: %v", err)
			}
			return
		}
		if _, err := dedupeOptions(c); err != nil && !strings.HasPrefix(err.Error(), "config ") {
			t.Fatalf("dedupe options: %v", err)
		}
		if _, err := statusWebhooks(c); err != nil && !strings.HasPrefix(err.Error(), "config ") {
			t.Fatalf("status webhooks: %v", err)
		}
	})
}
