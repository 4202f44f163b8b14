package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// captureLog sends gatehouse's log to the test output and to a buffer
// for assertions.
func captureLog(t testing.TB) (func(*startOptions), *logBuffer) {
	lb := &logBuffer{t: t}
	return func(o *startOptions) {
		o.logger = slog.New(slog.NewTextHandler(io.MultiWriter(testkit.LogWriter(t), lb), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}, lb
}

// metric returns the value of the first sample of name whose labels
// include every pair in labels (`k="v"`), from gatehouse's /metrics.
func (e *env) metric(name string, labels ...string) (float64, error) {
	res, err := http.Get("http://" + e.admLn.Addr().String() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		return strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
	}
	return 0, fmt.Errorf("no sample %s%v", name, labels)
}

// waitMetric waits until a sample has the wanted value.
func (e *env) waitMetric(t *testing.T, limit time.Duration, want float64, name string, labels ...string) time.Time {
	t.Helper()
	testkit.WaitFor(t, limit, fmt.Sprintf("%s%v = %v", name, labels, want), func() error {
		v, err := e.metric(name, labels...)
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("value %v", v)
		}
		return nil
	})
	return time.Now()
}

// proxyUpstream listens on loopback behind the go-proxyproto library,
// requiring a PROXY header on every connection, and hands each
// connection with its parsed header to serve.
func proxyUpstream(t *testing.T, serve func(c net.Conn, h *proxyproto.Header)) string {
	ln := listen(t)
	pl := &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
		return proxyproto.REQUIRE, nil
	}}
	t.Cleanup(func() { pl.Close() })
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				pc := c.(*proxyproto.Conn)
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				h := pc.ProxyHeader()
				if h == nil {
					return // no header: the library refused the connection
				}
				serve(c, h)
			}()
		}
	}()
	return ln.Addr().String()
}

// describe renders a PROXY header as the upstreams below report it.
func describe(h *proxyproto.Header) string {
	if h == nil {
		return "no PROXY header"
	}
	cmd := "LOCAL"
	if h.Command.IsProxy() {
		cmd = "PROXY"
	}
	return fmt.Sprintf("v%d %s %v -> %v", h.Version, cmd, h.SourceAddr, h.DestinationAddr)
}

