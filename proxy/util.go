package proxy

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
)

type connKey struct{}

func connFrom(ctx context.Context) *replayConn {
	rc, _ := ctx.Value(connKey{}).(*replayConn)
	return rc
}

// tracked is a set of open connections that a drain waits for and, at
// its deadline, closes. Once closed it refuses new members: a connection
// starting after the drain is over would be left running. The stream,
// HTTP/1.1 and HTTP/2 sets are all one of these.
type tracked[T comparable] struct {
	mu      sync.Mutex
	m       map[T]struct{}
	closed  bool
	changed chan struct{} // closed (and replaced) when a member is removed
}

// add tracks cs; false means the set is closed and the caller must
// close them.
func (s *tracked[T]) add(cs ...T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[T]struct{}{}
	}
	for _, c := range cs {
		s.m[c] = struct{}{}
	}
	return true
}

func (s *tracked[T]) remove(cs ...T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		delete(s.m, c)
	}
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// wait returns once the set is empty, or with ctx's error.
func (s *tracked[T]) wait(ctx context.Context) error {
	for {
		s.mu.Lock()
		if len(s.m) == 0 {
			s.mu.Unlock()
			return nil
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// members returns the members at this moment; with refuse, the set
// refuses new ones from then on. Callers close connections outside the
// lock: a connection's Close calls back into remove.
func (s *tracked[T]) members(refuse bool) []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	if refuse {
		s.closed = true
	}
	all := make([]T, 0, len(s.m))
	for c := range s.m {
		all = append(all, c)
	}
	return all
}

// connSet tracks the connections of open streams: tcp and passthrough
// pipes, and WebSockets.
type connSet struct{ tracked[net.Conn] }

// closeAll closes every tracked connection and refuses new ones; it
// returns how many it closed.
func (s *connSet) closeAll() int {
	open := s.members(true)
	for _, c := range open {
		c.Close()
	}
	return len(open)
}

// slogErrorLog adapts net/http's error log to slog at debug level:
// those lines are mostly clients hanging up mid-handshake.
func slogErrorLog(l *slog.Logger, component string) *log.Logger {
	return slog.NewLogLogger(l.With("component", component).Handler(), slog.LevelDebug)
}

// slogWarnLog adapts a logger whose every line is an operator-relevant
// failure (the reverse proxy's: an upstream that broke off a response).
func slogWarnLog(l *slog.Logger, component string) *log.Logger {
	return slog.NewLogLogger(l.With("component", component).Handler(), slog.LevelWarn)
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
