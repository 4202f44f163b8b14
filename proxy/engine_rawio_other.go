//go:build !linux

package proxy

import (
	"net"
	"syscall"
)

// Without Linux the bulk relay reads and writes through net.Conn
// (engine_rawio_linux.go explains what the raw calls save there).

func rawConnOf(c net.Conn) syscall.RawConn { return nil }

func rawWrite(rc syscall.RawConn, b []byte) (int, error) { panic("rawWrite without Linux") }

type rawReader struct{ rc syscall.RawConn }

func (r rawReader) Read(p []byte) (int, error) { panic("rawReader without Linux") }

func peekByte(fd uintptr) (int, error) {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n, err
}

type sendReader struct {
	rawReader
	send []byte
}

func (r *sendReader) writeFirst(b []byte) { panic("sendReader without Linux") }

func (r *sendReader) Read(p []byte) (int, error) { panic("sendReader without Linux") }
