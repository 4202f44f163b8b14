package h2server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Stream is one request on a Conn. Its Handler runs on a worker
// goroutine; the read loop feeds it the request body. Fields after
// cond are guarded by c.mu; the response fields are the Handler's own
// (its goroutine's).
type Stream struct {
	c    *Conn
	id   uint32
	cond sync.Cond       // L = &c.mu: window, queue room, body data, end
	ctx  context.Context // made by Context(); nil until then

	sendWin    int64 // window for DATA to the client
	recvWin    int64 // window the client may still send into
	recvCredit int64 // body bytes read since the last stream WINDOW_UPDATE
	body       []byte
	bodyOff    int
	bodyClosed bool  // the Handler is done with the body: discard more
	remoteDone bool  // END_STREAM received
	declared   int64 // request content-length; -1 when not sent
	received   int64
	ended      bool  // END_STREAM sent
	expect     bool  // the client waits for 100 Continue before its body
	headed     bool  // response HEADERS (or a 100) queued
	err        error // why the stream ended, once it has
	cancel     context.CancelFunc
	intr       Interrupter // what the stream's end breaks off (Attach)
	intrDone   bool        // intr was interrupted

	stallAt    time.Time     // waiting on the client since (see Conn.stalled); zero: not
	stallLimit time.Duration // Config.ClientBody or Send for that wait

	hdr         http.Header // response header for the ResponseWriter methods
	wroteHeader bool
	status      int
	bytes       int64
}

// endLocked ends the stream: its context is canceled, what it is
// attached to interrupted, its waiters return err.
func (st *Stream) endLocked(err error) {
	if st.err != nil {
		return
	}
	st.err = err
	if st.cancel != nil {
		st.cancel()
	}
	if st.intr != nil && !st.intrDone {
		st.intrDone = true
		st.intr.Interrupt()
	}
	st.cond.Broadcast()
}

// Context returns the stream's context, which ends with the stream (a
// client reset, the connection's end, a stall); made on first use: a
// handler that needs none saves two allocations per stream.
func (st *Stream) Context() context.Context {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.ctx == nil {
		st.ctx, st.cancel = context.WithCancel(c.cfg.Context)
		if st.err != nil {
			st.cancel() // ended already
		}
	}
	return st.ctx
}

// Interrupter is what a Handler's work for a stream can be broken off
// by (an upstream connection's deadline): the stream's end calls
// Interrupt once, with the connection's lock held.
type Interrupter interface{ Interrupt() }

// Attach makes x what the stream's end interrupts; false: the stream
// has ended already.
func (st *Stream) Attach(x Interrupter) bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	if st.err != nil {
		return false
	}
	st.intr = x
	return true
}

// Detach ends Attach; it reports whether the stream's end interrupted
// x meanwhile.
func (st *Stream) Detach() (interrupted bool) {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	st.intr = nil
	return st.intrDone
}

// Canceled reports whether the stream has ended (a client reset, the
// connection's end, a stall).
func (st *Stream) Canceled() bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return st.err != nil
}

// Conn is the stream's connection.
func (st *Stream) Conn() *Conn { return st.c }

// Request is a request's pseudo-header fields and what was checked
// of its other fields.
type Request struct {
	Method, Scheme, Authority, Path string
	ContentLength                   int64 // content-length; -1 when not sent
	EndStream                       bool  // the HEADERS frame ended the stream: no body
	Expect                          bool  // expect: 100-continue
	// HeaderTooLarge: the header block decoded to more than
	// Config.MaxHeaderBytes; the server answered 431 and Fields are
	// those decoded before the limit.
	HeaderTooLarge bool
	Fields         []hpack.HeaderField
}

