package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// h2Stream is one request on an h2Conn. Its goroutine (run) proxies the
// request; the read loop feeds it the request body. Fields after cond
// are guarded by c.mu; the response fields are the goroutine's own.
type h2Stream struct {
	c    *h2Conn
	id   uint32
	cond sync.Cond // L = &c.mu: window, queue room, body data, end
	ctx  context.Context

	sendWin    int64 // window for DATA to the client
	recvWin    int64 // window the client may still send into
	recvCredit int64 // body bytes read since the last stream WINDOW_UPDATE
	body       []byte
	bodyOff    int
	bodyClosed bool  // the upstream side is done with the body: discard more
	remoteDone bool  // END_STREAM received
	declared   int64 // request content-length; -1 when not sent
	received   int64
	ended      bool  // END_STREAM sent
	expect     bool  // the client waits for 100 Continue before its body
	headed     bool  // response HEADERS (or a 100) queued
	err        error // why the stream ended, once it has
	cancel     context.CancelFunc
	uc         *upConn // the upstream connection of the exchange in progress (upstream_from_h2.go)
	ucBroken   bool    // the stream ended while uc was attached: uc's deadline is past

	stallAt    time.Time     // waiting on the client since (see h2Conn.stalled); zero: not
	stallLimit time.Duration // [timeouts] client_body or send for that wait

	hdr         http.Header // response header for the ResponseWriter methods
	wroteHeader bool
	status      int
	bytes       int64
}

// endLocked ends the stream: its upstream request is canceled, its
// waiters return err.
func (st *h2Stream) endLocked(err error) {
	if st.err != nil {
		return
	}
	st.err = err
	if st.cancel != nil {
		st.cancel()
	}
	st.breakUpLocked()
	st.cond.Broadcast()
}

// h2Request is a request's pseudo-header fields and what was checked
// of its other fields.
type h2Request struct {
	method, scheme, authority, path string
	declared                        int64
	endStream                       bool // the HEADERS frame ended the stream: no body
	expect                          bool // expect: 100-continue
	fields                          []hpack.HeaderField
}

// checkRequest validates a request header block (RFC 9113 §8.1.2,
// §8.2.2, §8.3.1); false means a malformed request (PROTOCOL_ERROR).
// The framer already refused upper-case names, pseudo-fields after
// regular ones, unknown and duplicate pseudo-fields, and invalid values.
func checkRequest(fields []hpack.HeaderField) (h2Request, bool) {
	r := h2Request{declared: -1, fields: fields}
	host := ""
	for _, f := range fields {
		if h2ValueMalformed(f.Value) {
			return r, false // RFC 9113 §8.2.1
		}
		if f.IsPseudo() {
			switch f.Name {
			case ":method":
				r.method = f.Value
			case ":scheme":
				r.scheme = f.Value
			case ":authority":
				r.authority = f.Value
			case ":path":
				r.path = f.Value
			default: // :protocol (extended CONNECT is not offered), :status
				return r, false
			}
			continue
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return r, false
		case "te":
			if f.Value != "trailers" {
				return r, false
			}
		case "content-length":
			n, ok := h2ContentLength(f.Value) // 1*DIGIT: no sign, no space
			if !ok || r.declared >= 0 && n != r.declared {
				return r, false
			}
			r.declared = n
		case "host":
			host = f.Value
		case "expect":
			r.expect = strings.EqualFold(f.Value, "100-continue")
		}
	}
	if r.method == "" {
		return r, false
	}
	if r.method == "CONNECT" {
		if r.scheme != "" || r.path != "" || r.authority == "" {
			return r, false
		}
	} else if r.scheme == "" || r.path == "" || r.path[0] != '/' && !(r.path == "*" && r.method == "OPTIONS") {
		return r, false
	}
	if r.authority == "" {
		r.authority = host
	}
	return r, true
}

