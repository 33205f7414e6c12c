package providers

import (
	"strings"
	"testing"

	"github.com/goutong/goutong/notification"
)

func answerBatch(ids ...string) []*notification.Notification {
	out := make([]*notification.Notification, len(ids))
	for i, id := range ids {
		out[i] = &notification.Notification{ID: id}
	}
	return out
}

// An endpoint may answer per item in any order, leave items out, or answer
// with no per-item body at all; each item gets its own outcome.
func TestReadWebhookAnswer(t *testing.T) {
	batch := answerBatch("a", "b", "c", "d")
	cases := []struct {
		name, body string
		want       []Outcome
		reason     []string // substrings of each reason, "" for none
	}{
		{"in order", `{"results":[{"id":"a","status":"ok"},{"id":"b","status":"ok"},{"id":"c","status":"ok"},{"id":"d","status":"ok"}]}`,
			[]Outcome{Sent, Sent, Sent, Sent}, []string{"", "", "", ""}},
		{"shuffled, one missing", `{"results":[{"id":"c","status":"retry","error":"busy"},{"id":"a","status":"ok"},{"id":"d","status":"failed","error":"gone"}]}`,
			[]Outcome{Sent, Retriable, Retriable, Permanent}, []string{"", "no result", "busy", "failed gone"}},
		{"no per-item body", `{"ok":true}`, []Outcome{Sent, Sent, Sent, Sent}, []string{"", "", "", ""}},
		{"not JSON", `accepted`, []Outcome{Sent, Sent, Sent, Sent}, []string{"", "", "", ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := make([]Result, len(batch))
			readWebhookAnswer([]byte(c.body), batch, res)
			for i, r := range res {
				if r.Outcome != c.want[i] || !strings.Contains(r.Reason, c.reason[i]) || (c.reason[i] == "") != (r.Reason == "") {
					t.Fatalf("item %d: %+v, want %v with reason %q", i, r, c.want[i], c.reason[i])
				}
				if r.Outcome == Sent && r.MessageID != batch[i].ID {
					t.Fatalf("item %d sent with message id %q", i, r.MessageID)
				}
			}
		})
	}
}

// FuzzWebhookAnswer feeds answer bodies of outside bytes: no panic, every
// item gets an outcome, and an item is sent only under its own id.
func FuzzWebhookAnswer(f *testing.F) {
	for _, s := range []string{
		`{"results":[{"id":"a","status":"ok"},{"id":"b","status":"retry","error":"x"}]}`,
		`{"results":[{"id":"b","status":"failed"},{"id":"b","status":"ok"}]}`, `{"results":[1,"a",null]}`,
		`{"results":{}}`, `[`, "\x00", `{"results":[{"id":1}]}`,
	} {
		f.Add([]byte(s))
	}
	batch := answerBatch("a", "b", "c")
	f.Fuzz(func(t *testing.T, body []byte) {
		res := make([]Result, len(batch))
		readWebhookAnswer(body, batch, res)
		for i, r := range res {
			switch r.Outcome {
			case Sent:
				if r.MessageID != batch[i].ID {
					t.Fatalf("item %d sent as %q", i, r.MessageID)
				}
			case Retriable, Permanent:
				if r.Reason == "" {
					t.Fatalf("item %d failed without a reason", i)
				}
			default:
				t.Fatalf("item %d: no outcome: %+v", i, r)
			}
		}
	})
}
