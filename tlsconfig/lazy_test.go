package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// countingFiles is a testkit.CountingStorage over a file store that
// lists like one (listSites reads the directory).
type countingFiles struct {
	*testkit.CountingStorage
	fs *certmagic.FileStorage
}

func (s countingFiles) Filename(key string) string { return s.fs.Filename(key) }

// manyNamesConfig is one ACME route for names, on store dir, with a CA
// that does not answer (nothing here may need it).
func manyNamesConfig(t testing.TB, storage string, names []string) *routes.Config {
	t.Helper()
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	cfg, err := routes.Parse([]byte(`
[acme]
email     = "ops@example.test"
directory = "https://127.0.0.1:1/dir"
` + storage + `
[[route]]
hosts    = [` + strings.Join(q, ", ") + `]
upstream = "http://127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// handshake runs a TLS handshake through m.GetCertificate as the proxy
// does, verifying the served chain against roots for name, and returns
// the served leaf (roots nil: no verification).
func handshake(m *Manager, table *routes.Table, name string, roots *x509.CertPool, onHello func()) (*x509.Certificate, error) {
	e := table.Lookup(name)
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	go func() {
		s := tls.Server(srv, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if onHello != nil {
				onHello()
			}
			return m.GetCertificate(e, h)
		}})
		s.SetDeadline(time.Now().Add(20 * time.Second))
		s.Handshake()
	}()
	c := tls.Client(cli, &tls.Config{ServerName: name, RootCAs: roots, InsecureSkipVerify: roots == nil})
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// A gatehouse restarted with many names whose certificates are in
// storage is ready without reading any of them (no private key read,
// nothing in the cache); the background walk checks them without
// loading; each name's first handshake loads and serves its own
// certificate; a burst of first handshakes to one name loads it once.
func TestStoredCertificatesLoadedOnFirstHandshake(t *testing.T) {
	const n = 2000
	cfg, fst, names, serials, ca := plantedNames(t, n, "n%04d.many.test")

	st := testkit.NewCountingStorage(fst)
	release := st.Hold(names[0])
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: countingFiles{st, fst}, StoredCheckRate: 5000})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "ready", func() error {
		if total, waiting, inFlight, sample := m.Readiness(5); total != n || waiting != 0 || inFlight != 0 {
			return fmt.Errorf("%d names, %d waiting (%d in flight): %+v", total, waiting, inFlight, sample)
		}
		return nil
	})
	cachedNone := func(when string) {
		t.Helper()
		if k := st.KeyLoads(); k != 0 {
			t.Errorf("%s: %d private keys read from storage, want 0 (nothing loaded before a handshake)", when, k)
		}
		if l := m.StoredLoads(); l != 0 {
			t.Errorf("%s: %d certificates loaded, want 0", when, l)
		}
		for _, name := range names {
			if c := m.cache.AllMatchingCertificates(name); len(c) != 0 {
				t.Fatalf("%s: %s is in the certificate cache before any handshake", when, name)
			}
		}
	}
	cachedNone("at ready")

	// the walk checks every stored certificate (none is due), loads none
	testkit.WaitFor(t, 60*time.Second, "background walk over the stored certificates", func() error {
		if u := m.StoredUnchecked(); u != 0 {
			return fmt.Errorf("%d names not checked yet", u)
		}
		return nil
	})
	cachedNone("after the walk")
	for _, s := range m.Status() {
		if s.State != stateReady {
			t.Fatalf("after the walk %s is %q, want ready (its stored certificate is valid)", s.Name, s.State)
		}
	}

	// a burst of first handshakes to one name: one load, all served
	const burst = 24
	var arrived atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, burst)
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leaf, err := handshake(m, table, names[0], ca.Pool(), func() { arrived.Add(1) })
			if err == nil && leaf.SerialNumber.Text(16) != serials[names[0]] {
				err = fmt.Errorf("served serial %s, want %s", leaf.SerialNumber.Text(16), serials[names[0]])
			}
			errs <- err
		}()
	}
	testkit.WaitFor(t, 20*time.Second, "all burst handshakes asking for the certificate", func() error {
		if a := arrived.Load(); a < burst {
			return fmt.Errorf("%d of %d", a, burst)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond) // let the last ones reach the load
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if k, l := st.KeyLoads(), m.StoredLoads(); k != 1 || l != 1 {
		t.Errorf("burst of %d first handshakes: %d key reads, %d loads; want 1 and 1", burst, k, l)
	}

	// every name: its own certificate, verified for its name
	work := make(chan string)
	var failed atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				leaf, err := handshake(m, table, name, ca.Pool(), nil)
				if err == nil && leaf.SerialNumber.Text(16) != serials[name] {
					err = fmt.Errorf("%s: served serial %s, want its own %s", name, leaf.SerialNumber.Text(16), serials[name])
				}
				if err != nil && failed.Add(1) <= 5 {
					t.Error(err)
				}
			}
		}()
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	if l := m.StoredLoads(); l != n {
		t.Errorf("%d certificates loaded after one handshake per name, want %d", l, n)
	}
	if m.StoredUnchecked() != 0 || m.stored.pending(names[n-1]) {
		t.Errorf("names still in the lazy index after their handshake")
	}
}

// The index is built from etcd's listing too, and a name whose stored
// files do not make a certificate fails its load loudly and goes to
// ordering, while the others serve.
func TestStoredCertificatesEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	names := []string{"a.test", "b.test", "c.test", "broken.test", "none.test"}
	var more []string // enough names for the index to list the store
	for i := range smallIndex + 1 {
		more = append(more, fmt.Sprintf("f%03d.test", i))
	}
	names = append(names, more...)
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\nbackend = \"etcd\"\nendpoints = [%q]\nprefix = \"lazy/\"\n", etcd.URL), names)
	st, err := OpenStorage(cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	defer st.(interface{ Close() error }).Close()
	ca, err := acmetest.NewTestCA("lazy etcd CA")
	if err != nil {
		t.Fatal(err)
	}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	for _, n := range names[:3] {
		plantWith(t, st, issuerKey, n, ca, 24*time.Hour)
	}
	plantWith(t, st, issuerKey, "broken.test", ca, 24*time.Hour)
	for _, n := range more {
		plantWith(t, st, issuerKey, n, ca, 24*time.Hour)
	}
	// the key of another certificate: the pair does not match
	_, otherKey, _, _ := ca.Issue([]string{"other.test"}, "", time.Hour)
	if err := st.Store(context.Background(), certmagic.StorageKeys.SitePrivateKey(issuerKey, "broken.test"), otherKey); err != nil {
		t.Fatal(err)
	}

	cst := testkit.NewCountingStorage(st)
	m, err := New(cfg, Options{Logger: testkit.TestLogger(t), Storage: cst})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 20*time.Second, "stored names indexed", func() error {
		if s := m.status.state("a.test"); s != stateStored && s != stateReady {
			return fmt.Errorf("a.test is %q", s)
		}
		return nil
	})
	for _, n := range names[:4] {
		if !m.stored.pending(n) {
			t.Errorf("%s (stored) is not in the index", n)
		}
	}
	for _, n := range names[:4] {
		if c := cst.Loads(certmagic.StorageKeys.SitePrivateKey(issuerKey, n)); c != 0 {
			t.Errorf("%s: private key read %d times before any handshake, want 0", n, c)
		}
	}
	if m.stored.pending("none.test") {
		t.Errorf("none.test (nothing stored) is in the index")
	}
	for _, n := range names[:3] {
		leaf, err := handshake(m, table, n, ca.Pool(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if leaf.DNSNames[0] != n {
			t.Errorf("%s served a certificate for %v", n, leaf.DNSNames)
		}
	}
	if _, err := handshake(m, table, "broken.test", ca.Pool(), nil); err == nil {
		t.Errorf("broken.test served a certificate whose key does not match")
	}
	testkit.WaitFor(t, 10*time.Second, "broken.test waiting with the reason", func() error {
		for _, s := range m.Status() {
			if s.Name == "broken.test" && s.State == stateWaiting && strings.Contains(s.LastError, "stored certificate unusable") {
				return nil
			}
		}
		return fmt.Errorf("status %+v", m.Status())
	})
	if m.stored.pending("broken.test") {
		t.Errorf("broken.test still in the index after its failed load")
	}
}

// quietLogger is testkit.TestLogger at warning level (thousands of handshakes).
func quietLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testkit.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// plantedNames makes a storage directory with n names (by format, from
// their index) each holding a 1-day certificate from a fresh test CA, as
// certmagic stores them, and a config managing those names; serials maps
// each name to its certificate's serial (hex); ca is the issuing CA.
func plantedNames(t *testing.T, n int, format string) (cfg *routes.Config, fst *certmagic.FileStorage, names []string, serials map[string]string, ca *acmetest.TestCA) {
	t.Helper()
	return plantedNamesValid(t, n, format, 24*time.Hour)
}

// plantedNamesValid is plantedNames with certificates valid for
// validity from now.
func plantedNamesValid(t testing.TB, n int, format string, validity time.Duration) (cfg *routes.Config, fst *certmagic.FileStorage, names []string, serials map[string]string, ca *acmetest.TestCA) {
	t.Helper()
	dir := t.TempDir()
	var err error
	ca, err = acmetest.NewTestCA("lazy test CA")
	if err != nil {
		t.Fatal(err)
	}
	names = make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf(format, i)
	}
	cfg = manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dir), names)
	fst = &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	serials = map[string]string{}
	for _, name := range names {
		serials[name] = plantWith(t, fst, issuerKey, name, ca, validity).SerialNumber.Text(16)
	}
	return cfg, fst, names, serials, ca
}

// plantWith stores a certificate resource for name, valid for validity
// from now, as certmagic does.
func plantWith(t testing.TB, st certmagic.Storage, issuerKey, name string, ca *acmetest.TestCA, validity time.Duration) *x509.Certificate {
	t.Helper()
	certPEM, keyPEM, leaf, err := ca.Issue([]string{name}, "", validity)
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := json.Marshal(map[string]any{"sans": []string{name}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for key, v := range map[string][]byte{
		certmagic.StorageKeys.SitePrivateKey(issuerKey, name): keyPEM,
		certmagic.StorageKeys.SiteCert(issuerKey, name):       certPEM,
		certmagic.StorageKeys.SiteMeta(issuerKey, name):       meta,
	} {
		if err := st.Store(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	return leaf
}

// siteKey builds the keys certmagic's StorageKeys builds.
func TestSiteKeyMatchesCertmagic(t *testing.T) {
	for _, issuer := range []string{"127.0.0.1:1-dir", "acme-v02.api.letsencrypt.org-directory", "internal"} {
		for _, name := range []string{"a.test", "N0001.Many.Test", "xn--bcher-kva.example", "*.wild.test", "a..b.test", "10.0.0.1", "::1", "under_score.test", "a b+c"} {
			if got, want := siteKey(issuer, name, ".crt"), certmagic.StorageKeys.SiteCert(issuer, name); got != want {
				t.Errorf("siteKey(%q, %q, .crt) = %q, want %q", issuer, name, got, want)
			}
			if got, want := siteKey(issuer, name, ".key"), certmagic.StorageKeys.SitePrivateKey(issuer, name); got != want {
				t.Errorf("siteKey(%q, %q, .key) = %q, want %q", issuer, name, got, want)
			}
			if got, want := siteKey(issuer, name, ".json"), certmagic.StorageKeys.SiteMeta(issuer, name); got != want {
				t.Errorf("siteKey(%q, %q, .json) = %q, want %q", issuer, name, got, want)
			}
			if got, want := safeKey(name), certmagic.StorageKeys.Safe(name); got != want {
				t.Errorf("safeKey(%q) = %q, want %q", name, got, want)
			}
		}
	}
}

// A certificate no handshake used for ReleaseIdle leaves memory and
// comes back from storage on its next handshake, still its own.
func TestIdleCertificatesReleased(t *testing.T) {
	const n = 20
	cfg, fst, names, serials, ca := plantedNames(t, n, "r%02d.release.test")
	m, err := New(cfg, Options{Logger: testkit.TestLogger(t), Storage: fst, ReleaseIdle: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	serveAll := func(round string) {
		t.Helper()
		for _, name := range names {
			leaf, err := handshake(m, table, name, ca.Pool(), nil)
			if err != nil {
				t.Fatalf("%s: %v", round, err)
			}
			if leaf.SerialNumber.Text(16) != serials[name] {
				t.Fatalf("%s: %s served serial %s, want %s", round, name, leaf.SerialNumber.Text(16), serials[name])
			}
		}
	}
	testkit.WaitFor(t, 10*time.Second, "names indexed", func() error {
		if !m.stored.pending(names[0]) {
			return fmt.Errorf("not indexed yet")
		}
		return nil
	})
	serveAll("first handshakes")
	if l := m.StoredLoads(); l != n {
		t.Fatalf("%d loads after the first handshakes, want %d", l, n)
	}
	testkit.WaitFor(t, 20*time.Second, "idle certificates released", func() error {
		for _, name := range names {
			if len(m.cachedManaged(name)) != 0 || !m.stored.pending(name) {
				return fmt.Errorf("%s still cached", name)
			}
		}
		return nil
	})
	if r := m.StoredReleased(); r != n {
		t.Errorf("%d certificates released, want %d", r, n)
	}
	for _, s := range m.Status() {
		if s.State != stateReady {
			t.Errorf("released %s is %q, want ready", s.Name, s.State)
		}
	}
	serveAll("after release")
	if l := m.StoredLoads(); l != 2*n {
		t.Errorf("%d loads after handshakes to released names, want %d", l, 2*n)
	}
}
