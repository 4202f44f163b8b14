package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// gatehouse's upstream side against upstreams that send what nobody
// asked for, answer early, or never stop sending 1xx heads: real
// gatehouse servers, real HTTP/1.1 and HTTP/2 clients (net/http's),
// raw TCP upstreams that misbehave exactly so.

// client returns a real client of w for HTTP/1.1 (h2 false) or HTTP/2,
// with its own connections.
func (w *h1World) client(h2 bool) *http.Client {
	d := &net.Dialer{Timeout: 3 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: w.roots},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", w.addr)
		},
		MaxIdleConnsPerHost: 4,
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// clientOf returns a real client of w for proto: h1 or h2 (net/http's)
// or h3 (quic-go's, on the https address's UDP port).
func (w *h1World) clientOf(proto string) *http.Client {
	if proto != "h3" {
		return w.client(proto == "h2")
	}
	if !poll(func() bool {
		w.s.mu.Lock()
		defer w.s.mu.Unlock()
		return w.s.h3 != nil
	}) {
		w.t.Fatal("HTTP/3 listener not up")
	}
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: w.roots},
		Dial: func(ctx context.Context, _ string, cfg *tls.Config, qc *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, w.addr, cfg, qc)
		},
	}
	w.t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func protoName(h2 bool) string {
	if h2 {
		return "h2"
	}
	return "h1"
}

// strayUpstream answers each request with a response naming the
// request's X-Id; for /head (HEAD), /204, /304 and /cl it then sends,
// delay later in a separate write, bytes nobody asked for: a body, or
// (validResponse) a whole second response naming the same X-Id — what
// the next request on the connection would take for its answer.
// Requests are answered one at a time per connection, in order, as
// apps do. A PROXY protocol header, if any, is skipped.
// strays counts the strays written.
func strayUpstream(t *testing.T, delay time.Duration, validResponse bool, strays *atomic.Int64) *rawUpstream {
	return startRawUpstream(t, strayAnswer(delay, validResponse, strays))
}

// strayAnswer is strayUpstream's answer to one connection.
func strayAnswer(delay time.Duration, validResponse bool, strays *atomic.Int64) func(c net.Conn, br *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		if b, err := br.Peek(6); err == nil && string(b) == "PROXY " {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
		}
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			id := req.Header.Get("X-Id")
			own := "own response to " + id
			full := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: %d\r\n\r\n%s", id, len(own), own)
			stray := "<html>the body of " + id + ", sent though nobody asked for it</html>"
			if validResponse {
				stray = full
			}
			var head string
			switch req.URL.Path {
			case "/head":
				head = fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: %d\r\n\r\n", id, len(own))
			case "/204":
				head = "HTTP/1.1 204 No Content\r\nX-Id: " + id + "\r\n\r\n"
			case "/304":
				head = "HTTP/1.1 304 Not Modified\r\nX-Id: " + id + "\r\nETag: \"e\"\r\n\r\n"
			case "/cl":
				head = full
			default:
				head, stray = full, ""
			}
			if _, err := io.WriteString(c, head); err != nil {
				return
			}
			if stray != "" {
				if delay > 0 {
					time.Sleep(delay)
				}
				if _, err := io.WriteString(c, stray); err != nil {
					return
				}
				strays.Add(1)
			}
		}
	}
}

// strayWorld starts strayUpstream, plain or (scheme https) over TLS,
// and a gatehouse serving web.test and extra (their Upstream is set to
// the stray upstream; upstream_ca too for https).
func strayWorld(t *testing.T, scheme string, delay time.Duration, validResponse bool, strays *atomic.Int64, extra ...routes.Route) (*rawUpstream, *h1World) {
	answer := strayAnswer(delay, validResponse, strays)
	var ca string
	if scheme == "https" {
		var cfg *tls.Config
		cfg, ca = upstreamTLS(t, nil)
		answer = overTLS(cfg, delay == 0, answer)
	}
	up := startRawUpstream(t, answer)
	url := scheme + "://" + up.ln.Addr().String()
	for i := range extra {
		extra[i].Upstream = url
	}
	w := startH1WorldWith(t, func(c *routes.Config) {
		for i := range c.Routes {
			if scheme == "https" {
				c.Routes[i].UpstreamCA = ca
			}
		}
	}, url, extra...)
	return up, w
}

