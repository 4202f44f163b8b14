//go:build linux

package proxy

import (
	"os"
	"sync"
	"syscall"
	"time"
)

// Idle upstream connections (pooled, and pinned to a PROXY-protocol
// client) are watched while idle: an upstream that sends bytes nobody
// asked for (a body after a HEAD, 204 or 304 head, bytes after a
// Content-Length body, arriving after the exchange ended) must not
// leave them for the next request, which may be another client's.
// net/http's transport keeps a read loop goroutine on every connection
// for this ("Unsolicited response received on idle HTTP channel");
// nginx has its event loop. Here every idle connection is in one epoll
// set (EPOLLIN|EPOLLRDHUP, one-shot), read by one goroutine parked in
// Go's own poller on that set's descriptor: an idle connection costs no
// goroutine and no buffer, and a connection that turns readable while
// idle — stray bytes, or the upstream closing it — is closed at once.
// A pooled connection joins the set only once it has been idle for
// watchDelay (upPool.arm): under load connections are taken again
// sooner, and two epoll_ctl calls per exchange (add, delete) were 7% of
// the HTTP/2 engine's CPU. Every reuse peeks at the socket (quiet), for
// bytes that came before the watch began or after its last look.
// Connections pinned to a PROXY-protocol client are watched at once.
//
// A TLS connection (an https:// upstream) may become readable while
// idle without any stray byte: a TLS 1.3 server may send
// post-handshake messages (NewSessionTicket, KeyUpdate; RFC 8446 4.6)
// at any time, also after a response. So a readable TLS connection is
// checked rather than closed: a goroutine reads through crypto/tls
// for a moment (tlsQuiet), which consumes such messages and returns no
// data; application data or the connection's end closes it, else the
// watch is re-armed. A reuse meanwhile waits for the check.

type idleWatcher struct {
	once  sync.Once
	epfd  int
	f     *os.File // keeps epfd open (and registered with Go's poller)
	ok    bool
	mu    sync.Mutex
	conns map[uint64]*upConn // watched connections by watch id
	next  uint64
}

var idleW idleWatcher

func (w *idleWatcher) start() {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return
	}
	f := os.NewFile(uintptr(fd), "upstream-idle-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	w.epfd, w.f, w.ok = fd, f, true
	w.conns = make(map[uint64]*upConn)
	go w.run(rc)
}

func (w *idleWatcher) run(rc syscall.RawConn) {
	var evs [64]syscall.EpollEvent
	var ids []uint64
	for {
		ids = ids[:0]
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := syscall.EpollWait(int(fd), evs[:], 0)
				if err == syscall.EINTR {
					continue
				}
				if n <= 0 {
					return false // nothing ready: park in Go's poller
				}
				for _, ev := range evs[:n] {
					ids = append(ids, uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32)
				}
				return true
			}
		})
		if err != nil {
			return // not pollable: reuse still checks each connection (quiet)
		}
		for _, id := range ids {
			w.kill(id)
		}
	}
}

// watchCheck marks (in watch, with the id) an idle TLS connection
// whose socket turned readable and is being checked (tlsCheck).
const watchCheck = uint64(1) << 63

// tlsCheckWait is how long a check reads through crypto/tls: post-
// handshake messages come whole in one flight, so the read has them
// at once and then waits out the rest. A reuse waits for it.
const tlsCheckWait = 5 * time.Millisecond

// kill closes the idle connection watched under id, unless it was
// taken for an exchange meanwhile; a TLS connection is checked first.
func (w *idleWatcher) kill(id uint64) {
	w.mu.Lock()
	c := w.conns[id]
	if c != nil && c.tc == nil {
		delete(w.conns, id)
	}
	w.mu.Unlock()
	if c == nil {
		return
	}
	if c.tc != nil {
		if c.watch.CompareAndSwap(id, id|watchCheck) {
			go w.tlsCheck(c, id)
		}
		return
	}
	if !c.watch.CompareAndSwap(id, watchDead) {
		return
	}
	w.drop(c)
}

// drop closes an idle connection the watch found readable.
func (w *idleWatcher) drop(c *upConn) {
	if p := c.pool; p != nil {
		p.remove(c)
	}
	if p := c.pin; p != nil {
		p.removeOwn(c)
	}
	c.nc.Close()
	// counted once it is out of the pool and closed: what reads the
	// count (the metric, a test) sees that state
	unsolicitedClosed.Add(1)
}

// tlsCheck reads what came on the idle TLS connection c (watched under
// id, marked watchCheck): post-handshake messages only, and the watch
// is re-armed; anything else, and it is closed.
func (w *idleWatcher) tlsCheck(c *upConn, id uint64) {
	if ok, _ := c.tlsQuiet(tlsCheckWait); ok {
		// mu held: a taker that ends the watch meanwhile cannot start
		// a new one (watchIdle) before the re-arm, which would then
		// overwrite it with this stale id
		w.mu.Lock()
		rearmed := true // or not ours: only the check ends a check
		if c.watch.CompareAndSwap(id|watchCheck, id) {
			ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
				Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
			rearmed = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev) == nil ||
				!c.watch.CompareAndSwap(id, watchDead) // taken for an exchange meanwhile
		}
		w.mu.Unlock()
		if rearmed {
			return
		}
	} else if !c.watch.CompareAndSwap(id|watchCheck, watchDead) {
		return // not reached: only the check ends a check
	}
	w.mu.Lock()
	delete(w.conns, id)
	w.mu.Unlock()
	w.drop(c)
}

// watchIdle puts c (idle now, holding no buffer) under watch. false:
// it could not be watched and is closed.
func (c *upConn) watchIdle() bool {
	w := &idleW
	w.once.Do(w.start)
	if c.fd < 0 {
		c.fd = connFD(c)
	}
	if !w.ok || c.fd < 0 {
		c.watch.Store(watchDead)
		c.nc.Close()
		return false
	}
	w.mu.Lock()
	w.next++
	id := w.next
	w.conns[id] = c
	w.mu.Unlock()
	c.watchID = id
	c.watch.Store(id) // before the add: an event may come at once
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	if err := syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		c.take()
		c.watch.Store(watchDead)
		c.nc.Close()
		return false
	}
	return true
}

// take ends c's watch for an exchange: false when the watcher found it
// readable while idle and closed it.
func (c *upConn) take() bool {
	id := c.watchID
	if id == 0 {
		return c.watch.Load() != watchDead
	}
	for !c.watch.CompareAndSwap(id, 0) {
		if c.watch.Load() != id|watchCheck {
			return false
		}
		time.Sleep(200 * time.Microsecond) // a TLS check, at most tlsCheckWait
	}
	c.watchID = 0
	w := &idleW
	_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	w.mu.Lock()
	delete(w.conns, id)
	w.mu.Unlock()
	return true
}

// connFD is c's socket descriptor (-1: none). It is used only while c
// is open and owned by gatehouse.
func connFD(c *upConn) int {
	sc, ok := c.raw.(syscall.Conn)
	if !ok {
		return -1
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if raw.Control(func(u uintptr) { fd = int(u) }) != nil {
		return -1
	}
	return fd
}
