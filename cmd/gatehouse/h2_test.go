package main

// gatehouse's own HTTP/2 server (proxy/internal/h2server, its Handler in proxy/engine_h2.go), which serves http routes
// whose upstreams are plain http://, driven by real clients: Go's
// HTTP/2 client, curl, h2load, and a raw framer for protocol errors.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// h2World is gatehouse serving h2.test (and other.test, another route
// under the same certificate) from a test CA, in front of h2Upstream.
type h2World struct {
	e        *env
	in       *instance
	up       *h2Upstream
	addr     string
	canceled chan string // paths whose upstream request was canceled
}

// h2Upstream is a plaintext HTTP/1.1 backend with the behaviours the
// tests need; release unblocks /hold.
type h2Upstream struct {
	url      string
	release  chan struct{}
	holding  chan struct{} // one value per /hold request that arrived
	canceled chan string
}

func startH2Upstream(t *testing.T) *h2Upstream {
	u := &h2Upstream{release: make(chan struct{}), holding: make(chan struct{}, 16), canceled: make(chan string, 16)}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// full duplex: the body streams back while it is read, so both
		// directions' flow control is in play at once
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3145728")
		b := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
		for range 48 {
			if _, err := w.Write(b); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		// an endless body, until gatehouse cancels the request
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 2000; i++ {
			if _, err := w.Write(bytes.Repeat([]byte("s"), 1024)); err != nil {
				break
			}
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				u.canceled <- r.URL.Path
				return
			case <-tick.C:
			}
		}
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		select {
		case u.holding <- struct{}{}:
		default: // nobody counts these (the reset flood)
		}
		select {
		case <-r.Context().Done():
			return
		case <-u.release:
			fmt.Fprint(w, "held and released")
		case <-time.After(20 * time.Second):
			http.Error(w, "never released", http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "h2up")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not be forwarded")
		w.Header().Set("Trailer", "X-Checksum")
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "path=%s host=%s xff=%s xfh=%s xfp=%s fwd=%s cookie=%s ua=%q te=%s body=%d",
			r.URL.RequestURI(), r.Host, r.Header.Values("X-Forwarded-For"), r.Header.Get("X-Forwarded-Host"),
			r.Header.Get("X-Forwarded-Proto"), r.Header.Get("Forwarded"), r.Header.Get("Cookie"),
			r.Header.Get("User-Agent"), r.Header.Get("Te"), len(body))
		w.Header().Set("X-Checksum", fmt.Sprintf("%x", sha256.Sum256(body)))
	})
	srv := &http.Server{Handler: mux}
	ln := listen(t)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	u.url = "http://" + ln.Addr().String()
	return u
}

func startH2World(t *testing.T, topExtra ...string) *h2World {
	e := newCAEnv(t)
	e.topExtra = strings.Join(topExtra, "\n")
	up := startH2Upstream(t)
	cert := e.certFor("h2.test", "other.test", "127.0.0.1")
	cfg := e.config(fmt.Sprintf(`
[[route]]
hosts    = ["h2.test", "127.0.0.1"]
upstream = %q
hsts     = "max-age=60"
%s
[[route]]
hosts    = ["other.test"]
upstream = %q
%s`, up.url, cert, up.url, cert))
	in := e.start(cfg)
	return &h2World{e: e, in: in, up: up, addr: e.httpsAddr()}
}

