package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// routeState is a route's live side: how it reaches its upstreams.
// An unchanged route keeps its state (and its upstream connection
// pool, health checks and balancing counters) across reloads.
type routeState struct {
	entry *routes.Entry
	mode  string
	log   *slog.Logger
	name  string // first host, for logs and metrics

	bal       balancer
	scheme    string          // http mode: the upstreams' URL scheme (http or https)
	transport *http.Transport // shared with routes of the same tkey
	tkey      transportKey
	proxy     *httputil.ReverseProxy
	hsts      string
	dial      time.Duration
	dialer    *net.Dialer
	ppVersion byte // PROXY protocol version sent to upstreams; 0: none
	fast      bool // nativeUpstreams (engine_h1.go): requests go through the own HTTP/1.1 client (TCP or TLS), else through RoundTrip

	metrics routeMetrics
	health  healthChecks

	startOnce, retireOnce sync.Once
}

func newRouteState(e *routes.Entry, tm timeouts, prev *routeState, log *slog.Logger) (*routeState, error) {
	if prev != nil {
		return prev, nil
	}
	rs := &routeState{
		entry:     e,
		mode:      e.Mode(),
		name:      e.Hosts[0],
		hsts:      e.Route.HSTS,
		dial:      tm.dial,
		dialer:    &net.Dialer{Timeout: tm.dial, KeepAlive: 30 * time.Second},
		ppVersion: proxyVersion(e.Route.ProxyProtocol),
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
			rs.scheme = t.Scheme
		}
		rs.bal.ups = append(rs.bal.ups, up)
	}
	if len(rs.bal.ups) == 0 {
		return nil, errors.New("no usable upstream")
	}
	rs.bal.leastConn = e.Route.Balance == "least_conn"
	rs.bal.passive = len(rs.bal.ups) > 1
	rs.metrics = newRouteMetrics(rs.name, rs.bal.ups)
	if rs.fast = nativeUpstreams(e); rs.fast {
		var roots *x509.CertPool // nil: the system roots
		if ca := e.Route.UpstreamCA; ca != "" {
			var err error
			if roots, err = loadCA(ca); err != nil {
				return nil, err
			}
		}
		for _, up := range rs.bal.ups {
			up.pool = acquireUpPool(upPoolKeyOf(up.Upstream, e.Route.UpstreamCA), roots)
		}
	}
	if rs.mode == routes.ModeHTTP {
		rs.tkey = transportKeyOf(e, tm)
		tr, err := acquireTransport(rs.tkey)
		if err != nil {
			return nil, err
		}
		rs.transport = tr
		rs.proxy = &httputil.ReverseProxy{
			Rewrite:        rs.rewrite,
			ModifyResponse: rs.modifyResponse,
			Transport:      rs, // balancing, retries, PROXY-pinned connections: upstream_balance.go
			ErrorHandler:   rs.proxyError,
			ErrorLog:       slogWarnLog(rs.log, "reverseproxy"), // only upstream failures reach it
			BufferPool:     bufferPool{},
		}
	}
	return rs, nil
}

// start begins the route's background work (health checks) once it is
// installed; a state built for a table that was then refused never starts.
func (rs *routeState) start() {
	rs.startOnce.Do(func() {
		trackRoute(rs)
		rs.startHealth()
	})
}

// retire stops the route's health checks and releases its idle
// upstream connections once no new connection can reach it; open ones
// finish on their own (with the last health state they saw).
func (rs *routeState) retire() {
	rs.retireOnce.Do(func() {
		rs.stopHealth()
		untrackRoute(rs)
		rs.release()
	})
}

// discard releases a state that was built but never installed.
func (rs *routeState) discard() {
	rs.retireOnce.Do(rs.release)
}

// release gives back the route's shares of upstream connection pools.
func (rs *routeState) release() {
	if rs.transport != nil {
		releaseTransport(rs.tkey)
	}
	for _, up := range rs.bal.ups {
		if up.pool != nil {
			// up.pool stays set: requests still in flight on this route
			// use it; a released pool closes connections given back to it
			releaseUpPool(up.pool)
		}
	}
}

// transportKey is what an upstream transport is built from. Routes with
// the same key share one transport, so one connection pool per upstream
// address: many names in front of one app are common, and a pool per
// route kept an idle upstream connection per route (with a [[route]]
// per name, 100,000 routes ran out of file descriptors in the bench).
type transportKey struct {
	h2c              bool
	upstreamCA       string
	dial, respHeader time.Duration
}

func transportKeyOf(e *routes.Entry, tm timeouts) transportKey {
	k := transportKey{upstreamCA: e.Route.UpstreamCA, dial: tm.dial, respHeader: tm.respHeader}
	for _, u := range e.Upstreams {
		if u.Scheme == "h2c" {
			k.h2c = true
		}
	}
	return k
}

// transports holds the shared transports, counted by the routes using them.
var transports struct {
	sync.Mutex
	m map[transportKey]*sharedTransport
}

type sharedTransport struct {
	tr   *http.Transport
	refs int
}

