package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// fastRenew makes certmagic scan for due renewals and ARI updates every
// 250 ms instead of every 10 minutes.
func fastRenew(o *startOptions) { o.renewInterval = 250 * time.Millisecond }

func routeTOML(name, upstreamURL string) string {
	return fmt.Sprintf("[[route]]\nhosts = [%q]\nupstream = %q\n", name, upstreamURL)
}

// waitLeaf waits until gatehouse serves a certificate for name that
// verifies against the env's roots, and returns it.
func waitLeaf(t *testing.T, e *env, name string, limit time.Duration) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	testkit.WaitFor(t, limit, "certificate for "+name, func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), name, e.roots)
		if err != nil {
			return err
		}
		defer c.Close()
		leaf = c.ConnectionState().PeerCertificates[0]
		return nil
	})
	return leaf
}

// load is a bounded stream of HTTPS requests through gatehouse, each on
// a new connection so each one is a handshake that picks up whatever
// certificate is served at that moment. It records failures and when
// each certificate serial was first served.
type load struct {
	t     *testing.T
	stop  chan struct{}
	wg    sync.WaitGroup
	reqs  atomic.Int64
	fails atomic.Int64

	mu       sync.Mutex
	errs     []string
	serials  []*big.Int
	firstAt  []time.Time
	lastLeaf *x509.Certificate
}

// startLoad runs workers request loops against https://name/ for at most
// limit; check judges each response (nil: 200 with the upstream's body).
func startLoad(t *testing.T, e *env, name string, workers int, limit time.Duration, check func(*http.Response) error) *load {
	l := &load{t: t, stop: make(chan struct{})}
	deadline := time.Now().Add(limit)
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := client(e.httpsAddr(), e.roots, false)
			c.Transport.(*http.Transport).DisableKeepAlives = true
			c.Timeout = 5 * time.Second
			for time.Now().Before(deadline) {
				select {
				case <-l.stop:
					return
				default:
				}
				l.one(c, name, check)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) one(c *http.Client, name string, check func(*http.Response) error) {
	l.reqs.Add(1)
	res, err := c.Get("https://" + name + "/load")
	if err == nil {
		body := readAll(l.t, res)
		switch {
		case check != nil:
			err = check(res)
		case res.StatusCode != http.StatusOK || !strings.HasPrefix(body, "upstream="):
			err = fmt.Errorf("HTTP %d %q", res.StatusCode, body)
		}
	}
	if err != nil {
		l.fails.Add(1)
		l.mu.Lock()
		if len(l.errs) < 10 {
			l.errs = append(l.errs, err.Error())
		}
		l.mu.Unlock()
		return
	}
	leaf := res.TLS.PeerCertificates[0]
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastLeaf = leaf
	for _, s := range l.serials {
		if s.Cmp(leaf.SerialNumber) == 0 {
			return
		}
	}
	l.serials = append(l.serials, leaf.SerialNumber)
	l.firstAt = append(l.firstAt, time.Now())
}

// served returns the serials served so far, in order, and when each was
// first seen.
func (l *load) served() ([]*big.Int, []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*big.Int(nil), l.serials...), append([]time.Time(nil), l.firstAt...)
}

