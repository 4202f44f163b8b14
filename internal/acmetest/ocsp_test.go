package acmetest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

var testHTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}

// fetchOCSP asks the leaf's first OCSP URL (POST, or GET if get) and returns
// the raw response and HTTP status.
func fetchOCSP(t *testing.T, leaf, issuer *x509.Certificate, get bool) ([]byte, int) {
	t.Helper()
	if len(leaf.OCSPServer) == 0 {
		t.Fatal("leaf has no OCSP URL")
	}
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	var resp *http.Response
	if get {
		resp, err = testHTTP.Get(leaf.OCSPServer[0] + url.PathEscape(base64.StdEncoding.EncodeToString(req)))
	} else {
		resp, err = testHTTP.Post(leaf.OCSPServer[0], "application/ocsp-request", bytes.NewReader(req))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b, resp.StatusCode
}

func ocspStatus(t *testing.T, leaf, issuer *x509.Certificate, get bool) *ocsp.Response {
	t.Helper()
	b, code := fetchOCSP(t, leaf, issuer, get)
	if code != http.StatusOK {
		t.Fatalf("OCSP HTTP status %d", code)
	}
	r, err := ocsp.ParseResponseForCert(b, leaf, issuer)
	if err != nil {
		t.Fatalf("ParseResponseForCert: %v", err)
	}
	return r
}

func TestOCSPResponder(t *testing.T) {
	ca, err := NewTestCA("acmetest root")
	if err != nil {
		t.Fatal(err)
	}
	r, err := StartOCSPResponder(ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	certPEM, keyPEM, leaf, err := ca.Issue([]string{"a.test", "127.0.0.1"}, r.URL(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "a.test", Roots: ca.Pool()}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour {
		t.Errorf("validity %v", got)
	}

	for _, get := range []bool{false, true} {
		resp := ocspStatus(t, leaf, ca.Cert, get)
		if resp.Status != ocsp.Good {
			t.Errorf("get=%v: status %d, want Good", get, resp.Status)
		}
		if d := resp.NextUpdate.Sub(resp.ThisUpdate); d != time.Hour {
			t.Errorf("default window %v", d)
		}
		if resp.ThisUpdate.After(time.Now()) {
			t.Errorf("ThisUpdate in the future: %v", resp.ThisUpdate)
		}
	}

	r.SetValidity(-10*time.Second, 30*time.Second)
	r.SetStatus(leaf.SerialNumber, ocsp.Revoked)
	resp := ocspStatus(t, leaf, ca.Cert, false)
	if resp.Status != ocsp.Revoked || resp.RevokedAt.IsZero() {
		t.Errorf("status %d revokedAt %v, want Revoked", resp.Status, resp.RevokedAt)
	}
	if d := resp.NextUpdate.Sub(resp.ThisUpdate); d != 30*time.Second {
		t.Errorf("window %v, want 30s", d)
	}
	if d := time.Until(resp.NextUpdate); d > 21*time.Second || d < 15*time.Second {
		t.Errorf("NextUpdate in %v, want ~20s", d)
	}
	r.SetStatus(leaf.SerialNumber, ocsp.Unknown)
	if resp := ocspStatus(t, leaf, ca.Cert, true); resp.Status != ocsp.Unknown {
		t.Errorf("status %d, want Unknown", resp.Status)
	}

	// A certificate from another issuer is refused.
	other, err := NewTestCA("other root")
	if err != nil {
		t.Fatal(err)
	}
	_, _, otherLeaf, err := other.Issue([]string{"b.test"}, r.URL(), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := fetchOCSP(t, otherLeaf, other.Cert, false)
	var re ocsp.ResponseError
	if _, err := ocsp.ParseResponse(b, other.Cert); !errors.As(err, &re) || re.Status != ocsp.Unauthorized {
		t.Errorf("foreign issuer: err %v, want unauthorized", err)
	}

	r.Fail(http.StatusServiceUnavailable)
	if _, code := fetchOCSP(t, leaf, ca.Cert, false); code != http.StatusServiceUnavailable {
		t.Errorf("Fail(503): status %d", code)
	}
	r.Fail(0)
	if n := r.Requests(); n != 6 {
		t.Errorf("Requests() = %d, want 6", n)
	}
	if n := r.RequestsFor(leaf.SerialNumber); n != 4 {
		t.Errorf("RequestsFor(leaf) = %d, want 4", n)
	}
}

func TestOCSPResponderWithoutIssuer(t *testing.T) {
	r, err := StartOCSPResponder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ca, err := NewTestCA("late root")
	if err != nil {
		t.Fatal(err)
	}
	_, _, leaf, err := ca.Issue([]string{"a.test"}, r.URL(), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := fetchOCSP(t, leaf, ca.Cert, false)
	var re ocsp.ResponseError
	if _, err := ocsp.ParseResponse(b, ca.Cert); !errors.As(err, &re) || re.Status != ocsp.TryLater {
		t.Errorf("before SetIssuer: err %v, want tryLater", err)
	}
	r.SetIssuer(ca.Cert, ca.Key)
	if resp := ocspStatus(t, leaf, ca.Cert, false); resp.Status != ocsp.Good {
		t.Errorf("status %d, want Good", resp.Status)
	}
}
