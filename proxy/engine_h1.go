package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/httpfield"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// gatehouse's HTTP/1.1 server: a serve loop of its own for every TLS
// connection that negotiated HTTP/1.1 (or no ALPN) on an http route.
// Requests of routes whose upstreams are all http:// or https://
// (rs.fast, nativeUpstreams) take the fast path below, through the own
// HTTP/1.1 client over TCP or TLS (upstream_h1client.go); the others (h2c://)
// are exchanged through the route's RoundTrip (engine_h1_roundtrip.go), with the same
// policy and the same response writer.
//
// Why: net/http + httputil.ReverseProxy + http.Transport spent 2.45×
// nginx's CPU per keep-alive request (bench/README.md): ~80 allocations,
// two goroutines and channel hand-offs per upstream connection, header
// maps cloned per request, 4.9 reads per request; and an idle
// keep-alive connection kept 8 KB of bufio buffers. Here one goroutine
// per client connection reads a request into a pooled buffer, parses it
// strictly into a reused struct, writes it upstream in one write on a
// pooled connection (upstream_h1client.go), and relays the response, in one
// client write when it is small. Between requests the connection holds
// no buffer: it waits in a 1-byte read.

// nativeUpstreams reports whether a route's requests go through the
// own HTTP/1.1 client (upstream_h1client.go, over TCP or TLS), on every engine
// (engine_h1.go, upstream_from_h2.go, upstream_from_h3.go): an http route whose upstreams are all http:// or
// https://. Requests of every other http route (h2c://) go through the
// route's RoundTrip (net/http's Transport, upstream_balance.go): engine_h1_roundtrip.go,
// engine_h2.go. It is the one place that decides; routeState.fast holds
// its answer.
func nativeUpstreams(e *routes.Entry) bool {
	if e.Mode() != routes.ModeHTTP || len(e.Upstreams) == 0 {
		return false
	}
	for _, u := range e.Upstreams {
		if u.Scheme != "http" && u.Scheme != "https" {
			return false
		}
	}
	return true
}

// h1conn states, for graceful shutdown: an idle connection (waiting
// for a request's first byte) is closed at once, an active one when its
// request is done.
const (
	h1Active int32 = iota
	h1Idle
	h1Closed
)

// h1conn is one client connection on the fast path.
type h1conn struct {
	s     *Server
	tc    *tls.Conn
	rc    *replayConn
	state atomic.Int32

	br   h1wire.BufReader // pooled while a request is read; nil buffer when idle
	tiny [1]byte          // the idle wait reads into this, not into a buffer
	req  h1wire.RequestHead
	fwd  fwdInfo
	outp *[]byte // pooled output buffer (upstream head, client response)

	remote      string
	tlsName     string
	hostBuf     []byte      // canonical Host of the last checked request
	hostRS      *routeState // the route hostBuf was accepted for
	lastSnap    *snapshot   // routeFor cache after a reload
	lastRS      *routeState
	lastClose   bool
	pinned      *upConn // proxy_protocol routes: this client's own upstream connection
	ident       []byte  // the request's method then target, copied for log lines
	identMethod int
	idleEnd     time.Time // while idle: when the idle timeout closes the connection
	waited      bool      // waitThenLoop has waited for readability (waitErr: how it ended)
	waitErr     error
	upgraded    bool // handed over to a WebSocket pipe

	sendTO  time.Duration // [timeouts] send of the request being served
	writeDL time.Time     // the write deadline last set (see write)

	// for requests exchanged through RoundTrip (engine_h1_roundtrip.go), made on the first
	tlsState *tls.ConnectionState
	xff      []string                  // X-Forwarded-For: the client's IP
	fwdRT    atomic.Pointer[fwdFields] // forwardRequest's cache
}

// write sends b to the client within [timeouts] send of no progress:
// a client that stops reading the response is cut off, and the
// upstream connection its exchange holds is released. The deadline
// is moved only when a quarter of it has passed, so a response of
// many writes sets it a few times, not once per write; each write
// then has at least three quarters of send to make progress.
func (c *h1conn) write(b []byte) (int, error) {
	now := time.Now()
	if c.writeDL.Sub(now) < c.sendTO-c.sendTO/4 {
		c.writeDL = now.Add(c.sendTO)
		_ = c.tc.SetWriteDeadline(c.writeDL)
	}
	if len(b) <= maxRecordPayload || c.rc == nil {
		return c.tc.Write(b)
	}
	// more than one TLS record: crypto/tls writes each record with its
	// own syscall; gathered, two go out in one (rc.gather)
	c.rc.gather(true)
	n, err := c.tc.Write(b)
	if ferr := c.rc.gather(false); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}

// serveH1 serves tc on the fast path until it closes.
func (s *Server) serveH1(tc *tls.Conn, rc *replayConn) {
	c := &h1conn{s: s, tc: tc, rc: rc, remote: rc.RemoteAddr().String()}
	// the client's socket is read without the runtime's syscall
	// bookkeeping from here on (engine_rawio_linux.go)
	rc.rawRead = rawConnOf(rc.Conn)
	c.br.Src = tc
	if !s.h1.add(c) {
		tc.Close()
		return
	}
	c.loop()
}

// loop serves requests until the connection ends, or hands the
// connection to a new goroutine once it has been idle for
// idleHandoff.
func (c *h1conn) loop() {
	for {
		switch c.serveOne() {
		case h1Next:
		case h1Handoff:
			// what a request grew goes too; the next one regrows it
			c.req.Fields, c.req.Conn = nil, nil
			go c.waitThenLoop()
			return
		default:
			c.br.Release()
			if c.pinned != nil {
				c.pinned.close()
			}
			if !c.upgraded {
				c.tc.Close()
			}
			c.s.h1.remove(c) // last: a drain waiting for it finds it all closed
			return
		}
	}
}

