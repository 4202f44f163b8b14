package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	proxyproto "github.com/pires/go-proxyproto"
)

// maxHelloBytes bounds how much a ClientHello peek reads. A ClientHello
// with post-quantum key shares is ~1.2 KB; a TLS record is at most
// 16 KiB plus header, and a hello may span several records.
const maxHelloBytes = 64 << 10

// Hello is what gatehouse needs from a ClientHello to route it.
type Hello struct {
	ServerName string   // lower case, as crypto/tls gives it; the inner name when ECH was decrypted
	ALPN       []string // protocols the client offers
	// ECHOffered: the hello carried an encrypted_client_hello extension
	// (a real one or a client's GREASE). Outer is then the outer
	// hello's (public) name; ServerName differs from it when gatehouse
	// decrypted the inner hello.
	ECHOffered bool
	Outer      string
}

// errHelloDone stops crypto/tls right after it parsed the ClientHello.
var errHelloDone = errors.New("clienthello read")

// peekHello reads a ClientHello from conn without consuming it: the
// bytes read are returned so they can be replayed to crypto/tls or to a
// passthrough upstream. Parsing is done by crypto/tls itself (the
// parser that will do the real handshake), stopped at
// GetConfigForClient, so a hello split across records and TCP segments
// is handled exactly as the real handshake will handle it.
//
// The read is bounded in size here (maxHelloBytes) and in time by the
// deadline the caller set on conn.
//
// echKeys, when not nil, gives the Encrypted Client Hello keys: a hello
// encrypted to one of them is decrypted here as it will be in the real
// handshake, so the route is the inner (real) name's. prefix holds bytes
// already read from conn (by the accept loop), read before conn's.
func peekHello(conn net.Conn, prefix []byte, echKeys func() []tls.EncryptedClientHelloKey) (Hello, []byte, error) {
	rec := &recordingConn{Conn: conn, pending: prefix}
	var h Hello
	var got bool
	cfg := &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			h.ServerName = chi.ServerName
			h.ALPN = slices.Clone(chi.SupportedProtos)
			got = true
			return nil, errHelloDone
		},
	}
	if echKeys != nil {
		cfg.GetEncryptedClientHelloKeys = func(chi *tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error) {
			h.ECHOffered, h.Outer = true, chi.ServerName
			return echKeys(), nil
		}
	}
	err := tls.Server(rec, cfg).Handshake()
	if got {
		return h, rec.all(), nil
	}
	if rec.readErr != nil {
		return h, rec.all(), fmt.Errorf("reading ClientHello: %w", rec.readErr)
	}
	return h, rec.all(), fmt.Errorf("not a TLS ClientHello: %w", err)
}

// recordingConn keeps every byte read and refuses writes, so the
// parsing handshake can neither answer the client nor lose its bytes.
type recordingConn struct {
	net.Conn
	pending []byte // read before Conn (peekHello's prefix)
	buf     bytes.Buffer
	readErr error
}

// all returns every byte read from the connection: those crypto/tls
// read, then any of the prefix it did not.
func (c *recordingConn) all() []byte {
	if len(c.pending) == 0 {
		return c.buf.Bytes()
	}
	return append(c.buf.Bytes(), c.pending...)
}

var errTooBig = errors.New("ClientHello larger than 64 KiB")

func (c *recordingConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.buf.Write(p[:n])
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.buf.Len() >= maxHelloBytes {
		c.readErr = errTooBig
		return 0, errTooBig
	}
	if room := maxHelloBytes - c.buf.Len(); len(p) > room {
		p = p[:room]
	}
	n, err := c.Conn.Read(p)
	c.buf.Write(p[:n])
	if err != nil {
		c.readErr = err
	}
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) { return 0, io.ErrClosedPipe }

