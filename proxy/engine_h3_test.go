package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The bounds HTTP/3 puts on a peer, each hit from the outside: quic-go's
// own client and raw UDP sockets against a real gatehouse Server on
// loopback, real TCP upstreams that count what reaches them.

type h3Opts struct {
	idle, handshake, clientBody, send time.Duration
	access                            io.Writer
}

// startH3World is startH1World with the HTTP/3 listener's timeouts set
// and, optionally, an access log.
func startH3World(t *testing.T, o h3Opts, upstream string) *h1World {
	t.Helper()
	ca, err := acmetest.NewTestCA("h3 test root")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{"web.test"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	cfg := &routes.Config{Routes: []routes.Route{{Hosts: []string{"web.test"}, Upstream: upstream}}}
	if o.idle > 0 {
		cfg.Timeouts.Idle = routes.Duration(o.idle)
	}
	if o.handshake > 0 {
		cfg.Timeouts.Handshake = routes.Duration(o.handshake)
	}
	if o.clientBody > 0 {
		cfg.Timeouts.ClientBody = routes.Duration(o.clientBody)
	}
	if o.send > 0 {
		cfg.Timeouts.Send = routes.Duration(o.send)
	}
	cfg.ApplyDefaults()
	opts := Options{Certs: fixedCerts{&kp}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if o.access != nil {
		opts.AccessLog = slog.New(slog.NewTextHandler(o.access, nil))
	}
	s := New(opts)
	w := serveH1World(t, s, cfg, roots)
	// the UDP listener comes up inside Serve
	h3WaitUntil(t, 5*time.Second, "HTTP/3 listener up", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.h3 != nil
	})
	return w
}

// h3WaitUntil polls cond every 20ms, failing the test after limit.
func h3WaitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// h3Conn dials one QUIC connection to web.test and wraps it as an
// HTTP/3 client connection (every request on it shares the connection).
func h3Conn(t *testing.T, w *h1World, qc *quic.Config) (*quic.Conn, *http3.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, w.addr, &tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{http3.NextProtoH3}}, qc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn, (&http3.Transport{}).NewClientConn(conn)
}

func h3Get(cc *http3.ClientConn, path string, hdr http.Header) (*http.Response, error) {
	req, _ := http.NewRequest("GET", "https://web.test"+path, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	req = req.WithContext(ctx)
	res, err := cc.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	cancel()
	res.Body = io.NopCloser(bytes.NewReader(b))
	return res, err
}

// quicConns counts quic-go connection run loops in this process (client
// and server side): a connection's state lives as long as that loop.
func quicConns() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "quic-go.(*Conn).run(")
}

// countingUpstream is a TCP upstream that counts the connections open at
// it; each connection is handed to serve, and counted until it returns.
type countingUpstream struct {
	ln         net.Listener
	open, peak atomic.Int64
	inFlight   atomic.Int64
}

func startCountingUpstream(t *testing.T, serve func(c net.Conn, br *bufio.Reader, u *countingUpstream)) *countingUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &countingUpstream{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.open.Add(1)
			wg.Go(func() {
				defer u.open.Add(-1)
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(60 * time.Second)) // the test's own bound
				serve(c, bufio.NewReader(c), u)
			})
		}
	})
	return u
}

func (u *countingUpstream) url() string { return "http://" + u.ln.Addr().String() }

