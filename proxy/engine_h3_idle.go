package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3IdleWatch closes an HTTP/3 connection that has had no request in
// the pipeline (serveH3 running) for [timeouts] idle, with H3_NO_ERROR,
// as the HTTP/2 engine closes a connection with no open stream.
//
// quic-go's own idle timer (http3.Server.IdleTimeout) counts every open
// stream as activity, and its server reads a request's HEADERS frame
// before the handler is called, with no deadline and no hook: a client
// that opens streams and sends part of a HEADERS frame, then keeps the
// connection alive with PINGs, would hold those streams (a goroutine
// and a buffer of up to the frame's declared length each) for as long
// as it likes. This watch counts only requests that reached serveH3, so
// such a connection is closed after idle like any other idle one. The
// stream count per connection (h3MaxStreams) bounds how many such
// streams it can hold meanwhile. What it does not bound: a client that
// keeps one real request in flight at all times keeps its half-sent
// streams too (the real requests are themselves bounded by the
// client_body and send no-progress timeouts); quic-go gives no handle
// on a stream before its HEADERS end, so a per-stream deadline needs a
// change there (README, HTTP/3).
type h3IdleWatch struct {
	conn  *quic.Conn
	idle  time.Duration
	mu    sync.Mutex
	busy  int // requests in serveH3
	timer *time.Timer
}

func newH3IdleWatch(c *quic.Conn, idle time.Duration) *h3IdleWatch {
	w := &h3IdleWatch{conn: c, idle: idle}
	w.timer = time.AfterFunc(idle, w.fire)
	context.AfterFunc(c.Context(), func() { w.timer.Stop() })
	return w
}

// begin marks a request in the pipeline; end its end.
func (w *h3IdleWatch) begin() {
	w.mu.Lock()
	w.busy++
	w.timer.Stop()
	w.mu.Unlock()
}

func (w *h3IdleWatch) end() {
	w.mu.Lock()
	if w.busy--; w.busy == 0 && w.conn.Context().Err() == nil {
		w.timer.Reset(w.idle)
	}
	w.mu.Unlock()
}

func (w *h3IdleWatch) fire() {
	w.mu.Lock()
	idle := w.busy == 0
	w.mu.Unlock()
	if idle { // a request that began since stopped the timer too late: it runs on
		_ = w.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle")
	}
}
