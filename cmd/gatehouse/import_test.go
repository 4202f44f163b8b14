package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
)

// servedSerial returns the serial of the certificate gatehouse serves
// for name (hex), verifying it against roots.
func servedSerial(addr, name string, roots *x509.CertPool) (string, error) {
	c, err := dialTLS(addr, name, roots)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

// A Go program's autocert cache moves into gatehouse: the certificates
// autocert obtained (ECDSA, and RSA as "+rsa") are served by gatehouse
// with the CA down, and no new order reaches the CA.
func TestImportAutocert(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{AlwaysValid: true})
	cacheDir := filepath.Join(t.TempDir(), "autocert")
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(cacheDir),
		HostPolicy: autocert.HostWhitelist("go-app.test", "legacy-rsa.test"),
		Email:      "dev@example.test",
		Client:     &acme.Client{DirectoryURL: e.pebble.DirectoryURL, HTTPClient: e.pebble.HTTPClient()},
	}
	ecdsaHello := &tls.ClientHelloInfo{
		ServerName: "go-app.test", SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves: []tls.CurveID{tls.CurveP256}, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
	rsaHello := &tls.ClientHelloInfo{
		ServerName: "legacy-rsa.test", SignatureSchemes: []tls.SignatureScheme{tls.PSSWithSHA256},
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	}
	want := map[string]string{}
	for _, h := range []*tls.ClientHelloInfo{ecdsaHello, rsaHello} {
		cert, err := m.GetCertificate(h) // autocert bounds it (5 min)
		if err != nil {
			t.Fatalf("autocert against Pebble, %s: %v", h.ServerName, err)
		}
		want[h.ServerName] = cert.Leaf.SerialNumber.Text(16)
	}
	entries, _ := os.ReadDir(cacheDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	t.Logf("autocert cache: %v", names)
	if !strings.Contains(strings.Join(names, " "), "legacy-rsa.test+rsa") {
		t.Fatalf("autocert stored no +rsa entry: %v", names)
	}
	// a second app's cache, imported later into a running gatehouse
	lateDir := filepath.Join(t.TempDir(), "autocert-late")
	m2 := &autocert.Manager{
		Prompt: autocert.AcceptTOS, Cache: autocert.DirCache(lateDir), HostPolicy: autocert.HostWhitelist("late.test"),
		Client: &acme.Client{DirectoryURL: e.pebble.DirectoryURL, HTTPClient: e.pebble.HTTPClient()},
	}
	lateHello := *ecdsaHello
	lateHello.ServerName = "late.test"
	lateCert, err := m2.GetCertificate(&lateHello)
	if err != nil {
		t.Fatal(err)
	}
	ordersBefore := e.pebble.Orders("go-app.test") + e.pebble.Orders("legacy-rsa.test") + e.pebble.Orders("late.test")

	up := upstream(t, "G")
	routesTOML := fmt.Sprintf("[[route]]\nhosts = [\"go-app.test\", \"legacy-rsa.test\", \"late.test\"]\nupstream = %q\n", up.URL)
	cfgPath := e.config(routesTOML)
	var out, errOut strings.Builder
	if code := realMain([]string{"import", "autocert", cacheDir, "--config", cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("import autocert: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	t.Logf("gatehouse import autocert:\n%s", out.String())
	for name := range want {
		if !strings.Contains(out.String(), name) || strings.Count(out.String(), " imported ") != 2 {
			t.Errorf("import output does not report %s imported:\n%s", name, out.String())
		}
	}
	for _, key := range []string{"go-app.test", "legacy-rsa.test"} {
		fi, err := os.Stat(filepath.Join(e.storage, "certificates", issuerDir(e), key, key+".key"))
		if err != nil {
			t.Fatalf("imported key for %s: %v", key, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("imported key %s has mode %v, want 0600", key, fi.Mode().Perm())
		}
	}

	// gatehouse starts with the CA unreachable and serves the imported certificates
	e.pebble.Stop()
	in := e.start(cfgPath)
	for name, serial := range want {
		waitFor(t, 10*time.Second, "imported certificate for "+name, func() error {
			got, err := servedSerial(e.httpsAddr(), name, e.roots)
			if err != nil {
				return err
			}
			if got != serial {
				return fmt.Errorf("serves serial %s, want autocert's %s", got, serial)
			}
			return nil
		})
	}
	// into a running gatehouse: late.test has no certificate (its order
	// fails, the CA is down); after the import a reload serves it
	if _, err := servedSerial(e.httpsAddr(), "late.test", e.roots); err == nil {
		t.Fatal("late.test served before its import")
	}
	// its order attempt against the stopped CA has failed (an attempt
	// still retrying its requests when the CA comes back would go on)
	waitFor(t, 60*time.Second, "late.test's failed order reported", func() error {
		res, err := http.Get("http://" + e.admLn.Addr().String() + "/readyz")
		if err != nil {
			return err
		}
		if body := readAll(t, res); !strings.Contains(body, `"name": "late.test"`) || !strings.Contains(body, "last_error") {
			return fmt.Errorf("readyz: %s", body)
		}
		return nil
	})
	out.Reset()
	if code := realMain([]string{"import", "autocert", lateDir, "--config", cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("import into a running gatehouse: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if err := in.reload(cfgPath); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "late.test served after import + reload", func() error {
		got, err := servedSerial(e.httpsAddr(), "late.test", e.roots)
		if err != nil {
			return err
		}
		if want := lateCert.Leaf.SerialNumber.Text(16); got != want {
			return fmt.Errorf("serves serial %s, want the imported %s", got, want)
		}
		return nil
	})

	// with the CA back, gatehouse does not re-order what it imported
	if err := e.pebble.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if got := e.pebble.Orders("go-app.test") + e.pebble.Orders("legacy-rsa.test") + e.pebble.Orders("late.test"); got != ordersBefore {
		t.Errorf("Pebble got %d orders after the import, want none", got-ordersBefore)
	}

	// importing again leaves what gatehouse has alone
	out.Reset()
	if code := realMain([]string{"import", "autocert", cacheDir, "--config", cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("second import: exit %d", code)
	}
	if strings.Contains(out.String(), " imported ") || !strings.Contains(out.String(), "already has a certificate") {
		t.Errorf("second import:\n%s", out.String())
	}
}

func issuerDir(e *env) string {
	return certmagic.StorageKeys.Safe((&certmagic.ACMEIssuer{CA: e.pebble.DirectoryURL}).IssuerKey())
}

// A Caddy data directory (certmagic's file layout, made here by
// certmagic itself against Pebble) moves into gatehouse the same way.
func TestImportCaddy(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{AlwaysValid: true})
	caddyData := filepath.Join(t.TempDir(), "caddy")
	pool := x509.NewCertPool()
	pool.AddCert(e.pebble.HTTPSCACert())
	solverLn := listen(t) // a port for certmagic's TLS-ALPN solver (Pebble never dials it: AlwaysValid)
	solverPort := port(solverLn)
	solverLn.Close()
	var cm *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cm, nil },
	})
	defer cache.Stop()
	cm = certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: caddyData}, Logger: zap.NewNop()})
	cm.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cm, certmagic.ACMEIssuer{
		CA: e.pebble.DirectoryURL, TrustedRoots: pool, Email: "caddy@example.test", Agreed: true,
		DisableHTTPChallenge: true, AltTLSALPNPort: solverPort, ListenHost: "127.0.0.1", Logger: zap.NewNop(),
	})}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cm.ObtainCertSync(ctx, "caddy-site.test"); err != nil {
		t.Fatalf("certmagic against Pebble: %v", err)
	}
	crt, err := os.ReadFile(filepath.Join(caddyData, "certificates", issuerDir(e), "caddy-site.test", "caddy-site.test.crt"))
	if err != nil {
		t.Fatalf("certmagic did not write Caddy's layout: %v", err)
	}
	chain, _ := x509.ParseCertificates(pemBlocks(t, crt))
	wantSerial := chain[0].SerialNumber.Text(16)
	ordersBefore := e.pebble.Orders("caddy-site.test")

	up := upstream(t, "K")
	cfgPath := e.config(fmt.Sprintf("[[route]]\nhosts = [\"caddy-site.test\"]\nupstream = %q\n", up.URL))
	var out, errOut strings.Builder
	// Caddy users know the certificates/ folder; both spellings work
	if code := realMain([]string{"import", "caddy", filepath.Join(caddyData, "certificates"), "--config", cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("import caddy: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	t.Logf("gatehouse import caddy:\n%s", out.String())

	e.pebble.Stop()
	e.start(cfgPath)
	waitFor(t, 10*time.Second, "imported Caddy certificate", func() error {
		got, err := servedSerial(e.httpsAddr(), "caddy-site.test", e.roots)
		if err != nil {
			return err
		}
		if got != wantSerial {
			return fmt.Errorf("serves serial %s, want Caddy's %s", got, wantSerial)
		}
		return nil
	})
	res, err := client(e.httpsAddr(), e.roots, true).Get("https://caddy-site.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); !strings.HasPrefix(body, "upstream=K") {
		t.Errorf("reached %q", body)
	}
	if err := e.pebble.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if got := e.pebble.Orders("caddy-site.test"); got != ordersBefore {
		t.Errorf("Pebble got %d orders after the import, want none", got-ordersBefore)
	}
	// the ACME data Caddy stored (ARI window) came along
	infos, _, _ := runCerts(t, "--config", cfgPath, "--json")
	// (renew_by is "ari" only when its time comes before the lifetime rule)
	if !strings.Contains(infos, `"window_start"`) {
		t.Errorf("imported certificate lost its ARI data:\n%s", infos)
	}
}

// pemBlocks returns the DER of every PEM block in data, concatenated
// (what x509.ParseCertificates reads).
func pemBlocks(t *testing.T, data []byte) []byte {
	t.Helper()
	var der []byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return der
		}
		der = append(der, b.Bytes...)
	}
}

