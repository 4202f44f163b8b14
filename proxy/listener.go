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
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Certs is what the proxy needs from the certificate manager.
type Certs interface {
	// GetCertificate returns the certificate for a handshake already
	// routed to e. It must not block on the network, except for an
	// on-demand name's first handshake (bounded by the handshake timeout).
	GetCertificate(e *routes.Entry, hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// HandleHTTPChallenge answers an ACME HTTP-01 request, reporting
	// whether it did.
	HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool
}

// Options configure a Server.
type Options struct {
	Certs  Certs
	Logger *slog.Logger
	// AccessLog, if set, gets one line per request and per stream.
	AccessLog *slog.Logger
}

// Server is gatehouse's data plane.
type Server struct {
	certs  Certs
	log    *slog.Logger
	access *slog.Logger // nil: no access log

	state atomic.Pointer[snapshot]

	httpsLn, httpLn net.Listener
	httpsPort       string
	h3              *http3.Server // HTTP/3 on the https address's UDP port (engine_h3.go); nil: off
	h3AltSvc        atomic.Value  // string: the Alt-Svc value once HTTP/3 listens

	tlsHTTP, tlsChallenge *tls.Config
	tlsTCP                sync.Map // ALPN list joined by "," -> *tls.Config

	mu      sync.Mutex // guards plain, h3 and closed's effect on starting them
	serveWG sync.WaitGroup

	plain  *http.Server // the http listener: ACME HTTP-01 + redirect
	closed atomic.Bool

	// conns holds the connections of open streams: tcp and passthrough
	// pipes, and WebSockets (an upgraded HTTP/1.1 connection leaves h1).
	// A drain waits for them; its deadline closes them.
	conns connSet

	// h1 holds the connections gatehouse's HTTP/1.1 server serves (engine_h1.go).
	h1 h1Set
	// h2conns holds the connections gatehouse's own HTTP/2 server
	// serves (proxy/internal/h2server, engine_h2.go): a drain sends each a GOAWAY and waits for them.
	h2conns h2Set

	// sources counts, per client address, handshakes in flight and
	// refused ClientHellos (listener_flood.go).
	sources sourceTable
	// keepAliveLater: the https listener accepts without TCP keep-alive
	// (Listen); a connection gets it once routed.
	keepAliveLater bool
}

// snapshot is one config's worth of routing: the table and the live
// state of each route (its reverse proxy, balancer).
type snapshot struct {
	table   *routes.Table
	routes  []*routeState
	byKey   map[string]*routeState // routeKey -> state, to find unchanged routes on reload
	tm      timeouts
	trusted trustedSources // [listen] proxy_protocol_from
	// sourceLimits: [listen] source_limits (listener_flood.go)
	sourceLimits bool
}

// maxHeaderBytes bounds a request's header block (HTTP/1.1 answers
// 431 beyond it; HTTP/2 advertises it as SETTINGS_MAX_HEADER_LIST_SIZE
// and answers 431 too). 64 KiB is four times nginx's default large
// header buffers and room for any real cookie jar.
const maxHeaderBytes = 64 << 10

type timeouts struct {
	handshake, readHeader, idle, dial, respHeader time.Duration
	// clientBody and send bound each wait on a client while an upstream
	// exchange is held: for more request body, and for it to take more
	// response (socket or HTTP/2 window); no progress for this long
	// ends the exchange.
	clientBody, send time.Duration
}

func timeoutsOf(c *routes.Config) timeouts {
	t := c.Timeouts
	return timeouts{
		handshake:  t.HandshakeTimeout(),
		readHeader: t.ReadHeaderTimeout(),
		idle:       t.IdleTimeout(),
		dial:       t.UpstreamDialTimeout(),
		respHeader: t.UpstreamHeaderTimeout(),
		clientBody: t.ClientBodyTimeout(),
		send:       t.SendTimeout(),
	}
}

// New returns a Server; it listens on nothing until Serve.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{certs: opts.Certs, log: opts.Logger, access: opts.AccessLog, sources: newSourceTable()}
	s.tlsHTTP = s.baseTLS([]string{"h2", "http/1.1"})
	s.tlsChallenge = s.baseTLS([]string{"acme-tls/1"})
	return s
}

