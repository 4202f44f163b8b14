package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// serveH3 serves an HTTP/3 request (quic-go's http3 server calls it as
// an http.Handler): the policy of the TCP engines (policy.go: Host
// validation, the 421 check, forwarding fields, HSTS, the access
// record, the route's metrics) around the upstream exchange: for
// http:// and https:// upstreams (rs.fast) the own HTTP/1.1 client's,
// shared with HTTP/2 streams (upstream_from_h3.go, upstream_exchange.go), for h2c:// ones
// httputil's ReverseProxy and the route's RoundTrip; with the
// upstream-exchange cap per QUIC connection and the no-progress bounds (policy_limits.go's
// bounded: each body read within [timeouts] client_body, each response
// write within send, as stream deadlines). quic-go bounds memory
// (stream flow control) and a silent peer (MaxIdleTimeout), but a
// client that keeps its connection alive (PINGs, other streams) and
// then stops sending its body or stops reading the response would
// otherwise hold the handler, and with it an upstream connection,
// forever.
func (s *Server) serveH3(w http.ResponseWriter, r *http.Request) {
	rc := connFrom(r.Context())
	if rc != nil && rc.h3idle != nil {
		rc.h3idle.begin()
		defer rc.h3idle.end()
	}
	if rc == nil || rc.route == nil {
		http.Error(w, "misdirected request", http.StatusMisdirectedRequest)
		return
	}
	rs := s.routeForH3(rc)
	began := time.Now()
	defer rs.metrics.observe(began, protoOf(r))
	var a *accessRecord
	if s.access != nil {
		a = accessPool.Get().(*accessRecord)
		*a = accessRecord{ResponseWriter: w}
		w = a
		defer func() {
			s.logAccess(rs, rc, r, a, began)
			*a = accessRecord{}
			accessPool.Put(a)
		}()
	}
	// what the own engines refuse while parsing (policy.go), quic-go's
	// server accepts: refused here the same way
	switch {
	case !validHost(bstr(r.Host)):
		badRequest(w, r, "invalid Host")
		return
	case h2HeaderMalformed(r.Header): // RFC 9114 §4.2 points to HTTP/2's rule
		badRequest(w, r, "malformed header field value")
		return
	case r.Method == http.MethodConnect:
		// no tunnels, extended CONNECT (WebSocket over HTTP/3) included:
		// 405, as the own engines answer
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = w.Write([]byte("405 Method Not Allowed: CONNECT is not proxied\n"))
		return
	}
	// A browser reuses one connection for every name the certificate
	// covers; a request for a name this connection's route does not
	// serve must be retried by the client on its own connection.
	if misdirectedHost(rs, r.Host, rc.hello.ServerName) {
		rs.misdirected(w, rc.hello.ServerName)
		return
	}
	if rs.hsts != "" {
		w.Header().Set("Strict-Transport-Security", rs.hsts)
	}
	// no-progress bounds and the upstream-exchange cap (policy_limits.go)
	tm := s.state.Load().tm
	if err := rc.upLimit.acquire(r.Context(), tm.respHeader); err != nil {
		rs.limited(w, rc, err)
		return
	}
	defer rc.upLimit.release()
	w, r, done := bounded(w, r, tm, rs.hsts)
	defer done()
	if rs.fast { // nativeUpstreams (engine_h1.go): the own HTTP/1.1 client (upstream_from_h3.go)
		s.forwardH3(rs, rc, w, r, a)
		return
	}
	// h2c:// upstreams: net/http's Transport through the route's RoundTrip
	if a != nil {
		r = r.WithContext(context.WithValue(r.Context(), accessKey{}, a))
	}
	rs.proxy.ServeHTTP(w, r)
}

// routeForH3 is routeFor (engine_h1.go) for an HTTP/3 request: after a reload
// the next request follows the new config; a name without an http route
// any more is still served by the connection's route.
func (s *Server) routeForH3(rc *replayConn) *routeState {
	snap := s.state.Load()
	if snap == rc.snap {
		return rc.route
	}
	if cur := snap.lookup(rc.hello.ServerName); cur != nil && cur.mode == routes.ModeHTTP {
		return cur
	}
	return rc.route
}