// waitThenLoop is a handed-off connection's goroutine: it waits for
// the client's next bytes first, in frames of its own, and only then
// enters loop. serveOne's frame alone is larger than a new goroutine's
// 2 KiB stack: waiting under it doubled the stack every idle
// connection keeps (4.3 KiB measured, 2,000 idle connections).
func (c *h1conn) waitThenLoop() {
	_ = c.tc.SetReadDeadline(c.idleEnd)
	if handoffPause > 0 {
		time.Sleep(handoffPause)
	}
	c.waitErr = c.waitReadable()
	c.waited = true
	c.loop()
}

// waitReadable blocks until the client's socket has bytes (or its
// read deadline passes), without reading them.
func (c *h1conn) waitReadable() error {
	tcp, ok := c.rc.Conn.(*net.TCPConn)
	if !ok {
		return nil // PROXY-protocol connections may buffer: read through them
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return err
	}
	first := true
	return raw.Read(func(fd uintptr) bool {
		if !first {
			return true // woken: readable (or the deadline, which Read reports)
		}
		first = false
		// RawConn.Read forgets a readiness the poller noted before it
		// began, and the poller is edge-triggered: bytes that arrived
		// since the last read (while the connection changed goroutine)
		// would not wake the wait. Look at the socket first.
		for {
			_, err := peekByte(fd)
			if err == syscall.EINTR {
				continue
			}
			return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
		}
	})
}

// handoffPause delays a handed-off connection's wait (tests only: the
// client's next request then arrives before the wait begins).
var handoffPause time.Duration

// watchEvery is how often a request waiting on its upstream (for the
// response head, or for more of a streamed body) checks that its
// client is still connected: a long poll or an event stream whose
// client left is given up within about this long, as net/http's
// request context did, instead of holding the upstream connection
// until the upstream next writes.
const watchEvery = time.Second

var errClientLeft = errors.New("client closed the connection while waiting for the upstream")

// readHead reads the upstream's response head until limit, checking
// the client every watchEvery.
func (c *h1conn) readHead(uc *upConn, limit time.Time) (*h1wire.ResponseHead, error) {
	for {
		d := time.Now().Add(watchEvery)
		if limit.Before(d) {
			d = limit
		}
		resp, err := uc.readHead(d)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(limit) {
			return resp, err
		}
		if c.clientGone() {
			return nil, errClientLeft
		}
	}
}

