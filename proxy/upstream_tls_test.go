package proxy

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// https:// upstreams through gatehouse's own HTTP/1.1 client: real TLS
// upstreams (crypto/tls servers, raw or net/http's), real HTTP/1.1 and
// HTTP/2 clients.

// upstreamTLS returns a server config with a certificate for 127.0.0.1
// and localhost issued by ca (nil: a new CA), and a file holding the
// CA for upstream_ca.
func upstreamTLS(t testing.TB, ca *acmetest.TestCA) (*tls.Config, string) {
	t.Helper()
	if ca == nil {
		var err error
		if ca, err = acmetest.NewTestCA("upstream test root"); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{"127.0.0.1", "localhost"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(file, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}}, file
}

// overTLS runs answer over a TLS server connection (cfg) on a raw
// upstream's connection; a PROXY header before the handshake is
// skipped. coalesce: what the server writes between two reads goes to
// the socket in one write (so TLS records written one after the other
// arrive together).
func overTLS(cfg *tls.Config, coalesce bool, answer func(c net.Conn, br *bufio.Reader)) func(c net.Conn, br *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		if b, err := br.Peek(6); err == nil && string(b) == "PROXY " {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
		}
		var under net.Conn = readerConn{Conn: c, r: br}
		if coalesce {
			under = &coalescingConn{Conn: under}
		}
		tc := tls.Server(under, cfg)
		if err := tc.Handshake(); err != nil {
			return
		}
		answer(tc, bufio.NewReader(tc))
	}
}

// readerConn reads c's bytes through r (which has buffered some).
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// coalescingConn holds what is written until the next read.
type coalescingConn struct {
	net.Conn
	out []byte
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.out = append(c.out, p...)
	return len(p), nil
}

func (c *coalescingConn) Read(p []byte) (int, error) {
	if len(c.out) > 0 {
		_, err := c.Conn.Write(c.out)
		c.out = c.out[:0]
		if err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

// tlsWorld is an https:// upstream (net/http over crypto/tls, TLS 1.3
// only: session tickets after every full handshake) that counts the
// TCP connections it accepted and the handshakes that resumed, and
// records the SNI it was sent; and a gatehouse serving web.test from it.
type tlsWorld struct {
	*h1World
	srv              *httptest.Server
	accepts, resumed atomic.Int32
	sni              atomic.Value
	log              *testkit.SyncBuffer
}

func startTLSWorld(t *testing.T, host string, tweak func(*routes.Config)) *tlsWorld {
	u := &tlsWorld{log: &testkit.SyncBuffer{}}
	cfg, ca := upstreamTLS(t, nil)
	cfg.MinVersion = tls.VersionTLS13
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		u.sni.Store(h.ServerName)
		return nil, nil
	}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS.DidResume {
			u.resumed.Add(1)
		}
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprintf(w, "ok %s", r.Header.Get("X-Id"))
	}))
	u.srv.TLS = cfg
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.accepts.Add(1)
		}
	}
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	_, port, _ := net.SplitHostPort(u.srv.Listener.Addr().String())
	u.h1World = startH1WorldDebug(t, u.log, func(c *routes.Config) {
		c.Routes[0].UpstreamCA = ca
		if tweak != nil {
			tweak(c)
		}
	}, "https://"+net.JoinHostPort(host, port))
	return u
}

// idleTo is the number of idle pooled connections to addr over TLS
// (any CA).
func idleTo(addr string) int {
	upPools.Lock()
	var ps []*upPool
	for k, p := range upPools.m {
		if k.addr == addr && k.tls {
			ps = append(ps, p)
		}
	}
	upPools.Unlock()
	n := 0
	for _, p := range ps {
		n += p.idleCount()
	}
	return n
}

// sequential sends n requests to web.test one after the other through
// c, each once the connection of the one before is back in the pool
// for upAddr (an HTTP/2 stream may give its upstream connection back
// just after the client has the response's last frame: the next
// request would find the pool empty and dial). after runs after each.
func sequential(t *testing.T, c *http.Client, upAddr, name string, n int, after func(i int)) {
	t.Helper()
	for i := range n {
		getOK(t, c, "/", fmt.Sprintf("%s-%d", name, i))
		waitUntil(t, "the upstream connection back in the pool", func() bool { return idleTo(upAddr) == 1 })
		if after != nil {
			after(i)
		}
	}
}

// getOK asks web.test for path with client c and checks the answer.
func getOK(t *testing.T, c *http.Client, path, id string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://web.test"+path, nil)
	req.Header.Set("X-Id", id)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "ok "+id {
		t.Fatalf("%s: %d %q", id, res.StatusCode, body)
	}
}

