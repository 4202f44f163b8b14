// Package h2server is gatehouse's own HTTP/2 server: the connection
// loop, framing, flow control, HPACK use, stream state, limits and
// timeouts. It moves frames and bytes; what a request means (route,
// Host check, forwarded fields, errors, access log) is the Handler's
// business (the proxy's policy, the same for every engine).
//
// net/http's HTTP/2 server spent most of gatehouse's HTTP/2 CPU
// (bench/README.md) on a write syscall per frame (it flushes HEADERS
// and DATA separately) and on goroutine hand-offs per frame; this one
// reads frames in one loop per connection, runs each stream's Handler
// on a pooled worker goroutine, and queues every frame in a
// per-connection buffer that a writer goroutine flushes in one write
// (one TLS record) when nothing more is ready. Framing and HPACK are
// golang.org/x/net/http2's.
//
//	c := h2server.NewConn(tlsConn, h2server.Config{...}, handler)
//	c.Serve() // until the connection is over and every stream's Handler returned
package h2server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// What the server advertises and how much it lets a client hold.
const (
	maxStreams = 250 // SETTINGS_MAX_CONCURRENT_STREAMS: streams whose handler runs
	// SETTINGS_INITIAL_WINDOW_SIZE, and the connection's window: request
	// body bytes buffered per stream and, in all, per connection (as
	// net/http's server has them); a stream may take a frame of
	// maxReadFrame whole.
	streamWindow = 1 << 20
	connWindow   = 1 << 20
	maxPending   = 64 << 10 // frames queued for the client before writers wait for the socket
	// maxReadFrame is SETTINGS_MAX_FRAME_SIZE, as net/http's server
	// sets it (clients that send a header block in one large frame keep
	// working); DATA frames are bounded by the stream windows anyway.
	maxReadFrame = 1 << 20
	// ResetBudget bounds work a client can make gatehouse start and
	// then cancel (CVE-2023-44487, rapid reset): each stream the client
	// resets before its response ended, or that gatehouse refused or
	// reset for a protocol error, costs one; each completed response
	// earns one back. At zero the connection is closed with
	// ENHANCE_YOUR_CALM.
	ResetBudget = 1000
	// closeWait is how long a connection that sent its last GOAWAY
	// waits for the client to close first, so the GOAWAY is not lost to
	// a TCP reset of unread data.
	closeWait = time.Second
	// resetMemory is how many of the streams gatehouse reset last a
	// connection remembers, to ignore the frames in flight on them.
	resetMemory = 64
)

var preface = []byte(http2.ClientPreface)

// Config is a connection's limits and timeouts.
type Config struct {
	// MaxHeaderBytes is SETTINGS_MAX_HEADER_LIST_SIZE: a request whose
	// header block decodes to more is answered 431 by the server
	// (Request.HeaderTooLarge). Zero: 64 KiB.
	MaxHeaderBytes uint32
	// ReadHeader bounds the wait for the client preface and first
	// SETTINGS; Idle a connection with no stream open or every open one
	// stalled on the client; ClientBody a stream waiting for request
	// body; Send a stream waiting for flow-control window or queue room,
	// and each write to the connection. Each must be set.
	ReadHeader, Idle, ClientBody, Send time.Duration
	// Context is the parent of the streams' contexts (nil: Background).
	Context context.Context
	// Log gets the debug lines of streams and connections ended for a
	// stall, naming the client as Client; nil: no log.
	Log    *slog.Logger
	Client string
}

// Handler serves the streams of a connection.
type Handler interface {
	// ServeStream answers one request, on a goroutine of its own: it
	// writes the response through st (the stream is ended with an
	// empty 200, or END_STREAM, if it has not been when ServeStream
	// returns) and reads the request body from st.Body(). req is the
	// Handler's; its Fields must not be kept after ServeStream returns.
	ServeStream(st *Stream, req Request)
}