// tcp, passthrough and http routes send the client's address in a v1
// or v2 PROXY header, parsed at the upstream by the go-proxyproto
// library; http upstream connections are pinned to one client
// connection each.
func TestProxyProtocolToUpstreams(t *testing.T) {
	e := newCAEnv(t)
	echoHeader := func(c net.Conn, h *proxyproto.Header) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "%s | %s", describe(h), line)
	}
	tcpUp := proxyUpstream(t, echoHeader)
	certPEM, keyPEM, _, err := e.ca.Issue([]string{"pp1-pass.test", "pp2-pass.test"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	passUp := proxyUpstream(t, func(c net.Conn, h *proxyproto.Header) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{kp}})
		echoHeader(tc, h)
		tc.Close()
	})

	// http upstream: names each upstream connection, reports what its
	// PROXY header said, and notes when a connection closes
	var connID atomic.Int64
	var closedMu sync.Mutex
	closed := map[string]bool{}
	type idKey struct{}
	var healthMu sync.Mutex
	healthSeen := map[string]bool{} // connection descriptions of /health requests
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/health" {
				healthMu.Lock()
				healthSeen[fmt.Sprint(r.Context().Value(idKey{}))] = true
				healthMu.Unlock()
				return
			}
			fmt.Fprintf(w, "conn=%s remote=%s", r.Context().Value(idKey{}), r.RemoteAddr)
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, idKey{}, fmt.Sprintf("%d(%s)", connID.Add(1), describe(c.(*proxyproto.Conn).ProxyHeader())))
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				closedMu.Lock()
				closed[c.RemoteAddr().String()] = true
				closedMu.Unlock()
			}
		},
	}
	httpLn := listen(t)
	go func() {
		_ = srv.Serve(&proxyproto.Listener{Listener: httpLn, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REQUIRE, nil
		}})
	}()
	t.Cleanup(func() { srv.Close() })

	var routesTOML strings.Builder
	for _, v := range []string{"1", "2"} {
		fmt.Fprintf(&routesTOML, "[[route]]\nhosts = [\"pp%s-tcp.test\"]\nmode = \"tcp\"\nupstream = %q\nproxy_protocol = \"v%s\"\n%s\n", v, tcpUp, v, e.certFor("pp"+v+"-tcp.test"))
		fmt.Fprintf(&routesTOML, "[[route]]\nhosts = [\"pp%s-pass.test\"]\nmode = \"passthrough\"\nupstream = %q\nproxy_protocol = \"v%s\"\n\n", v, passUp, v)
		fmt.Fprintf(&routesTOML, "[[route]]\nhosts = [\"pp%s-http.test\"]\nupstream = \"http://%s\"\nproxy_protocol = \"v%s\"\n"+
			"health_path = \"/health\"\nhealth_interval = \"200ms\"\n%s\n", v, httpLn.Addr(), v, e.certFor("pp"+v+"-http.test"))
	}
	e.start(e.config(routesTOML.String()))

	// health checks announce themselves with a LOCAL header (v1: PROXY UNKNOWN)
	for _, v := range []string{"1", "2"} {
		testkit.WaitFor(t, 5*time.Second, "v"+v+" health check with a LOCAL header", func() error {
			healthMu.Lock()
			defer healthMu.Unlock()
			for desc := range healthSeen {
				if strings.Contains(desc, "(v"+v+" LOCAL ") {
					return nil
				}
			}
			return fmt.Errorf("health requests seen on: %v", healthSeen)
		})
	}

	for _, v := range []string{"1", "2"} {
		for _, mode := range []string{"tcp", "pass"} {
			name := "pp" + v + "-" + mode + ".test"
			t.Run(name, func(t *testing.T) {
				c, err := testkit.DialTLS(e.httpsAddr(), name, e.roots)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "hello\n")
				got, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				want := fmt.Sprintf("v%s PROXY %s -> %s | hello\n", v, c.LocalAddr(), e.httpsAddr())
				if got != want {
					t.Errorf("upstream saw %q, want %q", got, want)
				}
			})
		}
		name := "pp" + v + "-http.test"
		t.Run(name, func(t *testing.T) {
			get := func(c *http.Client) string {
				t.Helper()
				res, err := c.Get("https://" + name + "/")
				if err != nil {
					t.Fatal(err)
				}
				return readAll(t, res)
			}
			for _, h2 := range []bool{false, true} {
				c1, local1 := recordingClient(e.httpsAddr(), e.roots, h2)
				c2, local2 := recordingClient(e.httpsAddr(), e.roots, h2)
				a1, a2, b1 := get(c1), get(c1), get(c2)
				want1 := fmt.Sprintf("(v%s PROXY %s -> %s) remote=%s", v, local1(), e.httpsAddr(), local1())
				want2 := fmt.Sprintf("(v%s PROXY %s -> %s) remote=%s", v, local2(), e.httpsAddr(), local2())
				if !strings.HasSuffix(a1, want1) || !strings.HasSuffix(b1, want2) {
					t.Fatalf("h2=%v: upstream saw\n  %s\n  %s\nwant suffixes\n  %s\n  %s", h2, a1, b1, want1, want2)
				}
				if a1 != a2 {
					t.Errorf("h2=%v: one client's two requests used different upstream connections: %q, %q", h2, a1, a2)
				}
				if a1 == b1 {
					t.Errorf("h2=%v: two clients shared an upstream connection", h2)
				}
				// the client's upstream connection closes with the client's
				c1.CloseIdleConnections()
				testkit.WaitFor(t, 5*time.Second, "upstream connection of a closed client closed", func() error {
					closedMu.Lock()
					defer closedMu.Unlock()
					if !closed[local1()] {
						return fmt.Errorf("still open")
					}
					return nil
				})
				c2.CloseIdleConnections()
			}
		})
	}
}

// recordingClient is client() that remembers its connection's local address.
func recordingClient(addr string, roots *x509.CertPool, h2 bool) (*http.Client, func() string) {
	c := client(addr, roots, h2)
	tr := c.Transport.(*http.Transport)
	var mu sync.Mutex
	var local string
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			mu.Lock()
			local = conn.LocalAddr().String()
			mu.Unlock()
		}
		return conn, err
	}
	return c, func() string { mu.Lock(); defer mu.Unlock(); return local }
}