// answerOK answers every request on the connection with a short 200.
func answerOK(c net.Conn, br *bufio.Reader, _ *countingUpstream) {
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// Request headers over 64 KiB are refused on their stream (quic-go
// answers 431 or resets the stream with H3_EXCESSIVE_LOAD); nothing
// reaches the upstream, and the QUIC connection and its next requests
// are unharmed. Headers just under the bound pass.
func TestH3HeaderLimit(t *testing.T) {
	var seen atomic.Int64
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			seen.Add(1)
			_, _ = io.Copy(io.Discard, req.Body)
			_, _ = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d", len(fmt.Sprint(len(req.Header.Get("X-Big")))), len(req.Header.Get("X-Big")))
		}
	})
	w := startH3World(t, h3Opts{}, up.url())
	conn, cc := h3Conn(t, w, nil)

	res, err := h3Get(cc, "/big", http.Header{"X-Big": {strings.Repeat("a", h3MaxHeaderBytes+1024)}})
	switch {
	case err == nil && res.StatusCode == http.StatusRequestHeaderFieldsTooLarge:
		t.Logf("over the bound: 431")
	case err != nil:
		var se *quic.StreamError
		if !errors.As(err, &se) || se.ErrorCode != quic.StreamErrorCode(http3.ErrCodeExcessiveLoad) {
			t.Fatalf("over the bound: %v, want 431 or a H3_EXCESSIVE_LOAD stream reset", err)
		}
		t.Logf("over the bound: stream reset %v", err)
	default:
		t.Fatalf("over the bound: status %d, want 431", res.StatusCode)
	}
	if n := seen.Load(); n != 0 {
		t.Fatalf("%d oversized requests reached the upstream", n)
	}
	if conn.Context().Err() != nil {
		t.Fatalf("QUIC connection closed after the refused request: %v", context.Cause(conn.Context()))
	}
	// same connection: a normal request, and one just under the bound
	for _, n := range []int{0, h3MaxHeaderBytes - 4096} {
		res, err := h3Get(cc, "/ok", http.Header{"X-Big": {strings.Repeat("b", n)}})
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("%d-byte header on the same connection after the refusal: %v %v", n, res, err)
		}
		if b, _ := io.ReadAll(res.Body); string(b) != fmt.Sprint(n) {
			t.Fatalf("%d-byte header reached the upstream as %q bytes", n, b)
		}
	}
}

// More than h3MaxStreams concurrent requests on one QUIC connection: the
// client is held by MAX_STREAMS, so the upstream never has more than
// h3MaxStreams of them in flight; all complete once released.
func TestH3MaxStreams(t *testing.T) {
	release := make(chan struct{})
	var peak atomic.Int64
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			n := u.inFlight.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			u.inFlight.Add(-1)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	w := startH3World(t, h3Opts{}, up.url())
	conn, cc := h3Conn(t, w, nil)
	const total = h3MaxStreams + 50
	errs := make(chan error, total)
	for range total {
		go func() {
			res, err := h3Get(cc, "/", nil)
			if err == nil && res.StatusCode != 200 {
				err = fmt.Errorf("status %d", res.StatusCode)
			}
			errs <- err
		}()
	}
	h3WaitUntil(t, 20*time.Second, fmt.Sprintf("%d requests in flight at the upstream", h3MaxStreams), func() bool {
		return up.inFlight.Load() >= h3MaxStreams
	})
	// the other 50 are waiting for stream credit: give them time to
	// (wrongly) arrive
	time.Sleep(500 * time.Millisecond)
	if p := peak.Load(); p != h3MaxStreams {
		t.Fatalf("peak %d requests in flight at the upstream from one QUIC connection, want %d", p, h3MaxStreams)
	}
	close(release)
	for range total {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("request after the streams were released: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("requests did not complete after release")
		}
	}
	if p := peak.Load(); p != h3MaxStreams {
		t.Fatalf("peak in flight %d, want %d", p, h3MaxStreams)
	}
	if conn.Context().Err() != nil {
		t.Fatal("connection closed")
	}
}

// captureInitials has quic-go's client open n connections to a UDP
// socket of the test's own and returns the first datagram of each: a
// real client Initial carrying a whole ClientHello for sni (X25519 only,
// so it fits one packet), never answered.
func captureInitials(t *testing.T, sni string, n int) [][]byte {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out [][]byte
	for range n {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = quic.DialAddr(ctx, pc.LocalAddr().String(), &tls.Config{ServerName: sni, NextProtos: []string{http3.NextProtoH3},
				CurvePreferences: []tls.CurveID{tls.X25519}}, nil)
		}()
		buf := make([]byte, 2048)
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			m, _, err := pc.ReadFrom(buf)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			// the first datagram of a new dial: a long-header Initial (0b11 00 xxxx)
			if m >= 1200 && buf[0]&0xf0 == 0xc0 {
				out = append(out, append([]byte(nil), buf[:m]...))
				break
			}
		}
		cancel()
		<-done
		// drain the retransmissions of the dial just cancelled
		_ = pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				break
			}
		}
	}
	return out
}

