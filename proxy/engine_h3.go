package proxy

// HTTP/3: a QUIC listener on the https address's UDP port, serving the
// http routes (engine_h3_handler.go: the Host/421 check, HSTS, forwarding
// fields, the access record, the route's metrics; upstream_from_h3.go: the
// exchange with http:// and https:// upstreams through the own
// HTTP/1.1 client). quic-go's http3
// package does the framing; gatehouse picks the route by SNI exactly
// as on TCP.

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// h3MaxHeaderBytes bounds a request's HEADERS frame, as the TCP engines
// bound a request head.
const h3MaxHeaderBytes = 64 << 10

// h3MaxStreams bounds concurrent requests per QUIC connection (HTTP/2
// advertises the same order of magnitude).
const h3MaxStreams = 100

// udpBufferWant is the receive buffer quic-go asks the kernel for.
const udpBufferWant = 7 << 20

// h3Enabled reports whether HTTP/3 serves route rs.
func (sn *snapshot) h3Enabled(rs *routeState) bool {
	if rs == nil || rs.mode != routes.ModeHTTP {
		return false
	}
	cfg := sn.table.Config()
	if cfg.Listen.HTTP3 != nil && !*cfg.Listen.HTTP3 {
		return false
	}
	return rs.entry.Route.HTTP3 == nil || *rs.entry.Route.HTTP3
}

// altSvc returns the Alt-Svc value announcing HTTP/3 for rs, or "".
func (s *Server) altSvc(rs *routeState) string {
	v, _ := s.h3AltSvc.Load().(string)
	if v == "" {
		return ""
	}
	if snap := s.state.Load(); snap == nil || !snap.h3Enabled(rs) {
		return ""
	}
	return v
}

// startH3 binds UDP on the https listener's address and serves HTTP/3
// there, unless no route of the current table wants it. A port UDP
// cannot bind is logged and HTTP/3 stays off (no Alt-Svc is sent).
func (s *Server) startH3() {
	snap := s.state.Load()
	cfg := snap.table.Config()
	if cfg.Listen.HTTP3 != nil && !*cfg.Listen.HTTP3 {
		return
	}
	want := false
	for _, rs := range snap.routes {
		if snap.h3Enabled(rs) {
			want = true
		}
	}
	if !want || s.httpsLn == nil {
		return
	}
	addr := s.httpsLn.Addr().String()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		s.log.Warn("HTTP/3 is off: cannot listen on UDP "+addr, "error", err)
		return
	}
	s.warnUDPBuffer()
	srv := &http3.Server{
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			GetCertificate: s.h3Certificate,
		},
		QUICConfig: &quic.Config{
			HandshakeIdleTimeout:  snap.tm.handshake,
			MaxIdleTimeout:        snap.tm.idle,
			MaxIncomingStreams:    h3MaxStreams,
			MaxIncomingUniStreams: 8,
			Allow0RTT:             false, // replayable: off (README)
		},
		Handler:        http.HandlerFunc(s.serveH3),
		MaxHeaderBytes: h3MaxHeaderBytes,
		IdleTimeout:    snap.tm.idle,
		ConnContext:    s.h3ConnContext,
		Logger:         s.log.With("engine", "h3"),
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		pc.Close()
		return
	}
	s.h3 = srv
	s.mu.Unlock()
	_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	s.h3AltSvc.Store(`h3=":` + port + `"; ma=86400`)
	s.log.Info("HTTP/3 listening", "udp", pc.LocalAddr().String())
	go func() {
		if err := srv.Serve(pc); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) {
			s.log.Warn("HTTP/3 listener stopped", "error", err)
		}
	}()
}

// h3Certificate routes a QUIC handshake by SNI as handleConn routes a
// TCP one: a name with no http route that serves HTTP/3 gets (nil, nil),
// which crypto/tls answers with unrecognized_name, never another name's
// certificate.
func (s *Server) h3Certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	snap := s.state.Load()
	rs := snap.lookup(hello.ServerName)
	if !snap.h3Enabled(rs) {
		reason := "unknown_sni"
		if hello.ServerName == "" {
			reason = "no_sni"
		}
		metricHandshakeFail(reason)
		return nil, nil
	}
	return s.certs.GetCertificate(rs.entry, hello)
}

// h3ConnContext gives a QUIC connection its route, looked up once when
// it is accepted: after a reload its requests follow routeFor's rules,
// as an HTTP/2 connection's do.
func (s *Server) h3ConnContext(ctx context.Context, c *quic.Conn) context.Context {
	st := c.ConnectionState().TLS
	snap := s.state.Load()
	rs := snap.lookup(st.ServerName)
	if !snap.h3Enabled(rs) {
		rs = nil
	}
	metricHandshakeOK(st.Version)
	rc := &replayConn{Conn: quicAddrs{local: c.LocalAddr(), remote: c.RemoteAddr()}, route: rs, snap: snap,
		hello: Hello{ServerName: st.ServerName, ALPN: []string{"h3"}}}
	rc.h3idle = newH3IdleWatch(c, snap.tm.idle) // engine_h3_idle.go
	// the upstream connections pinned to this client (proxy_protocol
	// routes: pinnedConn) close with the QUIC connection
	context.AfterFunc(c.Context(), func() { _ = rc.Close() })
	return context.WithValue(ctx, connKey{}, rc)
}

// quicAddrs stands for a QUIC connection where request handling asks
// for a net.Conn: only its addresses are ever used.
type quicAddrs struct{ local, remote net.Addr }

var errQUICAddrs = errors.New("not a stream connection")

func (q quicAddrs) Read([]byte) (int, error)         { return 0, errQUICAddrs }
func (q quicAddrs) Write([]byte) (int, error)        { return 0, errQUICAddrs }
func (q quicAddrs) Close() error                     { return nil }
func (q quicAddrs) LocalAddr() net.Addr              { return q.local }
func (q quicAddrs) RemoteAddr() net.Addr             { return q.remote }
func (q quicAddrs) SetDeadline(time.Time) error      { return nil }
func (q quicAddrs) SetReadDeadline(time.Time) error  { return nil }
func (q quicAddrs) SetWriteDeadline(time.Time) error { return nil }

// warnUDPBuffer says, once, when the kernel caps UDP receive buffers
// below what QUIC needs at speed, with the sysctl that raises it.
func (s *Server) warnUDPBuffer() {
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		return
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n >= udpBufferWant {
		return
	}
	s.log.Warn("HTTP/3: the kernel caps UDP receive buffers below what QUIC needs at speed; raise it with: sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000",
		"rmem_max", n, "want", udpBufferWant)
}

func init() {
	// gatehouse says it itself, with the sysctl (warnUDPBuffer).
	_ = os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
}