// checkRequest validates a request header block (RFC 9113 §8.1.2,
// §8.2.2, §8.3.1); false means a malformed request (PROTOCOL_ERROR).
// The framer already refused upper-case names, pseudo-fields after
// regular ones, unknown and duplicate pseudo-fields, and invalid values.
func checkRequest(fields []hpack.HeaderField) (Request, bool) {
	r := Request{ContentLength: -1, Fields: fields}
	host := ""
	for _, f := range fields {
		if valueMalformed(f.Value) {
			return r, false // RFC 9113 §8.2.1
		}
		if f.IsPseudo() {
			switch f.Name {
			case ":method":
				r.Method = f.Value
			case ":scheme":
				r.Scheme = f.Value
			case ":authority":
				r.Authority = f.Value
			case ":path":
				r.Path = f.Value
			default: // :protocol (extended CONNECT is not offered), :status
				return r, false
			}
			continue
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return r, false
		case "te":
			if f.Value != "trailers" {
				return r, false
			}
		case "content-length":
			n, ok := contentLength(f.Value) // 1*DIGIT: no sign, no space
			if !ok || r.ContentLength >= 0 && n != r.ContentLength {
				return r, false
			}
			r.ContentLength = n
		case "host":
			host = f.Value
		case "expect":
			r.Expect = strings.EqualFold(f.Value, "100-continue")
		}
	}
	if r.Method == "" {
		return r, false
	}
	if r.Method == "CONNECT" {
		if r.Scheme != "" || r.Path != "" || r.Authority == "" {
			return r, false
		}
	} else if r.Scheme == "" || r.Path == "" || r.Path[0] != '/' && !(r.Path == "*" && r.Method == "OPTIONS") {
		return r, false
	}
	if r.Authority == "" {
		r.Authority = host
	}
	return r, true
}