// Conn is one client connection. The read loop (serve) owns frame
// reading; everything else shared — streams, flow-control windows, the
// outgoing buffer, the HPACK encoder — is guarded by mu.
type Conn struct {
	nc  net.Conn
	cfg Config
	h   Handler

	fr *http2.Framer // reads; serve only
	hb headerBlock   // decodes header blocks; serve only

	mu      sync.Mutex
	out     []byte        // frames queued for the client
	wfr     *http2.Framer // writes into out
	enc     *hpack.Encoder
	hbuf    bytes.Buffer      // HPACK output for one header block
	strs    map[string]string // interned response field strings (Encoder.Intern)
	streams map[uint32]*Stream
	maxID   uint32 // highest stream id the client opened
	budget  int    // see ResetBudget

	sendWin      int64  // connection window for DATA to the client
	peerInitWin  int64  // client's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame uint32 // client's SETTINGS_MAX_FRAME_SIZE
	recvWin      int64  // connection window the client may still send into
	recvCredit   int64  // bytes consumed since the last connection WINDOW_UPDATE

	blocked   []*Stream // streams waiting for sendWin or queue room
	goAway    bool      // GOAWAY sent: no new streams above goAwayID
	goAwayID  uint32
	finishing bool // last GOAWAY queued and no stream left: close after the flush
	closed    bool
	flushing  bool // the writer holds a buffer it is writing

	handlers  sync.WaitGroup // stream goroutines: the connection is done when they are
	kick      chan struct{}  // wakes the writer
	done      chan struct{}  // closed with the connection
	wdone     chan struct{}  // closed when the writer has stopped
	idleTimer *time.Timer
	idleOn    bool      // idleTimer is armed
	idleSince time.Time // when it was

	// Streams waiting on the client (for request body, window or
	// queue room) are "stalled": each is reset when it made no
	// progress for Config.ClientBody or Send (stallTimer checks them),
	// and a connection whose streams are all stalled is idle: the idle
	// timer runs.
	stalled    int
	stallTimer *time.Timer
	stallNext  time.Time // when stallTimer fires; zero: not armed

	// resetIDs are the last streams the server reset (RST_STREAM sent):
	// frames the client sent on them before it saw the reset are
	// ignored (RFC 9113 §5.1), not answered or charged to the reset
	// budget. A ring, allocated on the first reset.
	resetIDs  []uint32
	resetNext int
}

// NewConn makes a connection to serve nc (a TLS connection that
// negotiated "h2") with h; Serve serves it.
func NewConn(nc net.Conn, cfg Config, h Handler) *Conn {
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.Context == nil {
		cfg.Context = context.Background()
	}
	c := &Conn{
		nc: nc, cfg: cfg, h: h,
		streams:      make(map[uint32]*Stream),
		budget:       ResetBudget,
		sendWin:      65535,
		peerInitWin:  65535,
		peerMaxFrame: 16384,
		recvWin:      connWindow,
		kick:         make(chan struct{}, 1),
		done:         make(chan struct{}),
		wdone:        make(chan struct{}),
	}
	c.fr = http2.NewFramer(nil, nc)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(maxReadFrame)
	c.initHeaders() // header blocks: headers.go
	c.wfr = http2.NewFramer(outWriter{c}, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	return c
}

// Serve serves the connection until it closes. It returns once every
// stream's Handler has returned (the streams were ended with the
// connection: a handler waiting on one returns at once) and the
// connection's own goroutines have ended.
func (c *Conn) Serve() {
	go c.writeLoop()
	c.serve()
	c.handlers.Wait()
	<-c.wdone
}

// Shutdown starts a graceful close: GOAWAY, the open streams finish,
// then the connection closes (Serve returns).
func (c *Conn) Shutdown() { c.drain() }

// Close ends the connection and every stream on it at once.
func (c *Conn) Close() { c.close() }

// Handler is the connection's Handler.
func (c *Conn) Handler() Handler { return c.h }

// debug writes a debug line naming the client.
func (c *Conn) debug(msg string, args ...any) {
	if c.cfg.Log != nil {
		c.cfg.Log.Debug(msg, append([]any{"client", c.cfg.Client}, args...)...)
	}
}

type outWriter struct{ c *Conn }

func (w outWriter) Write(p []byte) (int, error) {
	w.c.out = append(w.c.out, p...)
	return len(p), nil
}

// errors of a connection or a stream, as the peer or gatehouse ended them
var (
	errClosed      = errors.New("http2: connection closed")
	errStreamReset = errors.New("http2: stream reset by the client")
	errStreamDone  = errors.New("http2: stream closed")
)

// serve is the read loop: preface, then one frame at a time.
func (c *Conn) serve() {
	defer c.end()
	_ = c.nc.SetReadDeadline(time.Now().Add(c.cfg.ReadHeader))
	var pre [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.nc, pre[:]); err != nil || !bytes.Equal(pre[:], preface) {
		return
	}
	c.mu.Lock()
	_ = c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderBytes},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxReadFrame},
	)
	_ = c.wfr.WriteWindowUpdate(0, connWindow-65535)
	c.wake()
	c.mu.Unlock()

	first := true
	for {
		f, err := c.fr.ReadFrame()
		if hf, ok := f.(*http2.HeadersFrame); ok && err == nil {
			f, err = c.readHeaderBlock(hf)
		}
		if err != nil {
			if !c.readError(err) {
				return
			}
			continue
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.fail(http2.ErrCodeProtocol)
				return
			}
			first = false
			_ = c.nc.SetReadDeadline(time.Time{})
			c.mu.Lock()
			c.idleLocked()
			c.mu.Unlock()
		}
		if err := c.frame(f); err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, true)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.fail(http2.ErrCode(ce))
			}
			return
		}
	}
}

