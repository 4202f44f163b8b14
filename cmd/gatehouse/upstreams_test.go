package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// captureLog sends gatehouse's log to the test output and to a buffer
// for assertions.
func captureLog(t testing.TB) (func(*startOptions), *logBuffer) {
	lb := &logBuffer{t: t}
	return func(o *startOptions) {
		o.logger = slog.New(slog.NewTextHandler(io.MultiWriter(&tWriter{t: t}, lb), &slog.HandlerOptions{Level: slog.LevelDebug}))
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
	waitFor(t, limit, fmt.Sprintf("%s%v = %v", name, labels, want), func() error {
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
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		fmt.Fprintf(&routesTOML, "[[route]]\nhosts = [\"pp%s-http.test\"]\nupstream = \"http://%s\"\nproxy_protocol = \"v%s\"\n%s\n", v, httpLn.Addr(), v, e.certFor("pp"+v+"-http.test"))
	}
	e.start(e.config(routesTOML.String()))

	for _, v := range []string{"1", "2"} {
		for _, mode := range []string{"tcp", "pass"} {
			name := "pp" + v + "-" + mode + ".test"
			t.Run(name, func(t *testing.T) {
				c, err := dialTLS(e.httpsAddr(), name, e.roots)
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
				waitFor(t, 5*time.Second, "upstream connection of a closed client closed", func() error {
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
