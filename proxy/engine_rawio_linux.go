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
		for {
			m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case 0:
				if m == 0 {
					rerr = io.EOF
				}
				n = int(m)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				rerr = os.NewSyscallError("read", e)
				return true
			}
		}
	})
	if rerr != nil {
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
