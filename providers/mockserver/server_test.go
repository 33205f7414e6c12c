package mockserver

import (
	"encoding/json"
	"fmt"
	"hash/maphash"
	"testing"
	"unsafe"
)

// The counts are what every each-once test relies on: ids are counted
// once as unique, a repeat once as a duplicate however often it comes, and
// nothing depends on the request's memory after the call (a parser reuses
// it).
func TestAcceptCounts(t *testing.T) {
	s := &Server{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, stats: Stats{ByChannel: map[string]int64{}}}
	if got := s.Count("a"); got != 0 {
		t.Fatalf("count of %q before any request = %d", "a", got)
	}
	req := make([]byte, 0, 64)
	send := func(ids ...string) {
		views := make([]string, len(ids))
		req = req[:0]
		for i, id := range ids {
			start := len(req)
			req = append(req, id...)
			views[i] = unsafe.String(unsafe.SliceData(req[start:]), len(id))
		}
		s.accept("webhook", views...)
		for i := range req { // the next request overwrites the buffer
			req[i] = 'x'
		}
	}
	send("a", "b", "a")
	send("c", "a", "", "")
	send("b")
	for i := range 100_000 {
		send(fmt.Sprintf("id-%06d", i), fmt.Sprintf("id-%06d", i/2))
	}
	n := 100_000
	// id k comes as itself and as the half of 2k and 2k+1.
	want := map[string]int{"a": 3, "b": 2, "c": 1, "": 2, "id-000000": 3, "id-000001": 3,
		fmt.Sprintf("id-%06d", n/2-1): 3, fmt.Sprintf("id-%06d", n/2): 1, fmt.Sprintf("id-%06d", n-1): 1}
	for id, n := range want {
		if got := s.Count(id); got != n {
			t.Errorf("count of %q = %d, want %d", id, got, n)
		}
	}
	st := s.stats
	if wantU := int64(4 + n); st.Unique != wantU {
		t.Errorf("unique = %d, want %d", st.Unique, wantU)
	}
	// a, b, "" and ids 0 .. n/2-1 are repeated.
	if wantD := int64(3 + n/2); st.Duplicates != wantD {
		t.Errorf("duplicates = %d, want %d", st.Duplicates, wantD)
	}
	if wantR := int64(8 + 2*n); st.Received != wantR || st.ByChannel["webhook"] != wantR {
		t.Errorf("received = %d (by channel %d), want %d", st.Received, st.ByChannel["webhook"], wantR)
	}
	if s.seen.len() != 4+n {
		t.Errorf("%d ids kept, want %d", s.seen.len(), 4+n)
	}
	if got := s.Count("never sent"); got != 0 {
		t.Errorf("count of an id never sent = %d", got)
	}
	s.Reset()
	if got := s.Count("a"); got != 0 || s.stats.Unique != 0 {
		t.Errorf("after Reset: count of %q = %d, unique = %d", "a", got, s.stats.Unique)
	}
}

// A webhook batch is answered item by item: an item without an id or a
// recipient fails alone, an "invalid" recipient is refused, and only the
// accepted ids are counted. A single item that is not an object is a 400.
func TestWebhookItems(t *testing.T) {
	s, err := Start(Config{Addr: "127.0.0.1:0", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := `[{"id":"a","channel":"webhook","recipient":"https://h.example"},` +
		`{"channel":"webhook","recipient":"https://h.example"},` +
		`{"id":"c","recipient":""},` +
		`{"id":"d","recipient":"https://invalid.example"},` +
		`7,` +
		`{"id":"f","recipient":"https://h.example"}]`
	ctx := request(s, "POST", "/webhook/orders", "application/json", "", []byte(body))
	if st := ctx.Response.StatusCode(); st != 200 {
		t.Fatalf("batch answered %d: %s", st, ctx.Response.Body())
	}
	var got struct {
		Results []struct{ ID, Status, Error string }
	}
	if err := json.Unmarshal(ctx.Response.Body(), &got); err != nil {
		t.Fatal(err)
	}
	want := []struct{ id, status, error string }{
		{"a", "ok", ""},
		{"", "failed", "id: a non-empty string is required"},
		{"", "failed", "recipient: a non-empty string is required"},
		{"d", "failed", "recipient refused"},
		{"", "failed", "value doesn't contain object; it contains number"},
		{"f", "ok", ""},
	}
	if len(got.Results) != len(want) {
		t.Fatalf("%d results, want %d: %s", len(got.Results), len(want), ctx.Response.Body())
	}
	for i, w := range want {
		if r := got.Results[i]; r.ID != w.id || r.Status != w.status || r.Error != w.error {
			t.Errorf("result %d = %+v, want %+v", i, r, w)
		}
	}
	st := s.Stats()
	if st.Received != 2 || st.Rejected != 4 || s.Count("a") != 1 || s.Count("f") != 1 || s.Count("d") != 0 {
		t.Errorf("received %d, rejected %d, a %d, f %d, d %d; want 2, 4, 1, 1, 0",
			st.Received, st.Rejected, s.Count("a"), s.Count("f"), s.Count("d"))
	}
	if ctx := request(s, "POST", "/webhook/orders", "application/json", "", []byte(`"x"`)); ctx.Response.StatusCode() != 400 {
		t.Errorf("a single non-object answered %d", ctx.Response.StatusCode())
	}
}