// clientGone reports whether the client has closed or broken the
// connection. It reads what the client sent meanwhile into the
// request's buffer, behind the bytes not yet consumed (a pipelined
// request stays there for later), waiting at most a millisecond: a
// socket-level peek cannot tell TLS 1.3's close_notify from data.
func (c *h1conn) clientGone() bool {
	if !c.br.Held() || c.br.W == len(c.br.Buf) {
		return false // nothing to read into: assume it is there
	}
	_ = c.tc.SetReadDeadline(time.Now().Add(time.Millisecond))
	n, err := c.tc.Read(c.br.Buf[c.br.W:])
	c.br.W += n
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// What serveOne tells loop.
const (
	h1Next    = iota // serve the next request
	h1Done           // the connection is over
	h1Handoff        // idle: continue on a fresh goroutine
)

// idleHandoff is how long a connection waits for its next request on
// the goroutine that served the last one. Serving a request (and the
// handshake before the first) grows a goroutine's stack to 8 KiB, and
// the runtime does not shrink a stack in use, so an idle keep-alive
// connection would keep it for as long as it stays open: after this
// long it continues on a new goroutine, whose stack is 2 KiB while it
// waits (the old one's goes back to the runtime). A busy connection
// never waits this long and pays nothing; one that does pays a
// goroutine start and a stack regrowth, a few µs. 100 ms, not longer:
// the stacks of connections that opened within the last idleHandoff are
// all held at once, and the memory the runtime got for them is not
// given back soon (bench idle, 5,000 connections: 1 s gave 13.9 KiB of
// RSS per connection, 100 ms 12.0).
const idleHandoff = 100 * time.Millisecond

func (c *h1conn) out() []byte {
	if c.outp == nil {
		c.outp = h1wire.GetBuf(&smallBufs)
	}
	return (*c.outp)[:0]
}

// keepOut returns the output buffer (possibly grown) to its pool.
func (c *h1conn) putOut(ob []byte) {
	if c.outp == nil {
		return
	}
	if cap(ob) <= maxKept && cap(ob) >= smallBuf {
		*c.outp = ob[:0]
	}
	h1wire.PutBuf(&smallBufs, c.outp)
	c.outp = nil
}

// serveOne reads and serves one request (h1Next), or ends the
// connection (h1Done), or hands it over while idle (h1Handoff).
func (c *h1conn) serveOne() int {
	snap := c.s.state.Load()
	c.sendTO = snap.tm.send
	if c.br.Buffered() == 0 {
		c.br.Release()
		c.state.Store(h1Idle)
		if c.s.closed.Load() {
			return h1Done
		}
		now := time.Now()
		wait := c.idleEnd
		if wait.IsZero() {
			// the first wait since a request: a handoff after idleHandoff
			c.idleEnd = now.Add(snap.tm.idle)
			wait = c.idleEnd
			if snap.tm.idle > 2*idleHandoff {
				wait = now.Add(idleHandoff)
			}
		}
		_ = c.tc.SetReadDeadline(wait)
		if !wait.Before(c.idleEnd) {
			// handed off: wait on the socket itself, a shallow stack
			// (the TLS read's call chain would double it); crypto/tls
			// holds no whole record now, or the last read had returned it
			err := c.waitErr
			if !c.waited {
				err = c.waitReadable()
			}
			c.waited, c.waitErr = false, nil
			if err != nil {
				return h1Done
			}
		}
		n, err := c.tc.Read(c.tiny[:])
		if n == 0 && wait.Before(c.idleEnd) && errors.Is(err, os.ErrDeadlineExceeded) && c.state.Load() == h1Idle {
			return h1Handoff // c.idleEnd stays: the next wait runs to it
		}
		c.idleEnd = time.Time{}
		if !c.state.CompareAndSwap(h1Idle, h1Active) || n == 0 {
			return h1Done
		}
		c.br.Take(&smallBufs)
		c.br.Buf[0] = c.tiny[0]
		c.br.W = 1
		// the config of now, not of when the wait began: a reload
		// while the connection was idle applies to this request
		snap = c.s.state.Load()
		c.sendTO = snap.tm.send
	}
	_ = c.tc.SetReadDeadline(time.Now().Add(snap.tm.readHeader))
	scan := 0
	var end int
	for {
		var err error
		end, scan, err = h1wire.HeadEnd(c.br.Buf[c.br.R:c.br.W], scan)
		if err != nil {
			c.req.Reset() // nothing of this request was parsed: log none of the last one's
			c.refuse(snap, err)
			return h1Done
		}
		if end > 0 {
			break
		}
		if c.br.Buffered() > maxHeaderBytes {
			c.req.Reset()
			c.refuse(snap, errHeadTooLarge)
			return h1Done
		}
		if err := c.br.Fill(); err != nil {
			if err != h1wire.ErrBufFull {
				return h1Done // closed, reset, or read_header ran out: net/http closes too
			}
			if len(c.br.Buf) >= largeBuf {
				c.req.Reset()
				c.refuse(snap, errHeadTooLarge)
				return h1Done
			}
			c.br.Grow(&largeBufs)
		}
	}
	began := time.Now()
	if err := c.req.Parse(c.br.Buf[c.br.R : c.br.R+end]); err != nil {
		c.refuse(snap, err)
		return h1Done
	}
	c.br.R += end
	// the parsed head aliases the read buffer, which a streamed body
	// reuses: what a log line names is copied now (defect: body bytes
	// logged as the method and path)
	c.ident = append(append(c.ident[:0], c.req.Method...), c.req.Target...)
	c.identMethod = len(c.req.Method)
	if !c.serveRequest(snap, began) {
		return h1Done
	}
	return h1Next
}

// refuse answers a request gatehouse will not forward, and the
// connection closes. The answer gets its access-log line, with what
// was parsed of the request that is well-formed (c.req holds this
// request's fields, or none: never the last request's).
func (c *h1conn) refuse(snap *snapshot, err error) {
	began := time.Now()
	status, msg := 400, err.Error()
	var pe *h1wire.ParseError
	if errors.As(err, &pe) {
		status = pe.Status
	}
	c.s.log.Debug("refusing HTTP/1.1 request", "sni", c.rc.hello.ServerName, "remote", c.remote, "status", status, "error", msg)
	var lg reqLog
	if c.s.access != nil {
		if h1wire.IsToken(c.req.Method) {
			lg.method = string(c.req.Method)
		}
		if h1wire.ValidTarget(c.req.Target) {
			lg.path = logPath(string(c.req.Target))
		}
		if validHost(c.req.Host) {
			lg.host = string(c.req.Host)
		}
		lg.proto = "HTTP/1.1"
	}
	ob := c.out()
	body := strconv.Itoa(status) + " " + statusText(status) + ": " + msg + "\n"
	ob = appendSimple(ob, status, body, true, "")
	_, _ = c.write(ob)
	c.putOut(ob)
	if c.s.access != nil {
		rs, _ := c.routeFor(snap)
		c.logAccess(rs, &exchange{status: status, bytes: int64(len(body))}, lg, began)
	}
	c.linger()
}

// Bounds of linger.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 256 << 10
)

// linger ends the sending side and reads (and drops) what the client
// is still sending, for a short while, before the connection is
// closed: closing with unread bytes makes the kernel send a reset,
// which can destroy the answer before the client reads it (a client
// still writing a 100 KiB header block would see "connection reset"
// instead of its 431). net/http waits the same 500 ms.
func (c *h1conn) linger() {
	_ = c.tc.CloseWrite()
	if !c.br.Held() {
		return
	}
	_ = c.tc.SetReadDeadline(time.Now().Add(lingerTime))
	for n := 0; n < lingerBytes; {
		m, err := c.tc.Read(c.br.Buf)
		n += m
		if err != nil {
			return
		}
	}
}

// lingerBodyTime bounds lingerBody, as nginx's lingering_time (30 s);
// a variable for tests.
var lingerBodyTime = 30 * time.Second

// lingerBody is linger after an answer to a request whose body is
// still coming (an upstream's early 413, a 502): like nginx's lingering
// close, the rest is read and dropped for as long as it keeps coming
// (each read within lingerTime), up to lingerBodyTime, so the client
// can finish sending and read the answer instead of meeting a reset.
func (c *h1conn) lingerBody() {
	_ = c.tc.CloseWrite()
	if !c.br.Held() {
		return
	}
	end := time.Now().Add(lingerBodyTime)
	for !c.s.closed.Load() {
		d := time.Now().Add(lingerTime)
		if d.After(end) {
			d = end
		}
		_ = c.tc.SetReadDeadline(d)
		if _, err := c.tc.Read(c.br.Buf); err != nil {
			return
		}
	}
}

