package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The HTTP/1.1 fast path through a real gatehouse Server on loopback:
// real TLS clients speaking raw HTTP/1.1, and real upstreams (net/http
// servers, and raw TCP servers that record exactly what reached them).

// fixedCerts serves one certificate for every routed handshake.
type fixedCerts struct{ cert *tls.Certificate }

func (f fixedCerts) GetCertificate(*routes.Entry, *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cert, nil
}
func (fixedCerts) HandleHTTPChallenge(http.ResponseWriter, *http.Request) bool { return false }

type h1World struct {
	t     testing.TB
	s     *Server
	addr  string
	roots *x509.CertPool
	done  chan struct{}
}

// startH1World serves web.test (and any extra routes) forwarding to upstream.
func startH1World(t testing.TB, upstream string, extra ...routes.Route) *h1World {
	t.Helper()
	return startH1WorldIdle(t, 0, upstream, extra...)
}

// startH1WorldIdle is startH1World with [timeouts] idle set (0: default).
func startH1WorldIdle(t testing.TB, idle time.Duration, upstream string, extra ...routes.Route) *h1World {
	t.Helper()
	return startH1WorldWith(t, func(c *routes.Config) {
		if idle > 0 {
			c.Timeouts.Idle = routes.Duration(idle)
		}
	}, upstream, extra...)
}

// startH1WorldWith is startH1World with tweak applied to the config.
func startH1WorldWith(t testing.TB, tweak func(*routes.Config), upstream string, extra ...routes.Route) *h1World {
	t.Helper()
	return startH1WorldLog(t, tweak, nil, upstream, extra...)
}

// startH1WorldDebug is startH1WorldLog with the log first.
func startH1WorldDebug(t testing.TB, log io.Writer, tweak func(*routes.Config), upstream string, extra ...routes.Route) *h1World {
	t.Helper()
	return startH1WorldLog(t, tweak, log, upstream, extra...)
}

// serveH1World listens on loopback with s serving cfg, and stops s at
// the test's end.
func serveH1World(t testing.TB, s *Server, cfg *routes.Config, roots *x509.CertPool) *h1World {
	t.Helper()
	if err := s.Listen("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTable(routes.NewTable(cfg)); err != nil {
		t.Fatal(err)
	}
	w := &h1World{t: t, s: s, roots: roots, done: make(chan struct{})}
	https, _ := s.Addrs()
	w.addr = https.String()
	go func() { _ = s.Serve(); close(w.done) }()
	t.Cleanup(w.stop)
	return w
}

// startH1WorldLog is startH1WorldWith with the error log (debug level)
// and the access log written to lb (nil: no log).
func startH1WorldLog(t testing.TB, tweak func(*routes.Config), lb io.Writer, upstream string, extra ...routes.Route) *h1World {
	t.Helper()
	ca, err := acmetest.NewTestCA("h1 test root")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{"web.test", "other.test"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	cfg := &routes.Config{Routes: append([]routes.Route{{Hosts: []string{"web.test"}, Upstream: upstream}}, extra...)}
	cfg.Timeouts.ReadHeader = routes.Duration(2 * time.Second)
	if tweak != nil {
		tweak(cfg)
	}
	cfg.ApplyDefaults()
	opts := Options{Certs: fixedCerts{&kp}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if lb != nil {
		opts.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
		opts.AccessLog = opts.Logger
	}
	return serveH1World(t, New(opts), cfg, roots)
}

func (w *h1World) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = w.s.Shutdown(ctx)
	<-w.done
}

// dial opens an HTTP/1.1 TLS connection to web.test.
func (w *h1World) dial() (*tls.Conn, *bufio.Reader) {
	w.t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr,
		&tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		w.t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	w.t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip writes raw and reads one response (for a HEAD request pass head).
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, raw string, head bool) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return readResp(t, br, head)
}

func readResp(t *testing.T, br *bufio.Reader, head bool) (*http.Response, string) {
	t.Helper()
	method := "GET"
	if head {
		method = "HEAD"
	}
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return res, string(b)
}

// rawUpstream is a TCP server that records every byte it receives and
// answers each connection with answer(conn, reader).
type rawUpstream struct {
	ln   net.Listener
	mu   sync.Mutex
	got  bytes.Buffer
	conn int
}

