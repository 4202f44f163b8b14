package tlsconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// expiredPair is a self-signed certificate that expired an hour ago.
func expiredPair(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big1(), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ = certmagic.PEMEncodePrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

// Caddy's layout in, gatehouse's storage out: filed under the issuer
// key of gatehouse's CA when Caddy's CA is not in gatehouse's config;
// Caddy's internal CA, expired certificates and broken pairs skipped;
// a name gatehouse already holds left alone; what is imported is what
// certmagic then loads as a managed certificate.
func TestImportCaddyLayout(t *testing.T) {
	ctx := context.Background()
	ca, err := acmetest.NewTestCA("import test CA")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(names ...string) ([]byte, []byte, *x509.Certificate) {
		c, k, leaf, err := ca.Issue(names, "", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c, k, leaf
	}
	srcDir := t.TempDir()
	src := &certmagic.FileStorage{Path: srcDir}
	put := func(issuerKey, site string, certPEM, keyPEM []byte) {
		for k, v := range map[string][]byte{
			certmagic.StorageKeys.SiteCert(issuerKey, site):       certPEM,
			certmagic.StorageKeys.SitePrivateKey(issuerKey, site): keyPEM,
			certmagic.StorageKeys.SiteMeta(issuerKey, site):       []byte(`{"sans":["` + site + `"],"issuer_data":{"url":"https://ca.example/cert/1"}}`),
		} {
			if err := src.Store(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	zsCert, zsKey, zsLeaf := issue("zs.test")
	put("acme.zerossl.com-v2-DV90", "zs.test", zsCert, zsKey)
	lc, lk, _ := issue("localhost")
	put("local", "localhost", lc, lk)
	ec, ek := expiredPair(t, "old.test")
	put("acme.example-dir", "old.test", ec, ek)
	mc, mk, _ := issue("multi.test", "www.multi.test")
	put("acme.example-dir", "multi.test,www.multi.test", mc, mk)
	bc, _, _ := issue("bad.test")
	_, otherKey, _ := issue("other.test")
	put("acme.example-dir", "bad.test", bc, otherKey)
	hc, hk, _ := issue("have.test")
	put("acme.example-dir", "have.test", hc, hk)
	manCert, manKey, _ := issue("man.test")
	put("acme.example-dir", "man.test", manCert, manKey)

	dstDir := t.TempDir()
	dst := &certmagic.FileStorage{Path: dstDir}
	existing, existingKey, _ := issue("have.test")
	_ = dst.Store(ctx, certmagic.StorageKeys.SitePrivateKey("acme.example-dir", "have.test"), existingKey)
	_ = dst.Store(ctx, certmagic.StorageKeys.SiteCert("acme.example-dir", "have.test"), existing)

	files := t.TempDir()
	os.WriteFile(filepath.Join(files, "m.pem"), manCert, 0o600)
	os.WriteFile(filepath.Join(files, "m.key"), manKey, 0o600)
	cfg, err := routes.Parse([]byte(fmt.Sprintf(`
[acme]
email = "a@b.c"
directory = "https://acme.example/dir"
[storage]
dir = %q
[[route]]
hosts = ["zs.test", "multi.test", "have.test"]
upstream = "http://127.0.0.1:1"
[[route]]
hosts = ["man.test"]
cert = %q
key = %q
upstream = "http://127.0.0.1:1"
`, dstDir, filepath.Join(files, "m.pem"), filepath.Join(files, "m.key"))))
	if err != nil {
		t.Fatal(err)
	}

	results, err := ImportCaddy(ctx, filepath.Join(srcDir, "certificates"), dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ImportResult{}
	for _, r := range results {
		got[r.Name] = r
		t.Logf("%-15s %-9s %s %s", r.Name, r.Result, r.IssuerKey, r.Reason)
	}
	want := map[string]string{
		"zs.test": "imported", "multi.test": "imported", "www.multi.test": "imported",
		"localhost": "skipped", "old.test": "skipped", "bad.test": "failed", "have.test": "skipped", "man.test": "skipped",
	}
	for name, result := range want {
		if got[name].Result != result {
			t.Errorf("%s: %s (%s), want %s", name, got[name].Result, got[name].Reason, result)
		}
	}
	if got["zs.test"].IssuerKey != "acme.example-dir" {
		t.Errorf("zs.test filed under %q, want gatehouse's CA acme.example-dir", got["zs.test"].IssuerKey)
	}
	if r := got["www.multi.test"]; r.Reason == "" {
		t.Errorf("www.multi.test has no route: the result should say so")
	}

	// what gatehouse held is unchanged
	if b, _ := dst.Load(ctx, certmagic.StorageKeys.SiteCert("acme.example-dir", "have.test")); string(b) != string(existing) {
		t.Error("import replaced a certificate gatehouse already had")
	}

	// certmagic, configured like gatehouse, loads the imported certificate as managed
	var cm *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cm, nil }})
	defer cache.Stop()
	cm = certmagic.New(cache, certmagic.Config{Storage: dst, Logger: zapLogger(quietLog())})
	cm.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cm, certmagic.ACMEIssuer{CA: "https://acme.example/dir"})}
	loaded, err := cm.CacheManagedCertificate(ctx, "zs.test")
	if err != nil {
		t.Fatalf("certmagic cannot load the imported certificate: %v", err)
	}
	if loaded.Leaf.SerialNumber.Cmp(zsLeaf.SerialNumber) != 0 {
		t.Errorf("certmagic loaded serial %s, want %s", loaded.Leaf.SerialNumber, zsLeaf.SerialNumber)
	}

	// a dry run writes nothing
	dry := &certmagic.FileStorage{Path: t.TempDir()}
	res, err := ImportCaddy(ctx, srcDir, dry, cfg, ImportOptions{DryRun: true})
	if err != nil || len(res) == 0 {
		t.Fatalf("dry run: %v %v", res, err)
	}
	if keys, _ := dry.List(ctx, "certificates", true); len(keys) != 0 {
		t.Errorf("dry run wrote %v", keys)
	}
}
