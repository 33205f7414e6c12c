package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
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
		noWait  bool // answers without Retry-After
	}{
		{name: "in-progress-then-accepted", answers: []int{409, 503}, retries: "5", posts: 3, ok: true},
		{name: "quota-past-the-retries", answers: []int{429, 429, 429}, retries: "2", posts: 3},
		{name: "bad-request-not-retried", answers: []int{400}, retries: "5", posts: 1},
		// The server's answer to a batch past the tenant's burst: waiting does not help.
		{name: "429-without-retry-after-not-retried", answers: []int{429}, retries: "5", posts: 1, noWait: true},
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
					if !c.noWait {
						w.Header().Set("Retry-After", "0")
					}
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

// batchServer answers ingest requests as goutong serve does (202, an id an
// item, or 400 naming the index of each item holding "bad"), recording
// each request's content type and items.
type batchServer struct {
	mu       sync.Mutex
	types    []string
	requests [][]string
}

func (s *batchServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var items []string
	if r.Header.Get("Content-Type") == "application/json" && bytes.HasPrefix(body, []byte("[")) {
		var raw []json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, m := range raw {
			items = append(items, string(m))
		}
	} else {
		for _, l := range strings.Split(string(body), "\n") {
			if strings.TrimSpace(l) != "" {
				items = append(items, l)
			}
		}
	}
	s.mu.Lock()
	s.types = append(s.types, r.Header.Get("Content-Type"))
	s.requests = append(s.requests, items)
	n := len(s.requests)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	var errs []string
	for i, it := range items {
		if strings.Contains(it, "bad") {
			errs = append(errs, fmt.Sprintf(`{"code":"invalid_field","field":"recipient","index":%d,"message":"missing"}`, i))
		}
	}
	if len(errs) > 0 {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":%s,"errors":[%s]}`, errs[0], strings.Join(errs, ","))
		return
	}
	w.WriteHeader(http.StatusAccepted)
	ids := make([]string, len(items))
	for i := range items {
		ids[i] = fmt.Sprintf(`{"id":"r%d-%d","status":"accepted"}`, n, i)
	}
	fmt.Fprintf(w, `{"accepted":%d,"duplicates":0,"items":[%s]}`, len(items), strings.Join(ids, ","))
}

// send --file sends a file of more notifications than --batch in several
// requests, NDJSON as NDJSON and an array as arrays, and prints each
// answer on a line with the file positions it covers; a refused request
// stops it, naming the file's line of each bad item and what was accepted
// before.
func TestSendFileInBatches(t *testing.T) {
	item := func(i int, recipient string) string {
		return fmt.Sprintf(`{"channel":"sms","recipient":%q,"template":"otp","vars":{"code":"%d"}}`, recipient, i)
	}
	var ndjson, array []string
	for i := range 25 {
		ndjson = append(ndjson, item(i, "+1555000"+strconv.Itoa(1000+i)))
		if i == 12 {
			ndjson = append(ndjson, "") // a blank line: no item, but a line
		}
		array = append(array, item(i, "+1555000"+strconv.Itoa(1000+i)))
	}
	run := func(t *testing.T, content string, args ...string) (*batchServer, string, string, error) {
		file := filepath.Join(t.TempDir(), "campaign")
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		srv := &batchServer{}
		hs := httptest.NewServer(srv)
		defer hs.Close()
		var out, errOut bytes.Buffer
		root := newRoot()
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs(append([]string{"send", "--server", hs.URL, "--file", file, "--retries", "0"}, args...))
		err := root.ExecuteContext(context.Background())
		return srv, out.String(), errOut.String(), err
	}
	t.Run("ndjson", func(t *testing.T) {
		srv, out, errOut, err := run(t, strings.Join(ndjson, "\n")+"\n", "--batch", "10")
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		if len(srv.requests) != 3 || len(srv.requests[0]) != 10 || len(srv.requests[2]) != 5 || srv.types[0] != "application/x-ndjson" {
			t.Fatalf("requests of %d items (%v)", len(srv.requests), srv.types)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		// The blank line after item 12 (line 13) moves the later items a line down.
		if len(lines) != 3 || !strings.HasPrefix(lines[0], `{"from":1,"to":10,"answer":{"accepted":10,`) ||
			!strings.HasPrefix(lines[1], `{"from":11,"to":21,`) || !strings.HasPrefix(lines[2], `{"from":22,"to":26,`) {
			t.Fatalf("printed:\n%s", out)
		}
		if !strings.Contains(errOut, "25 notifications in 3 requests: 25 accepted, 0 duplicates") {
			t.Fatalf("no total: %s", errOut)
		}
	})
	t.Run("array", func(t *testing.T) {
		srv, out, _, err := run(t, "[\n"+strings.Join(array, ",\n")+"\n]\n", "--batch", "10", "--gzip=false")
		if err != nil {
			t.Fatal(err)
		}
		if len(srv.requests) != 3 || len(srv.requests[1]) != 10 || srv.types[2] != "application/json" ||
			srv.requests[2][4] != array[24] || !strings.Contains(out, `{"from":21,"to":25,`) {
			t.Fatalf("%d requests (%v), printed:\n%s", len(srv.requests), srv.types, out)
		}
	})
	t.Run("one-request", func(t *testing.T) {
		_, out, _, err := run(t, strings.Join(ndjson[:5], "\n"))
		if err != nil || !strings.Contains(out, "\"accepted\": 5") || strings.Contains(out, `"from"`) {
			t.Fatalf("%v; printed:\n%s", err, out)
		}
	})
	t.Run("refused", func(t *testing.T) {
		bad := slices.Clone(ndjson)
		bad[15] = item(14, "bad")                                                        // line 18: the second request's sixth item
		srv, out, _, err := run(t, "\n\n"+strings.Join(bad, "\n")+"\n", "--batch", "10") // two blank lines first
		if err == nil || len(srv.requests) != 2 {
			t.Fatalf("%d requests, %v", len(srv.requests), err)
		}
		for _, want := range []string{"the request of lines 13-23", "line 18: invalid_field recipient: missing",
			"1 requests before it (10 notifications) were accepted"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q lacks %q", err, want)
			}
		}
		if !strings.HasPrefix(out, `{"from":3,"to":12,`) {
			t.Fatalf("the accepted request's answer was not printed:\n%s", out)
		}
	})
}
