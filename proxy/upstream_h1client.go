package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// gatehouse's own HTTP/1.1 client for http:// and https:// upstreams,
// used in place of net/http's Transport by the HTTP/1.1 fast path
// (engine_h1.go), the HTTP/2 server and the HTTP/3 handler (upstream_from_h2.go, upstream_from_h3.go:
// they fill an h1wire.RequestHead from pseudo-headers and fields, and share
// exchangeUp, upstream_exchange.go). It speaks over TCP, or
// over TLS to an https:// upstream (dialUp; tlsQuiet for what a TLS
// connection may receive while idle). One exchange, as engine_h1.go's proxy
// and relay do it:
//
//	up := rs.bal.pick(skip)                    // balancing and health (upstream_balance.go)
//	up.active.Add(1)                           // least_conn weight, until done
//	uc, err := up.pool.get(rs, up)             // pooled, or dialed (*dialError: try another)
//	fwd.set(clientAddr, req.Host)              // X-Forwarded-*/Forwarded, cached per client
//	head := appendUpstreamHead(buf, req, &fwd, bodyLen) // hop-by-hop removed, one buffer
//	err = uc.write(head)                       // one write (with a small body appended)
//	resp, err := uc.readHead(deadline)         // parsed into uc.resp, fields alias uc.br
//	uc.body.Init(resp.BodyKind(isHEAD))        // framing of what follows (h1wire.BodyFramer)
//	data, err := uc.body.Next(&uc.br)          // body bytes available now, no copy;
//	                                           // (nil, nil) and !uc.body.Done: uc.noDeadline(); uc.br.Fill()
//	uc.done(reusable)                          // back to the pool (no unread bytes), or closed
//	up.active.Add(-1)
//
// A readHead error with uc.reused && uc.gotNothing() is a pooled
// connection the upstream had closed: an idempotent request without a
// streamed body may be retried once on a new one (dialUp).
// The Transport cost two goroutines per upstream connection (its read
// and write loops), a channel hand-off each way per request and ~80
// allocations (35% of HTTP/1.1 CPU in the bench's profile); here the
// request's own goroutine writes the request and reads the response,
// and the parsed head lives in reused buffers.

// idleTimeout closes an upstream connection idle this long (as the
// Transport's IdleConnTimeout did); maxIdlePerAddr bounds the pool.
const (
	upIdleTimeout  = 90 * time.Second
	maxIdlePerAddr = 256
)

// upPool is the idle connections to one upstream address, shared by
// every route that forwards there (one pool per address, as routes
// shared a Transport before: a route per name must not mean an idle
// connection per name).
type upPool struct {
	key upPoolKey
	// tls: an https:// upstream's client config (nil: plain TCP). Its
	// session cache is the pool's, so reconnects resume the session.
	tls  *tls.Config
	mu   sync.Mutex
	idle []*upConn // most recently used last
	refs int
	// sweeping: a timer is set to close expired idle connections
	sweeping bool
	arming   bool // an arm is scheduled (watchDelay after the oldest unwatched put)
	closed   bool
}

// watchDelay is how long a pooled connection stays idle before it is put
// under the idle watch (upstream_idlewatch_linux.go). Under load a connection is
// taken again within milliseconds; registering it with epoll and
// removing it again cost two epoll_ctl calls per exchange, 7% of the
// HTTP/2 engine's CPU (bench/README.md). At 2 ms the connections at the
// bottom of the pool's stack, taken as the number of streams in flight
// swings, still cost 4%; at 100 ms epoll_ctl is gone from the profile
// of the HTTP/2 bench (16 connections × 16 streams). A connection taken
// sooner is checked at its reuse (quiet) as every one is; one idle
// longer is watched, and bytes that came before it was — level-triggered
// — close it as soon as it is. Either way no stray byte becomes a
// response.
const watchDelay = 100 * time.Millisecond

// upPoolKey is what routes must have in common to share connections:
// the address, and for https:// the CA file the upstream is verified
// with (a connection verified against one route's upstream_ca must not
// serve a route that trusts only the system roots, or another CA).
type upPoolKey struct {
	addr string // host:port
	tls  bool   // https://
	ca   string // upstream_ca ("": the system roots)
}