func startRawUpstream(t *testing.T, answer func(c net.Conn, br *bufio.Reader)) *rawUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conn++
			u.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				answer(c, bufio.NewReader(io.TeeReader(c, u)))
			}()
		}
	}()
	return u
}

func (u *rawUpstream) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got.Write(p)
}

func (u *rawUpstream) received() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got.String()
}

func (u *rawUpstream) url() string { return "http://" + u.ln.Addr().String() }

// echoUpstream answers every request with its method, path, body and
// the headers it received (net/http, so it parses strictly too).
func echoUpstream(t *testing.T) *httptest.Server {
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		n := requests
		mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
			return
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(304)
			return
		}
		w.Header().Set("X-Request-Number", fmt.Sprint(n))
		fmt.Fprintf(w, "%s %s host=%s body=%q te=%v cl=%d xff=%s", r.Method, r.URL.RequestURI(), r.Host, body,
			r.TransferEncoding, r.ContentLength, r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Smuggling attempts are refused with 400 before anything reaches the
// upstream, and a malformed chunked body never reaches it as a second
// request.
func TestH1Smuggling(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	w := startH1World(t, up.url())
	for _, tc := range []struct{ name, raw string }{
		{"Content-Length and Transfer-Encoding", "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"two different Content-Lengths", "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"Content-Length list that disagrees", "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0, 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"signed Content-Length", "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: +44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"space before the colon", "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length : 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: web.test\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"},
		{"bare LF", "GET / HTTP/1.1\nHost: web.test\n\n"},
		{"bare CR in a value", "GET / HTTP/1.1\r\nHost: web.test\r\nX-A: 1\rGET /smuggled HTTP/1.1\r\n\r\n"},
		{"Transfer-Encoding twice", "POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n"},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: web.test\r\nHost: other.test\r\n\r\n"},
		{"invalid field name", "GET / HTTP/1.1\r\nHost: web.test\r\nX(A): 1\r\n\r\n"},
		{"malformed request line", "GET  / HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"chunked in HTTP/1.0", "POST / HTTP/1.0\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := w.dial()
			res, _ := roundTrip(t, c, br, tc.raw, false)
			if res.StatusCode != 400 {
				t.Errorf("status %d, want 400", res.StatusCode)
			}
			if _, err := br.ReadByte(); err == nil {
				t.Error("the connection stayed open after a refused request")
			}
		})
	}
	t.Run("Transfer-Encoding other than chunked gets 501", func(t *testing.T) {
		c, br := w.dial()
		res, _ := roundTrip(t, c, br, "POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false)
		if res.StatusCode != 501 {
			t.Errorf("status %d, want 501", res.StatusCode)
		}
	})
	if got := up.received(); got != "" {
		t.Fatalf("refused requests reached the upstream:\n%s", got)
	}
	for _, tc := range []struct{ name, body string }{
		{"chunk size not hex", "zz\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"chunk size overflowing", "10000000000000000\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"chunk data longer than its size", "3\r\nabcdef\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
		{"chunk size with a bare LF", "3\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := w.dial()
			res, _ := roundTrip(t, c, br, "POST /upload HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"+tc.body, false)
			if res.StatusCode != 400 {
				t.Errorf("status %d, want 400", res.StatusCode)
			}
		})
	}
	if got := up.received(); strings.Contains(got, "/smuggled") {
		t.Fatalf("a smuggled request reached the upstream:\n%s", got)
	}
}

// Pipelined requests are answered in order on one connection.
func TestH1Pipelined(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	c, br := w.dial()
	var raw strings.Builder
	for i := range 5 {
		fmt.Fprintf(&raw, "GET /p%d HTTP/1.1\r\nHost: web.test\r\n\r\n", i)
	}
	raw.WriteString("POST /p5 HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello")
	raw.WriteString("GET /p6 HTTP/1.1\r\nHost: web.test\r\n\r\n")
	if _, err := io.WriteString(c, raw.String()); err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		res, body := readResp(t, br, false)
		if want := fmt.Sprintf(" /p%d ", i); res.StatusCode != 200 || !strings.Contains(body, want) {
			t.Errorf("response %d: %d %q, want %q", i, res.StatusCode, body, want)
		}
		if i == 5 && !strings.Contains(body, `body="hello"`) {
			t.Errorf("pipelined POST body: %q", body)
		}
	}
}

