// Package proxy owns gatehouse's listeners and everything that forwards
// bytes: the ClientHello peek that routes a connection by SNI, TLS
// termination, the HTTP reverse proxy, the TCP pipe and passthrough.
//
// Data flows one way: listener → ClientHello → route → TLS → handler →
// upstream. The route table is swapped atomically on reload; a
// connection keeps the route it was accepted with until it closes.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Certs is what the proxy needs from the certificate manager.
type Certs interface {
	// GetCertificate returns the certificate for a handshake already
	// routed to e. It must not block on the network.
	GetCertificate(e *routes.Entry, hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// HandleHTTPChallenge answers an ACME HTTP-01 request, reporting
	// whether it did.
	HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool
}

// Options configure a Server.
type Options struct {
	Certs  Certs
	Logger *slog.Logger
}

// Server is gatehouse's data plane.
type Server struct {
	certs Certs
	log   *slog.Logger

	state atomic.Pointer[snapshot]

	httpsLn, httpLn net.Listener
	httpsPort       string

	tlsHTTP, tlsChallenge *tls.Config
	tlsTCP                sync.Map // ALPN list joined by "," -> *tls.Config

	h1     *http.Server // serves TLS connections routed to http mode
	h1Ln   *chanListener
	plain  *http.Server // the http listener: ACME HTTP-01 + redirect
	closed atomic.Bool

	conns connSet // open tcp/passthrough streams, closed at the drain deadline
}

// snapshot is one config's worth of routing: the table and the live
// state of each route (its reverse proxy, balancer).
type snapshot struct {
	table  *routes.Table
	routes []*routeState
	tm     timeouts
}

type timeouts struct {
	handshake, readHeader, idle, dial, respHeader time.Duration
}

func timeoutsOf(c *routes.Config) timeouts {
	t := c.Timeouts
	return timeouts{
		handshake:  t.Handshake.Or(10 * time.Second),
		readHeader: t.ReadHeader.Or(10 * time.Second),
		idle:       t.Idle.Or(2 * time.Minute),
		dial:       t.UpstreamDial.Or(5 * time.Second),
		respHeader: t.UpstreamHeader.Or(60 * time.Second),
	}
}

// New returns a Server; it listens on nothing until Serve.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{certs: opts.Certs, log: opts.Logger}
	s.tlsHTTP = s.baseTLS([]string{"h2", "http/1.1"})
	s.tlsChallenge = s.baseTLS([]string{"acme-tls/1"})
	s.h1Ln = newChanListener()
	s.h1 = &http.Server{
		Handler:     http.HandlerFunc(s.serveHTTP),
		ConnContext: connContext,
		ErrorLog:    slogErrorLog(s.log, "http"),
		Protocols:   protocols(true, true),
	}
	return s
}

func protocols(h1, h2 bool) *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(h1)
	p.SetHTTP2(h2)
	return p
}

// baseTLS builds a server TLS config: certificates come from the route
// the connection was peeked into, carried on the replayConn.
func (s *Server) baseTLS(alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: alpn,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			rc, ok := hello.Conn.(*replayConn)
			if !ok || rc.route == nil {
				return nil, nil // → unrecognized_name
			}
			return s.certs.GetCertificate(rc.route.entry, hello)
		},
	}
}

// tcpTLS returns the TLS config for a tcp route negotiating alpn
// (nil: no ALPN, so clients offering any protocol connect).
func (s *Server) tcpTLS(alpn []string) *tls.Config {
	key := strings.Join(alpn, ",")
	if c, ok := s.tlsTCP.Load(key); ok {
		return c.(*tls.Config)
	}
	c, _ := s.tlsTCP.LoadOrStore(key, s.baseTLS(alpn))
	return c.(*tls.Config)
}

// refuseTLS answers a ClientHello gatehouse has no route for: no
// certificate and no error makes crypto/tls send unrecognized_name.
var refuseTLS = &tls.Config{
	GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
}

