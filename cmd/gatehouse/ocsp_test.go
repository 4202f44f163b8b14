package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// A manual certificate naming an OCSP responder gets a Good staple,
// persisted so a restart with the responder down still staples, and a
// Revoked answer withdraws the staple instead of keeping the old one.
func TestOCSPStapling(t *testing.T) {
	ca, err := acmetest.NewTestCA("gatehouse test CA")
	if err != nil {
		t.Fatal(err)
	}
	responder, err := acmetest.StartOCSPResponder(ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer responder.Close()
	// short-lived responses (10 s) so the refresher asks again within
	// the test (at half-life)
	responder.SetValidity(-2*time.Second, 10*time.Second)
	certPEM, keyPEM, leaf, err := ca.Issue([]string{"ocsp.test"}, responder.URL(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c.key")
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, keyPEM, 0o600)

	e := &env{t: t, storage: filepath.Join(dir, "storage")}
	e.bind()
	up := upstream(t, "A")
	routesTOML := fmt.Sprintf("[[route]]\nhosts = [\"ocsp.test\"]\ncert = %q\nkey = %q\nupstream = %q\n", certFile, keyFile, up.URL)
	fast := func(o *startOptions) { o.ocspInterval = 200 * time.Millisecond }
	in := e.start(e.config(routesTOML), fast)

	staple := func() (*ocsp.Response, error) {
		c, err := testkit.DialTLS(e.httpsAddr(), "ocsp.test", ca.Pool())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		der := c.ConnectionState().OCSPResponse
		if len(der) == 0 {
			return nil, nil
		}
		return ocsp.ParseResponseForCert(der, leaf, ca.Cert)
	}
	testkit.WaitFor(t, 10*time.Second, "a Good staple", func() error {
		r, err := staple()
		if err != nil {
			return err
		}
		if r == nil || r.Status != ocsp.Good {
			return fmt.Errorf("staple %v", r)
		}
		return nil
	})
	if _, err := exec.LookPath("openssl"); err == nil {
		out, _ := exec.Command("openssl", "s_client", "-connect", e.httpsAddr(), "-servername", "ocsp.test", "-status").CombinedOutput()
		if !strings.Contains(string(out), "Cert Status: good") {
			t.Errorf("openssl s_client -status shows no good staple:\n%s", out)
		}
	}

	// restart with the responder down: the persisted staple is served at once
	_ = in.shutdown(2 * time.Second)
	responder.Fail(503)
	before := responder.Requests()
	e.bind()
	in = e.start(e.config(routesTOML), fast)
	r, err := staple()
	if err != nil || r == nil || r.Status != ocsp.Good {
		t.Fatalf("first handshake after restart (responder down): staple %v, err %v; want the persisted Good one", r, err)
	}
	t.Logf("responder requests during restart: %d", responder.Requests()-before)

	// revocation: the staple is withdrawn, not kept until it expires
	responder.Fail(0)
	responder.SetStatus(leaf.SerialNumber, ocsp.Revoked)
	testkit.WaitFor(t, 15*time.Second, "staple withdrawn after Revoked", func() error {
		r, err := staple()
		if err != nil {
			return err
		}
		if r != nil {
			return fmt.Errorf("still stapling status %d", r.Status)
		}
		return nil
	})
	_ = in
}

// An ACME-issued certificate whose CA names a responder gets stapled too.
func TestOCSPStaplingACME(t *testing.T) {
	e, _, inter := newOCSPEnv(t)
	up := upstream(t, "A")
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"stapled.test\"]\nupstream = %q\n", up.URL)),
		func(o *startOptions) { o.ocspInterval = 200 * time.Millisecond })
	testkit.WaitFor(t, 60*time.Second, "ACME certificate with a Good staple", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "stapled.test", e.roots)
		if err != nil {
			return err
		}
		defer c.Close()
		st := c.ConnectionState()
		if len(st.OCSPResponse) == 0 {
			return fmt.Errorf("no staple yet")
		}
		r, err := ocsp.ParseResponseForCert(st.OCSPResponse, st.PeerCertificates[0], inter)
		if err != nil {
			return err
		}
		if r.Status != ocsp.Good {
			return fmt.Errorf("status %d", r.Status)
		}
		return nil
	})
}