// h2Client is Go's HTTP/2 client on one connection to gatehouse, with
// small receive windows so gatehouse's sending respects flow control.
func (w *h2World) h2Client() *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: w.e.roots},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", w.addr)
		},
		MaxConnsPerHost:       1,
		ExpectContinueTimeout: 10 * time.Second,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     64 << 10,
			MaxReceiveBufferPerConnection: 128 << 10,
		},
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func TestHTTP2OwnServer(t *testing.T) {
	w := startH2World(t)
	cl := w.h2Client()
	defer cl.CloseIdleConnections()

	t.Run("request as the upstream sees it and the response as the client sees it", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://h2.test/a/b?q=1", nil)
		req.Header.Add("Cookie", "a=1")
		req.Header.Add("Cookie", "b=2")
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		req.Header.Set("Forwarded", "for=6.6.6.6")
		req.Header.Set("User-Agent", "h2-test")
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		if res.ProtoMajor != 2 || res.StatusCode != 200 {
			t.Fatalf("got %s %d", res.Proto, res.StatusCode)
		}
		for _, want := range []string{"path=/a/b?q=1", "host=h2.test", "xff=[127.0.0.1]", "xfh=h2.test", "xfp=https",
			"fwd=for=127.0.0.1;host=h2.test;proto=https", "cookie=a=1; b=2", `ua="h2-test"`} {
			if !strings.Contains(body, want) {
				t.Errorf("upstream saw %q, want %q in it", body, want)
			}
		}
		if got := res.Header.Get("Strict-Transport-Security"); got != "max-age=60" {
			t.Errorf("HSTS %q", got)
		}
		if res.Header.Get("X-Upstream") != "h2up" || res.Header.Get("X-Hop") != "" || res.Header.Get("Date") == "" {
			t.Errorf("response header %v: want X-Upstream, a Date, no X-Hop (named by Connection)", res.Header)
		}
		if want := fmt.Sprintf("%x", sha256.Sum256(nil)); res.Trailer.Get("X-Checksum") != want {
			t.Errorf("trailer X-Checksum %q, want %q", res.Trailer.Get("X-Checksum"), want)
		}
	})

	t.Run("coalesced request for another route gets 421", func(t *testing.T) {
		// a browser reuses the h2.test connection for other.test (same certificate)
		r := dialRawH2(t, w)
		r.headers(1, r.block(false, "", ":method", "GET", ":scheme", "https", ":authority", "other.test", ":path", "/"), true)
		if st := r.status(1); st != "421" {
			t.Errorf("got %s, want 421", st)
		}
	})

	t.Run("many concurrent streams on one connection", func(t *testing.T) {
		var reused, total atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
					total.Add(1)
					if ci.Reused {
						reused.Add(1)
					}
				}}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
					"POST", fmt.Sprintf("https://h2.test/n/%d", i), strings.NewReader(strings.Repeat("x", i)))
				res, err := cl.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if want := fmt.Sprintf("path=/n/%d ", i); err != nil || res.StatusCode != 200 ||
					!strings.Contains(string(b), want) || !strings.Contains(string(b), fmt.Sprintf("body=%d", i)) {
					errs <- fmt.Errorf("stream %d: %d %q %v", i, res.StatusCode, b, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if total.Load() != 200 || reused.Load() < 199 {
			t.Errorf("%d of %d requests on a reused connection; want all on one", reused.Load(), total.Load())
		}
	})

	t.Run("3 MiB both ways with small client windows", func(t *testing.T) {
		up := make([]byte, 3<<20)
		_, _ = rand.Read(up)
		res, err := cl.Post("https://h2.test/echo", "application/octet-stream", bytes.NewReader(up))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || !bytes.Equal(got, up) {
			t.Fatalf("echo of 3 MiB: got %d bytes (equal %v), err %v", len(got), bytes.Equal(got, up), err)
		}
		res, err = cl.Get("https://h2.test/big")
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil || n != 3<<20 {
			t.Fatalf("download: %d bytes, %v", n, err)
		}
	})

	t.Run("client RST_STREAM mid-response cancels the upstream request; the connection lives on", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://h2.test/stream", nil)
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(res.Body, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		cancel() // Go's client resets the stream (RST_STREAM CANCEL)
		res.Body.Close()
		select {
		case p := <-w.up.canceled:
			if p != "/stream" {
				t.Errorf("canceled %s", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream request was not canceled within 5s of the client's reset")
		}
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}
		req, _ = http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "https://h2.test/after", nil)
		res, err = cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); res.StatusCode != 200 || !reused || !strings.Contains(body, "path=/after") {
			t.Errorf("after the reset: %d %q reused=%v", res.StatusCode, body, reused)
		}
	})

	t.Run("Expect: 100-continue answered once the upstream wants the body", func(t *testing.T) {
		var got100 atomic.Bool
		trace := &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			"POST", "https://h2.test/expect", strings.NewReader("0123456789"))
		req.Header.Set("Expect", "100-continue")
		res, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); !got100.Load() || !strings.Contains(body, "body=10") {
			t.Errorf("100 Continue seen: %v; upstream: %q", got100.Load(), body)
		}
	})

	t.Run("curl --http2", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		writeCAFile(t, w.e, caFile)
		_, port, _ := net.SplitHostPort(w.addr)
		out, err := exec.Command("curl", "-sS", "--http2", "--max-time", "10", "--cacert", caFile,
			"--resolve", "h2.test:"+port+":127.0.0.1", "-H", "Cookie: c=3",
			"-w", "\nversion=%{http_version} status=%{http_code}", "https://h2.test:"+port+"/curl?x=y").CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		for _, want := range []string{"path=/curl?x=y", "host=h2.test:" + port, "cookie=c=3", "version=2 status=200"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("curl output %q lacks %q", out, want)
			}
		}
	})

	t.Run("h2load", func(t *testing.T) {
		if _, err := exec.LookPath("h2load"); err != nil {
			t.Skip("h2load not installed (Debian nghttp2-client)")
		}
		_, port, _ := net.SplitHostPort(w.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "h2load", "-n", "4000", "-c", "4", "-m", "16",
			"--connect-to=127.0.0.1:"+port, "https://h2.test:"+port+"/load").CombinedOutput()
		if err != nil {
			t.Fatalf("h2load: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "4000 succeeded, 0 failed, 0 errored") ||
			!strings.Contains(string(out), "status codes: 4000 2xx") || !strings.Contains(string(out), "h2") {
			t.Errorf("h2load:\n%s", out)
		}
	})
}

// writeCAFile writes the env's test CA certificate for curl.
func writeCAFile(t *testing.T, e *env, path string) {
	t.Helper()
	if err := os.WriteFile(path, e.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawH2 is a client connection driven frame by frame.
type rawH2 struct {
	t   *testing.T
	c   *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
	dec *hpack.Decoder
	// settled: the server's SETTINGS were acknowledged; next writes
	// nothing more (a flood goroutine owns writing)
	settled bool
}

// settle reads the server's SETTINGS and acknowledges them, so a flood
// goroutine can then be the only writer.
func (r *rawH2) settle() {
	r.t.Helper()
	if err := r.next(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() }); err != nil {
		r.t.Fatal(err)
	}
	r.settled = true
}

func dialRawH2(t *testing.T, w *h2World) *rawH2 {
	t.Helper()
	c, err := testkit.DialTLS(w.addr, "h2.test", w.e.roots, "h2")
	if err != nil {
		t.Fatal(err)
	}
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("h2 not negotiated")
	}
	t.Cleanup(func() { c.Close() })
	r := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c), dec: hpack.NewDecoder(4096, nil)}
	r.fr.ReadMetaHeaders = r.dec
	r.enc = hpack.NewEncoder(&r.buf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// block encodes a request header block; extra fields follow the four
// pseudo-fields (pass pseudo=false to leave them out).
func (r *rawH2) block(pseudo bool, path string, extra ...string) []byte {
	r.buf.Reset()
	if pseudo {
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "h2.test"}, {":path", path}} {
			_ = r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		_ = r.enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return bytes.Clone(r.buf.Bytes())
}

func (r *rawH2) headers(id uint32, block []byte, end bool) {
	r.t.Helper()
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: end, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// next reads frames until want says stop, for at most 10 s; it returns
// the error that ended reading (io.EOF: the server closed).
func (r *rawH2) next(want func(http2.Frame) bool) error {
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range 100000 {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return err
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() && !r.settled {
			_ = r.fr.WriteSettingsAck()
		}
		if want(f) {
			return nil
		}
	}
	return errors.New("too many frames")
}

// status reads until stream id's response HEADERS and returns :status.
func (r *rawH2) status(id uint32) string {
	r.t.Helper()
	var st string
	err := r.next(func(f http2.Frame) bool {
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			st = h.PseudoValue("status")
			return true
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			st = "RST " + rst.ErrCode.String()
			return true
		}
		return false
	})
	if err != nil {
		r.t.Fatalf("stream %d: %v", id, err)
	}
	return st
}

// goAway reads until GOAWAY and the close that follows it.
func (r *rawH2) goAway() (http2.ErrCode, uint32) {
	r.t.Helper()
	var g *http2.GoAwayFrame
	err := r.next(func(f http2.Frame) bool {
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			g = &http2.GoAwayFrame{LastStreamID: ga.LastStreamID, ErrCode: ga.ErrCode}
			return true
		}
		return false
	})
	if err != nil {
		r.t.Fatalf("no GOAWAY: %v", err)
	}
	if err := r.next(func(http2.Frame) bool { return false }); !isClosed(err) {
		r.t.Errorf("after GOAWAY the connection is still open: %v", err)
	}
	return g.ErrCode, g.LastStreamID
}