func acquireTransport(k transportKey) (*http.Transport, error) {
	transports.Lock()
	defer transports.Unlock()
	if st, ok := transports.m[k]; ok {
		st.refs++
		return st.tr, nil
	}
	tr, err := newTransport(k)
	if err != nil {
		return nil, err
	}
	if transports.m == nil {
		transports.m = map[transportKey]*sharedTransport{}
	}
	transports.m[k] = &sharedTransport{tr: tr, refs: 1}
	return tr, nil
}

// releaseTransport drops a route's use of a transport; the last one out
// closes its idle connections (open ones finish on their own).
func releaseTransport(k transportKey) {
	transports.Lock()
	defer transports.Unlock()
	st, ok := transports.m[k]
	if !ok {
		return
	}
	if st.refs--; st.refs == 0 {
		delete(transports.m, k)
		st.tr.CloseIdleConnections()
	}
}

// newTransport builds an upstream transport for the routes of key k.
// https:// upstreams are spoken to in HTTP/1.1 (as nginx does), so
// WebSocket upgrades work; h2c:// ones in cleartext HTTP/2 only.
func newTransport(k transportKey) (*http.Transport, error) {
	dialer := &net.Dialer{Timeout: k.dial, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:           dialHTTP(dialer),
		MaxIdleConns:          0, // bounded per host below
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: k.respHeader,
		ExpectContinueTimeout: time.Second,
		TLSHandshakeTimeout:   k.dial,
		// Responses are passed through as the upstream sent them.
		DisableCompression: true,
	}
	if k.h2c {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	if ca := k.upstreamCA; ca != "" {
		pool, err := loadCA(ca)
		if err != nil {
			return nil, err
		}
		// ServerName is left empty: the transport sets it to each
		// upstream's host, so SNI and verification use that name.
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr, nil
}

// dialHTTP dials an upstream for the shared transport, marking failures
// as dial errors: a request whose connection was never made reached no
// upstream, so it may be retried on another.
func dialHTTP(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err}
		}
		return c, nil
	}
}

// dialError is a failure to connect to an upstream: nothing was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// rewrite turns the client's request into the upstream's: the target
// scheme (the host is chosen per attempt by RoundTrip), the original
// Host, and X-Forwarded-* and Forwarded set from what gatehouse saw —
// Rewrite mode has already dropped any the client sent, so they cannot
// be forged. The client address is the connection's, which is the
// PROXY-protocol address when a trusted load balancer sent one.
func (rs *routeState) rewrite(pr *httputil.ProxyRequest) {
	out := pr.Out
	out.URL.Scheme = rs.scheme
	out.URL.Host = rs.bal.ups[0].target.Host
	out.Host = pr.In.Host
	dropFoldedFields(out.Header) // X_Forwarded_For and the like (policy.go)
	pr.SetXForwarded()
	out.Header["Forwarded"] = []string{forwardedValue(pr.In)}
}

// modifyResponse applies the response rules the own engines apply
// (behaviour_test.go): the route's hsts replaces the upstream's
// (the engine has set it), and a 304 carries no Content-Length and no
// body: x/net's HTTP/2 client (h2c:// upstreams) otherwise waits for the
// 304's Content-Length in body bytes and fails the response.
func (rs *routeState) modifyResponse(res *http.Response) error {
	if rs.hsts != "" {
		res.Header.Del("Strict-Transport-Security")
	}
	if res.StatusCode == http.StatusNotModified {
		res.Header.Del("Content-Length")
		res.Body.Close()
		res.Body, res.ContentLength = http.NoBody, 0
	}
	return nil
}

// forwardedValue is the RFC 7239 Forwarded element for r:
// for=<client>;host=<host>;proto=https.
func forwardedValue(r *http.Request) string {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	var b strings.Builder
	b.Grow(len(ip) + len(r.Host) + 32)
	b.WriteString("for=")
	switch {
	case err != nil || ip == "":
		b.WriteString("unknown")
	case strings.IndexByte(ip, ':') >= 0: // IPv6: quoted and bracketed
		b.WriteString(`"[`)
		b.WriteString(ip)
		b.WriteString(`]"`)
	default:
		b.WriteString(ip)
	}
	if r.Host != "" {
		b.WriteString(";host=")
		if isToken(r.Host) {
			b.WriteString(r.Host)
		} else {
			b.WriteString(strconv.Quote(r.Host))
		}
	}
	if r.TLS != nil {
		b.WriteString(";proto=https")
	} else {
		b.WriteString(";proto=http")
	}
	return b.String()
}

// isToken reports whether s is an RFC 7230 token (else it is quoted).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return s != ""
}

// proxyError answers a failed upstream exchange: 502 (504 on timeout)
// with a short plain body that leaks nothing internal; the details go
// to the log with the route, upstream and client.
func (rs *routeState) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	canceled := errors.Is(err, context.Canceled) && r.Context().Err() != nil
	_ = rs.answerFailure(w, canceled, failedUpstream(err), err, r.Method, r.URL.Path, r.RemoteAddr)
}

// bufferPool lends 32 KiB copy buffers to the reverse proxy, so a
// streamed body does not allocate one per request.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