// HTTP/1.0 clients get no chunked encoding and a close unless they
// asked for keep-alive.
func TestH1HTTP10Client(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/chunked" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	w := startH1World(t, up.url())

	c, br := w.dial()
	res, body := roundTrip(t, c, br, "GET /chunked HTTP/1.0\r\nHost: web.test\r\n\r\n", false)
	if body != "hello world" || len(res.TransferEncoding) != 0 || !res.Close {
		t.Errorf("HTTP/1.0 client got %q, Transfer-Encoding %v, close %v: want the body unchunked and a close", body, res.TransferEncoding, res.Close)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("connection open after the response to HTTP/1.0 without keep-alive")
	}

	c, br = w.dial()
	for i := range 2 {
		res, body := roundTrip(t, c, br, "GET / HTTP/1.0\r\nHost: web.test\r\nConnection: keep-alive\r\n\r\n", false)
		if body != "ok" || res.Header.Get("Connection") != "keep-alive" {
			t.Errorf("keep-alive request %d: %q, Connection %q", i, body, res.Header.Get("Connection"))
		}
	}
}

// An upstream response delimited by the close of its connection is
// re-framed as chunked for an HTTP/1.1 client, which keeps its
// connection.
func TestH1CloseDelimitedUpstream(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
		time.Sleep(20 * time.Millisecond)
		io.WriteString(c, "the close")
	})
	w := startH1World(t, up.url())
	c, br := w.dial()
	for i := range 2 {
		res, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
		if body != "until the close" || len(res.TransferEncoding) != 1 || res.TransferEncoding[0] != "chunked" || res.Close {
			t.Errorf("request %d: %q, Transfer-Encoding %v, close %v", i, body, res.TransferEncoding, res.Close)
		}
	}
}

// Chunked request bodies reach the upstream whole (re-chunked), and a
// client's Expect: 100-continue gets its 100 before it sends the body.
func TestH1RequestBodies(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	c, br := w.dial()
	_, body := roundTrip(t, c, br, "POST /up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n", false)
	if !strings.Contains(body, `body="hello world"`) || !strings.Contains(body, "te=[chunked]") {
		t.Errorf("chunked body: upstream saw %q", body)
	}
	// a body larger than the buffers, Content-Length, streamed
	big := strings.Repeat("0123456789", 20000)
	_, body = roundTrip(t, c, br, fmt.Sprintf("PUT /big HTTP/1.1\r\nHost: web.test\r\nContent-Length: %d\r\n\r\n%s", len(big), big), false)
	if !strings.Contains(body, fmt.Sprintf("cl=%d", len(big))) || !strings.Contains(body, big[:100]) || len(body) < len(big) {
		t.Errorf("200 kB body: upstream saw %d bytes: %.200q", len(body), body)
	}

	t.Run("100-continue", func(t *testing.T) {
		c, br := w.dial()
		io.WriteString(c, "POST /c HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
			t.Fatalf("before the body: %q %v, want 100 Continue", line, err)
		}
		if l, _ := br.ReadString('\n'); l != "\r\n" {
			t.Fatalf("100 Continue head not ended: %q", l)
		}
		res, body := roundTrip(t, c, br, "hello", false)
		if res.StatusCode != 200 || !strings.Contains(body, `body="hello"`) {
			t.Errorf("after 100 Continue: %d %q", res.StatusCode, body)
		}
	})
}