func upPoolKeyOf(u routes.Upstream, ca string) upPoolKey {
	if u.Scheme != "https" {
		return upPoolKey{addr: u.Host}
	}
	return upPoolKey{addr: u.Host, tls: true, ca: ca}
}

var upPools struct {
	sync.Mutex
	m map[upPoolKey]*upPool
}

// acquireUpPool returns the shared pool for k, counted until
// releaseUpPool. roots verifies an https:// upstream (nil: the system
// roots); a pool made before for the same key keeps its own.
func acquireUpPool(k upPoolKey, roots *x509.CertPool) *upPool {
	upPools.Lock()
	defer upPools.Unlock()
	if p, ok := upPools.m[k]; ok {
		p.refs++
		return p
	}
	if upPools.m == nil {
		upPools.m = map[upPoolKey]*upPool{}
	}
	p := &upPool{key: k, refs: 1}
	if k.tls {
		host, _, err := net.SplitHostPort(k.addr)
		if err != nil {
			host = k.addr
		}
		// as the Transport had it: SNI and verification use the
		// upstream URL's host; HTTP/1.1 only (as nginx speaks to
		// https:// upstreams), so WebSocket upgrades work
		p.tls = &tls.Config{
			ServerName:         host,
			RootCAs:            roots,
			MinVersion:         tls.VersionTLS12,
			NextProtos:         []string{"http/1.1"},
			ClientSessionCache: tls.NewLRUClientSessionCache(0),
		}
	}
	upPools.m[k] = p
	return p
}

// loadCA reads an upstream_ca file into a pool.
func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("upstream_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("upstream_ca %s: no PEM certificate", file)
	}
	return pool, nil
}

// releaseUpPool drops a route's use; the last one out closes the idle
// connections (ones in use finish and are closed when returned).
func releaseUpPool(p *upPool) {
	upPools.Lock()
	p.refs--
	last := p.refs == 0
	if last {
		delete(upPools.m, p.key)
	}
	upPools.Unlock()
	if last {
		p.mu.Lock()
		p.closed = true
		idle := p.idle
		p.idle = nil
		p.mu.Unlock()
		for _, c := range idle {
			c.close()
		}
	}
}

// upConn is one connection to an upstream.
type upConn struct {
	nc       net.Conn    // what exchanges read and write: raw, or tc over it
	rr       sendReader  // plain TCP: reads and writes without the runtime's syscall bookkeeping (engine_rawio_linux.go); rr.rc nil otherwise
	raw      net.Conn    // the TCP connection (its socket is what the idle watch sees)
	tc       *tls.Conn   // https:// upstreams; nil: plain TCP
	pool     *upPool     // nil: pinned to a client connection (PROXY protocol), never pooled
	pin      *pinnedPool // pinned, for HTTP/2 streams: kept there between exchanges
	up       *upstream
	br       h1wire.BufReader
	resp     h1wire.ResponseHead
	body     h1wire.BodyFramer
	reused   bool // it served a request before (it may have been closed by the upstream meanwhile)
	idleFrom time.Time
	deadline bool // a read deadline is set (the response header timeout)
	// cut: the client side ended the exchange (Interrupt): the deadline
	// is in the past and stays there — a deadline readHead or noDeadline
	// sets after the interrupt must not undo it
	cut atomic.Bool

	// per exchange, reset by done
	recv    bool // a byte of a response came in this exchange
	garbled bool // the first response head of this exchange was malformed
	n1xx    int  // informational heads read in this exchange

	// While idle the connection is watched (upstream_idlewatch_linux.go): watch
	// is watchID then, 0 while in use, watchDead once the watcher (or a
	// failed watch) closed it. watchID and fd belong to the owner.
	watch   atomic.Uint64
	watchID uint64
	fd      int // the socket's descriptor, -1 until looked up
}

// watchDead marks a connection closed while idle.
const watchDead = ^uint64(0)

// unsolicitedClosed counts upstream connections closed for bytes no
// request asked for: idle ones the watch found readable (stray bytes,
// or the upstream closing them), and ones whose stray bytes came in the
// same read as the response they followed.
var unsolicitedClosed atomic.Int64

// max1xx bounds the informational (1xx) heads an upstream may send
// before its final answer: each restarts the response header timer, so
// without a bound an upstream could hold the exchange forever. Go's
// transport had the same bound (max1xxResponses, before it bounded the
// heads' total size instead).
const max1xx = 5

