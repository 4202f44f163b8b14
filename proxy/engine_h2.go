package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h2server"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Every http-mode connection that negotiated "h2" is served by
// gatehouse's own HTTP/2 server (proxy/internal/h2server: framing, flow
// control, stream state, limits, timeouts). Here is its Handler: each
// stream's request goes through the same policy as the other engines'
// (policy*.go: CONNECT refused, the 421 check, forwarded fields, errors,
// the access log). Streams of routes with plain http:// or https://
// upstreams go through the own HTTP/1.1 client (upstream_from_h2.go);
// the others (h2c:// for gRPC, https:// after a reload) through the
// route's RoundTrip, which forwards trailers and streams both ways as
// those need.

// h2Conn is the Handler of one client connection: what its streams'
// requests share.
type h2Conn struct {
	s     *Server
	rc    *replayConn
	sc    *h2server.Conn
	tm    timeouts
	tls   *tls.ConnectionState
	addr  string                    // client address, as net/http's RemoteAddr
	xff   []string                  // X-Forwarded-For: the client's IP, shared by the connection's requests
	fwd   atomic.Pointer[fwdFields] // the Transport path's
	fwdUp atomic.Pointer[fwdInfo]   // the own client's (upstream_from_h2.go)
}

// serveH2 serves one TLS connection that negotiated "h2" until it closes.
func (s *Server) serveH2(tc *tls.Conn, rc *replayConn) {
	st := tc.ConnectionState()
	c := &h2Conn{s: s, rc: rc, tm: rc.snap.tm, tls: &st, addr: rc.RemoteAddr().String()}
	if ip, _, err := net.SplitHostPort(c.addr); err == nil {
		c.xff = []string{ip}
	}
	if cur := s.state.Load(); cur != nil {
		c.tm = cur.tm // the live config's timeouts
	}
	c.sc = h2server.NewConn(tc, h2server.Config{
		MaxHeaderBytes: maxHeaderBytes,
		ReadHeader:     c.tm.readHeader,
		Idle:           c.tm.idle,
		ClientBody:     c.tm.clientBody,
		Send:           c.tm.send,
		Context:        context.WithValue(context.Background(), connKey{}, rc), // connFrom (proxy_protocol pinning)
		Log:            s.log,
		Client:         c.addr,
	}, c)
	if !s.h2conns.add(c.sc) {
		tc.Close() // shutting down
		return
	}
	defer s.h2conns.remove(c.sc)
	// Serve returns after the streams' handlers, which return at once
	// when the connection ends (canceled upstream requests), after
	// their access-log lines: a drain that saw this connection go has
	// seen its requests logged
	c.sc.Serve()
}

// h2Set tracks the connections served by gatehouse's HTTP/2 server, so
// Shutdown can send each a GOAWAY, wait for its streams, and at the
// deadline close it.
type h2Set struct{ tracked[*h2server.Conn] }

// shutdown refuses new connections, sends every open one a GOAWAY and
// waits until they closed or ctx ends; then it closes what is left and
// reports how many.
func (s *h2Set) shutdown(ctx context.Context) (cut int) {
	for _, c := range s.members(true) {
		c.Shutdown()
	}
	if s.wait(ctx) == nil {
		return 0
	}
	left := s.members(false)
	for _, c := range left {
		c.Close()
	}
	return len(left)
}

// ServeStream handles one request (h2server.Handler): CONNECT refused,
// :method, :path and :authority checked, the 421 check, HSTS, the
// upstream exchange through the own HTTP/1.1 client
// (upstream_from_h2.go) or the route's RoundTrip (balancing, retries,
// metrics; errors through proxyError), and the access log (also of the
// 431 the server answered itself).
func (c *h2Conn) ServeStream(st *h2server.Stream, in h2server.Request) {
	s, rc := c.s, c.rc
	rs := s.routeForStream(rc)
	began := time.Now()
	if in.HeaderTooLarge {
		c.logOwn(st, rs, in, began) // the server answered 431
		return
	}
	if in.Method == "CONNECT" {
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = st.Write([]byte("405 Method Not Allowed: CONNECT is not proxied\n"))
		c.logOwn(st, rs, in, began)
		return
	}
	if !isToken(in.Method) || !h1wire.ValidTarget(bstr(in.Path)) || in.Authority == "" || !validHost(bstr(in.Authority)) {
		// what reaches an HTTP/1.1 upstream must parse there as it did
		// here; a Host's port is digits (policy.go)
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusBadRequest)
		_, _ = st.Write([]byte("400 Bad Request: malformed :method, :path or :authority\n"))
		c.logOwn(st, rs, in, began)
		return
	}
	defer rs.metrics.observe(began, protoH2)
	if misdirectedHost(rs, in.Authority, rc.hello.ServerName) {
		rs.misdirected(st, rc.hello.ServerName)
		c.logOwn(st, rs, in, began)
		return
	}
	if !c.holdUpstream(st, rs) {
		return
	}
	defer rc.upLimit.release()
	if rs.fast { // nativeUpstreams (engine_h1.go)
		up, err := c.forward(st, rs, in)
		if up == nil {
			up = failedUpstream(err) // every upstream failed: name the last one tried
		}
		if err != nil {
			c.ownFields(st, rs)
			c.failNative(st, rs, in, up, err)
		}
		if s.accessOn() {
			st.End() // the duration logged includes the last frame queued
			c.logNative(st, rs, in, up, began)
		}
		return
	}
	// h2c:// upstreams (and https:// ones after a reload moved this
	// connection's route): net/http's Transport through the route's
	// RoundTrip (balancing, retries, PROXY-protocol pinning)
	c.ownFields(st, rs)
	u, err := url.ParseRequestURI(in.Path)
	if err != nil {
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusBadRequest)
		_, _ = st.Write([]byte("400 Bad Request: malformed :path\n"))
		c.logOwn(st, rs, in, began)
		return
	}
	r := &http.Request{
		Method: in.Method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: make(http.Header, len(in.Fields)+4), Host: in.Authority,
		RemoteAddr: c.addr, RequestURI: in.Path, TLS: c.tls,
	}
	c.upstreamRequest(st, r, rs, in)
	ctx := st.Context()
	var a *accessRecord
	if s.access != nil {
		a = accessPool.Get().(*accessRecord)
		*a = accessRecord{}
		ctx = context.WithValue(ctx, accessKey{}, a)
	}
	// 1xx but 100 (the body read sends that) relayed as they come
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code != 100 {
			_ = st.SendInterim(code, func(e h2server.Encoder) { e.Header(http.Header(h)) })
		}
		return nil
	}})
	r = r.WithContext(ctx)
	if res, err := rs.RoundTrip(r); err != nil {
		rs.proxyError(st, r, err)
	} else {
		_ = rs.modifyResponse(res) // the route's HSTS, a 304's framing
		c.copyResponse(st, rs, r, res)
	}
	if a != nil {
		st.End() // the duration logged includes the last frame queued
		a.status, a.bytes = st.Status(), st.Written()
		s.logAccess(rs, rc, r, a, began)
		*a = accessRecord{}
		accessPool.Put(a)
	}
}