// onHeaders opens a stream for a request, or takes a stream's trailers.
func (c *h2Conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id <= c.maxID {
		st := c.streams[id]
		if st == nil {
			if c.wasResetLocked(id) {
				return nil // trailers in flight on a stream gatehouse reset (RFC 9113 §5.1)
			}
			// a closed stream's id used again (RFC 9113 §5.1, §5.1.1)
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteDone && st.ended {
			// closed both ways; its goroutine is only finishing up
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteDone || st.err == errH2StreamReset {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		if st.err != nil {
			return nil // gatehouse reset it: frames in flight are ignored
		}
		// trailers: they end the body, carry no pseudo-fields; their
		// fields are not forwarded
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		for _, tf := range f.Fields {
			if h2ValueMalformed(tf.Value) {
				return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
			}
		}
		if st.declared >= 0 && st.received != st.declared {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		st.remoteDone = true
		st.cond.Broadcast()
		return nil
	}
	c.maxID = id
	if f.HasPriority() && f.Priority.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if c.goAway {
		c.writeResetLocked(id, http2.ErrCodeRefusedStream)
		return nil
	}
	req, ok := checkRequest(f.Fields)
	req.endStream = f.StreamEnded()
	if !ok && !f.Truncated {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if f.StreamEnded() && req.declared > 0 {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if len(c.streams) >= h2MaxStreams {
		if !c.spendLocked() {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		c.writeResetLocked(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := &h2Stream{c: c, id: id, sendWin: c.peerInitWin, recvWin: h2StreamWindow,
		declared: req.declared, remoteDone: f.StreamEnded(), expect: req.expect && !f.StreamEnded()}
	st.cond.L = &c.mu
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	c.streams[id] = st
	c.busyLocked()
	c.handlers.Add(1)
	startStream(h2Job{st, req, f.Truncated})
	return nil
}

// onData takes request body bytes for a stream.
func (c *h2Conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWin {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= n
	st := c.streams[id]
	if st == nil || st.err != nil || st.remoteDone {
		c.creditLocked(nil, n) // nobody reads it: give the connection window back
		switch {
		case st == nil && id > c.maxID:
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		case st != nil && st.err != nil && st.err != errH2StreamReset,
			st == nil && c.wasResetLocked(id):
			// gatehouse reset it (an early answer ends with
			// RST_STREAM(NO_ERROR)): frames in flight are ignored, and
			// not charged to the reset budget (RFC 9113 §5.1)
			return nil
		}
		// half-closed or closed, or reset by the client (RFC 9113 §5.1)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if n > st.recvWin {
		c.creditLocked(nil, n)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
	}
	st.recvWin -= n
	data := f.Data()
	st.received += int64(len(data))
	if pad := n - int64(len(data)); pad > 0 {
		c.creditLocked(st, pad)
	}
	if st.declared >= 0 && (st.received > st.declared || f.StreamEnded() && st.received != st.declared) {
		c.creditLocked(nil, int64(len(data)))
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if st.bodyClosed {
		c.creditLocked(st, int64(len(data)))
	} else if len(data) > 0 {
		st.body = append(st.body, data...)
	}
	if f.StreamEnded() {
		st.remoteDone = true
	}
	st.cond.Broadcast()
	return nil
}

// creditLocked returns n consumed body bytes to the client's windows,
// in WINDOW_UPDATEs of at least half a window (not one per read).
func (c *h2Conn) creditLocked(st *h2Stream, n int64) {
	if n <= 0 || c.closed {
		return
	}
	c.recvCredit += n
	if c.recvCredit >= h2ConnWindow/2 {
		_ = c.wfr.WriteWindowUpdate(0, uint32(c.recvCredit))
		c.recvWin += c.recvCredit
		c.recvCredit = 0
		c.wake()
	}
	if st == nil || st.remoteDone || st.err != nil {
		return
	}
	st.recvCredit += n
	if st.recvCredit >= h2StreamWindow/2 {
		_ = c.wfr.WriteWindowUpdate(st.id, uint32(st.recvCredit))
		st.recvWin += st.recvCredit
		st.recvCredit = 0
		c.wake()
	}
}

// h2Body is a request body as the upstream transport reads it.
type h2Body struct{ st *h2Stream }

var errH2BodyGone = errors.New("http2: request body canceled by the client")

func (b h2Body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for st.bodyOff == len(st.body) {
		switch {
		case st.err != nil:
			st.unstallLocked()
			return 0, errH2BodyGone
		case st.remoteDone:
			st.unstallLocked()
			return 0, io.EOF
		}
		if st.expect && !st.headed {
			// the upstream wants the body (it answered 100 Continue to
			// the transport): tell the client to send it
			st.headed = true
			c.hbuf.Reset()
			c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
			c.writeBlockLocked(st.id, false)
			c.wake()
		}
		st.stallLocked(c.tm.clientBody) // no progress for client_body resets the stream
		st.cond.Wait()
	}
	st.unstallLocked()
	if st.err != nil {
		return 0, errH2BodyGone
	}
	n := copy(p, st.body[st.bodyOff:])
	st.bodyOff += n
	if st.bodyOff == len(st.body) {
		st.body, st.bodyOff = st.body[:0], 0
	}
	c.creditLocked(st, int64(n))
	return n, nil
}

func (b h2Body) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	st.bodyClosed = true
	c.creditLocked(st, int64(len(st.body)-st.bodyOff))
	st.body, st.bodyOff = nil, 0
	return nil
}

// h2Job is a stream for a worker goroutine to run.
type h2Job struct {
	st        *h2Stream
	req       h2Request
	truncated bool
}

// h2Idle hands a new stream to a worker that finished its last one.
// A new goroutine's stack grows by copying several times on its way
// through a request (10% of HTTP/2 CPU in the bench's profile); a
// worker's has grown already. Unbuffered: a stream goes to a worker
// only if one is waiting, else to a new goroutine.
var h2Idle = make(chan h2Job)

// h2WorkerIdle is how long a worker waits for another stream.
const h2WorkerIdle = 10 * time.Second

func startStream(j h2Job) {
	select {
	case h2Idle <- j:
	default:
		go h2Worker(j)
	}
}

func h2Worker(j h2Job) {
	t := time.NewTimer(h2WorkerIdle)
	defer t.Stop()
	for {
		j.st.run(j.req, j.truncated)
		j = h2Job{} // holds no finished stream (nor its connection) while idle
		t.Reset(h2WorkerIdle)
		select {
		case j = <-h2Idle:
		case <-t.C:
			return
		}
	}
}

// run proxies the stream's request and ends the stream.
func (st *h2Stream) run(req h2Request, truncated bool) {
	defer st.c.handlers.Done()
	defer st.c.streamDone(st)
	if truncated {
		began := time.Now()
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
		_, _ = st.Write([]byte("431 Request Header Fields Too Large\n"))
		st.end()
		st.logOwn(st.c.s.routeForStream(st.c.rc), req, began)
		return
	}
	st.serve(req)
	st.end()
}

// streamDone retires a stream whose goroutine has finished.
func (c *h2Conn) streamDone(st *h2Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	completed := st.err == nil && st.ended
	if st.err == nil {
		switch {
		case !st.ended:
			c.writeResetLocked(st.id, http2.ErrCodeInternal) // the response broke off
		case !st.remoteDone:
			// answered before the request body ended: the client may stop sending
			c.writeResetLocked(st.id, http2.ErrCodeNo)
		}
		st.endLocked(errH2StreamDone)
	}
	c.creditLocked(nil, int64(len(st.body)-st.bodyOff))
	st.body = nil
	st.unstallLocked()
	delete(c.streams, st.id)
	if completed && c.budget < h2ResetBudget {
		c.budget++
	}
	c.idleLocked()
}

// serve handles one request: the 421 check, HSTS, the upstream
// exchange through the own HTTP/1.1 client (upstream_from_h2.go) or the route's
// RoundTrip (balancing, retries, metrics; errors through proxyError),
// and the access log.
func (st *h2Stream) serve(in h2Request) {
	c := st.c
	s, rc := c.s, c.rc
	rs := s.routeForStream(rc)
	began := time.Now()
	if in.method == "CONNECT" {
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = st.Write([]byte("405 Method Not Allowed: CONNECT is not proxied\n"))
		st.logOwn(rs, in, began)
		return
	}
	if !isToken(in.method) || !h1wire.ValidTarget(bstr(in.path)) || in.authority == "" || !validHost(bstr(in.authority)) {
		// what reaches an HTTP/1.1 upstream must parse there as it did
		// here; a Host's port is digits (policy.go)
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusBadRequest)
		_, _ = st.Write([]byte("400 Bad Request: malformed :method, :path or :authority\n"))
		st.logOwn(rs, in, began)
		return
	}
	defer rs.metrics.observe(began, protoH2)
	if misdirectedHost(rs, in.authority, rc.hello.ServerName) {
		rs.misdirected(st, rc.hello.ServerName)
		st.logOwn(rs, in, began)
		return
	}
	if rs.hsts != "" {
		st.Header().Set("Strict-Transport-Security", rs.hsts)
	}
	if v := s.altSvc(rs); v != "" {
		st.Header().Set("Alt-Svc", v)
	}
	if !st.holdUpstream(rs) {
		return
	}
	defer rc.upLimit.release()
	if rs.fast { // nativeUpstreams (engine_h1.go)
		up, err := st.forward(rs, in)
		if up == nil {
			up = failedUpstream(err) // every upstream failed: name the last one tried
		}
		if err != nil {
			st.failNative(rs, in, up, err)
		}
		if s.access != nil {
			st.end() // the duration logged includes the last frame queued
			st.logNative(rs, in, up, began)
		}
		return
	}
	// h2c:// upstreams (and https:// ones after a reload moved this
	// connection's route): net/http's Transport through the route's
	// RoundTrip (balancing, retries, PROXY-protocol pinning)
	u, err := url.ParseRequestURI(in.path)
	if err != nil {
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusBadRequest)
		_, _ = st.Write([]byte("400 Bad Request: malformed :path\n"))
		st.logOwn(rs, in, began)
		return
	}
	r := &http.Request{
		Method: in.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: make(http.Header, len(in.fields)+4), Host: in.authority,
		RemoteAddr: c.addr, RequestURI: in.path, TLS: c.tls,
	}
	st.upstreamRequest(r, rs, in)
	ctx := st.ctx
	var a *accessRecord
	if s.access != nil {
		a = accessPool.Get().(*accessRecord)
		*a = accessRecord{}
		ctx = context.WithValue(ctx, accessKey{}, a)
	}
	// 1xx but 100 (the body read sends that) relayed as they come
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code != 100 {
			_ = st.sendInterim(code, func(c *h2Conn) { encodeFields(c.enc, http.Header(h)) })
		}
		return nil
	}})
	r = r.WithContext(ctx)
	if res, err := rs.RoundTrip(r); err != nil {
		rs.proxyError(st, r, err)
	} else {
		_ = rs.modifyResponse(res) // the route's HSTS, a 304's framing
		st.copyResponse(rs, r, res)
	}
	if a != nil {
		st.end() // the duration logged includes the last frame queued
		a.status, a.bytes = st.status, st.bytes
		s.logAccess(rs, rc, r, a, began)
		*a = accessRecord{}
		accessPool.Put(a)
	}
}

// holdUpstream takes one of the connection's upstream slots
// (policy_limits.go) for the stream's exchange; false when none came free
// in time (answered 503) or the stream ended while it waited.
func (st *h2Stream) holdUpstream(rs *routeState) bool {
	err := st.c.rc.upLimit.acquire(st.ctx, st.c.tm.respHeader)
	switch {
	case err == nil:
		return true
	case errors.Is(err, errUpstreamLimit):
		rs.metrics.none[classOf(http.StatusServiceUnavailable)].Inc()
		rs.log.Warn("client connection holds too many upstream exchanges; request refused",
			"client", st.c.addr, "limit", maxUpstreamPerConn)
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusServiceUnavailable)
		_, _ = st.Write([]byte("503 Service Unavailable: too many requests in progress on this connection\n"))
	default:
		rs.metrics.none[classCanceled].Inc()
	}
	return false
}

// routeForStream is routeFor (engine_h1.go) for a stream: after a reload
// the next stream follows the new config; a name without an http route
// any more is still served by the connection's route.
func (s *Server) routeForStream(rc *replayConn) *routeState {
	snap := s.state.Load()
	if snap == rc.snap {
		return rc.route
	}
	if cur := snap.lookup(rc.hello.ServerName); cur != nil && cur.mode == routes.ModeHTTP {
		return cur
	}
	return rc.route
}

// upstreamRequest fills r as the upstream gets it: the stream's fields
// less the client's X-Forwarded-* and Forwarded (forwardRequest sets
// them from what gatehouse saw) and cookies joined; the body.
func (st *h2Stream) upstreamRequest(r *http.Request, rs *routeState, in h2Request) {
	h := r.Header
	var cookies []string
	for _, f := range in.fields {
		if f.IsPseudo() {
			continue
		}
		// what the own client does not forward either (isReqHop:
		// Proxy-Authorization, forwarding fields and their underscore
		// spellings, Host, framing); checkRequest has refused the
		// connection-specific fields, and a te is "trailers", kept
		if f.Name != "te" && isReqHop(bstr(f.Name), nil) {
			continue
		}
		switch f.Name {
		case "cookie":
			// HTTP/2 splits cookies into fields; HTTP/1.1 wants one (RFC 9113 §8.2.3)
			cookies = append(cookies, f.Value)
			continue
		}
		k := canonicalH2(f.Name)
		h[k] = append(h[k], f.Value)
	}
	if len(cookies) == 1 {
		h["Cookie"] = cookies
	} else if len(cookies) > 1 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	forwardRequest(r, rs, st.c.xff, &st.c.fwd)
	if in.endStream || in.declared == 0 {
		r.ContentLength = 0 // and no Body, as the reverse proxy sends it
		return
	}
	r.ContentLength = in.declared
	r.Body = h2Body{st}
}

// copyResponse sends the upstream's response to the client: its
// headers less hop-by-hop ones, its body as DATA within the client's
// flow-control windows, its trailers.
func (st *h2Stream) copyResponse(rs *routeState, r *http.Request, res *http.Response) {
	defer res.Body.Close()
	trailers := len(res.Trailer) > 0
	// A body known to be empty ends the stream on HEADERS. Otherwise the
	// HEADERS are queued before the body is read, so a response whose
	// body comes later (a stream, a long poll) gets its headers at once;
	// a body already at hand is queued before the writer runs, and both
	// go out in one write.
	empty := res.ContentLength == 0 && !trailers
	st.wroteHeader, st.status = true, res.StatusCode
	if err := st.sendHeaders(res.StatusCode, st.hdr, res.Header, res.Trailer, empty); err != nil || empty {
		return
	}
	bp := h2Buffers.Get().(*[]byte)
	defer h2Buffers.Put(bp)
	buf := *bp
	var rerr error
	for rerr == nil {
		var n int
		n, rerr = readSome(res.Body, buf)
		if n > 0 {
			if err := st.sendData(buf[:n], rerr == io.EOF && !trailers); err != nil {
				return
			}
			st.bytes += int64(n)
		}
	}
	if rerr != io.EOF {
		if r.Context().Err() == nil {
			rs.log.Warn("upstream response broke off", "method", r.Method, "path", r.URL.Path,
				"client", r.RemoteAddr, "error", rerr)
		}
		return // streamDone resets the stream
	}
	if trailers {
		_ = st.sendTrailers(res.Trailer)
	} else if !st.ended {
		_ = st.sendData(nil, true)
	}
}

// readSome reads at least a byte unless the body ended or failed.
func readSome(r io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

var h2Buffers = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// Header, WriteHeader and Write make the stream an http.ResponseWriter
// for gatehouse's own answers (421, 431, proxyError's 502/504).
func (st *h2Stream) Header() http.Header {
	if st.hdr == nil {
		st.hdr = make(http.Header)
	}
	return st.hdr
}

func (st *h2Stream) WriteHeader(code int) {
	if st.wroteHeader {
		return
	}
	st.wroteHeader, st.status = true, code
	_ = st.sendHeaders(code, st.hdr, nil, nil, false)
}

func (st *h2Stream) Write(p []byte) (int, error) {
	if !st.wroteHeader {
		st.WriteHeader(http.StatusOK)
	}
	if err := st.sendData(p, false); err != nil {
		return 0, err
	}
	st.bytes += int64(len(p))
	return len(p), nil
}

// end sends END_STREAM if the response has not ended yet.
func (st *h2Stream) end() {
	if !st.wroteHeader {
		st.wroteHeader, st.status = true, http.StatusOK
		_ = st.sendHeaders(http.StatusOK, st.hdr, nil, nil, true)
		return
	}
	c := st.c
	c.mu.Lock()
	ended := st.ended || st.err != nil
	c.mu.Unlock()
	if !ended {
		_ = st.sendData(nil, true)
	}
}

// queueBlock queues one header block on st (HEADERS, then
// CONTINUATIONs as needed) once the connection's write buffer has room:
// fill encodes the fields with c's HPACK encoder, with c.mu held; end
// ends the stream with the block.
func (st *h2Stream) queueBlock(end bool, fill func(c *h2Conn)) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.waitRoomLocked(st); err != nil {
		return err
	}
	if st.err != nil {
		return st.err
	}
	c.hbuf.Reset()
	fill(c)
	c.writeBlockLocked(st.id, end)
	st.headed = true
	if end {
		st.ended = true
	}
	c.wake()
	return nil
}

// sendInterim queues an informational response other than 100 (103
// Early Hints …) as HEADERS without END_STREAM, as the other engines
// relay it (behaviour_test.go); fill encodes its fields.
func (st *h2Stream) sendInterim(status int, fill func(c *h2Conn)) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.waitRoomLocked(st); err != nil {
		return err
	}
	if st.err != nil || st.headed {
		return st.err
	}
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(status)})
	fill(c)
	c.writeBlockLocked(st.id, false)
	c.wake()
	return nil
}

// sendHeaders queues a response's HEADERS (and CONTINUATIONs): own
// (gatehouse's: HSTS, its answers' fields) then up (the upstream's),
// without hop-by-hop fields, with a Date when neither has one.
func (st *h2Stream) sendHeaders(status int, own, up, trailer http.Header, end bool) error {
	return st.queueBlock(end, func(c *h2Conn) {
		c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(status)})
		date := encodeFields(c.enc, own)
		date = encodeFields(c.enc, up) || date
		if !date {
			c.enc.WriteField(hpack.HeaderField{Name: "date", Value: httpDate()})
		}
		if len(trailer) > 0 {
			keys := make([]string, 0, len(trailer))
			for k := range trailer {
				keys = append(keys, k)
			}
			c.enc.WriteField(hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ", ")})
		}
	})
}

