package tlsconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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

// autocertCache writes an autocert DirCache holding n names (by format)
// with a certificate each from a fresh test CA (the key, then the chain,
// in one file, as autocert writes them), and returns the serials (hex).
func autocertCache(t *testing.T, n int, format string) (dir string, names []string, serials map[string]string, ca *acmetest.TestCA) {
	t.Helper()
	ca, err := acmetest.NewTestCA("import test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	serials = map[string]string{}
	for i := range n {
		name := fmt.Sprintf(format, i)
		certPEM, keyPEM, leaf, err := ca.Issue([]string{name}, "", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), append(keyPEM, certPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
		serials[name] = leaf.SerialNumber.Text(16)
	}
	return dir, names, serials, ca
}

// checkStoredPair verifies that storage holds name's complete
// certificate resource: key (0600) and chain go together and the chain
// is serial's.
func checkStoredPair(t *testing.T, root, issuerKey, name, serial string) {
	t.Helper()
	fst := &certmagic.FileStorage{Path: root}
	keyFile := fst.Filename(certmagic.StorageKeys.SitePrivateKey(issuerKey, name))
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: key mode %v, want 0600", name, fi.Mode().Perm())
	}
	chainPEM, err := os.ReadFile(fst.Filename(certmagic.StorageKeys.SiteCert(issuerKey, name)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if _, err := os.Stat(fst.Filename(certmagic.StorageKeys.SiteMeta(issuerKey, name))); err != nil {
		t.Errorf("%s: no metadata: %v", name, err)
	}
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatalf("%s: stored pair does not verify: %v", name, err)
	}
	if got := pair.Leaf.SerialNumber.Text(16); got != serial {
		t.Errorf("%s: stored serial %s, want %s", name, got, serial)
	}
}

// resultCounts counts import results by outcome.
func resultCounts(results []ImportResult) map[string]int {
	n := map[string]int{}
	for _, r := range results {
		n[r.Result]++
	}
	return n
}

// Many names in one import: every good pair is imported whole, in
// batches whose flushes do not grow with the names (no fsync per
// file); names gatehouse holds are left as they are; a pair whose key
// is not its certificate's, and a file too large to be one, are
// reported and the rest imported; a second import replaces nothing.
func TestImportManyNames(t *testing.T) {
	const n = 2000
	defer func(b int) { importBatch = b }(importBatch)
	importBatch = 256
	src, names, serials, ca := autocertCache(t, n, "m%04d.import.test")
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), append(names, "bad.import.test", "huge.import.test"))
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	// names gatehouse holds already: another certificate each
	held := map[string][]byte{}
	for _, name := range names[:5] {
		held[name] = []byte(plantWith(t, dst, target, name, ca, 60*24*time.Hour).SerialNumber.Text(16))
	}
	// a certificate with another certificate's key
	badCert, _, _, _ := ca.Issue([]string{"bad.import.test"}, "", time.Hour)
	_, otherKey, _, _ := ca.Issue([]string{"other.import.test"}, "", time.Hour)
	os.WriteFile(filepath.Join(src, "bad.import.test"), append(otherKey, badCert...), 0o600)
	os.WriteFile(filepath.Join(src, "huge.import.test"), make([]byte, maxImportFile+1), 0o600)

	syncsBefore := importSyncs.Load()
	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	syncs := importSyncs.Load() - syncsBefore
	got := map[string]ImportResult{}
	for _, r := range results {
		got[r.Name] = r
	}
	if c := resultCounts(results); c["imported"] != n-5 || c["skipped"] != 5 || c["failed"] != 2 {
		t.Errorf("results %v, want %d imported, 5 skipped, 2 failed", c, n-5)
	}
	if r := got["bad.import.test"]; r.Result != "failed" || !strings.Contains(r.Reason, "not a certificate and its key") {
		t.Errorf("bad pair: %+v", r)
	}
	if r := got["huge.import.test"]; r.Result != "failed" || !strings.Contains(r.Reason, "larger than") {
		t.Errorf("huge file: %+v", r)
	}
	for name, serial := range held {
		if r := got[name]; r.Result != "skipped" || !strings.Contains(r.Reason, "already has a certificate") {
			t.Errorf("%s (held): %+v", name, r)
		}
		checkStoredPair(t, dstDir, target, name, string(serial)) // still its own
	}
	for _, name := range names[5:] {
		if got[name].Result != "imported" {
			t.Fatalf("%s: %+v", name, got[name])
		}
		checkStoredPair(t, dstDir, target, name, serials[name])
	}
	for _, name := range []string{"bad.import.test", "huge.import.test"} {
		if _, err := os.Stat(dst.Filename(certmagic.StorageKeys.CertsSitePrefix(target, name))); err == nil {
			t.Errorf("%s: something stored for a failed pair", name)
		}
	}
	// 8 batches: a flush each and a few folder syncs, not 4 per name
	batches := int64((n + 2 + importBatch - 1) / importBatch)
	if syncs > 4*batches {
		t.Errorf("%d flushes and syncs for %d names in %d batches, want at most %d", syncs, n, batches, 4*batches)
	}
	if left, _ := filepath.Glob(filepath.Join(dstDir, stagingPrefix+"*")); len(left) != 0 {
		t.Errorf("staging folders left behind: %v", left)
	}
	// gatehouse's own reader finds every name
	stored, err := listStored(context.Background(), dst)
	if err != nil || len(stored) != n {
		t.Errorf("gatehouse lists %d stored certificates (%v), want %d", len(stored), err, n)
	}

	again, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := resultCounts(again); c["skipped"] != n || c["imported"] != 0 {
		t.Errorf("second import: %v, want all %d skipped", c, n)
	}
	for _, r := range again {
		if r.Name == names[9] && !strings.Contains(r.Reason, "from an earlier import") {
			t.Errorf("second import of %s: %q, want it recognised as imported before", r.Name, r.Reason)
		}
	}
}