// SetTable installs a new route table. Connections already open keep
// the route they were accepted with.
func (s *Server) SetTable(t *routes.Table) error {
	old := s.state.Load()
	snap := &snapshot{table: t, tm: timeoutsOf(t.Config())}
	for _, e := range t.Entries() {
		var prev *routeState
		if old != nil {
			prev = old.find(e)
		}
		rs, err := newRouteState(e, snap.tm, prev, s.log)
		if err != nil {
			return fmt.Errorf("route #%d: %w", e.Index+1, err)
		}
		snap.routes = append(snap.routes, rs)
	}
	s.state.Store(snap)
	s.h1.ReadHeaderTimeout = snap.tm.readHeader
	s.h1.IdleTimeout = snap.tm.idle
	if old != nil {
		for _, rs := range old.routes {
			if !slices.Contains(snap.routes, rs) {
				rs.retire()
			}
		}
	}
	return nil
}

// find returns the state of the route in this snapshot equal to e, so
// an unchanged route keeps its connection pool across a reload.
func (sn *snapshot) find(e *routes.Entry) *routeState {
	for _, rs := range sn.routes {
		if rs.sameAs(e) {
			return rs
		}
	}
	return nil
}

func (sn *snapshot) lookup(name string) *routeState {
	e := sn.table.Lookup(name)
	if e == nil {
		return nil
	}
	return sn.routes[e.Index]
}

// Listen binds the https and http listeners (http may be "").
// Binding happens before anything else so certmagic finds the ports
// taken and leaves challenges to these listeners.
func (s *Server) Listen(httpsAddr, httpAddr string) error {
	ln, err := net.Listen("tcp", httpsAddr)
	if err != nil {
		return listenError("https", httpsAddr, err)
	}
	s.httpsLn = ln
	if httpAddr != "" {
		pl, err := net.Listen("tcp", httpAddr)
		if err != nil {
			ln.Close()
			return listenError("http", httpAddr, err)
		}
		s.httpLn = pl
	}
	return nil
}

func listenError(which, addr string, err error) error {
	var hint string
	switch {
	case errors.Is(err, errAddrInUse()):
		hint = "another process holds that port (ss -ltnp shows which); stop it or choose another [listen] " + which + " address"
	case errors.Is(err, errAccess()):
		hint = "binding ports below 1024 needs root or CAP_NET_BIND_SERVICE; grant the capability or listen on 8443/8080 and map the ports"
	default:
		hint = "check the [listen] " + which + " address"
	}
	return fmt.Errorf("cannot listen on %s (%s): %v: %s", addr, which, unwrapSyscall(err), hint)
}

// SetCerts sets the certificate source; it must be called before Serve.
// (The certificate manager needs the bound ports, so it is built after Listen.)
func (s *Server) SetCerts(c Certs) { s.certs = c }

// CloseListeners releases the listeners of a server that will not Serve.
func (s *Server) CloseListeners() {
	for _, l := range []net.Listener{s.httpsLn, s.httpLn} {
		if l != nil {
			l.Close()
		}
	}
}

// UseListeners installs listeners made elsewhere (tests, socket activation).
func (s *Server) UseListeners(https, http net.Listener) {
	s.httpsLn, s.httpLn = https, http
}

// Addrs returns the bound listener addresses.
func (s *Server) Addrs() (https, http net.Addr) {
	if s.httpsLn != nil {
		https = s.httpsLn.Addr()
	}
	if s.httpLn != nil {
		http = s.httpLn.Addr()
	}
	return
}

