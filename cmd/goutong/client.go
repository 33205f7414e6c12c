package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// client talks to a running goutong serve.
type client struct {
	server string
	key    string
	http   *http.Client
	// encoding is the Content-Encoding of the bodies given to open
	// (already encoded), "" for none.
	encoding string
}

func addClientFlags(cmd *cobra.Command, c *client) {
	f := cmd.Flags()
	f.StringVar(&c.server, "server", envOr("GOUTONG_SERVER", "http://127.0.0.1:8080"), "the server's API URL (env GOUTONG_SERVER)")
	f.StringVar(&c.key, "api-key", os.Getenv("GOUTONG_API_KEY"), "API key (env GOUTONG_API_KEY)")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// request sends a request and returns the answer's body; a non-2xx answer
// is an error carrying the server's message.
func (c *client) request(method, path, contentType string, body io.Reader) ([]byte, error) {
	if c.http == nil {
		c.http = &http.Client{Timeout: 30 * time.Minute}
	}
	resp, err := c.open(method, path, contentType, body)
	if err != nil {
		return nil, err
	}
	defer resp.Close()
	return io.ReadAll(resp)
}

// open sends a request and returns the 2xx answer's body to read; a
// non-2xx answer is an error carrying the server's message.
func (c *client) open(method, path, contentType string, body io.Reader) (io.ReadCloser, error) {
	if c.http == nil {
		c.http = &http.Client{}
	}
	req, err := http.NewRequest(method, strings.TrimRight(c.server, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.encoding != "" && body != nil {
		req.Header.Set("Content-Encoding", c.encoding)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, &httpError{status: resp.StatusCode, retryAfter: retryAfter(resp.Header.Get("Retry-After")),
			msg: fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(raw))), body: raw}
	}
	return resp.Body, nil
}

// httpError is a non-2xx answer: its status, the wait its Retry-After asks
// for (-1 without one), and the server's message.
type httpError struct {
	status     int
	retryAfter time.Duration
	msg        string
	body       []byte // the answer's (the first 64 KiB)
}

func (e *httpError) Error() string { return e.msg }

// retryAfter reads a Retry-After of delay-seconds (what goutong serve
// sends); -1 for none or another form.
func retryAfter(v string) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || secs < 0 {
		return -1
	}
	return time.Duration(secs) * time.Second
}

// postNotifications posts a send's body and returns the answer; it posts
// again, after the Retry-After the server gives (1 s without one, 30 s at
// most), while it answers that it cannot take the body yet: 409 (another
// request with one of its keys still being accepted), 429 with Retry-After
// (the tenant's quota) or 503 (starting, the backlog, the log
// unavailable); up to retries times. The body's idempotency keys (given or
// derived) make a resend safe: what an earlier attempt accepted is not sent
// again (an item with a key answers as its duplicate; a keyless one, under
// serve's default dedupe.at_ingest, is accepted again and stopped at its
// send).
func (c *client) postNotifications(log io.Writer, contentType string, body []byte, retries int) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		raw, err := c.request("POST", "/v1/notifications", contentType, bytes.NewReader(body))
		var he *httpError
		if err == nil || attempt > retries || !errors.As(err, &he) ||
			(he.status != http.StatusConflict && he.status != http.StatusTooManyRequests && he.status != http.StatusServiceUnavailable) ||
			// A 429 without Retry-After is a batch past the tenant's burst:
			// the same body is refused however long one waits.
			(he.status == http.StatusTooManyRequests && he.retryAfter < 0) {
			return raw, err
		}
		wait := he.retryAfter
		if wait < 0 {
			wait = time.Second
		}
		wait = min(wait, 30*time.Second)
		fmt.Fprintf(log, "goutong send: %s; again in %v (retry %d of %d)\n", he.msg, wait, attempt, retries)
		time.Sleep(wait)
	}
}

// do sends a request and prints the JSON answer, indented.
func (c *client) do(out io.Writer, method, path, contentType string, body io.Reader) error {
	raw, err := c.request(method, path, contentType, body)
	if err != nil {
		return err
	}
	return printIndented(out, raw)
}

// printIndented prints a JSON answer indented (as it is if not JSON).
func printIndented(out io.Writer, raw []byte) error {
	var pretty bytes.Buffer
	if json.Indent(&pretty, raw, "", "  ") == nil {
		raw = pretty.Bytes()
	}
	_, err := fmt.Fprintln(out, strings.TrimSpace(string(raw)))
	return err
}