var errTooMany1xx = errors.New("upstream sent more than 5 informational (1xx) responses")

// upWriteError is a failed write of a request (head or body) to the
// upstream: the upstream may have answered already and closed (an
// early response, relayed when it came whole).
type upWriteError struct{ err error }

func (e *upWriteError) Error() string { return "writing the request upstream: " + e.err.Error() }
func (e *upWriteError) Unwrap() error { return e.err }

// noDeadline clears the response header timeout before reading a body,
// which may take as long as the upstream streams. Left set while the
// whole response came with its head, it costs no timer update.
func (c *upConn) noDeadline() {
	if c.deadline {
		_ = c.nc.SetReadDeadline(time.Time{})
		c.deadline = false
		c.keepCut()
	}
}

// Interrupt breaks off the exchange on c at once: its client went away
// (an HTTP/2 stream reset, an HTTP/3 request canceled). It may run on
// another goroutine than the exchange's.
func (c *upConn) Interrupt() {
	c.cut.Store(true)
	_ = c.nc.SetDeadline(time.Unix(1, 0))
}

// keepCut puts the past deadline back after the exchange set one of
// its own: an Interrupt that came in between is not lost (the exchange
// then waited for an upstream answer that may never come).
func (c *upConn) keepCut() {
	if c.cut.Load() {
		_ = c.nc.SetDeadline(time.Unix(1, 0))
	}
}

// get returns an idle connection to the pool's address, or dials one
// (a failure is a *dialError: nothing was sent, another upstream may
// be tried).
func (p *upPool) get(rs *routeState, up *upstream) (*upConn, error) {
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		// every reuse is checked: the watcher may not have seen bytes
		// that came just now
		if c.take() {
			// (time.Since reads only the monotonic clock: half a time.Now)
			if time.Since(c.idleFrom) < upIdleTimeout && c.quiet() {
				c.up = up
				c.reused = true
				return c, nil
			}
			c.close()
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return dialUp(rs, up, p, nil)
}

// remove drops c from the idle list (the watcher closed it).
func (p *upPool) remove(c *upConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.idle {
		if x == c {
			copy(p.idle[i:], p.idle[i+1:])
			p.idle[len(p.idle)-1] = nil
			p.idle = p.idle[:len(p.idle)-1]
			return
		}
	}
}

// reuse checks a connection kept for a client (pinned) before its next
// exchange, as get checks a pooled one.
func (c *upConn) reuse() bool {
	if !c.take() || !c.quiet() {
		return false
	}
	c.reused = true
	return true
}

// quiet reports whether an idle upstream connection is still open and
// silent: a connection idle a while may have been closed by the
// upstream's keep-alive timeout, and a request written to it would be
// lost; bytes on it are nobody's answer. Over TLS, bytes may also be a
// post-handshake message (a TLS 1.3 session ticket or key update,
// RFC 8446 4.6) sent after the last response: crypto/tls consumes
// those, and only application data (or the connection's end) counts.
func (c *upConn) quiet() bool {
	var st idleState
	if c.rr.rc != nil {
		st = peekRaw(c.rr.rc) // plain TCP: the RawConn kept since the dial
	} else {
		st = peekIdle(c.raw)
	}
	switch st {
	case idleSilent:
		return true
	case idleClosed:
		return false
	}
	if c.tc == nil {
		return false
	}
	c.deadline = true // tlsQuiet leaves a read deadline set
	if ok, _ := c.tlsQuiet(time.Millisecond); !ok {
		return false
	}
	// the wait may have passed before the socket was read (a busy
	// machine): whatever is still there is not vouched for
	return peekIdle(c.raw) == idleSilent
}

// idleState is what a peek at an idle connection's socket found (one
// byte: the peek's closure captures it, and a tiny heap object it is).
type idleState uint8

const (
	idleSilent idleState = iota // nothing to read
	idleBytes                   // bytes are waiting
	idleClosed                  // the peer closed it, or it failed
)

// peekIdle looks at an idle connection's socket: one non-blocking
// MSG_PEEK recv. Through Control, not Read: Go's poller would report a
// past read deadline (tlsQuiet leaves one) without trying the socket.
func peekIdle(nc net.Conn) idleState {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return idleSilent
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return idleClosed
	}
	return peekRaw(raw)
}