// onHeaders opens a stream for a request, or takes a stream's trailers.
func (c *Conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id <= c.maxID {
		st := c.streams[id]
		if st == nil {
			if c.wasResetLocked(id) {
				return nil // trailers in flight on a stream gatehouse reset (RFC 9113 §5.1)
			}
			// a closed stream's id used again (RFC 9113 §5.1, §5.1.1)
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteDone && st.ended {
			// closed both ways; its goroutine is only finishing up
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteDone || st.err == errStreamReset {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		if st.err != nil {
			return nil // gatehouse reset it: frames in flight are ignored
		}
		// trailers: they end the body, carry no pseudo-fields; their
		// fields are not forwarded
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		for _, tf := range f.Fields {
			if valueMalformed(tf.Value) {
				return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
			}
		}
		if st.declared >= 0 && st.received != st.declared {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		st.remoteDone = true
		st.cond.Broadcast()
		return nil
	}
	c.maxID = id
	if f.HasPriority() && f.Priority.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if c.goAway {
		c.writeResetLocked(id, http2.ErrCodeRefusedStream)
		return nil
	}
	req, ok := checkRequest(f.Fields)
	req.EndStream = f.StreamEnded()
	req.HeaderTooLarge = f.Truncated
	if !ok && !f.Truncated {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if f.StreamEnded() && req.ContentLength > 0 {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if len(c.streams) >= maxStreams {
		if !c.spendLocked() {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		c.writeResetLocked(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := &Stream{c: c, id: id, sendWin: c.peerInitWin, recvWin: streamWindow,
		declared: req.ContentLength, remoteDone: f.StreamEnded(), expect: req.Expect && !f.StreamEnded()}
	st.cond.L = &c.mu
	// the block's fields are the read loop's (headers.go): the stream
	// gets its own copy
	req.Fields = append([]hpack.HeaderField(nil), req.Fields...)
	c.streams[id] = st
	c.busyLocked()
	c.handlers.Add(1)
	startStream(job{st, req})
	return nil
}

// onData takes request body bytes for a stream.
func (c *Conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWin {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= n
	st := c.streams[id]
	if st == nil || st.err != nil || st.remoteDone {
		c.creditLocked(nil, n) // nobody reads it: give the connection window back
		switch {
		case st == nil && id > c.maxID:
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		case st != nil && st.err != nil && st.err != errStreamReset,
			st == nil && c.wasResetLocked(id):
			// gatehouse reset it (an early answer ends with
			// RST_STREAM(NO_ERROR)): frames in flight are ignored, and
			// not charged to the reset budget (RFC 9113 §5.1)
			return nil
		}
		// half-closed or closed, or reset by the client (RFC 9113 §5.1)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if n > st.recvWin {
		c.creditLocked(nil, n)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
	}
	st.recvWin -= n
	data := f.Data()
	st.received += int64(len(data))
	if pad := n - int64(len(data)); pad > 0 {
		c.creditLocked(st, pad)
	}
	if st.declared >= 0 && (st.received > st.declared || f.StreamEnded() && st.received != st.declared) {
		c.creditLocked(nil, int64(len(data)))
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if st.bodyClosed {
		c.creditLocked(st, int64(len(data)))
	} else if len(data) > 0 {
		st.body = append(st.body, data...)
	}
	if f.StreamEnded() {
		st.remoteDone = true
	}
	st.cond.Broadcast()
	return nil
}

// creditLocked returns n consumed body bytes to the client's windows,
// in WINDOW_UPDATEs of at least half a window (not one per read).
func (c *Conn) creditLocked(st *Stream, n int64) {
	if n <= 0 || c.closed {
		return
	}
	c.recvCredit += n
	if c.recvCredit >= connWindow/2 {
		_ = c.wfr.WriteWindowUpdate(0, uint32(c.recvCredit))
		c.recvWin += c.recvCredit
		c.recvCredit = 0
		c.wake()
	}
	if st == nil || st.remoteDone || st.err != nil {
		return
	}
	st.recvCredit += n
	if st.recvCredit >= streamWindow/2 {
		_ = c.wfr.WriteWindowUpdate(st.id, uint32(st.recvCredit))
		st.recvWin += st.recvCredit
		st.recvCredit = 0
		c.wake()
	}
}

// Body is a request body as the Handler reads it (a 100 Continue is
// sent at the first Read that waits, when the client asked for one).
type Body struct{ st *Stream }

var errBodyGone = errors.New("http2: request body canceled by the client")

func (b Body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for st.bodyOff == len(st.body) {
		switch {
		case st.err != nil:
			st.unstallLocked()
			return 0, errBodyGone
		case st.remoteDone:
			st.unstallLocked()
			return 0, io.EOF
		}
		if st.expect && !st.headed {
			// the Handler wants the body (the proxy's upstream answered
			// 100 Continue): tell the client to send it
			st.headed = true
			c.hbuf.Reset()
			c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
			c.writeBlockLocked(st.id, false)
			c.wake()
		}
		st.stallLocked(c.cfg.ClientBody) // no progress for client_body resets the stream
		st.cond.Wait()
	}
	st.unstallLocked()
	if st.err != nil {
		return 0, errBodyGone
	}
	n := copy(p, st.body[st.bodyOff:])
	st.bodyOff += n
	if st.bodyOff == len(st.body) {
		st.body, st.bodyOff = st.body[:0], 0
	}
	c.creditLocked(st, int64(n))
	return n, nil
}

func (b Body) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	st.bodyClosed = true
	c.creditLocked(st, int64(len(st.body)-st.bodyOff))
	st.body, st.bodyOff = nil, 0
	return nil
}

// Body returns the request body as the Handler reads it.
func (st *Stream) Body() Body { return Body{st} }

// TakeBody appends the whole request body to dst when all of it, n
// bytes, has arrived and the client ended the stream (a small form, an
// API call); the body is then consumed. false: it has not, dst is
// returned as it was.
func (st *Stream) TakeBody(dst []byte, n int64) ([]byte, bool) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !st.remoteDone || int64(len(st.body)-st.bodyOff) != n {
		return dst, false
	}
	dst = append(dst, st.body[st.bodyOff:]...)
	c.creditLocked(nil, n)
	st.body, st.bodyOff, st.bodyClosed = st.body[:0], 0, true
	return dst, true
}

// job is a stream for a worker goroutine to run.
type job struct {
	st  *Stream
	req Request
}

// workers are the goroutines that finished a stream and wait for the
// next, the most recently idle last: a new stream goes to the last one
// (its stack is warm), else to a new goroutine. A new goroutine's stack
// grows by copying several times on its way through a request (10% of
// HTTP/2 CPU in the bench's profile); a worker's has grown already.
// A worker waits on its own channel, with no timer: waiting in a select
// on a shared channel and a per-worker timer, reset for every stream,
// cost 5% of the engine's CPU (bench/README.md). A sweep every
// workerIdle retires the workers that were idle at the sweep before
// (idle for workerIdle to twice that); they are at the front. A
// worker notes the sweep count when it goes idle, not the time (a
// clock read per stream).
var workers struct {
	sync.Mutex
	idle     []*worker
	sweeps   uint64 // sweeps so far
	sweeping bool   // a sweep is scheduled
}

type worker struct {
	next  chan job // the next stream; a zero job: retire
	sweep uint64   // workers.sweeps when it went idle
}

// workerIdle is how long a worker waits for another stream, at least.
const workerIdle = 10 * time.Second

func startStream(j job) {
	workers.Lock()
	if n := len(workers.idle); n > 0 {
		w := workers.idle[n-1]
		workers.idle[n-1] = nil
		workers.idle = workers.idle[:n-1]
		workers.Unlock()
		w.next <- j // buffered: the worker is waiting for it, or about to
		return
	}
	workers.Unlock()
	go runWorker(j)
}

func runWorker(j job) {
	w := &worker{next: make(chan job, 1)}
	for {
		j.st.run(j.req)
		j = job{} // holds no finished stream (nor its connection) while idle
		workers.Lock()
		w.sweep = workers.sweeps
		workers.idle = append(workers.idle, w)
		if !workers.sweeping {
			workers.sweeping = true
			time.AfterFunc(workerIdle, sweepWorkers)
		}
		workers.Unlock()
		if j = <-w.next; j.st == nil {
			return
		}
	}
}

// sweepWorkers retires the workers idle since before the last sweep,
// and runs again while any is left.
func sweepWorkers() {
	workers.Lock()
	defer workers.Unlock()
	idle := workers.idle
	i := 0
	for ; i < len(idle) && idle[i].sweep < workers.sweeps; i++ {
		idle[i].next <- job{} // out of the list: nothing else is sent to it
	}
	n := copy(idle, idle[i:])
	clear(idle[n:])
	workers.idle = idle[:n]
	workers.sweeps++
	if n == 0 {
		workers.sweeping = false
		return
	}
	time.AfterFunc(workerIdle, sweepWorkers)
}

// run serves the stream's request and ends the stream. A header block
// over Config.MaxHeaderBytes is answered 431 here; the Handler then
// sees the request only to log it.
func (st *Stream) run(req Request) {
	defer st.c.handlers.Done()
	defer st.c.streamDone(st)
	if req.HeaderTooLarge {
		st.Header().Set("Content-Type", "text/plain; charset=utf-8")
		st.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
		_, _ = st.Write([]byte("431 Request Header Fields Too Large\n"))
		st.End()
	}
	st.c.h.ServeStream(st, req)
	st.End()
}

// streamDone retires a stream whose goroutine has finished.
func (c *Conn) streamDone(st *Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	completed := st.err == nil && st.ended
	if st.err == nil {
		switch {
		case !st.ended:
			c.writeResetLocked(st.id, http2.ErrCodeInternal) // the response broke off
		case !st.remoteDone:
			// answered before the request body ended: the client may stop sending
			c.writeResetLocked(st.id, http2.ErrCodeNo)
		}
		st.endLocked(errStreamDone)
	}
	c.creditLocked(nil, int64(len(st.body)-st.bodyOff))
	st.body = nil
	st.unstallLocked()
	delete(c.streams, st.id)
	if completed && c.budget < ResetBudget {
		c.budget++
	}
	c.idleLocked()
}
