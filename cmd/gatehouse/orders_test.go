package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// withLogs sends gatehouse's log to the test output and to logs.
func withLogs(t *testing.T, logs *logBuffer) func(*startOptions) {
	return func(o *startOptions) {
		o.logger = slog.New(slog.NewTextHandler(io.MultiWriter(testkit.LogWriter(t), logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

// nameStatus returns what the running instance reports about name.
func nameStatus(in *instance, name string) tlsconfig.NameStatus {
	for _, st := range in.certs.Status() {
		if st.Name == name {
			return st
		}
	}
	return tlsconfig.NameStatus{Name: name}
}

// waitStatusError waits until name's reported error contains want.
func waitStatusError(t *testing.T, in *instance, name, want string, limit time.Duration) tlsconfig.NameStatus {
	t.Helper()
	var st tlsconfig.NameStatus
	testkit.WaitFor(t, limit, fmt.Sprintf("%s reported with %q", name, want), func() error {
		st = nameStatus(in, name)
		if !strings.Contains(st.LastError, want) {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	return st
}

func fileStorage(e *env) certmagic.Storage { return &certmagic.FileStorage{Path: e.storage} }

// metricValue returns the sum of the admin endpoint's samples whose
// line starts with prefix.
func metricValue(t *testing.T, e *env, prefix string) float64 {
	t.Helper()
	res, err := http.Get("http://" + e.admLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

// A name whose DNS leads elsewhere is never ordered: the self-check
// finds that out first and says what it found. Once DNS is fixed, a
// restart orders at once (self-check failures cost the CA nothing and
// hold back no later attempt).
func TestSelfCheckHoldsMisdirectedNames(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{NoBadNonce: true})
	e.dns.SetA("away.test", "127.0.0.2")  // nothing listens there
	e.dns.SetA("other.test", "127.0.0.3") // another web server is there
	other := otherServer(t, "127.0.0.3", port(e.httpLn), port(e.httpsLn))
	up := upstream(t, "A")
	cfg := e.config(routeTOML("near.test", up.URL) + routeTOML("away.test", up.URL) + routeTOML("other.test", up.URL))
	in := e.start(cfg)

	waitLeaf(t, e, "near.test", 30*time.Second)
	away := waitStatusError(t, in, "away.test", "does not lead to this gatehouse", 15*time.Second)
	for _, want := range []string{"127.0.0.2", "connection refused"} {
		if !strings.Contains(away.LastError, want) {
			t.Errorf("away.test: reported error lacks %q: %s", want, away.LastError)
		}
	}
	otherSt := waitStatusError(t, in, "other.test", "does not lead to this gatehouse", 15*time.Second)
	if !strings.Contains(otherSt.LastError, "HTTP 404") || !strings.Contains(otherSt.LastError, "another certificate") {
		t.Errorf("other.test: want the other server's answers (HTTP 404, another certificate) reported: %s", otherSt.LastError)
	}
	if other.hits() == 0 {
		t.Errorf("the self-check never reached the other server")
	}
	t.Logf("away.test: %s", away.LastError)
	t.Logf("other.test: %s", otherSt.LastError)
	for _, name := range []string{"away.test", "other.test"} {
		if n := e.pebble.OrderAttempts(name); n != 0 {
			t.Errorf("%s: %d orders reached the CA, want 0", name, n)
		}
		rec, err := tlsconfig.LoadAttempt(context.Background(), fileStorage(e), name)
		if err != nil || rec == nil || rec.Stage != "self_check" || rec.Failures != 0 || !rec.NextOrder.IsZero() {
			t.Errorf("%s: stored record %+v (%v), want stage self_check, no failed order, no hold", name, rec, err)
		}
	}
	if n := e.pebble.OrderAttempts("near.test"); n != 1 {
		t.Errorf("near.test: %d orders, want 1", n)
	}
	if v := metricValue(t, e, `gatehouse_cert_order_held_total{reason="self_check"}`); v < 2 {
		t.Errorf("gatehouse_cert_order_held_total{reason=\"self_check\"} = %v, want >= 2", v)
	}

	// DNS fixed, restart: ordered at once
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.dns.SetA("away.test", "127.0.0.1")
	e.rebind()
	began := time.Now()
	e.start(cfg)
	waitLeaf(t, e, "away.test", 30*time.Second)
	t.Logf("away.test served %v after the restart with DNS fixed", time.Since(began).Round(time.Millisecond))
	if rec, _ := tlsconfig.LoadAttempt(context.Background(), fileStorage(e), "away.test"); rec != nil {
		t.Errorf("record still stored after success: %+v", rec)
	}
}

// otherSrv is a web server that is not gatehouse, on another loopback
// address with gatehouse's ports: where a misdirected name leads.
type otherSrv struct{ n chan struct{} }

func (o *otherSrv) hits() int { return len(o.n) }

func otherServer(t *testing.T, ip string, httpPort, tlsPort int) *otherSrv {
	t.Helper()
	o := &otherSrv{n: make(chan struct{}, 1000)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case o.n <- struct{}{}:
		default:
		}
		http.NotFound(w, r)
	})
	hl, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, httpPort))
	if err != nil {
		t.Skipf("cannot listen on %s (loopback alias): %v", ip, err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(hl)
	t.Cleanup(func() { hs.Close() })
	ca, err := acmetest.NewTestCA("other server CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{"other.test"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, tlsPort))
	if err != nil {
		t.Fatal(err)
	}
	ts := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"acme-tls/1", "h2", "http/1.1"}}}
	go ts.ServeTLS(tl, "", "")
	t.Cleanup(func() { ts.Close() })
	return o
}

// A name that keeps failing validation at the CA is ordered once, not
// once per start: five quick restarts place no further order, and each
// says until when it holds back. When that time has passed, the next
// order goes out, and the wait after it grows (1 min, then 2 min).
func TestCrashLoopDoesNotRepeatOrders(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{NoBadNonce: true})
	// split horizon: the CA sees the name elsewhere, gatehouse's own
	// resolver sees gatehouse; the self-check passes, validation fails
	e.dns.SetA("loop.test", "127.0.0.2")
	self, err := acmetest.StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(self.Close)
	e.selfDNS = self
	e.acmeExtra = `challenges = ["http-01"]` // one order per attempt (no second challenge type to fall back to)
	up := upstream(t, "A")
	cfg := e.config(routeTOML("loop.test", up.URL))
	ctx := context.Background()

	began := time.Now()
	var reports []string
	for i := range 5 {
		if i > 0 {
			e.rebind()
		}
		in := e.start(cfg)
		want := "holding the order for loop.test until"
		if i == 0 {
			want = "127.0.0.2" // the CA's validation error
		}
		reports = append(reports, waitStatusError(t, in, "loop.test", want, 30*time.Second).LastError)
		if err := in.shutdown(2 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("5 starts in %v; first: %s", time.Since(began).Round(time.Millisecond), reports[0])
	t.Logf("restart: %s", reports[1])
	if n := e.pebble.OrderAttempts("loop.test"); n != 1 {
		t.Errorf("%d orders reached the CA over 5 starts, want 1", n)
	}
	rec, err := tlsconfig.LoadAttempt(ctx, fileStorage(e), "loop.test")
	if err != nil || rec == nil {
		t.Fatalf("record: %+v, %v", rec, err)
	}
	wait := rec.NextOrder.Sub(rec.LastOrder)
	t.Logf("record: %d failure(s), stage %s, next order %v after the last", rec.Failures, rec.Stage, wait.Round(time.Second))
	if rec.Failures != 1 || rec.Stage != "order" || wait < time.Minute || wait > time.Minute+30*time.Second {
		t.Errorf("record %+v: want 1 failure, stage order, next order about 1 min after the last", rec)
	}

	// the hold has passed (as if a minute went by): one more order, and
	// a longer hold after it fails
	rec.NextOrder = time.Now().Add(-time.Second)
	b, _ := json.Marshal(rec)
	if err := fileStorage(e).Store(ctx, "gatehouse/attempts/loop.test.json", b); err != nil {
		t.Fatal(err)
	}
	e.rebind()
	in := e.start(cfg)
	testkit.WaitFor(t, 30*time.Second, "the second failed order recorded", func() error {
		r, err := tlsconfig.LoadAttempt(ctx, fileStorage(e), "loop.test")
		if err != nil || r == nil || r.Failures != 2 {
			return fmt.Errorf("record %+v %v", r, err)
		}
		rec = r
		return nil
	})
	if n := e.pebble.OrderAttempts("loop.test"); n != 2 {
		t.Errorf("%d orders after the hold passed, want 2", n)
	}
	wait = rec.NextOrder.Sub(rec.LastOrder)
	t.Logf("after the 2nd failure: next order %v after the last", wait.Round(time.Second))
	if wait < 2*time.Minute || wait > 2*time.Minute+30*time.Second {
		t.Errorf("hold after 2 failures: %v, want about 2 min", wait)
	}
	if st := nameStatus(in, "loop.test"); st.NextOrder.IsZero() {
		t.Errorf("status does not say when the next order may go: %+v", st)
	}

	// and `gatehouse certs` shows it from storage
	out, errOut, code := runCerts(t, "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("certs --json: exit %d: %s", code, errOut)
	}
	var infos []tlsconfig.CertInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("certs --json: %v\n%s", err, out)
	}
	for _, ci := range infos {
		if ci.Name == "loop.test" {
			if !strings.Contains(ci.LastError, "127.0.0.2") || !ci.NextRetry.Equal(rec.NextOrder) {
				t.Errorf("certs shows last_error %q next_retry %v; want the validation error and %v", ci.LastError, ci.NextRetry, rec.NextOrder)
			}
			return
		}
	}
	t.Errorf("certs does not list loop.test: %s", out)
}

// With several CAs listed, a CA that is down is skipped within the same
// attempt: the certificate comes from the next one at once.
func TestIssuerFallbackFirstCADown(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	down, err := acmetest.StartPebble(acmetest.PebbleOptions{HTTPPort: port(e.httpLn), TLSPort: port(e.httpsLn), DNSAddr: e.dns.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	down.Stop()
	e.topExtra = fmt.Sprintf(`
[[acme.issuer]]
directory = %q
ca_root   = %q

[[acme.issuer]]
directory = %q
ca_root   = %q
`, down.DirectoryURL, down.CACertFile, e.pebble.DirectoryURL, e.pebble.CACertFile)
	logs := &logBuffer{t: t}
	up := upstream(t, "A")
	began := time.Now()
	e.start(e.config(routeTOML("fallback.test", up.URL)), withLogs(t, logs))
	leaf := waitLeaf(t, e, "fallback.test", 30*time.Second) // verified against the second CA's roots
	took := time.Since(began)
	t.Logf("certificate from the second CA %v after start; issuer %q", took.Round(time.Millisecond), leaf.Issuer.CommonName)
	if n := e.pebble.Orders("fallback.test"); n != 1 {
		t.Errorf("second CA received %d orders, want 1", n)
	}
	if took > 20*time.Second {
		t.Errorf("took %v: the fallback waited for a retry instead of trying the next CA in the same attempt", took)
	}
	logs.waitLog(t, 10*time.Second, "could not get certificate from issuer", strings.TrimPrefix(strings.TrimSuffix(down.DirectoryURL, "/dir"), "https://")) // logged after what it reports: waited for, bounded
}

// badCA is an HTTPS server that is no ACME CA: it answers every request
// per mode, after delay, and counts requests.
type badCA struct {
	srv    *httptest.Server
	caFile string
	n      atomic.Int64
}

func startBadCA(t *testing.T, delay time.Duration, mode string) *badCA {
	t.Helper()
	b := &badCA{}
	b.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.n.Add(1)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			panic(http.ErrAbortHandler) // drop the connection, answer nothing
		}
		switch mode {
		case "garbage": // JSON, but no ACME directory
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"newAccount": 42, "meta": [1, 2, "three"], "newNonce": {"x": null}}`)
		case "error": // a CA in trouble
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"the CA is down for maintenance","status":503}`)
		case "html": // a web page where the CA should be
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>Welcome to nginx!</body></html>")
		}
	}))
	t.Cleanup(b.srv.Close)
	b.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(b.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *badCA) issuerTOML() string {
	return fmt.Sprintf("\n[[acme.issuer]]\ndirectory = %q\nca_root = %q\n", b.srv.URL+"/dir", b.caFile)
}

// CAs that answer garbage, errors, a web page, or slowly are each tried
// once and skipped within the same attempt; the certificate comes from
// the next CA, and each failure is logged with what the CA said.
func TestBadCAsFallThrough(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	garbage, errs, html := startBadCA(t, 0, "garbage"), startBadCA(t, 0, "error"), startBadCA(t, 0, "html")
	slow := startBadCA(t, 3*time.Second, "garbage")
	e.topExtra = garbage.issuerTOML() + errs.issuerTOML() + html.issuerTOML() + slow.issuerTOML() +
		fmt.Sprintf("\n[[acme.issuer]]\ndirectory = %q\nca_root = %q\n", e.pebble.DirectoryURL, e.pebble.CACertFile)
	logs := &logBuffer{t: t}
	up := upstream(t, "A")
	began := time.Now()
	e.start(e.config(routeTOML("badca.test", up.URL)), withLogs(t, logs))
	waitLeaf(t, e, "badca.test", 60*time.Second)
	took := time.Since(began)
	t.Logf("certificate from the 5th CA %v after start; requests: garbage %d, error %d, html %d, slow %d",
		took.Round(time.Millisecond), garbage.n.Load(), errs.n.Load(), html.n.Load(), slow.n.Load())
	for name, b := range map[string]*badCA{"garbage": garbage, "error": errs, "html": html, "slow": slow} {
		if b.n.Load() == 0 {
			t.Errorf("the %s CA was never asked", name)
		}
		host := strings.TrimPrefix(b.srv.URL, "https://")
		logs.waitLog(t, 10*time.Second, "could not get certificate from issuer", host) // logged after what it reports: waited for, bounded
	}
	if n := e.pebble.Orders("badca.test"); n != 1 {
		t.Errorf("the working CA received %d orders, want 1", n)
	}
	// the slow CA costs its delay (3 s) per request it gets
	if took > 40*time.Second {
		t.Errorf("took %v", took)
	}
	for _, want := range []string{"the CA is down for maintenance", "text/html"} {
		logs.waitLog(t, 10*time.Second, want) // logged after what it reports: waited for, bounded
	}
}

// A CA that accepts connections and never answers holds an attempt for
// a bounded time: certmagic's HTTP timeout per request (30 s), which
// acmez tries 3 times. Shortened here to 1 s to see the bound in a test.
func TestHangingCABounded(t *testing.T) {
	old := certmagic.HTTPTimeout
	certmagic.HTTPTimeout = time.Second
	t.Cleanup(func() { certmagic.HTTPTimeout = old })
	e := newEnv(t, acmetest.PebbleOptions{})
	hang := startBadCA(t, time.Hour, "garbage")
	e.topExtra = hang.issuerTOML() + fmt.Sprintf("\n[[acme.issuer]]\ndirectory = %q\nca_root = %q\n", e.pebble.DirectoryURL, e.pebble.CACertFile)
	up := upstream(t, "A")
	began := time.Now()
	e.start(e.config(routeTOML("hang.test", up.URL)))
	waitLeaf(t, e, "hang.test", 30*time.Second)
	took := time.Since(began)
	t.Logf("certificate from the second CA %v after start; the hanging CA got %d requests", took.Round(time.Millisecond), hang.n.Load())
	if took < 3*time.Second || took > 10*time.Second {
		t.Errorf("took %v: want about 3 tries of the 1 s timeout", took)
	}
}

// Storage that turns read-only (a remount) while gatehouse runs: the
// certificate in memory keeps serving past its renewal time, the
// failure is reported (/readyz, metric, log), nothing in storage is
// deleted or changed, and recovery is reported too.
func TestStorageTurnsReadOnly(t *testing.T) {
	const life = 30 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"ro": life}, NoARI: true})
	logs := &logBuffer{t: t}
	up := upstream(t, "A")
	// the storage probe every 250 ms (its [storage] health_interval minimum is 1 s)
	fastHealth := func(o *startOptions) { o.healthInterval = 250 * time.Millisecond }
	e.start(e.config(routeTOML("ro.test", up.URL)), fastRenew, fastHealth, withLogs(t, logs))
	first := waitLeaf(t, e, "ro.test", 30*time.Second)
	before := snapshotDir(t, e.storage)

	writable := testkit.ReadOnly(t, e.storage)
	readyz := func() string {
		res, err := http.Get("http://" + e.admLn.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		return readAll(t, res)
	}
	testkit.WaitFor(t, 5*time.Second, "storage failure on /readyz", func() error {
		if body := readyz(); !strings.Contains(body, "read-only file system") {
			return fmt.Errorf("readyz: %s", body)
		}
		return nil
	})
	if v := metricValue(t, e, "gatehouse_storage_writable"); v != 0 {
		t.Errorf("gatehouse_storage_writable = %v, want 0", v)
	}
	// through the renewal time (half of 30 s) and beyond
	l := startLoad(t, e, "ro.test", 4, life, nil)
	renewAt := first.NotBefore.Add(life / 2)
	time.Sleep(time.Until(renewAt.Add(5 * time.Second)))
	l.end()
	if serials, _ := l.served(); len(serials) != 1 || serials[0].Cmp(first.SerialNumber) != 0 {
		t.Errorf("served serials %v, want only the first certificate's", serials)
	}
	if n := logs.count("read-only file system", "level=ERROR"); n == 0 {
		t.Errorf("no error logged about the read-only storage")
	}
	t.Logf("renewal attempts that failed on storage: %d log lines", logs.count("failed storage check"))
	if after := snapshotDir(t, e.storage); !equalSnapshots(before, after) {
		t.Errorf("storage changed while read-only:\nbefore %v\nafter  %v", before, after)
	}

	writable()
	testkit.WaitFor(t, 5*time.Second, "recovery reported", func() error {
		if body := readyz(); strings.Contains(body, "storage_error") {
			return fmt.Errorf("readyz: %s", body)
		}
		return nil
	})
	logs.waitLog(t, time.Second, "storage takes writes again")
}