func isClosed(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && !ne.Timeout() ||
		err != nil && strings.Contains(err.Error(), "reset by peer")
}

func TestHTTP2ProtocolErrors(t *testing.T) {
	w := startH2World(t)

	t.Run("settings advertised", func(t *testing.T) {
		r := dialRawH2(t, w)
		got := map[http2.SettingID]uint32{}
		err := r.next(func(f http2.Frame) bool {
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				_ = s.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
				return true
			}
			return false
		})
		if err != nil {
			t.Fatal(err)
		}
		if got[http2.SettingMaxConcurrentStreams] != 250 || got[http2.SettingMaxHeaderListSize] != 64<<10 ||
			got[http2.SettingInitialWindowSize] != 1<<20 || got[http2.SettingMaxFrameSize] != 1<<20 {
			t.Errorf("SETTINGS %v", got)
		}
	})

	// malformed requests are reset with PROTOCOL_ERROR; the connection
	// serves the next request (RFC 9113 §8.1.1)
	for _, tc := range []struct {
		name  string
		block func(r *rawH2) []byte
	}{
		{"missing :path", func(r *rawH2) []byte {
			return r.block(false, "", ":method", "GET", ":scheme", "https", ":authority", "h2.test")
		}},
		{"unknown pseudo-header", func(r *rawH2) []byte { return r.block(true, "/", ":protocol", "websocket") }},
		{"pseudo-header after a regular one", func(r *rawH2) []byte {
			return r.block(false, "", ":method", "GET", "accept", "*/*", ":scheme", "https", ":path", "/")
		}},
		{"upper-case header name", func(r *rawH2) []byte { return r.block(true, "/", "X-Upper", "1") }},
		{"connection-specific header", func(r *rawH2) []byte { return r.block(true, "/", "connection", "keep-alive") }},
		{"te other than trailers", func(r *rawH2) []byte { return r.block(true, "/", "te", "gzip") }},
		{"relative :path", func(r *rawH2) []byte { return r.block(true, "relative") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRawH2(t, w)
			r.headers(1, tc.block(r), true)
			if st := r.status(1); st != "RST PROTOCOL_ERROR" {
				t.Errorf("malformed request: got %s, want RST_STREAM PROTOCOL_ERROR", st)
			}
			r.headers(3, r.block(true, "/fine"), true)
			if st := r.status(3); st != "200" {
				t.Errorf("next request on the connection: %s", st)
			}
		})
	}

	t.Run("content-length that the body does not match", func(t *testing.T) {
		r := dialRawH2(t, w)
		r.buf.Reset()
		r.headers(1, r.block(true, "/", "content-length", "10"), false)
		_ = r.fr.WriteData(1, true, []byte("short"))
		if st := r.status(1); st != "RST PROTOCOL_ERROR" {
			t.Errorf("got %s", st)
		}
	})

	t.Run("stream id reuse closes the connection", func(t *testing.T) {
		r := dialRawH2(t, w)
		r.headers(1, r.block(true, "/one"), true)
		if st := r.status(1); st != "200" {
			t.Fatal(st)
		}
		_ = r.next(func(f http2.Frame) bool {
			return f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream)
		})
		r.headers(1, r.block(true, "/again"), true)
		if code, _ := r.goAway(); code != http2.ErrCodeStreamClosed {
			t.Errorf("GOAWAY %v, want STREAM_CLOSED (RFC 9113 §5.1: HEADERS on a closed stream)", code)
		}
	})

	t.Run("header list over 64 KiB from a small frame gets 431", func(t *testing.T) {
		r := dialRawH2(t, w)
		// one 4 KB field indexed once, then referenced: 80 KB decoded from ~4 KB
		big := strings.Repeat("v", 4000)
		extra := []string{}
		for range 20 {
			extra = append(extra, "x-big", big)
		}
		r.headers(1, r.block(true, "/", extra...), true)
		if st := r.status(1); st != "431" {
			t.Errorf("got %s, want 431", st)
		}
		r.headers(3, r.block(true, "/fine"), true)
		if st := r.status(3); st != "200" {
			t.Errorf("next request: %s", st)
		}
	})

	t.Run("CONTINUATION flood is cut off", func(t *testing.T) {
		r := dialRawH2(t, w)
		blk := r.block(true, "/")
		frag := bytes.Repeat([]byte{0x90}, 1000) // static "accept-encoding: gzip, deflate", 60 bytes decoded each
		if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: false}); err != nil {
			t.Fatal(err)
		}
		r.settle()
		go func() {
			for range 10000 {
				if r.fr.WriteContinuation(1, false, frag) != nil {
					return
				}
			}
		}()
		if code, _ := r.goAway(); code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", code)
		}
	})

	t.Run("rapid reset flood gets ENHANCE_YOUR_CALM", func(t *testing.T) {
		r := dialRawH2(t, w)
		r.settle()
		blk := r.block(true, "/hold")
		go func() {
			for id := uint32(1); id < 2*5000; id += 2 {
				if r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: true, EndHeaders: true}) != nil ||
					r.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					return
				}
			}
		}()
		if code, last := r.goAway(); code != http2.ErrCodeEnhanceYourCalm || last > 2*5000 {
			t.Errorf("GOAWAY %v last stream %d, want ENHANCE_YOUR_CALM", code, last)
		}
		// /hold requests were canceled; drain what arrived
		for len(w.up.holding) > 0 {
			<-w.up.holding
		}
	})

	t.Run("PING answered, PRIORITY ignored, DATA on an idle stream closes", func(t *testing.T) {
		r := dialRawH2(t, w)
		_ = r.fr.WritePing(false, [8]byte{1, 2, 3})
		if err := r.next(func(f http2.Frame) bool {
			p, ok := f.(*http2.PingFrame)
			return ok && p.IsAck() && p.Data == [8]byte{1, 2, 3}
		}); err != nil {
			t.Fatal(err)
		}
		_ = r.fr.WritePriority(5, http2.PriorityParam{StreamDep: 3, Weight: 10})
		r.headers(1, r.block(true, "/"), true)
		if st := r.status(1); st != "200" {
			t.Fatal(st)
		}
		_ = r.fr.WriteData(99, true, []byte("x"))
		if code, _ := r.goAway(); code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v", code)
		}
	})
}

