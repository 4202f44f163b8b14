package proxy

import (
	"bytes"
	"context"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/sni"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// A flood of connections gatehouse will refuse — ClientHellos for names
// it does not route, handshakes that never finish — must cost little
// and must not delay the clients it serves (issue 15, "good traffic
// beside bad"). Three things keep it so:
//
//   - The accept loop reads the first bytes of each new connection
//     itself (one non-blocking read into a buffer it owns). When they
//     hold a whole ClientHello whose SNI has no route, it writes the
//     unrecognized_name alert and closes right there: no goroutine, no
//     deadline timer, no crypto/tls state, no allocation beyond what Go
//     spends accepting a TCP connection. Anything else (a hello not
//     complete yet, no SNI, an Encrypted Client Hello, a listener that
//     expects PROXY headers) goes to handleConn with the bytes read.
//   - TCP keep-alive is switched on only once a connection is routed:
//     Go's accept would set four socket options for it, which a refused
//     connection never needs.
//   - Per-source limits (sourceTable): a source with too many
//     connections between accept and the end of their handshake, or
//     too many refused ClientHellos in the current window, has its
//     further connections reset at accept, before a byte is read.
//   - Accept turns (acceptTurns): after acceptTurn connections the
//     accept loop lets the network poller run, so a flood that keeps
//     the listener's backlog full cannot keep the served connections'
//     readiness unseen.

// firstRead is the accept loop's read of a new connection's first
// bytes, into a buffer only the accept loop uses. The callbacks are
// made once, so a read costs no allocation.
type firstRead struct {
	buf             []byte
	n               int
	err             error
	readFn, alertFn func(fd uintptr) bool
}

func newFirstRead() *firstRead {
	f := &firstRead{buf: make([]byte, 5+maxRecordPayload)}
	f.readFn = func(fd uintptr) bool {
		f.n, f.err = syscall.Read(int(fd), f.buf) // the socket is non-blocking: EAGAIN when nothing came yet
		return true
	}
	f.alertFn = func(fd uintptr) bool {
		_, _ = syscall.Write(int(fd), alertUnrecognizedName) // a fresh socket's send buffer is empty
		return true
	}
	return f
}

var (
	metricUnknownSNI = metricHandshakeFailures.WithLabelValues("unknown_sni")
	metricBadHello   = metricHandshakeFailures.WithLabelValues("bad_hello")
)

// refuseFast refuses c at once when its first bytes are a whole
// ClientHello for a name snap does not route (refused true). Otherwise
// it returns a copy of the bytes it read (nil: none), for handleConn.
func (s *Server) refuseFast(f *firstRead, snap *snapshot, c net.Conn) (prefix []byte, refused bool) {
	if len(snap.trusted) > 0 {
		return nil, false // a PROXY header may come first: handleConn reads it
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, false
	}
	f.n, f.err = 0, nil
	if rc.Read(f.readFn) != nil || f.err != nil || f.n <= 0 {
		return nil, false
	}
	b := f.buf[:f.n]
	if !s.unknownName(snap, b, c) {
		return bytes.Clone(b), false
	}
	_ = rc.Write(f.alertFn)
	c.Close()
	return nil, true
}

// unknownName reports (and counts, and logs at debug) whether b is a
// whole ClientHello for a name snap does not route.
func (s *Server) unknownName(snap *snapshot, b []byte, c net.Conn) bool {
	name, ok := sni.FromHello(b)
	if !ok || snap.lookup(unsafe.String(unsafe.SliceData(name), len(name))) != nil {
		return false
	}
	metricUnknownSNI.Inc()
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("refusing handshake: no route for SNI", "sni", string(name), "remote", c.RemoteAddr())
	}
	return true
}

// firstBufs lend waitFirst a buffer while it reads.
var firstBufs = sync.Pool{New: func() any { b := make([]byte, 5+maxRecordPayload); return &b }}

// firstVerdict is what waitFirst found.
type firstVerdict uint8

const (
	firstOn      firstVerdict = iota // go on with the bytes read (none: the next read sees what stopped it)
	firstRefused                     // a whole ClientHello for a name not routed: counted, to be refused
	firstGone                        // the client left (reset or closed) within its first TLS record
)

