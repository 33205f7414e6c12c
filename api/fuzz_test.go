package api

import (
	"testing"

	"github.com/goutong/goutong/notification"
)

// FuzzDecodeBody feeds request bodies of outside bytes to the ingest
// decoder: it never panics, and it either rejects with errors that say what
// is wrong or returns valid notifications bound to a tenant.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{
		`{"channel":"sms","recipient":"+15551234567","template":"otp","vars":{"code":"1"}}`,
		`[{"channel":"webhook","recipient":"https://h.example","content":{"body":"x"}},{"channel":"email"}]`,
		"{\"channel\":\"push\",\"recipient\":\"tok\",\"content\":{\"body\":\"b\"},\"priority\":\"bulk\"}\n\n{oops\n",
		`[1,"a",null,{}]`, `{"channel":"sms","recipient":"x","template":"t","not_before":"2026-13-01T00:00:00Z"}`,
		`{"tenant":"other","channel":"sms","recipient":"x","content":{"body":"b"}}`, "", "[", "\x00\xff",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	codec := notification.NewCodec()
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) {
		ct := "application/json"
		if ndjson {
			ct = "application/x-ndjson"
		}
		for _, key := range []Key{{}, {Tenant: "acme"}} {
			ns, _, errs, status := decodeBody(codec, body, ct, key, 50, nil)
			if status != 0 {
				if len(errs) == 0 || errs[0].Code == "" || errs[0].Message == "" {
					t.Fatalf("rejected (%d) without a clear error: %+v", status, errs)
				}
				continue
			}
			if len(ns) == 0 || len(ns) > 50 {
				t.Fatalf("accepted %d notifications", len(ns))
			}
			for _, n := range ns {
				if err := codec.Validate(n); err != nil {
					t.Fatalf("accepted an invalid notification: %v", err)
				}
				if n.Tenant == "" || (key.Tenant != "" && n.Tenant != key.Tenant) {
					t.Fatalf("tenant %q with key tenant %q", n.Tenant, key.Tenant)
				}
			}
		}
	})
}