// A PROXY header is honoured from a trusted source only: from
// [listen] proxy_protocol_from its address reaches X-Forwarded-For and
// Forwarded; from any other source the connection fails with a log
// line naming the source; connections without a header work from both.
func TestProxyProtocolFromTrusted(t *testing.T) {
	e := newCAEnv(t)
	e.listenExtra = `proxy_protocol_from = ["127.0.0.1/32"]`
	up := echoHeaders(t)
	routesTOML := fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n%s", up, e.certFor("a.test"))
	logOpt, logs := captureLog(t)
	in := e.start(e.config(routesTOML), logOpt)

	// get sends one HTTP/1.1 request over a connection from source,
	// starting with header (nil: none).
	get := func(source string, header *proxyproto.Header) (string, error) {
		tr := &http.Transport{DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
			c, err := d.DialContext(ctx, "tcp", e.httpsAddr())
			if err != nil {
				return nil, err
			}
			if header != nil {
				if _, err := header.WriteTo(c); err != nil {
					return nil, err
				}
			}
			tc := tls.Client(c, &tls.Config{ServerName: "a.test", RootCAs: e.roots})
			_ = tc.SetDeadline(time.Now().Add(3 * time.Second))
			if err := tc.Handshake(); err != nil {
				c.Close()
				return nil, err
			}
			_ = tc.SetDeadline(time.Time{})
			return tc, nil
		}}
		defer tr.CloseIdleConnections()
		res, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://a.test/")
		if err != nil {
			return "", err
		}
		return readAll(t, res), nil
	}
	v1 := &proxyproto.Header{Version: 1, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40001},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443}}
	v2 := &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv6,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 40002},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 443}}

	for _, tc := range []struct {
		name, source string
		header       *proxyproto.Header
		xff, fwd     string
	}{
		{"trusted v1", "127.0.0.1", v1, "192.0.2.7", "for=192.0.2.7;"},
		{"trusted v2 IPv6", "127.0.0.1", v2, "2001:db8::7", `for="[2001:db8::7]";`},
		{"trusted without header", "127.0.0.1", nil, "127.0.0.1", "for=127.0.0.1;"},
		{"untrusted without header", "127.0.0.2", nil, "127.0.0.2", "for=127.0.0.2;"},
	} {
		body, err := get(tc.source, tc.header)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !strings.Contains(body, "X-Forwarded-For: "+tc.xff+"\n") || !strings.Contains(body, "Forwarded: "+tc.fwd) {
			t.Errorf("%s: upstream saw\n%s\nwant X-Forwarded-For: %s and Forwarded: %s...", tc.name, body, tc.xff, tc.fwd)
		}
	}

	// untrusted source with a header: refused and logged
	if body, err := get("127.0.0.2", v1); err == nil {
		t.Errorf("untrusted PROXY header was accepted; upstream saw\n%s", body)
	}
	logs.waitLog(t, 2*time.Second, "PROXY protocol header from a source not in [listen] proxy_protocol_from", "source=127.0.0.2:")
	if v, err := e.metric("gatehouse_tls_handshake_failures_total", `reason="proxy_header"`); err != nil || v < 1 {
		t.Errorf("proxy_header failures metric = %v, %v", v, err)
	}

	// the plain-HTTP listener applies the same policy
	plainGet := func(source string, header *proxyproto.Header) (*http.Response, error) {
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
			c, err := d.DialContext(ctx, "tcp", e.httpLn.Addr().String())
			if err == nil && header != nil {
				_, err = header.WriteTo(c)
			}
			return c, err
		}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		res, err := c.Get("http://a.test/x")
		if err == nil {
			res.Body.Close()
		}
		return res, err
	}
	if res, err := plainGet("127.0.0.1", v1); err != nil || res.StatusCode != http.StatusPermanentRedirect {
		t.Errorf("http listener, trusted PROXY: %v %v, want 308", res, err)
	}
	// net/http answers an unreadable request with a bare 400 and closes
	if res, err := plainGet("127.0.0.2", v1); err == nil && res.StatusCode != http.StatusBadRequest {
		t.Errorf("http listener accepted an untrusted PROXY header: %d", res.StatusCode)
	}
	logs.waitLog(t, 2*time.Second, "not in [listen] proxy_protocol_from", "listener=http source=127.0.0.2:")

	// with no trusted source configured (applied by a reload), a header
	// is refused from everyone, with a log line that says why
	e.listenExtra = ""
	if err := in.reload(e.config(routesTOML)); err != nil {
		t.Fatal(err)
	}
	if body, err := get("127.0.0.1", v1); err == nil {
		t.Errorf("PROXY header accepted with proxy_protocol_from empty; upstream saw\n%s", body)
	}
	logs.waitLog(t, 2*time.Second, "proxy_protocol_from is empty", "source=127.0.0.1:")
	if body, err := get("127.0.0.1", nil); err != nil || !strings.Contains(body, "X-Forwarded-For: 127.0.0.1\n") {
		t.Errorf("plain client after reload: %v\n%s", err, body)
	}
}

// echoHeaders is an upstream that answers with the request line and
// every header it received, one per line, sorted.
func echoHeaders(t *testing.T) string {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var lines []string
		for k, vs := range r.Header {
			for _, v := range vs {
				lines = append(lines, k+": "+v)
			}
		}
		sort.Strings(lines)
		fmt.Fprintf(w, "%s %s HTTP/%d host=%s\n%s\n", r.Method, r.URL.Path, r.ProtoMajor, r.Host, strings.Join(lines, "\n"))
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s.URL
}

// backend is an HTTP upstream that can be killed and revived on its
// address, with a settable /health status and counters.
type backend struct {
	t      *testing.T
	name   string
	addr   string
	mu     sync.Mutex
	srv    *http.Server
	hits   atomic.Int64 // requests other than /health
	holds  atomic.Int64 // /hold requests open
	health atomic.Int32 // /health status (0: 200)
	hold   chan struct{}
}

func newBackend(t *testing.T, name string) *backend {
	b := &backend{t: t, name: name, hold: make(chan struct{})}
	ln := listen(t)
	b.addr = ln.Addr().String()
	b.serve(ln)
	t.Cleanup(b.kill)
	return b
}

func (b *backend) url() string { return "http://" + b.addr }

func (b *backend) serve(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if st := b.health.Load(); st != 0 {
			w.WriteHeader(int(st))
		}
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.holds.Add(1)
		defer b.holds.Add(-1)
		w.Header().Set("X-Upstream", b.name)
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-b.hold:
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Upstream", b.name)
		fmt.Fprintf(w, "upstream=%s body=%d\n", b.name, n)
	})
	srv := &http.Server{Handler: mux}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// kill closes the listener and every connection at once.
