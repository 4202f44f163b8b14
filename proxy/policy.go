package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Request policy: what a request means, decided once for every engine
// (the own HTTP/1.1 loop, the own HTTP/2 server, and quic-go's HTTP/3
// server through engine_h3_handler.go). Each rule is one function here; the
// engines call it and only move bytes and frames.

// validHost reports whether a Host field (or :authority, or an
// absolute-form target's authority) is uri-host [ ":" port ] as
// strictly as a name a route can serve (h1wire.ValidHost: unreserved
// reg-name characters or a bracketed IPv6 address, a port of 1 to 5
// digits), so the Host, X-Forwarded-Host and Forwarded host= an
// upstream gets are always a value that passed it; anything else is
// 400 (RFC 9112 §3.2). The HTTP/1.1 parser applies it itself.
func validHost(b []byte) bool { return h1wire.ValidHost(b) }

// forwardRequest completes a request an engine built from a client's
// for rs.RoundTrip (routes whose upstreams the own HTTP/1.1 client does
// not speak to: h2c://, and PROXY-protocol or https:// ones where the
// own client does not): the engine copied the client's end-to-end
// fields (isReqHop's, less the forwarding ones); here X-Forwarded-For
// (xff: the client's IP, nil when it has none), X-Forwarded-Host,
// X-Forwarded-Proto and Forwarded are set from what gatehouse saw, as
// appendUpstreamHead sets them for the own client, and the target is
// the route's scheme (RoundTrip picks the host per attempt). cache
// keeps the connection's forwarding fields for its last Host: a client
// sends the same Host on every request.
func forwardRequest(r *http.Request, rs *routeState, xff []string, cache *atomic.Pointer[fwdFields]) {
	h := r.Header
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // no Go default user agent upstream
	}
	if xff != nil {
		h["X-Forwarded-For"] = xff
	}
	ff := cache.Load()
	if ff == nil || ff.host != r.Host {
		ff = &fwdFields{host: r.Host, xfh: []string{r.Host}, fwd: []string{forwardedValue(r)}}
		cache.Store(ff)
	}
	h["X-Forwarded-Host"] = ff.xfh
	h["X-Forwarded-Proto"] = xfpHTTPS
	h["Forwarded"] = ff.fwd
	r.URL.Scheme = rs.scheme
	r.URL.Host = rs.bal.ups[0].target.Host
}

// misdirectedHost is the 421 rule: a request whose Host (checked by
// validHost) names neither the connection's SNI nor a name of its route
// must be retried by the client on a connection of its own (browsers
// reuse one connection for every name a certificate covers). The own
// HTTP/1.1 loop applies it through hostOK, which remembers the last
// accepted Host of a keep-alive connection.
func misdirectedHost(rs *routeState, host, sni string) bool {
	h := routes.CanonicalHost(host)
	return h != sni && !rs.serves(h)
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

// eqFoldU compares a field name with a lower-case constant, ignoring
// case and reading "_" as "-": CGI/WSGI and some servers fold them
// (X_Forwarded_For becomes HTTP_X_FORWARDED_FOR, like
// X-Forwarded-For), so for what is dropped from a request they are the
// same name.
func eqFoldU(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// foldedReqHop reports whether a request field with an underscore in
// its name folds to one gatehouse sets or drops (isReqHop): the engines
// whose libraries already drop the exact names (net/http's reverse
// proxy, the HTTP/2 server's Transport path) drop these too.
func foldedReqHop(name string) bool {
	return strings.IndexByte(name, '_') >= 0 && isReqHop(bstr(name), nil)
}

// dropFoldedFields removes from h the fields foldedReqHop names.
func dropFoldedFields(h http.Header) {
	for k := range h {
		if foldedReqHop(k) {
			delete(h, k)
		}
	}
}

// h2ValueMalformed reports whether an HTTP/2 field value starts or ends
// with SP or HTAB (RFC 9113 §8.2.1: the request is malformed).
func h2ValueMalformed(v string) bool {
	return len(v) > 0 && (v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t')
}

// h2ContentLength parses an HTTP/2 content-length: 1*DIGIT (RFC 9110
// §8.6), no sign, no whitespace, within int64.
func h2ContentLength(v string) (int64, bool) {
	return h1wire.ParseUint(bstr(v))
}

// h2HeaderMalformed applies h2ValueMalformed and h2ContentLength to a
// request net/http's HTTP/2 server has parsed (it accepts both).
func h2HeaderMalformed(h http.Header) bool {
	for k, vs := range h {
		for _, v := range vs {
			if h2ValueMalformed(v) {
				return true
			}
			if k == "Content-Length" {
				if _, ok := h2ContentLength(v); !ok {
					return true
				}
			}
		}
	}
	return false
}

// accessEntry is one access-log record: one per request, whichever
// engine served it and whoever answered it (the upstream, or gatehouse
// itself with a 400, 421, 431, 502 …).
type accessEntry struct {
	route, sni, client, method, host, path, proto, tls, upstream string
	status                                                       int
	bytes                                                        int64
	began                                                        time.Time
}

// writeAccess writes e to the access log (if there is one).
// accessOn reports whether an access line would be written: an access
// logger, at a level that lets Info through ([log] level = "warn" does
// not). Checked before the line's fields are gathered (and the stream
// ended early for its duration), as the bench's configuration has it.
func (s *Server) accessOn() bool {
	return s.access != nil && s.access.Enabled(context.Background(), slog.LevelInfo)
}

func (s *Server) writeAccess(e *accessEntry) {
	if s.access == nil {
		return
	}
	status := e.status
	if status == 0 {
		status = 499 // the client went away before any answer
	}
	s.access.LogAttrs(context.Background(), slog.LevelInfo, "access",
		slog.String("route", e.route),
		slog.String("sni", e.sni),
		slog.String("client", e.client),
		slog.String("method", e.method),
		slog.String("host", e.host),
		slog.String("path", e.path),
		slog.String("proto", e.proto),
		slog.String("tls", e.tls),
		slog.Int("status", status),
		slog.Int64("bytes", e.bytes),
		slog.String("upstream", e.upstream),
		slog.Duration("duration", time.Since(e.began)),
	)
}

// logPath is the path an access-log line shows for a request target:
// the query cut off, percent-decoding undone (as net/http's URL.Path).
func logPath(target string) string {
	if i := strings.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	if p, err := url.PathUnescape(target); err == nil {
		return p
	}
	return target
}

// fwdFields are the forwarding fields for one Host on a connection:
// a client sends the same Host on every request, so they are built
// once. The upstream transport only reads them.
type fwdFields struct {
	host     string
	xfh, fwd []string
}

var xfpHTTPS = []string{"https"}