// A client that sends its Initial and then nothing: the server's
// connection state (its run loop) is released after [timeouts]
// handshake, and never more than the client's Initials created.
func TestH3HandshakeTimeout(t *testing.T) {
	w := startH3World(t, h3Opts{handshake: time.Second}, startCountingUpstream(t, answerOK).url())
	initials := captureInitials(t, "web.test", 20)
	h3WaitUntil(t, 10*time.Second, "capture dials gone", func() bool { return quicConns() == 0 })
	var socks []net.PacketConn
	for _, ini := range initials {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks = append(socks, c)
		ua, _ := net.ResolveUDPAddr("udp", w.addr)
		if _, err := c.WriteTo(ini, ua); err != nil {
			t.Fatal(err)
		}
	}
	// the server answered (so it did build state for them) ...
	buf := make([]byte, 2048)
	_ = socks[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := socks[0].ReadFrom(buf); err != nil {
		t.Fatalf("no answer to a valid Initial: %v", err)
	}
	h3WaitUntil(t, 5*time.Second, "server connections for the Initials", func() bool { return quicConns() >= len(initials) })
	if n := quicConns(); n > len(initials) {
		t.Fatalf("%d connection loops for %d Initials", n, len(initials))
	}
	began := time.Now()
	// ... and drops it after the handshake timeout: 1s here, and within
	// 4s, before quic-go's own default (5s) would have
	h3WaitUntil(t, 4*time.Second, "half-open QUIC connections released", func() bool { return quicConns() == 0 })
	t.Logf("%d half-open connections released %v after the Initials (handshake timeout 1s)", len(initials), time.Since(began).Round(100*time.Millisecond))
}

// An HTTP/3 connection with no request for [timeouts] idle is closed by
// the server (H3_NO_ERROR), even while the client keeps the QUIC
// connection alive with PINGs.
func TestH3IdleTimeout(t *testing.T) {
	w := startH3World(t, h3Opts{idle: time.Second}, startCountingUpstream(t, answerOK).url())
	conn, cc := h3Conn(t, w, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Minute})
	if res, err := h3Get(cc, "/", nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("request: %v %v", res, err)
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(15 * time.Second):
		t.Fatal("idle HTTP/3 connection still open 15s after its last request (idle = 1s)")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Fatalf("idle connection closed by %v, want the server's H3_NO_ERROR", err)
	}
}

// A stream that sends only part of its HEADERS frame never reaches the
// pipeline (quic-go reads HEADERS before it calls the handler, with no
// deadline): with PINGs keeping the QUIC connection alive it held the
// stream, and the connection, forever. Now only requests in the pipeline
// count as activity: a request that runs longer than idle is not cut,
// and once it ends the connection, half-sent stream and all, is closed
// after idle with H3_NO_ERROR.
func TestH3PartialHeadersClosedWhenIdle(t *testing.T) {
	const idle = time.Second
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, _ *countingUpstream) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			time.Sleep(3 * idle / 2) // longer than idle: the request must not be cut
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	w := startH3World(t, h3Opts{idle: idle}, up.url())
	conn, cc := h3Conn(t, w, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Minute})

	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	// HEADERS (type 0x01), declared length 200, then 5 bytes of it
	if _, err := str.Write([]byte{0x01, 0x40, 200, 0, 0, 0xd1, 0xd7, 0x50}); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if res, err := h3Get(cc, "/slow", nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("a request longer than idle beside the half-sent stream: %v %v", res, err)
	}
	if took := time.Since(began); took < idle {
		t.Fatalf("the slow request took %v: the upstream did not hold it past idle, the test proves nothing", took)
	}
	ended := time.Now()
	select {
	case <-conn.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a connection with only a half-sent HEADERS frame still open 10s after its last request (idle = 1s)")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Fatalf("connection closed by %v, want the server's H3_NO_ERROR", err)
	}
	if took := time.Since(ended); took < idle/2 {
		t.Fatalf("closed %v after the last request ended, before idle", took)
	}
	h3WaitUntil(t, 5*time.Second, "server-side QUIC connection released", func() bool { return quicConns() == 0 })
}