// HEAD, 204 and 304 answers carry no body, and the connection goes on.
func TestH1NoBodyResponses(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	c, br := w.dial()
	res, body := roundTrip(t, c, br, "HEAD /h HTTP/1.1\r\nHost: web.test\r\n\r\n", true)
	if res.StatusCode != 200 || body != "" || res.ContentLength <= 0 {
		t.Errorf("HEAD: %d %q Content-Length %d, want 200, no body, the GET's length", res.StatusCode, body, res.ContentLength)
	}
	for _, p := range []string{"/204", "/304"} {
		res, body := roundTrip(t, c, br, "GET "+p+" HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
		if p[1:] != fmt.Sprint(res.StatusCode) || body != "" {
			t.Errorf("%s: %d %q", p, res.StatusCode, body)
		}
	}
	// the connection is still in step: a normal request after them
	res, body = roundTrip(t, c, br, "GET /after HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
	if res.StatusCode != 200 || !strings.HasPrefix(body, "GET /after ") {
		t.Errorf("after HEAD/204/304: %d %q", res.StatusCode, body)
	}
	// absolute-form target: its authority is the Host
	res, body = roundTrip(t, c, br, "GET http://web.test/abs?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n", false)
	if res.StatusCode != 200 || !strings.HasPrefix(body, "GET /abs?q=1 host=web.test") {
		t.Errorf("absolute-form: %d %q", res.StatusCode, body)
	}
}

// A request head over 64 KiB gets 431; one of 32 KiB passes.
func TestH1HeaderTooLarge(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	c, br := w.dial()
	res, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: "+strings.Repeat("b", 32<<10)+"\r\n\r\n", false)
	if res.StatusCode != 200 {
		t.Errorf("32 KiB header: %d", res.StatusCode)
	}
	c, br = w.dial()
	go io.WriteString(c, "GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: "+strings.Repeat("b", 100<<10)+"\r\n\r\n")
	res, _ = readResp(t, br, false)
	if res.StatusCode != 431 {
		t.Errorf("100 KiB header: %d, want 431", res.StatusCode)
	}
}

// Idle keep-alive connections hold no pooled buffer: after a request
// each, the buffers lent out return to zero while the connections stay
// open and usable.
func TestH1IdleConnHoldsNoBuffer(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	before := h1wire.BuffersOut()
	type conn struct {
		c  *tls.Conn
		br *bufio.Reader
	}
	var conns []conn
	for range 50 {
		c, br := w.dial()
		if res, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		conns = append(conns, conn{c, br})
	}
	deadline := time.Now().Add(5 * time.Second)
	// (<=: a connection of an earlier test may still have held one in before)
	for h1wire.BuffersOut() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h1wire.BuffersOut() - before; n > 0 {
		t.Fatalf("%d pooled buffers held by 50 idle keep-alive connections, want 0", n)
	}
	// and they still work
	for i, cc := range conns[:5] {
		if res, _ := roundTrip(t, cc.c, cc.br, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 {
			t.Errorf("idle connection %d: status %d", i, res.StatusCode)
		}
	}
}

// A Host of another route on this connection gets 421; the
// connection stays usable.
func TestH1Misdirected(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL, routes.Route{Hosts: []string{"other.test"}, Upstream: "http://127.0.0.1:1"})
	c, br := w.dial()
	res, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", false)
	if res.StatusCode != 421 {
		t.Errorf("other route's Host: %d, want 421", res.StatusCode)
	}
	res, _ = roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: WEB.test:443\r\n\r\n", false)
	if res.StatusCode != 200 {
		t.Errorf("own Host with port and case: %d", res.StatusCode)
	}
}

// A pooled upstream connection the upstream closed is not used for
// the next request (or the request is retried on a fresh one).
func TestH1StaleUpstreamConnection(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		// keep-alive promised, then closed at once after the response
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(10 * time.Millisecond)
	})
	w := startH1World(t, up.url())
	c, br := w.dial()
	for i := range 4 {
		res, body := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
		if res.StatusCode != 200 || body != "ok" {
			t.Errorf("request %d: %d %q", i, res.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond) // the upstream has closed the pooled connection by now
	}
}

// An idle keep-alive connection moves to a fresh goroutine after
// idleHandoff (its stack shrinks): it still serves its next request
// then, and is still closed at the idle timeout, not before.
func TestH1IdleHandoffAndTimeout(t *testing.T) {
	const idle = 2500 * time.Millisecond
	w := startH1WorldIdle(t, idle, echoUpstream(t).URL)
	c, br := w.dial()
	if res, _ := roundTrip(t, c, br, "GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	time.Sleep(idleHandoff + 300*time.Millisecond) // handed off by now
	res, body := roundTrip(t, c, br, "GET /b HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
	if res.StatusCode != 200 || !strings.Contains(body, "GET /b ") {
		t.Fatalf("request after an idle handoff: %d %q", res.StatusCode, body)
	}
	began := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := br.ReadByte()
	took := time.Since(began)
	if err == nil || took < idle-300*time.Millisecond || took > idle+2*time.Second {
		t.Errorf("idle connection closed after %v (%v), want about the idle timeout %v", took, err, idle)
	}
}

// A request that arrives while an idle connection changes goroutine —
// after the first wait timed out, before the new goroutine's wait on the
// socket began — is served at once: the poller is edge-triggered and
// RawConn.Read forgets a readiness noted before it began, so the wait
// looks at the socket first. (handoffPause holds the new goroutine so the
// request surely comes in between; before the fix it waited for the idle
// timeout: CI saw a 10 s client timeout in the stray-bytes tests.)
func TestH1RequestDuringIdleHandoff(t *testing.T) {
	handoffPause = 150 * time.Millisecond
	t.Cleanup(func() { handoffPause = 0 })
	w := startH1WorldIdle(t, 20*time.Second, echoUpstream(t).URL)
	c, br := w.dial()
	for i := range 3 {
		if res, _ := roundTrip(t, c, br, "GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		time.Sleep(idleHandoff + 50*time.Millisecond) // handed off, the new goroutine paused
		began := time.Now()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		res, body := roundTrip(t, c, br, "GET /b HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
		if res.StatusCode != 200 || !strings.Contains(body, "GET /b ") {
			t.Fatalf("round %d: request during the hand-off: %d %q", i, res.StatusCode, body)
		}
		if took := time.Since(began); took > 2*time.Second {
			t.Fatalf("round %d: request during the hand-off answered after %v", i, took)
		}
	}
}

// An idle keep-alive connection keeps a 2 KiB goroutine stack, not the
// 8 KiB its handshake and request grew: after idleHandoff it waits on a
// fresh goroutine, in frames of its own (waitThenLoop). Measured as the
// growth of the runtime's stack memory in use over 300 idle
// connections; 4.3 KiB each when the wait ran under serveOne's frame.
// The runtime starts new goroutines at the average stack size it last
// scanned (adaptivestackstart): with many idle connections that is
// their own 2 KiB, in a test process it is not: the test runs itself
// again with GODEBUG=adaptivestackstart=0 (read only at process start),
// so it measures what the frames need.
func TestH1IdleConnectionStackSmall(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's frames are larger than a user's build")
	}
	if os.Getenv("GATEHOUSE_STACK_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestH1IdleConnectionStackSmall$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "GATEHOUSE_STACK_CHILD=1", "GODEBUG=adaptivestackstart=0")
		out, err := cmd.CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "idle connection") {
				t.Log(strings.TrimSpace(l))
			}
		}
		if err != nil {
			t.Fatalf("measuring process: %v\n%s", err, out)
		}
		return
	}
	w := startH1World(t, echoUpstream(t).URL)
	c0, br0 := w.dial() // one connection first: pools and caches warm
	roundTrip(t, c0, br0, "GET /warm HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
	time.Sleep(idleHandoff + 200*time.Millisecond)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.StackInuse
	const n = 300
	for i := 0; i < n; i++ {
		c, br := w.dial()
		if res, _ := roundTrip(t, c, br, "GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	time.Sleep(idleHandoff + 500*time.Millisecond) // every connection handed off
	runtime.GC()
	runtime.ReadMemStats(&ms)
	per := (int64(ms.StackInuse) - int64(before)) / n
	t.Logf("goroutine stack per idle connection: %d B", per)
	if per > 3<<10 {
		t.Errorf("an idle connection keeps %d B of goroutine stack, want at most 3 KiB (a 2 KiB stack)", per)
	}
}

// A client that leaves while its request waits on the upstream (a long
// poll before the response head, or a paused event stream) releases
// the upstream connection within about watchEvery, not when the
// upstream next writes.
func TestH1ClientGoneReleasesUpstream(t *testing.T) {
	closed := make(chan string, 4)
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.URL.Path == "/stream" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
		}
		_ = c.SetReadDeadline(time.Now().Add(8 * time.Second))
		if _, err := br.ReadByte(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			closed <- req.URL.Path
		}
	})
	w := startH1World(t, up.url())
	for _, path := range []string{"/poll", "/stream"} {
		c, br := w.dial()
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: web.test\r\n\r\n")
		if path == "/stream" {
			if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
				t.Fatalf("stream head: %q %v", line, err)
			}
		} else {
			time.Sleep(100 * time.Millisecond) // the request is with the upstream
		}
		began := time.Now()
		c.Close()
		select {
		case got := <-closed:
			if got != path {
				t.Errorf("upstream connection of %s closed, want %s", got, path)
			}
			if took := time.Since(began); took > watchEvery+2*time.Second {
				t.Errorf("%s: upstream connection closed %v after the client left", path, took)
			}
		case <-time.After(watchEvery + 4*time.Second):
			t.Errorf("%s: the upstream connection stayed open after the client left", path)
		}
	}
}
