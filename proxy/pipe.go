package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// pipeTCP forwards a terminated TLS connection's plaintext to a tcp
// route's upstream, both ways, passing half-closes on.
func (s *Server) pipeTCP(tc *tls.Conn, rc *replayConn) {
	rs := rc.route
	up, err := rs.dialStream()
	if err != nil {
		rs.log.Warn("tcp upstream unreachable", "error", err)
		tc.Close()
		return
	}
	s.stream(tc, up, rs.name)
}

// passthrough forwards a connection's TLS bytes, the peeked ClientHello
// first, to a passthrough route's upstream.
func (s *Server) passthrough(rc *replayConn) {
	rs := rc.route
	up, err := rs.dialStream()
	if err != nil {
		rs.log.Warn("passthrough upstream unreachable", "error", err)
		rc.Close()
		return
	}
	s.stream(rc, up, rs.name)
}

func (rs *routeState) dialStream() (net.Conn, error) {
	var lastErr error
	for range len(rs.ups) {
		u := rs.pick()
		c, err := net.DialTimeout("tcp", u.Host, rs.dial)
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// stream copies both directions until both are done. When one side
// finishes sending, the other side's write half is closed, so a
// client's end-of-stream reaches the upstream and the reverse.
func (s *Server) stream(client, up net.Conn, route string) {
	if !s.conns.add(client, up) {
		// shutting down, past the drain
		client.Close()
		up.Close()
		return
	}
	defer s.conns.remove(client, up)
	metricActiveStreams.Inc()
	defer metricActiveStreams.Dec()

	cp := func(dst, src net.Conn) {
		buf := buffers.Get().(*[]byte)
		_, err := io.CopyBuffer(dst, src, *buf)
		buffers.Put(buf)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			// an error (reset) on one side: tear both down
			client.Close()
			up.Close()
		} else {
			// end of stream: pass it on, keep the other direction open
			closeWrite(dst)
		}
	}
	done := make(chan struct{})
	go func() { cp(up, client); close(done) }()
	cp(client, up)
	<-done
	client.Close()
	up.Close()
	_ = route
}

// closeWrite half-closes c's sending side where the connection type
// allows (TCP, and TLS which sends close_notify).
func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	// cannot half-close: give the peer a moment, then close fully
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
}