// sendTrailers ends the stream with the upstream's trailers.
func (st *h2Stream) sendTrailers(t http.Header) error {
	return st.queueBlock(true, func(c *h2Conn) {
		encodeFields(c.enc, t)
	})
}

// writeBlockLocked queues the header block in c.hbuf as HEADERS and
// CONTINUATION frames within the client's frame size.
func (c *h2Conn) writeBlockLocked(id uint32, end bool) {
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame)
	first := block
	if len(first) > max {
		first = first[:max]
	}
	block = block[len(first):]
	_ = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		_ = c.wfr.WriteContinuation(id, len(block) == 0, frag)
	}
}

// sendData queues p as DATA frames as the client's windows allow,
// waiting for WINDOW_UPDATEs and queue room; end sets END_STREAM on the
// last frame (an empty one if p is empty).
func (st *h2Stream) sendData(p []byte, end bool) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	defer st.unstallLocked()
	for {
		if st.err != nil {
			return st.err
		}
		if c.closed || c.finishing {
			return errH2Closed
		}
		if len(p) == 0 {
			if end {
				_ = c.wfr.WriteData(st.id, true, nil)
				st.ended = true
				c.wake()
			}
			return nil
		}
		n := min(int64(len(p)), int64(c.peerMaxFrame), st.sendWin, c.sendWin)
		if len(c.out) >= h2MaxPending || n <= 0 {
			if len(c.out) >= h2MaxPending || c.sendWin <= 0 {
				c.blocked = append(c.blocked, st)
			}
			c.wake()
			// waiting for the client's window or for it to read: no
			// progress for [timeouts] send resets the stream
			st.stallLocked(c.tm.send)
			st.cond.Wait()
			continue
		}
		st.unstallLocked()
		last := end && n == int64(len(p))
		_ = c.wfr.WriteData(st.id, last, p[:n])
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			st.ended = true
		}
		if len(p) == 0 {
			c.wake()
			return nil
		}
	}
}