func (b *backend) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.srv.Close()
}

// revive listens again on the same address.
func (b *backend) revive() {
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.serve(ln)
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// tcpEcho is a raw TCP upstream that echoes each line prefixed with name.
func tcpEcho(t *testing.T, name string) string {
	return serveTCP(t, 10*time.Second, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s: %s\n", name, sc.Text())
		}
	})
}

// One upstream killed under a bounded load: active checks take it out
// of rotation, dial errors are retried on the other, and once it is
// marked down no request fails; revived, it comes back.
func TestHealthCheckFailover(t *testing.T) {
	e := newCAEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	logOpt, logs := captureLog(t)
	e.start(e.config(fmt.Sprintf(`[[route]]
hosts = ["lb.test"]
upstreams = [%q, %q]
health_path = "/health"
health_interval = "200ms"
health_timeout = "150ms"
%s`, a.url(), b.url(), e.certFor("lb.test"))), logOpt)

	type result struct {
		start    time.Time
		end      time.Time
		ok       bool
		upstream string
	}
	var mu sync.Mutex
	var results []result
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(e.httpsAddr(), e.roots, w%2 == 0)
			for i := 0; i < 20000 && !stop.Load(); i++ {
				r := result{start: time.Now()}
				res, err := c.Get("https://lb.test/")
				if err == nil {
					body, _ := io.ReadAll(res.Body)
					res.Body.Close()
					r.ok = res.StatusCode == 200 && strings.HasPrefix(string(body), "upstream=")
					r.upstream = res.Header.Get("X-Upstream")
				}
				r.end = time.Now()
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	kill := time.Now()
	b.kill()
	// out of rotation: first by passive health (failed dials), which the
	// gauge shows, then by the active checker's verdict, which the log shows
	gauge := e.waitMetric(t, 5*time.Second, 0, "gatehouse_upstream_healthy", `route="lb.test"`, `upstream="`+b.url()+`"`)
	logs.waitLog(t, 5*time.Second, "failed health checks; out of rotation", "upstream="+b.url())
	down := time.Now()
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()

	var before, between, after, failBetween, failAfter, bAfter int
	hits := map[string]int{}
	for _, r := range results {
		switch {
		case r.end.Before(kill):
			before++
			hits[r.upstream]++
			if !r.ok {
				t.Errorf("request failed before any upstream was killed")
			}
		case r.start.Before(down):
			between++
			if !r.ok {
				failBetween++
			}
		default:
			after++
			if !r.ok {
				failAfter++
			}
			if r.upstream == "B" {
				bAfter++
			}
		}
	}
	t.Logf("load: %d requests done before the kill (A %d, B %d); %d in flight at the kill or started before the checker's verdict "+
		"(gauge 0 after %v, checker verdict seen after %v), %d failed; %d after, %d failed",
		before, hits["A"], hits["B"], between, gauge.Sub(kill).Round(time.Millisecond), down.Sub(kill).Round(time.Millisecond),
		failBetween, after, failAfter)
	if hits["A"] == 0 || hits["B"] == 0 {
		t.Errorf("before the kill, traffic was not balanced: %v", hits)
	}
	if after == 0 || failAfter != 0 || bAfter != 0 {
		t.Errorf("after the checker marked B down: %d requests, %d failed, %d answered by B; want >0, 0, 0", after, failAfter, bAfter)
	}

	// revived, B passes two checks and gets traffic again
	b.revive()
	e.waitMetric(t, 5*time.Second, 1, "gatehouse_upstream_healthy", `route="lb.test"`, `upstream="`+b.url()+`"`)
	before = int(b.hits.Load())
	c := client(e.httpsAddr(), e.roots, true)
	for range 10 {
		res, err := c.Get("https://lb.test/")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
	}
	if got := int(b.hits.Load()) - before; got == 0 {
		t.Errorf("revived upstream got no traffic")
	}
}

// Without active checks: a request whose upstream refuses the
// connection is retried on another (GET and POST alike: nothing was
// sent), the refusing upstream leaves rotation after 3 failures, and a
// tcp route does the same for streams; a route with a single upstream
// never skips it, so it serves again as soon as it is back.
func TestRetryOnDialError(t *testing.T) {
	e := newCAEnv(t)
	a := newBackend(t, "A")
	dead, deadTCP := deadAddr(t), deadAddr(t)
	echo := tcpEcho(t, "echo")
	single := newBackend(t, "S")
	single.kill()
	e.start(e.config(fmt.Sprintf(`[[route]]
hosts = ["retry.test"]
upstreams = ["http://%s", %q]
%s
[[route]]
hosts = ["tcp.test"]
mode = "tcp"
upstreams = [%q, %q]
%s
[[route]]
hosts = ["single.test"]
upstream = %q
%s`, dead, a.url(), e.certFor("retry.test"), deadTCP, echo, e.certFor("tcp.test"), single.url(), e.certFor("single.test"))))

	c := client(e.httpsAddr(), e.roots, true)
	for i := range 20 {
		var res *http.Response
		var err error
		if i%4 == 3 {
			res, err = c.Post("https://retry.test/upload", "text/plain", strings.NewReader(strings.Repeat("x", 5000)))
		} else {
			res, err = c.Get("https://retry.test/")
		}
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		want := "upstream=A body=0"
		if i%4 == 3 {
			want = "upstream=A body=5000"
		}
		if res.StatusCode != 200 || body != want {
			t.Errorf("request %d: %d %q, want 200 %q", i, res.StatusCode, body, want)
		}
	}
	if v, err := e.metric("gatehouse_upstream_healthy", `upstream="http://`+dead+`"`); err != nil || v != 0 {
		t.Errorf("refusing upstream healthy = %v (%v), want 0 (passive cooldown)", v, err)
	}
	if v, err := e.metric("gatehouse_http_requests_total", `route="retry.test"`, `code_class="2xx"`, `upstream="`+a.url()+`"`); err != nil || v != 20 {
		t.Errorf("requests_total{2xx, A} = %v (%v), want 20", v, err)
	}

	for i := range 6 {
		conn, err := testkit.DialTLS(e.httpsAddr(), "tcp.test", e.roots)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "line %d\n", i)
		got, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil || got != fmt.Sprintf("echo: line %d\n", i) {
			t.Errorf("tcp stream %d: %q %v", i, got, err)
		}
	}
	if v, err := e.metric("gatehouse_upstream_healthy", `upstream="`+deadTCP+`"`); err != nil || v != 0 {
		t.Errorf("refusing tcp upstream healthy = %v (%v), want 0", v, err)
	}

	for range 4 {
		res, err := c.Get("https://single.test/")
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, res); res.StatusCode != http.StatusBadGateway {
			t.Errorf("single upstream down: %d, want 502", res.StatusCode)
		}
	}
	single.revive()
	res, err := c.Get("https://single.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); res.StatusCode != 200 {
		t.Errorf("single upstream revived: %d %q, want 200 at once", res.StatusCode, body)
	}
}

