package proxy

import (
	"bytes"
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Waiting for ClientHellos without a goroutine each.
//
// The ClientHello usually follows the TCP handshake by a few
// microseconds, so the accept loop's own read of a new connection
// (refuseFast) mostly finds nothing yet. Such a connection used to get
// its goroutine at once, to wait for the hello there (waitFirst). Under
// a flood of connections that are refused on their first record
// (unknown names, handshakes that never finish) those goroutines were
// the scheduler's load: an execution trace beside a flood of 36,000
// unknown-SNI connections a second (bench/README.md) showed 108,598
// goroutine starts in 3 s, each runnable ~64 µs before it first ran,
// and a served client's new goroutine queued among them.
//
// So a connection whose first record has not come whole is parked
// here: in an epoll set of the accept path's own (the epoll descriptor
// is itself registered with Go's network poller, so one goroutine waits
// for all of them without holding a thread), with the handshake
// deadline counted from accept. When the record is complete its bytes
// are judged the way refuseFast judges them: a ClientHello for a name
// not routed is refused right here, a client that leaves inside its
// first record is closed here, and only a connection that goes on gets
// its goroutine (handleConn, the bytes handed over). A parked
// connection costs a map entry and, once part of its record came, a
// pooled 16 KiB buffer; their number is bounded by the per-source
// handshake limit and the handshake timeout, as the goroutines were.

// helloWait is the accept path's set of parked connections.
type helloWait struct {
	s    *Server
	epfd int
	ep   *os.File // epfd, registered with Go's poller
	rc   syscall.RawConn

	mu      sync.Mutex
	conns   map[int]*parked // by descriptor
	order   []*parked       // in the order parked: deadlines come in (about) this order
	closing bool

	events []syscall.EpollEvent
	wait   func(fd uintptr) bool
	done   chan struct{}
}

// parked is one connection waiting for its first record.
type parked struct {
	c        net.Conn
	fd       int
	snap     *snapshot
	src      *sourceEntry
	accepted time.Time
	deadline time.Time
	bp       *[]byte // the record so far (nil: nothing came)
	n        int
	out      bool // handed on or closed: no longer in conns
}

// parkHellos switches parking on (benchmarks compare it with a
// goroutine per connection).
var parkHellos = true

// helloSweep is how often parked connections are checked against their
// deadline: one past it is closed within this much more.
const helloSweep = 100 * time.Millisecond

// newHelloWait makes the epoll set and starts its goroutine; nil when
// the system offers none (every connection then waits on its own
// goroutine, as before).
func newHelloWait(s *Server) *helloWait {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil
	}
	ep := os.NewFile(uintptr(epfd), "gatehouse-hellowait")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil
	}
	w := &helloWait{s: s, epfd: epfd, ep: ep, rc: rc, conns: make(map[int]*parked),
		events: make([]syscall.EpollEvent, 128), done: make(chan struct{})}
	w.wait = func(fd uintptr) bool {
		for {
			n, err := syscall.EpollWait(int(fd), w.events, 0)
			if err == syscall.EINTR {
				continue
			}
			if n <= 0 {
				return false // nothing ready: wait for the poller
			}
			for _, ev := range w.events[:n] {
				w.ready(int(ev.Fd))
			}
			if n < len(w.events) {
				return false
			}
			// more may be ready: let the served connections' goroutines
			// run first (a full batch is a flood's turn)
			runtime.Gosched()
		}
	}
	go w.run()
	return w
}

// park takes c (its first bytes, have, if the accept loop read a part
// of its record already) and reports whether it did; false: c goes on
// its own goroutine.
func (w *helloWait) park(c net.Conn, snap *snapshot, src *sourceEntry, have []byte, now time.Time) bool {
	if w == nil || !parkHellos {
		return false
	}
	raw := rawConnOf(c)
	if raw == nil {
		return false
	}
	fd := -1
	_ = raw.Control(func(f uintptr) { fd = int(f) })
	if fd < 0 {
		return false
	}
	p := &parked{c: c, fd: fd, snap: snap, src: src, accepted: now, deadline: now.Add(snap.tm.handshake)}
	if len(have) > 0 {
		p.bp = firstBufs.Get().(*[]byte)
		p.n = copy(*p.bp, have)
	}
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		w.release(p)
		return false
	}
	w.conns[fd] = p
	w.order = append(w.order, p)
	w.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.mu.Lock()
		if w.conns[fd] == p {
			delete(w.conns, fd)
		}
		p.out = true
		w.mu.Unlock()
		w.release(p)
		return false
	}
	return true
}