// waitFirst is refuseFast for a connection whose first bytes had not
// come at accept (the usual case: the ClientHello follows the TCP
// handshake by a few microseconds): on handleConn's goroutine, it
// waits for them within c's deadline, holding no buffer while nothing
// came (a silent connection costs its goroutine only), and reads them.
// When they are the start of a TLS handshake record it reads on to the
// record's end first (holding the buffer): a handshake that never
// finishes — half a ClientHello, then a reset — then costs this read,
// not a crypto/tls server (bench/README.md, "partial"); so does a
// ClientHello split over TCP segments before it is refused.
//
// have is what the accept loop read already (nil: nothing), the start
// of a record waitFirst reads on.
func (s *Server) waitFirst(snap *snapshot, c net.Conn, have []byte) (prefix []byte, v firstVerdict) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return have, firstOn
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return have, firstOn
	}
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	if len(have) > 0 {
		bp = firstBufs.Get().(*[]byte)
		n = copy(*bp, have)
	}
	err = rc.Read(func(fd uintptr) bool {
		var wait bool
		wait, rerr = fillFirstRecord(int(fd), &bp, &n)
		return !wait
	})
	if bp == nil {
		return nil, firstOn
	}
	defer firstBufs.Put(bp)
	b := (*bp)[:n]
	switch {
	case rerr != nil && n > 0 && recordPartial(b):
		return nil, firstGone
	case err != nil && n > 0 && recordPartial(b):
		return bytes.Clone(b), firstOn // the deadline: crypto/tls sees it again
	case n <= 0:
		return nil, firstOn
	}
	if s.unknownName(snap, b, c) {
		return nil, firstRefused
	}
	return bytes.Clone(b), firstOn
}

// fillFirstRecord reads what the non-blocking socket fd has, into *bp
// from *n on, up to the end of its first TLS record: the buffer is
// taken from firstBufs when bytes come and given back while none did.
// wait: nothing more to read now and the record not complete (read
// again when fd is readable); otherwise done, with rerr the read's
// error (io.EOF: the client closed), nil when the record is whole or
// the bytes are not a handshake record.
func fillFirstRecord(fd int, bp **[]byte, n *int) (wait bool, rerr error) {
	for {
		if *bp == nil {
			*bp = firstBufs.Get().(*[]byte)
		}
		m, err := syscall.Read(fd, (**bp)[*n:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			if *n == 0 {
				firstBufs.Put(*bp) // hold nothing while nothing came
				*bp = nil
			}
			return true, nil
		case err != nil:
			return false, err
		case m <= 0:
			return false, io.EOF
		}
		*n += m
		if !recordPartial((**bp)[:*n]) {
			return false, nil
		}
	}
}

// recordPartial reports whether b is the start of a TLS handshake
// record that is not complete yet (and fits the read buffer).
func recordPartial(b []byte) bool {
	if len(b) == 0 || b[0] != 22 {
		return false
	}
	if len(b) < 5 {
		return true
	}
	l := int(b[3])<<8 | int(b[4])
	return l <= maxRecordPayload && len(b) < 5+l
}

// Per-source limits. A source is an IPv4 address or an IPv6 /64.
var (
	// sourceMaxHandshakes bounds the connections one source may have
	// between accept and the end of their TLS handshake (for
	// passthrough: the hand-off to the upstream); each of them is also
	// bounded in time by [timeouts] handshake.
	sourceMaxHandshakes = 512
	// sourceMaxRefused bounds the ClientHellos refused for their name
	// (unknown_sni, no_sni) per source in a window of sourceWindow.
	sourceMaxRefused = 1000
	sourceWindow     = 10 * time.Second
	// sourceMaxTracked bounds the table: a source that finds it full
	// (after stale entries are swept) is served without a limit.
	sourceMaxTracked = 100_000
	// sourceClock is the time the windows are counted in (tests move it).
	sourceClock = time.Now
)

var metricSourceLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "gatehouse_tls_source_limited_total",
	Help: "Connections reset at accept, before any byte was read, because their source (an IPv4 address or IPv6 /64) was over a limit: handshakes (512 connections between accept and the end of their handshake) or refused (1,000 ClientHellos refused for their name in 10 s).",
}, []string{"limit"})