// tls12Suites are the TLS 1.2 cipher suites gatehouse serves: forward
// secret (ECDHE) and AEAD only, Mozilla's "intermediate" list less the
// DHE suites Go does not implement. No CBC suite (Lucky13-style padding
// oracles, and Go's own docs call them insecure-ish), no static RSA key
// exchange. TLS 1.3's suites are all AEAD and not configurable in Go.
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// echSource is implemented by a Certs that holds Encrypted Client
// Hello keys (tlsconfig.Manager).
type echSource interface {
	ECHKeys() []tls.EncryptedClientHelloKey
}

// echKeyFunc returns the ECH key source, or nil when the Certs has none.
func (s *Server) echKeyFunc() func() []tls.EncryptedClientHelloKey {
	if e, ok := s.certs.(echSource); ok {
		return e.ECHKeys
	}
	return nil
}

// baseTLS builds a server TLS config: certificates come from the route
// the connection was peeked into, carried on the replayConn. Every
// terminated connection (http and tcp routes, ACME TLS-ALPN-01) gets
// TLS 1.2 at least, with AEAD suites only (tls12Suites).
func (s *Server) baseTLS(alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: tls12Suites,
		NextProtos:   alpn,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			rc, ok := hello.Conn.(*replayConn)
			if !ok || rc.route == nil {
				return nil, nil // → unrecognized_name
			}
			return s.certs.GetCertificate(rc.route.entry, hello)
		},
		// The real handshake decrypts an Encrypted Client Hello with the
		// keys the peek used; a hello it cannot decrypt (stale keys, or
		// a client's GREASE) is answered under the outer name, with the
		// current config as a retry config (RFC 9849 §6.1.6).
		GetEncryptedClientHelloKeys: func(*tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error) {
			if f := s.echKeyFunc(); f != nil {
				return f(), nil
			}
			return nil, nil
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

// alertUnrecognizedName is a TLS record holding a fatal
// unrecognized_name alert (RFC 8446 6.2), with the record version
// crypto/tls itself uses before a version is negotiated. No ServerHello
// has been sent, so the alert goes in plaintext.
var alertUnrecognizedName = []byte{21, 3, 1, 0, 2, 2, 112}

// SetTable installs a new route table. Connections already open keep
// the route they were accepted with.
func (s *Server) SetTable(t *routes.Table) error {
	old := s.state.Load()
	snap := &snapshot{table: t, tm: timeoutsOf(t.Config()), trusted: parseTrusted(t.Config().Listen.ProxyProtocolFrom),
		sourceLimits: t.Config().Listen.SourceLimitsOn()}
	snap.byKey = make(map[string]*routeState, len(t.Entries()))
	var fresh []*routeState // states built for this table (not kept from the old one)
	for _, e := range t.Entries() {
		key := routeKey(e, snap.tm)
		var prev *routeState
		if old != nil {
			prev = old.byKey[key]
		}
		rs, err := newRouteState(e, snap.tm, prev, s.log)
		if err != nil {
			// the table is refused: give back what the new states hold
			for _, built := range fresh {
				built.discard()
			}
			return fmt.Errorf("route #%d: %w", e.Index+1, err)
		}
		if rs != prev {
			fresh = append(fresh, rs)
		}
		snap.routes = append(snap.routes, rs)
		snap.byKey[key] = rs
	}
	s.state.Store(snap)
	for _, rs := range snap.routes {
		rs.start()
	}
	if old != nil {
		for _, rs := range old.routes {
			if !slices.Contains(snap.routes, rs) {
				rs.retire()
			}
		}
	}
	return nil
}

// routeKey identifies a route's configuration (everything but its line
// in the file) and the timeouts its transport was built with: a route
// with the same key after a reload keeps its state, connection pool
// and health. A map of keys keeps a reload of many routes linear.
func routeKey(e *routes.Entry, tm timeouts) string {
	r := *e.Route
	r.Line = 0
	return fmt.Sprintf("%#v %v", r, tm)
}

func (sn *snapshot) lookup(name string) *routeState {
	e := sn.table.Lookup(name)
	if e == nil {
		return nil
	}
	return sn.routes[e.Index]
}

// lookupIP routes a ClientHello without SNI (clients send none when they
// dial an IP address) to the route listing the local address it arrived
// on, exactly: a pattern route never takes a connection without a name.
func (sn *snapshot) lookupIP(local net.Addr) *routeState {
	ta, ok := local.(*net.TCPAddr)
	if !ok {
		return nil
	}
	ip := ta.IP.String()
	e := sn.table.Lookup(ip)
	if e == nil || !slices.Contains(e.Hosts, ip) {
		return nil
	}
	return sn.routes[e.Index]
}

// Listen binds the https and http listeners (http may be "").
// Binding happens before anything else so certmagic finds the ports
// taken and leaves challenges to these listeners.
func (s *Server) Listen(httpsAddr, httpAddr string) error {
	// no keep-alive at accept: a refused connection would pay four
	// socket options for it (keepAliveRouted sets it once routed)
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", httpsAddr)
	if err != nil {
		return listenError("https", httpsAddr, err)
	}
	s.httpsLn, s.keepAliveLater = ln, true
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
	s.startH3()
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return nil
	}
	if s.httpLn != nil {
		s.plain = &http.Server{
			Handler:           http.HandlerFunc(s.servePlain),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       30 * time.Second,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slogErrorLog(s.log, "http-plain"),
		}
		s.serveWG.Add(1)
		go func() { defer s.serveWG.Done(); _ = s.plain.Serve(proxyListener{s.httpLn, s}) }()
	}
	s.mu.Unlock()
	err := s.acceptLoop()
	s.serveWG.Wait()
	if s.closed.Load() {
		return nil
	}
	return err
}