// readError handles a ReadFrame error; false ends the connection.
func (c *Conn) readError(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		c.mu.Lock()
		if se.StreamID > c.maxID && se.StreamID%2 == 1 {
			c.maxID = se.StreamID // a stream opened with bad headers is gone for good
		}
		c.mu.Unlock()
		c.resetStream(se.StreamID, se.Code, true)
		return true
	case errors.As(err, &ce):
		c.fail(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.fail(http2.ErrCodeFrameSize)
	}
	return false
}

// frame handles one frame from the client.
func (c *Conn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		err := c.waitRoomLocked(nil)
		if err == nil {
			_ = c.wfr.WritePing(true, f.Data)
			c.wake()
		}
		c.mu.Unlock()
		return err
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
		return nil // priorities are ignored (RFC 9113 §5.3.2 deprecates them)
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goAwayLocked(http2.ErrCodeNo) // the client opens no more streams; finish these
		c.mu.Unlock()
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil // unknown frame types are ignored (RFC 9113 §4.1)
}

func (c *Conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := c.waitRoomLocked(nil); err != nil {
		return err
	}
	_ = c.wfr.WriteSettingsAck()
	c.wake()
	return nil
}

func (c *Conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		if c.sendWin+inc > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWin += inc
		c.unblockLocked()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.maxID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		}
		return nil // closed: frames in flight are ignored
	}
	if st.sendWin+inc > 1<<31-1 {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	st.sendWin += inc
	st.cond.Broadcast()
	return nil
}

func (c *Conn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.maxID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		}
		return nil
	}
	// the response had not ended: work started and thrown away
	if !st.ended && !c.spendLocked() {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	st.endLocked(errStreamReset)
	return nil
}

// spendLocked takes one from the reset budget; false when it is spent.
func (c *Conn) spendLocked() bool {
	c.budget--
	return c.budget > 0
}

// resetStream sends RST_STREAM and ends the stream if it is open.
// abuse counts it against the reset budget (a stream gatehouse refused
// or found malformed).
func (c *Conn) resetStream(id uint32, code http2.ErrCode, abuse bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if abuse && !c.spendLocked() {
		c.goAwayCodeLocked(http2.ErrCodeEnhanceYourCalm)
		c.finishLocked()
		return
	}
	if st := c.streams[id]; st != nil {
		st.endLocked(errStreamDone)
	}
	c.writeResetLocked(id, code)
}

// writeResetLocked queues RST_STREAM. It does not wait for queue room:
// a reset frees the client's resources, and their number is bounded by
// the reset budget and stream count.
func (c *Conn) writeResetLocked(id uint32, code http2.ErrCode) {
	if c.closed || id == 0 {
		return
	}
	_ = c.wfr.WriteRSTStream(id, code)
	c.wake()
	if c.resetIDs == nil {
		c.resetIDs = make([]uint32, resetMemory)
	}
	c.resetIDs[c.resetNext] = id
	c.resetNext = (c.resetNext + 1) % resetMemory
}