// One Initial from an address that never answers: what gatehouse sends
// back to it stays within QUIC's anti-amplification limit (RFC 9000
// §8.1), retransmissions included. quic-go checks the limit before each
// packet and always sends full-size ones (quic-go PR #2862, "allow an
// amplification factor of 3.x"), so the bound it keeps is 3x the bytes
// received plus at most one packet (1280 bytes, its initial packet
// size): measured here, one 1280-byte Initial got 3962 bytes back (3.1x).
func TestH3Amplification(t *testing.T) {
	const maxPacket = 1280 // quic.Config.InitialPacketSize default: no path MTU discovery before validation
	w := startH3World(t, h3Opts{handshake: 10 * time.Second}, startCountingUpstream(t, answerOK).url())
	ini := captureInitials(t, "web.test", 1)[0]
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ua, _ := net.ResolveUDPAddr("udp", w.addr)
	if _, err := c.WriteTo(ini, ua); err != nil {
		t.Fatal(err)
	}
	var got, datagrams int
	buf := make([]byte, 65536)
	end := time.Now().Add(5 * time.Second) // PTOs at ~0.2, 0.4, 0.8, 1.6, 3.2 s: unlimited, they would pass 3x
	for {
		_ = c.SetReadDeadline(end)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			break
		}
		got += n
		datagrams++
		if n > maxPacket {
			t.Errorf("datagram %d: %d bytes to an unvalidated address, over %d", datagrams, n, maxPacket)
		}
	}
	t.Logf("sent one %d-byte Initial, got %d bytes in %d datagrams within 5s (%.2fx)", len(ini), got, datagrams, float64(got)/float64(len(ini)))
	if datagrams < 2 {
		t.Fatalf("%d datagrams back: no retransmission seen, the limit was not reached", datagrams)
	}
	if got > 3*len(ini)+maxPacket {
		t.Fatalf("gatehouse sent %d bytes to an unvalidated address that sent %d: over 3x + one packet", got, len(ini))
	}
}

// A burst of malformed datagrams (random bytes, truncated Initials,
// Initials for a name gatehouse does not serve) while good HTTP/3 and
// TCP clients make requests: every good request succeeds, and after the
// burst no QUIC connection state or goroutine is left over.
func TestH3HostileDatagrams(t *testing.T) {
	up := startCountingUpstream(t, answerOK)
	w := startH3World(t, h3Opts{handshake: time.Second}, up.url())
	unknown := captureInitials(t, "nope.test", 10)
	valid := captureInitials(t, "web.test", 5)
	h3WaitUntil(t, 10*time.Second, "capture dials gone", func() bool { return quicConns() == 0 })
	ua, _ := net.ResolveUDPAddr("udp", w.addr)

	// good clients: new HTTP/3 connections and a TCP (HTTP/2) client
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig:   &tls.Config{ServerName: "web.test", RootCAs: w.roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, w.addr)
		},
	}}
	goodRound := func(when string) {
		t.Helper()
		conn, cc := h3Conn(t, w, nil)
		if res, err := h3Get(cc, "/", nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("HTTP/3 request %s: %v %v", when, res, err)
		}
		conn.CloseWithError(0, "")
		res, err := h2.Get("https://web.test/")
		if err != nil {
			t.Fatalf("TCP request %s: %v", when, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("TCP request %s: %d", when, res.StatusCode)
		}
	}
	// warm up (upstream pool, TCP connection), then count
	goodRound("before the burst")
	h3WaitUntil(t, 10*time.Second, "warm-up QUIC connection gone", func() bool { return quicConns() == 0 })
	baseGoroutines := runtime.NumGoroutine()

	stop := make(chan struct{})
	var sent atomic.Int64
	var bwg sync.WaitGroup
	for i := range 2 {
		bwg.Go(func() {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 1500)
			for k := 0; k < 200000; k++ { // until stop; bounded anyway
				select {
				case <-stop:
					return
				default:
				}
				var d []byte
				switch (k + i) % 4 {
				case 0: // random bytes, random length
					_, _ = rand.Read(buf)
					d = buf[:1+int(buf[0])*5]
				case 1: // a truncated Initial
					ini := valid[k%len(valid)]
					d = ini[:1+k%(len(ini)-1)]
				case 2: // an Initial for a name with no route
					d = unknown[k%len(unknown)]
				case 3: // a valid Initial with its payload corrupted
					d = append(buf[:0], valid[k%len(valid)]...)
					d[len(d)-1-k%100] ^= 0xff
				}
				if _, err := c.WriteTo(d, ua); err == nil {
					sent.Add(1)
				}
				if k%50 == 0 {
					time.Sleep(time.Millisecond) // a flood, but one a 2-core test machine survives
				}
			}
		})
	}
	good := 0
	for range 10 {
		goodRound("during the burst")
		good += 2
	}
	duringBurst := sent.Load()
	close(stop)
	bwg.Wait()
	t.Logf("%d good requests succeeded while %d hostile datagrams were sent (%d in total)", good, duringBurst, sent.Load())
	if duringBurst == 0 {
		t.Fatal("no hostile datagram was sent during the good requests")
	}
	h3WaitUntil(t, 15*time.Second, "QUIC connection state released after the burst", func() bool { return quicConns() == 0 })
	h3WaitUntil(t, 15*time.Second, "goroutines back to the level before the burst", func() bool {
		return runtime.NumGoroutine() <= baseGoroutines
	})
	t.Logf("goroutines: %d before the burst, %d after", baseGoroutines, runtime.NumGoroutine())
	// still serving
	_, cc := h3Conn(t, w, nil)
	if res, err := h3Get(cc, "/", nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("HTTP/3 request after the burst: %v %v", res, err)
	}
}

