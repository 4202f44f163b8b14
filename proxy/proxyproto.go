package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// PROXY protocol (HAProxy's v1 text and v2 binary headers), both sides.
//
// Listener side: [listen] proxy_protocol_from lists the load balancers
// allowed to put a PROXY header in front of a connection. A connection
// from one of them may carry a header (policy USE: a trusted balancer's
// own health checks often connect without one); a header from any other
// source fails the connection (policy REJECT) with a log line naming
// the source. The header is read lazily, on the ClientHello peek's
// first read, bounded by the handshake timeout. Everything after sees
// the client's address: logs, X-Forwarded-For, Forwarded, and the
// PROXY header gatehouse itself sends upstream.
//
// Upstream side: a route's proxy_protocol = "v1" | "v2" makes gatehouse
// write a header (client address → the address the client connected
// to) on each upstream connection before any other byte.

// trustedSources are the prefixes allowed to send PROXY headers.
type trustedSources []netip.Prefix

// parseTrusted reads proxy_protocol_from (validated: CIDRs or bare addresses).
func parseTrusted(list []string) trustedSources {
	var t trustedSources
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			t = append(t, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			t = append(t, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	return t
}

func (t trustedSources) contains(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	return t.containsAddr(ip.Unmap())
}

// containsAddr reports whether ip (unmapped) is a trusted source.
func (t trustedSources) containsAddr(ip netip.Addr) bool {
	for _, p := range t {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// acceptPROXY wraps a freshly accepted connection for the listener-side
// PROXY protocol; with no trusted source configured it is returned as
// is (a PROXY header then fails the ClientHello peek, see proxyProblem).
func acceptPROXY(c net.Conn, trusted trustedSources, timeout time.Duration) net.Conn {
	if len(trusted) == 0 {
		return c
	}
	policy := proxyproto.REJECT
	if trusted.contains(c.RemoteAddr()) {
		policy = proxyproto.USE
	}
	return proxyproto.NewConn(c, proxyproto.WithPolicy(policy), proxyproto.SetReadHeaderTimeout(timeout))
}

// rawRemote is the TCP peer of c, under any PROXY header.
func rawRemote(c net.Conn) net.Addr {
	if pc, ok := c.(*proxyproto.Conn); ok {
		return pc.Raw().RemoteAddr()
	}
	return c.RemoteAddr()
}

// proxyProblem explains a failed ClientHello peek that was in fact a
// PROXY header problem, or returns "".
func proxyProblem(err error, peeked []byte) string {
	switch {
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		return "PROXY protocol header from a source not in [listen] proxy_protocol_from; connection closed"
	case err != nil && strings.Contains(err.Error(), "proxyproto:"):
		return "malformed PROXY protocol header from a trusted source: " + err.Error()
	case bytes.HasPrefix(peeked, proxyproto.SIGV1), bytes.HasPrefix(peeked, proxyproto.SIGV2):
		return "PROXY protocol header received, but [listen] proxy_protocol_from is empty; connection closed"
	}
	return ""
}

// proxyListener applies the listener-side policy to the plain-HTTP
// listener's connections, with the trusted list of the current config.
type proxyListener struct {
	net.Listener
	s *Server
}

func (l proxyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	snap := l.s.state.Load()
	if snap == nil || len(snap.trusted) == 0 {
		return c, nil
	}
	return &loggedProxyConn{Conn: acceptPROXY(c, snap.trusted, snap.tm.readHeader), log: l.s.log}, nil
}

// loggedProxyConn logs a refused PROXY header once (net/http closes
// such a connection without a word).
type loggedProxyConn struct {
	net.Conn
	log    *slog.Logger
	logged bool
}

func (c *loggedProxyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !c.logged {
		c.logged = true
		if msg := proxyProblem(err, nil); msg != "" {
			c.log.Warn(msg, "listener", "http", "source", rawRemote(c.Conn))
		}
	}
	return n, err
}

// proxyVersion maps proxy_protocol to the header version (0: off).
func proxyVersion(s string) byte {
	switch s {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}

// sendPROXY writes a PROXY header saying "src connected to dst" as the
// first bytes on an upstream connection, within timeout. Addresses of
// different families (an IPv4 client behind an IPv6 balancer address)
// cannot be written; the header then says LOCAL/UNKNOWN, and the
// upstream sees the connection as gatehouse's own.
func sendPROXY(up net.Conn, version byte, src, dst net.Addr, timeout time.Duration) error {
	h := proxyproto.HeaderProxyFromAddrs(version, src, dst)
	b, err := h.Format()
	if err != nil {
		b, err = localHeader(version).Format()
		if err != nil {
			return err
		}
	}
	_ = up.SetWriteDeadline(time.Now().Add(timeout))
	_, err = up.Write(b)
	_ = up.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("writing PROXY header: %w", err)
	}
	return nil
}

// localHeader is the header of a connection gatehouse makes for itself
// (health checks): v2 LOCAL, v1 "PROXY UNKNOWN".
func localHeader(version byte) *proxyproto.Header {
	return &proxyproto.Header{Version: version, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
}

// Upstream connections of an http route with proxy_protocol are pinned
// to the client connection they were opened for, because a PROXY header
// describes one client connection: a connection shared between clients
// would credit every later request to the first client. Each client
// connection gets its own small pool (a clone of the route's transport,
// created on its first request), so keep-alive to the upstream still
// works for that client — its requests reuse its own connections, and a
// client's HTTP/2 streams may open several, each with the client's
// header — and the pool is closed when the client connection closes.
// Turning keep-alive off instead would cost a dial per request and give
// the upstream no way to tell two requests of one connection from two
// clients.
type pinnedPool struct {
	mu     sync.Mutex
	rs     *routeState // the route tr was made for (a reload may route later requests elsewhere)
	tr     *http.Transport
	closed bool
	// the own HTTP/1.1 client's connections (HTTP/2 streams to http://
	// and https:// upstreams, upstream_from_h2.go), idle and watched; made for ownRS
	own   []*upConn
	ownRS *routeState
}

// maxPinnedIdle bounds the idle own-client connections of one client
// connection (as the Transport's MaxIdleConnsPerHost did).
const maxPinnedIdle = 4

// pinnedConn returns an upstream connection to up for requests of the
// client connection rc on route rs: an idle one it opened before
// (checked: nothing unsolicited came), else a new one that starts with
// the client's PROXY header, before any TLS handshake with an https://
// upstream (a failure is a *dialError).
func pinnedConn(rc *replayConn, rs *routeState, up *upstream, fresh bool) (*upConn, error) {
	p := rc.pin.Load()
	if p == nil {
		rc.pin.CompareAndSwap(nil, new(pinnedPool))
		p = rc.pin.Load()
	}
	for !fresh {
		c, err := p.takeOwn(rs, up)
		if err != nil {
			return nil, &dialError{err}
		}
		if c == nil {
			break
		}
		if c.reuse() {
			return c, nil
		}
		c.close()
	}
	uc, err := dialUp(rs, up, nil, func(nc net.Conn) error {
		return sendPROXY(nc, rs.ppVersion, rc.RemoteAddr(), rc.LocalAddr(), rs.dial)
	})
	if err != nil {
		return nil, err
	}
	uc.pin = p
	return uc, nil
}

// takeOwn removes an idle connection to up from the pool (nil: none).
func (p *pinnedPool) takeOwn(rs *routeState, up *upstream) (*upConn, error) {
	p.mu.Lock()
	if p.closed || p == pinClosed {
		p.mu.Unlock()
		return nil, errClientGone
	}
	var stale []*upConn
	if p.ownRS != rs {
		// a reload moved this connection's requests to a new route state
		stale, p.own, p.ownRS = p.own, nil, rs
	}
	var c *upConn
	for i := len(p.own) - 1; i >= 0; i-- {
		if p.own[i].up == up {
			c = p.own[i]
			p.own = append(p.own[:i], p.own[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	for _, x := range stale {
		x.close()
	}
	return c, nil
}

// putOwn keeps c (idle, watched) for the client's next requests.
func (p *pinnedPool) putOwn(c *upConn) {
	p.mu.Lock()
	if p.closed || len(p.own) >= maxPinnedIdle {
		p.mu.Unlock()
		c.close()
		return
	}
	p.own = append(p.own, c)
	p.mu.Unlock()
}

// removeOwn drops c from the idle list (the watcher closed it).
func (p *pinnedPool) removeOwn(c *upConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.own {
		if x == c {
			p.own = append(p.own[:i], p.own[i+1:]...)
			return
		}
	}
}

// pinClosed marks a client connection closed before it had a pool.
var pinClosed = new(pinnedPool)

var errClientGone = errors.New("client connection closed")

// pinnedTransport returns the transport of the request's client connection.
func (rs *routeState) pinnedTransport(req *http.Request) (*http.Transport, error) {
	rc := connFrom(req.Context())
	if rc == nil {
		return nil, errors.New("proxy_protocol: request without its client connection")
	}
	p := rc.pin.Load()
	if p == nil {
		rc.pin.CompareAndSwap(nil, new(pinnedPool))
		p = rc.pin.Load()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p == pinClosed {
		return nil, errClientGone
	}
	if p.tr != nil && p.rs != rs {
		// a reload moved this connection's requests to a new route state
		p.tr.CloseIdleConnections()
		p.tr = nil
	}
	if p.tr == nil {
		tr := rs.transport.Clone()
		tr.MaxIdleConnsPerHost = 4
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := rs.dialer.DialContext(ctx, network, addr)
			if err == nil {
				if err = sendPROXY(c, rs.ppVersion, rc.RemoteAddr(), rc.LocalAddr(), rs.dial); err != nil {
					c.Close()
				}
			}
			if err != nil {
				return nil, &dialError{err}
			}
			return c, nil
		}
		p.tr, p.rs = tr, rs
	}
	return p.tr, nil
}

func (p *pinnedPool) close() {
	p.mu.Lock()
	p.closed = true
	if p.tr != nil {
		p.tr.CloseIdleConnections()
	}
	own := p.own
	p.own = nil
	p.mu.Unlock()
	for _, c := range own {
		c.close()
	}
}