// run waits for parked connections' bytes until close, sweeping the
// deadlines every helloSweep.
func (w *helloWait) run() {
	defer close(w.done)
	for {
		_ = w.ep.SetReadDeadline(time.Now().Add(helloSweep))
		err := w.rc.Read(w.wait)
		w.mu.Lock()
		closing := w.closing
		w.mu.Unlock()
		if closing {
			w.closeAll()
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// the epoll descriptor failed: nothing more comes through it
			w.mu.Lock()
			w.closing = true
			w.mu.Unlock()
			w.closeAll()
			return
		}
		w.sweep(time.Now())
	}
}

// take removes p from the set (false: it was out already).
func (w *helloWait) take(p *parked) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.out {
		return false
	}
	p.out = true
	delete(w.conns, p.fd)
	_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, p.fd, nil)
	return true
}

// release gives p's buffer back.
func (w *helloWait) release(p *parked) {
	if p.bp != nil {
		firstBufs.Put(p.bp)
		p.bp = nil
	}
}

// ready reads what came on fd: on to its first record's end.
func (w *helloWait) ready(fd int) {
	w.mu.Lock()
	p := w.conns[fd]
	w.mu.Unlock()
	if p == nil {
		return
	}
	wait, rerr := fillFirstRecord(fd, &p.bp, &p.n)
	if wait {
		return // the rest of the record is still to come
	}
	if !w.take(p) {
		return
	}
	b := (*p.bp)[:p.n]
	switch {
	case rerr != nil && (p.n == 0 || recordPartial(b)):
		// left inside the first record (or before it): what crypto/tls
		// would have called a bad hello
		w.release(p)
		metricBadHello.Inc()
		p.c.Close()
		w.s.sources.done(p.src, false)
	case w.s.unknownName(p.snap, b, p.c):
		w.release(p)
		w.s.sources.done(p.src, true)                   // before the client hears of it
		_, _ = syscall.Write(fd, alertUnrecognizedName) // a fresh socket's send buffer is empty
		p.c.Close()
	default:
		prefix := bytes.Clone(b)
		w.release(p)
		go w.s.handleConn(p.c, p.snap, prefix, p.src, p.accepted)
	}
}

// sweep closes the parked connections past their deadline: their
// handshake timeout ran out before their first record came whole.
func (w *helloWait) sweep(now time.Time) {
	for {
		w.mu.Lock()
		for len(w.order) > 0 && w.order[0].out {
			w.order[0] = nil
			w.order = w.order[1:]
		}
		if len(w.order) == 0 || now.Before(w.order[0].deadline) {
			if len(w.order) == 0 {
				w.order = nil // let a flood's backing array go
			}
			w.mu.Unlock()
			return
		}
		p := w.order[0]
		w.mu.Unlock()
		if w.take(p) {
			w.expire(p)
		}
	}
}

// expire closes p, whose handshake timeout ran out while parked.
func (w *helloWait) expire(p *parked) {
	w.release(p)
	metricBadHello.Inc()
	p.c.Close()
	w.s.sources.done(p.src, false)
}

// close stops the set: every parked connection is closed.
func (w *helloWait) close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	_ = w.ep.SetReadDeadline(time.Unix(1, 0)) // wake run
	<-w.done
	w.ep.Close()
}

func (w *helloWait) closeAll() {
	w.mu.Lock()
	var all []*parked
	for _, p := range w.conns {
		all = append(all, p)
	}
	w.mu.Unlock()
	for _, p := range all {
		if w.take(p) {
			w.expire(p)
		}
	}
	w.mu.Lock()
	w.order = nil
	w.mu.Unlock()
}