// plainStore hides the file store's type: the import writes through the
// certmagic.Storage interface, as it does to etcd.
type plainStore struct{ certmagic.Storage }

// stuckStore is a store whose writes for one name never finish on
// their own.
type stuckStore struct {
	certmagic.Storage
	stuck string
}

func (s stuckStore) Store(ctx context.Context, key string, value []byte) error {
	if strings.Contains(key, "/"+s.stuck+"/") {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Storage.Store(ctx, key, value)
}

// Through another store than the file store (etcd's path): each
// storage operation is bounded by OpTimeout, not the import as a
// whole: a write that hangs fails its name, the others are imported;
// held names are left alone.
func TestImportOtherStoreOpTimeout(t *testing.T) {
	const n = 100
	src, names, serials, ca := autocertCache(t, n, "o%03d.import.test")
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	target := acmeIssuerKeys(cfg)[0]
	fst := &certmagic.FileStorage{Path: dstDir}
	heldSerial := plantWith(t, fst, target, names[0], ca, 60*24*time.Hour).SerialNumber.Text(16)
	dst := stuckStore{Storage: plainStore{fst}, stuck: names[1]}
	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{OpTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ImportResult{}
	for _, r := range results {
		got[r.Name] = r
	}
	if c := resultCounts(results); c["imported"] != n-2 || c["skipped"] != 1 || c["failed"] != 1 {
		t.Errorf("results %v, want %d imported, 1 skipped, 1 failed", c, n-2)
	}
	if r := got[names[1]]; r.Result != "failed" || !strings.Contains(r.Reason, "deadline exceeded") {
		t.Errorf("%s (store hangs): %+v", names[1], r)
	}
	checkStoredPair(t, dstDir, target, names[0], heldSerial)
	for _, name := range names[2:] {
		checkStoredPair(t, dstDir, target, name, serials[name])
	}
}

// The crash test's child: imports the cache named by the environment
// and dies (exit 3) after the 20th name is moved into place, the way a
// killed process does: no cleanup.
func TestImportCrashChild(t *testing.T) {
	src, dstDir := os.Getenv("GATEHOUSE_TEST_IMPORT_SRC"), os.Getenv("GATEHOUSE_TEST_IMPORT_DST")
	if src == "" {
		return // run by TestImportCrashLeavesNoHalfName only
	}
	names := crashNames()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	importBatch = 16
	moved := 0
	importHook = func(stage string, _ int) {
		if stage == "renamed" {
			if moved++; moved == 20 {
				os.Exit(3)
			}
		}
	}
	_, _ = ImportAutocert(context.Background(), src, &certmagic.FileStorage{Path: dstDir}, cfg, ImportOptions{})
	t.Fatal("the import finished without reaching the crash point")
}

func crashNames() []string {
	var names []string
	for i := range 50 {
		names = append(names, fmt.Sprintf("c%02d.crash.test", i))
	}
	return names
}

// An import killed half-way leaves no half-written name: what is in
// certificates/ is complete (key, chain, metadata, the pair verifies),
// what was only staged is invisible to gatehouse, and the next import
// finishes the rest and removes the dead import's staging folder.
func TestImportCrashLeavesNoHalfName(t *testing.T) {
	src, names, serials, _ := autocertCache(t, 50, "c%02d.crash.test")
	if !slices.Equal(names, crashNames()) {
		t.Fatal("the child would import other names")
	}
	dstDir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestImportCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GATEHOUSE_TEST_IMPORT_SRC="+src, "GATEHOUSE_TEST_IMPORT_DST="+dstDir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("child import: %v, want it to die at the crash point (exit 3)\n%s", err, out)
	}
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	sites, err := os.ReadDir(dst.Filename(certmagic.StorageKeys.CertsPrefix(target)))
	if err != nil {
		t.Fatal(err)
	}
	if len(sites) != 20 {
		t.Errorf("%d names in storage after the crash, want the 20 moved into place", len(sites))
	}
	for _, s := range sites {
		checkStoredPair(t, dstDir, target, s.Name(), serials[s.Name()])
	}
	stored, err := listStored(context.Background(), dst)
	if err != nil || len(stored) != 20 {
		t.Errorf("gatehouse lists %d stored certificates (%v), want 20", len(stored), err)
	}
	left, _ := filepath.Glob(filepath.Join(dstDir, stagingPrefix+"*", "*", "*.key"))
	if len(left) == 0 {
		t.Errorf("no staged name left by the crash: the test did not crash mid-batch")
	}

	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := resultCounts(results); c["imported"] != 30 || c["skipped"] != 20 {
		t.Errorf("import after the crash: %v, want 30 imported, 20 skipped", c)
	}
	for _, name := range names {
		checkStoredPair(t, dstDir, target, name, serials[name])
	}
	if left, _ := filepath.Glob(filepath.Join(dstDir, stagingPrefix+"*")); len(left) != 0 {
		t.Errorf("the dead import's staging folder is still there: %v", left)
	}
}

// A name a running gatehouse writes between the import's listing and
// its moving the name into place keeps gatehouse's certificate: the
// folder rename does not replace it.
func TestImportNeverReplacesANameWrittenMeanwhile(t *testing.T) {
	src, names, serials, ca := autocertCache(t, 20, "w%02d.import.test")
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	var theirs string
	defer func() { importHook = nil }()
	importHook = func(stage string, _ int) {
		if stage == "flushed" && theirs == "" { // staged and durable, not in place yet
			theirs = plantWith(t, dst, target, names[3], ca, 60*24*time.Hour).SerialNumber.Text(16)
		}
	}
	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		switch {
		case r.Name == names[3]:
			if r.Result != "skipped" || !strings.Contains(r.Reason, "meanwhile") {
				t.Errorf("%s (written meanwhile): %+v", r.Name, r)
			}
		case r.Result != "imported":
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	checkStoredPair(t, dstDir, target, names[3], theirs)
	for _, name := range names[4:] {
		checkStoredPair(t, dstDir, target, name, serials[name])
	}
}

// The key stored for an autocert entry is the block tls.X509KeyPair
// verified against the certificate, as it was in the source (PKCS#8 or
// SEC 1, after any other block), and certmagic reads it back as the
// certificate's key.
func TestImportStoresTheVerifiedKeyBlock(t *testing.T) {
	ca, err := acmetest.NewTestCA("import test CA")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	wantKey := map[string][]byte{}
	leaves := map[string]*x509.Certificate{}
	for _, name := range []string{"pk8.import.test", "sec1.import.test"} {
		certPEM, keyPEM, leaf, err := ca.Issue([]string{name}, "", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		file := keyPEM
		if name == "sec1.import.test" { // openssl's layout: parameters, then the SEC 1 key
			b, _ := pem.Decode(keyPEM)
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
			if err != nil {
				t.Fatal(err)
			}
			keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
			file = append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}), keyPEM...)
		}
		if err := os.WriteFile(filepath.Join(src, name), append(file, certPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		wantKey[name], leaves[name] = keyPEM, leaf
	}
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), []string{"pk8.import.test", "sec1.import.test"})
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := resultCounts(results); c["imported"] != 2 {
		t.Fatalf("results %+v, want both imported", results)
	}
	for name, want := range wantKey {
		checkStoredPair(t, dstDir, target, name, leaves[name].SerialNumber.Text(16))
		got, err := dst.Load(context.Background(), certmagic.StorageKeys.SitePrivateKey(target, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%s: stored key\n%s\nwant the source's key block\n%s", name, got, want)
		}
		key, err := certmagic.PEMDecodePrivateKey(got)
		if err != nil {
			t.Fatalf("%s: certmagic cannot read the stored key: %v", name, err)
		}
		if !key.Public().(*ecdsa.PublicKey).Equal(leaves[name].PublicKey) {
			t.Errorf("%s: certmagic reads a key that is not the certificate's", name)
		}
	}
}

// A folder that appears empty for a name between the import's listing
// and its moving the name into place (a running gatehouse starting to
// store a certificate there) is not replaced: the name is skipped and
// the folder left as it is.
func TestImportNeverReplacesAnEmptyFolder(t *testing.T) {
	src, names, serials, _ := autocertCache(t, 10, "e%02d.import.test")
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	theirs := dst.Filename(certmagic.StorageKeys.CertsSitePrefix(target, names[2]))
	defer func() { importHook = nil }()
	importHook = func(stage string, _ int) {
		if stage == "flushed" {
			if err := os.MkdirAll(theirs, 0o700); err != nil {
				t.Error(err)
			}
		}
	}
	results, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		switch {
		case r.Name == names[2]:
			if r.Result != "skipped" || !strings.Contains(r.Reason, "not replaced") {
				t.Errorf("%s (folder made meanwhile): %+v", r.Name, r)
			}
		case r.Result != "imported":
			t.Errorf("%s: %+v", r.Name, r)
		default:
			checkStoredPair(t, dstDir, target, r.Name, serials[r.Name])
		}
	}
	if ents, err := os.ReadDir(theirs); err != nil || len(ents) != 0 {
		t.Errorf("the folder made meanwhile: %v entries (%v), want it left empty", len(ents), err)
	}
}

