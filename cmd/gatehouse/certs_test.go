package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// servedLeaf returns the certificate gatehouse serves for name.
func servedLeaf(t testing.TB, addr, name string, roots *x509.CertPool) (*x509.Certificate, []byte, error) {
	t.Helper()
	c, err := testkit.DialTLS(addr, name, roots)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	st := c.ConnectionState()
	return st.PeerCertificates[0], st.OCSPResponse, nil
}

func runCerts(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := realMain(append([]string{"certs"}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

// `gatehouse certs` shows, from storage alone, every name's certificate
// (the one actually served), when it renews and by which rule, its ARI
// window, its staple; the same with gatehouse running or stopped. The
// admin listener exports expiry and staple age per name.
func TestCertsCommand(t *testing.T) {
	e, _, inter := newOCSPEnv(t)
	e.dns.SetA("unreachable.test", "127.0.0.9") // validation cannot reach gatehouse: no certificate

	ca, err := acmetest.NewTestCA("certs test CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, manualLeaf, err := ca.Issue([]string{"manual.test"}, "", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "m.pem"), filepath.Join(dir, "m.key")
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, keyPEM, 0o600)
	ask := newAskServer(t)
	up := upstream(t, "C")
	cfgPath := e.config(fmt.Sprintf(`
[on_demand]
ask = "%[1]s/check"

[[route]]
hosts    = ["a.test", "unreachable.test"]
upstream = %[2]q

[[route]]
hosts    = ["manual.test"]
cert     = %[3]q
key      = %[4]q
upstream = %[2]q

[[route]]
hosts    = ["localhost"]
tls      = "internal"
upstream = %[2]q

[[route]]
hosts    = ["*.od.test"]
upstream = %[2]q
`, ask.URL, up.URL, certFile, keyFile))
	in := e.start(cfgPath, func(o *startOptions) { o.ocspInterval = 200 * time.Millisecond })

	var aLeaf *x509.Certificate
	testkit.WaitFor(t, 60*time.Second, "a.test certificate with a staple", func() error {
		leaf, staple, err := servedLeaf(t, e.httpsAddr(), "a.test", e.roots)
		if err != nil {
			return err
		}
		if len(staple) == 0 {
			return fmt.Errorf("no staple yet")
		}
		aLeaf = leaf
		return nil
	})
	odLeaf, _, err := servedLeaf(t, e.httpsAddr(), "x.od.test", e.roots)
	if err != nil {
		t.Fatalf("on-demand name: %v", err)
	}
	var internalLeaf *x509.Certificate
	testkit.WaitFor(t, 10*time.Second, "internal certificate", func() error {
		internalLeaf, _, err = servedLeaf(t, e.httpsAddr(), "localhost", nil)
		return err
	})
	// the staple is persisted by the refresher right after it is served
	testkit.WaitFor(t, 5*time.Second, "persisted staple", func() error {
		out, _, _ := runCerts(t, "--config", cfgPath, "--json")
		if !strings.Contains(out, `"status": "good"`) {
			return fmt.Errorf("no persisted staple in %s", out)
		}
		return nil
	})

	check := func(t *testing.T) {
		out, errOut, code := runCerts(t, "--config", cfgPath, "--json")
		if code != 0 {
			t.Fatalf("certs --json: exit %d: %s", code, errOut)
		}
		var infos []tlsconfig.CertInfo
		if err := json.Unmarshal([]byte(out), &infos); err != nil {
			t.Fatalf("certs --json output is not JSON: %v\n%s", err, out)
		}
		by := map[string]tlsconfig.CertInfo{}
		for _, ci := range infos {
			by[ci.Name] = ci
		}
		a := by["a.test"]
		if a.Source != "acme" || a.State != "ok" || a.Route != 1 || a.Serial != aLeaf.SerialNumber.Text(16) ||
			!a.NotAfter.Equal(aLeaf.NotAfter) || !strings.HasPrefix(a.Issuer, "127.0.0.1-") {
			t.Errorf("a.test: %+v; want acme, ok, route 1, the served serial %s and NotAfter %s",
				a, aLeaf.SerialNumber.Text(16), aLeaf.NotAfter)
		}
		if a.RenewAt.Before(aLeaf.NotBefore) || a.RenewAt.After(aLeaf.NotAfter) {
			t.Errorf("a.test renews at %s, outside its validity %s..%s", a.RenewAt, aLeaf.NotBefore, aLeaf.NotAfter)
		}
		if a.RenewBy == "ari" && (a.ARI == nil || a.ARI.WindowStart.IsZero()) {
			t.Errorf("a.test renews by ARI but shows no window: %+v", a.ARI)
		}
		t.Logf("a.test renews at %s by %s, ARI %+v", a.RenewAt, a.RenewBy, a.ARI)
		if a.Staple == nil || a.Staple.Status != "good" || a.Staple.ThisUpdate.IsZero() || a.Staple.NextUpdate.IsZero() {
			t.Errorf("a.test staple %+v, want the persisted good one", a.Staple)
		}

		if u := by["unreachable.test"]; u.State != "missing" || u.Serial != "" || u.Route != 1 || u.LastError == "" {
			t.Errorf("unreachable.test: %+v, want missing, with the reason (last error) stored by the order pacing", u)
		}
		if m := by["manual.test"]; m.Source != "manual" || m.Serial != manualLeaf.SerialNumber.Text(16) || m.StorageKey != certFile {
			t.Errorf("manual.test: %+v", m)
		}
		if l := by["localhost"]; l.Source != "internal" || l.Issuer != "internal" || l.Serial != internalLeaf.SerialNumber.Text(16) {
			t.Errorf("localhost: %+v, want internal with serial %s", l, internalLeaf.SerialNumber.Text(16))
		}
		if p := by["*.od.test"]; p.State != "pattern" || p.Source != "on_demand" || p.Route != 4 {
			t.Errorf("*.od.test: %+v", p)
		}
		if o := by["x.od.test"]; o.Source != "on_demand" || o.Route != 4 || o.Serial != odLeaf.SerialNumber.Text(16) {
			t.Errorf("x.od.test: %+v, want on_demand on route 4 with serial %s", o, odLeaf.SerialNumber.Text(16))
		}

		// the table for humans names the same certificates
		table, _, code := runCerts(t, "--config", cfgPath)
		if code != 0 {
			t.Fatalf("certs: exit %d", code)
		}
		for _, want := range []string{"NAME", "a.test", aLeaf.SerialNumber.Text(16), "unreachable.test", "missing", "x.od.test", "good,"} {
			if !strings.Contains(table, want) {
				t.Errorf("table lacks %q:\n%s", want, table)
			}
		}
		t.Logf("gatehouse certs:\n%s", table)
	}
	t.Run("while running", check)

	t.Run("metrics: expiry and staple age per name", func(t *testing.T) {
		adm := e.admLn.Addr().String()
		if got := metric(t, adm, `gatehouse_cert_not_after_seconds{name="a.test"}`); got != float64(aLeaf.NotAfter.Unix()) {
			t.Errorf("expiry gauge for a.test = %v, want %d", got, aLeaf.NotAfter.Unix())
		}
		if got := metric(t, adm, `gatehouse_cert_not_after_seconds{name="x.od.test"}`); got != float64(odLeaf.NotAfter.Unix()) {
			t.Errorf("expiry gauge for x.od.test = %v, want %d", got, odLeaf.NotAfter.Unix())
		}
		if got := metric(t, adm, `gatehouse_cert_not_after_seconds{name="manual.test"}`); got != float64(manualLeaf.NotAfter.Unix()) {
			t.Errorf("expiry gauge for manual.test = %v, want %d", got, manualLeaf.NotAfter.Unix())
		}
		_, staple, err := servedLeaf(t, e.httpsAddr(), "a.test", e.roots)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ocsp.ParseResponseForCert(staple, aLeaf, inter)
		if err != nil {
			t.Fatal(err)
		}
		want := time.Since(r.ThisUpdate).Seconds()
		if got := metric(t, adm, `gatehouse_ocsp_staple_age_seconds{name="a.test"}`); got < want-2 || got > want+2 {
			t.Errorf("staple age for a.test = %v s, want about %v (now - ThisUpdate of the served staple)", got, want)
		}
	})

	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Run("while stopped", check)

	t.Run("--root prints the internal CA root", func(t *testing.T) {
		out, _, code := runCerts(t, "--config", cfgPath, "--root")
		file, _ := os.ReadFile(filepath.Join(e.storage, "pki", "root.crt"))
		if code != 0 || out != string(file) || !strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----") {
			t.Errorf("certs --root: exit %d, output %q", code, out)
		}
	})

}