// least_conn sends new requests to the upstream with fewer open ones
// (a streaming response counts until its body is closed); round robin
// alternates regardless.
func TestLeastConn(t *testing.T) {
	e := newCAEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	e.start(e.config(fmt.Sprintf(`[[route]]
hosts = ["lc.test"]
upstreams = [%q, %q]
balance = "least_conn"
%s
[[route]]
hosts = ["rr.test"]
upstreams = [%q, %q]
%s`, a.url(), b.url(), e.certFor("lc.test"), a.url(), b.url(), e.certFor("rr.test"))))
	c := client(e.httpsAddr(), e.roots, true)
	count := func(host string) map[string]int {
		seen := map[string]int{}
		for range 10 {
			res, err := c.Get("https://" + host + "/")
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, res)
			seen[res.Header.Get("X-Upstream")]++
		}
		return seen
	}
	for _, host := range []string{"lc.test", "rr.test"} {
		hold, err := c.Get("https://" + host + "/hold") // headers arrive, the body stays open
		if err != nil {
			t.Fatal(err)
		}
		busy := hold.Header.Get("X-Upstream")
		other := map[string]string{"A": "B", "B": "A"}[busy]
		seen := count(host)
		t.Logf("%s: /hold open on %s; 10 requests went %v", host, busy, seen)
		if host == "lc.test" && seen[other] != 10 {
			t.Errorf("least_conn: %v, want all 10 on %s (the one without the open request)", seen, other)
		}
		if host == "rr.test" && (seen["A"] != 5 || seen["B"] != 5) {
			t.Errorf("round_robin: %v, want 5 and 5", seen)
		}
		hold.Body.Close()
	}
	close(a.hold)
	close(b.hold)
}

// Every upstream failing its health check: a 502 at once, without a
// request reaching any upstream; the first to recover serves again.
func TestAllUpstreamsDown(t *testing.T) {
	e := newCAEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	a.health.Store(503)
	b.health.Store(503)
	e.start(e.config(fmt.Sprintf(`[[route]]
hosts = ["down.test"]
upstreams = [%q, %q]
health_path = "/health"
health_interval = "200ms"
%s`, a.url(), b.url(), e.certFor("down.test"))))
	for _, u := range []*backend{a, b} {
		e.waitMetric(t, 5*time.Second, 0, "gatehouse_upstream_healthy", `upstream="`+u.url()+`"`)
	}
	hitsBefore := a.hits.Load() + b.hits.Load()
	c := client(e.httpsAddr(), e.roots, true)
	for range 5 {
		began := time.Now()
		res, err := c.Get("https://down.test/")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		took := time.Since(began)
		if res.StatusCode != http.StatusBadGateway || took > time.Second || len(body) > 100 {
			t.Errorf("all down: %d %q in %v, want a short 502 within 1s", res.StatusCode, body, took)
		}
	}
	if hits := a.hits.Load() + b.hits.Load() - hitsBefore; hits != 0 {
		t.Errorf("%d requests reached upstreams marked down", hits)
	}
	if v, err := e.metric("gatehouse_http_requests_total", `route="down.test"`, `code_class="5xx"`, `upstream=""`); err != nil || v != 5 {
		t.Errorf("requests_total{5xx, no upstream} = %v (%v), want 5", v, err)
	}
	a.health.Store(0)
	e.waitMetric(t, 5*time.Second, 1, "gatehouse_upstream_healthy", `upstream="`+a.url()+`"`)
	res, err := c.Get("https://down.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); res.StatusCode != 200 || body != "upstream=A body=0" {
		t.Errorf("after A recovered: %d %q", res.StatusCode, body)
	}
}