// A client that keeps its QUIC connection alive (PINGs) but stops
// sending its request body, or stops reading the response, holds the
// upstream connection only until [timeouts] client_body (a body) or
// send (a response) passes without progress: then the request fails
// and the upstream connection closes.
func TestH3StalledBody(t *testing.T) {
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body) // waits for the whole body
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	w := startH3World(t, h3Opts{clientBody: time.Second}, up.url())
	_, cc := h3Conn(t, w, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Minute})
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", "https://web.test/upload", pr)
	req.ContentLength = 1 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req = req.WithContext(ctx)
	done := make(chan error, 1)
	go func() {
		res, err := cc.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
			if err == nil {
				err = fmt.Errorf("status %d", res.StatusCode)
			}
		}
		done <- err
	}()
	if _, err := pw.Write(make([]byte, 1000)); err != nil { // some progress, then silence
		t.Fatal(err)
	}
	h3WaitUntil(t, 5*time.Second, "upstream connection opened", func() bool { return up.open.Load() == 1 })
	began := time.Now()
	h3WaitUntil(t, 15*time.Second, "upstream connection released after the client stopped sending its body (client_body = 1s)", func() bool {
		return up.open.Load() == 0
	})
	t.Logf("upstream connection released %v after the body stalled", time.Since(began).Round(100*time.Millisecond))
	select {
	case err := <-done:
		t.Logf("client saw: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled request was never ended on the client's side")
	}
}