// A drain sends GOAWAY at once, lets the stream in flight finish, then
// closes the connection.
func TestHTTP2GoAwayOnDrain(t *testing.T) {
	w := startH2World(t)
	r := dialRawH2(t, w)
	r.headers(1, r.block(true, "/hold"), true)
	select {
	case <-w.up.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the upstream")
	}
	done := make(chan error, 1)
	go func() { done <- w.in.shutdown(10 * time.Second) }()
	var ga *http2.GoAwayFrame
	if err := r.next(func(f http2.Frame) bool {
		g, ok := f.(*http2.GoAwayFrame)
		if ok {
			ga = &http2.GoAwayFrame{LastStreamID: g.LastStreamID, ErrCode: g.ErrCode}
		}
		return ok
	}); err != nil {
		t.Fatalf("no GOAWAY on drain: %v", err)
	}
	if ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Errorf("GOAWAY %v last %d, want NO_ERROR, 1", ga.ErrCode, ga.LastStreamID)
	}
	// a stream opened after the GOAWAY is refused
	r.headers(3, r.block(true, "/late"), true)
	if st := r.status(3); st != "RST REFUSED_STREAM" {
		t.Errorf("stream after GOAWAY: %s", st)
	}
	close(w.up.release)
	var body []byte
	var status string
	if err := r.next(func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
		case *http2.DataFrame:
			body = append(body, f.Data()...)
			return f.StreamEnded()
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if status != "200" || string(body) != "held and released" {
		t.Errorf("in-flight stream: %s %q", status, body)
	}
	if err := r.next(func(http2.Frame) bool { return false }); !isClosed(err) {
		t.Errorf("connection not closed after its last stream: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("shutdown did not return")
	}
}

// An idle connection (no open stream for [timeouts] idle) gets a
// GOAWAY and is closed.
func TestHTTP2IdleTimeout(t *testing.T) {
	w := startH2World(t, "[timeouts]\nidle = \"1s\"")
	r := dialRawH2(t, w)
	r.headers(1, r.block(true, "/"), true)
	if st := r.status(1); st != "200" {
		t.Fatal(st)
	}
	began := time.Now()
	code, last := r.goAway()
	if code != http2.ErrCodeNo || last != 1 {
		t.Errorf("GOAWAY %v last %d, want NO_ERROR 1", code, last)
	}
	if took := time.Since(began); took < 500*time.Millisecond || took > 5*time.Second {
		t.Errorf("idle connection closed after %v, want about 1s", took)
	}
}

// h2spec (github.com/summerwind/h2spec), the HTTP/2 conformance suite,
// when installed: every test must pass.
func TestHTTP2Conformance(t *testing.T) {
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		t.Skip("h2spec not installed (go install github.com/summerwind/h2spec/cmd/h2spec@latest)")
	}
	w := startH2World(t)
	_, port, _ := net.SplitHostPort(w.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// no SNI from an IP address: the route that lists 127.0.0.1 serves it
	out, err := exec.CommandContext(ctx, bin, "-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "3").CombinedOutput()
	// gatehouse advertises SETTINGS_MAX_FRAME_SIZE 1 MiB, as net/http's
	// server did (clients sending a large header block in one frame keep
	// working); h2spec's 4.2/3 sends a HEADERS frame of 16 KiB + 1 all
	// the same, assuming the default size.
	known := map[string]bool{"Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE": true}
	failures := 0
	for _, l := range strings.Split(string(out), "\n") {
		if _, name, ok := strings.Cut(l, "× "); ok {
			failures++
			if _, name, _ = strings.Cut(name, ": "); !known[strings.TrimSpace(name)] {
				t.Errorf("h2spec failure: %s", strings.TrimSpace(l))
			}
		}
	}
	if !strings.Contains(string(out), "145 tests") {
		t.Errorf("h2spec did not run: %v\n%s", err, lastLines(string(out), 20))
	}
	t.Logf("h2spec: %s (%d failure lines, the known one listed twice)", lastLines(string(out), 1), failures)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// The same drain seen by Go's HTTP/2 client: the request in flight
// when the drain starts gets its whole answer, and the drain ends
// without cutting anything.
func TestHTTP2DrainGoClient(t *testing.T) {
	w := startH2World(t)
	cl := w.h2Client()
	defer cl.CloseIdleConnections()
	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		res, err := cl.Get("https://h2.test/hold")
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		got <- result{string(b), err}
	}()
	select {
	case <-w.up.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the upstream")
	}
	done := make(chan error, 1)
	go func() { done <- w.in.shutdown(10 * time.Second) }()
	time.Sleep(200 * time.Millisecond) // the GOAWAY is out; the stream is still open
	close(w.up.release)
	select {
	case r := <-got:
		if r.err != nil || r.body != "held and released" {
			t.Errorf("in-flight request across the drain: %q, %v", r.body, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request did not finish")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not end after the last stream")
	}
}