func statusText(code int) string {
	switch code {
	case 400:
		return "Bad Request"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 417:
		return "Expectation Failed"
	case 421:
		return "Misdirected Request"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Error"
}

// appendSimple appends a complete plain-text response of gatehouse's own.
func appendSimple(ob []byte, status int, body string, close bool, hsts string) []byte {
	ob = h1wire.AppendStatus(ob, status, statusText(status))
	ob = h1wire.AppendField(ob, "Content-Type", "text/plain; charset=utf-8")
	ob = h1wire.AppendField(ob, "X-Content-Type-Options", "nosniff")
	ob = h1wire.AppendField(ob, "Date", httpfield.Date())
	if hsts != "" {
		ob = h1wire.AppendField(ob, "Strict-Transport-Security", hsts)
	}
	if close {
		ob = h1wire.AppendField(ob, "Connection", "close")
	}
	ob = h1wire.AppendContentLength(ob, int64(len(body)))
	ob = h1wire.AppendEndOfHead(ob)
	return append(ob, body...)
}

// routeFor is the route a request on c is served by. A request is the
// unit of routing in http mode: after a reload, the next request on a
// kept-alive connection follows the new config (a changed upstream
// takes effect at once, not when the client reconnects), while
// requests in flight and upgraded connections (WebSockets) stay on the
// route they started with. When the connection's name has no http
// route any more, this request is still served by the old route and
// the connection closes: it drains.
func (c *h1conn) routeFor(snap *snapshot) (*routeState, bool) {
	if snap == c.rc.snap {
		return c.rc.route, false
	}
	if snap == c.lastSnap {
		return c.lastRS, c.lastClose
	}
	rs, closeAfter := c.rc.route, true
	if cur := snap.lookup(c.rc.hello.ServerName); cur != nil && cur.mode == routes.ModeHTTP {
		rs, closeAfter = cur, false
	}
	c.lastSnap, c.lastRS, c.lastClose = snap, rs, closeAfter
	return rs, closeAfter
}

// hostOK is the 421 check (misdirectedHost, policy.go): the request's
// Host must be a name of the connection's route. The last accepted host is remembered, so a
// keep-alive connection pays the check once.
func (c *h1conn) hostOK(rs *routeState) bool {
	h := c.req.Host
	// routes.CanonicalHost without allocating: port and final dot off, lower case
	if i := lastColon(h); i >= 0 && h[len(h)-1] != ']' {
		h = h[:i]
	}
	if len(h) > 0 && h[len(h)-1] == '.' {
		h = h[:len(h)-1]
	}
	if c.hostRS == rs && lowerEq(h, c.hostBuf) {
		return true
	}
	canon := make([]byte, len(h))
	for i, ch := range h {
		if ch >= 'A' && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		canon[i] = ch
	}
	host := string(canon)
	if host != c.rc.hello.ServerName && !rs.serves(host) {
		return false
	}
	c.hostBuf, c.hostRS = canon, rs
	return true
}

func lastColon(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ':' {
			return i
		}
	}
	return -1
}

// lowerEq reports whether h lower-cased equals want (non-empty).
func lowerEq(h, want []byte) bool {
	if len(h) != len(want) || len(want) == 0 {
		return false
	}
	for i := range h {
		ch := h[i]
		if ch >= 'A' && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != want[i] {
			return false
		}
	}
	return true
}

// reqLog is what the access log needs from a request, taken before the
// body is read (the parsed head aliases the read buffer).
type reqLog struct {
	method, host, path, proto string
}

func (c *h1conn) logInfo() reqLog {
	proto := "HTTP/1.1"
	if c.req.Minor == 0 {
		proto = "HTTP/1.0"
	}
	return reqLog{method: string(c.req.Method), host: string(c.req.Host), path: logPath(string(c.req.Target)), proto: proto}
}

// logMethod and logTarget are the request's method and target as
// copied when its head was parsed: what warnings name, safe to log
// after the body has reused the read buffer.
func (c *h1conn) logMethod() string { return string(c.ident[:c.identMethod]) }
func (c *h1conn) logTarget() string { return string(c.ident[c.identMethod:]) }

// exchange is the state of one request through the fast path.
type exchange struct {
	rs         *routeState
	up         *upstream
	uc         *upConn
	head       bool // HEAD request
	closeAfter bool // the client connection closes after this response
	status     int  // sent to the client (0: none)
	bytes      int64
	bodyLeft   bool // the client's body was not read to its end
	sent100    bool
}

// serveRequest serves the request parsed into c.req.
func (c *h1conn) serveRequest(snap *snapshot, began time.Time) bool {
	rs, closeAfter := c.routeFor(snap)
	x := exchange{rs: rs, head: string(c.req.Method) == "HEAD",
		closeAfter: closeAfter || c.req.Close || c.s.closed.Load(),
		bodyLeft:   c.req.ContentLength > 0 || c.req.Chunked}
	var lg reqLog
	if c.s.access != nil {
		lg = c.logInfo()
	}
	ob := c.out()
	switch {
	case !c.hostOK(rs):
		rs.metrics.none[classOf(421)].Inc()
		x.status = 421
		body := "421 Misdirected Request: this connection was opened for " + c.rc.hello.ServerName + "\n"
		x.closeAfter = x.closeAfter || x.bodyLeft
		ob = appendSimple(ob, 421, body, x.closeAfter, "")
		x.bytes = int64(len(body))
		if _, err := c.write(ob); err != nil {
			x.closeAfter = true
		}
	case !rs.fast:
		ob = c.roundTrip(snap, &x, ob) // h2c://, https:// upstreams: engine_h1_roundtrip.go
	default:
		ob = c.proxy(snap, &x, ob)
	}
	c.putOut(ob)
	rs.metrics.observe(began, protoH1)
	if c.s.access != nil {
		c.logAccess(rs, &x, lg, began)
	}
	if x.bodyLeft {
		x.closeAfter = true
		if x.status != 0 && !c.upgraded {
			// answered before the body was all read (an early
			// response): closing with its bytes unread would reset the
			// connection, and the client might lose the answer
			c.lingerBody()
		}
	}
	return !x.closeAfter && !c.upgraded
}

