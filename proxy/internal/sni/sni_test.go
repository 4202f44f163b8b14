package sni

import (
	"bytes"
	"crypto/tls"
	"errors"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"io"
	"net"
	"testing"
	"time"
)

var errStop = errors.New("hello read")

// tlsName is the server name crypto/tls's server reads from b (the
// reference): err when it does not get as far as a parsed ClientHello.
func tlsName(b []byte) (string, error) {
	var name string
	got := false
	c := tls.Server(&bytesConn{r: bytes.NewReader(b)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name, got = h.ServerName, true
			return nil, errStop
		},
	})
	err := c.Handshake()
	if got {
		return name, nil
	}
	return "", err
}

// FromHello finds the name crypto/tls would find, or leaves the hello
// to crypto/tls: never another name.
func TestFromHello(t *testing.T) {
	hello := testkit.ClientHello(t, "a.example")
	if name, ok := FromHello(hello); !ok || string(name) != "a.example" {
		t.Fatalf("whole hello: %q %v", name, ok)
	}
	for i := 0; i < len(hello); i++ {
		if _, ok := FromHello(hello[:i]); ok {
			t.Fatalf("hello cut at %d of %d: ok, want it left to crypto/tls", i, len(hello))
		}
	}
	var ech bytes.Buffer // an encrypted_client_hello extension (GREASE-like) appended
	ech.Write(hello)
	ext := []byte{0xfe, 0x0d, 0, 1, 1} // type inner: crypto/tls takes the hello as is
	grow := func(b []byte, at, by int, bytes int) {
		n := 0
		for i := 0; i < bytes; i++ {
			n = n<<8 | int(b[at+i])
		}
		n += by
		for i := bytes - 1; i >= 0; i-- {
			b[at+i] = byte(n)
			n >>= 8
		}
	}
	b := append(ech.Bytes(), ext...)
	grow(b, 3, len(ext), 2) // record length
	grow(b, 6, len(ext), 3) // handshake length
	// the extensions' length is the last two bytes before the first extension: find it by parsing
	h := b[9+2+32:]
	h, _ = skipVec(h, 1)
	h, _ = skipVec(h, 2)
	h, _ = skipVec(h, 1)
	grow(h, 0, len(ext), 2)
	if _, ok := FromHello(b); ok {
		t.Error("hello with encrypted_client_hello: ok, want it left to crypto/tls (the inner name may be routed)")
	}
	if name, err := tlsName(b); err != nil || name != "a.example" {
		t.Errorf("the edited hello does not parse in crypto/tls: %q %v", name, err)
	}
}

// FuzzHelloSNI: whatever the bytes, FromHello names no other name than
// crypto/tls's parse of the same bytes.
func FuzzHelloSNI(f *testing.F) {
	f.Add(testkit.ClientHello(f, "a.example"))
	f.Add(testkit.ClientHello(f, "x.test"))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, ok := FromHello(b)
		if !ok {
			return
		}
		if ref, err := tlsName(b); err == nil && ref != string(name) {
			t.Fatalf("FromHello %q, crypto/tls %q", name, ref)
		}
	})
}

// bytesConn is a net.Conn that reads r, then EOF.
type bytesConn struct {
	net.Conn
	r io.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return 0, io.ErrClosedPipe }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