// Sequential requests to an https:// upstream over TLS 1.3 use one
// upstream connection (the session ticket sent after the handshake does
// not end it), over HTTP/1.1 and HTTP/2; SNI is the upstream URL's host
// name; a new connection (after the upstream closed the last one)
// resumes the session.
func TestUpstreamTLSReusedAndResumed(t *testing.T) {
	w := startTLSWorld(t, "localhost", nil)
	_, port, _ := net.SplitHostPort(w.srv.Listener.Addr().String())
	for _, h2 := range []bool{false, true} {
		sequential(t, w.client(h2), "localhost:"+port, protoName(h2), 20, func(i int) {
			if i%5 == 0 {
				time.Sleep(20 * time.Millisecond) // idle in the pool a while
			}
		})
	}
	if n := w.accepts.Load(); n != 1 {
		t.Errorf("40 sequential requests: %d upstream connections, want 1", n)
	}
	if sni, _ := w.sni.Load().(string); sni != "localhost" {
		t.Errorf("SNI %q, want localhost (the upstream URL's host)", sni)
	}
	c := w.client(false)
	getOK(t, c, "/close", "closing")
	getOK(t, c, "/", "after")
	if n := w.accepts.Load(); n != 2 {
		t.Errorf("%d upstream connections after the upstream closed one, want 2", n)
	}
	if n := w.resumed.Load(); n != 1 {
		t.Errorf("%d requests on a resumed session, want 1 (the reconnect's)", n)
	}
}

// An upstream whose certificate the route does not trust is a 502, and
// the log says why; a route with two upstreams where one is not
// trusted serves every request from the other (a failed handshake is
// a failed dial: the request goes to another upstream, as with a
// refused connection; net/http's Transport answered those with 502s).
// upstream_ca is what makes the trusted one trusted.
func TestUpstreamTLSUntrusted(t *testing.T) {
	ca, err := acmetest.NewTestCA("trusted upstream root")
	if err != nil {
		t.Fatal(err)
	}
	goodCfg, caFile := upstreamTLS(t, ca)
	badCfg, _ := upstreamTLS(t, nil) // another CA
	serve := func(cfg *tls.Config, name string) string {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, name)
		}))
		srv.TLS = cfg
		srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the refused handshakes
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return "https://" + srv.Listener.Addr().String()
	}
	good, bad := serve(goodCfg, "good"), serve(badCfg, "bad")
	log := &testkit.SyncBuffer{}
	w := startH1WorldDebug(t, log, func(c *routes.Config) {
		c.Routes[0].Upstreams = []string{bad, good}
		c.Routes[0].Upstream = ""
		for i := range c.Routes {
			c.Routes[i].UpstreamCA = caFile
		}
	}, "",
		routes.Route{Hosts: []string{"other.test"}, Upstream: bad},
	)
	for _, h2 := range []bool{false, true} {
		c := w.client(h2)
		for i := range 6 {
			res, body := fetch(t, c, "web.test", "/")
			if res != 200 || body != "good" {
				t.Errorf("%s request %d to the route with a trusted and an untrusted upstream: %d %q", protoName(h2), i, res, body)
			}
		}
		res, body := fetch(t, c, "other.test", "/")
		if res != 502 || !strings.HasPrefix(body, "502 Bad Gateway") {
			t.Errorf("%s: untrusted upstream: %d %q, want 502", protoName(h2), res, body)
		}
	}
	logs := log.String()
	if !strings.Contains(logs, `msg="upstream request failed"`) || !strings.Contains(logs, "certificate signed by unknown authority") {
		t.Errorf("the log does not say why the upstream failed:\n%s", logs)
	}
}

// upstream_ca is honoured: the same upstream is trusted on a route that
// names its CA, and a 502 on a route that trusts the system roots.
func TestUpstreamTLSUpstreamCA(t *testing.T) {
	cfg, caFile := upstreamTLS(t, nil)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	srv.TLS = cfg
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	t.Cleanup(srv.Close)
	url := "https://" + srv.Listener.Addr().String()
	log := &testkit.SyncBuffer{}
	w := startH1WorldDebug(t, log, func(c *routes.Config) { c.Routes[0].UpstreamCA = caFile }, url,
		routes.Route{Hosts: []string{"other.test"}, Upstream: url})
	for _, h2 := range []bool{false, true} {
		c := w.client(h2)
		// both orders: the two routes must not share connections
		for _, host := range []string{"web.test", "other.test", "web.test"} {
			res, body := fetch(t, c, host, "/")
			want := 200
			if host == "other.test" {
				want = 502
			}
			if res != want {
				t.Errorf("%s %s: %d %q, want %d", protoName(h2), host, res, body, want)
			}
		}
	}
	if !strings.Contains(log.String(), "certificate signed by unknown authority") {
		t.Errorf("the log does not say why other.test failed:\n%s", log.String())
	}
}