func (s *Server) acceptLoop() error {
	var delay time.Duration
	first := newFirstRead()
	turns := newAcceptTurns()
	defer turns.close()
	hellos := newHelloWait(s)
	defer hellos.close()
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
		s.accepted(c, first, hellos)
		turns.accepted()
	}
}

// handleConn routes one accepted TLS connection, under snap (the
// config it was accepted with); prefix holds the bytes the accept loop
// read from it already. The handshake timeout bounds the ClientHello
// peek and the TLS handshake together, from here: a client that sends
// nothing, or a hello byte by byte, is closed when it runs out. src
// counts the handshake for its source until it ends; the handshake
// timeout runs from accepted.
func (s *Server) handleConn(c net.Conn, snap *snapshot, prefix []byte, src *sourceEntry, accepted time.Time) {
	shaking := true
	defer func() {
		if shaking {
			s.sources.done(src, false)
		}
	}()
	tcp := c
	c = acceptPROXY(c, snap.trusted, snap.tm.handshake)
	_ = c.SetDeadline(accepted.Add(snap.tm.handshake))
	if (prefix == nil || recordPartial(prefix)) && len(snap.trusted) == 0 {
		var v firstVerdict
		prefix, v = s.waitFirst(snap, c, prefix)
		switch v {
		case firstRefused:
			shaking = false
			s.sources.done(src, true) // before the client hears of it
			s.refuse(c)
			return
		case firstGone:
			metricBadHello.Inc()
			c.Close()
			return
		}
	}
	hello, peeked, err := peekHello(c, prefix, s.echKeyFunc())
	if err != nil {
		if msg := proxyProblem(err, peeked); msg != "" {
			metricHandshakeFail("proxy_header")
			s.log.Warn(msg, "source", rawRemote(c))
		} else {
			metricHandshakeFail("bad_hello")
			s.log.Debug("dropping connection: no valid ClientHello", "remote", c.RemoteAddr(), "error", err)
		}
		if looksLikeHTTP(peeked) {
			// the common mistake of plain HTTP to the TLS port: say so
			_, _ = io.WriteString(c, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		c.Close()
		return
	}
	rs := snap.lookup(hello.ServerName)
	if rs == nil && hello.ServerName == "" {
		rs = snap.lookupIP(c.LocalAddr())
	}
	if rs != nil && rs.mode == routes.ModePassthrough && hello.ECHOffered && hello.Outer != hello.ServerName {
		// A passthrough upstream gets the client's bytes as they are,
		// encrypted to gatehouse's ECH key: it could not read the inner
		// hello. Such routes are routed by the outer (public) name.
		rs = snap.lookup(hello.Outer)
	}
	if rs == nil {
		reason := "unknown_sni"
		if hello.ServerName == "" {
			reason = "no_sni"
		}
		metricHandshakeFail(reason)
		s.log.Debug("refusing handshake: no route for SNI", "sni", hello.ServerName, "remote", c.RemoteAddr())
		shaking = false
		s.sources.done(src, true) // before the client hears of it
		s.refuse(c)
		return
	}
	s.keepAliveRouted(tcp)
	rc := &replayConn{Conn: c, pending: peeked, route: rs, snap: snap, hello: hello}
	if rs.mode == routes.ModePassthrough {
		_ = c.SetDeadline(time.Time{})
		shaking = false
		s.sources.done(src, false)
		rc.countActive(rs.mode)
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
	if err := tc.Handshake(); err != nil {
		metricHandshakeFail(handshakeReason(err))
		s.log.Debug("TLS handshake failed", "sni", hello.ServerName, "remote", c.RemoteAddr(), "error", err)
		tc.Close()
		return
	}
	shaking = false
	s.sources.done(src, false)
	_ = c.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	metricHandshakeOK(st.Version)
	if hello.ECHOffered {
		metricECH(st.ECHAccepted, c.RemoteAddr())
	}
	if cfg == s.tlsChallenge {
		tc.Close() // the CA only needed the handshake
		return
	}
	rc.countActive(rs.mode)
	switch rs.mode {
	case routes.ModeTCP:
		s.pipeTCP(tc, rc)
	default:
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			s.serveH2(tc, rc)
			return
		}
		s.serveH1(tc, rc)
	}
}

// looksLikeHTTP reports whether b starts like a plain HTTP request.
func looksLikeHTTP(b []byte) bool {
	for _, m := range []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "PRI * "} {
		if len(b) >= len(m) && string(b[:len(m)]) == m {
			return true
		}
	}
	return false
}

// refuse answers a ClientHello gatehouse has no route for with an
// unrecognized_name alert and closes, within the deadline already set
// on c. It writes the alert itself rather than running crypto/tls's
// handshake to the same end: that handshake computes the key exchange
// before it asks for a certificate, which made a flood of unknown names
// cost 3× a refusal by nginx (bench/README.md, hostile scenario).
func (s *Server) refuse(c net.Conn) {
	_, _ = c.Write(alertUnrecognizedName)
	c.Close()
}

// Shutdown stops accepting, lets in-flight requests and open streams
// (tcp, passthrough, WebSockets) finish until ctx ends, then closes
// whatever is still open.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed.Store(true)
	plain, h3 := s.plain, s.h3
	s.mu.Unlock()
	if s.httpsLn != nil {
		s.httpsLn.Close()
	}
	if s.httpLn != nil && plain == nil {
		s.httpLn.Close() // never served
	}

	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	drain := func(name string, srv *http.Server) {
		defer wg.Done()
		if err := srv.Shutdown(ctx); err != nil {
			// the deadline passed with requests in flight: cut them
			_ = srv.Close()
			emu.Lock()
			errs = append(errs, fmt.Errorf("%s: drain deadline passed; closed requests still in flight", name))
			emu.Unlock()
		}
	}
	if plain != nil {
		wg.Add(1)
		go drain("http", plain)
	}
	if h3 != nil {
		wg.Add(1)
		go func() { // GOAWAY, then requests in flight finish until ctx ends
			defer wg.Done()
			if err := h3.Shutdown(ctx); err != nil && ctx.Err() != nil {
				emu.Lock()
				errs = append(errs, errors.New("http3: drain deadline passed; closed QUIC connections with requests in flight"))
				emu.Unlock()
			}
		}()
	}
	s.h1.shutdown() // idle HTTP/1.1 connections close now, busy ones after their request
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.h1.wait(ctx); err != nil {
			emu.Lock()
			errs = append(errs, errors.New("https: drain deadline passed; closed requests still in flight"))
			emu.Unlock()
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if n := s.h2conns.shutdown(ctx); n > 0 {
			emu.Lock()
			errs = append(errs, fmt.Errorf("https: drain deadline passed; closed %d HTTP/2 connections with streams in flight", n))
			emu.Unlock()
		}
	}()
	if err := s.conns.wait(ctx); err != nil {
		n := s.conns.closeAll()
		emu.Lock()
		errs = append(errs, fmt.Errorf("drain deadline passed; closed %d stream connections (tcp, passthrough, WebSocket)", n))
		emu.Unlock()
	}
	s.conns.closeAll() // streams that start from here on are refused
	wg.Wait()
	if st := s.state.Load(); st != nil {
		for _, rs := range st.routes {
			rs.retire()
		}
	}
	return errors.Join(errs...)
}
