package proxy

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// serveHTTP handles a request on a TLS connection routed to http mode.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	rc := connFrom(r.Context())
	if rc == nil || rc.route == nil {
		http.Error(w, "misdirected request", http.StatusMisdirectedRequest)
		return
	}
	rs := s.routeFor(w, r, rc)
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
	// what the own engines refuse while parsing (policy.go), net/http's
	// server accepts: refused here the same way
	switch {
	case !validHost(bstr(r.Host)):
		badRequest(w, r, "invalid Host")
		return
	case r.ProtoMajor >= 2 && h2HeaderMalformed(r.Header): // HTTP/2 and HTTP/3 (RFC 9114 §4.2 points to the same rule)
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
	if r.ProtoMajor < 3 {
		if v := s.altSvc(rs); v != "" {
			w.Header().Set("Alt-Svc", v)
		}
	}
	// no-progress bounds and the upstream-exchange cap (connlimit.go)
	tm := s.state.Load().tm
	if r.ProtoMajor >= 2 {
		if err := rc.upLimit.acquire(r.Context(), tm.respHeader); err != nil {
			rs.limited(w, rc, err)
			return
		}
		defer rc.upLimit.release()
	}
	w, r, done := bounded(w, r, tm)
	defer done()
	if a != nil {
		r = r.WithContext(context.WithValue(r.Context(), accessKey{}, a))
	}
	rs.proxy.ServeHTTP(w, r)
}

// badRequest answers 400 with a short reason, and closes an HTTP/1
// connection (as the own HTTP/1.1 engine does after a refused request).
func badRequest(w http.ResponseWriter, r *http.Request, why string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write([]byte("400 Bad Request: " + why + "\n"))
}

// routeFor returns the route a request on rc is served by. A request is
// the unit of routing in http mode: after a reload, the next request on
// a kept-alive connection follows the new config (a changed upstream
// takes effect at once, not when the client reconnects), while requests
// in flight and upgraded connections (WebSockets) stay on the route
// they started with. When the connection's name has no http route any
// more, the request is still served by the old route, and an HTTP/1
// connection is then closed: it drains.
func (s *Server) routeFor(w http.ResponseWriter, r *http.Request, rc *replayConn) *routeState {
	snap := s.state.Load()
	if snap == rc.snap {
		return rc.route
	}
	if cur := snap.lookup(rc.hello.ServerName); cur != nil && cur.mode == routes.ModeHTTP {
		return cur
	}
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	return rc.route
}

// misdirected answers 421 to a request for a name this connection's
// route does not serve (sni is the name the connection was opened for).
func (rs *routeState) misdirected(w http.ResponseWriter, sni string) {
	rs.metrics.none[classOf(http.StatusMisdirectedRequest)].Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusMisdirectedRequest)
	_, _ = w.Write([]byte("421 Misdirected Request: this connection was opened for " + sni + "\n"))
}

// serves reports whether host belongs to this route (exactly or by the
// route's own wildcard).
func (rs *routeState) serves(host string) bool {
	for _, h := range rs.entry.Hosts {
		switch {
		case h == host, h == "*":
			return true
		case strings.HasPrefix(h, "*.") && strings.HasSuffix(host, h[1:]) && !strings.Contains(host[:len(host)-len(h)+1], "."):
			return true
		}
	}
	return false
}

// servePlain handles the plain-HTTP listener: ACME HTTP-01 challenges,
// and a 308 to https for every routed name.
func (s *Server) servePlain(w http.ResponseWriter, r *http.Request) {
	if s.certs != nil && s.certs.HandleHTTPChallenge(w, r) {
		return
	}
	if !validHost(bstr(r.Host)) {
		// a redirect is built from it: only a checked Host (policy.go)
		badRequest(w, r, "invalid Host")
		return
	}
	host := routes.CanonicalHost(r.Host)
	snap := s.state.Load()
	if snap == nil || host == "" || snap.lookup(host) == nil {
		http.Error(w, "404 not found: no route for this host", http.StatusNotFound)
		return
	}
	target := "https://" + host
	if s.httpsPort != "" && s.httpsPort != "443" {
		target = "https://" + net.JoinHostPort(host, s.httpsPort)
	}
	target += r.URL.RequestURI()
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusPermanentRedirect)
}
