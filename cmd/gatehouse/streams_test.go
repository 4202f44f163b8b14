package main

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
)

// tcp mode: TLS terminated by gatehouse, plaintext piped to a raw TCP
// upstream, half-closes passed on both ways, the client's own ALPN
// protocol negotiated.
func TestTCPMode(t *testing.T) {
	m := newManualEnv(t)
	db := tcpUpstream(t)
	banner := bannerUpstream(t)
	m.write("", m.route("db.test", db, `mode = "tcp"`+"\n"+`alpn = ["postgresql"]`)+
		m.route("raw.test", db, `mode = "tcp"`)+
		m.route("banner.test", banner.addr, `mode = "tcp"`))
	m.run()

	t.Run("client offering postgresql negotiates it", func(t *testing.T) {
		c, err := dialTLSConfig(m.httpsAddr(), &tls.Config{ServerName: "db.test", RootCAs: m.roots, NextProtos: []string{"postgresql"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if p := c.ConnectionState().NegotiatedProtocol; p != "postgresql" {
			t.Errorf("negotiated %q, want postgresql", p)
		}
		if err := newLineConn(c).roundTrip("SELECT 1;", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("route without alpn accepts any protocol", func(t *testing.T) {
		for _, protos := range [][]string{{"postgresql"}, {"redis", "h2"}, nil} {
			c, err := dialTLSConfig(m.httpsAddr(), &tls.Config{ServerName: "raw.test", RootCAs: m.roots, NextProtos: protos})
			if err != nil {
				t.Fatalf("offering %v: %v", protos, err)
			}
			if p := c.ConnectionState().NegotiatedProtocol; p != "" {
				t.Errorf("offering %v: negotiated %q, want none", protos, p)
			}
			if err := newLineConn(c).roundTrip("ping", 5*time.Second); err != nil {
				t.Errorf("offering %v: %v", protos, err)
			}
			c.Close()
		}
	})

	t.Run("client half-close reaches the upstream, its answer comes back", func(t *testing.T) {
		c, err := dialTLSConfig(m.httpsAddr(), &tls.Config{ServerName: "db.test", RootCAs: m.roots, NextProtos: []string{"postgresql"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		lc := newLineConn(c)
		if err := lc.roundTrip("COPY 12345", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(lc.r) // ends at EOF: the upstream's close came through
		if err != nil {
			t.Fatalf("after half-close: %v (read %q)", err, rest)
		}
		if want := "summary: 11 bytes\n"; string(rest) != want {
			t.Errorf("after half-close got %q, want %q", rest, want)
		}
	})

	t.Run("upstream half-close reaches the client, the client can still send", func(t *testing.T) {
		c, err := dialTLSConfig(m.httpsAddr(), &tls.Config{ServerName: "banner.test", RootCAs: m.roots})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c) // the banner, then EOF from the upstream's CloseWrite
		if err != nil || string(got) != "banner\n" {
			t.Fatalf("read %q, %v; want the banner then EOF", got, err)
		}
		if _, err := io.WriteString(c, "late words"); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-banner.got:
			if r != "late words" {
				t.Errorf("upstream received %q after its half-close, want %q", r, "late words")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("upstream did not get the client's bytes and EOF after its own half-close")
		}
	})
}

// bannerServer writes a banner, half-closes, then reports what it reads
// until the client's EOF.
type bannerServer struct {
	addr string
	got  chan string
}

func bannerUpstream(t testing.TB) *bannerServer {
	b := &bannerServer{got: make(chan string, 4)}
	b.addr = serveTCP(t, 30*time.Second, func(c net.Conn) {
		io.WriteString(c, "banner\n")
		c.(*net.TCPConn).CloseWrite()
		data, err := io.ReadAll(c)
		if err != nil {
			data = []byte("error: " + err.Error())
		}
		b.got <- string(data)
	})
	return b
}

// passthrough: gatehouse routes by SNI without terminating; the
// upstream holds its own certificate, and Go's default client (with a
// post-quantum key share, so a ClientHello over 1.2 KB) verifies it.
// The hello arrives intact however the client cuts it up.
func TestPassthrough(t *testing.T) {
	m := newManualEnv(t)
	up := tlsEchoUpstream(t, "pt.test")
	m.write("handshake = \"3s\"\n", m.route("web.test", upstream(t, "W").URL, "")+
		fmt.Sprintf("\n[[route]]\nhosts = [\"pt.test\"]\nupstream = %q\nmode = \"passthrough\"\n", up.addr))
	m.run()

	cases := []struct {
		name  string
		wrap  func(net.Conn) net.Conn
		multi bool
	}{
		{"one write", func(c net.Conn) net.Conn { return c }, false},
		{"100-byte TCP segments with pauses", func(c net.Conn) net.Conn { return &chunkConn{Conn: c, size: 100, pause: 5 * time.Millisecond} }, false},
		{"hello split over 5 TLS records", func(c net.Conn) net.Conn { return &recordSplitConn{Conn: c, parts: 5} }, true},
		{"5 records, sent in 100-byte segments", func(c net.Conn) net.Conn {
			return &recordSplitConn{Conn: &chunkConn{Conn: c, size: 100, pause: 5 * time.Millisecond}, parts: 5}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.DialTimeout("tcp", m.httpsAddr(), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			rec := &sentConn{Conn: raw} // what goes on the wire
			// Go's default client config, only the name and the upstream's root set
			c := tls.Client(tc.wrap(rec), &tls.Config{ServerName: "pt.test", RootCAs: up.ca.Pool()})
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := c.Handshake(); err != nil {
				t.Fatalf("handshake through passthrough: %v", err)
			}
			st := c.ConnectionState()
			if st.CurveID != tls.X25519MLKEM768 {
				t.Errorf("key exchange %v, want X25519MLKEM768 (the large post-quantum hello)", st.CurveID)
			}
			if cn := st.PeerCertificates[0].DNSNames; len(cn) == 0 || cn[0] != "pt.test" || st.PeerCertificates[0].Issuer.CommonName != "passthrough upstream root" {
				t.Errorf("served %v from %q: want the upstream's own certificate", cn, st.PeerCertificates[0].Issuer.CommonName)
			}
			lc := newLineConn(c)
			if err := lc.roundTrip("through", 5*time.Second); err != nil {
				t.Fatal(err)
			}
			hello := rec.first()
			got := up.hello()
			helloLen := helloBytes(hello)
			if helloLen < 1200 {
				t.Errorf("ClientHello is %d bytes, want the >1.2 KB post-quantum one", helloLen)
			}
			if !bytes.Equal(got, hello) {
				t.Errorf("upstream received a ClientHello of %d bytes that differs from the %d the client sent", len(got), len(hello))
			}
			if tc.multi && records(got) < 2 {
				t.Errorf("the hello arrived in %d record(s), want several", records(got))
			}
			t.Logf("ClientHello: %d handshake bytes in %d record(s), forwarded intact", helloLen, records(got))
		})
	}
}

// tlsEchoUpstream is a TLS server with its own CA and certificate for
// name; it echoes lines, and records the first bytes of each connection
// (the ClientHello as it reached it).
type tlsEcho struct {
	addr   string
	ca     *acmetest.TestCA
	mu     sync.Mutex
	hellos [][]byte
}

func tlsEchoUpstream(t testing.TB, name string) *tlsEcho {
	ca, err := acmetest.NewTestCA("passthrough upstream root")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{name}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	t.Cleanup(func() { ln.Close() })
	u := &tlsEcho{addr: ln.Addr().String(), ca: ca}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				rc := &recvConn{Conn: c}
				tc := tls.Server(rc, cfg)
				defer tc.Close()
				_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
				if err := tc.Handshake(); err != nil {
					return
				}
				u.mu.Lock()
				u.hellos = append(u.hellos, rc.helloRecords())
				u.mu.Unlock()
				_, _ = io.Copy(tc, tc)
			}()
		}
	}()
	return u
}

// hello returns the last ClientHello the upstream received.
func (u *tlsEcho) hello() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.hellos) == 0 {
		return nil
	}
	return u.hellos[len(u.hellos)-1]
}

// recvConn records what a server reads.
type recvConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *recvConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.buf.Len() < 256<<10 {
		c.buf.Write(p[:n])
	}
	return n, err
}

// helloRecords returns the leading handshake records of what was read:
// the ClientHello, however many records it spans.
func (c *recvConn) helloRecords() []byte { return leadingHello(c.buf.Bytes()) }

// sentConn records what a client writes.
type sentConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *sentConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.buf.Len() < 256<<10 {
		c.buf.Write(p)
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *sentConn) first() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return leadingHello(c.buf.Bytes())
}

// leadingHello returns the TLS records of b up to and including the one
// that completes the first handshake message (the ClientHello).
func leadingHello(b []byte) []byte {
	var hs []byte
	off := 0
	for off+5 <= len(b) && b[off] == 22 {
		n := int(binary.BigEndian.Uint16(b[off+3:]))
		if off+5+n > len(b) {
			break
		}
		hs = append(hs, b[off+5:off+5+n]...)
		off += 5 + n
		if len(hs) >= 4 && len(hs) >= 4+(int(hs[1])<<16|int(hs[2])<<8|int(hs[3])) {
			return b[:off]
		}
	}
	return b[:off]
}

// helloBytes is the size of the handshake message the records carry.
func helloBytes(recs []byte) int {
	n := 0
	for off := 0; off+5 <= len(recs); {
		l := int(binary.BigEndian.Uint16(recs[off+3:]))
		n += l
		off += 5 + l
	}
	return n
}

func records(recs []byte) int {
	n := 0
	for off := 0; off+5 <= len(recs); n++ {
		off += 5 + int(binary.BigEndian.Uint16(recs[off+3:]))
	}
	return n
}

// chunkConn sends each write in size-byte pieces with a pause between
// them, so the peer reads a ClientHello across many TCP segments.
type chunkConn struct {
	net.Conn
	size  int
	pause time.Duration
	n     int
}

func (c *chunkConn) Write(p []byte) (int, error) {
	if c.n > 2 { // the handshake's first flights only
		return c.Conn.Write(p)
	}
	c.n++
	written := 0
	for len(p) > 0 {
		k := min(c.size, len(p))
		n, err := c.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
		time.Sleep(c.pause)
	}
	return written, nil
}

// recordSplitConn re-frames the client's first write (the ClientHello
// record) as parts records: the handshake message is the same, so the
// transcript and the handshake are unchanged, but a reader must join
// records to see the whole hello. crypto/tls never splits one itself.
type recordSplitConn struct {
	net.Conn
	parts int
	done  bool
}

func (c *recordSplitConn) Write(p []byte) (int, error) {
	if c.done || len(p) < 5 || p[0] != 22 {
		return c.Conn.Write(p)
	}
	c.done = true
	n := int(binary.BigEndian.Uint16(p[3:]))
	if 5+n != len(p) {
		return 0, errors.New("recordSplitConn: first write is not exactly one record")
	}
	body := p[5:]
	step := (len(body) + c.parts - 1) / c.parts
	var out []byte
	for len(body) > 0 {
		k := min(step, len(body))
		out = append(out, 22, p[1], p[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
