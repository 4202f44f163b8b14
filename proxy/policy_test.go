package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The request policy (policy.go) through every engine: the own
// HTTP/1.1 loop and HTTP/2 server in front of plain http:// upstreams
// (web.test), the same with PROXY protocol to the upstream (pp.test:
// pinned connections), the same in front of an https:// upstream
// (tls.test: the own client over TLS), and in front of an h2c://
// upstream (h2c.test: the route's RoundTrip). Real TLS clients on
// loopback, real upstreams.

// policyNames are the routes of a policyWorld, one per upstream kind:
// web.test http://, pp.test http:// with PROXY protocol, tls.test
// https://, h2c.test h2c://.
var policyNames = []string{"web.test", "pp.test", "tls.test", "h2c.test"}

type policyWorld struct {
	t     *testing.T
	s     *Server
	addr  string
	roots *x509.CertPool
	log   *testkit.SyncBuffer // the error log and the access log, at debug level
	done  chan struct{}
}

// policyHandler is every upstream's behaviour. It answers with the Host
// and the header fields it received ("Name: value" lines, sorted), and
// by path:
//
//	/stop…  reads 1 KiB of the body, then closes the connection
//	/close… closes the connection at once
//	/slow…  reads the body, then does not answer for 3 s
func policyHandler(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/stop"), strings.HasPrefix(r.URL.Path, "/close"):
		if strings.HasPrefix(r.URL.Path, "/stop") {
			_, _ = io.CopyN(io.Discard, r.Body, 1024)
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler) // HTTP/2 (h2c): the stream is reset
		}
		c.Close()
		return
	case strings.HasPrefix(r.URL.Path, "/slow"):
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Second):
		}
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	var lines []string
	for k, vs := range r.Header {
		for _, v := range vs {
			lines = append(lines, k+": "+v)
		}
	}
	sort.Strings(lines)
	fmt.Fprintf(w, "host=%s\n%s\n", r.Host, strings.Join(lines, "\n"))
}

// ppListener takes the PROXY v1 line gatehouse sends first off each
// connection.
type ppListener struct{ net.Listener }

func (l ppListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &ppConn{Conn: c, br: bufio.NewReader(c)}, nil
}

type ppConn struct {
	net.Conn
	br   *bufio.Reader
	seen bool
}

func (c *ppConn) Read(p []byte) (int, error) {
	if !c.seen {
		c.seen = true
		if sig, err := c.br.Peek(16); err == nil && string(sig[:12]) == "\r\n\r\n\x00\r\nQUIT\n" {
			// v2: a 16-byte header and its address block
			if _, err := c.br.Discard(16 + int(sig[14])<<8 + int(sig[15])); err != nil {
				return 0, err
			}
			return c.br.Read(p)
		}
		line, err := c.br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "PROXY ") {
			return 0, fmt.Errorf("no PROXY line: %q %v", line, err)
		}
	}
	return c.br.Read(p)
}

// worldOpts vary a policyWorld: the upstreams' handler, the PROXY
// protocol version pp.test sends, the routes' hsts, and routes whose
// upstreams are down ("down-" + each policy name).
type worldOpts struct {
	handler http.Handler
	pp      string
	hsts    string
	down    bool
}

func startPolicyWorld(t *testing.T) *policyWorld {
	t.Helper()
	return startWorld(t, worldOpts{handler: http.HandlerFunc(policyHandler), pp: "v1"})
}

