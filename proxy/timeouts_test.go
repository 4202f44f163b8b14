package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h2server"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// [timeouts] client_body and send, and the cap on the upstream
// exchanges one client connection may hold (policy_limits.go): a client
// that sends a head and stalls, stops reading, or opens HTTP/2 streams
// with no window does not hold upstream connections for long, nor
// many at once. Each test counts the connections its upstream (a real
// listener) has open, and what the upstream saw when they ended.

// heldUpstream is a TCP upstream that counts its open connections (and
// the most at once) and reports how each one's handler ended.
type heldUpstream struct {
	ln         net.Listener
	open, peak atomic.Int32
	ended      chan error // handle's result per connection
}

func startHeldUpstream(t *testing.T, handle func(c net.Conn, br *bufio.Reader) error) *heldUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &heldUpstream{ln: ln, ended: make(chan error, 1000)}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := u.open.Add(1)
			for p := u.peak.Load(); n > p && !u.peak.CompareAndSwap(p, n); p = u.peak.Load() {
			}
			go func() {
				// the upstream's own bound: a connection gatehouse never
				// lets go of ends here, and the test sees a timeout
				_ = c.SetDeadline(time.Now().Add(15 * time.Second))
				err := handle(c, bufio.NewReader(c))
				c.Close()
				u.open.Add(-1)
				select {
				case u.ended <- err:
				default:
				}
			}()
		}
	}()
	return u
}

func (u *heldUpstream) url() string { return "http://" + u.ln.Addr().String() }

// next returns how the next connection's handler ended, within 20 s.
func (u *heldUpstream) next(t *testing.T) error {
	t.Helper()
	select {
	case err := <-u.ended:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("no upstream connection ended within 20s")
		return nil
	}
}

// waitOpen waits (at most 20 s) until the upstream has want connections open.
func (u *heldUpstream) waitOpen(t *testing.T, want int32) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if u.open.Load() == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("upstream has %d connections open, want %d", u.open.Load(), want)
}

// readsBody reads one request and its whole body: the error reading
// the body is how the exchange ended for the upstream.
func readsBody(c net.Conn, br *bufio.Reader) error {
	req, err := http.ReadRequest(br)
	if err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	_, err = io.Copy(io.Discard, req.Body)
	if err == nil {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return errors.New("the whole body arrived")
	}
	return err
}

// sendsForever answers one request with a body of 1 GiB, written until
// a write fails: the error is how the exchange ended for the upstream.
func sendsForever(c net.Conn, br *bufio.Reader) error {
	if _, err := http.ReadRequest(br); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"); err != nil {
		return err
	}
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for range 1 << 14 {
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
	return errors.New("the whole body was taken")
}

// abortedByGatehouse checks that the upstream's exchange ended because
// gatehouse closed the connection, not by the upstream's own deadline.
func abortedByGatehouse(t *testing.T, err error) {
	t.Helper()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() || strings.HasPrefix(err.Error(), "the whole") {
		t.Fatalf("upstream exchange ended with %v; want it aborted by gatehouse", err)
	}
}

// limitCount reads gatehouse_http_conn_upstream_limit_total.
func limitCount(t *testing.T) float64 {
	var m dto.Metric
	if err := metricConnUpstreamLimit.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func tinyTimeouts(c *routes.Config) {
	c.Timeouts.ClientBody = routes.Duration(300 * time.Millisecond)
	c.Timeouts.Send = routes.Duration(300 * time.Millisecond)
}

// HTTP/1.1: a client that sends the head and part of the body, then
// nothing, gets 408 after client_body, and the upstream sees its
// request aborted (its connection closed mid-body).
func TestH1ClientBodyTimeout(t *testing.T) {
	up := startHeldUpstream(t, readsBody)
	w := startH1WorldWith(t, tinyTimeouts, up.url())
	c, br := w.dial()
	if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("a", 1000)); err != nil {
		t.Fatal(err)
	}
	res, body := readResp(t, br, false)
	if res.StatusCode != 408 {
		t.Errorf("status %d %q, want 408", res.StatusCode, body)
	}
	abortedByGatehouse(t, up.next(t))
	up.waitOpen(t, 0)
}