var (
	metricLimitedHandshakes = metricSourceLimited.WithLabelValues("handshakes")
	metricLimitedRefused    = metricSourceLimited.WithLabelValues("refused")
)

// sourceTable counts, per source, the connections between accept and
// the end of their handshake and the ClientHellos refused in the
// current window. A source with neither is not in it.
type sourceTable struct {
	// the limits and clock, from the package's at New (tests set those)
	maxHandshakes, maxRefused int
	clock                     func() time.Time

	mu    sync.Mutex
	m     map[netip.Addr]*sourceEntry
	swept time.Time
}

func newSourceTable() sourceTable {
	return sourceTable{maxHandshakes: sourceMaxHandshakes, maxRefused: sourceMaxRefused, clock: sourceClock}
}

type sourceEntry struct {
	addr     netip.Addr
	inflight int
	refused  int       // in the window that began at since
	since    time.Time // the window's start
	told     bool      // the limit was logged in this window
}

// sourceOf returns the source a connection counts for.
func sourceOf(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// admit counts a new connection from src. Over a limit it returns the
// limit's name instead, and tell is true the first time in the window.
func (t *sourceTable) admit(src netip.Addr, now time.Time) (e *sourceEntry, limit string, tell bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Sub(t.swept) >= sourceWindow {
		t.sweepLocked(now)
	}
	e = t.m[src]
	if e == nil {
		if t.m == nil {
			t.m = make(map[netip.Addr]*sourceEntry)
		}
		if len(t.m) >= sourceMaxTracked {
			t.sweepLocked(now)
			if len(t.m) >= sourceMaxTracked {
				return nil, "", false
			}
		}
		e = &sourceEntry{addr: src, since: now}
		t.m[src] = e
	}
	if now.Sub(e.since) >= sourceWindow {
		e.refused, e.since, e.told = 0, now, false
	}
	switch {
	case e.refused >= t.maxRefused:
		limit = "refused"
	case e.inflight >= t.maxHandshakes:
		limit = "handshakes"
	default:
		e.inflight++
		return e, "", false
	}
	tell = !e.told
	e.told = true
	return nil, limit, tell
}

// done ends what admit counted for e (nil: nothing was); refused: the
// ClientHello was refused for its name.
func (t *sourceTable) done(e *sourceEntry, refused bool) {
	if e == nil {
		return
	}
	var now time.Time
	if refused {
		now = t.clock()
	}
	t.mu.Lock()
	e.inflight--
	if refused {
		if now.Sub(e.since) >= sourceWindow {
			e.refused, e.since, e.told = 0, now, false
		}
		e.refused++
	}
	if e.inflight == 0 && e.refused == 0 && t.m[e.addr] == e {
		delete(t.m, e.addr)
	}
	t.mu.Unlock()
}

// sweepLocked drops the sources with nothing in flight whose window ended.
func (t *sourceTable) sweepLocked(now time.Time) {
	t.swept = now
	for k, e := range t.m {
		if e.inflight == 0 && now.Sub(e.since) >= sourceWindow {
			delete(t.m, k)
		}
	}
}

// accepted takes a connection from the accept loop: the per-source
// limits, the unknown-name fast path, else handleConn on its own
// goroutine.
func (s *Server) accepted(c net.Conn, f *firstRead, hellos *helloWait) {
	snap := s.state.Load()
	metricConnsAccepted.Inc()
	var src *sourceEntry
	if snap.sourceLimits {
		if ip, ok := sourceOf(c.RemoteAddr()); ok && !snap.trusted.containsAddr(ip) {
			var limit string
			var tell bool
			src, limit, tell = s.sources.admit(ip, s.sources.clock())
			if limit != "" {
				if limit == "refused" {
					metricLimitedRefused.Inc()
				} else {
					metricLimitedHandshakes.Inc()
				}
				if tell {
					s.log.Warn("source over a per-source limit: its new connections are reset at accept until it is back under",
						"source", ip, "limit", limit, "handshakes_max", s.sources.maxHandshakes, "refused_max", s.sources.maxRefused, "window", sourceWindow)
				}
				resetConn(c)
				return
			}
		}
	}
	prefix, refused := s.refuseFast(f, snap, c)
	if refused {
		s.sources.done(src, true)
		return
	}
	now := time.Now()
	if len(snap.trusted) == 0 && (prefix == nil || recordPartial(prefix)) && hellos.park(c, snap, src, prefix, now) {
		return // its first record is still to come (listener_hellowait.go)
	}
	go s.handleConn(c, snap, prefix, src, now)
}

// resetConn closes c with a TCP reset (SO_LINGER 0): nothing is sent
// first, and no TIME_WAIT is left behind.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// keepAliveRouted switches TCP keep-alive on for a routed connection
// accepted without it (Listen): Go's defaults (15 s idle and interval,
// 9 probes), as it would have set at accept.
func (s *Server) keepAliveRouted(c net.Conn) {
	if !s.keepAliveLater {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true})
	}
}