func startWorld(t *testing.T, o worldOpts) *policyWorld {
	t.Helper()
	plain := httptest.NewServer(o.handler)
	t.Cleanup(plain.Close)
	pp := httptest.NewUnstartedServer(o.handler)
	pp.Listener = ppListener{pp.Listener}
	pp.Start()
	t.Cleanup(pp.Close)
	secure := httptest.NewUnstartedServer(o.handler)
	secure.Config.ErrorLog = log.New(io.Discard, "", 0)
	secure.StartTLS()
	t.Cleanup(secure.Close)
	h2c := httptest.NewUnstartedServer(o.handler)
	h2c.Config.Protocols = new(http.Protocols)
	h2c.Config.Protocols.SetUnencryptedHTTP2(true)
	h2c.Config.ErrorLog = log.New(io.Discard, "", 0) // the aborted handlers
	h2c.Start()
	t.Cleanup(h2c.Close)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: secure.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	ca, err := acmetest.NewTestCA("policy test root")
	if err != nil {
		t.Fatal(err)
	}
	names := append([]string{"other.test"}, policyNames...)
	for _, n := range policyNames {
		names = append(names, "down-"+n)
	}
	certPEM, keyPEM, _, err := ca.Issue(names, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	cfg := &routes.Config{Routes: []routes.Route{
		{Hosts: []string{"web.test"}, Upstream: plain.URL},
		{Hosts: []string{"pp.test"}, Upstream: "http://" + pp.Listener.Addr().String(), ProxyProtocol: o.pp},
		{Hosts: []string{"tls.test"}, Upstream: secure.URL, UpstreamCA: caFile},
		{Hosts: []string{"h2c.test"}, Upstream: "h2c://" + h2c.Listener.Addr().String()},
		{Hosts: []string{"other.test"}, Upstream: "http://127.0.0.1:1"},
	}}
	if o.down {
		cfg.Routes = append(cfg.Routes,
			routes.Route{Hosts: []string{"down-web.test"}, Upstream: "http://127.0.0.1:1"},
			routes.Route{Hosts: []string{"down-pp.test"}, Upstream: "http://127.0.0.1:1", ProxyProtocol: o.pp},
			routes.Route{Hosts: []string{"down-tls.test"}, Upstream: "https://127.0.0.1:1", UpstreamCA: caFile},
			routes.Route{Hosts: []string{"down-h2c.test"}, Upstream: "h2c://127.0.0.1:1"})
	}
	for i := range cfg.Routes {
		cfg.Routes[i].HSTS = o.hsts
	}
	cfg.Timeouts.ReadHeader = routes.Duration(2 * time.Second)
	cfg.Timeouts.UpstreamHeader = routes.Duration(500 * time.Millisecond)
	cfg.ApplyDefaults()
	lb := &testkit.SyncBuffer{}
	lg := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(Options{Certs: fixedCerts{&kp}, Logger: lg, AccessLog: lg})
	if err := s.Listen("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTable(routes.NewTable(cfg)); err != nil {
		t.Fatal(err)
	}
	w := &policyWorld{t: t, s: s, roots: roots, log: lb, done: make(chan struct{})}
	https, _ := s.Addrs()
	w.addr = https.String()
	go func() { _ = s.Serve(); close(w.done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-w.done
	})
	return w
}

// dialH1 opens an HTTP/1.1 TLS connection for name.
func (w *policyWorld) dialH1(t *testing.T, name string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr,
		&tls.Config{ServerName: name, RootCAs: w.roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// h1 sends one raw request on a new connection and reads the answer.
func (w *policyWorld) h1(t *testing.T, name, raw string) (int, string) {
	t.Helper()
	c, br := w.dialH1(t, name)
	res, body := roundTrip(t, c, br, raw, false)
	return res.StatusCode, body
}

// h2Raw is a frame-level HTTP/2 client: it sends exactly the header
// fields it is given, however malformed.
type h2Raw struct {
	t    *testing.T
	c    *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	next uint32
	// frame is the largest frame written (16 KiB, the default, unless
	// the server's SETTINGS allowed more and a test sets it)
	frame int
}

// h2Result is how a stream ended: a response, or a reset.
type h2Result struct {
	status int
	body   string
	reset  bool
	code   http2.ErrCode
}

func (w *policyWorld) dialH2(t *testing.T, name string) *h2Raw {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr,
		&tls.Config{ServerName: name, RootCAs: w.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	h := &h2Raw{t: t, c: c, fr: http2.NewFramer(c, c), next: 1}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(65536, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.enc = hpack.NewEncoder(&h.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// request sends one stream: fields (pseudo-fields first, as given), an
// optional body and optional trailers, and waits for how it ends.
func (h *h2Raw) request(fields [][2]string, body []byte, trailers [][2]string) h2Result {
	h.t.Helper()
	id := h.next
	h.next += 2
	h.writeBlock(id, fields, body == nil && trailers == nil)
	if body != nil {
		if err := h.fr.WriteData(id, trailers == nil, body); err != nil {
			h.t.Fatal(err)
		}
	}
	if trailers != nil {
		h.writeBlock(id, trailers, true)
	}
	var res h2Result
	var data bytes.Buffer
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("stream %d: reading frames: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = h.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			h.t.Fatalf("stream %d: GOAWAY %v", id, f.ErrCode)
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return h2Result{reset: true, code: f.ErrCode}
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			if st, err := strconv.Atoi(f.PseudoValue("status")); err == nil && st >= 200 {
				res.status = st
			}
			if f.StreamEnded() {
				res.body = data.String()
				return res
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			data.Write(f.Data())
			if n := len(f.Data()); n > 0 {
				_ = h.fr.WriteWindowUpdate(0, uint32(n))
				_ = h.fr.WriteWindowUpdate(id, uint32(n))
			}
			if f.StreamEnded() {
				res.body = data.String()
				return res
			}
		}
	}
}

// writeBlock sends a header block as HEADERS and CONTINUATIONs of the
// default frame size.
func (h *h2Raw) writeBlock(id uint32, fields [][2]string, end bool) {
	h.t.Helper()
	h.hbuf.Reset()
	for _, f := range fields {
		_ = h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := h.hbuf.Bytes()
	max := 16384
	if h.frame > 0 {
		max = h.frame
	}
	first := block[:min(len(block), max)]
	block = block[len(first):]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		h.t.Fatal(err)
	}
	for len(block) > 0 {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		if err := h.fr.WriteContinuation(id, len(block) == 0, frag); err != nil {
			h.t.Fatal(err)
		}
	}
}

// get is the pseudo-fields of a GET for authority and path.
func get(authority, path string, extra ...[2]string) [][2]string {
	return append([][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", authority}, {":path", path}}, extra...)
}

// A Host whose port is not digits, or a host that is not a route name's
// characters, is refused with 400 on every engine, and never reaches an
// upstream; a valid one is forwarded exactly, in Host,
// X-Forwarded-Host and Forwarded.
func TestPolicyHostPort(t *testing.T) {
	w := startPolicyWorld(t)
	for _, name := range policyNames {
		for _, bad := range []string{name + ":,evil.example", name + ":443,evil.example", name + ",evil.example",
			name + ":", name + ":https", name + ":+443", name + ":99999"} {
			t.Run(name+"/h1/"+bad, func(t *testing.T) {
				status, body := w.h1(t, name, "GET /x HTTP/1.1\r\nHost: "+bad+"\r\n\r\n")
				if status != 400 {
					t.Errorf("status %d, want 400; body %q", status, body)
				}
				status, body = w.h1(t, name, "GET http://"+bad+"/x HTTP/1.1\r\nHost: "+name+"\r\n\r\n")
				if status != 400 {
					t.Errorf("absolute-form: status %d, want 400; body %q", status, body)
				}
			})
			t.Run(name+"/h2/"+bad, func(t *testing.T) {
				res := w.dialH2(t, name).request(get(bad, "/x"), nil, nil)
				if res.status != 400 && !(res.reset && res.code == http2.ErrCodeProtocol) {
					t.Errorf("got %+v, want 400", res)
				}
				// and as a Host field without :authority
				res = w.dialH2(t, name).request([][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/x"}, {"host", bad}}, nil, nil)
				if res.status != 400 && !(res.reset && res.code == http2.ErrCodeProtocol) {
					t.Errorf("host field: got %+v, want 400", res)
				}
			})
		}
		good := name + ":443"
		want := []string{"host=" + good + "\n", "X-Forwarded-Host: " + good + "\n", `host="` + good + `"`}
		t.Run(name+"/h1/valid", func(t *testing.T) {
			status, body := w.h1(t, name, "GET /x HTTP/1.1\r\nHost: "+good+"\r\n\r\n")
			for _, s := range want {
				if status != 200 || !strings.Contains(body, s) {
					t.Errorf("status %d, upstream saw:\n%s\nwant %q in it", status, body, s)
				}
			}
		})
		t.Run(name+"/h2/valid", func(t *testing.T) {
			res := w.dialH2(t, name).request(get(good, "/x"), nil, nil)
			for _, s := range want {
				if res.status != 200 || !strings.Contains(res.body, s) {
					t.Errorf("%+v: want %q in the body", res, s)
				}
			}
		})
	}
	for _, line := range strings.Split(w.log.String(), "\n") {
		if strings.Contains(line, "evil.example") && strings.Contains(line, "upstream=http") {
			t.Errorf("a forged host reached an upstream:\n%s", line)
		}
	}
}

// Request fields whose names fold (case, "_" for "-") to a field
// gatehouse sets never reach the upstream, on any engine; the ones
// gatehouse sets are there once, with its values.
func TestPolicyUnderscoreFields(t *testing.T) {
	w := startPolicyWorld(t)
	forged := [][2]string{
		{"X_Forwarded_For", "6.6.6.6"}, {"X-Forwarded_For", "6.6.6.6"}, {"x_forwarded_for", "6.6.6.6"},
		{"X_Forwarded_Host", "evil.example"}, {"X-Forwarded_Host", "evil.example"},
		{"X_Forwarded_Proto", "http"}, {"X_FORWARDED_PROTO", "http"},
		{"X-Forwarded-For", "6.6.6.6"}, {"Forwarded", "for=6.6.6.6;host=evil.example"},
		{"Content_Length", "99"}, {"Transfer_Encoding", "chunked"},
	}
	check := func(t *testing.T, status int, body string) {
		t.Helper()
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		for _, s := range []string{"6.6.6.6", "evil.example", ": http\n", "99", "chunked"} {
			if strings.Contains(body, s) {
				t.Errorf("a forged field reached the upstream (%q):\n%s", s, body)
			}
		}
		for _, line := range strings.Split(body, "\n") {
			name, _, _ := strings.Cut(line, ":")
			if strings.Contains(name, "_") {
				t.Errorf("upstream got %q", line)
			}
		}
		if strings.Count(body, "X-Forwarded-For: 127.0.0.1\n") != 1 || strings.Count(body, "X-Forwarded-Proto: https\n") != 1 {
			t.Errorf("gatehouse's own fields missing or doubled:\n%s", body)
		}
	}
	for _, name := range policyNames {
		t.Run(name+"/h1", func(t *testing.T) {
			var raw strings.Builder
			raw.WriteString("GET /f HTTP/1.1\r\nHost: " + name + "\r\n")
			for _, f := range forged {
				raw.WriteString(f[0] + ": " + f[1] + "\r\n")
			}
			raw.WriteString("\r\n")
			status, body := w.h1(t, name, raw.String())
			check(t, status, body)
		})
		t.Run(name+"/h2", func(t *testing.T) {
			var extra [][2]string
			for _, f := range forged {
				if f[0] == "Content_Length" || f[0] == "Transfer_Encoding" {
					continue // nothing of the framing is forwarded from HTTP/2
				}
				extra = append(extra, [2]string{strings.ToLower(f[0]), f[1]})
			}
			res := w.dialH2(t, name).request(get(name, "/f", extra...), nil, nil)
			check(t, res.status, res.body)
		})
	}
}

// Malformed HTTP/2 requests (RFC 9113 §8.1.1): a content-length that is
// not 1*DIGIT, a field value with leading or trailing whitespace (in
// the header block or the trailers) is a stream error PROTOCOL_ERROR on
// the own server, and 400 on net/http's; nothing reaches the upstream
// and the connection goes on.
func TestH2MalformedFields(t *testing.T) {
	w := startPolicyWorld(t)
	post := func(name string, extra ...[2]string) [][2]string {
		return append([][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", name}, {":path", "/m"}}, extra...)
	}
	for _, name := range policyNames {
		cases := []struct {
			what     string
			fields   [][2]string
			body     []byte
			trailers [][2]string
		}{
			{"signed content-length", post(name, [2]string{"content-length", "+5"}), []byte("hello"), nil},
			{"content-length with space", post(name, [2]string{"content-length", "5 "}), []byte("hello"), nil},
			{"value with leading space", get(name, "/m", [2]string{"x-a", " 1"}), nil, nil},
			{"value with trailing tab", get(name, "/m", [2]string{"x-a", "1\t"}), nil, nil},
			{"authority with trailing space", get(name+" ", "/m"), nil, nil},
			// (its head was well-formed: the request has begun upstream,
			// and is canceled; path /t, not /m)
			{"trailer value with leading space", [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", name}, {":path", "/t"}},
				[]byte("hello"), [][2]string{{"x-t", " 1"}}},
		}
		for _, tc := range cases {
			t.Run(name+"/"+tc.what, func(t *testing.T) {
				h := w.dialH2(t, name)
				res := h.request(tc.fields, tc.body, tc.trailers)
				if !res.reset || res.code != http2.ErrCodeProtocol {
					t.Errorf("got %+v, want RST_STREAM PROTOCOL_ERROR", res)
				}
				if next := h.request(get(name, "/ok"), nil, nil); next.status != 200 {
					t.Errorf("the next stream on the connection: %+v", next)
				}
			})
		}
	}
	for _, line := range strings.Split(w.log.String(), "\n") {
		if strings.Contains(line, "path=/m ") && strings.Contains(line, "upstream=http") {
			t.Errorf("a malformed request was forwarded:\n%s", line)
		}
	}
}

// secretBody is a request body whose bytes must never reach a log.
var secretBody = bytes.Repeat([]byte("secret=hunter2&"), 20000) // 300 kB

// The warning lines of failed exchanges name the request's method and
// path, never bytes of its body: through every failure path (upstream
// stops reading, upstream closes, upstream too slow: 504, client leaves
// mid-body), on every engine.
func TestLogNoBodyBytes(t *testing.T) {
	w := startPolicyWorld(t)
	tail := "/" + strings.Repeat("p", 40) // a long path: a leaked one shows many body bytes
	for _, name := range policyNames {
		for _, path := range []string{"/stop" + tail, "/close" + tail, "/slow" + tail, "/leave" + tail} {
			t.Run(name+"/h1"+path[:6], func(t *testing.T) {
				c, br := w.dialH1(t, name)
				head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", path, name, len(secretBody))
				if strings.HasPrefix(path, "/leave") {
					_, _ = io.WriteString(c, head)
					_, _ = c.Write(secretBody[:len(secretBody)/2])
					time.Sleep(100 * time.Millisecond)
					c.Close()
					return
				}
				go func() { _, _ = c.Write(append([]byte(head), secretBody...)) }()
				res, _ := readResp(t, br, false)
				if res.StatusCode != 502 && res.StatusCode != 504 {
					t.Errorf("status %d, want 502 or 504", res.StatusCode)
				}
			})
			t.Run(name+"/h2"+path[:6], func(t *testing.T) {
				tr := &http2.Transport{
					TLSClientConfig: &tls.Config{ServerName: name, RootCAs: w.roots},
					DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
						d := tls.Dialer{Config: cfg}
						return d.DialContext(ctx, network, w.addr)
					},
				}
				defer tr.CloseIdleConnections()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var body io.Reader = bytes.NewReader(secretBody)
				if strings.HasPrefix(path, "/leave") {
					body = &leaveReader{data: secretBody[:len(secretBody)/2], cancel: cancel}
				}
				req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+name+path, body)
				req.ContentLength = int64(len(secretBody))
				res, err := tr.RoundTrip(req)
				if strings.HasPrefix(path, "/leave") {
					if err == nil {
						res.Body.Close()
					}
					time.Sleep(100 * time.Millisecond)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != 502 && res.StatusCode != 504 {
					t.Errorf("status %d, want 502 or 504", res.StatusCode)
				}
			})
		}
	}
	// the server has logged what it will about these requests once the
	// access-log lines of all of them are written
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(w.log.String(), "msg=access") < 2*4*len(policyNames)-2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	logs := w.log.String()
	t.Logf("%d access lines, %d warnings", strings.Count(logs, "msg=access"), strings.Count(logs, "upstream request failed"))
	if strings.Contains(logs, "hunter2") || strings.Contains(logs, "secret=") {
		t.Fatalf("request body bytes in the log:\n%s", logs)
	}
	warned := 0
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "upstream request failed") {
			continue
		}
		warned++
		if !strings.Contains(line, "method=POST") || !namesPath(line, tail) {
			t.Errorf("warning does not name the request:\n%s", line)
		}
	}
	if warned < 3*2*len(policyNames)-2 {
		t.Errorf("%d 'upstream request failed' warnings, want one per failed exchange:\n%s", warned, logs)
	}
}

func namesPath(line, tail string) bool {
	for _, p := range []string{"/stop", "/close", "/slow", "/leave"} {
		if strings.Contains(line, "path="+p+tail) {
			return true
		}
	}
	return false
}

// leaveReader yields data, then cancels the request (the client goes
// away mid-body) and fails.
type leaveReader struct {
	data   []byte
	cancel func()
}

func (r *leaveReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		time.Sleep(100 * time.Millisecond)
		r.cancel()
		return 0, errors.New("client left")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// Every request gets one access-log line, whoever answered it: the
// 400, 421 and 431 gatehouse answers itself included, on every engine.
func TestAccessLogOwnAnswers(t *testing.T) {
	w := startPolicyWorld(t)
	big := strings.Repeat("b", 100<<10)
	// 70 KiB in fields of 5 KiB (HPACK bounds a string to the list
	// size), sent in one frame (x/net's framer ends the connection at a
	// CONTINUATION once the list is over its limit)
	var bigFields [][2]string
	for i := range 14 {
		bigFields = append(bigFields, [2]string{fmt.Sprintf("x-big-%d", i), big[:5<<10]})
	}
	for _, name := range policyNames {
		mark := func(p string) string { return "/own-" + strings.TrimSuffix(name, ".test") + "-" + p }
		t.Run(name+"/h1", func(t *testing.T) {
			if s, _ := w.h1(t, name, "GET "+mark("h1-421")+" HTTP/1.1\r\nHost: other.test\r\n\r\n"); s != 421 {
				t.Errorf("421 case: %d", s)
			}
			if s, _ := w.h1(t, name, "GET "+mark("h1-400")+" HTTP/1.1\r\nHost: "+name+":x\r\n\r\n"); s != 400 {
				t.Errorf("400 case: %d", s)
			}
			c, br := w.dialH1(t, name)
			go func() {
				_, _ = io.WriteString(c, "GET "+mark("h1-431")+" HTTP/1.1\r\nHost: "+name+"\r\nX-Big: "+big+"\r\n\r\n")
			}()
			if res, _ := readResp(t, br, false); res.StatusCode != 431 {
				t.Errorf("431 case: %d", res.StatusCode)
			}
		})
		t.Run(name+"/h2", func(t *testing.T) {
			h := w.dialH2(t, name)
			if res := h.request(get("other.test", mark("h2-421")), nil, nil); res.status != 421 {
				t.Errorf("421 case: %+v", res)
			}
			if res := h.request(get(name+":x", mark("h2-400")), nil, nil); res.status != 400 {
				t.Errorf("400 case: %+v", res)
			}
			h.frame = 1 << 20 // the server's SETTINGS_MAX_FRAME_SIZE (both servers)
			if res := h.request(get(name, mark("h2-431"), bigFields...), nil, nil); res.status != 431 {
				t.Errorf("431 case: %+v", res)
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.Count(w.log.String(), "msg=access") < 6*len(policyNames)-2 {
		time.Sleep(20 * time.Millisecond)
	}
	logs := w.log.String()
	for _, name := range policyNames {
		short := strings.TrimSuffix(name, ".test")
		for _, c := range []struct{ p, status string }{{"h1-421", "421"}, {"h2-421", "421"}, {"h1-400", "400"}, {"h2-400", "400"}, {"h1-431", "431"}, {"h2-431", "431"}} {
			path := "/own-" + short + "-" + c.p
			n := 0
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, "msg=access") && strings.Contains(line, "route="+name) && strings.Contains(line, "status="+c.status) &&
					(strings.Contains(line, "path="+path+" ") || c.p == "h1-431" || c.p == "h2-431") {
					n++
				}
			}
			if n == 0 {
				t.Errorf("%s %s: no access-log line with status %s", name, path, c.status)
			}
		}
	}
}

// The plain-HTTP listener builds its 308 from the Host: a forged one
// is refused, not redirected to.
func TestPlainRedirectHost(t *testing.T) {
	cfg := &routes.Config{Routes: []routes.Route{{Hosts: []string{"*"}, Upstream: "http://127.0.0.1:1"}}}
	cfg.ApplyDefaults()
	s := New(Options{Certs: fixedCerts{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	serveTest(t, s, cfg, true)
	_, plain := s.Addrs()
	for host, want := range map[string]string{
		"app.test":               "https://app.test:",
		"app.test,evil.example":  "",
		"app.test:,evil.example": "",
		"evil.example;app.test":  "",
	} {
		c, err := net.DialTimeout("tcp", plain.String(), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		res, _ := roundTrip(t, c, bufio.NewReader(c), "GET /p HTTP/1.1\r\nHost: "+host+"\r\n\r\n", false)
		c.Close()
		switch {
		case want == "" && res.StatusCode != 400:
			t.Errorf("Host %q: %d Location %q, want 400", host, res.StatusCode, res.Header.Get("Location"))
		case want != "" && (res.StatusCode != 308 || !strings.HasPrefix(res.Header.Get("Location"), want)):
			t.Errorf("Host %q: %d Location %q, want 308 to %s", host, res.StatusCode, res.Header.Get("Location"), want)
		}
	}
}
