package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Certificates already in storage at start are loaded lazily (on first
// handshake), but renewal does not wait for traffic: a stored certificate
// that has expired, and one that becomes due a few seconds after start,
// are renewed through the CA without any handshake; a valid one is
// neither ordered nor loaded. Until renewed, the expired one is not
// called ready.
func TestStoredDueRenewedWithoutHandshake(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "A")
	ca, err := acmetest.NewTestCA("earlier CA")
	if err != nil {
		t.Fatal(err)
	}
	st := &certmagic.FileStorage{Path: e.storage}
	issuerKey := (&certmagic.ACMEIssuer{CA: e.pebble.DirectoryURL}).IssuerKey()
	plant := func(name string, validity time.Duration) {
		certPEM, keyPEM, _, err := ca.Issue([]string{name}, "", validity)
		if err != nil {
			t.Fatal(err)
		}
		meta, _ := json.Marshal(map[string]any{"sans": []string{name}})
		for key, v := range map[string][]byte{
			certmagic.StorageKeys.SitePrivateKey(issuerKey, name): keyPEM,
			certmagic.StorageKeys.SiteCert(issuerKey, name):       certPEM,
			certmagic.StorageKeys.SiteMeta(issuerKey, name):       meta,
		} {
			if err := st.Store(context.Background(), key, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	plant("expired.test", time.Second)
	plant("ok.test", 30*24*time.Hour)
	time.Sleep(2 * time.Second) // expired.test is past its NotAfter
	// short-lived: renewed at half-life, 6 s from now; not due at start
	plant("due.test", 12*time.Second)

	var routes string
	for _, n := range []string{"expired.test", "due.test", "ok.test"} {
		routes += routeTOML(n, up.URL)
	}
	in := e.start(e.config(routes), fastRenew)

	// the expired one is reported, not called ready, until renewed
	readyz := func() (int, map[string]any) {
		res, err := http.Get("http://" + e.admLn.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(res.Body).Decode(&body)
		return res.StatusCode, body
	}
	var sawExpired bool
	for _, name := range []string{"expired.test", "due.test"} {
		testkit.WaitFor(t, 60*time.Second, name+" renewed by the CA without a handshake", func() error {
			if !sawExpired {
				for _, s := range in.certs.Status() {
					if s.Name == "expired.test" && s.State == "expired" && s.LastError != "" {
						sawExpired = true
					}
				}
			}
			if n := e.pebble.Issued(name); n < 1 {
				return fmt.Errorf("Pebble issued %d certificates", n)
			}
			return nil
		})
	}
	if !sawExpired {
		t.Errorf("expired.test was never reported as expired before its renewal (status: %+v)", in.certs.Status())
	}
	if n := e.pebble.Orders("ok.test"); n != 0 {
		t.Errorf("ok.test (valid, not due) was ordered %d times", n)
	}
	if n := in.certs.StoredLoads(); n != 2 {
		t.Errorf("%d certificates loaded from storage before any handshake, want 2 (the two due ones)", n)
	}
	// now the handshakes: the renewed ones verify against the CA's roots
	for _, name := range []string{"expired.test", "due.test"} {
		leaf := waitLeaf(t, e, name, 20*time.Second)
		if leaf.Issuer.CommonName == "earlier CA" {
			t.Errorf("%s still served the stored certificate", name)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "ready with every stored certificate checked", func() error {
		code, body := readyz()
		detail, _ := body["detail"].(map[string]any)
		if code != 200 || detail == nil || detail["stored_unchecked"] != float64(0) {
			return fmt.Errorf("readyz %d %v", code, body)
		}
		return nil
	})
	// ok.test: its stored certificate, loaded on this first handshake
	c, err := testkit.DialTLS(e.httpsAddr(), "ok.test", ca.Pool())
	if err != nil {
		t.Fatalf("ok.test: %v", err)
	}
	c.Close()
	if n := in.certs.StoredLoads(); n != 3 {
		t.Errorf("%d certificates loaded after ok.test's first handshake, want 3", n)
	}
}