// fetch GETs path on host through c.
func fetch(t *testing.T, c *http.Client, host, path string) (int, string) {
	t.Helper()
	res, err := c.Get("https://" + host + path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res.StatusCode, string(body)
}

// A TLS 1.3 upstream that sends its session ticket after its first
// response, while gatehouse holds the connection idle in its pool
// (RFC 8446 4.6.1 lets a server send NewSessionTicket at any time): the
// idle watch sees the socket readable, but the bytes are a
// post-handshake message, not a stray answer; the connection stays and
// serves every later request. (A watch that closed every readable TLS
// connection made one upstream connection per request here.) The
// ticket is moved by ticketRelay, which re-encrypts the upstream's
// records with the keys the upstream logs.
func TestUpstreamTLSTicketAfterResponse(t *testing.T) {
	cfg, caFile := upstreamTLS(t, nil)
	r := &ticketRelay{keys: map[string]map[string][]byte{}}
	cfg.MinVersion = tls.VersionTLS13
	cfg.KeyLogWriter = r
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s", r.Header.Get("X-Id"))
	}))
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r.start(t, srv.Listener.Addr().String())
	log := &testkit.SyncBuffer{}
	w := startH1WorldDebug(t, log, func(c *routes.Config) { c.Routes[0].UpstreamCA = caFile }, "https://"+r.ln.Addr().String())
	before := unsolicitedClosed.Load()
	for _, h2 := range []bool{false, true} {
		sequential(t, w.client(h2), r.ln.Addr().String(), protoName(h2), 10, func(i int) {
			if i == 0 && !h2 {
				// the ticket comes while the connection is idle
				waitUntil(t, "the delayed ticket", func() bool { return r.delayed.Load() > 0 })
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	if n := r.accepts.Load(); n != 1 {
		t.Errorf("20 sequential requests: %d upstream connections, want 1 (%d delayed tickets, %d closed as unsolicited); log:\n%s",
			n, r.delayed.Load(), unsolicitedClosed.Load()-before, log.String())
	}
	if err := r.failed(); err != nil {
		t.Fatal(err)
	}
}

// ticketRelay is a TCP relay in front of a TLS 1.3 server that holds
// back the server's NewSessionTicket messages until 30 ms after the
// first application data it forwards: it decrypts the server's records
// with the traffic secrets the server logs (KeyLogWriter) and
// re-encrypts them with the sequence numbers of the order it sends.
type ticketRelay struct {
	ln      net.Listener
	accepts atomic.Int32
	delayed atomic.Int32 // tickets sent after a response

	mu   sync.Mutex
	keys map[string]map[string][]byte // client random (hex) → label → secret
	err  error
}

// Write takes the server's key log lines.
func (r *ticketRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for line := range strings.SplitSeq(strings.TrimSpace(string(p)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		secret, err := hex.DecodeString(f[2])
		if err != nil {
			continue
		}
		if r.keys[f[1]] == nil {
			r.keys[f[1]] = map[string][]byte{}
		}
		r.keys[f[1]][f[0]] = secret
	}
	return len(p), nil
}

func (r *ticketRelay) secret(random []byte, label string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[hex.EncodeToString(random)][label]
}

func (r *ticketRelay) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *ticketRelay) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *ticketRelay) start(t *testing.T, target string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ln = ln
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
			r.accepts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				_ = s.SetDeadline(time.Now().Add(20 * time.Second))
				randoms := make(chan []byte, 1)
				go func() {
					// client → server: as is, noting the ClientHello's random
					hdr := make([]byte, 5)
					if _, err := io.ReadFull(c, hdr); err != nil {
						s.Close()
						return
					}
					body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
					if _, err := io.ReadFull(c, body); err != nil || len(body) < 38 {
						s.Close()
						return
					}
					randoms <- body[6:38]
					_, _ = s.Write(append(hdr, body...))
					_, _ = io.Copy(s, c)
					s.Close()
				}()
				if err := r.serverToClient(s, c, randoms); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
					r.fail(err)
				}
			}()
		}
	}()
}