// waitServed waits until a serial other than old is served.
func (l *load) waitServed(limit time.Duration, old *big.Int) (*big.Int, time.Time) {
	l.t.Helper()
	var s *big.Int
	var at time.Time
	testkit.WaitFor(l.t, limit, "a new certificate served", func() error {
		serials, times := l.served()
		for i, x := range serials {
			if x.Cmp(old) != 0 {
				s, at = x, times[i]
				return nil
			}
		}
		return fmt.Errorf("still serving %x (%d requests, %d failed)", old, l.reqs.Load(), l.fails.Load())
	})
	return s, at
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// end stops the load and fails the test if any request failed.
func (l *load) end() {
	l.t.Helper()
	l.finish()
	l.t.Logf("load: %d requests, %d failed", l.reqs.Load(), l.fails.Load())
	if n := l.fails.Load(); n > 0 {
		l.t.Errorf("%d of %d requests failed through the certificate change; first errors: %v", n, l.reqs.Load(), l.errs)
	}
	if l.reqs.Load() < 20 { // under -race on a busy 2-core machine a loop makes ~10 a second
		l.t.Errorf("only %d requests: the load loop did not cover the change", l.reqs.Load())
	}
}

// A short-lived certificate (ACME profile with a 40 s validity, CA
// without ARI) is renewed at about half its life, and the swap costs no
// request.
func TestRenewalShortLivedHalfLife(t *testing.T) {
	const life = 40 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"short": life}, NoARI: true})
	e.acmeExtra = `profile = "short"`
	up := upstream(t, "A")
	e.start(e.config(routeTOML("half.test", up.URL)), fastRenew)
	first := waitLeaf(t, e, "half.test", 60*time.Second)
	if got := first.NotAfter.Sub(first.NotBefore) + time.Second; got != life {
		t.Fatalf("certificate lifetime %v, want the profile's %v", got, life)
	}

	l := startLoad(t, e, "half.test", 4, 2*life, nil)
	serial, seen := l.waitServed(life, first.SerialNumber)
	l.end()
	second := e.pebble.Certificates("half.test")
	if len(second) < 2 || second[1].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("served serial %x is not Pebble's second certificate for the name", serial)
	}
	at := second[1].NotBefore.Sub(first.NotBefore)
	frac := float64(at) / float64(life)
	t.Logf("renewed %v into a %v life (%.2f of lifetime; first served %v after issuance)", at, life, frac, seen.Sub(first.NotBefore).Round(time.Millisecond))
	// certmagic's default (1/3 remaining) would renew at 0.67.
	if frac < 0.45 || frac > 0.6 {
		t.Errorf("renewed at %.2f of the lifetime, want about 0.5", frac)
	}
	if n := e.pebble.Orders("half.test"); n != 2 {
		t.Errorf("Pebble received %d orders, want 2 (first + one renewal)", n)
	}
}

// With a CA offering ARI, the CA's suggested window decides: a window
// moved to a few seconds from now renews a 90-day certificate then.
func TestRenewalFollowsARIWindow(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{ARIRetryAfter: time.Second})
	up := upstream(t, "A")
	e.start(e.config(routeTOML("ari.test", up.URL)), fastRenew)
	first := waitLeaf(t, e, "ari.test", 60*time.Second)

	l := startLoad(t, e, "ari.test", 4, 30*time.Second, nil)
	ws := time.Now().Add(4 * time.Second).Truncate(time.Second)
	we := ws.Add(2 * time.Second)
	if err := e.pebble.SetRenewalWindow(first.SerialNumber, ws, we); err != nil {
		t.Fatal(err)
	}
	serial, _ := l.waitServed(20*time.Second, first.SerialNumber)
	l.end()
	certs := e.pebble.Certificates("ari.test")
	if len(certs) != 2 || certs[1].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("Pebble issued %d certificates for ari.test; served %x", len(certs), serial)
	}
	issued := certs[1].NotBefore
	t.Logf("ARI window %s..%s; renewed certificate issued at %s", ws.Format(time.TimeOnly), we.Format(time.TimeOnly), issued.Format(time.TimeOnly))
	// NotBefore has whole seconds; certmagic may start one check interval early
	if issued.Before(ws.Add(-time.Second)) || issued.After(we.Add(3*time.Second)) {
		t.Errorf("renewed at %s, outside the ARI window %s..%s", issued, ws, we)
	}
}

