package proxy

import (
	"io"
	"net"
	"os"
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

// rawWrite writes all of b to rc's socket, waiting in the poller when
// the socket is full; the write deadline ends the wait.
func rawWrite(rc syscall.RawConn, b []byte) (int, error) {
	n := 0
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
			switch e {
			case 0:
				n += int(m)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				werr = os.NewSyscallError("write", e)
				return true
			}
		}
		return true
	})
	if werr != nil {
		return n, werr
	}
	return n, err
}

// rawReader reads a plain TCP connection as rawWrite writes it: one
// read of what is there, or a wait in the poller (the read deadline
// ends it); io.EOF at the end of the stream.
type rawReader struct{ rc syscall.RawConn }

func (r rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := 0
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		var ok bool
		n, rerr, ok = readFD(fd, p)
		return ok
	})
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
// answer is there (bench/README.md, "HTTP/2: one upstream read per
// exchange"); nginx reads once, after epoll says readable. Here the
// callback returns "not ready" right after the write, without a
// syscall, and the one read happens when the poller reports the
// socket readable.
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
	b := r.send
	r.send = nil
	sent, n := 0, 0
	full := false // the socket took only part of b: the rest through rawWrite
	var werr, rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		if sent < len(b) {
			for sent < len(b) {
				m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[sent])), uintptr(len(b)-sent))
				switch e {
				case 0:
					sent += int(m)
				case syscall.EINTR:
				case syscall.EAGAIN:
					full = true
					return true
				default:
					werr = os.NewSyscallError("write", e)
					return true
				}
			}
			// just written: no answer can be here yet; wait for the
			// poller (the read deadline ends the wait)
			return false
		}
		var ok bool
		n, rerr, ok = readFD(fd, p)
		return ok
	})
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