// HTTP/1.1: a client that stops reading a large response is cut off
// after send, and the upstream connection is released (the upstream's
// write fails).
func TestH1SendTimeout(t *testing.T) {
	up := startHeldUpstream(t, sendsForever)
	w := startH1WorldWith(t, tinyTimeouts, up.url())
	c, _ := w.dial()
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// the client reads nothing
	abortedByGatehouse(t, up.next(t))
	up.waitOpen(t, 0)
}

// h2Client is a raw HTTP/2 client connection to a test world.
type h2Client struct {
	t   testing.TB
	c   *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func (w *h1World) dialH2(settings ...http2.Setting) *h2Client {
	w.t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr,
		&tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{"h2"}})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		w.t.Fatal("h2 not negotiated")
	}
	h := &h2Client{t: w.t, c: c, fr: http2.NewFramer(c, c)}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.buf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		w.t.Fatal(err)
	}
	if err := h.fr.WriteSettings(settings...); err != nil {
		w.t.Fatal(err)
	}
	return h
}

// request opens stream id: method, authority and path, more fields in
// pairs; end: no body.
func (h *h2Client) request(id uint32, method, authority, path string, end bool, fields ...string) {
	h.t.Helper()
	h.buf.Reset()
	all := append([]string{":method", method, ":scheme", "https", ":authority", authority, ":path", path}, fields...)
	for i := 0; i+1 < len(all); i += 2 {
		_ = h.enc.WriteField(hpack.HeaderField{Name: all[i], Value: all[i+1]})
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.buf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// read reads frames until want says stop, for at most 20 s, answering
// the server's SETTINGS; it returns the error that ended reading.
func (h *h2Client) read(want func(http2.Frame) bool) error {
	_ = h.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for range 1000000 {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return err
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			_ = h.fr.WriteSettingsAck()
		}
		if want(f) {
			return nil
		}
	}
	return errors.New("too many frames")
}

// capReached waits (at most 20 s) until the upstream holds the cap and
// the metric counted the streams beyond it waiting, then checks that
// no more than the cap were ever open. send is long enough (seconds)
// that no stalled stream has been reset yet: the upstream's count of
// open connections lags gatehouse's closes, so after the first resets
// it could briefly read above the cap.
func capReached(t *testing.T, open, peak *atomic.Int32, before float64, waiting int) {
	t.Helper()
	for i := 0; ; i++ {
		if open.Load() == maxUpstreamPerConn && limitCount(t)-before >= float64(waiting) {
			break
		}
		if i == 2000 {
			t.Fatalf("upstream connections open: %d (at most %d); metric grew by %v; want %d and %d",
				open.Load(), peak.Load(), limitCount(t)-before, maxUpstreamPerConn, waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := peak.Load(); p != maxUpstreamPerConn {
		t.Errorf("the upstream had %d connections open at most, want the cap %d", p, maxUpstreamPerConn)
	}
}

// HTTP/2, client INITIAL_WINDOW_SIZE=0 (responses can never be sent):
// 130 streams whose upstream answers with a body hold at most
// maxUpstreamPerConn upstream connections at once (the others wait,
// counted in the metric), each stalled stream is reset after send, and
// every upstream connection is released.
func TestH2WindowStallCapped(t *testing.T) {
	up := startHeldUpstream(t, func(c net.Conn, br *bufio.Reader) error {
		if _, err := http.ReadRequest(br); err != nil {
			return err
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", 100000)); err != nil {
			return err
		}
		_, err := br.ReadByte() // the next request, or gatehouse's close
		return err
	})
	w := startH1WorldWith(t, func(c *routes.Config) { c.Timeouts.Send = routes.Duration(3 * time.Second) }, up.url())
	before := limitCount(t)
	h := w.dialH2(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	const streams = maxUpstreamPerConn + 30
	for i := range streams {
		h.request(uint32(2*i+1), "GET", "web.test", fmt.Sprintf("/s%d", i), true)
	}
	resets := map[uint32]http2.ErrCode{}
	done := make(chan error, 1)
	go func() {
		done <- h.read(func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.DataFrame:
				t.Errorf("stream %d: DATA with no window", f.StreamID)
			case *http2.RSTStreamFrame:
				resets[f.StreamID] = f.ErrCode
			case *http2.GoAwayFrame:
				t.Errorf("GOAWAY %v", f.ErrCode)
				return true
			}
			return len(resets) == streams
		})
	}()
	capReached(t, &up.open, &up.peak, before, streams-maxUpstreamPerConn)
	if err := <-done; err != nil {
		t.Fatalf("after %d resets: %v", len(resets), err)
	}
	for id, code := range resets {
		if code != http2.ErrCodeCancel {
			t.Errorf("stream %d reset with %v, want CANCEL", id, code)
		}
	}
	up.waitOpen(t, 0)
	for range streams {
		abortedByGatehouse(t, up.next(t))
	}
}

// HTTP/2: a stream that sends part of its body and stalls is reset
// after client_body; the upstream sees its request aborted, on a
// pooled upstream connection and on one pinned to the client
// connection for proxy_protocol.
func TestH2ClientBodyTimeout(t *testing.T) {
	t.Run("own client", func(t *testing.T) { h2BodyStall(t, "", readsBody) })
	t.Run("proxy_protocol, pinned", func(t *testing.T) {
		h2BodyStall(t, "v1", func(c net.Conn, br *bufio.Reader) error {
			if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "PROXY TCP4 127.0.0.1 ") {
				return fmt.Errorf("PROXY header %q: %v", line, err)
			}
			return readsBody(c, br)
		})
	})
}

func h2BodyStall(t *testing.T, pp string, handle func(net.Conn, *bufio.Reader) error) {
	up := startHeldUpstream(t, handle)
	w := startH1WorldWith(t, func(c *routes.Config) {
		tinyTimeouts(c)
		c.Routes[0].ProxyProtocol = pp
	}, up.url())
	h := w.dialH2()
	h.request(1, "POST", "web.test", "/upload", false, "content-length", "100000")
	if err := h.fr.WriteData(1, false, bytes.Repeat([]byte("a"), 1000)); err != nil {
		t.Fatal(err)
	}
	var code http2.ErrCode = 0xff
	if err := h.read(func(f http2.Frame) bool {
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 1 {
			code = r.ErrCode
			return true
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if code != http2.ErrCodeCancel {
		t.Errorf("stream reset with %v, want CANCEL", code)
	}
	abortedByGatehouse(t, up.next(t))
	up.waitOpen(t, 0)
}

// HTTP/2: a client that stops reading the connection (its windows are
// wide open, the socket fills) is closed after send, and the upstream
// connection is released.
func TestH2SendTimeout(t *testing.T) {
	up := startHeldUpstream(t, sendsForever)
	w := startH1WorldWith(t, tinyTimeouts, up.url())
	h := w.dialH2(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	if err := h.fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
		t.Fatal(err)
	}
	h.request(1, "GET", "web.test", "/big", true)
	// the client reads nothing
	abortedByGatehouse(t, up.next(t))
	up.waitOpen(t, 0)
	// and the connection itself was closed: what the socket holds, then the end
	_ = h.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, h.c)
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the connection stayed open: %v", err)
	}
}

// HTTP/2: with every stream stalled on the client's window, the
// connection is idle: the idle timer closes it (GOAWAY, then close)
// though send has not run out, and the upstream connections go.
func TestH2IdleWhileStalled(t *testing.T) {
	up := startHeldUpstream(t, sendsForever)
	w := startH1WorldWith(t, func(c *routes.Config) {
		c.Timeouts.Idle = routes.Duration(400 * time.Millisecond)
		c.Timeouts.Send = routes.Duration(time.Minute)
	}, up.url())
	h := w.dialH2(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	for i := range 5 {
		h.request(uint32(2*i+1), "GET", "web.test", "/big", true)
	}
	var goAway *http2.ErrCode
	err := h.read(func(f http2.Frame) bool {
		if g, ok := f.(*http2.GoAwayFrame); ok {
			code := g.ErrCode
			goAway = &code
		}
		return false
	})
	if goAway == nil || *goAway != http2.ErrCodeNo {
		t.Fatalf("no GOAWAY(NO_ERROR) before the connection ended (%v)", err)
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection was not closed: %v", err)
	}
	for range 5 {
		abortedByGatehouse(t, up.next(t))
	}
	up.waitOpen(t, 0)
}

// RFC 9113 §5.1: DATA (and trailers) the client sent on a stream
// gatehouse answered itself (421 for another route's :authority, then
// RST_STREAM(NO_ERROR)) are ignored, not charged to the reset budget:
// far more of them than the budget leave the connection serving.
func TestH2DataAfterOwnAnswerIgnored(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	h := w.dialH2()
	const rounds = 250 // × 5 frames after the reset: beyond h2server.ResetBudget
	if rounds*5 <= h2server.ResetBudget {
		t.Fatal("the test no longer exceeds the reset budget")
	}
	chunk := bytes.Repeat([]byte("d"), 100)
	for i := range rounds {
		id := uint32(2*i + 1)
		h.request(id, "POST", "other.test", "/form", false, "content-length", "10000")
		_ = h.fr.WriteData(id, false, chunk)
		status, reset := "", false
		if err := h.read(func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID == id {
					status = f.PseudoValue("status")
				}
			case *http2.RSTStreamFrame:
				if f.StreamID == id {
					if f.ErrCode != http2.ErrCodeNo {
						t.Fatalf("stream %d reset with %v", id, f.ErrCode)
					}
					reset = true
				}
			case *http2.GoAwayFrame:
				t.Fatalf("round %d: GOAWAY %v", i, f.ErrCode)
			}
			return reset
		}); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if status != "421" {
			t.Fatalf("round %d: status %q, want 421", i, status)
		}
		// the rest of the body, as a browser still sending it would,
		// and in every other round trailers that end it
		for range 5 {
			if err := h.fr.WriteData(id, false, chunk); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 1 {
			h.buf.Reset()
			_ = h.enc.WriteField(hpack.HeaderField{Name: "x-checksum", Value: "abc"})
			if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.buf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	id := uint32(2*rounds + 1)
	h.request(id, "GET", "web.test", "/after", true)
	status := ""
	if err := h.read(func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				status = f.PseudoValue("status")
				return true
			}
		case *http2.RSTStreamFrame:
			t.Errorf("stream %d reset: %v", f.StreamID, f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if status != "200" {
		t.Errorf("request after the 421s: status %q", status)
	}
}

// tlsUpstream is an https:// upstream (net/http) that counts its open
// connections; its CA goes in a file for upstream_ca.
type tlsUpstream struct {
	srv        *httptest.Server
	open, peak atomic.Int32
	ended      chan string // what each handler saw
	caFile     string
}

func startTLSUpstream(t *testing.T) *tlsUpstream {
	u := &tlsUpstream{ended: make(chan string, 1000)}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			_, err := io.Copy(io.Discard, r.Body)
			u.ended <- fmt.Sprint("body: ", err)
		case "/big":
			w.Header().Set("Content-Length", "100000")
			_, err := w.Write(bytes.Repeat([]byte("x"), 100000))
			if err == nil {
				_, err = http.NewResponseController(w).Flush(), nil
			}
			<-r.Context().Done() // held until gatehouse lets go
			u.ended <- fmt.Sprint("big: ", err)
		case "/huge":
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			var err error
			for i := 0; i < 1<<14 && err == nil; i++ {
				_, err = w.Write(chunk)
			}
			u.ended <- fmt.Sprint("huge: ", err)
		default:
			w.Header().Set("Connection", "close") // no idle connection left to count
			_, _ = io.WriteString(w, "ok")
		}
	}))
	u.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			n := u.open.Add(1)
			for p := u.peak.Load(); n > p && !u.peak.CompareAndSwap(p, n); p = u.peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			u.open.Add(-1)
		}
	}
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	u.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(u.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u *tlsUpstream) waitOpen(t *testing.T, want int32) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if u.open.Load() == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("upstream has %d connections open, want %d", u.open.Load(), want)
}