// detailsMux is the upstream of TestHTTPDetails: it echoes what it
// received, streams server-sent events one at a time (the next only
// after the test read the previous), sends trailers, hop-by-hop
// response headers, and a slow answer.
func detailsMux(sseNext chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		var lines []string
		for k, vs := range r.Header {
			for _, v := range vs {
				lines = append(lines, k+": "+v)
			}
		}
		sort.Strings(lines)
		sni := ""
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		fmt.Fprintf(w, "proto=HTTP/%d sni=%s host=%s\n%s\n", r.ProtoMajor, sni, r.Host, strings.Join(lines, "\n"))
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		for i := range 3 {
			fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
			w.(http.Flusher).Flush()
			if i == 2 {
				// done: waiting here would let this handler take the
				// next subtest's signal
				return
			}
			select {
			case <-sseNext:
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Second):
				return
			}
		}
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(200)
		io.WriteString(w, "body then trailers")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "sha256=abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced")
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=9")
		w.Header().Set("X-Kept", "yes")
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	return mux
}

// HTTP behaviour a user checks with curl and a browser: h2c and
// verified HTTPS upstreams, server-sent events, trailers, hop-by-hop
// headers, Forwarded, HSTS, the header size bound, the upstream
// response timeout, and the per-request metrics.
func TestHTTPDetails(t *testing.T) {
	e := newCAEnv(t)
	e.topExtra = "[timeouts]\nupstream_response_header = \"500ms\"\n"
	sseNext := make(chan struct{})
	mux := detailsMux(sseNext)

	plain := httptest.NewServer(mux)
	t.Cleanup(plain.Close)

	h2cLn := listen(t)
	h2cSrv := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	h2cSrv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = h2cSrv.Serve(h2cLn) }()
	t.Cleanup(func() { h2cSrv.Close() })

	upCA, err := acmetest.NewTestCA("upstream CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := upCA.Issue([]string{"localhost"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tlsUp := httptest.NewUnstartedServer(mux)
	tlsUp.TLS = &tls.Config{Certificates: []tls.Certificate{kp}}
	tlsUp.StartTLS()
	t.Cleanup(tlsUp.Close)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, upCA.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tlsURL := "https://localhost:" + strconv.Itoa(tlsUp.Listener.Addr().(*net.TCPAddr).Port)

	e.start(e.config(fmt.Sprintf(`[[route]]
hosts = ["d.test"]
upstream = %q
hsts = "max-age=63072000; includeSubDomains"
%s
[[route]]
hosts = ["h2c.test"]
upstream = "h2c://%s"
%s
[[route]]
hosts = ["tls.test"]
upstream = %q
upstream_ca = %q
%s
[[route]]
hosts = ["tlsbad.test"]
upstream = %q
%s`, plain.URL, e.certFor("d.test"), h2cLn.Addr(), e.certFor("h2c.test"),
		tlsURL, caFile, e.certFor("tls.test"), tlsURL, e.certFor("tlsbad.test"))))

	clients := map[string]*http.Client{
		"HTTP/1.1": client(e.httpsAddr(), e.roots, false),
		"HTTP/2":   client(e.httpsAddr(), e.roots, true),
	}
	get := func(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res, readAll(t, res)
	}

	t.Run("Forwarded and X-Forwarded set by gatehouse, client-forged ones replaced", func(t *testing.T) {
		for proto, c := range clients {
			res, body := get(t, c, "https://d.test/echo",
				"Forwarded", "for=6.6.6.6;proto=http", "X-Forwarded-For", "6.6.6.6", "X-Forwarded-Proto", "http", "X-Forwarded-Host", "evil.test")
			body += "\n"
			for _, want := range []string{"\nForwarded: for=127.0.0.1;host=d.test;proto=https\n", "\nX-Forwarded-For: 127.0.0.1\n",
				"\nX-Forwarded-Proto: https\n", "\nX-Forwarded-Host: d.test\n"} {
				if !strings.Contains(body, want) {
					t.Errorf("%s: upstream saw\n%s\nmissing %q", proto, body, strings.TrimSpace(want))
				}
			}
			if strings.Contains(body, "6.6.6.6") || strings.Contains(body, "evil.test") || strings.Count(body, "Forwarded: ") != 1 {
				t.Errorf("%s: a client-sent forwarding header reached the upstream:\n%s", proto, body)
			}
			if res.StatusCode != 200 {
				t.Errorf("%s: status %d", proto, res.StatusCode)
			}
		}
	})

	t.Run("HSTS per route", func(t *testing.T) {
		res, _ := get(t, clients["HTTP/2"], "https://d.test/echo")
		if got := res.Header.Get("Strict-Transport-Security"); got != "max-age=63072000; includeSubDomains" {
			t.Errorf("d.test Strict-Transport-Security = %q", got)
		}
		res, _ = get(t, clients["HTTP/2"], "https://h2c.test/echo")
		if got := res.Header.Get("Strict-Transport-Security"); got != "" {
			t.Errorf("h2c.test (no hsts) sent Strict-Transport-Security = %q", got)
		}
	})

	t.Run("hop-by-hop headers stripped both ways", func(t *testing.T) {
		// raw HTTP/1.1, so exactly these headers are sent
		conn, err := testkit.DialTLS(e.httpsAddr(), "d.test", e.roots, "http/1.1")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: d.test\r\nConnection: keep-alive, X-Custom-Hop\r\n"+
			"X-Custom-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Normal: kept\r\n\r\n")
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		if !strings.Contains(body, "X-Normal: kept") {
			t.Errorf("upstream saw\n%s\nwithout X-Normal", body)
		}
		for _, h := range []string{"X-Custom-Hop", "Keep-Alive", "Proxy-Authorization", "Connection"} {
			if strings.Contains(body, "\n"+h+":") {
				t.Errorf("hop-by-hop request header %s reached the upstream:\n%s", h, body)
			}
		}
		io.WriteString(conn, "GET /hop HTTP/1.1\r\nHost: d.test\r\n\r\n")
		res, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
		if res.Header.Get("X-Resp-Hop") != "" || res.Header.Get("Keep-Alive") != "" || res.Header.Get("X-Kept") != "yes" {
			t.Errorf("response headers %v: want X-Resp-Hop and Keep-Alive stripped, X-Kept passed", res.Header)
		}
	})

	t.Run("h2c upstream", func(t *testing.T) {
		for proto, c := range clients {
			_, body := get(t, c, "https://h2c.test/echo")
			if !strings.HasPrefix(body, "proto=HTTP/2 ") || !strings.Contains(body, "host=h2c.test") {
				t.Errorf("%s client: h2c upstream saw %q", proto, body)
			}
		}
	})

	t.Run("HTTPS upstream verified with upstream_ca, SNI the upstream host", func(t *testing.T) {
		_, body := get(t, clients["HTTP/2"], "https://tls.test/echo")
		if !strings.HasPrefix(body, "proto=HTTP/1 sni=localhost host=tls.test") {
			t.Errorf("HTTPS upstream saw %q", body)
		}
		res, body := get(t, clients["HTTP/2"], "https://tlsbad.test/echo")
		if res.StatusCode != http.StatusBadGateway || strings.Contains(body, "x509") {
			t.Errorf("upstream with a certificate gatehouse cannot verify: %d %q, want a short 502", res.StatusCode, body)
		}
	})

	t.Run("server-sent events arrive one at a time", func(t *testing.T) {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			for _, host := range []string{"d.test", "h2c.test"} {
				res, err := clients[proto].Get("https://" + host + "/sse")
				if err != nil {
					t.Fatal(err)
				}
				if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
					t.Errorf("Content-Type %q", ct)
				}
				events := make(chan string)
				go func() {
					defer close(events)
					br := bufio.NewReader(res.Body)
					var ev strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						if line == "\n" {
							events <- ev.String()
							ev.Reset()
							continue
						}
						ev.WriteString(line)
					}
				}()
				for i := range 3 {
					select {
					case ev := <-events:
						if want := fmt.Sprintf("id: %d\ndata: event %d\n", i, i); ev != want {
							t.Errorf("%s %s: event %d = %q, want %q", proto, host, i, ev, want)
						}
					case <-time.After(10 * time.Second):
						// the upstream sends an event only after the previous
						// one was read: a buffered stream never gets here
						t.Fatalf("%s %s: event %d not delivered within 10s: the stream is buffered", proto, host, i)
					}
					if i < 2 {
						sseNext <- struct{}{} // the upstream sends the next event only now
					}
				}
				res.Body.Close()
				for range events {
				}
			}
		}
	})

	t.Run("trailers pass through", func(t *testing.T) {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			for _, host := range []string{"d.test", "h2c.test"} {
				res, err := clients[proto].Get("https://" + host + "/trailers")
				if err != nil {
					t.Fatal(err)
				}
				if body := readAll(t, res); body != "body then trailers" {
					t.Errorf("body %q", body)
				}
				if res.Trailer.Get("X-Checksum") != "sha256=abc" || res.Trailer.Get("X-Late") != "unannounced" {
					t.Errorf("%s client, %s: trailers %v, want X-Checksum and X-Late", proto, host, res.Trailer)
				}
			}
		}
	})

	t.Run("oversized headers get 431", func(t *testing.T) {
		big := strings.Repeat("b", 100<<10)
		res, _ := get(t, clients["HTTP/1.1"], "https://d.test/echo", "X-Big", big)
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("HTTP/1.1: %d, want 431", res.StatusCode)
		}
		// HTTP/2: 100 headers of 1 KiB (a single string over the limit
		// is a COMPRESSION_ERROR for the whole connection in Go's server)
		if st := h2Status(t, e.httpsAddr(), "d.test", e.roots, 100, 1<<10); st != "431" {
			t.Errorf("HTTP/2: status %s, want 431", st)
		}
		if st := h2Status(t, e.httpsAddr(), "d.test", e.roots, 16, 1<<10); st != "200" {
			t.Errorf("HTTP/2, 16 KiB of headers: status %s, want 200", st)
		}
		res, _ = get(t, clients["HTTP/1.1"], "https://d.test/echo", "X-Big", strings.Repeat("b", 32<<10))
		if res.StatusCode != 200 {
			t.Errorf("32 KiB header: %d, want 200", res.StatusCode)
		}
	})

	t.Run("upstream_response_header timeout gives 504", func(t *testing.T) {
		began := time.Now()
		res, body := get(t, clients["HTTP/2"], "https://d.test/slow")
		took := time.Since(began)
		if res.StatusCode != http.StatusGatewayTimeout || took > 2*time.Second || took < 400*time.Millisecond {
			t.Errorf("slow upstream: %d %q after %v, want 504 after about 500ms", res.StatusCode, body, took)
		}
	})

	t.Run("per-request metrics", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			labels []string
			min    float64
		}{
			{"gatehouse_http_requests_total", []string{`route="d.test"`, `code_class="2xx"`, `upstream="` + plain.URL + `"`}, 10},
			{"gatehouse_http_requests_total", []string{`route="d.test"`, `code_class="5xx"`, `upstream="` + plain.URL + `"`}, 1},
			{"gatehouse_http_requests_total", []string{`route="h2c.test"`, `code_class="2xx"`, `upstream="h2c://` + h2cLn.Addr().String() + `"`}, 6},
			{"gatehouse_http_requests_total", []string{`route="tlsbad.test"`, `code_class="5xx"`, `upstream="` + tlsURL + `"`}, 1},
			{"gatehouse_http_request_duration_seconds_count", []string{`route="d.test"`}, 10},
			{"gatehouse_upstream_healthy", []string{`route="tls.test"`, `upstream="` + tlsURL + `"`}, 1},
		} {
			v, err := e.metric(c.name, c.labels...)
			if err != nil || v < c.min {
				t.Errorf("%s%v = %v (%v), want >= %v", c.name, c.labels, v, err, c.min)
			}
		}
	})
}