// wasResetLocked reports whether gatehouse reset stream id lately: a
// frame on it was in flight when the client got the RST_STREAM.
func (c *Conn) wasResetLocked(id uint32) bool {
	for _, r := range c.resetIDs {
		if r == id {
			return true
		}
	}
	return false
}

// fail ends the connection for a connection error: GOAWAY with the
// code, then close once it is written.
func (c *Conn) fail(code http2.ErrCode) {
	c.mu.Lock()
	c.goAwayCodeLocked(code)
	c.finishLocked()
	c.mu.Unlock()
}

// goAwayLocked starts a graceful close: no new streams, the open ones
// finish, then the connection closes.
func (c *Conn) goAwayLocked(code http2.ErrCode) {
	if c.goAway {
		return
	}
	c.goAwayCodeLocked(code)
	if len(c.streams) == 0 {
		c.finishLocked()
	}
}

func (c *Conn) goAwayCodeLocked(code http2.ErrCode) {
	if c.closed {
		return
	}
	if c.goAway && code == http2.ErrCodeNo {
		return
	}
	c.goAway, c.goAwayID = true, c.maxID
	_ = c.wfr.WriteGoAway(c.maxID, code, nil)
	c.wake()
}

// finishLocked makes the writer close the connection's writing side
// after its next flush; the read loop then waits closeWait for the
// client to close.
func (c *Conn) finishLocked() {
	if c.finishing || c.closed {
		return
	}
	c.finishing = true
	for _, st := range c.streams {
		st.endLocked(errClosed)
	}
	c.unblockLocked()
	c.wake()
}

// idleLocked arms the idle timer when no stream is open, or every
// open one is stalled on the client (a connection whose streams all
// wait for window or body is not busy).
func (c *Conn) idleLocked() {
	if len(c.streams) != c.stalled || c.closed {
		return
	}
	if c.goAway && len(c.streams) == 0 {
		c.finishLocked()
		return
	}
	if c.idleOn {
		return // running since the connection went idle
	}
	c.idleOn, c.idleSince = true, time.Now()
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.cfg.Idle, c.onIdle)
	} else {
		c.idleTimer.Reset(c.cfg.Idle)
	}
}

// busyLocked stops the idle timer: a stream is open and not stalled.
func (c *Conn) busyLocked() {
	if c.idleOn {
		c.idleOn = false
		c.idleTimer.Stop()
	}
}

func (c *Conn) onIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.idleOn || len(c.streams) != c.stalled {
		return // busy again meanwhile
	}
	if left := c.cfg.Idle - time.Since(c.idleSince); left > 0 {
		c.idleTimer.Reset(left) // a stale fire: idle again since
		return
	}
	c.idleOn = false
	if len(c.streams) == 0 {
		c.goAwayLocked(http2.ErrCodeNo)
		return
	}
	// every stream has waited on the client for the whole idle time
	c.debug("HTTP/2 connection idle with every stream stalled; closing", "streams", len(c.streams))
	c.goAwayCodeLocked(http2.ErrCodeNo)
	c.finishLocked()
}

// stallLocked marks st as waiting on the client, for at most limit
// without progress.
func (st *Stream) stallLocked(limit time.Duration) {
	if !st.stallAt.IsZero() {
		return
	}
	c := st.c
	now := time.Now()
	st.stallAt, st.stallLimit = now, limit
	c.stalled++
	if at := now.Add(limit); c.stallNext.IsZero() || at.Before(c.stallNext) {
		c.stallNext = at
		if c.stallTimer == nil {
			c.stallTimer = time.AfterFunc(limit, c.onStall)
		} else {
			c.stallTimer.Reset(limit)
		}
	}
	c.idleLocked()
}

// unstallLocked marks st as making progress (or done waiting).
func (st *Stream) unstallLocked() {
	if st.stallAt.IsZero() {
		return
	}
	st.stallAt = time.Time{}
	st.c.stalled--
	st.c.busyLocked()
}

var errStalled = errors.New("http2: stream made no progress for [timeouts] client_body/send")

