package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxUpstreamPerConn bounds the upstream exchanges one client
// connection may hold at once. HTTP/2 multiplexes streams (up to
// h2MaxStreams; HTTP/3 up to h3MaxStreams), and each stream that is forwarded
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

// errClientBodyTimeout marks a request body read that ran out of
// [timeouts] client_body on a RoundTrip path (engine_h1_roundtrip.go, HTTP/3): 408,
// not 504, and not the upstream's failure.
var errClientBodyTimeout = errors.New("the request body stopped arriving ([timeouts] client_body)")

var errUpstreamLimit = errors.New("the connection holds the most upstream exchanges it may at once")

// upLimit is one client connection's count of upstream exchanges held.
// Taking and giving back a slot is an atomic operation; a stream that
// finds none waits for a release's wake-up. (A buffered channel of
// slots cost two channel operations with the runtime's lock per
// exchange, 2% of the HTTP/2 engine's CPU: bench/README.md.)
type upLimit struct {
	held    atomic.Int32
	waiters atomic.Int32 // acquires waiting for a slot
	mu      sync.Mutex
	wake    chan struct{} // closed by the next release while waiters wait
}

// take takes a slot if one is free.
func (u *upLimit) take() bool {
	for {
		h := u.held.Load()
		if h >= maxUpstreamPerConn {
			return false
		}
		if u.held.CompareAndSwap(h, h+1) {
			return true
		}
	}
}

// acquire takes a slot, waiting for one at most wait; ctx ends the wait
// (the stream was reset, the connection closed).
func (u *upLimit) acquire(ctx context.Context, wait time.Duration) error {
	if u.take() {
		return nil
	}
	metricConnUpstreamLimit.Inc()
	t := time.NewTimer(wait)
	defer t.Stop()
	u.mu.Lock()
	u.waiters.Add(1)
	defer u.waiters.Add(-1)
	for {
		// a release either happened before waiters counted this one
		// (take sees its slot) or sees the count and closes wake
		if u.take() {
			u.mu.Unlock()
			return nil
		}
		if u.wake == nil {
			u.wake = make(chan struct{})
		}
		w := u.wake
		u.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return context.Canceled
		case <-t.C:
			return errUpstreamLimit
		}
		u.mu.Lock()
	}
}

// release gives back a slot taken by acquire.
func (u *upLimit) release() {
	u.held.Add(-1)
	if u.waiters.Load() == 0 {
		return
	}
	u.mu.Lock()
	if u.wake != nil {
		close(u.wake)
		u.wake = nil
	}
	u.mu.Unlock()
}

// quic-go's HTTP/3 server (engine_h3_handler.go) bounds a silent peer, not a
// request body or response that stops moving. boundedWriter and
// boundedBody give it gatehouse's no-progress bounds through the
// request's http.ResponseController: each write (and flush) of the
// response gets [timeouts] send, each read of the request body
// client_body. The deadlines are the stream's and bound only reads and
// writes in progress or to come: a deadline is moved only once a
// quarter of it has passed (each wait still has three quarters of it),
// and a pause between two writes (an event stream) or two reads is not
// a wait on the client.
//
// The request body may still be read after the handler returned (the
// upstream transport writes it from its own goroutine); the
// ResponseController must not be used then (the stream's writer is
// gone): over, under mu, stops that.
type deadline struct {
	set  func(time.Time) error
	d    time.Duration
	at   time.Time
	mu   *sync.Mutex
	over *bool // the handler has returned
}

// arm bounds the read or write about to be made.
func (dl *deadline) arm() {
	now := time.Now()
	if dl.at.Sub(now) < dl.d-dl.d/4 {
		dl.at = now.Add(dl.d)
		dl.mu.Lock()
		if !*dl.over {
			_ = dl.set(dl.at)
		}
		dl.mu.Unlock()
	}
}

type boundedWriter struct {
	http.ResponseWriter
	ctl      *http.ResponseController
	dl       deadline
	body     *boundedBody // the request's, if it has one
	hsts     string       // the route's Strict-Transport-Security, on every final answer
	wrote    bool         // a final status was written
	replaced bool         // it was the 408 instead of the upstream's answer
}

func (b *boundedWriter) WriteHeader(code int) {
	if b.wrote {
		return
	}
	if code >= 200 && b.body != nil && b.body.timedOut.Load() {
		// the request body timed out: the upstream answered a request
		// it never got whole; the client gets the 408
		b.replaced = true
		b.write408()
		return
	}
	b.wrote = code >= 200
	if b.wrote && b.hsts != "" {
		// set again: httputil's ReverseProxy clears the header map
		// after relaying a 1xx (103 Early Hints)
		b.ResponseWriter.Header()["Strict-Transport-Security"] = []string{b.hsts}
	}
	b.dl.arm() // a 1xx goes out at once
	b.ResponseWriter.WriteHeader(code)
}

func (b *boundedWriter) write408() {
	h := b.ResponseWriter.Header()
	clear(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Connection", "close")
	if b.hsts != "" {
		h.Set("Strict-Transport-Security", b.hsts)
	}
	b.wrote = true
	b.dl.arm()
	b.ResponseWriter.WriteHeader(http.StatusRequestTimeout)
	_, _ = b.ResponseWriter.Write([]byte("408 Request Timeout: the request body stopped arriving\n"))
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if !b.wrote {
		b.WriteHeader(http.StatusOK)
	}
	if b.replaced {
		return len(p), nil // the upstream's body of the replaced answer
	}
	b.dl.arm()
	return b.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController.Flush calls (the reverse
// proxy flushes through one): the flush writes to the client.
func (b *boundedWriter) FlushError() error {
	b.dl.arm()
	return b.ctl.Flush()
}

func (b *boundedWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

type boundedBody struct {
	io.ReadCloser
	dl       deadline
	done     bool        // the body ended (or failed): the deadline is not touched again
	timedOut atomic.Bool // client_body ran out
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	b.dl.arm()
	n, err := b.ReadCloser.Read(p)
	if ne := net.Error(nil); err != nil && err != io.EOF && errors.As(err, &ne) && ne.Timeout() {
		b.timedOut.Store(true)
		err = fmt.Errorf("%w: %w", errClientBodyTimeout, err) // proxyError answers 408
	}
	b.done = err != nil
	return n, err
}

// bounded wraps an HTTP/3 request's writer and body with the
// no-progress bounds of tm (and the route's HSTS, hsts). done must run when the handler returns:
// the server flushes what the handler left buffered after that, within
// the write deadline done sets.
func bounded(w http.ResponseWriter, r *http.Request, tm timeouts, hsts string) (http.ResponseWriter, *http.Request, func()) {
	// the controller on the server's own writer: the wrappers between
	// (the access record) are reused once the handler has returned
	base := w
	for {
		u, ok := base.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		base = u.Unwrap()
	}
	ctl := http.NewResponseController(base)
	mu, over := new(sync.Mutex), new(bool)
	bw := &boundedWriter{ResponseWriter: w, ctl: ctl, hsts: hsts, dl: deadline{set: ctl.SetWriteDeadline, d: tm.send, mu: mu, over: over}}
	var bb *boundedBody
	if r.Body != nil && r.Body != http.NoBody {
		bb = &boundedBody{ReadCloser: r.Body, dl: deadline{set: ctl.SetReadDeadline, d: tm.clientBody, mu: mu, over: over}}
		r.Body = bb
		bw.body = bb
	}
	return bw, r, func() {
		mu.Lock()
		*over = true
		mu.Unlock()
		_ = ctl.SetWriteDeadline(time.Now().Add(tm.send))
	}
}

// limited answers an HTTP/3 request that got no upstream slot.
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