func (c *h1conn) logAccess(rs *routeState, x *exchange, lg reqLog, began time.Time) {
	if c.tlsName == "" {
		c.tlsName = tls.VersionName(c.tc.ConnectionState().Version)
	}
	e := accessEntry{route: rs.name, sni: c.rc.hello.ServerName, client: c.remote, method: lg.method,
		host: lg.host, path: lg.path, proto: lg.proto, tls: c.tlsName, status: x.status, bytes: x.bytes, began: began}
	if x.up != nil {
		e.upstream = x.up.Raw
	}
	c.s.writeAccess(&e)
}

// idempotent methods may be retried on a fresh connection when a
// pooled one turned out closed before any response byte came back.
func idempotent(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// errClientBody marks a failure reading the client's request body.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string {
	return "reading the client's request body: " + e.err.Error()
}
func (e *clientBodyError) Unwrap() error { return e.err }

// getConn returns a connection to up for this client: its pinned one
// for a proxy_protocol route, else a pooled or new one.
func (c *h1conn) getConn(rs *routeState, up *upstream, fresh bool) (*upConn, error) {
	if rs.ppVersion == 0 {
		if fresh {
			return dialUp(rs, up, up.pool, nil)
		}
		return up.pool.get(rs, up)
	}
	if p := c.pinned; p != nil {
		if p.up == up && !fresh && p.reuse() {
			return p, nil
		}
		p.close()
		c.pinned = nil
	}
	uc, err := dialUp(rs, up, nil, func(nc net.Conn) error {
		return sendPROXY(nc, rs.ppVersion, c.rc.RemoteAddr(), c.rc.LocalAddr(), rs.dial)
	})
	if err != nil {
		return nil, err
	}
	c.pinned = uc
	return uc, nil
}

// release ends the exchange's use of its upstream connection.
func (c *h1conn) release(x *exchange, reusable bool) {
	uc := x.uc
	if uc == nil {
		return
	}
	x.uc = nil
	if uc.pool == nil && (!reusable || uc.br.Buffered() != 0) {
		c.pinned = nil
	}
	uc.done(reusable)
	x.up.active.Add(-1)
}

// proxy forwards c.req to an upstream of x.rs and relays the answer.
// ob is the (empty) output buffer; it is returned for the pool.
func (c *h1conn) proxy(snap *snapshot, x *exchange, ob []byte) []byte {
	rs := x.rs
	req := &c.req
	c.fwd.set(c.remote, req.Host)

	// the body goes in the head's write when it is all here already
	bodyLen := int64(0)
	inline := false
	switch {
	case req.Chunked:
		bodyLen = -1
	case req.ContentLength > 0:
		bodyLen = req.ContentLength
		inline = int64(c.br.Buffered()) >= bodyLen && bodyLen <= smallBuf
	}
	ob = appendUpstreamHead(ob, req, &c.fwd, bodyLen)
	if inline {
		ob = append(ob, c.br.Buf[c.br.R:c.br.R+int(bodyLen)]...)
		c.br.R += int(bodyLen)
		x.bodyLeft = false
	}
	headLen := len(ob)
	stream := x.bodyLeft                           // a body to stream after the head
	retryable := !stream && idempotent(req.Method) // on a stale pooled connection
	waitContinue := stream && req.Expect100

	var skip tried
	var lastErr error
	retried := false
	var resp *h1wire.ResponseHead
	for {
		up := rs.bal.pick(skip)
		if up == nil {
			if lastErr == nil {
				lastErr = errNoUpstream
			}
			return c.fail(x, ob[:0], lastErr)
		}
		x.up = up
		up.active.Add(1)
		uc, err := c.getConn(rs, up, retried)
		if err != nil {
			up.active.Add(-1)
			rs.upstreamFailed(up, err)
			lastErr = &upstreamError{up: up, err: err}
			skip.add(rs.bal.index(up))
			rs.log.Debug("upstream unreachable; trying another", "upstream", up.Raw, "error", err)
			continue
		}
		x.uc = uc
		err = uc.write(ob[:headLen])
		if err == nil && waitContinue {
			resp, err = c.awaitContinue(snap, x)
		}
		if err == nil && resp == nil && stream {
			ob, err = c.sendBody(snap, x, ob[:0])
		}
		if err == nil && resp == nil {
			resp, err = c.readHead(uc, time.Now().Add(snap.tm.respHeader))
		}
		if early := c.earlyResponse(snap, x, err); early != nil {
			resp, err = early, nil
		}
		if err == nil {
			break
		}
		if err == errClientLeft {
			err = &clientBodyError{err} // counted as canceled, no answer
		}
		var cbe *clientBodyError
		if errors.As(err, &cbe) {
			c.release(x, false)
			return c.clientBodyFailed(x, ob[:0], cbe)
		}
		if uc.retryable() && retryable && !retried {
			// a pooled connection the upstream had closed: once more on a new one
			c.release(x, false)
			retried = true
			rs.log.Debug("pooled upstream connection was closed; retrying on a new one", "upstream", up.Raw, "error", err)
			continue
		}
		c.release(x, false)
		rs.upstreamFailed(up, err)
		return c.fail(x, ob[:0], &upstreamError{up: up, err: err})
	}
	return c.relay(snap, x, resp, ob[:0])
}