// replayConn replays peeked bytes before reading from the connection.
// It also carries the connection's route, which GetCertificate and the
// HTTP handler read back (through tls.Conn.NetConn) instead of looking
// the name up again in a table a reload may have replaced since.
type replayConn struct {
	net.Conn
	pending []byte
	route   *routeState
	snap    *snapshot // the config the route was looked up in
	hello   Hello
	pin     atomic.Pointer[pinnedPool] // proxy_protocol http routes: this client's upstream pool
	upLimit upLimit                    // HTTP/2, HTTP/3: upstream exchanges held at once (policy_limits.go)
	fwdUp   atomic.Pointer[fwdInfo]    // HTTP/3: the forwarding fields for the last Host (fwdCached)
	h3idle  *h3IdleWatch               // HTTP/3: closes the connection when no request is in the pipeline

	// onClose runs once when the connection closes, for connections
	// tracked in the stream set after an HTTP/1.1 upgrade (engine_h1.go tunnel).
	onClose   atomic.Pointer[func()]
	closeOnce sync.Once

	active     prometheus.Gauge // the open-connections gauge of its mode, once counted
	activeDone atomic.Bool

	// gathering (gather): TLS records written while on are sent two
	// at a time. wmu orders them with a write from another goroutine
	// (crypto/tls's close_notify) and the flush.
	wmu      sync.Mutex
	gathered *[]byte
	raw      syscall.RawConn // the TCP socket's, for gathered writes (engine_rawio_linux.go); nil: through Conn
	rawTried bool
	// rawRead: set before the HTTP/1.1 loop reads (serveH1), the TCP
	// socket's, read through rawReader and written through rawWrite;
	// nil: through Conn
	rawRead syscall.RawConn
}

// maxRecordPayload is a TLS record's largest plaintext (RFC 8446 §5.1).
const maxRecordPayload = 16 << 10

// gatherBuf holds two full TLS records with room for their overhead
// (RFC 8446 §5.2: at most 256 bytes of expansion, 5 of header).
const gatherBuf = 2 * (maxRecordPayload + 256 + 5)

var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, gatherBuf); return &b }}

// gather turns write gathering on or off. crypto/tls writes every
// record (at most 16 KiB of plaintext) with its own write syscall; a
// 64 KiB response piece is four. While on, records are copied into a
// buffer and sent two at a time (one write of ~32 KiB instead of two
// of 16 KiB): on loopback the kernel's cost per byte written was 25%
// lower for 32 KiB writes than for 16 KiB ones, while 64 KiB writes
// cost more than either (bench/README.md, bulk). Turning it off sends
// what is gathered, so nothing is held past the write that asked for
// it: the send timeout (the write deadline) applies as before. The
// buffer is lent only while on.
func (c *replayConn) gather(on bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if on {
		if c.gathered == nil {
			c.gathered = gatherBufs.Get().(*[]byte)
		}
		if !c.rawTried {
			c.raw, c.rawTried = rawConnOf(c.Conn), true
		}
		return nil
	}
	bp := c.gathered
	if bp == nil {
		return nil
	}
	c.gathered = nil
	var err error
	if len(*bp) > 0 {
		_, err = c.send(*bp)
	}
	*bp = (*bp)[:0]
	gatherBufs.Put(bp)
	return err
}

// Write sends p, or gathers it (see gather).
func (c *replayConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bp := c.gathered
	if bp == nil {
		if c.rawRead != nil {
			return rawWrite(c.rawRead, p)
		}
		return c.Conn.Write(p)
	}
	b := *bp
	if len(b)+len(p) > cap(b) && len(b) > 0 {
		_, err := c.send(b)
		*bp = b[:0]
		if err != nil {
			return 0, err
		}
		b = b[:0]
	}
	if len(p) > cap(b) {
		return c.send(p)
	}
	*bp = append(b, p...)
	return len(p), nil
}

// send writes gathered records: raw on a plain TCP socket.
func (c *replayConn) send(b []byte) (int, error) {
	if c.raw != nil {
		return rawWrite(c.raw, b)
	}
	return c.Conn.Write(b)
}

// countActive counts c in its mode's open-connections gauge until Close.
func (c *replayConn) countActive(mode string) {
	c.active = activeConns[mode]
	c.active.Inc()
}

// Close closes the connection, and the upstream connections pinned to
// it for a proxy_protocol route.
func (c *replayConn) Close() error {
	if p := c.pin.Swap(pinClosed); p != nil && p != pinClosed {
		p.close()
	}
	err := c.Conn.Close()
	if c.active != nil && c.activeDone.CompareAndSwap(false, true) {
		c.active.Dec()
	}
	if f := c.onClose.Load(); f != nil {
		c.closeOnce.Do(*f)
	}
	return err
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if c.rawRead != nil {
		return rawReader{c.rawRead}.Read(p)
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying TCP connection, so tcp-mode
// pipes can pass a client's end-of-stream on.
func (c *replayConn) CloseWrite() error {
	conn := c.Conn
	if pc, ok := conn.(*proxyproto.Conn); ok {
		conn = pc.Raw()
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
