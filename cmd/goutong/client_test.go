package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// goutong send sends the same body again after a 409, 429 or 503, as many
// times as --retries allows, and never after another answer.
func TestSendRetriesWhatTheServerCannotTakeYet(t *testing.T) {
	for _, c := range []struct {
		name    string
		answers []int // the server's answers, in order; 202 after them
		retries string
		posts   int64
		ok      bool
	}{
		{name: "in-progress-then-accepted", answers: []int{409, 503}, retries: "5", posts: 3, ok: true},
		{name: "quota-past-the-retries", answers: []int{429, 429, 429}, retries: "2", posts: 3},
		{name: "bad-request-not-retried", answers: []int{400}, retries: "5", posts: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var posts atomic.Int64
			var bodies [][]byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				bodies = append(bodies, b)
				n := posts.Add(1)
				w.Header().Set("Content-Type", "application/json")
				if int(n) <= len(c.answers) {
					w.Header().Set("Retry-After", "0")
					w.WriteHeader(c.answers[n-1])
					w.Write([]byte(`{"error":{"code":"x","message":"not yet"}}`)) //nolint:errcheck // to the test's client
					return
				}
				w.WriteHeader(http.StatusAccepted)
				w.Write([]byte(`{"id":"01M8","status":"accepted"}`)) //nolint:errcheck // to the test's client
			}))
			defer srv.Close()
			var out bytes.Buffer
			root := newRoot()
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs([]string{"send", "--server", srv.URL, "--channel", "sms", "--to", "+15551234567", "--template", "otp",
				"--var", "code=123456", "--retries", c.retries})
			err := root.ExecuteContext(context.Background())
			if (err == nil) != c.ok || posts.Load() != c.posts {
				t.Fatalf("%d posts, %v; want %d, ok %v\n%s", posts.Load(), err, c.posts, c.ok, out.String())
			}
			for _, b := range bodies[1:] {
				if !bytes.Equal(b, bodies[0]) {
					t.Fatalf("a retry sent %s, the first %s", b, bodies[0])
				}
			}
			if c.ok && !strings.Contains(out.String(), `"accepted"`) {
				t.Fatalf("the answer was not printed:\n%s", out.String())
			}
		})
	}
}

// send --file --gzip posts the file gzipped, saying so, and the server's
// answer is printed as without it.
func TestSendFileGzipped(t *testing.T) {
	file := filepath.Join(t.TempDir(), "campaign.ndjson")
	data := []byte(`{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":"1"}}` + "\n" +
		`{"channel":"sms","recipient":"+15551234568","template":"otp","vars":{"code":"2"}}` + "\n")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var enc, ct string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enc, ct = r.Header.Get("Content-Encoding"), r.Header.Get("Content-Type")
		zr, err := gzip.NewReader(r.Body)
		if err == nil {
			got, err = io.ReadAll(zr)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{"accepted":2,"duplicates":0,"items":[]}`)) //nolint:errcheck // to the test's client
	}))
	defer srv.Close()
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"send", "--server", srv.URL, "--file", file, "--gzip"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if enc != "gzip" || ct != "application/x-ndjson" || !bytes.Equal(got, data) || !strings.Contains(out.String(), `"accepted": 2`) {
		t.Fatalf("Content-Encoding %q, Content-Type %q, body %q; printed %s", enc, ct, got, out.String())
	}
}
