package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// listen binds a loopback listener on a kernel-picked port.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func port(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// serveTCP runs a raw TCP test server on loopback: handle gets each
// connection (closed after it returns) with a deadline of limit. It
// returns the listener's address; the listener closes with the test.
func serveTCP(t testing.TB, limit time.Duration, handle func(net.Conn)) string {
	t.Helper()
	ln := listen(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(limit))
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// env is a test world: a DNS server answering 127.0.0.1, an in-process
// Pebble whose validation really dials gatehouse's listeners, and the
// listeners themselves, bound before Pebble starts.
type env struct {
	t                      testing.TB
	dns                    *acmetest.DNS
	pebble                 *acmetest.Pebble
	httpsLn, httpLn, admLn net.Listener
	storage                string
	roots                  *x509.CertPool
	acmeExtra              string        // extra lines for [acme]
	selfDNS                *acmetest.DNS // DNS of gatehouse's self-check; nil: dns (Pebble's)
	listenExtra            string        // extra lines for [listen]
	topExtra               string        // extra tables before the routes, e.g. [timeouts]
	ca                     *acmetest.TestCA
}

// newCAEnv is an env without Pebble, for tests where ACME is not the
// point: routes carry a cert/key from e.certFor, issued by a test CA
// that e.roots trusts. (manualEnv, in manual_test.go, writes its own
// config file for reload tests; this one keeps env.config.)
func newCAEnv(t testing.TB) *env {
	t.Helper()
	ca, err := acmetest.NewTestCA("gatehouse test CA")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, storage: filepath.Join(t.TempDir(), "storage"), ca: ca, roots: ca.Pool()}
	e.bind()
	return e
}

// certFor issues a certificate for names from the env's test CA and
// returns the route lines cert = ... and key = ... that serve it.
func (e *env) certFor(names ...string) string {
	e.t.Helper()
	certPEM, keyPEM, _, err := e.ca.Issue(names, "", 24*time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	dir := e.t.TempDir()
	cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cf, certPEM, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return fmt.Sprintf("cert = %q\nkey = %q\n", cf, kf)
}

func newEnv(t testing.TB, popts acmetest.PebbleOptions) *env {
	t.Helper()
	e := &env{t: t, storage: filepath.Join(t.TempDir(), "storage")}
	e.bind()
	dns, err := acmetest.StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dns.Close)
	e.dns = dns
	popts.HTTPPort, popts.TLSPort, popts.DNSAddr = port(e.httpLn), port(e.httpsLn), dns.Addr()
	p, err := acmetest.StartPebble(popts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	e.pebble = p
	if e.roots, err = p.Roots(); err != nil {
		t.Fatal(err)
	}
	return e
}

// rebind listens again on the same addresses (the CA's VA dials those
// ports), after shutdown closed the listeners.
func (e *env) rebind() {
	e.t.Helper()
	var err error
	for _, l := range []*net.Listener{&e.httpsLn, &e.httpLn, &e.admLn} {
		addr := (*l).Addr().String()
		if *l, err = net.Listen("tcp", addr); err != nil {
			e.t.Fatalf("listening again on %s: %v", addr, err)
		}
	}
}

// newOCSPEnv is newEnv with Pebble naming an OCSP responder in the
// certificates it issues; the responder signs with Pebble's intermediate
// and answers from Pebble's own revocation state. It returns the
// intermediate, to check responses against.
func newOCSPEnv(t testing.TB) (*env, *acmetest.OCSPResponder, *x509.Certificate) {
	t.Helper()
	responder, err := acmetest.StartOCSPResponder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(responder.Close)
	e := newEnv(t, acmetest.PebbleOptions{OCSPResponderURL: responder.URL()})
	inter, key, err := e.pebble.IntermediateAndKey()
	if err != nil {
		t.Fatal(err)
	}
	responder.SetIssuer(inter, key)
	responder.SetStatusFunc(e.pebble.OCSPStatus)
	return e, responder, inter
}

// bind takes fresh listeners (for a restart on new ports, the old ones
// being closed by shutdown).
func (e *env) bind() {
	e.httpsLn, e.httpLn, e.admLn = listen(e.t), listen(e.t), listen(e.t)
}

// config writes a gatehouse.toml for this env with the given routes.
func (e *env) config(routesTOML string) string {
	e.t.Helper()
	dir := e.t.TempDir()
	ca := ""
	dirURL := "https://127.0.0.1:1/dir"
	if e.pebble != nil {
		ca, dirURL = e.pebble.CACertFile, e.pebble.DirectoryURL
	}
	acme := e.acmeExtra
	if dns := e.dns; dns != nil {
		// the pre-order self-check resolves names like Pebble's VA does
		// and dials the ports the VA dials: gatehouse's test listeners
		if e.selfDNS != nil {
			dns = e.selfDNS
		}
		acme = fmt.Sprintf("resolver = %q\nhttp_challenge_port = %d\ntls_challenge_port = %d\n%s",
			dns.Addr(), port(e.httpLn), port(e.httpsLn), acme)
	}
	text := fmt.Sprintf(`
[listen]
https = %q
http  = %q
admin = %q
%s

[acme]
email     = "ops@example.test"
directory = %q
ca_root   = %q
%s

[storage]
dir = %q

%s
%s`, e.httpsLn.Addr(), e.httpLn.Addr(), e.admLn.Addr(), e.listenExtra, dirURL, ca, acme, e.storage, e.topExtra, routesTOML)
	p := filepath.Join(dir, "gatehouse.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// start runs gatehouse in-process on the env's listeners.
func (e *env) start(cfgPath string, opts ...func(*startOptions)) *instance {
	e.t.Helper()
	cfg, err := routes.Load(cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	o := startOptions{httpsLn: e.httpsLn, httpLn: e.httpLn, adminLn: e.admLn, logger: testkit.TestLogger(e.t)}
	for _, f := range opts {
		f(&o)
	}
	in, err := start(cfg, o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = in.shutdown(2 * time.Second) })
	return in
}

func (e *env) httpsAddr() string { return e.httpsLn.Addr().String() }

// client returns an HTTP client that reaches every name at gatehouse's
// https listener and trusts roots; h2 selects HTTP/2 (else HTTP/1.1).
func client(addr string, roots *x509.CertPool, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// upstream is a plaintext test backend that names itself in every answer
// and echoes what gatehouse told it about the client.
func upstream(t testing.TB, name string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream", name)
		fmt.Fprintf(w, "upstream=%s host=%s xff=%s xfp=%s xfh=%s body=%d\n", name, r.Host,
			r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), len(body))
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func readAll(t testing.TB, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}
