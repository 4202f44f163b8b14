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
	defer rs.metrics.observe(began)
	// A browser reuses one connection for every name the certificate
	// covers; a request for a name this connection's route does not
	// serve must be retried by the client on its own connection.
	if host := routes.CanonicalHost(r.Host); host != rc.hello.ServerName && !rs.serves(host) {
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
	if s.access == nil {
		rs.proxy.ServeHTTP(w, r)
		return
	}
	a := accessPool.Get().(*accessRecord)
	*a = accessRecord{ResponseWriter: w}
	rs.proxy.ServeHTTP(a, r.WithContext(context.WithValue(r.Context(), accessKey{}, a)))
	s.logAccess(rs, rc, r, a, began)
	*a = accessRecord{}
	accessPool.Put(a)
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