// peekRaw is peekIdle with the socket's RawConn at hand.
func peekRaw(raw syscall.RawConn) idleState {
	o := peekOps.Get().(*peekOp)
	o.state = idleClosed
	_ = raw.Control(o.fn)
	state := o.state
	peekOps.Put(o)
	return state
}

// peekOp is one peek's result, with its Control callback made once (a
// closure per peek, capturing the result, cost two heap allocations
// per reuse).
type peekOp struct {
	state idleState
	fn    func(fd uintptr)
}

var peekOps = sync.Pool{New: func() any {
	o := new(peekOp)
	o.fn = o.peek
	return o
}}

func (o *peekOp) peek(fd uintptr) {
	n, err := peekByte(fd)
	switch {
	case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
		o.state = idleSilent
	case err == nil && n > 0:
		o.state = idleBytes
	}
}

// tlsQuiet reads what has come on an idle TLS connection through
// crypto/tls: post-handshake messages (session tickets, key updates)
// are consumed there and yield no data, so the read ends at its
// deadline (ok); application data is bytes nobody asked for (stray);
// an error (close_notify, EOF, a bad record) ends the connection.
// wait 0 reads only what crypto/tls has buffered already: records
// read from the socket together with the response's last bytes (a
// past deadline, and the socket is not touched). Else the socket is
// read until wait has passed. A read deadline stays set (the next
// exchange sets its own, or clears it: deadline is true while idle).
func (c *upConn) tlsQuiet(wait time.Duration) (ok, stray bool) {
	dl := time.Unix(1, 0)
	if wait > 0 {
		dl = time.Now().Add(wait)
	}
	_ = c.tc.SetReadDeadline(dl)
	var b [1]byte
	n, err := c.tc.Read(b[:])
	if n > 0 {
		return false, true
	}
	return errors.Is(err, os.ErrDeadlineExceeded), false
}

// dialUp dials up with the route's dial timeout; before, if set, writes
// to the TCP connection first (a PROXY header). An https:// upstream's
// TLS handshake follows, bounded by the dial timeout too (as the
// Transport's TLSHandshakeTimeout was). Any failure is a *dialError:
// no request byte was sent, another upstream may be tried.
func dialUp(rs *routeState, up *upstream, p *upPool, before func(net.Conn) error) (*upConn, error) {
	nc, err := rs.dialer.Dial("tcp", up.Host)
	if err != nil {
		return nil, &dialError{err}
	}
	if before != nil {
		if err := before(nc); err != nil {
			nc.Close()
			return nil, &dialError{err}
		}
	}
	uc := &upConn{nc: nc, raw: nc, pool: p, up: up, fd: -1}
	if cfg := up.pool.tls; cfg != nil {
		tc := tls.Client(nc, cfg)
		if rs.dial > 0 {
			_ = nc.SetDeadline(time.Now().Add(rs.dial))
		}
		err := tc.Handshake()
		_ = nc.SetDeadline(time.Time{})
		if err != nil {
			nc.Close()
			return nil, &dialError{fmt.Errorf("TLS handshake with %s: %w", cfg.ServerName, err)}
		}
		uc.nc, uc.tc = tc, tc
	} else {
		uc.rr.rc = rawConnOf(nc)
	}
	return uc, nil
}

// put returns c to the idle pool (it must have no unread bytes).
func (p *upPool) put(c *upConn) {
	c.br.Release()
	c.idleFrom = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdlePerAddr {
		p.mu.Unlock()
		c.close()
		return
	}
	p.idle = append(p.idle, c)
	if !p.arming {
		p.arming = true
		time.AfterFunc(watchDelay, p.arm)
	}
	if !p.sweeping {
		p.sweeping = true
		time.AfterFunc(upIdleTimeout, p.sweep)
	}
	p.mu.Unlock()
}

