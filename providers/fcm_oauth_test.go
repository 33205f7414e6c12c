package providers_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/goutong/goutong/notification"
	"github.com/goutong/goutong/providers"
	"github.com/goutong/goutong/providers/mockserver"
)

// serviceAccountKey returns a service-account key file (as Google writes
// them: PKCS #8 PEM) for key, whose tokens come from tokenURI.
func serviceAccountKey(t *testing.T, key *rsa.PrivateKey, tokenURI string) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]string{"type": "service_account", "project_id": "acme-push",
		"private_key_id": "k1", "private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "goutong@acme-push.iam.gserviceaccount.com", "token_uri": tokenURI})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFCMServiceAccountTokens: the adapter mints an access token from a
// service-account key (the mock verifies the signed assertion, as Google
// does), reuses it across sends, fetches a new one when it nears expiry,
// and sends nothing, retriably, when the token server refuses the key.
func TestFCMServiceAccountTokens(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// 11 s tokens: golang.org/x/oauth2 renews 10 s before expiry, so each
	// is used for one second.
	m, err := mockserver.Start(mockserver.Config{Addr: "127.0.0.1:0", Seed: 1, GoogleKey: &key.PublicKey, TokenTTL: 11 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ep := providers.EndpointConfig{BaseURL: m.URL(), RequestTimeout: 5 * time.Second}
	f, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ServiceAccount: serviceAccountKey(t, key, m.URL()+"/token"), Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	send := func(from int) []providers.Result {
		batch := batchOf(notification.Push, 3, func(i int) string { return recipientFor(notification.Push, from+i) })
		for _, n := range batch {
			n.ID = notification.NewID()
		}
		res := make([]providers.Result, len(batch))
		f.Send(context.Background(), batch, res)
		return res
	}
	for i, r := range send(0) {
		if r.Outcome != providers.Sent {
			t.Fatalf("item %d: %+v", i, r)
		}
	}
	for i, r := range send(3) {
		if r.Outcome != providers.Sent {
			t.Fatalf("second batch, item %d: %+v", i, r)
		}
	}
	if got := m.Stats().Tokens; got != 1 {
		t.Fatalf("%d tokens granted for two batches within the token's life, want 1", got)
	}
	time.Sleep(1500 * time.Millisecond)
	for i, r := range send(6) {
		if r.Outcome != providers.Sent {
			t.Fatalf("after renewal, item %d: %+v", i, r)
		}
	}
	if got := m.Stats().Tokens; got != 2 {
		t.Fatalf("%d tokens granted, want a second one once the first neared expiry", got)
	}

	// A key the token server does not know: no token, nothing sent.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ServiceAccount: serviceAccountKey(t, other, m.URL()+"/token"), Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	before := m.Stats()
	res := make([]providers.Result, 1)
	bad.Send(context.Background(), batchOf(notification.Push, 1, func(int) string { return "tok" }), res)
	if res[0].Outcome != providers.Retriable || !strings.Contains(res[0].Reason, "access token") {
		t.Fatalf("refused key: %+v", res[0])
	}
	if after := m.Stats(); after.Received != before.Received || after.Tokens != before.Tokens {
		t.Fatalf("refused key: stats moved from %+v to %+v", before, after)
	}

	// A fixed token the mock never granted is refused at the FCM endpoint.
	fixed, err := providers.NewFCM(providers.FCMConfig{Endpoint: ep, ProjectID: "acme-push", Token: "ya29.forged", Templates: templates(t)})
	if err != nil {
		t.Fatal(err)
	}
	fixed.Send(context.Background(), batchOf(notification.Push, 1, func(int) string { return "tok" }), res)
	if res[0].Outcome == providers.Sent {
		t.Fatalf("forged token: %+v", res[0])
	}
}

func TestFCMConfigErrors(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sa := serviceAccountKey(t, key, "http://127.0.0.1:1/token")
	for name, cfg := range map[string]providers.FCMConfig{
		"neither":               {ProjectID: "p"},
		"both":                  {ServiceAccount: sa, Token: "t"},
		"not json":              {ServiceAccount: []byte("{")},
		"not a service account": {ServiceAccount: []byte(`{"type":"authorized_user","private_key":"x","client_email":"a@b"}`)},
		"bad key":               {ServiceAccount: []byte(`{"type":"service_account","project_id":"p","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","client_email":"a@b"}`)},
		"no project":            {ServiceAccount: []byte(strings.Replace(string(sa), `"project_id":"acme-push",`, "", 1))},
	} {
		if _, err := providers.NewFCM(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