// Accept turns. With one P (GOMAXPROCS=1: the proxy pinned to one
// core), Go polls the network only when its run queue is empty, or from
// sysmon every 10 ms. Under a flood that keeps the listener's backlog
// full, Accept never waits: the accept loop and the goroutines it
// starts keep the queue busy, and a served connection's request (or
// ClientHello) waits up to 10 ms to be seen, on top of the queue. So
// after acceptTurn accepts the loop waits for the poller to run once:
// it makes a pipe of its own readable and waits for the poller to say
// so, which it does at its next poll — once the goroutines already
// runnable have run, together with every connection that became ready
// meanwhile. That is nginx's event loop turn (multi_accept off: one
// accept per readiness of the listener), in batches of acceptTurn. It
// does not wait for a new connection (the listener's own readiness):
// with the backlog full no new one can come, and the loop must drain it.
//
// acceptTurn is the accepts between two polls. Beside a flood of
// handshakes that never finish, good requests' median latency was 613
// µs with turns of 2, 709 with 4 and 921 with 16 (medians of five runs
// each, alternated), at the same CPU per refused hello (+3% per
// never-finishing handshake); 64 made the p99 worse (bench/README.md).
var acceptTurn = 2

var metricAcceptTurns = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "gatehouse_tls_accept_turns_total",
	Help: "Times the https accept loop, after 2 accepts, let the network poller run once, so that served connections are seen under a flood of new ones.",
})

// acceptTurns makes the accept loop wait for the poller every
// acceptTurn accepts, through a pipe: written to just before the wait,
// drained after it.
type acceptTurns struct {
	n      int
	turn   int      // acceptTurn, when the loop began (tests set it)
	r, w   *os.File // nil: no pipe (the loop just accepts)
	rc     syscall.RawConn
	wfd    int
	fn     func(fd uintptr) bool
	waited bool
	buf    [8]byte
}

func newAcceptTurns() *acceptTurns {
	t := &acceptTurns{turn: acceptTurn}
	r, w, err := os.Pipe()
	if err != nil {
		return t
	}
	rc, err1 := r.SyscallConn()
	wc, err2 := w.SyscallConn()
	if err1 != nil || err2 != nil {
		r.Close()
		w.Close()
		return t
	}
	_ = wc.Control(func(fd uintptr) { t.wfd = int(fd) }) // Control leaves the descriptor non-blocking (Fd would not)
	t.r, t.w, t.rc = r, w, rc
	one := []byte{1}
	t.fn = func(fd uintptr) bool {
		if !t.waited {
			t.waited = true
			_, _ = syscall.Write(t.wfd, one)
			return false // wait for the poller to report it
		}
		_, _ = syscall.Read(int(fd), t.buf[:]) // drain (EAGAIN: drained already)
		return true
	}
	return t
}

// accepted counts one accept; every acceptTurn it lets the poller run.
func (t *acceptTurns) accepted() {
	if t.r == nil {
		return
	}
	if t.n++; t.n < t.turn {
		return
	}
	t.n = 0
	metricAcceptTurns.Inc()
	t.waited = false
	_ = t.rc.Read(t.fn)
}

func (t *acceptTurns) close() {
	if t.r != nil {
		t.r.Close()
		t.w.Close()
	}
}