// A certificate the CA revokes gets, through ARI, a renewal window in
// the past: gatehouse replaces it at the next ARI poll, without a failed
// request.
func TestRevokedByARIReplaced(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{ARIRetryAfter: time.Second})
	up := upstream(t, "A")
	e.start(e.config(routeTOML("revari.test", up.URL)), fastRenew)
	first := waitLeaf(t, e, "revari.test", 60*time.Second)

	l := startLoad(t, e, "revari.test", 4, 30*time.Second, nil)
	time.Sleep(300 * time.Millisecond) // some requests on the old certificate first
	revoked := time.Now()
	if err := e.pebble.Revoke(first.SerialNumber, ocsp.KeyCompromise); err != nil {
		t.Fatal(err)
	}
	// Pebble answers ARI for a revoked certificate with a window one
	// second wide, an hour ago; acmez (certmagic's ACME client) rejects a
	// window that narrow as unusable. Let's Encrypt's Boulder answers
	// with 30 minutes, an hour ago: set that.
	if err := e.pebble.SetRenewalWindow(first.SerialNumber, revoked.Add(-time.Hour), revoked.Add(-30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, seen := l.waitServed(15*time.Second, first.SerialNumber)
	l.end()
	t.Logf("replacement served %v after the revocation (CA's ARI Retry-After 1 s)", seen.Sub(revoked).Round(time.Millisecond))
	if n := e.pebble.Issued("revari.test"); n != 2 {
		t.Errorf("Pebble issued %d certificates, want 2", n)
	}
}

// A Revoked OCSP answer replaces a managed certificate at once, and the
// Revoked staple is never served meanwhile.
func TestRevokedByOCSPReplaced(t *testing.T) {
	e, responder, inter := newOCSPEnv(t)
	// responses valid 4 s: gatehouse refreshes at half that, so the
	// Revoked answer is seen within 2 s (with real responders: days)
	responder.SetValidity(-time.Second, 4*time.Second)
	up := upstream(t, "A")
	e.start(e.config(routeTOML("revocsp.test", up.URL)), fastRenew,
		func(o *startOptions) { o.ocspInterval = 200 * time.Millisecond })
	first := waitLeaf(t, e, "revocsp.test", 60*time.Second)
	testkit.WaitFor(t, 10*time.Second, "a Good staple", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "revocsp.test", e.roots)
		if err != nil {
			return err
		}
		defer c.Close()
		if len(c.ConnectionState().OCSPResponse) == 0 {
			return fmt.Errorf("no staple")
		}
		return nil
	})

	var revokedStaples atomic.Int64
	check := func(res *http.Response) error {
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", res.StatusCode)
		}
		st := res.TLS
		if len(st.OCSPResponse) > 0 {
			r, err := ocsp.ParseResponseForCert(st.OCSPResponse, st.PeerCertificates[0], inter)
			if err != nil {
				return fmt.Errorf("bad staple: %v", err)
			}
			if r.Status != ocsp.Good {
				revokedStaples.Add(1)
				return fmt.Errorf("served a staple with status %d", r.Status)
			}
		}
		return nil
	}
	l := startLoad(t, e, "revocsp.test", 4, 30*time.Second, check)
	time.Sleep(300 * time.Millisecond)
	revoked := time.Now()
	if err := e.pebble.Revoke(first.SerialNumber, ocsp.Superseded); err != nil {
		t.Fatal(err)
	}
	_, seen := l.waitServed(15*time.Second, first.SerialNumber)
	time.Sleep(300 * time.Millisecond) // and some requests on the new one
	l.end()
	t.Logf("replacement served %v after the revocation (OCSP answers valid 4 s, refreshed at half-life)", seen.Sub(revoked).Round(time.Millisecond))
	if n := revokedStaples.Load(); n > 0 {
		t.Errorf("%d handshakes carried a Revoked staple", n)
	}
	if n := e.pebble.Issued("revocsp.test"); n != 2 {
		t.Errorf("Pebble issued %d certificates, want 2", n)
	}
}

// Certificates that live a minute, with the CA's ARI window spanning the
// whole lifetime (Pebble's window for so short a certificate), and
// gatehouse's renewal check left at its default: each is renewed before
// it expires, three times in a row, under steady load without one failed
// request (issue 12 point 1: a 119 s certificate was served expired for
// 40 s with certmagic's 10-minute check).
func TestRenewalMinuteCertificatesUnderLoad(t *testing.T) {
	const life = 60 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"minute": life}})
	e.acmeExtra = `profile = "minute"`
	up := upstream(t, "A")
	e.start(e.config(routeTOML("minute.test", up.URL))) // default renewal check interval
	first := waitLeaf(t, e, "minute.test", 60*time.Second)
	if got := first.NotAfter.Sub(first.NotBefore) + time.Second; got != life {
		t.Fatalf("certificate lifetime %v, want the profile's %v", got, life)
	}

	l := startLoad(t, e, "minute.test", 4, 4*life, nil)
	prev := first
	for i := 1; i <= 3; i++ {
		// a certificate issued after prev: a request that was in flight
		// across the previous swap may still report an older one
		var next *x509.Certificate
		var seen time.Time
		testkit.WaitFor(t, life, fmt.Sprintf("renewal %d served", i), func() error {
			serials, times := l.served()
			for j, x := range serials {
				for _, c := range e.pebble.Certificates("minute.test") {
					if c.SerialNumber.Cmp(x) == 0 && c.NotBefore.After(prev.NotBefore) {
						next, seen = c, times[j]
						return nil
					}
				}
			}
			return fmt.Errorf("still serving %x (%d requests, %d failed)", prev.SerialNumber, l.reqs.Load(), l.fails.Load())
		})
		t.Logf("renewal %d: issued %v into the previous certificate's %v life, served %v before it expired",
			i, next.NotBefore.Sub(prev.NotBefore), life, prev.NotAfter.Sub(seen).Round(time.Millisecond))
		if !seen.Before(prev.NotAfter) {
			t.Errorf("renewal %d: new certificate first served at %s, after the old one expired at %s", i, seen, prev.NotAfter)
		}
		prev = next
		l.mu.Lock()
		l.serials, l.firstAt = l.serials[:0], l.firstAt[:0]
		l.mu.Unlock()
	}
	l.end()
	if n := e.pebble.Issued("minute.test"); n < 4 {
		t.Errorf("Pebble issued %d certificates, want at least 4", n)
	}
}