// A chain whose certificate after the leaf does not parse is not
// imported, from autocert or from Caddy: the result says which
// certificate, and nothing is stored for the name.
func TestImportRefusesAChainThatDoesNotParse(t *testing.T) {
	ca, err := acmetest.NewTestCA("import test CA")
	if err != nil {
		t.Fatal(err)
	}
	garbled := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}})
	issue := func(name string) (certPEM, keyPEM []byte) {
		c, k, _, err := ca.Issue([]string{name}, "", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(c) // the leaf, then the garbled issuer
		return append(pem.EncodeToMemory(b), garbled...), k
	}
	// autocert
	src := t.TempDir()
	c, k := issue("chain.import.test")
	os.WriteFile(filepath.Join(src, "chain.import.test"), append(k, c...), 0o600)
	// Caddy
	csrc := &certmagic.FileStorage{Path: t.TempDir()}
	cc, ck := issue("cchain.import.test")
	for key, v := range map[string][]byte{
		certmagic.StorageKeys.SiteCert("acme.example-dir", "cchain.import.test"):       cc,
		certmagic.StorageKeys.SitePrivateKey("acme.example-dir", "cchain.import.test"): ck,
	} {
		if err := csrc.Store(context.Background(), key, v); err != nil {
			t.Fatal(err)
		}
	}
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), []string{"chain.import.test", "cchain.import.test"})
	dst := &certmagic.FileStorage{Path: dstDir}
	a, err := ImportAutocert(context.Background(), src, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ImportCaddy(context.Background(), csrc.Path, dst, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range append(a, b...) {
		if r.Result != "failed" || !strings.Contains(r.Reason, "certificate 2 of the chain does not parse") {
			t.Errorf("%s: %+v, want failed: the chain's second certificate does not parse", r.Name, r)
		}
	}
	if len(a) != 1 || len(b) != 1 {
		t.Errorf("results %+v %+v, want one each", a, b)
	}
	if keys, _ := dst.List(context.Background(), "certificates", true); len(keys) != 0 {
		t.Errorf("stored for a chain that does not parse: %v", keys)
	}
}

// An interrupt stops the import between batches, with the batch being
// committed meanwhile finished: every name reported imported is
// complete in storage, every other reported name failed as interrupted
// and has nothing stored, and no staging folder is left.
func TestImportInterrupted(t *testing.T) {
	defer func(b int) { importBatch = b }(importBatch)
	importBatch = 8
	src, names, serials, _ := autocertCache(t, 40, "i%02d.import.test")
	dstDir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dstDir), names)
	target := acmeIssuerKeys(cfg)[0]
	dst := &certmagic.FileStorage{Path: dstDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func() { importHook = nil }()
	importHook = func(stage string, _ int) {
		if stage == "flushed" {
			cancel() // during the first batch's commit
		}
	}
	results, err := ImportAutocert(ctx, src, dst, cfg, ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err %v, want interrupted", err)
	}
	c := resultCounts(results)
	t.Logf("after the interrupt: %d of %d names reported: %v (%v)", len(results), len(names), c, err)
	if c["imported"] < importBatch || len(results) == len(names) && c["failed"] == 0 {
		t.Errorf("results %v: want the first batch imported and the import stopped", c)
	}
	for _, r := range results {
		site := dst.Filename(certmagic.StorageKeys.CertsSitePrefix(target, r.Name))
		switch r.Result {
		case "imported":
			checkStoredPair(t, dstDir, target, r.Name, serials[r.Name])
		case "failed":
			if !strings.Contains(r.Reason, "interrupted") {
				t.Errorf("%s: %+v", r.Name, r)
			}
			if _, err := os.Stat(site); err == nil {
				t.Errorf("%s: failed, yet something is stored", r.Name)
			}
		default:
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	sites, _ := os.ReadDir(dst.Filename(certmagic.StorageKeys.CertsPrefix(target)))
	if len(sites) != c["imported"] {
		t.Errorf("%d names in storage, %d reported imported", len(sites), c["imported"])
	}
	if left, _ := filepath.Glob(filepath.Join(dstDir, stagingPrefix+"*")); len(left) != 0 {
		t.Errorf("staging folders left behind: %v", left)
	}
}