// serverToClient relays the server's records, holding back tickets.
func (r *ticketRelay) serverToClient(s, c net.Conn, randoms chan []byte) error {
	var (
		random        []byte
		suite         uint16
		hsIn          *recordKeys // the server's handshake keys
		appIn, appOut *recordKeys // application keys: as the server sent, as the client gets
		inApp         bool
		mu            sync.Mutex // appOut and writes to c
		held          [][]byte   // ticket messages held back
		answered      bool
		timer         *time.Timer
	)
	defer func() {
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}()
	send := func(inner []byte, typ byte) error {
		rec := appOut.seal(inner, typ)
		_, err := c.Write(rec)
		return err
	}
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(s, hdr); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(s, body); err != nil {
			return err
		}
		rec := append(append([]byte(nil), hdr...), body...)
		switch {
		case hdr[0] == 22 && random == nil: // ServerHello
			random = <-randoms
			sidLen := int(body[38])
			suite = binary.BigEndian.Uint16(body[39+sidLen:])
		case hdr[0] == 23 && !inApp:
			if hsIn == nil {
				hsIn = newRecordKeys(suite, r.secret(random, "SERVER_HANDSHAKE_TRAFFIC_SECRET"))
			}
			inner, _, err := hsIn.open(rec)
			if err != nil {
				return err
			}
			// the server's Finished ends its handshake records
			for m := inner; len(m) >= 4; {
				n := 4 + (int(m[1])<<16 | int(m[2])<<8 | int(m[3]))
				if n > len(m) {
					break // continued in the next record (not the Finished)
				}
				typ := m[0]
				m = m[n:]
				if typ == 20 {
					inApp = true
					secret := r.secret(random, "SERVER_TRAFFIC_SECRET_0")
					appIn, appOut = newRecordKeys(suite, secret), newRecordKeys(suite, secret)
				}
			}
		case hdr[0] == 23:
			inner, typ, err := appIn.open(rec)
			if err != nil {
				return err
			}
			mu.Lock()
			if typ == 22 && len(inner) > 0 && inner[0] == 4 && !answered {
				held = append(held, inner)
				mu.Unlock()
				continue
			}
			err = send(inner, typ)
			if typ == 23 && !answered {
				answered = true
				if len(held) > 0 {
					tickets := held
					timer = time.AfterFunc(30*time.Millisecond, func() {
						mu.Lock()
						defer mu.Unlock()
						for _, m := range tickets {
							if send(m, 22) == nil {
								r.delayed.Add(1)
							}
						}
					})
				}
			}
			mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		mu.Lock()
		_, err := c.Write(rec)
		mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// recordKeys protects TLS 1.3 records in one direction (RFC 8446 5.2,
// 5.3, 7.3).
type recordKeys struct {
	aead cipher.AEAD
	iv   []byte
	seq  uint64
}

func newRecordKeys(suite uint16, secret []byte) *recordKeys {
	var h func() hash.Hash
	var keyLen int
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		h, keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h, keyLen = sha512.New384, 32
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		h, keyLen = sha256.New, 32
	default:
		panic(fmt.Sprintf("suite %x", suite))
	}
	label := func(l string, n int) []byte {
		info := []byte{byte(n >> 8), byte(n), byte(len("tls13 " + l))}
		info = append(info, "tls13 "+l...)
		info = append(info, 0)
		b, err := hkdf.Expand(h, secret, string(info), n)
		if err != nil {
			panic(err)
		}
		return b
	}
	key := label("key", keyLen)
	k := &recordKeys{iv: label("iv", 12)}
	if suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		k.aead, _ = chacha20poly1305.New(key)
	} else {
		b, _ := aes.NewCipher(key)
		k.aead, _ = cipher.NewGCM(b)
	}
	return k
}

func (k *recordKeys) nonce() []byte {
	n := append([]byte(nil), k.iv...)
	for i := range 8 {
		n[len(n)-1-i] ^= byte(k.seq >> (8 * i))
	}
	k.seq++
	return n
}

// open decrypts a whole record: its content and inner content type.
func (k *recordKeys) open(rec []byte) ([]byte, byte, error) {
	pt, err := k.aead.Open(nil, k.nonce(), rec[5:], rec[:5])
	if err != nil {
		return nil, 0, fmt.Errorf("relay: decrypting a server record: %w", err)
	}
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return nil, 0, errors.New("relay: record without a content type")
	}
	return pt[:i], pt[i], nil
}

// seal encrypts content of type typ into a record.
func (k *recordKeys) seal(content []byte, typ byte) []byte {
	n := len(content) + 1 + k.aead.Overhead()
	rec := []byte{23, 3, 3, byte(n >> 8), byte(n)}
	aad := append([]byte(nil), rec...)
	return k.aead.Seal(rec, k.nonce(), append(append([]byte(nil), content...), typ), aad)
}