// Serve runs the listeners until Shutdown. It returns once they are closed.
func (s *Server) Serve() error {
	if s.state.Load() == nil {
		return errors.New("proxy: Serve called before SetTable")
	}
	if _, port, err := net.SplitHostPort(s.httpsLn.Addr().String()); err == nil {
		s.httpsPort = port
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = s.h1.Serve(s.h1Ln) }()
	if s.httpLn != nil {
		s.plain = &http.Server{
			Handler:           http.HandlerFunc(s.servePlain),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       30 * time.Second,
			ErrorLog:          slogErrorLog(s.log, "http-plain"),
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.plain.Serve(s.httpLn) }()
	}
	err := s.acceptLoop()
	wg.Wait()
	if s.closed.Load() {
		return nil
	}
	return err
}

func (s *Server) acceptLoop() error {
	var delay time.Duration
	for {
		c, err := s.httpsLn.Accept()
		if err != nil {
			if s.closed.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// out of file descriptors and the like: back off, don't spin
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go s.handleConn(c)
	}
}

// handleConn routes one accepted TLS connection.
func (s *Server) handleConn(c net.Conn) {
	snap := s.state.Load()
	metricConnsAccepted.Inc()
	hello, peeked, err := peekHello(c, snap.tm.handshake)
	if err != nil {
		metricHandshakeFail("bad_hello")
		s.log.Debug("dropping connection: no valid ClientHello", "remote", c.RemoteAddr(), "error", err)
		c.Close()
		return
	}
	rs := snap.lookup(hello.ServerName)
	if rs == nil {
		reason := "unknown_sni"
		if hello.ServerName == "" {
			reason = "no_sni"
		}
		metricHandshakeFail(reason)
		s.log.Debug("refusing handshake: no route for SNI", "sni", hello.ServerName, "remote", c.RemoteAddr())
		s.refuse(c, peeked, snap.tm.handshake)
		return
	}
	rc := &replayConn{Conn: c, pending: peeked, route: rs, hello: hello}
	if rs.mode == routes.ModePassthrough {
		s.passthrough(rc)
		return
	}

	cfg := s.tlsHTTP
	switch {
	case len(hello.ALPN) == 1 && hello.ALPN[0] == "acme-tls/1":
		cfg = s.tlsChallenge
	case rs.mode == routes.ModeTCP:
		cfg = s.tcpTLS(rs.entry.Route.ALPN)
	}
	tc := tls.Server(rc, cfg)
	_ = c.SetDeadline(time.Now().Add(snap.tm.handshake))
	if err := tc.Handshake(); err != nil {
		metricHandshakeFail(handshakeReason(err))
		s.log.Debug("TLS handshake failed", "sni", hello.ServerName, "remote", c.RemoteAddr(), "error", err)
		tc.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	metricHandshakeOK(tc.ConnectionState().Version)
	if cfg == s.tlsChallenge {
		tc.Close() // the CA only needed the handshake
		return
	}
	switch rs.mode {
	case routes.ModeTCP:
		s.pipeTCP(tc, rc)
	default:
		if !s.h1Ln.push(tc) {
			tc.Close()
		}
	}
}

// refuse runs a handshake that fails with unrecognized_name.
func (s *Server) refuse(c net.Conn, peeked []byte, timeout time.Duration) {
	rc := &replayConn{Conn: c, pending: peeked}
	tc := tls.Server(rc, refuseTLS)
	_ = c.SetDeadline(time.Now().Add(timeout))
	_ = tc.Handshake()
	tc.Close()
}

// Shutdown stops accepting, lets in-flight requests and streams finish
// until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closed.Store(true)
	if s.httpsLn != nil {
		s.httpsLn.Close()
	}
	s.h1Ln.Close()
	var errs []error
	if s.plain != nil {
		errs = append(errs, s.plain.Shutdown(ctx))
	}
	errs = append(errs, s.h1.Shutdown(ctx))
	done := s.conns.drain()
	select {
	case <-done:
	case <-ctx.Done():
		s.conns.closeAll()
		<-done
		errs = append(errs, fmt.Errorf("drain deadline passed; closed open streams"))
	}
	if st := s.state.Load(); st != nil {
		for _, rs := range st.routes {
			rs.retire()
		}
	}
	return errors.Join(errs...)
}
