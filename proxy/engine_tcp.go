package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// pipeTCP forwards a terminated TLS connection's plaintext to a tcp
// route's upstream, both ways, passing half-closes on.
func (s *Server) pipeTCP(tc *tls.Conn, rc *replayConn) {
	rs := rc.route
	up, u, err := rs.dialStream(tc)
	if err != nil {
		rs.log.Warn("tcp upstream unreachable", "client", tc.RemoteAddr(), "error", err)
		tc.Close()
		return
	}
	defer u.active.Add(-1)
	began := time.Now()
	in, out := s.stream(tc, up)
	s.logStream(rs, rc, u.Raw, in, out, began)
}

// passthrough forwards a connection's TLS bytes, the peeked ClientHello
// first, to a passthrough route's upstream.
func (s *Server) passthrough(rc *replayConn) {
	rs := rc.route
	up, u, err := rs.dialStream(rc)
	if err != nil {
		rs.log.Warn("passthrough upstream unreachable", "client", rc.RemoteAddr(), "error", err)
		rc.Close()
		return
	}
	defer u.active.Add(-1)
	began := time.Now()
	in, out := s.stream(rc, up)
	s.logStream(rs, rc, u.Raw, in, out, began)
}

// dialStream connects a tcp or passthrough stream to an upstream chosen
// by the route's balancer, trying the others when one cannot be
// reached, and writes the route's PROXY header (client's address → the
// address it connected to) before any other byte.
func (rs *routeState) dialStream(client net.Conn) (net.Conn, *upstream, error) {
	var skip tried
	var lastErr error = errNoUpstream
	for {
		u := rs.bal.pick(skip)
		if u == nil {
			return nil, nil, lastErr
		}
		c, err := rs.dialer.Dial("tcp", u.Host)
		if err == nil && rs.ppVersion != 0 {
			if err = sendPROXY(c, rs.ppVersion, client.RemoteAddr(), client.LocalAddr(), rs.dial); err != nil {
				c.Close()
			}
		}
		if err == nil {
			u.succeeded()
			u.active.Add(1)
			return c, u, nil
		}
		rs.upstreamFailed(u, err)
		lastErr = fmt.Errorf("%s: %w", u.Raw, err)
		skip.add(rs.bal.index(u))
	}
}

// stream copies both directions until both are done. When one side
// finishes sending, the other side's write half is closed, so a
// client's end-of-stream reaches the upstream and the reverse. It
// returns the bytes sent each way (to the upstream, to the client).
func (s *Server) stream(client, up net.Conn) (toUp, toClient int64) {
	if !s.conns.add(client, up) {
		// shutting down, past the drain
		client.Close()
		up.Close()
		return 0, 0
	}
	defer s.conns.remove(client, up)

	cp := func(dst, src net.Conn, n *int64) {
		buf := buffers.Get().(*[]byte)
		var err error
		*n, err = io.CopyBuffer(dst, src, *buf)
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
	go func() { cp(up, client, &toUp); close(done) }()
	cp(client, up, &toClient)
	<-done
	client.Close()
	up.Close()
	return toUp, toClient
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