// arm puts the connections idle for watchDelay under the idle watch,
// and runs again while younger unwatched ones are left. It works under
// p.mu: a connection in the idle list is not in use (get pops it under
// the same lock before it takes it).
func (p *upPool) arm() {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	next := time.Duration(-1)
	keep := p.idle[:0]
	for _, c := range p.idle {
		if c.watchID == 0 && c.watch.Load() != watchDead {
			if age := now.Sub(c.idleFrom); age < watchDelay {
				if wait := watchDelay - age; next < 0 || wait < next {
					next = wait
				}
			} else if !c.watchIdle() {
				continue // could not be watched: closed
			}
		}
		keep = append(keep, c)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if next >= 0 && !p.closed {
		time.AfterFunc(next, p.arm)
	} else {
		p.arming = false
	}
}

// sweep closes connections idle past the timeout, and runs again while
// any is left.
func (p *upPool) sweep() {
	now := time.Now()
	p.mu.Lock()
	var expired []*upConn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if now.Sub(c.idleFrom) >= upIdleTimeout {
			expired = append(expired, c)
		} else {
			keep = append(keep, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if len(p.idle) > 0 && !p.closed {
		next := upIdleTimeout - now.Sub(p.idle[0].idleFrom)
		time.AfterFunc(max(next, time.Second), p.sweep)
	} else {
		p.sweeping = false
	}
	p.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

// idleCount is the number of idle connections (tests).
func (p *upPool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// done ends c's use for one exchange: back to its pool when the
// exchange left it clean and reusable, else closed.
// A response that ended by its framing (HEAD, 204, 304, a
// Content-Length reached) with more bytes already read behind it is
// from an upstream that sends what nobody asked for: closed, not kept.
func (c *upConn) done(reusable bool) {
	c.recv, c.garbled, c.n1xx = false, false, 0
	c.rr.send = nil // a request deferred to a read that never came is not sent later
	if reusable && c.tc != nil && c.br.Buffered() == 0 {
		// crypto/tls may hold records read from the socket with the
		// response's last bytes: the socket is quiet then, and the
		// watch would never see them
		c.deadline = true
		if ok, stray := c.tlsQuiet(0); !ok {
			if stray {
				unsolicitedClosed.Add(1)
			}
			c.close()
			return
		}
	}
	if reusable && c.pool != nil && c.br.Buffered() == 0 {
		c.pool.put(c)
		return
	}
	if reusable && c.pool == nil && c.br.Buffered() == 0 {
		c.br.Release() // pinned: kept by its client connection, watched
		c.idleFrom = time.Now()
		if c.watchIdle() && c.pin != nil {
			c.pin.putOwn(c)
		}
		return
	}
	if reusable {
		// bytes past the end of a complete response came in the same
		// read as it: the stray, caught before the connection went idle
		unsolicitedClosed.Add(1)
	}
	c.close()
}

// close closes c (idle or not).
func (c *upConn) close() {
	c.take()
	c.br.Release()
	c.nc.Close()
}

// write sends b (a request head, maybe with its body) in one write.
func (c *upConn) write(b []byte) error {
	var err error
	if c.rr.rc != nil {
		_, err = rawWrite(c.rr.rc, b)
	} else {
		_, err = c.nc.Write(b)
	}
	if err != nil {
		return &upWriteError{err}
	}
	return nil
}

// writeWithRead has the next readHead write b (the whole request) just
// before it reads, in one call to the runtime (sendReader): one read
// syscall per exchange instead of two. Plain TCP only, with nothing
// buffered (readHead reads at once); false: write b with write.
// A failed write is readHead's *upWriteError.
func (c *upConn) writeWithRead(b []byte) bool {
	if c.rr.rc == nil || c.br.Buffered() > 0 {
		return false
	}
	c.rr.writeFirst(b)
	return true
}

// readHead reads and parses a response head from c, until deadline
// (zero: none). Informational (1xx) heads are returned like any other.
func (c *upConn) readHead(deadline time.Time) (*h1wire.ResponseHead, error) {
	if !c.br.Held() {
		c.br.Src = c.nc
		if c.rr.rc != nil {
			c.br.Src = &c.rr
		}
		c.br.Take(&buffers)
	}
	if !deadline.IsZero() {
		_ = c.nc.SetReadDeadline(deadline)
		c.deadline = true // cleared by noDeadline before a body read
		c.keepCut()
	} else {
		c.noDeadline()
	}
	scan := 0
	for {
		end, next, err := h1wire.HeadEnd(c.br.Buf[c.br.R:c.br.W], scan)
		if err != nil {
			return nil, h1wire.ErrBadResponse
		}
		if end > 0 {
			h := &c.resp
			if err := h.Parse(c.br.Buf[c.br.R : c.br.R+end]); err != nil {
				c.garbled = c.n1xx == 0
				return nil, err
			}
			c.br.R += end
			if h.Status < 200 && h.Status != 101 {
				if c.n1xx++; c.n1xx > max1xx {
					return nil, errTooMany1xx
				}
			}
			return h, nil
		}
		scan = next // relative to br.r, which fill's compaction keeps
		if err := c.br.Fill(); err != nil {
			if err == h1wire.ErrBufFull {
				c.garbled = c.n1xx == 0
				return nil, errors.New("upstream response head larger than 32 KiB")
			}
			return nil, err
		}
		c.recv = true
	}
}

// gotNothing reports whether a failed readHead got no byte at all in
// this exchange: the signature of a pooled connection the upstream had
// already closed. (Not the buffer's fill level: reading past a 1xx head
// empties it, though the upstream had answered.)
func (c *upConn) gotNothing() bool { return !c.recv }

// retryable reports whether a failed exchange on c may be tried once
// more on a new connection, for a request that is safe to send again:
// a reused connection that the upstream had closed (no byte came), or
// whose first bytes were no response head at all — left over from the
// exchange before (an upstream that sent a body after a HEAD, 204 or
// 304 head just after the watch's last look), not an answer to this
// request.
func (c *upConn) retryable() bool { return c.reused && (!c.recv || c.garbled) }

// fwdInfo is what the Forwarded and X-Forwarded-* fields say about a
// client connection: computed once per connection (and host).
type fwdInfo struct {
	clientIP  string // "" when the address has no IP
	forwarded []byte // the Forwarded value for host
	host      []byte // the host forwarded was built for
}

// set computes the fields for a request with Host host from a client
// at remote, as route.go's rewrite/forwardedValue do for net/http.
func (f *fwdInfo) set(remote string, host []byte) {
	if f.forwarded != nil && bytes.Equal(f.host, host) {
		return
	}
	ip, _, err := net.SplitHostPort(remote)
	if err != nil {
		ip = ""
	}
	f.clientIP = ip
	f.host = append(f.host[:0], host...)
	b := f.forwarded[:0]
	b = append(b, "for="...)
	switch {
	case ip == "":
		b = append(b, "unknown"...)
	case strings.IndexByte(ip, ':') >= 0:
		b = append(b, `"[`...)
		b = append(b, ip...)
		b = append(b, `]"`...)
	default:
		b = append(b, ip...)
	}
	if len(host) > 0 {
		b = append(b, ";host="...)
		if isToken(string(host)) {
			b = append(b, host...)
		} else {
			b = strconv.AppendQuote(b, string(host))
		}
	}
	b = append(b, ";proto=https"...)
	f.forwarded = b
}

// isReqHop reports whether a request field is not forwarded as is:
// hop-by-hop fields (RFC 9110 7.6.1, and those net/http's reverse proxy
// drops), the framing and Host (written by gatehouse), and forwarding
// fields a client could forge (set by gatehouse). Names are compared
// with "_" read as "-" (eqFoldU): X_Forwarded_For is dropped too.
func isReqHop(name []byte, conn [][]byte) bool {
	switch len(name) {
	case 2:
		if eqFoldU(name, "te") {
			return true
		}
	case 4:
		if eqFoldU(name, "host") {
			return true
		}
	case 7:
		if eqFoldU(name, "upgrade") || eqFoldU(name, "trailer") {
			return true
		}
	case 9:
		if eqFoldU(name, "forwarded") {
			return true
		}
	case 10:
		if eqFoldU(name, "connection") || eqFoldU(name, "keep-alive") {
			return true
		}
	case 14:
		if eqFoldU(name, "content-length") {
			return true
		}
	case 15:
		if eqFoldU(name, "x-forwarded-for") {
			return true
		}
	case 16:
		if eqFoldU(name, "x-forwarded-host") || eqFoldU(name, "proxy-connection") {
			return true
		}
	case 17:
		if eqFoldU(name, "transfer-encoding") || eqFoldU(name, "x-forwarded-proto") {
			return true
		}
	case 18:
		if eqFoldU(name, "proxy-authenticate") {
			return true
		}
	case 19:
		if eqFoldU(name, "proxy-authorization") {
			return true
		}
	}
	return namedIn(name, conn)
}

// namedIn reports whether a Connection field named this field.
func namedIn(name []byte, conn [][]byte) bool {
	for _, t := range conn {
		if bytes.EqualFold(t, name) {
			return true
		}
	}
	return false
}

// isRespHop: response fields gatehouse does not pass on as is (hop by
// hop, framing it writes itself). Trailer is kept when the body stays
// chunked (the trailers it announces follow).
func isRespHop(name []byte, conn [][]byte, keepTrailer bool) bool {
	switch len(name) {
	case 2:
		if h1wire.EqFold(name, "te") {
			return true
		}
	case 7:
		if h1wire.EqFold(name, "upgrade") || !keepTrailer && h1wire.EqFold(name, "trailer") {
			return true
		}
	case 10:
		if h1wire.EqFold(name, "connection") || h1wire.EqFold(name, "keep-alive") {
			return true
		}
	case 14:
		if h1wire.EqFold(name, "content-length") {
			return true
		}
	case 16:
		if h1wire.EqFold(name, "proxy-connection") {
			return true
		}
	case 17:
		if h1wire.EqFold(name, "transfer-encoding") {
			return true
		}
	case 18:
		if h1wire.EqFold(name, "proxy-authenticate") {
			return true
		}
	case 19:
		if h1wire.EqFold(name, "proxy-authorization") {
			return true
		}
	}
	return namedIn(name, conn)
}

// forEachTrailer calls fn with each end-to-end field of a chunked body's
// trailer section as received (h1wire.BodyFramer.Trailers), name and
// value trimmed; malformed lines and fields of a single connection
// (isRespHop) are skipped.
func forEachTrailer(t []byte, fn func(name, value []byte)) {
	h1wire.ForEachTrailer(t, func(name, value []byte) {
		if !isRespHop(name, nil, false) {
			fn(name, value)
		}
	})
}

// appendUpstreamHead appends the request head sent upstream for req:
// HTTP/1.1, the client's Host, its end-to-end fields, X-Forwarded-For,
// -Host, -Proto and Forwarded from fwd, and the framing of a body of
// bodyLen bytes (-1: chunked; 0: none unless the client sent a
// Content-Length of 0).
func appendUpstreamHead(dst []byte, req *h1wire.RequestHead, fwd *fwdInfo, bodyLen int64) []byte {
	dst = h1wire.AppendRequestLine(dst, req.Method, req.Target)
	dst = h1wire.AppendField(dst, "Host", req.Host)
	te := false
	var upgrade []byte
	for _, f := range req.Fields {
		if isReqHop(f.Name, req.Conn) {
			switch {
			case h1wire.EqFold(f.Name, "te"):
				h1wire.ForEachToken(f.Value, func(tok []byte) {
					if h1wire.EqFold(tok, "trailers") {
						te = true
					}
				})
			case req.Upgrade && h1wire.EqFold(f.Name, "upgrade"):
				upgrade = f.Value
			}
			continue
		}
		dst = h1wire.AppendField(dst, f.Name, f.Value)
	}
	if te {
		dst = h1wire.AppendField(dst, "Te", "trailers")
	}
	if upgrade != nil {
		dst = h1wire.AppendField(dst, "Connection", "Upgrade")
		dst = h1wire.AppendField(dst, "Upgrade", upgrade)
	}
	if fwd.clientIP != "" {
		dst = h1wire.AppendField(dst, "X-Forwarded-For", fwd.clientIP)
	}
	dst = h1wire.AppendField(dst, "X-Forwarded-Host", req.Host)
	dst = h1wire.AppendField(dst, "X-Forwarded-Proto", "https")
	dst = h1wire.AppendField(dst, "Forwarded", fwd.forwarded)
	switch {
	case bodyLen < 0:
		dst = h1wire.AppendChunkedField(dst)
	case bodyLen > 0 || req.ContentLength == 0:
		dst = h1wire.AppendContentLength(dst, bodyLen)
	}
	return h1wire.AppendEndOfHead(dst)
}
