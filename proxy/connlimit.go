package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxUpstreamPerConn bounds the upstream exchanges one client
// connection may hold at once. HTTP/2 multiplexes streams (up to
// h2MaxStreams, or net/http's 250), and each stream that is forwarded
// holds an upstream connection until its response is delivered: a
// client that never reads could otherwise pin 250 upstream connections
// per TLS connection (the [timeouts] client_body and send bounds free
// them, this bounds how many at once). A stream beyond it waits for a
// slot, for at most [timeouts] upstream_response_header, then gets 503;
// each wait counts in gatehouse_http_conn_upstream_limit_total. HTTP/1.1
// is sequential (pipelined requests are served one after another), so
// an HTTP/1.1 connection holds at most one.
const maxUpstreamPerConn = 100

var metricConnUpstreamLimit = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "gatehouse_http_conn_upstream_limit_total",
	Help: "HTTP/2 requests that had to wait because their client connection already held the most upstream exchanges it may (100) at once.",
})

var errUpstreamLimit = errors.New("the connection holds the most upstream exchanges it may at once")

// upLimit is one client connection's count of upstream exchanges held,
// made on first use (most connections never need it: HTTP/1.1 ones).
type upLimit struct {
	once  sync.Once
	slots chan struct{}
}

// acquire takes a slot, waiting for one at most wait; ctx ends the wait
// (the stream was reset, the connection closed).
func (u *upLimit) acquire(ctx context.Context, wait time.Duration) error {
	u.once.Do(func() { u.slots = make(chan struct{}, maxUpstreamPerConn) })
	select {
	case u.slots <- struct{}{}:
		return nil
	default:
	}
	metricConnUpstreamLimit.Inc()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case u.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Canceled
	case <-t.C:
		return errUpstreamLimit
	}
}

// release gives back a slot taken by acquire.
func (u *upLimit) release() { <-u.slots }

// net/http's server (routes with https:// or h2c:// upstreams) has
// ReadTimeout and WriteTimeout, which bound a whole request or
// response, not a wait without progress. boundedWriter and boundedBody
// give it gatehouse's no-progress bounds through the request's
// http.ResponseController: before each write (and flush) the write
// deadline moves to now + [timeouts] send, before each body read the
// read deadline to now + client_body. On HTTP/2 these are the stream's
// deadlines (a write blocked on the client's window included); on
// HTTP/1.1 the connection's. A deadline is moved only once a quarter
// of it has passed, so each wait still has three quarters of it.

// boundWait arms *dl at now + d through set when a quarter of d has
// passed since it was last armed.
func boundWait(dl *time.Time, d time.Duration, set func(time.Time) error) {
	now := time.Now()
	if dl.Sub(now) < d-d/4 {
		*dl = now.Add(d)
		_ = set(*dl)
	}
}

type boundedWriter struct {
	http.ResponseWriter
	ctl  *http.ResponseController
	send time.Duration
	dl   time.Time
}

func (b *boundedWriter) arm() { boundWait(&b.dl, b.send, b.ctl.SetWriteDeadline) }

func (b *boundedWriter) WriteHeader(code int) {
	b.arm() // a 1xx goes out at once
	b.ResponseWriter.WriteHeader(code)
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	b.arm()
	return b.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController.Flush calls (the reverse
// proxy flushes through one): the flush writes to the client.
func (b *boundedWriter) FlushError() error {
	b.arm()
	return b.ctl.Flush()
}

func (b *boundedWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

type boundedBody struct {
	io.ReadCloser
	ctl  *http.ResponseController
	wait time.Duration
	dl   time.Time
	done bool // the body ended (or failed): the deadline is not touched again
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	boundWait(&b.dl, b.wait, b.ctl.SetReadDeadline)
	n, err := b.ReadCloser.Read(p)
	// At the body's end net/http's HTTP/1.1 server starts a background
	// read of the connection with no deadline, to notice a client that
	// leaves while the response is coming; a deadline set now would
	// end it, and cancel the request, after client_body.
	b.done = err != nil
	return n, err
}

// bounded wraps a net/http request's writer and body with the
// no-progress bounds of tm. done must run when the handler returns:
// net/http flushes what the handler left buffered after that, within
// the write deadline done sets.
func bounded(w http.ResponseWriter, r *http.Request, tm timeouts) (http.ResponseWriter, *http.Request, func()) {
	ctl := http.NewResponseController(w)
	bw := &boundedWriter{ResponseWriter: w, ctl: ctl, send: tm.send}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &boundedBody{ReadCloser: r.Body, ctl: ctl, wait: tm.clientBody}
	}
	return bw, r, func() { _ = ctl.SetWriteDeadline(time.Now().Add(tm.send)) }
}

// limited answers a net/http request that got no upstream slot.
func (rs *routeState) limited(w http.ResponseWriter, rc *replayConn, err error) {
	if !errors.Is(err, errUpstreamLimit) {
		rs.metrics.none[classCanceled].Inc()
		return
	}
	rs.metrics.none[classOf(http.StatusServiceUnavailable)].Inc()
	rs.log.Warn("client connection holds too many upstream exchanges; request refused",
		"client", rc.RemoteAddr().String(), "limit", maxUpstreamPerConn)
	http.Error(w, "503 Service Unavailable: too many requests in progress on this connection", http.StatusServiceUnavailable)
}