// earlyResponse is the upstream's answer to a request it stopped
// reading (it answered, then closed before taking the whole body: a
// 413, a redirect, an auth failure): when writing the request failed
// and a response head can still be read, that response is relayed, as
// nginx does, instead of a 502; neither connection is reused after it.
func (c *h1conn) earlyResponse(snap *snapshot, x *exchange, err error) *h1wire.ResponseHead {
	var we *upWriteError
	if !errors.As(err, &we) {
		return nil
	}
	resp, rerr := c.readHead(x.uc, time.Now().Add(snap.tm.respHeader))
	if rerr != nil {
		return nil
	}
	resp.Close = true
	x.closeAfter = true
	return resp
}

// awaitContinue handles a client's Expect: 100-continue whose body has
// not been sent: the upstream has a second to answer 100 Continue (then
// the client is told to send) or a final status (then the body is
// never read, and the connection closes after). With no answer in
// time gatehouse sends 100 itself, as net/http's Transport did. It
// returns a final response head, or nil once the body may be sent.
func (c *h1conn) awaitContinue(snap *snapshot, x *exchange) (*h1wire.ResponseHead, error) {
	limit := time.Now().Add(snap.tm.respHeader)
	wait := time.Now().Add(time.Second)
	if limit.Before(wait) {
		wait = limit
	}
	resp, err := x.uc.readHead(wait)
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(limit):
		// no answer yet: let the client send
	case err != nil:
		return nil, err
	case resp.Status == 100:
	default:
		return resp, nil // a final answer without the body: relay decides
	}
	if c.req.Minor == 1 {
		x.sent100 = true
		if _, err := c.write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			return nil, &clientBodyError{err}
		}
	}
	return nil, nil
}

// sendBody streams the client's request body to the upstream, framed
// as the upstream head declared (Content-Length as is; chunked decoded
// strictly and re-encoded, so a malformed chunk never reaches the
// upstream as the start of another request).
func (c *h1conn) sendBody(snap *snapshot, x *exchange, ob []byte) ([]byte, error) {
	var f h1wire.BodyFramer
	if c.req.Chunked {
		f.Init(h1wire.BodyChunked, 0)
	} else {
		f.Init(h1wire.BodyLength, c.req.ContentLength)
	}
	uc := x.uc
	flush := func() error {
		if len(ob) == 0 {
			return nil
		}
		err := uc.write(ob)
		ob = ob[:0]
		return err
	}
	for {
		data, err := f.Next(&c.br)
		if err != nil {
			return ob, &clientBodyError{err}
		}
		if len(data) > 0 {
			if c.req.Chunked {
				ob = h1wire.AppendChunk(ob, data)
			} else {
				ob = append(ob, data...)
			}
			if len(ob) >= upBuf {
				if err := flush(); err != nil {
					return ob, err
				}
			}
			continue
		}
		if f.Done {
			x.bodyLeft = false
			if c.req.Chunked {
				ob = h1wire.AppendLastChunk(ob, nil)
			}
			return ob, flush()
		}
		if err := flush(); err != nil {
			return ob, err
		}
		// each wait for more body is bounded by [timeouts] client_body
		// (nginx's client_body_timeout): a client that sends the head
		// and then stalls does not hold the upstream connection
		_ = c.tc.SetReadDeadline(time.Now().Add(snap.tm.clientBody))
		if err := c.br.Fill(); err != nil {
			if err == h1wire.ErrBufFull {
				err = h1wire.ErrBadChunk
			}
			return ob, &clientBodyError{err}
		}
	}
}

// clientBodyFailed ends a request whose body could not be read: a
// malformed chunk gets 400, a client that went away nothing.
func (c *h1conn) clientBodyFailed(x *exchange, ob []byte, cbe *clientBodyError) []byte {
	x.closeAfter = true
	if errors.Is(cbe.err, os.ErrDeadlineExceeded) {
		// [timeouts] client_body ran out: 408, as nginx answers
		reqs := &x.rs.metrics.none
		if x.up != nil {
			reqs = &x.up.reqs
		}
		reqs[classOf(408)].Inc()
		x.status = 408
		body := "408 Request Timeout: the request body stopped arriving\n"
		x.bytes = int64(len(body))
		ob = appendSimple(ob, 408, body, true, "")
		_, _ = c.write(ob)
		x.rs.log.Debug("client request body timed out", "client", c.remote)
		return ob
	}
	if errors.Is(cbe.err, h1wire.ErrBadChunk) {
		x.rs.metrics.none[classOf(400)].Inc()
		x.status = 400
		body := "400 Bad Request: " + h1wire.ErrBadChunk.Error() + "\n"
		ob = appendSimple(ob, 400, body, true, "")
		_, _ = c.write(ob)
		return ob
	}
	reqs := &x.rs.metrics.none
	if x.up != nil {
		reqs = &x.up.reqs
	}
	reqs[classCanceled].Inc()
	x.rs.log.Debug("client canceled request", "path", c.logTarget(), "client", c.remote, "error", cbe.err)
	return ob
}

// fail answers a failed upstream exchange as proxyError does: 502, or
// 504 on a timeout, with a short body; the details go to the log.
func (c *h1conn) fail(x *exchange, ob []byte, err error) []byte {
	rs := x.rs
	var up *upstream
	var ue *upstreamError
	if errors.As(err, &ue) {
		up = ue.up
	}
	x.up = up
	reqs, addr := &rs.metrics.none, ""
	if up != nil {
		reqs, addr = &up.reqs, up.Raw
	}
	status, body := 502, "502 Bad Gateway: the upstream server is unavailable\n"
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		status, body = 504, "504 Gateway Timeout: the upstream server did not answer in time\n"
	}
	reqs[classOf(status)].Inc()
	if errors.Is(err, errNoUpstream) {
		rs.log.Debug("no healthy upstream", "method", c.logMethod(), "path", c.logTarget(), "client", c.remote)
	} else {
		rs.log.Warn("upstream request failed", "upstream", addr, "method", c.logMethod(), "path", c.logTarget(),
			"client", c.remote, "status", status, "error", err)
	}
	x.status = status
	x.bytes = int64(len(body))
	ob = appendSimple(ob, status, body, x.closeAfter || x.bodyLeft, rs.hsts)
	if _, err := c.write(ob); err != nil {
		x.closeAfter = true
	}
	return ob
}