func newSend() *cobra.Command {
	var c client
	var file string
	var retries int
	var gz bool
	var batch int
	var n struct {
		channel, recipient, template, body, subject, priority, key, tenant string
		vars                                                               map[string]string
		expiresIn                                                          time.Duration
	}
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Send one notification, or a file of them (JSON array or NDJSON), to a running server",
		Example: `  goutong send --channel sms --to +15551234567 --template otp --var code=123456 --priority critical --expires-in 5m
  goutong send --file campaign.ndjson`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				var r io.Reader = os.Stdin
				if file != "-" {
					f, err := os.Open(file)
					if err != nil {
						return err
					}
					defer f.Close()
					r = f
				}
				if batch < 1 {
					return fmt.Errorf("--batch %d: at least 1", batch)
				}
				return c.sendFile(cmd.OutOrStdout(), cmd.ErrOrStderr(), r, batch, gz, retries)
			}
			if n.channel == "" || n.recipient == "" {
				return fmt.Errorf("--channel and --to are required (or --file)")
			}
			m := map[string]any{"channel": n.channel, "recipient": n.recipient}
			set := func(k, v string) {
				if v != "" {
					m[k] = v
				}
			}
			set("priority", n.priority)
			set("idempotency_key", n.key)
			set("tenant", n.tenant)
			set("template", n.template)
			if len(n.vars) > 0 {
				m["vars"] = n.vars
			}
			if n.body != "" {
				m["content"] = map[string]string{"subject": n.subject, "body": n.body}
			}
			if n.expiresIn > 0 {
				m["expires_at"] = time.Now().Add(n.expiresIn).UTC().Format(time.RFC3339Nano)
			}
			b, _ := json.Marshal(m)
			raw, err := c.postNotifications(cmd.ErrOrStderr(), "application/json", b, retries)
			if err != nil {
				return err
			}
			return printIndented(cmd.OutOrStdout(), raw)
		},
	}
	addClientFlags(cmd, &c)
	f := cmd.Flags()
	f.StringVar(&file, "file", "", "a file of notifications: a JSON array or NDJSON (- for stdin)")
	f.BoolVar(&gz, "gzip", false, "send --file's requests gzipped (a tenth of the bytes for a campaign; the server's body limit counts them decompressed)")
	f.IntVar(&batch, "batch", 10000, "--file's notifications a request, at most (and 16 MiB): a file of more is sent in several requests, one after the other")
	f.StringVar(&n.channel, "channel", "", "sms, email, push, webhook or a configured channel")
	f.StringVar(&n.recipient, "to", "", "recipient: phone number, address, device token or URL")
	f.StringVar(&n.template, "template", "", "template name")
	f.StringToStringVar(&n.vars, "var", nil, "template variable name=value (repeatable)")
	f.StringVar(&n.body, "body", "", "literal content instead of a template")
	f.StringVar(&n.subject, "subject", "", "subject of literal content")
	f.StringVar(&n.priority, "priority", "", "critical, high, normal (default) or bulk")
	f.StringVar(&n.key, "idempotency-key", "", "idempotency key (default: derived from channel, recipient, template and vars)")
	f.StringVar(&n.tenant, "tenant", "", "tenant (default: the API key's)")
	f.DurationVar(&n.expiresIn, "expires-in", 0, "never send after this long from now")
	f.IntVar(&retries, "retries", 5, "times to send again after a 409, 429 or 503, waiting what its Retry-After says (idempotency keys make it safe)")
	return cmd
}

func newStatus() *cobra.Command {
	var c client
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a notification's status and history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd.OutOrStdout(), "GET", "/v1/notifications/"+url.PathEscape(args[0]), "", nil)
		},
	}
	addClientFlags(cmd, &c)
	return cmd
}

func newDLQ() *cobra.Command {
	dlq := &cobra.Command{Use: "dlq", Short: "List and replay dead letters on a running server (admin key)"}
	var lc client
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters not replayed yet, with reason, attempts and last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lc.do(cmd.OutOrStdout(), "GET", fmt.Sprintf("/v1/admin/dlq?limit=%d", limit), "", nil)
		},
	}
	addClientFlags(list, &lc)
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (1..10000)")
	var rc client
	var reason string
	replay := &cobra.Command{
		Use:   "replay",
		Short: "Move dead letters back into their priority lanes with attempts reset",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, _ := json.Marshal(map[string]string{"reason": reason})
			return rc.do(cmd.OutOrStdout(), "POST", "/v1/admin/dlq/replay", "application/json", bytes.NewReader(b))
		},
	}
	addClientFlags(replay, &rc)
	replay.Flags().StringVar(&reason, "reason", "", "only letters with this reason (permanent, retries-exhausted, decode, no-provider, expired)")
	dlq.AddCommand(list, replay)
	return dlq
}

func newSnapshot() *cobra.Command {
	var c client
	var out string
	cmd := &cobra.Command{
		Use:   "snapshot --out FILE",
		Short: "Save a copy of a running Kafka node's status and dedupe stores (admin key)",
		Long: `Saves a running Kafka node's stores as a tar (GET /v1/admin/snapshot): every
notification id and idempotency key it knows, and where its status replica
has read the status topic to. A node whose data directory has no stores
starts from it with join: FILE, while the status topic still holds the
offsets it was taken at. The file holds recipients and payloads: keep it
as safe as the node's data directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := c.saveSnapshot(out)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "saved %d bytes to %s\n", n, out)
			return err
		},
	}
	addClientFlags(cmd, &c)
	cmd.Flags().StringVar(&out, "out", "", "the file to write (required; written whole or not at all)")
	cmd.MarkFlagRequired("out") //nolint:errcheck // the flag exists
	return cmd
}

// saveSnapshot writes the server's snapshot to path, which is only ever a
// whole snapshot (writeAtomically).
func (c *client) saveSnapshot(path string) (int64, error) {
	body, err := c.open("GET", "/v1/admin/snapshot", "", nil)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	var n int64
	err = writeAtomically(path, func(w io.Writer) error {
		// Read through as a tar on its way to disk: a stream cut short
		// (the node stopped mid-copy) fails here, not at the join that
		// needs it.
		cw := &countingWriter{w: w}
		defer func() { n = cw.n }()
		if err := readTar(io.TeeReader(body, cw)); err != nil {
			return err
		}
		_, err := io.Copy(cw, body) // the end-of-archive padding
		return err
	})
	return n, err
}

// readTar reads r as a tar archive to its end marker.
func readTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the snapshot is not a whole tar: %w", err)
		}
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