var strayModes = []struct{ method, path string }{
	{"HEAD", "/head"}, {"GET", "/204"}, {"GET", "/304"}, {"GET", "/cl"},
}

// ask sends one request with X-Id id to host and checks that the
// answer is the one the upstream gave to this very request.
func ask(c *http.Client, method, host, path, id string) error {
	req, err := http.NewRequest(method, "https://"+host+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Id", id)
	res, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s (%s): %v", method, path, id, err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return fmt.Errorf("%s %s (%s): reading the body: %v", method, path, id, err)
	}
	want, wantBody := 200, "own response to "+id
	switch {
	case path == "/204":
		want, wantBody = 204, ""
	case path == "/304":
		want, wantBody = 304, ""
	case method == "HEAD":
		wantBody = ""
	}
	if got := res.Header.Get("X-Id"); res.StatusCode != want || got != id || string(body) != wantBody {
		return fmt.Errorf("%s %s as %s: got %d X-Id %q body %q; want %d, its own answer", method, path, id, res.StatusCode, got, body, want)
	}
	return nil
}

// Two clients on two routes share one upstream address (one pool). One
// asks what makes the upstream send stray bytes a few milliseconds
// after the head (a body after a HEAD, 204 or 304 head, bytes after a
// Content-Length body), then a GET; the other sends GETs all along.
// Each client must get exactly its own answers, 200 times, over
// HTTP/1.1 and HTTP/2 both ways round. (Before the fix the stray bytes
// were read as the next request's response: a 502, or with a stray
// whole response, another client's answer.)
//
// The same over TLS (an https:// upstream): the own client's TLS
// connections are watched as plain ones are.
// Over TLS also a whole stray response with no delay: it then comes in
// a TLS record of its own right behind the response's, in the same TCP
// write, so crypto/tls has read it from the socket along with the
// response (the socket is quiet, the watch sees nothing): the end of
// the exchange looks into crypto/tls's buffer too.
func TestUpstreamStrayBytesNotDelivered(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) { strayBytesNotDelivered(t, scheme, 3*time.Millisecond, false, 200) })
	}
	t.Run("https/whole response, no delay", func(t *testing.T) { strayBytesNotDelivered(t, "https", 0, true, 100) })
}

func strayBytesNotDelivered(t *testing.T, scheme string, delay time.Duration, validResponse bool, rounds int) {
	_, w := strayWorld(t, scheme, delay, validResponse, new(atomic.Int64), routes.Route{Hosts: []string{"other.test"}})
	for _, combo := range []struct{ a, b string }{{"h1", "h2"}, {"h2", "h1"}, {"h3", "h1"}, {"h1", "h3"}} {
		t.Run(combo.a+"+"+combo.b, func(t *testing.T) {
			ca, cb := w.clientOf(combo.a), w.clientOf(combo.b)
			errs := make(chan error, 2*rounds+2)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				for i := range rounds {
					m := strayModes[i%len(strayModes)]
					if err := ask(ca, m.method, "web.test", m.path, fmt.Sprintf("A-%d-stray", i)); err != nil {
						errs <- err
					}
					if err := ask(ca, "GET", "web.test", "/", fmt.Sprintf("A-%d", i)); err != nil {
						errs <- err
					}
				}
			}()
			go func() {
				defer wg.Done()
				for i := range rounds {
					if err := ask(cb, "GET", "other.test", "/", fmt.Sprintf("B-%d", i)); err != nil {
						errs <- err
					}
				}
			}()
			wg.Wait()
			close(errs)
			n := 0
			for err := range errs {
				if n++; n <= 10 {
					t.Error(err)
				}
			}
			if n > 10 {
				t.Errorf("… %d wrong answers in all", n)
			}
		})
	}
}

// The same with a stray that is a whole well-formed response naming
// the first request (an upstream answering twice): once it has arrived
// on an idle pooled connection the connection is closed (the watch),
// and the next client — on another route, HTTP/1.1 or HTTP/2 — never
// gets it. The same over TLS: a stray there is application data, which
// the watch's check of a readable TLS connection does not take for a
// session ticket. (Before https:// upstreams took the own client, the
// Transport dropped the connection too, but unsolicitedClosed never
// counted it: the check below failed.)
func TestUpstreamStrayResponseOnIdleConn(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) { strayResponseOnIdleConn(t, scheme) })
	}
}

