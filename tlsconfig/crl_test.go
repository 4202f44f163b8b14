package tlsconfig

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// opensslCA is a real `openssl ca` directory: it issues leaves with a
// CRL distribution point, revokes them and generates CRLs.
type opensslCA struct {
	t    testing.TB
	dir  string
	cert *x509.Certificate
}

const opensslCAConfig = `[ca]
default_ca = CA_default
[CA_default]
dir = .
database = $dir/index.txt
new_certs_dir = $dir
certificate = $dir/ca.crt
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_hours = 1
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
[leaf_ext]
basicConstraints = critical,CA:FALSE
subjectAltName = DNS:$ENV::CRL_SAN
crlDistributionPoints = URI:$ENV::CRL_URL
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
`

func newOpensslCA(t testing.TB, cn string) *opensslCA {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (Debian package openssl, in ./test.sh's install list)")
	}
	ca := &opensslCA{t: t, dir: t.TempDir()}
	for name, v := range map[string]string{"ca.cnf": opensslCAConfig, "index.txt": "", "crlnumber": "1000\n", "serial": "01\n"} {
		if err := os.WriteFile(filepath.Join(ca.dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca.run("", "", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-subj", "/CN="+cn, "-days", "30", "-keyout", "ca.key", "-out", "ca.crt",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	ca.cert = readPEMCert(t, filepath.Join(ca.dir, "ca.crt"))
	return ca
}

func (ca *opensslCA) run(san, crlURL string, args ...string) {
	ca.t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = ca.dir
	if san == "" {
		san = "unused.test"
	}
	if crlURL == "" {
		crlURL = "http://127.0.0.1:1/unused"
	}
	cmd.Env = append(os.Environ(), "CRL_SAN="+san, "CRL_URL="+crlURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		ca.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// issue makes a key and a certificate for name naming crlURL, and
// writes name.crt (leaf + CA: the chain gatehouse serves) and name.key.
func (ca *opensslCA) issue(name, crlURL string) (certFile, keyFile string, leaf *x509.Certificate) {
	ca.t.Helper()
	ca.run(name, crlURL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-subj", "/CN="+name, "-keyout", name+".key", "-out", name+".csr")
	ca.run(name, crlURL, "ca", "-batch", "-config", "ca.cnf", "-extensions", "leaf_ext",
		"-in", name+".csr", "-out", name+".leaf", "-notext")
	leafPEM, err := os.ReadFile(filepath.Join(ca.dir, name+".leaf"))
	if err != nil {
		ca.t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(ca.dir, "ca.crt"))
	certFile = filepath.Join(ca.dir, name+".crt")
	if err := os.WriteFile(certFile, append(leafPEM, caPEM...), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return certFile, filepath.Join(ca.dir, name+".key"), readPEMCert(ca.t, filepath.Join(ca.dir, name+".leaf"))
}

// revoke revokes a certificate (any PEM file whose first block is it).
func (ca *opensslCA) revoke(certFile string) {
	ca.t.Helper()
	ca.run("", "", "ca", "-config", "ca.cnf", "-revoke", certFile)
}

// crl generates a CRL valid for secs seconds, in DER.
func (ca *opensslCA) crl(secs int) []byte {
	ca.t.Helper()
	ca.run("", "", "ca", "-config", "ca.cnf", "-gencrl", "-crlsec", fmt.Sprint(secs), "-out", "crl.pem")
	ca.run("", "", "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der")
	der, err := os.ReadFile(filepath.Join(ca.dir, "crl.der"))
	if err != nil {
		ca.t.Fatal(err)
	}
	return der
}

func readPEMCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// crlServer serves a CRL over HTTP on 127.0.0.1, counting requests; it
// can answer an error, or hang until released.
type crlServer struct {
	srv      *http.Server
	ln       net.Listener
	URL      string
	mu       sync.Mutex
	body     []byte
	status   int
	chunked  bool
	hang     chan struct{} // non-nil: requests wait for it to close
	requests atomic.Int64
}

func startCRLServer(t testing.TB) *crlServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &crlServer{ln: ln, URL: "http://" + ln.Addr().String() + "/ca.crl", status: http.StatusOK}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(ln)
	t.Cleanup(s.close)
	return s
}

func (s *crlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.mu.Lock()
	body, status, hang, chunked := s.body, s.status, s.hang, s.chunked
	s.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
	}
	if status != http.StatusOK {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	if chunked {
		w.WriteHeader(http.StatusOK)
		for i := 0; i < len(body); i += 512 {
			w.Write(body[i:min(i+512, len(body))])
			w.(http.Flusher).Flush()
		}
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.Write(body)
}

func (s *crlServer) set(body []byte) {
	s.mu.Lock()
	s.body, s.status = body, http.StatusOK
	s.mu.Unlock()
}

func (s *crlServer) close() {
	s.mu.Lock()
	if s.hang != nil {
		select {
		case <-s.hang:
		default:
			close(s.hang)
		}
	}
	s.mu.Unlock()
	s.srv.Close()
}

// syncBuf collects log output for assertions and copies it to t.Log.
type syncBuf struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.b.Write(p)
	s.mu.Unlock()
	s.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func captureLog(t testing.TB) (*slog.Logger, *syncBuf) {
	b := &syncBuf{t: t}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// manualCRLManager serves manual certificates (host -> cert, key files)
// from storage dir with fast CRL refreshes.
func manualCRLManager(t *testing.T, storage string, log *slog.Logger, files map[string][2]string, setup func(*crlWatcher)) (*Manager, *routes.Table) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[storage]\ndir = %q\n", storage)
	for host, f := range files {
		fmt.Fprintf(&b, "[[route]]\nhosts = [%q]\ncert = %q\nkey = %q\nupstream = \"http://127.0.0.1:1\"\n", host, f[0], f[1])
	}
	cfg, err := routes.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, Options{Logger: log, OCSPCheckInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(m.Close) })
	closeM := func() { once.Do(m.Close) }
	closers.Store(m, closeM)
	m.crls.setLimits(200*time.Millisecond, 400*time.Millisecond, 1<<20, 5*time.Second)
	if setup != nil {
		setup(m.crls)
	}
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	return m, table
}

// closers holds each test manager's idempotent Close.
var closers sync.Map

func closeManager(m *Manager) {
	if f, ok := closers.Load(m); ok {
		f.(func())()
	}
}

func crlStatus(m *Manager, leaf *x509.Certificate) (CRLInfo, error) {
	for _, c := range m.cache.AllMatchingCertificates(leaf.DNSNames[0]) {
		if c.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			if ci, ok := m.crls.info(c.Leaf); ok {
				return ci, nil
			}
			return CRLInfo{}, fmt.Errorf("certificate %s not watched", leaf.DNSNames[0])
		}
	}
	return CRLInfo{}, fmt.Errorf("certificate %s not cached", leaf.DNSNames[0])
}

func waitCRL(t *testing.T, m *Manager, leaf *x509.Certificate, want string) CRLInfo {
	t.Helper()
	var got CRLInfo
	testkit.WaitFor(t, 15*time.Second, "CRL status "+want, func() error {
		ci, err := crlStatus(m, leaf)
		if err != nil {
			return err
		}
		got = ci
		if ci.Status != want {
			return fmt.Errorf("status %+v", ci)
		}
		return nil
	})
	return got
}

// A manual certificate naming a CRL (and no OCSP responder): not listed
// is good; listed after `openssl ca -revoke` is an ERROR and one count
// in gatehouse_cert_revoked_total{source="manual"}, once; after a
// restart with the CRL server down, the persisted CRL still says so.
func TestCRLManualRevoked(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	certFile, keyFile, leaf := ca.issue("crl.test", srv.URL)
	srv.set(ca.crl(3600))
	storage := t.TempDir()
	log, logs := captureLog(t)
	revoked := testutil.ToFloat64(metricRevoked.WithLabelValues("manual"))

	m, table := manualCRLManager(t, storage, log, map[string][2]string{"crl.test": {certFile, keyFile}}, nil)
	waitCRL(t, m, leaf, "good")
	if s, err := servedSerial(m, table, "crl.test"); err != nil || s != leaf.SerialNumber.Text(16) {
		t.Fatalf("handshake: serial %s, %v", s, err)
	}

	ca.revoke(certFile)
	srv.set(ca.crl(3600))
	waitCRL(t, m, leaf, "revoked")
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "MANUAL CERTIFICATE IS REVOKED") {
		t.Errorf("no ERROR reporting the revoked manual certificate in the log")
	}
	// more refreshes (the CRL is fetched again at least every 400ms)
	// do not count it again
	n := srv.requests.Load()
	testkit.WaitFor(t, 10*time.Second, "two more CRL fetches", func() error {
		if srv.requests.Load() < n+2 {
			return fmt.Errorf("%d requests", srv.requests.Load())
		}
		return nil
	})
	if d := testutil.ToFloat64(metricRevoked.WithLabelValues("manual")) - revoked; d != 1 {
		t.Fatalf("gatehouse_cert_revoked_total{source=manual} rose by %v, want 1", d)
	}
	closeManager(m)

	// restart with the CRL server down: the persisted CRL is used
	srv.close()
	log2, logs2 := captureLog(t)
	m2, _ := manualCRLManager(t, storage, log2, map[string][2]string{"crl.test": {certFile, keyFile}}, nil)
	ci := waitCRL(t, m2, leaf, "revoked")
	// the line follows the load that set the state: wait for it, bounded
	testkit.WaitFor(t, 5*time.Second, "a log of the persisted CRL being loaded at restart", func() error {
		if !strings.Contains(logs2.String(), "loaded persisted CRL") {
			return errors.New("not logged")
		}
		return nil
	})
	waitRevokedCount(t, "manual", revoked, 2)
	t.Logf("after restart: %+v", ci)
}

// A CRL the certificate's issuer did not sign -- here one made by
// another `openssl ca` with the same name and its own key, listing the
// certificate -- is no information: never a revocation. Nor are a stale
// CRL, garbage, or an HTTP error. The issuer's own CRL then is.
func TestCRLInvalidIgnored(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	forger := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	certFile, keyFile, leaf := ca.issue("bad.test", srv.URL)
	forger.revoke(certFile)
	srv.set(forger.crl(3600))
	revoked := testutil.ToFloat64(metricRevoked.WithLabelValues("manual"))
	log, _ := captureLog(t)
	m, _ := manualCRLManager(t, t.TempDir(), log, map[string][2]string{"bad.test": {certFile, keyFile}}, nil)

	wantErr := func(what, sub string) {
		t.Helper()
		testkit.WaitFor(t, 15*time.Second, what+" rejected", func() error {
			ci, err := crlStatus(m, leaf)
			if err != nil {
				return err
			}
			if ci.Status != "unknown" {
				return fmt.Errorf("status %s: %+v", ci.Status, ci)
			}
			if !strings.Contains(ci.LastError, sub) {
				return fmt.Errorf("last error %q", ci.LastError)
			}
			return nil
		})
	}
	wantErr("CRL signed by another key", "signature")
	srv.set([]byte("not a CRL"))
	wantErr("garbage", "invalid CRL")
	srv.mu.Lock()
	srv.status = http.StatusServiceUnavailable
	srv.mu.Unlock()
	wantErr("HTTP 503", "HTTP 503")
	// the issuer's own CRL listing it, but stale (nextUpdate passed)
	ca.revoke(certFile)
	stale := ca.crl(1)
	time.Sleep(1100 * time.Millisecond)
	srv.set(stale)
	wantErr("stale CRL", "stale")
	if d := testutil.ToFloat64(metricRevoked.WithLabelValues("manual")) - revoked; d != 0 {
		t.Fatalf("an invalid CRL counted as a revocation (%v)", d)
	}
	// the same revocation in a current CRL from the issuer counts
	srv.set(ca.crl(3600))
	waitCRL(t, m, leaf, "revoked")
	waitRevokedCount(t, "manual", revoked, 1)
}

// waitRevokedCount waits (bounded) until gatehouse_cert_revoked_total
// {source} has risen by want since base: the watcher marks a
// certificate revoked before it reports it (the report counts), so the
// status a test waits for can be seen a moment before the count. A
// count that goes past want fails at once.
func waitRevokedCount(t *testing.T, source string, base, want float64) {
	t.Helper()
	testkit.WaitFor(t, 5*time.Second, "gatehouse_cert_revoked_total{source="+source+"} counted", func() error {
		d := testutil.ToFloat64(metricRevoked.WithLabelValues(source)) - base
		if d > want {
			t.Fatalf("gatehouse_cert_revoked_total{source=%s} rose by %v, want %v", source, d, want)
		}
		if d != want {
			return fmt.Errorf("rose by %v, want %v", d, want)
		}
		return nil
	})
}

// Handshakes never wait on the CRL server: while it hangs, handshakes
// succeed; the fetch itself gives up at the fetch timeout.
func TestCRLFetchOffHandshakePath(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	srv.hang = make(chan struct{})
	certFile, keyFile, leaf := ca.issue("hang.test", srv.URL)
	log, _ := captureLog(t)
	m, table := manualCRLManager(t, t.TempDir(), log, map[string][2]string{"hang.test": {certFile, keyFile}},
		func(w *crlWatcher) { w.setLimits(time.Minute, time.Hour, 1<<20, 5*time.Second) })
	testkit.WaitFor(t, 10*time.Second, "the CRL fetch to reach the hanging server", func() error {
		if srv.requests.Load() == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})
	for i := range 5 {
		if s, err := servedSerial(m, table, "hang.test"); err != nil || s != leaf.SerialNumber.Text(16) {
			t.Fatalf("handshake %d while the CRL server hangs: serial %s, %v", i, s, err)
		}
	}
	if ci, err := crlStatus(m, leaf); err != nil || ci.LastError != "" || ci.Status != "unknown" {
		t.Fatalf("fetch finished before the handshakes were made (%+v, %v): the test shows nothing", ci, err)
	}
	testkit.WaitFor(t, 15*time.Second, "the fetch to time out", func() error {
		ci, err := crlStatus(m, leaf)
		if err != nil {
			return err
		}
		if !strings.Contains(ci.LastError, "deadline exceeded") && !strings.Contains(ci.LastError, "Timeout") {
			return fmt.Errorf("last error %q", ci.LastError)
		}
		return nil
	})
}

// Certificates sharing a CRL URL share one fetch.
func TestCRLSharedURLFetchedOnce(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	files := map[string][2]string{}
	var leaves []*x509.Certificate
	for i := range 6 {
		name := fmt.Sprintf("s%d.test", i)
		c, k, leaf := ca.issue(name, srv.URL)
		files[name] = [2]string{c, k}
		leaves = append(leaves, leaf)
	}
	ca.revoke(filepath.Join(ca.dir, "s3.test.leaf"))
	srv.set(ca.crl(3600))
	log, _ := captureLog(t)
	m, _ := manualCRLManager(t, t.TempDir(), log, files,
		func(w *crlWatcher) { w.setLimits(time.Hour, time.Hour, 1<<20, 5*time.Second) })
	for i, leaf := range leaves {
		want := "good"
		if i == 3 {
			want = "revoked"
		}
		waitCRL(t, m, leaf, want)
	}
	if n := srv.requests.Load(); n != 1 {
		t.Fatalf("%d CRL requests for 6 certificates on one URL, want 1", n)
	}
	m.crls.mu.RLock()
	lists := len(m.crls.lists)
	m.crls.mu.RUnlock()
	if lists != 1 {
		t.Errorf("%d lists held, want 1", lists)
	}
}

// A CRL over the size cap is refused, whether the server announces its
// length or not.
func TestCRLSizeCap(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	certFile, keyFile, leaf := ca.issue("big.test", srv.URL)
	der := ca.crl(3600)
	srv.set(der)
	log, _ := captureLog(t)
	limit := int64(len(der) - 1) // one byte short of the real CRL
	m, _ := manualCRLManager(t, t.TempDir(), log, map[string][2]string{"big.test": {certFile, keyFile}},
		func(w *crlWatcher) { w.setLimits(200*time.Millisecond, 400*time.Millisecond, limit, 5*time.Second) })
	for _, chunked := range []bool{false, true} {
		srv.mu.Lock()
		srv.chunked = chunked
		srv.mu.Unlock()
		n := srv.requests.Load()
		testkit.WaitFor(t, 15*time.Second, fmt.Sprintf("oversized CRL refused (chunked %v)", chunked), func() error {
			ci, err := crlStatus(m, leaf)
			if err != nil {
				return err
			}
			if srv.requests.Load() <= n || !strings.Contains(ci.LastError, "allowed") || ci.Status != "unknown" {
				return fmt.Errorf("%+v", ci)
			}
			return nil
		})
	}
	m.crls.setLimits(200*time.Millisecond, 400*time.Millisecond, int64(len(der)), 5*time.Second)
	waitCRL(t, m, leaf, "good")
}

// A managed certificate found on its CA's CRL is replaced at once.
// Pebble (2.10.3) neither publishes CRLs nor puts a CRL distribution
// point in its certificates, so the revoked certificate is one from a
// real `openssl ca` stored as an ACME certificate (as if the ACME CA had
// issued it), and Pebble issues the replacement.
func TestCRLManagedReplaced(t *testing.T) {
	dns, err := acmetest.StartDNS(func(string) (string, bool) { return "127.0.0.1", true })
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	pebble, err := acmetest.StartPebble(acmetest.PebbleOptions{DNSAddr: dns.Addr(), AlwaysValid: true, NoBadNonce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pebble.Stop()
	// the challenge ports are held, so certmagic leaves challenges to
	// "gatehouse's listeners"; Pebble validates nothing (AlwaysValid)
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()

	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	certFile, keyFile, leaf := ca.issue("managed.test", srv.URL)
	srv.set(ca.crl(3600))

	storage := t.TempDir()
	cfg, err := routes.Parse([]byte(fmt.Sprintf(`
[acme]
email      = "ops@example.test"
directory  = %q
ca_root    = %q
self_check = false
[storage]
dir = %q
[[route]]
hosts    = ["managed.test"]
upstream = "http://127.0.0.1:1"
`, pebble.DirectoryURL, pebble.CACertFile, storage)))
	if err != nil {
		t.Fatal(err)
	}
	// store the openssl certificate where certmagic keeps the ACME
	// issuer's certificate for managed.test
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	issuerKey := acmeIssuerKey(t, pebble.DirectoryURL)
	for key, v := range map[string][]byte{
		siteKey(issuerKey, "managed.test", ".crt"):  certPEM,
		siteKey(issuerKey, "managed.test", ".key"):  keyPEM,
		siteKey(issuerKey, "managed.test", ".json"): []byte(`{"sans":["managed.test"]}`),
	} {
		p := filepath.Join(storage, filepath.FromSlash(key))
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, v, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	log, logs := captureLog(t)
	port := hold.Addr().(*net.TCPAddr).Port
	m, err := New(cfg, Options{Logger: log, OCSPCheckInterval: 100 * time.Millisecond, HTTPPort: port, TLSPort: port, ListenHost: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.crls.setLimits(200*time.Millisecond, 400*time.Millisecond, 1<<20, 5*time.Second)
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 20*time.Second, "the stored certificate served", func() error {
		s, err := servedSerial(m, table, "managed.test")
		if err != nil {
			return err
		}
		if s != leaf.SerialNumber.Text(16) {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
	waitCRL(t, m, leaf, "good")
	acmeRevoked := testutil.ToFloat64(metricRevoked.WithLabelValues("acme"))

	ca.revoke(certFile)
	srv.set(ca.crl(3600))
	testkit.WaitFor(t, 60*time.Second, "a replacement served", func() error {
		c, err := servedCert(m, table, "managed.test")
		if err != nil {
			return err
		}
		if c.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			return fmt.Errorf("still serving the revoked certificate")
		}
		if bytes.Equal(c.RawIssuer, ca.cert.RawSubject) {
			return fmt.Errorf("serving another certificate of the openssl CA")
		}
		return nil
	})
	if d := testutil.ToFloat64(metricRevoked.WithLabelValues("acme")) - acmeRevoked; d != 1 {
		t.Errorf("gatehouse_cert_revoked_total{source=acme} rose by %v, want 1", d)
	}
	// logged once the swap returned: seen a moment after the new certificate
	testkit.WaitFor(t, 5*time.Second, "a log of the replacement", func() error {
		if !strings.Contains(logs.String(), "revoked certificate replaced") {
			return errors.New("not logged")
		}
		return nil
	})
}

// acmeIssuerKey is the storage issuer key certmagic uses for an ACME
// directory.
func acmeIssuerKey(t *testing.T, dir string) string {
	t.Helper()
	return (&certmagic.ACMEIssuer{CA: dir}).IssuerKey()
}

func servedCert(m *Manager, table *routes.Table, name string) (*x509.Certificate, error) {
	e := table.Lookup(name)
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	go func() {
		s := tls.Server(srv, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.GetCertificate(e, h)
		}})
		s.SetDeadline(time.Now().Add(5 * time.Second))
		s.Handshake()
		io.Copy(io.Discard, s)
	}()
	c := tls.Client(cli, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// A CRL server that keeps failing is asked with backoff (200ms doubling
// here), not at every check (100ms here).
func TestCRLFailureBackoff(t *testing.T) {
	ca := newOpensslCA(t, "crl test CA")
	srv := startCRLServer(t)
	srv.status = http.StatusServiceUnavailable
	certFile, keyFile, leaf := ca.issue("down.test", srv.URL)
	log, _ := captureLog(t)
	m, _ := manualCRLManager(t, t.TempDir(), log, map[string][2]string{"down.test": {certFile, keyFile}},
		func(w *crlWatcher) { w.setLimits(200*time.Millisecond, 10*time.Second, 1<<20, 5*time.Second) })
	testkit.WaitFor(t, 10*time.Second, "first fetch", func() error {
		if srv.requests.Load() == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	first := srv.requests.Load()
	time.Sleep(3 * time.Second)
	// backoff: at most 200+400+800+1600 ms apart -> 4 more in 3 s;
	// without it, one per 100 ms check
	n := srv.requests.Load() - first
	if n < 1 || n > 6 {
		t.Fatalf("%d CRL requests in 3 s after the first failure; want 1..6 (backoff 200ms doubling)", n)
	}
	ci, err := crlStatus(m, leaf)
	if err != nil || ci.Status != "unknown" || !strings.Contains(ci.LastError, "HTTP 503") {
		t.Fatalf("status %+v, %v", ci, err)
	}
	t.Logf("%d requests in 3 s after the first; next try %s", n, time.Until(ci.NextFetch).Round(time.Millisecond))
}