// snapshotDir maps every file under dir to its size and content hash,
// but the storage probe's (written and deleted every health_interval).
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p == filepath.Join(dir, "gatehouse", "probe") {
			return fs.SkipDir
		}
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, dir)] = fmt.Sprintf("%d:%x", len(b), sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalSnapshots(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A renewal whose save fails half-way (the certificate file cannot be
// replaced; the key file already was) leaves storage as it was: the old
// certificate with its own key, so the next start serves it without a
// new order. (certmagic alone deletes the new key and leaves the old
// certificate keyless.)
func TestFailedSaveKeepsCertificateAndKey(t *testing.T) {
	const life = 30 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"p": life}, NoARI: true})
	logs := &logBuffer{t: t}
	up := upstream(t, "A")
	cfg := e.config(routeTOML("save.test", up.URL))
	in := e.start(cfg, fastRenew, withLogs(t, logs))
	first := waitLeaf(t, e, "save.test", 30*time.Second)
	var crt string
	_ = filepath.WalkDir(e.storage, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, "/save.test.crt") {
			crt = p
		}
		return err
	})
	if crt == "" {
		t.Fatal("no certificate file in storage")
	}
	before := snapshotDir(t, filepath.Dir(crt))
	// the certificate file can no longer be replaced; the key file can
	if out, err := exec.Command("chattr", "+i", crt).CombinedOutput(); err != nil {
		t.Skipf("chattr +i (needs CAP_LINUX_IMMUTABLE and ext4/xfs): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", crt).Run() })

	logs.waitLog(t, life, "Renew: saving assets") // the renewal was issued; its save failed
	if after := snapshotDir(t, filepath.Dir(crt)); !equalSnapshots(before, after) {
		t.Errorf("certificate files changed by the failed save:\nbefore %v\nafter  %v", before, after)
	}
	if n := e.pebble.Issued("save.test"); n != 2 {
		t.Errorf("Pebble issued %d certificates, want 2 (the renewal was issued, only its save failed)", n)
	}
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = exec.Command("chattr", "-i", crt).Run()

	// next start, CA down: what storage holds is served as is
	e.pebble.Stop()
	e.rebind()
	e.start(cfg)
	got := waitLeaf(t, e, "save.test", 5*time.Second)
	if got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("after restart: serial %x, want the stored %x", got.SerialNumber, first.SerialNumber)
	}
}
