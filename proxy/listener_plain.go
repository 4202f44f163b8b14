package proxy

import (
	"net"
	"net/http"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The plain-HTTP listener ([listen] http): net/http's server answers
// ACME HTTP-01 challenges and sends every routed name to https. It
// forwards nothing.

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