// ownFields puts the route's HSTS and Alt-Svc into the header of what
// gatehouse answers itself past the 421 check (503, 502/504) and of
// the Transport path's responses; the own client's responses get them
// in sendRespHead. Only then: a header map made for every stream was
// 3% of the engine's CPU (bench/README.md).
func (c *h2Conn) ownFields(st *h2server.Stream, rs *routeState) {
	if rs.hsts != "" {
		st.Header().Set("Strict-Transport-Security", rs.hsts)
	}
	if v := c.s.altSvc(rs); v != "" {
		st.Header().Set("Alt-Svc", v)
	}
}

// holdUpstream takes one of the connection's upstream slots
// (policy_limits.go) for the stream's exchange; false when none came free
// in time (answered 503) or the stream ended while it waited.
func (c *h2Conn) holdUpstream(st *h2server.Stream, rs *routeState) bool {
	if c.rc.upLimit.take() {
		return true
	}
	err := c.rc.upLimit.acquire(st.Context(), c.tm.respHeader)
	switch {
	case err == nil:
		return true
	case errors.Is(err, errUpstreamLimit):
		rs.metrics.none[classOf(http.StatusServiceUnavailable)].Inc()
		rs.log.Warn("client connection holds too many upstream exchanges; request refused",
			"client", c.addr, "limit", maxUpstreamPerConn)
		c.ownFields(st, rs)
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
func (c *h2Conn) upstreamRequest(st *h2server.Stream, r *http.Request, rs *routeState, in h2server.Request) {
	h := r.Header
	var cookies []string
	for _, f := range in.Fields {
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
		k := h2server.CanonicalKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	if len(cookies) == 1 {
		h["Cookie"] = cookies
	} else if len(cookies) > 1 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	forwardRequest(r, rs, c.xff, &c.fwd)
	if in.EndStream || in.ContentLength == 0 {
		r.ContentLength = 0 // and no Body, as the reverse proxy sends it
		return
	}
	r.ContentLength = in.ContentLength
	r.Body = st.Body()
}

// copyResponse sends the upstream's response to the client: its
// headers less hop-by-hop ones, its body as DATA within the client's
// flow-control windows, its trailers.
func (c *h2Conn) copyResponse(st *h2server.Stream, rs *routeState, r *http.Request, res *http.Response) {
	defer res.Body.Close()
	trailers := len(res.Trailer) > 0
	// A body known to be empty ends the stream on HEADERS. Otherwise the
	// HEADERS are queued before the body is read, so a response whose
	// body comes later (a stream, a long poll) gets its headers at once;
	// a body already at hand is queued before the writer runs, and both
	// go out in one write.
	empty := res.ContentLength == 0 && !trailers
	err := st.SendHeaders(res.StatusCode, empty, func(e h2server.Encoder) bool {
		date := e.Header(res.Header)
		if len(res.Trailer) > 0 {
			keys := make([]string, 0, len(res.Trailer))
			for k := range res.Trailer {
				keys = append(keys, k)
			}
			e.Field("trailer", strings.Join(keys, ", "))
		}
		return date
	})
	if err != nil || empty {
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
			if err := st.SendData(buf[:n], rerr == io.EOF && !trailers); err != nil {
				return
			}
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
		_ = st.SendTrailers(func(e h2server.Encoder) { e.Header(res.Trailer) })
	} else {
		st.End()
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