func strayResponseOnIdleConn(t *testing.T, scheme string) {
	var strays atomic.Int64
	_, w := strayWorld(t, scheme, 3*time.Millisecond, true, &strays, routes.Route{Hosts: []string{"other.test"}})
	for _, combo := range []struct{ a, b string }{{"h1", "h1"}, {"h1", "h2"}, {"h2", "h1"}, {"h2", "h2"}, {"h3", "h1"}, {"h1", "h3"}, {"h3", "h3"}} {
		t.Run(combo.a+"+"+combo.b, func(t *testing.T) {
			ca, cb := w.clientOf(combo.a), w.clientOf(combo.b)
			for i := range 20 {
				m := strayModes[i%len(strayModes)]
				sent, closed := strays.Load(), unsolicitedClosed.Load()
				if err := ask(ca, m.method, "web.test", m.path, fmt.Sprintf("A-%d", i)); err != nil {
					t.Fatal(err)
				}
				// the stray arrives on the idle connection: the watch closes it
				waitUntil(t, "the stray written", func() bool { return strays.Load() > sent })
				// even rounds: the next request right away (the check at
				// reuse, or the watch, whichever is first); odd rounds:
				// after the watch has closed the connection
				if i%2 == 1 && !poll(func() bool { return unsolicitedClosed.Load() > closed }) {
					t.Fatal("the connection the stray came on was not closed (by the watch, or at the end of its exchange)")
				}
				if err := ask(cb, "GET", "other.test", "/", fmt.Sprintf("B-%d", i)); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// waitUntil polls cond for up to 5 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// poll reports whether cond held within 5 s.
func poll(cond func() bool) bool {
	for range 5000 {
		if cond() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// A connection pinned to its client (a route with proxy_protocol) is
// watched too: the stray answer to the client's last request never
// becomes the answer to its next one. Over TLS too, the PROXY header
// going before the TLS handshake.
func TestUpstreamStrayResponsePinned(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) { strayResponsePinned(t, scheme) })
	}
}

func strayResponsePinned(t *testing.T, scheme string) {
	var strays atomic.Int64
	up, w := strayWorld(t, scheme, 3*time.Millisecond, true, &strays, routes.Route{Hosts: []string{"other.test"}, ProxyProtocol: "v1"})
	for _, proto := range []string{"h1", "h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			c := w.clientOf(proto)
			for i := range 20 {
				m := strayModes[i%len(strayModes)]
				sent, closed := strays.Load(), unsolicitedClosed.Load()
				if err := ask(c, m.method, "other.test", m.path, fmt.Sprintf("A-%d", i)); err != nil {
					t.Fatal(err)
				}
				waitUntil(t, "the stray written", func() bool { return strays.Load() > sent })
				watched := i%2 == 0 || poll(func() bool { return unsolicitedClosed.Load() > closed })
				if err := ask(c, "GET", "other.test", "/", fmt.Sprintf("A-%d-next", i)); err != nil {
					t.Fatal(err)
				}
				if !watched {
					t.Fatal("the watch did not close the pinned connection the stray came on")
				}
			}
		})
	}
	if n := strings.Count(up.received(), "PROXY TCP4 "); n < 2 {
		t.Errorf("%d PROXY headers reached the upstream; the route did not send them", n)
	}
}

// An upstream may send at most max1xx informational heads before its
// answer: one more is a 502, not an exchange held open by a 1xx every
// few seconds. max1xx is still fine.
func TestUpstreamTooMany1xx(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			n := 0
			fmt.Sscanf(req.URL.Path, "/%d", &n)
			var b bytes.Buffer
			for range n {
				b.WriteString("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
			}
			b.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			if _, err := c.Write(b.Bytes()); err != nil {
				return
			}
		}
	})
	w := startH1World(t, up.url())
	for _, h2 := range []bool{false, true} {
		c := w.client(h2)
		for _, tc := range []struct{ n, want int }{{max1xx, 200}, {max1xx + 1, 502}, {50, 502}} {
			res, err := c.Get(fmt.Sprintf("https://web.test/%d", tc.n))
			if err != nil {
				t.Fatalf("%s, %d 1xx heads: %v", protoName(h2), tc.n, err)
			}
			res.Body.Close()
			if res.StatusCode != tc.want {
				t.Errorf("%s, %d 1xx heads: status %d, want %d", protoName(h2), tc.n, res.StatusCode, tc.want)
			}
		}
	}
}

