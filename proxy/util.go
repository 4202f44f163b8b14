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

// connSet tracks open tcp/passthrough streams and their connections, so
// Shutdown can wait for them and close what is left at the drain
// deadline. (A sync.WaitGroup would race: streams begin while Shutdown
// waits.)
type connSet struct {
	mu       sync.Mutex
	m        map[net.Conn]struct{}
	streams  int
	draining bool
	idle     chan struct{} // closed when draining and no stream is left
}

// begin registers a stream; false once draining has started.
func (s *connSet) begin(conns ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.streams++
	for _, c := range conns {
		s.m[c] = struct{}{}
	}
	return true
}

func (s *connSet) end(conns ...net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range conns {
		delete(s.m, c)
	}
	s.streams--
	if s.draining && s.streams == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

// drain stops new streams and returns a channel closed when none is left.
func (s *connSet) drain() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	ch := make(chan struct{})
	if s.streams == 0 {
		close(ch)
	} else {
		s.idle = ch
	}
	return ch
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
