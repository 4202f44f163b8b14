package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Raw socket I/O for the HTTP/1.1 path: its client connections after
// the handshake and its plain upstream connections (bench/README.md,
// "Bulk transfer").
//
// A read or write through net.Conn is a syscall the runtime brackets
// with entersyscall/exitsyscall. When the process has been idle (its
// one P parked in the poller, as a proxy at 40-60% of a CPU is many
// times a second), the next such syscall wakes the runtime's monitor
// thread (sysmon) from its deep sleep and resets its period to 20 µs;
// sysmon then wakes every ~20-70 µs while the relay runs, and takes
// the P from any syscall it finds still running on its second look
// (another thread, futexes). With gatehouse on one CPU that thread
// took 10% of the CPU of a 1 MiB relay (perf: runtime.sysmon →
// usleep → context switches). The sockets are non-blocking, so their
// reads and writes never block: made through syscall.RawConn with
// RawSyscall they are plain calls to the runtime, and a would-block
// parks the goroutine in the poller as net.Conn does, with the
// connection's deadlines applied as before.

// rawConnOf returns the RawConn of a plain TCP connection, nil for
// anything else (TLS, PROXY protocol wrappers).
func rawConnOf(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// rawOp is one raw read or write in progress: its buffer and result,
// and callbacks for RawConn made once per rawOp. A closure per call,
// capturing the count and error it sets, cost three heap allocations
// per read or write (bench/README.md, "HTTP/2 CPU").
type rawOp struct {
	p       []byte
	n       int
	err     error
	readFn  func(fd uintptr) bool
	writeFn func(fd uintptr) bool
}

var rawOps = sync.Pool{New: func() any {
	o := new(rawOp)
	o.readFn, o.writeFn = o.read, o.write
	return o
}}

func (o *rawOp) read(fd uintptr) bool {
	var ok bool
	o.n, o.err, ok = readFD(fd, o.p)
	return ok
}

func (o *rawOp) write(fd uintptr) bool {
	var ok bool
	o.n, o.err, ok = writeFD(fd, o.p, o.n)
	return ok
}

// rawWrite writes all of b to rc's socket, waiting in the poller when
// the socket is full; the write deadline ends the wait.
func rawWrite(rc syscall.RawConn, b []byte) (int, error) {
	o := rawOps.Get().(*rawOp)
	o.p, o.n, o.err = b, 0, nil
	err := rc.Write(o.writeFn)
	n, werr := o.n, o.err
	o.p, o.err = nil, nil
	rawOps.Put(o)
	if werr != nil {
		return n, werr
	}
	return n, err
}

// writeFD writes b[n:] to fd inside a RawConn callback and returns the
// new count: false when the socket is full (wait for the poller).
func writeFD(fd uintptr, b []byte, n int) (int, error, bool) {
	for n < len(b) {
		m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
		switch e {
		case 0:
			n += int(m)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, nil, false
		default:
			return n, os.NewSyscallError("write", e), true
		}
	}
	return n, nil, true
}

// rawReader reads a plain TCP connection as rawWrite writes it: one
// read of what is there, or a wait in the poller (the read deadline
// ends it); io.EOF at the end of the stream.
type rawReader struct{ rc syscall.RawConn }

func (r rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := rawOps.Get().(*rawOp)
	o.p, o.n, o.err = p, 0, nil
	err := r.rc.Read(o.readFn)
	n, rerr := o.n, o.err
	o.p, o.err = nil, nil
	rawOps.Put(o)
	if rerr != nil {
		return n, rerr
	}
	return n, err
}

// readFD is one read of fd into p (len(p) > 0) inside a RawConn.Read
// callback: false when there is nothing to read yet (wait for the
// poller); io.EOF at the end of the stream.
func readFD(fd uintptr, p []byte) (int, error, bool) {
	for {
		m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			if m == 0 {
				return 0, io.EOF, true
			}
			return int(m), nil, true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, nil, false
		default:
			return 0, os.NewSyscallError("read", e), true
		}
	}
}

// sendReader is an upstream connection's reader: rawReader, and
// writeFirst's request written at its next Read, in the same call to
// the runtime. Read through net.Conn (or rawReader), an exchange cost
// two read syscalls: the read right after the request's write finds
// nothing yet (EAGAIN), parks in the poller, and reads again when the
// answer is there (bench/README.md, "HTTP/2 CPU"); nginx reads once,
// after epoll says readable. Here the callback returns "not ready"
// right after the write, without a syscall, and the one read happens
// when the poller reports the socket readable.
//
// Why the write is inside the Read: RawConn.Read forgets a readiness
// the poller noted before it began (internal/poll's prepareRead), and
// the poller is edge-triggered. Written before the Read began, an
// answer that came meanwhile — noted, then forgotten — would leave the
// wait with no event to come. Written inside, every byte of the answer
// arrives after prepareRead, and its event ends the wait.
type sendReader struct {
	rawReader
	send []byte // written at the next Read (writeFirst)

	// the Read in progress (cb, made once, reads them: no closure per Read)
	p          []byte
	sent, n    int
	full       bool // the socket took only part of send: the rest through rawWrite
	werr, rerr error
	cb         func(fd uintptr) bool
}

// writeFirst makes the next Read write b first: all of it, or that
// Read fails with an *upWriteError.
func (r *sendReader) writeFirst(b []byte) { r.send = b }

func (r *sendReader) Read(p []byte) (int, error) {
	if len(r.send) == 0 {
		return r.rawReader.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.cb == nil {
		r.cb = r.sendThenRead
	}
	b := r.send
	r.p, r.sent, r.n, r.full, r.werr, r.rerr = p, 0, 0, false, nil, nil
	err := r.rc.Read(r.cb)
	sent, n, full, werr, rerr := r.sent, r.n, r.full, r.werr, r.rerr
	r.send, r.p, r.werr, r.rerr = nil, nil, nil, nil
	switch {
	case werr != nil:
		return 0, &upWriteError{werr}
	case sent < len(b) && !full:
		// the deadline had passed (a stream reset breaks the exchange
		// off that way) or the connection was closed: nothing written
		return 0, &upWriteError{err}
	case full:
		if _, err := rawWrite(r.rc, b[sent:]); err != nil {
			return 0, &upWriteError{err}
		}
		return r.rawReader.Read(p)
	case rerr != nil:
		return n, rerr
	}
	return n, err
}

// sendThenRead is sendReader's callback: the write, then "not ready"
// (no answer can be here yet: the poller wakes the wait, the read
// deadline ends it); called again, the read.
func (r *sendReader) sendThenRead(fd uintptr) bool {
	if r.sent < len(r.send) {
		var ok bool
		r.sent, r.werr, ok = writeFD(fd, r.send, r.sent)
		if r.werr != nil {
			return true
		}
		if !ok {
			r.full = true
			return true
		}
		return false
	}
	var ok bool
	r.n, r.rerr, ok = readFD(fd, r.p)
	return ok
}

// peekByte is a non-blocking MSG_PEEK recv of one byte on fd (raw, as
// above: it runs before every reuse of a pooled upstream connection).
func peekByte(fd uintptr) (int, error) {
	var b [1]byte
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