// encodeFields HPACK-encodes h in lower case, less the fields HTTP/2
// forbids or a proxy must not forward (hop-by-hop, and those the
// Connection field names). It reports whether h had a Date.
func encodeFields(enc *hpack.Encoder, h http.Header) (date bool) {
	conn := h["Connection"]
	for k, vs := range h {
		if hopByHop(k) || len(conn) > 0 && connListed(conn, k) {
			continue
		}
		if k == "Date" {
			date = true
		}
		name := lowerH2(k)
		for _, v := range vs {
			enc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
	return date
}

// hopByHop reports the fields of a single connection (as httputil's
// ReverseProxy removes them), which HTTP/2 also forbids.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

func connListed(conn []string, k string) bool {
	for _, v := range conn {
		for f := range strings.SplitSeq(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(f)) == k {
				return true
			}
		}
	}
	return false
}

// Common field names, both ways: HPACK wants lower case, net/http's
// header maps canonical case. A table avoids an allocation per field.
var (
	h2Lower = map[string]string{}
	h2Canon = map[string]string{}
)

func init() {
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Access-Control-Allow-Credentials", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
		"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Max-Age",
		"Access-Control-Request-Headers", "Access-Control-Request-Method", "Age", "Allow", "Authorization",
		"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
		"Content-Location", "Content-Range", "Content-Security-Policy", "Content-Type", "Cookie", "Date", "Dnt", "Etag",
		"Expect", "Expires", "From", "Grpc-Message", "Grpc-Status", "If-Match", "If-Modified-Since", "If-None-Match",
		"If-Range", "If-Unmodified-Since", "Last-Modified", "Link", "Location", "Max-Forwards", "Origin", "Pragma",
		"Priority", "Range", "Referer", "Refresh", "Retry-After", "Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site",
		"Sec-Fetch-User", "Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Server", "Set-Cookie",
		"Strict-Transport-Security", "Te", "Trailer", "Upgrade-Insecure-Requests", "User-Agent", "Vary", "Via",
		"Www-Authenticate", "X-Content-Type-Options", "X-Frame-Options", "X-Request-Id", "X-Requested-With",
		"X-Xss-Protection"} {
		l := strings.ToLower(k)
		h2Lower[k], h2Canon[l] = l, k
	}
}

func lowerH2(k string) string {
	if l, ok := h2Lower[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

func canonicalH2(l string) string {
	if k, ok := h2Canon[l]; ok {
		return k
	}
	return http.CanonicalHeaderKey(l)
}

// statusStrings are the :status values, made once.
var statusStrings [600]string

func statusString(code int) string {
	if code >= 100 && code < len(statusStrings) {
		return statusStrings[code]
	}
	return strconv.Itoa(code)
}

func init() {
	for i := 100; i < len(statusStrings); i++ {
		statusStrings[i] = strconv.Itoa(i)
	}
}

// httpDate is the current time as a Date field, formatted once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.sec == now {
		return d.s
	}
	d := &dateString{sec: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateString struct {
	sec int64
	s   string
}

var cachedDate atomic.Pointer[dateString]
