package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// accessRecord follows one request through the proxy for its access-log
// line: the status and bytes written to the client, and the upstream
// that answered. It wraps the ResponseWriter; Unwrap keeps
// http.ResponseController (flushes, stream deadlines) working. The
// HTTP/1.1 RoundTrip path (engine_h1_roundtrip.go) uses one only to learn the upstream.
type accessRecord struct {
	http.ResponseWriter
	status   int
	bytes    int64
	upstream *upstream
}

var accessPool = sync.Pool{New: func() any { return new(accessRecord) }}

type accessKey struct{}

func (a *accessRecord) WriteHeader(code int) {
	if a.status == 0 && code >= 200 {
		a.status = code
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *accessRecord) Write(b []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	n, err := a.ResponseWriter.Write(b)
	a.bytes += int64(n)
	return n, err
}

func (a *accessRecord) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// noteUpstream records the upstream a request went to, if it is logged.
func noteUpstream(ctx context.Context, up *upstream) {
	if a, ok := ctx.Value(accessKey{}).(*accessRecord); ok {
		a.upstream = up
	}
}

// logAccess writes the access-log line of a request quic-go's server
// handed to serveH3, or the HTTP/2 server's RoundTrip path (policy.go's writeAccess: one format for every
// engine).
func (s *Server) logAccess(rs *routeState, rc *replayConn, r *http.Request, a *accessRecord, began time.Time) {
	e := accessEntry{route: rs.name, sni: rc.hello.ServerName, client: r.RemoteAddr, method: r.Method,
		host: r.Host, path: r.URL.Path, proto: r.Proto, status: a.status, bytes: a.bytes, began: began}
	if a.upstream != nil {
		e.upstream = a.upstream.Raw
	}
	if !validHost(bstr(e.host)) {
		e.host = "" // refused: not written as sent (the own engines do the same)
	}
	if r.TLS != nil {
		e.tls = tls.VersionName(r.TLS.Version)
	}
	s.writeAccess(&e)
}

// logStream writes one line per tcp or passthrough stream.
func (s *Server) logStream(rs *routeState, rc *replayConn, up string, toUp, toClient int64, began time.Time) {
	if s.access == nil {
		return
	}
	s.access.LogAttrs(context.Background(), slog.LevelInfo, "access",
		slog.String("route", rs.name),
		slog.String("mode", rs.mode),
		slog.String("sni", rc.hello.ServerName),
		slog.String("client", rc.RemoteAddr().String()),
		slog.String("upstream", up),
		slog.Int64("bytes_in", toUp),
		slog.Int64("bytes_out", toClient),
		slog.Duration("duration", time.Since(began)),
	)
}