func (u *tlsUpstream) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-u.ended:
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("no upstream exchange ended within 20s")
		return ""
	}
}

// An https:// upstream (the own engines, the own client over TLS): the
// same bounds. An HTTP/1.1 client that stalls in its body, and an
// HTTP/2 client with no window opening more streams than the cap: the
// upstream sees the requests aborted and its connections released, at
// most the cap at once. (h2c:// upstreams, through RoundTrip:
// TestH1H2CRouteBoundsAndLog.)
func TestHTTPSUpstreamTimeouts(t *testing.T) {
	up := startTLSUpstream(t)
	route := func(c *routes.Config) {
		c.Timeouts.ClientBody = routes.Duration(300 * time.Millisecond)
		c.Timeouts.Send = routes.Duration(3 * time.Second) // see capReached
		// 100 TLS handshakes with the upstream at once, under -race on a
		// loaded machine, can take longer than the 5 s default
		c.Timeouts.UpstreamDial = routes.Duration(30 * time.Second)
		c.Routes[0].UpstreamCA = up.caFile
	}
	w := startH1WorldWith(t, route, "https://"+up.srv.Listener.Addr().String())

	// 408 for the client; and a stalling client is not the upstream's
	// failure: more stalls than passive health counts (passiveFails)
	// leave the upstream in rotation
	t.Run("HTTP/1.1 body stall", func(t *testing.T) {
		for range passiveFails + 1 {
			c, br := w.dial()
			if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("a", 1000)); err != nil {
				t.Fatal(err)
			}
			if got := up.next(t); got == "body: <nil>" {
				t.Errorf("upstream: %s", got)
			}
			res, body := readResp(t, br, false)
			if res.StatusCode != 408 {
				t.Errorf("status %d %q, want 408", res.StatusCode, body)
			}
			up.waitOpen(t, 0)
		}
		c, br := w.dial()
		if res, body := roundTrip(t, c, br, "GET /fine HTTP/1.1\r\nHost: web.test\r\n\r\n", false); res.StatusCode != 200 || body != "ok" {
			t.Errorf("after the stalls: %d %q (upstream out of rotation?)", res.StatusCode, body)
		}
		c.Close()
		up.waitOpen(t, 0)
	})

	t.Run("HTTP/1.1 client not reading", func(t *testing.T) {
		c, _ := w.dial()
		if _, err := io.WriteString(c, "GET /huge HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if got := up.next(t); got == "huge: <nil>" {
			t.Errorf("upstream: %s", got)
		}
		up.waitOpen(t, 0)
	})

	t.Run("HTTP/2 body stall", func(t *testing.T) {
		h := w.dialH2()
		h.request(1, "POST", "web.test", "/upload", false, "content-length", "100000")
		if err := h.fr.WriteData(1, false, bytes.Repeat([]byte("a"), 1000)); err != nil {
			t.Fatal(err)
		}
		go func() { _ = h.read(func(http2.Frame) bool { return false }) }() // SETTINGS acks
		if got := up.next(t); got == "body: <nil>" {
			t.Errorf("upstream: %s", got)
		}
		up.waitOpen(t, 0)
	})

	t.Run("HTTP/2 window stall, capped", func(t *testing.T) {
		before := limitCount(t)
		up.peak.Store(up.open.Load())
		h := w.dialH2(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		const streams = maxUpstreamPerConn + 20
		for i := range streams {
			h.request(uint32(2*i+1), "GET", "web.test", "/big", true)
		}
		go func() { _ = h.read(func(http2.Frame) bool { return false }) }() // SETTINGS acks
		capReached(t, &up.open, &up.peak, before, streams-maxUpstreamPerConn)
		for range streams {
			if got := up.next(t); got != "big: <nil>" {
				t.Errorf("upstream: %s", got)
			}
		}
		up.waitOpen(t, 0)
	})
}

