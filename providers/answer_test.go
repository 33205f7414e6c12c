package providers

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	date := func(d time.Duration, layout string) string { return now.Add(d).Format(layout) }
	cases := []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"120", 2 * time.Minute},
		{"000120", 2 * time.Minute},
		{"900", MaxRetryAfter},
		{"901", MaxRetryAfter},
		{"86400000", MaxRetryAfter},
		// time.Duration(secs) * time.Second wrapped negative past here.
		{"9223372037", MaxRetryAfter},
		{"99999999999999999999999999999", MaxRetryAfter},
		{"-5", 0},
		{"+5", 0},
		{"1.5", 0},
		{"5 ", 0},
		{"5s", 0},
		// Malformed is malformed whatever the digits before it.
		{"99x", 0},
		{"9999x", 0},
		{"99999999999999999999x", 0},
		{"soon", 0},
		{date(2*time.Minute, http.TimeFormat), 2 * time.Minute},
		{date(48*time.Hour, http.TimeFormat), MaxRetryAfter},
		{date(-time.Minute, http.TimeFormat), 0},
		// RFC 9110's obsolete forms, which a recipient must accept.
		{date(3*time.Minute, time.RFC850), 3 * time.Minute},
		{date(4*time.Minute, time.ANSIC), 4 * time.Minute},
	}
	for _, c := range cases {
		if got := parseRetryAfter([]byte(c.v), now); got != c.want {
			t.Errorf("Retry-After %q: %v, want %v", c.v, got, c.want)
		}
	}
}

// FuzzRetryAfter: whatever a provider sends, the hint is within
// [0, MaxRetryAfter], and delta seconds under the cap are read exactly.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "17", "900", "9223372037", "-1", "Wed, 26 Nov 2026 12:05:00 GMT", "1e3", "٣"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		got := parseRetryAfter([]byte(v), now)
		if got < 0 || got > MaxRetryAfter {
			t.Fatalf("Retry-After %q: %v, outside [0, %v]", v, got, MaxRetryAfter)
		}
		digits := v != "" && strings.Trim(v, "0123456789") == ""
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil && digits && secs <= int64(MaxRetryAfter/time.Second) &&
			got != time.Duration(secs)*time.Second {
			t.Fatalf("Retry-After %q: %v, want %d s", v, got, secs)
		}
	})
}

func TestTruncateKeepsCharactersWhole(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 200, "short"},
		{"abcdef", 3, "abc…"},
		{"ab€cd", 3, "ab…"}, // € is 3 bytes from index 2: not cut in it
		{"ab€cd", 5, "ab€…"},
		{"€€", 1, "…"},
	} {
		if got := truncate(c.s, c.n); got != c.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

// FuzzAnswerResult feeds whole provider answers (status, Retry-After,
// body): the outcome is classify's, a hint comes only with a retriable
// one and within bounds, and the reason stays short and, for a UTF-8
// body, UTF-8.
func FuzzAnswerResult(f *testing.F) {
	f.Add(200, "", []byte(`{}`))
	f.Add(429, "30", []byte(`{"error":"slow down"}`))
	f.Add(503, "99999999999", []byte(strings.Repeat("é", 300)))
	f.Add(400, "", []byte("bad \xff request"))
	f.Fuzz(func(t *testing.T, status int, retry string, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		resp := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseResponse(resp)
		resp.SetStatusCode(status)
		resp.Header.Set("Retry-After", retry)
		resp.SetBody(body)
		r := answerResult(resp)
		if r.Outcome != classify(status) {
			t.Fatalf("status %d: outcome %v, want %v", status, r.Outcome, classify(status))
		}
		if r.RetryAfter < 0 || r.RetryAfter > MaxRetryAfter || (r.RetryAfter > 0 && r.Outcome != Retriable) {
			t.Fatalf("status %d, Retry-After %q: hint %v with %v", status, retry, r.RetryAfter, r.Outcome)
		}
		if r.Throttled != (status == 429) {
			t.Fatalf("status %d: throttled %v", status, r.Throttled)
		}
		if r.Outcome == Sent {
			return
		}
		if len(r.Reason) > 200+len("…") || !strings.HasPrefix(r.Reason, "HTTP "+strconv.Itoa(status)) {
			t.Fatalf("status %d: reason %q", status, r.Reason)
		}
		if utf8.Valid(body) && !utf8.ValidString(r.Reason) {
			t.Fatalf("status %d: reason %q cut a character", status, r.Reason)
		}
	})
}