// h2Status sends one HTTP/2 request with n extra headers of size bytes,
// ignoring the server's advertised header list limit (Go's client would
// refuse to send it), and returns the response's :status.
func h2Status(t *testing.T, addr, name string, roots *x509.CertPool, n, size int) string {
	t.Helper()
	conn, err := testkit.DialTLS(addr, name, roots, "h2")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", name}, {":path", "/echo"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := range n {
		enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: strings.Repeat("b", size), Sensitive: true})
	}
	// one HEADERS frame (Go's server reads frames up to 1 MiB): Go's
	// server answers 431 to a header list up to about twice its limit
	// and closes the connection (PROTOCOL_ERROR) past that, its guard
	// against CONTINUATION floods
	b := block.Bytes()
	const chunk = 1 << 20
	first := b[:min(chunk, len(b))]
	b = b[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true, EndHeaders: len(b) == 0}); err != nil {
		t.Fatal(err)
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if err := fr.WriteContinuation(1, n == len(b), b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading HTTP/2 frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				return f.PseudoValue("status")
			}
		case *http2.GoAwayFrame:
			return fmt.Sprintf("GOAWAY %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			return fmt.Sprintf("RST_STREAM %v", f.ErrCode)
		}
	}
}

// A reload that removes or changes a health-checked route stops its
// checks; an unchanged route keeps its checker (and its verdicts).
func TestHealthChecksStopOnReload(t *testing.T) {
	e := newCAEnv(t)
	var aChecks, bChecks atomic.Int64
	checked := func(n *atomic.Int64) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/health" {
				n.Add(1)
			}
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	a, b := checked(&aChecks), checked(&bChecks)
	route := func(name, upstream string) string {
		return fmt.Sprintf("[[route]]\nhosts = [%q]\nupstream = %q\nhealth_path = \"/health\"\nhealth_interval = \"100ms\"\n%s\n",
			name, upstream, e.certFor(name))
	}
	keep, gone := route("keep.test", a), route("gone.test", b)
	in := e.start(e.config(keep + gone))
	testkit.WaitFor(t, 5*time.Second, "both checked", func() error {
		if aChecks.Load() < 2 || bChecks.Load() < 2 {
			return fmt.Errorf("checks: A %d, B %d", aChecks.Load(), bChecks.Load())
		}
		return nil
	})
	if err := in.reload(e.config(keep)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // a probe already under way may land
	bAfter, aAfter := bChecks.Load(), aChecks.Load()
	time.Sleep(600 * time.Millisecond)
	if n := bChecks.Load() - bAfter; n != 0 {
		t.Errorf("removed route's upstream got %d health checks after the reload", n)
	}
	if n := aChecks.Load() - aAfter; n < 3 {
		t.Errorf("kept route's upstream got %d health checks in 600ms at 100ms intervals", n)
	}
}