// The bounds are waits on the client, not on the upstream: a request
// whose body came whole, answered after more than client_body and
// send, and a streamed response that pauses longer than send, are
// served on every engine (own HTTP/1.1 and HTTP/2 to http:// and
// https:// upstreams, HTTP/3), over HTTP/1.1, HTTP/2 and HTTP/3.
func TestSlowAnswerAfterBody(t *testing.T) {
	slow := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		time.Sleep(time.Second) // longer than client_body and send
		fmt.Fprintf(w, "got %d", len(b))
		if r.URL.Path == "/pause" {
			_ = http.NewResponseController(w).Flush()
			time.Sleep(time.Second)
			fmt.Fprint(w, " and more")
		}
	}
	plain := httptest.NewServer(http.HandlerFunc(slow))
	t.Cleanup(plain.Close)
	tlsUp := httptest.NewTLSServer(http.HandlerFunc(slow))
	t.Cleanup(tlsUp.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsUp.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, up := range []string{plain.URL, tlsUp.URL} {
		w := startH1WorldWith(t, func(c *routes.Config) {
			tinyTimeouts(c)
			c.Routes[0].UpstreamCA = caFile
		}, up)
		for _, proto := range []string{"http/1.1", "h2", "h3"} {
			t.Run(up[:5]+" "+proto, func(t *testing.T) {
				var tr http.RoundTripper = &http.Transport{
					TLSClientConfig:   &tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{proto}},
					ForceAttemptHTTP2: proto == "h2",
					DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
						return (&net.Dialer{}).DialContext(ctx, network, w.addr)
					},
				}
				if proto == "h3" {
					h3 := &http3.Transport{
						TLSClientConfig: &tls.Config{ServerName: "web.test", RootCAs: w.roots},
						Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
							return quic.DialAddr(ctx, w.addr, tlsCfg, cfg)
						},
					}
					defer h3.Close()
					tr = h3
				}
				cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
				defer cl.CloseIdleConnections()
				for path, want := range map[string]string{"/slow": "got 5000", "/pause": "got 5000 and more"} {
					res, err := cl.Post("https://web.test"+path, "text/plain", strings.NewReader(strings.Repeat("b", 5000)))
					if err != nil {
						t.Fatal(err)
					}
					body, err := io.ReadAll(res.Body)
					res.Body.Close()
					if err != nil || res.StatusCode != 200 || string(body) != want || res.ProtoMajor != map[string]int{"http/1.1": 1, "h2": 2, "h3": 3}[proto] {
						t.Errorf("%s: %s %d %q %v", path, res.Proto, res.StatusCode, body, err)
					}
				}
			})
		}
	}
}

