package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// routeState is a route's live side: how it reaches its upstreams.
// An unchanged route keeps its state (and its upstream connection
// pool) across reloads.
type routeState struct {
	entry *routes.Entry
	mode  string
	log   *slog.Logger
	name  string // first host, for logs and metrics

	ups       []*upstream
	next      atomic.Uint64 // round-robin cursor
	transport *http.Transport
	proxy     *httputil.ReverseProxy
	hsts      string
	dial      time.Duration
}

// upstream is one backend address of a route.
type upstream struct {
	routes.Upstream
	target *url.URL // for the reverse proxy: scheme http or https
}

func newRouteState(e *routes.Entry, tm timeouts, prev *routeState, log *slog.Logger) (*routeState, error) {
	if prev != nil {
		return prev, nil
	}
	rs := &routeState{
		entry: e,
		mode:  e.Mode(),
		name:  e.Hosts[0],
		hsts:  e.Route.HSTS,
		dial:  tm.dial,
	}
	rs.log = log.With("route", rs.name)
	for _, u := range e.Upstreams {
		up := &upstream{Upstream: u}
		if u.URL != nil {
			t := *u.URL
			if t.Scheme == "h2c" {
				t.Scheme = "http"
			}
			t.Path = ""
			up.target = &t
		}
		rs.ups = append(rs.ups, up)
	}
	if rs.mode == routes.ModeHTTP {
		tr, err := newTransport(e, tm)
		if err != nil {
			return nil, err
		}
		rs.transport = tr
		rs.proxy = &httputil.ReverseProxy{
			Rewrite:      rs.rewrite,
			Transport:    tr,
			ErrorHandler: rs.proxyError,
			ErrorLog:     slogWarnLog(rs.log, "reverseproxy"), // only upstream failures reach it
			BufferPool:   bufferPool{},
		}
	}
	return rs, nil
}

// sameAs reports whether rs was built from a route configured exactly like e.
func (rs *routeState) sameAs(e *routes.Entry) bool {
	a, b := *rs.entry.Route, *e.Route
	a.Line, b.Line = 0, 0
	return reflect.DeepEqual(a, b)
}

// retire releases a route's idle upstream connections once no new
// connection can reach it; open ones finish on their own.
func (rs *routeState) retire() {
	if rs.transport != nil {
		rs.transport.CloseIdleConnections()
	}
}

// pick chooses the upstream for the next request or stream.
func (rs *routeState) pick() *upstream {
	if len(rs.ups) == 1 {
		return rs.ups[0]
	}
	return rs.ups[int(rs.next.Add(1)-1)%len(rs.ups)]
}

func newTransport(e *routes.Entry, tm timeouts) (*http.Transport, error) {
	dialer := &net.Dialer{Timeout: tm.dial, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConns:          0, // bounded per host below
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: tm.respHeader,
		ExpectContinueTimeout: time.Second,
		TLSHandshakeTimeout:   tm.dial,
		// Responses are passed through as the upstream sent them.
		DisableCompression: true,
	}
	h2c := false
	for _, u := range e.Upstreams {
		if u.Scheme == "h2c" {
			h2c = true
		}
	}
	if h2c {
		tr.Protocols = protocols(false, false)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	if ca := e.Route.UpstreamCA; ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("upstream_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream_ca %s: no PEM certificate", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return tr, nil
}

type upstreamKey struct{}

// rewrite turns the client's request into the upstream's: the target
// address, the original Host, and X-Forwarded-* set from what gatehouse
// saw (Rewrite drops any the client sent, so they cannot be forged).
func (rs *routeState) rewrite(pr *httputil.ProxyRequest) {
	up := rs.pick()
	pr.SetURL(up.target)
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	pr.Out = pr.Out.WithContext(context.WithValue(pr.Out.Context(), upstreamKey{}, up))
}

// proxyError answers a failed upstream exchange: 502 (504 on timeout)
// with a short plain body that leaks nothing internal; the details go
// to the log with the route and upstream.
func (rs *routeState) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	up, _ := r.Context().Value(upstreamKey{}).(*upstream)
	addr := ""
	if up != nil {
		addr = up.Raw
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// the client went away; nothing to answer
		rs.log.Debug("client canceled request", "upstream", addr, "path", r.URL.Path)
		return
	}
	status, body := http.StatusBadGateway, "502 Bad Gateway: the upstream server is unavailable\n"
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		status, body = http.StatusGatewayTimeout, "504 Gateway Timeout: the upstream server did not answer in time\n"
	}
	rs.log.Warn("upstream request failed", "upstream", addr, "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// bufferPool lends 32 KiB copy buffers to the reverse proxy, so a
// streamed body does not allocate one per request.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