func TestH3StalledReader(t *testing.T) {
	chunk := bytes.Repeat([]byte("z"), 32<<10)
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
		for { // an endless response
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	w := startH3World(t, h3Opts{send: time.Second}, up.url())
	_, cc := h3Conn(t, w, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Minute})
	req, _ := http.NewRequest("GET", "https://web.test/stream", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cc.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if _, err := io.ReadFull(res.Body, make([]byte, 64<<10)); err != nil { // reads a little, then stops
		t.Fatal(err)
	}
	if up.open.Load() != 1 {
		t.Fatalf("%d upstream connections open, want 1", up.open.Load())
	}
	began := time.Now()
	h3WaitUntil(t, 20*time.Second, "upstream connection released after the client stopped reading (send = 1s)", func() bool {
		return up.open.Load() == 0
	})
	t.Logf("upstream connection released %v after the client stopped reading", time.Since(began).Round(100*time.Millisecond))
}

// A slow body that keeps moving is not cut by the no-progress bound:
// 3 s of upload, a piece every 300 ms, with client_body = 1s.
func TestH3SlowBodyPasses(t *testing.T) {
	up := startCountingUpstream(t, answerOK)
	w := startH3World(t, h3Opts{clientBody: time.Second}, up.url())
	_, cc := h3Conn(t, w, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Minute})
	pr, pw := io.Pipe()
	go func() {
		for range 10 {
			time.Sleep(300 * time.Millisecond)
			if _, err := pw.Write([]byte("0123456789")); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "https://web.test/", pr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cc.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("slow but moving upload: %d %q", res.StatusCode, b)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// One access-log line per HTTP/3 request, with proto HTTP/3.0, the
// status, and the TLS version; a refused request (431) gets no line
// from the handler (quic-go refuses it before gatehouse sees it).
func TestH3AccessLog(t *testing.T) {
	var log lockedBuffer
	up := startCountingUpstream(t, answerOK)
	w := startH3World(t, h3Opts{access: &log}, up.url())
	_, cc := h3Conn(t, w, nil)
	ok0, mis0 := h3Requests(t, "2xx"), h3Requests(t, "4xx")
	for _, p := range []string{"/one", "/two"} {
		if res, err := h3Get(cc, p, nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, res, err)
		}
	}
	req, _ := http.NewRequest("GET", "https://web.test/misdirected", nil)
	req.Host = "other.test"
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	h3WaitUntil(t, 5*time.Second, "three access lines", func() bool { return strings.Count(log.String(), "msg=access") >= 3 })
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 access lines, got %d:\n%s", len(lines), log.String())
	}
	for i, want := range []string{"path=/one", "path=/two", "path=/misdirected"} {
		l := lines[i]
		if !strings.Contains(l, want) || !strings.Contains(l, "proto=HTTP/3.0") || !strings.Contains(l, `tls="TLS 1.3"`) || !strings.Contains(l, "sni=web.test") {
			t.Errorf("access line %d: %s", i, l)
		}
	}
	if !strings.Contains(lines[0], "status=200") || !strings.Contains(lines[2], "status=421") {
		t.Errorf("statuses:\n%s", log.String())
	}
	// and counted in gatehouse_http_requests_total (which has no proto
	// label: HTTP/3 requests are counted with the TCP ones)
	if ok, mis := h3Requests(t, "2xx")-ok0, h3Requests(t, "4xx")-mis0; ok != 2 || mis != 1 {
		t.Errorf("gatehouse_http_requests_total{route=\"web.test\"} grew by %v 2xx and %v 4xx, want 2 and 1", ok, mis)
	}
}

// h3Requests sums gatehouse_http_requests_total for route web.test and
// one status class, as a scrape sees it.
func h3Requests(t *testing.T, class string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range Collectors() {
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["route"] == "web.test" && l["code_class"] == class {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// 0-RTT is refused: a quic-go client holding a session ticket from an
// earlier connection resumes, but its request is not sent as early data
// (the server's tickets do not allow it), so it cannot be replayed; the
// request is served after the handshake.
func TestH3ZeroRTTRefused(t *testing.T) {
	var seen atomic.Int64
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			seen.Add(1)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	w := startH3World(t, h3Opts{}, up.url())
	cache := tls.NewLRUClientSessionCache(10)
	var conns []*quic.Conn
	var mu sync.Mutex
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{ServerName: "web.test", RootCAs: w.roots, ClientSessionCache: cache},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			c, err := quic.DialAddrEarly(ctx, w.addr, tlsCfg, cfg)
			if err == nil {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
			return c, err
		},
	}
	defer tr.Close()
	get := func(method string) {
		t.Helper()
		req, _ := http.NewRequest(method, "https://web.test/", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := tr.RoundTrip(req.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	get("GET")
	// let the session ticket arrive, then a new connection
	h3WaitUntil(t, 5*time.Second, "session ticket", func() bool {
		_, ok := cache.Get("web.test")
		if !ok {
			// quic-go keys the cache by the server address
			_, ok = cache.Get(w.addr)
		}
		return ok
	})
	tr.CloseIdleConnections()
	get(http3.MethodGet0RTT)
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 {
		t.Fatalf("%d connections, want 2", len(conns))
	}
	st := conns[1].ConnectionState()
	if st.Used0RTT {
		t.Fatal("the server accepted 0-RTT")
	}
	if !st.TLS.DidResume {
		t.Fatal("the second connection did not resume: the client had no ticket, the test proves nothing")
	}
	if n := seen.Load(); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
}

// A client that vanishes mid-request (its socket gone, no
// CONNECTION_CLOSE) while the upstream has not answered: the QUIC
// connection dies of [timeouts] idle (MaxIdleTimeout; HTTP/3's own idle
// timer does not run while a request is open), the request is canceled
// and its upstream connection closed.
func TestH3VanishedClient(t *testing.T) {
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, br) // never answers; returns when gatehouse closes
	})
	w := startH3World(t, h3Opts{idle: time.Second}, up.url())
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ua, _ := net.ResolveUDPAddr("udp", w.addr)
	qt := &quic.Transport{Conn: udp}
	defer qt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := qt.Dial(ctx, ua, &tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{http3.NextProtoH3}},
		&quic.Config{MaxIdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cc := (&http3.Transport{}).NewClientConn(conn)
	req, _ := http.NewRequest("GET", "https://web.test/hang", nil)
	go func() {
		if res, err := cc.RoundTrip(req.WithContext(ctx)); err == nil {
			res.Body.Close()
		}
	}()
	h3WaitUntil(t, 5*time.Second, "request at the upstream", func() bool { return up.open.Load() == 1 })
	udp.Close() // the client is gone: nothing more leaves or arrives
	h3WaitUntil(t, 5*time.Second, "client-side connection gone", func() bool { return conn.Context().Err() != nil })
	began := time.Now()
	h3WaitUntil(t, 6*time.Second, "upstream connection released after the client vanished (idle = 1s; quic-go's default would be 30s)", func() bool {
		return up.open.Load() == 0
	})
	h3WaitUntil(t, 5*time.Second, "server-side QUIC connection released", func() bool { return quicConns() == 0 })
	t.Logf("upstream connection released %v after the client vanished", time.Since(began).Round(100*time.Millisecond))
}

// h3Do sends req on cc and reads the whole answer.
func h3Do(cc *http3.ClientConn, req *http.Request) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cc.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return res, b, err
}

// unsized hides a reader's size from the client: it sends no
// content-length, and the body ends with the stream.
type unsized struct{ io.Reader }

// HTTP/3 request bodies reach an http:// upstream through the own
// HTTP/1.1 client whole, framed as HTTP/1.1 frames them: a declared
// length as Content-Length (a small body in the head's write), a body
// of unknown length chunked (a GET's with a Content-Length when it all
// came at once, none when there is none); all on one pooled upstream
// connection.
func TestH3RequestBodies(t *testing.T) {
	var mu sync.Mutex
	var seen []string // "<framing> <length> <body ok>"
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, err := io.ReadAll(req.Body)
			if err != nil {
				return
			}
			framing := "none"
			switch {
			case len(req.TransferEncoding) > 0:
				framing = "chunked"
			case req.Header.Get("Content-Length") != "":
				framing = "length"
			}
			want := bytes.Repeat([]byte("0123456789abcdef"), len(b)/16)
			mu.Lock()
			seen = append(seen, fmt.Sprintf("%s %d %v", framing, len(b), bytes.Equal(b, want)))
			mu.Unlock()
			_, _ = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d", len(strconv.Itoa(len(b))), len(b))
		}
	})
	w := startH3World(t, h3Opts{}, up.url())
	_, cc := h3Conn(t, w, nil)
	big := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16)
	small := bytes.Repeat([]byte("0123456789abcdef"), 2<<10/16)
	cases := []struct {
		name, method string
		body         io.Reader
		n            int
		want         string
	}{
		{"declared small", "PUT", bytes.NewReader(small), len(small), "length 2048 true"},
		{"declared large", "PUT", bytes.NewReader(big), len(big), "length 307200 true"},
		{"unknown length", "PUT", unsized{bytes.NewReader(big)}, len(big), "chunked 307200 true"},
		{"unknown length, small", "POST", unsized{bytes.NewReader(small)}, len(small), "chunked 2048 true"},
		{"GET, none", "GET", nil, 0, "none 0 true"},
		{"GET, unknown length", "GET", unsized{bytes.NewReader(small)}, len(small), "length 2048 true"},
	}
	for i, tc := range cases {
		req, _ := http.NewRequest(tc.method, "https://web.test/up", tc.body)
		res, b, err := h3Do(cc, req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.StatusCode != 200 || string(b) != strconv.Itoa(tc.n) {
			t.Fatalf("%s: %d %q, want 200 %d", tc.name, res.StatusCode, b, tc.n)
		}
		mu.Lock()
		got := seen[i]
		mu.Unlock()
		// a GET's small body of unknown length may come in one read (then
		// it is sent with a Content-Length) or in several (chunked)
		if got != tc.want && !(tc.name == "GET, unknown length" && got == "chunked 2048 true") {
			t.Errorf("%s: the upstream saw %q, want %q", tc.name, got, tc.want)
		}
	}
	if n := up.open.Load(); n != 1 {
		t.Errorf("%d upstream connections open, want the one pooled connection", n)
	}
}

