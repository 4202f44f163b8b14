package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// With the etcd backend: the internal CA's root lives in etcd (printed
// by `certs --root`), `gatehouse import caddy` writes into etcd, and
// `gatehouse certs` reads it all back, with gatehouse running and not.
func TestCertOpsOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	e := &env{t: t}
	e.bind()
	up := upstream(t, "E")

	// a Caddy data dir holding one certificate (from a test CA)
	ca, err := acmetest.NewTestCA("etcd import CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, leaf, err := ca.Issue([]string{"moved.test"}, "", 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caddyDir := t.TempDir()
	src := &certmagic.FileStorage{Path: caddyDir}
	ctx := context.Background()
	_ = src.Store(ctx, certmagic.StorageKeys.SiteCert("acme-v02.api.letsencrypt.org-directory", "moved.test"), certPEM)
	_ = src.Store(ctx, certmagic.StorageKeys.SitePrivateKey("acme-v02.api.letsencrypt.org-directory", "moved.test"), keyPEM)
	_ = src.Store(ctx, certmagic.StorageKeys.SiteMeta("acme-v02.api.letsencrypt.org-directory", "moved.test"), []byte(`{"sans":["moved.test"]}`))

	cfgPath := filepath.Join(t.TempDir(), "gatehouse.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
[listen]
https = %q
http  = %q
admin = %q

[acme]
email = "ops@example.test"

[storage]
backend   = "etcd"
endpoints = [%q]
prefix    = "gh/"

[[route]]
hosts    = ["localhost"]
tls      = "internal"
upstream = %q

[[route]]
hosts    = ["moved.test"]
upstream = %q
`, e.httpsLn.Addr(), e.httpLn.Addr(), e.admLn.Addr(), etcd.URL, up.URL, up.URL)), 0o600)

	var out, errOut strings.Builder
	if code := realMain([]string{"import", "caddy", caddyDir, "--config", cfgPath}, &out, &errOut); code != 0 {
		t.Fatalf("import into etcd: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "moved.test") || !strings.Contains(out.String(), "imported") {
		t.Fatalf("import output:\n%s", out.String())
	}

	in := e.start(cfgPath)
	pool := ca.Pool()
	testkit.WaitFor(t, 10*time.Second, "imported certificate served from etcd", func() error {
		got, err := testkit.ServedSerial(e.httpsAddr(), "moved.test", pool)
		if err != nil {
			return err
		}
		if got != leaf.SerialNumber.Text(16) {
			return fmt.Errorf("serial %s", got)
		}
		return nil
	})
	rootPEM, _, code := runCerts(t, "--config", cfgPath, "--root")
	if code != 0 || !strings.HasPrefix(rootPEM, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("certs --root on etcd: exit %d %q", code, rootPEM)
	}
	roots := certPool(t, rootPEM)
	var internalSerial string
	testkit.WaitFor(t, 10*time.Second, "internal certificate verified against the root from etcd", func() (err error) {
		internalSerial, err = testkit.ServedSerial(e.httpsAddr(), "localhost", roots)
		return err
	})

	check := func(t *testing.T) {
		js, errOut, code := runCerts(t, "--config", cfgPath, "--json")
		if code != 0 {
			t.Fatalf("certs on etcd: exit %d %s", code, errOut)
		}
		var infos []tlsconfig.CertInfo
		if err := json.Unmarshal([]byte(js), &infos); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, ci := range infos {
			got[ci.Name] = ci.Serial
		}
		if got["moved.test"] != leaf.SerialNumber.Text(16) || got["localhost"] != internalSerial {
			t.Errorf("certs on etcd: %v; want moved.test %s, localhost %s", got, leaf.SerialNumber.Text(16), internalSerial)
		}
	}
	t.Run("running", check)
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Run("stopped", check)
}

func certPool(t *testing.T, pemText string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pemText)) {
		t.Fatalf("no PEM certificate in %q", pemText)
	}
	return p
}