// An upstream that answered 100 Continue on a reused connection and
// then closed it had the request: it is not sent again on a new
// connection (the retry of a request on a stale pooled connection is
// for one that got no byte back at all). Over HTTP/2 this was decided
// on the read buffer's fill level, which reading past the 100 reset.
func TestUpstreamNoRetryAfter1xx(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			mu.Lock()
			seen[req.URL.Path]++
			mu.Unlock()
			if req.URL.Path == "/then-100" {
				_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
				return // and close
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	w := startH1World(t, up.url())
	for _, h2 := range []bool{false, true} {
		t.Run(protoName(h2), func(t *testing.T) {
			mu.Lock()
			clear(seen)
			mu.Unlock()
			c := w.client(h2)
			res, err := c.Get("https://web.test/first") // leaves a pooled connection
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			res, err = c.Get("https://web.test/then-100")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			mu.Lock()
			n := seen["/then-100"]
			mu.Unlock()
			if res.StatusCode != 502 || n != 1 {
				t.Errorf("status %d, the upstream got the request %d times; want 502 and once", res.StatusCode, n)
			}
		})
	}
}

// An upstream that answers before it has read the whole request body
// (a 413, a redirect) and closes: the client gets that answer, as from
// nginx, not a 502. Over HTTP/1.1 the client connection closes after
// it (the rest of the body was never read); over HTTP/2 the stream's
// upload is reset with NO_ERROR, over HTTP/3 its reading side is
// stopped (STOP_SENDING H3_NO_ERROR).
func TestUpstreamEarlyResponse(t *testing.T) {
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_ = req
		_, _ = io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
		// closed with the body unread: the kernel resets the connection
	})
	w := startH1World(t, up.url())
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	for _, proto := range []string{"h1", "h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			c := w.clientOf(proto)
			for i := range 3 {
				req, _ := http.NewRequest("POST", "https://web.test/upload", bytes.NewReader(body))
				res, err := c.Do(req)
				if err != nil {
					t.Fatalf("upload %d: %v", i, err)
				}
				got, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 413 || string(got) != "too large" {
					t.Fatalf("upload %d: %d %q, want the upstream's 413", i, res.StatusCode, got)
				}
			}
		})
	}
}

// After an early answer gatehouse reads and drops the rest of an
// HTTP/1.1 body while it keeps coming, but no longer than
// lingerBodyTime: a client trickling on for ever is cut off.
func TestUpstreamEarlyResponseLingerBound(t *testing.T) {
	old := lingerBodyTime
	lingerBodyTime = 300 * time.Millisecond
	t.Cleanup(func() { lingerBodyTime = old })
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
	})
	w := startH1World(t, up.url())
	c, br := w.dial()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	writeEnded := make(chan error, 1)
	go func() {
		// a body announced far larger than what is sent: 1 MiB at once
		// (the upstream's close makes gatehouse's write fail), then a
		// trickle, well within lingerTime each
		if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1000000000\r\n\r\n"); err != nil {
			writeEnded <- err
			return
		}
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for range 16 {
			if _, err := c.Write(chunk); err != nil {
				writeEnded <- err
				return
			}
		}
		for range 1000 { // 10 s at most
			if _, err := c.Write(chunk[:1024]); err != nil {
				writeEnded <- err
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		writeEnded <- nil
	}()
	res, body := readResp(t, br, false)
	if res.StatusCode != 413 || body != "too large" {
		t.Fatalf("got %d %q, want the upstream's 413", res.StatusCode, body)
	}
	if err := <-writeEnded; err == nil {
		t.Fatal("the client trickled its body for 10 s: gatehouse never stopped reading it")
	}
}

