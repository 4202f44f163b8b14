package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
)

// chanListener hands already-handshaken TLS connections to net/http.
// net/http sees *tls.Conn values, so it reads the negotiated ALPN and
// serves HTTP/2 or HTTP/1.1 as the client chose.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	closed bool
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

type connKey struct{}

// connContext stores the connection's route in every request's context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if rc, ok := tc.NetConn().(*replayConn); ok {
			return context.WithValue(ctx, connKey{}, rc)
		}
	}
	return ctx
}

func connFrom(ctx context.Context) *replayConn {
	rc, _ := ctx.Value(connKey{}).(*replayConn)
	return rc
}

// connSet tracks stream connections so a drain deadline can close them.
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		c.Close()
	}
}

// slogErrorLog adapts net/http's error log to slog at debug level:
// those lines are mostly clients hanging up mid-handshake.
func slogErrorLog(l *slog.Logger, component string) *log.Logger {
	return slog.NewLogLogger(l.With("component", component).Handler(), slog.LevelDebug)
}

func errAddrInUse() error { return syscall.EADDRINUSE }
func errAccess() error    { return syscall.EACCES }

func unwrapSyscall(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

// handshakeReason classifies a handshake error for metrics.
func handshakeReason(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case strings.Contains(msg, "no application protocol"):
		return "alpn"
	case strings.Contains(msg, "protocol version"), strings.Contains(msg, "no cipher suite"), strings.Contains(msg, "unsupported"):
		return "protocol"
	case strings.Contains(msg, "certificate"):
		return "no_certificate"
	case strings.Contains(msg, "EOF"), strings.Contains(msg, "reset"):
		return "client_closed"
	}
	return "other"
}