// `gatehouse import autocert` of 2,000 names: one pass, no deadline on
// the whole import; a pair whose key is not its certificate's is
// reported (exit 1) and every other name imported; names gatehouse holds
// keep their own certificate; gatehouse then serves the imported ones
// with the CA down.
func TestImportManyNamesCommand(t *testing.T) {
	const n = 2000
	e := newEnv(t, acmetest.PebbleOptions{AlwaysValid: true})
	ca, err := acmetest.NewTestCA("autocert's CA")
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	serials := map[string]string{}
	var names []string
	var hosts []string
	for i := range n {
		name := fmt.Sprintf("a%04d.import.test", i)
		certPEM, keyPEM, leaf, err := ca.Issue([]string{name}, "", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cacheDir, name), append(keyPEM, certPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
		hosts = append(hosts, fmt.Sprintf("%q", name))
		serials[name] = leaf.SerialNumber.Text(16)
	}
	badCert, _, _, _ := ca.Issue([]string{"bad.import.test"}, "", time.Hour)
	_, otherKey, _, _ := ca.Issue([]string{"other.import.test"}, "", time.Hour)
	os.WriteFile(filepath.Join(cacheDir, "bad.import.test"), append(otherKey, badCert...), 0o600)
	// three names gatehouse holds already, with another certificate
	st := &certmagic.FileStorage{Path: e.storage}
	ik := issuerDir(e)
	held := map[string][]byte{}
	for _, name := range names[:3] {
		certPEM, keyPEM, _, err := ca.Issue([]string{name}, "", 60*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for key, v := range map[string][]byte{
			certmagic.StorageKeys.SitePrivateKey(ik, name): keyPEM,
			certmagic.StorageKeys.SiteCert(ik, name):       certPEM,
		} {
			if err := st.Store(context.Background(), key, v); err != nil {
				t.Fatal(err)
			}
		}
		held[name] = certPEM
	}
	up := upstream(t, "M")
	// (bad.import.test has no route: gatehouse would order it)
	cfgPath := e.config(fmt.Sprintf("[[route]]\nhosts = [%s]\nupstream = %q\n", strings.Join(hosts, ", "), up.URL))

	var out, errOut strings.Builder
	code := realMain([]string{"import", "autocert", cacheDir, "--config", cfgPath, "--json"}, &out, &errOut)
	if code != 1 {
		t.Fatalf("import: exit %d, want 1 (one bad pair)\n%s", code, errOut.String())
	}
	var results []struct{ Name, Result, Reason string }
	if err := json.Unmarshal([]byte(out.String()), &results); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range results {
		count[r.Result]++
		switch {
		case r.Name == "bad.import.test":
			if r.Result != "failed" {
				t.Errorf("bad pair: %+v", r)
			}
		case held[r.Name] != nil:
			if r.Result != "skipped" {
				t.Errorf("%s (held): %+v", r.Name, r)
			}
		case r.Result != "imported":
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if count["imported"] != n-3 || count["skipped"] != 3 || count["failed"] != 1 {
		t.Errorf("results %v", count)
	}
	if want := fmt.Sprintf("%d imported, 3 skipped, 1 failed", n-3); !strings.Contains(errOut.String(), want) {
		t.Errorf("summary: %q, want %q", errOut.String(), want)
	}
	for name, certPEM := range held {
		if b, _ := st.Load(context.Background(), certmagic.StorageKeys.SiteCert(ik, name)); string(b) != string(certPEM) {
			t.Errorf("%s: the import replaced the certificate gatehouse had", name)
		}
	}

	e.pebble.Stop()
	e.start(cfgPath)
	for _, name := range []string{names[3], names[n/2], names[n-1]} {
		waitFor(t, 10*time.Second, "imported certificate for "+name, func() error {
			got, err := servedSerial(e.httpsAddr(), name, ca.Pool())
			if err != nil {
				return err
			}
			if got != serials[name] {
				return fmt.Errorf("serves serial %s, want the imported %s", got, serials[name])
			}
			return nil
		})
	}
}