// relay sends the upstream's response to the client: informational
// heads, then the final head with hop-by-hop fields removed and the
// framing the client can read, then the body as it arrives. A response
// that came whole with its head goes out in one write.
func (c *h1conn) relay(snap *snapshot, x *exchange, resp *h1wire.ResponseHead, ob []byte) []byte {
	uc, up := x.uc, x.up
	// 1xx before the final answer (101 is final here)
	for resp.Status < 200 && resp.Status != 101 {
		if c.req.Minor == 1 && !(resp.Status == 100 && x.sent100) {
			ob = c.appendRespHead(ob, x, resp, h1wire.BodyNone, false)
			if _, err := c.write(ob); err != nil {
				c.release(x, false)
				x.closeAfter = true
				return ob
			}
			ob = ob[:0]
			x.sent100 = x.sent100 || resp.Status == 100
		}
		var err error
		if resp, err = c.readHead(uc, time.Now().Add(snap.tm.respHeader)); err != nil {
			c.release(x, false)
			return c.fail(x, ob, &upstreamError{up: up, err: err})
		}
	}
	up.succeeded()
	up.reqs[classOf(resp.Status)].Inc()
	x.status = resp.Status
	if resp.Status == 101 {
		if !c.req.Upgrade {
			c.release(x, false)
			return c.fail(x, ob, &upstreamError{up: up, err: errors.New("101 Switching Protocols to a request without Upgrade")})
		}
		return c.upgrade(x, resp, ob)
	}
	if x.bodyLeft {
		// a final answer before the body was sent (Expect: 100-continue):
		// the upstream did not read it, so neither connection can be reused
		x.closeAfter = true
		resp.Close = true
	}

	kind, n := resp.BodyKind(x.head)
	uc.body.Init(kind, n)
	chunked := false
	if kind == h1wire.BodyChunked || kind == h1wire.BodyClose {
		if c.req.Minor == 1 {
			chunked = true
		} else {
			x.closeAfter = true // HTTP/1.0: the end of the body is the close
		}
	}
	ob = c.appendRespHead(ob, x, resp, kind, chunked)
	if kind == h1wire.BodyLength && n >= bulkMin && len(uc.br.Buf) < bulkBuf {
		// a large body is read in larger pieces: half the reads per
		// MiB, and each write to the client carries four full TLS
		// records (bench/README.md, bulk). Only now: the head's fields
		// point into the old buffer. The buffer goes back to its pool
		// with the exchange, like the smaller one.
		uc.br.Grow(&bulkBufs)
	}

	for {
		data, err := uc.body.Next(&uc.br)
		if err != nil {
			x.rs.log.Warn("upstream sent a malformed body; response truncated", "upstream", up.Raw, "error", err)
			return c.abort(x, ob)
		}
		if len(data) > 0 {
			x.bytes += int64(len(data))
			switch {
			case chunked:
				ob = h1wire.AppendChunk(ob, data)
			case len(ob) == 0:
				// nothing assembled: send from the upstream buffer itself
				if _, err := c.write(data); err != nil {
					return c.abort(x, ob)
				}
				continue
			default:
				ob = append(ob, data...)
			}
			if len(ob) >= upBuf {
				if _, err := c.write(ob); err != nil {
					return c.abort(x, ob)
				}
				ob = ob[:0]
			}
			continue
		}
		if uc.body.Done {
			if chunked {
				ob = h1wire.AppendLastChunk(ob, uc.body.Trailers)
			}
			break
		}
		// more is coming: send what is here first (streams must not wait)
		if len(ob) > 0 {
			if _, err := c.write(ob); err != nil {
				return c.abort(x, ob)
			}
			ob = ob[:0]
		}
		// a stream may pause for long: check every watchEvery that the
		// client is still there (net/http's handler context did that)
		if !uc.deadline {
			_ = uc.nc.SetReadDeadline(time.Now().Add(watchEvery))
			uc.deadline = true
		}
		if err := uc.br.Fill(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if c.clientGone() {
					x.rs.log.Debug("client went away during a streamed response", "upstream", up.Raw, "client", c.remote)
					return c.abort(x, ob)
				}
				uc.deadline = false // re-armed above
				continue
			}
			if kind == h1wire.BodyClose && err == io.EOF {
				uc.body.Done = true
				resp.Close = true
				continue
			}
			if err == h1wire.ErrBufFull {
				err = h1wire.ErrBadChunk
			}
			x.rs.log.Warn("upstream read error during body copy; response truncated", "upstream", up.Raw, "error", err)
			return c.abort(x, ob)
		}
	}
	if len(ob) > 0 {
		if _, err := c.write(ob); err != nil {
			return c.abort(x, ob)
		}
	}
	c.release(x, !resp.Close && kind != h1wire.BodyClose)
	return ob
}

// abort ends an exchange broken mid-response: both connections close,
// so the client sees a truncated response, never a wrong one.
func (c *h1conn) abort(x *exchange, ob []byte) []byte {
	c.release(x, false)
	x.closeAfter = true
	return ob[:0]
}