// HTTP/3 (quic-go's server, through serveHTTP): a request body that
// stalls, and a response the client stops reading, end the upstream
// exchange after client_body and send.
func TestH3Timeouts(t *testing.T) {
	client := func(w *h1World) *http.Client {
		tr := &http3.Transport{
			TLSClientConfig: &tls.Config{ServerName: "web.test", RootCAs: w.roots},
			Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
				return quic.DialAddr(ctx, w.addr, tlsCfg, cfg)
			},
		}
		t.Cleanup(func() { tr.Close() })
		return &http.Client{Transport: tr, Timeout: 20 * time.Second}
	}
	t.Run("body stall", func(t *testing.T) {
		up := startHeldUpstream(t, readsBody)
		w := startH1WorldWith(t, tinyTimeouts, up.url())
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		go func() { _, _ = pw.Write(bytes.Repeat([]byte("a"), 1000)) }() // then nothing
		req, _ := http.NewRequest("POST", "https://web.test/upload", pr)
		req.ContentLength = 100000
		done := make(chan struct{})
		go func() {
			defer close(done)
			if res, err := client(w).Do(req); err == nil {
				res.Body.Close()
			}
		}()
		abortedByGatehouse(t, up.next(t))
		up.waitOpen(t, 0)
		pw.Close()
		<-done
	})
	t.Run("client not reading", func(t *testing.T) {
		up := startHeldUpstream(t, sendsForever)
		w := startH1WorldWith(t, tinyTimeouts, up.url())
		res, err := client(w).Get("https://web.test/big")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if res.ProtoMajor != 3 || res.StatusCode != 200 {
			t.Fatalf("%s %d", res.Proto, res.StatusCode)
		}
		// the body is not read
		abortedByGatehouse(t, up.next(t))
		up.waitOpen(t, 0)
	})
}