// A response body that pauses reaches the HTTP/3 client as far as it
// came (an event stream): what the upstream sent is flushed, not held
// until more comes.
func TestH3ResponseFlushedWhenUpstreamPauses(t *testing.T) {
	release := make(chan struct{})
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		_, _ = io.WriteString(c, "7\r\nsecond\n\r\n0\r\n\r\n")
	})
	w := startH3World(t, h3Opts{}, up.url())
	_, cc := h3Conn(t, w, nil)
	req, _ := http.NewRequest("GET", "https://web.test/events", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cc.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest: %q %v", rest, err)
	}
}

// A client that goes away (cancels its request) while the upstream has
// not answered yet frees the upstream connection at once, not at
// [timeouts] upstream_response_header.
func TestH3CanceledRequestFreesUpstream(t *testing.T) {
	got := make(chan struct{}, 1)
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		got <- struct{}{}
		_, _ = br.ReadByte() // silent until gatehouse closes the connection
	})
	w := startH3World(t, h3Opts{}, up.url())
	_, cc := h3Conn(t, w, nil)
	req, _ := http.NewRequest("GET", "https://web.test/longpoll", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := cc.RoundTrip(req.WithContext(ctx))
		done <- err
	}()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	cancel()
	<-done
	h3WaitUntil(t, 3*time.Second, "upstream connection closed after the client canceled", func() bool { return up.open.Load() == 0 })
}