// The handshake backstop: gatehouse restarts after its stored
// certificate expired (it was down meanwhile). The first handshake does
// not get the expired certificate: it waits, within the handshake
// timeout, for the renewal it triggers.
func TestExpiredCertificateRenewedForHandshake(t *testing.T) {
	const life = 10 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"brief": life}, NoARI: true})
	e.acmeExtra = `profile = "brief"`
	up := upstream(t, "A")
	cfg := e.config(routeTOML("lapsed.test", up.URL))
	in := e.start(cfg)
	first := waitLeaf(t, e, "lapsed.test", 60*time.Second)
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.NotAfter) + 1500*time.Millisecond)
	if n := e.pebble.Issued("lapsed.test"); n != 1 {
		t.Fatalf("Pebble issued %d certificates while gatehouse was down, want 1", n)
	}
	e.rebind()
	e.start(cfg)
	// the first handshake that gets a certificate at all (the name is
	// indexed from storage a moment after the start) must get a valid one
	var leaf *x509.Certificate
	inters := x509.NewCertPool()
	testkit.WaitFor(t, 20*time.Second, "a certificate served after the restart", func() error {
		d := &net.Dialer{Timeout: 20 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", e.httpsAddr(), &tls.Config{ServerName: "lapsed.test", InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		chain := c.ConnectionState().PeerCertificates
		leaf = chain[0]
		for _, ic := range chain[1:] {
			inters.AddCert(ic)
		}
		return nil
	})
	if leaf.SerialNumber.Cmp(first.SerialNumber) == 0 || !time.Now().Before(leaf.NotAfter) {
		t.Fatalf("served serial %x valid until %s; want a renewed certificate (the stored one, %x, expired at %s)",
			leaf.SerialNumber, leaf.NotAfter, first.SerialNumber, first.NotAfter)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "lapsed.test", Roots: e.roots, Intermediates: inters}); err != nil {
		t.Fatalf("served certificate does not verify: %v", err)
	}
}

// countingWriter counts log lines containing a message.
type countingWriter struct {
	msg string
	n   atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(strings.Count(string(p), w.msg)))
	return len(p), nil
}

// The handshake backstop with the CA down: handshakes that find the
// certificate expired trigger one renewal attempt per name and 30 s, not
// one each, and get the expired certificate (the only one there is)
// within the handshake timeout instead of hanging.
func TestExpiredCertificateBackstopPaced(t *testing.T) {
	const life = 5 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"brief": life}, NoARI: true})
	e.acmeExtra = `profile = "brief"`
	e.topExtra = "[timeouts]\nhandshake = \"2s\"\n"
	up := upstream(t, "A")
	cfg := e.config(routeTOML("down.test", up.URL))
	in := e.start(cfg)
	first := waitLeaf(t, e, "down.test", 60*time.Second)
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.pebble.Stop()
	time.Sleep(time.Until(first.NotAfter) + 1500*time.Millisecond)
	e.rebind()
	attempts := &countingWriter{msg: "renewing it now for the waiting handshake"}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testkit.LogWriter(t), attempts), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.start(cfg, func(o *startOptions) { o.logger = log })
	testkit.WaitFor(t, 10*time.Second, "the name indexed from storage", func() error {
		c, err := tls.Dial("tcp", e.httpsAddr(), &tls.Config{ServerName: "down.test", InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		return c.Close()
	})
	for i := range 8 {
		began := time.Now()
		d := &net.Dialer{Timeout: 10 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", e.httpsAddr(), &tls.Config{ServerName: "down.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake %d with the CA down: %v", i, err)
		}
		took := time.Since(began)
		leaf := c.ConnectionState().PeerCertificates[0]
		c.Close()
		if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("handshake %d: serial %x, want the expired %x", i, leaf.SerialNumber, first.SerialNumber)
		}
		if took > 5*time.Second {
			t.Errorf("handshake %d took %v: longer than the 2 s handshake timeout allows", i, took)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := attempts.n.Load(); n != 1 {
		t.Errorf("%d handshake-triggered renewal attempts, want 1 (paced at one per 30 s)", n)
	}
}