// appendRespHead appends the client's response head for resp.
func (c *h1conn) appendRespHead(ob []byte, x *exchange, resp *h1wire.ResponseHead, kind int, chunked bool) []byte {
	ob = h1wire.AppendStatusLine(ob, resp.StatusLine)
	hsts := x.rs.hsts
	upgrade := resp.Status == 101
	date := false
	for _, f := range resp.Fields {
		if isRespHop(f.Name, resp.Conn, chunked) && !(upgrade && h1wire.EqFold(f.Name, "upgrade")) {
			continue
		}
		if hsts != "" && h1wire.EqFold(f.Name, "strict-transport-security") {
			continue
		}
		date = date || h1wire.EqFold(f.Name, "date")
		ob = h1wire.AppendField(ob, f.Name, f.Value)
	}
	return c.appendOwnFields(ob, x, resp.Status, date, kind, resp.ContentLength, chunked)
}

// appendOwnFields ends a response head to the client after the
// upstream's fields: what gatehouse adds (HSTS, Alt-Svc, a Date when
// the upstream sent none), the framing of the body as the client gets
// it, and the connection's persistence. Both exchanges (the own
// client's and RoundTrip's, engine_h1_roundtrip.go) end their heads here.
func (c *h1conn) appendOwnFields(ob []byte, x *exchange, status int, date bool, kind int, contentLength int64, chunked bool) []byte {
	if status < 200 {
		if status == 101 {
			ob = h1wire.AppendField(ob, "Connection", "Upgrade")
		}
		return h1wire.AppendEndOfHead(ob)
	}
	if hsts := x.rs.hsts; hsts != "" {
		ob = h1wire.AppendField(ob, "Strict-Transport-Security", hsts)
	}
	if v := c.s.altSvc(x.rs); v != "" {
		ob = h1wire.AppendField(ob, "Alt-Svc", v)
	}
	if !date { // RFC 9110 §6.6.1, as every engine (behaviour_test.go)
		ob = h1wire.AppendField(ob, "Date", httpfield.Date())
	}
	switch {
	// a 304 carries no Content-Length, as on every engine (net/http's
	// server drops it): the 200's length, which a 304 need not send
	case kind == h1wire.BodyLength || kind == h1wire.BodyNone && contentLength >= 0 && status != 204 && status != 304:
		ob = h1wire.AppendContentLength(ob, contentLength)
	case chunked:
		ob = h1wire.AppendChunkedField(ob)
	}
	switch {
	case x.closeAfter:
		ob = h1wire.AppendField(ob, "Connection", "close")
	case c.req.Minor == 0:
		ob = h1wire.AppendField(ob, "Connection", "keep-alive")
	}
	return h1wire.AppendEndOfHead(ob)
}

// upgrade relays a 101 Switching Protocols and then pipes bytes both
// ways (WebSocket, tunnel).
func (c *h1conn) upgrade(x *exchange, resp *h1wire.ResponseHead, ob []byte) []byte {
	uc := x.uc
	ob = c.appendRespHead(ob, x, resp, h1wire.BodyNone, false)
	ob = append(ob, uc.br.Buf[uc.br.R:uc.br.W]...) // the upstream's first bytes of the new protocol
	if _, err := c.write(ob); err != nil {
		return c.abort(x, ob)
	}
	if n := c.br.Buffered(); n > 0 {
		if _, err := uc.nc.Write(c.br.Buf[c.br.R:c.br.W]); err != nil {
			return c.abort(x, ob)
		}
	}
	c.br.Release()
	uc.br.Release()
	uc.noDeadline()
	// the upstream connection is the stream's now
	x.uc = nil
	if uc.pool == nil {
		c.pinned = nil
	}
	x.closeAfter = true
	c.putOut(ob)
	c.tunnel(uc.nc, func() { uc.nc.Close() })
	x.up.active.Add(-1)
	return nil
}

// tunnel pipes bytes both ways between the client and an upgraded
// upstream connection (closed by closeUp) until either side ends. The
// connection leaves the HTTP/1.1 server's tracking for the stream set,
// so a drain waits for it and its deadline closes it.
func (c *h1conn) tunnel(up io.ReadWriter, closeUp func()) {
	_ = c.tc.SetReadDeadline(time.Time{})
	_ = c.tc.SetWriteDeadline(time.Time{}) // a WebSocket may be quiet for long
	c.upgraded = true
	c.s.h1.remove(c)
	done := func() { c.s.conns.remove(c.tc) }
	c.rc.onClose.Store(&done)
	if !c.s.conns.add(c.tc) {
		c.tc.Close()
		closeUp()
		return
	}
	cp := func(dst io.Writer, src io.Reader) {
		buf := buffers.Get().(*[]byte)
		_, _ = io.CopyBuffer(dst, src, *buf)
		buffers.Put(buf)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cp(up, c.tc)
		c.tc.Close()
		closeUp()
	}()
	cp(c.tc, up)
	c.tc.Close()
	closeUp()
	wg.Wait()
}

// h1Set tracks fast-path connections for graceful shutdown.
type h1Set struct{ tracked[*h1conn] }

// shutdown refuses new connections and closes the idle ones; active
// ones close after their request (serveOne checks Server.closed).
func (s *h1Set) shutdown() {
	for _, c := range s.members(true) {
		if c.state.CompareAndSwap(h1Idle, h1Closed) {
			c.tc.Close()
		}
	}
}

// wait returns when no connection is left, or with ctx's error; then
// the ones still open are closed.
func (s *h1Set) wait(ctx context.Context) error {
	err := s.tracked.wait(ctx)
	if err != nil {
		for _, c := range s.members(false) {
			c.tc.Close()
		}
	}
	return err
}