// With proxy_protocol the upstream connections an HTTP/3 client's
// requests use are its own (pinned, each starting with its PROXY
// header): reused by its next requests, closed when its QUIC connection
// closes. (Before, the pinned pool of a QUIC connection was never
// closed: its idle upstream connections stayed open until their idle
// timeout.)
func TestH3PinnedClosesWithConn(t *testing.T) {
	var proxyLines atomic.Int64
	up := startCountingUpstream(t, func(c net.Conn, br *bufio.Reader, u *countingUpstream) {
		if b, err := br.Peek(6); err == nil && string(b) == "PROXY " {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			proxyLines.Add(1)
		}
		answerOK(c, br, u)
	})
	w := startH1WorldWith(t, func(c *routes.Config) { c.Routes[0].ProxyProtocol = "v1" }, up.url())
	h3WaitUntil(t, 5*time.Second, "HTTP/3 listener up", func() bool {
		w.s.mu.Lock()
		defer w.s.mu.Unlock()
		return w.s.h3 != nil
	})
	conn, cc := h3Conn(t, w, nil)
	for i := range 3 {
		res, err := h3Get(cc, "/", nil)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, res, err)
		}
	}
	if n, p := up.open.Load(), proxyLines.Load(); n != 1 || p != 1 {
		t.Fatalf("%d upstream connections, %d PROXY headers; want one pinned connection", n, p)
	}
	conn.CloseWithError(0, "")
	h3WaitUntil(t, 5*time.Second, "the pinned upstream connection closed with the QUIC connection", func() bool { return up.open.Load() == 0 })
}