// onStall resets the streams stalled for longer than their limit and
// re-arms for the next one.
func (c *Conn) onStall() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	now := time.Now()
	var next time.Time
	for _, st := range c.streams {
		if st.stallAt.IsZero() {
			continue
		}
		at := st.stallAt.Add(st.stallLimit)
		if !at.After(now) {
			c.debug("HTTP/2 stream stalled on the client; reset", "stream", st.id, "waited", now.Sub(st.stallAt))
			st.unstallLocked()
			st.endLocked(errStalled)
			c.writeResetLocked(st.id, http2.ErrCodeCancel)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	c.stallNext = next
	if !next.IsZero() {
		c.stallTimer.Reset(next.Sub(now))
	}
	c.idleLocked()
}

// drain is Shutdown.
func (c *Conn) drain() {
	c.mu.Lock()
	c.goAwayLocked(http2.ErrCodeNo)
	c.mu.Unlock()
}

// wake tells the writer there is something to flush; mu is held.
func (c *Conn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// waitRoomLocked waits until the queue has room (the client reads what
// it is sent), so neither a slow reader nor a flood of PINGs grows it
// without bound. st, if set, is woken on a reset too.
func (c *Conn) waitRoomLocked(st *Stream) error {
	if st != nil {
		defer st.unstallLocked()
	}
	for len(c.out) >= maxPending {
		if c.closed || c.finishing {
			return errClosed
		}
		if st != nil && st.err != nil {
			return st.err
		}
		if st == nil {
			// the read loop: wait on the connection's own waiter
			w := c.readWaiter()
			c.blocked = append(c.blocked, w)
			w.cond.Wait()
			continue
		}
		st.stallLocked(c.cfg.Send) // the client is not reading
		c.blocked = append(c.blocked, st)
		st.cond.Wait()
	}
	if c.closed || c.finishing {
		return errClosed
	}
	return nil
}

// readWaiter is a stream-shaped waiter for the read loop's waits.
func (c *Conn) readWaiter() *Stream {
	w := &Stream{c: c}
	w.cond.L = &c.mu
	return w
}

// unblockLocked wakes the streams waiting for the connection window or
// queue room.
func (c *Conn) unblockLocked() {
	for i, st := range c.blocked {
		st.cond.Broadcast()
		c.blocked[i] = nil
	}
	c.blocked = c.blocked[:0]
}

// writeLoop flushes the queue: each wake-up writes everything queued so
// far in one Write (one TLS record up to 16 KiB, one syscall).
func (c *Conn) writeLoop() {
	defer close(c.wdone)
	var spare []byte
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		// Let the streams that are ready queue their frames first: their
		// responses then share this write.
		runtime.Gosched()
		for {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				return
			}
			if len(c.out) == 0 {
				finish := c.finishing
				c.flushing = false
				c.mu.Unlock()
				if finish {
					// the last frames are out: wait for the client to close
					_ = c.nc.SetReadDeadline(time.Now().Add(closeWait))
					return
				}
				break
			}
			buf := c.out
			c.out = spare[:0]
			c.flushing = true
			c.unblockLocked()
			c.mu.Unlock()
			// a client that stops reading for [timeouts] send is closed
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.Send))
			_, err := c.nc.Write(buf)
			if cap(buf) > 32<<10 {
				buf = nil // a burst's buffer is not kept by an idle connection
			}
			spare = buf
			if err != nil {
				c.close()
				return
			}
		}
	}
}

// end closes the connection when the read loop is over: what is
// queued (a GOAWAY) is written first, for at most closeWait.
func (c *Conn) end() {
	c.mu.Lock()
	c.finishLocked()
	c.mu.Unlock()
	t := time.NewTimer(closeWait)
	select {
	case <-c.wdone:
	case <-t.C:
	}
	t.Stop()
	c.close()
}

// close ends the connection and every stream on it.
func (c *Conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for _, st := range c.streams {
		st.endLocked(errClosed)
	}
	c.unblockLocked()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if c.stallTimer != nil {
		c.stallTimer.Stop()
	}
	close(c.done)
	c.mu.Unlock()
	c.nc.Close()
}