// HTTP/2 streams of one client on a proxy_protocol route use upstream
// connections of their own (each with the client's PROXY header); at
// most maxPinnedIdle of them stay open between requests, and those
// are reused.
func TestUpstreamPinnedIdleBound(t *testing.T) {
	const streams = maxPinnedIdle + 2
	var arrived, closed atomic.Int64
	release := make(chan struct{})
	up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		defer closed.Add(1)
		if _, err := br.ReadString('\n'); err != nil { // the PROXY header
			return
		}
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/wait" && arrived.Add(1) <= streams {
				<-release
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	w := startH1World(t, up.url(), routes.Route{Hosts: []string{"other.test"}, Upstream: up.url(), ProxyProtocol: "v1"})
	c := w.client(true)
	run := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := c.Get("https://other.test/wait")
				if err != nil {
					t.Error(err)
					return
				}
				res.Body.Close()
				if res.StatusCode != 200 {
					t.Errorf("status %d", res.StatusCode)
				}
			}()
		}
		wg.Wait()
	}
	go func() {
		for i := 0; i < 5000 && arrived.Load() < streams; i++ {
			time.Sleep(time.Millisecond)
		}
		close(release) // if not all came, run reports the difference
	}()
	run(streams)
	opened := func() int { up.mu.Lock(); defer up.mu.Unlock(); return up.conn }
	if n := opened(); n != streams {
		t.Fatalf("%d upstream connections for %d concurrent streams", n, streams)
	}
	waitUntil(t, "the connections beyond the idle bound closed", func() bool { return closed.Load() == streams-maxPinnedIdle })
	run(maxPinnedIdle)
	if n := opened(); n != streams {
		t.Errorf("%d upstream connections after %d more requests: the idle ones were not reused", n, maxPinnedIdle)
	}
	if n := closed.Load(); n != streams-maxPinnedIdle {
		t.Errorf("%d upstream connections closed, want %d", n, streams-maxPinnedIdle)
	}
	// one request after the other, each sent as soon as the last was
	// answered: the connection is back in the client's pool by then
	for range 20 {
		run(1)
	}
	if n := opened(); n != streams {
		t.Errorf("%d upstream connections after 20 requests in a row, want %d: the answered request's connection was not back yet", n, streams)
	}
}

// Stray bytes that reach a pooled connection before its idle watch
// began (within watchDelay of going idle) close it as soon as the watch
// begins, with no further request: the watch is level-triggered.
func TestUpstreamStrayBeforeWatchBegins(t *testing.T) {
	var strays atomic.Int64
	up := strayUpstream(t, watchDelay/4, true, &strays)
	w := startH1World(t, up.url())
	c := w.client(false)
	for i := range 5 {
		sent, closed := strays.Load(), unsolicitedClosed.Load()
		if err := ask(c, "HEAD", "web.test", "/head", fmt.Sprintf("A-%d", i)); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the stray written", func() bool { return strays.Load() > sent })
		waitUntil(t, "the watch to close the connection", func() bool { return unsolicitedClosed.Load() > closed })
		if n := w.s.state.Load().lookup("web.test").bal.ups[0].pool.idleCount(); n != 0 {
			t.Fatalf("%d idle connections left in the pool after the stray", n)
		}
	}
}

// A client's interrupt of an exchange (an HTTP/2 stream reset, an
// HTTP/3 cancel) holds when the exchange sets a deadline after it: the
// request's write fails, and the read for an early answer that follows
// (readHead with a fresh upstream_response_header deadline), or a body
// read after noDeadline, ends at once — not when an upstream that never
// got the request answers it. (Found as a fuzz worker killed by the
// fuzzing engine's 10 s watchdog: a stream stuck in readHead after its
// connection closed.)
func TestUpstreamInterruptSticks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			held <- c // reads nothing, answers nothing
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	defer func() {
		if c := <-held; c != nil {
			c.Close()
		}
	}()
	uc := &upConn{nc: nc, raw: nc, fd: -1}
	uc.rr.rc = rawConnOf(nc)
	uc.Interrupt()
	if err := uc.write([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")); err == nil {
		t.Fatal("a write after the interrupt succeeded")
	}
	for _, read := range []struct {
		name string
		f    func() error
	}{
		{"readHead with a fresh deadline", func() error {
			_, err := uc.readHead(time.Now().Add(time.Minute))
			return err
		}},
		{"a body read after noDeadline", func() error {
			uc.noDeadline()
			return uc.br.Fill()
		}},
	} {
		done := make(chan error, 1)
		go func() { done <- read.f() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s: no error", read.name)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still reading 10 s after the interrupt", read.name)
		}
	}
}
