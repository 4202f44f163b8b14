package h2server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serverTester drives a Conn frame by frame over net.Pipe, the way
// x/net's serverTester drives net/http's HTTP/2 server: frames written
// with x/net/http2's Framer, the server's frames read back by a reader
// goroutine into a channel (copied: a Framer reuses its read buffer).
// Nothing else runs: no TLS, no listener, no proxy.
//
//	st := newServerTester(t, echo)
//	st.greet()
//	st.writeHeaders(1, true, true, st.getRequest("/"))
//	status, body, _ := st.response(1)
type serverTester struct {
	t    testing.TB
	cc   net.Conn // the client's end of the pipe
	sc   *Conn
	fr   *http2.Framer // writes only; the reader has its own
	enc  *hpack.Encoder
	hbuf bytes.Buffer

	frames  chan frame    // the server's frames, in order
	rerr    chan error    // the reader's final error (io.EOF: the server closed)
	done    chan struct{} // closed when the reader has stopped
	served  chan struct{} // closed when Serve has returned
	quit    chan struct{} // closed by close: the reader stops
	writers sync.WaitGroup
	closed  bool
	// bound is how long close waits for the connection's goroutines
	// (10 s; FuzzFrames: 2 s, inside the fuzzing engine's 10 s per input)
	bound time.Duration
}

// frame is a frame read from the server, with what the tests look at
// copied out of the Framer's buffers.
type frame struct {
	http2.FrameHeader
	Fields   []hpack.HeaderField // HEADERS (CONTINUATIONs merged)
	Data     []byte              // DATA payload
	Code     http2.ErrCode       // RST_STREAM, GOAWAY
	LastID   uint32              // GOAWAY
	Ping     [8]byte             // PING
	Settings []http2.Setting     // SETTINGS
	Incr     uint32              // WINDOW_UPDATE
}

func (f frame) endStream() bool {
	return (f.Type == http2.FrameHeaders || f.Type == http2.FrameData) && f.Flags.Has(http2.FlagDataEndStream)
}

func (f frame) header(name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// handlerFunc makes a function a Handler.
type handlerFunc func(st *Stream, req Request)

func (f handlerFunc) ServeStream(st *Stream, req Request) { f(st, req) }

// echo answers every request with 200 and "path=" and its :path, after
// reading its body (and nothing for a HEAD): a test can tell whose
// response a stream got.
var echo = handlerFunc(func(st *Stream, req Request) {
	if req.HeaderTooLarge {
		return
	}
	if !req.EndStream {
		if _, err := io.Copy(io.Discard, st.Body()); err != nil {
			return
		}
	}
	st.Header().Set("Content-Type", "text/plain")
	if req.Method != "HEAD" {
		_, _ = io.WriteString(st, "path="+req.Path)
	}
})

// testConfig is a Config with the proxy's limits and long timeouts.
func testConfig() Config {
	return Config{MaxHeaderBytes: 64 << 10, ReadHeader: 10 * time.Second, Idle: time.Minute,
		ClientBody: time.Minute, Send: time.Minute}
}

// newServerTester serves one end of a pipe with h (cfg: testConfig
// changed by tweak) and sends the client preface on the other.
func newServerTester(t testing.TB, h Handler, tweak ...func(*Config)) *serverTester {
	t.Helper()
	st := startServerTester(t, h, tweak...)
	if _, err := io.WriteString(st.cc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	return st
}

// startServerTester is newServerTester without the preface.
func startServerTester(t testing.TB, h Handler, tweak ...func(*Config)) *serverTester {
	t.Helper()
	cfg := testConfig()
	for _, f := range tweak {
		f(&cfg)
	}
	cc, sc := net.Pipe()
	st := &serverTester{t: t, cc: cc, frames: make(chan frame, 4096), rerr: make(chan error, 1),
		done: make(chan struct{}), served: make(chan struct{}), quit: make(chan struct{}), bound: 10 * time.Second}
	st.sc = NewConn(sc, cfg, h)
	go func() {
		defer close(st.served)
		st.sc.Serve()
	}()
	st.fr = http2.NewFramer(cc, nil)
	st.fr.AllowIllegalWrites = true // the tests write what a broken client would
	st.enc = hpack.NewEncoder(&st.hbuf)
	st.enc.SetMaxDynamicTableSizeLimit(4096)
	rfr := http2.NewFramer(nil, cc)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rfr.MaxHeaderListSize = 1 << 20
	rfr.SetMaxReadFrameSize(1<<24 - 1) // a test may advertise more than 16 KiB
	go st.readLoop(rfr)
	t.Cleanup(st.close)
	return st
}

func (st *serverTester) readLoop(fr *http2.Framer) {
	defer close(st.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			st.rerr <- err
			return
		}
		out := frame{FrameHeader: f.Header()}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			out.Type = http2.FrameHeaders
			out.Fields = append([]hpack.HeaderField(nil), f.Fields...)
		case *http2.DataFrame:
			out.Data = append([]byte(nil), f.Data()...)
		case *http2.RSTStreamFrame:
			out.Code = f.ErrCode
		case *http2.GoAwayFrame:
			out.Code, out.LastID = f.ErrCode, f.LastStreamID
		case *http2.PingFrame:
			out.Ping = f.Data
		case *http2.SettingsFrame:
			_ = f.ForeachSetting(func(s http2.Setting) error { out.Settings = append(out.Settings, s); return nil })
		case *http2.WindowUpdateFrame:
			out.Incr = f.Increment
		}
		t.Reset(10 * time.Second)
		select {
		case st.frames <- out:
		case <-st.quit:
			st.rerr <- io.ErrClosedPipe
			return
		case <-t.C:
			st.rerr <- errors.New("serverTester: nobody reads the server's frames")
			return
		}
	}
}

// goWrite runs a writer (a flood) beside the test's reads; close waits
// for it: it must stop when a write fails.
func (st *serverTester) goWrite(f func()) {
	st.writers.Add(1)
	go func() {
		defer st.writers.Done()
		f()
	}()
}

// close closes the client's end and waits (bounded) for the reader,
// the test's writers and Serve: when it returns, no goroutine of the
// connection is left.
func (st *serverTester) close() {
	if st.closed {
		return
	}
	st.closed = true
	close(st.quit)
	st.cc.Close()
	t := time.NewTimer(st.bound)
	defer t.Stop()
	for _, w := range []struct {
		what string
		ch   <-chan struct{}
	}{{"the reader", st.done}, {"Serve", st.served}, {"the writers", waitChan(&st.writers)}} {
		select {
		case <-w.ch:
		case <-t.C:
			st.t.Errorf("serverTester: %s did not stop within %v of close", w.what, st.bound)
			return
		}
	}
}

func waitChan(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}

// served reports whether Serve returned within d.
func (st *serverTester) waitServed(d time.Duration) bool {
	select {
	case <-st.served:
		return true
	case <-time.After(d):
		return false
	}
}

// encode HPACK-encodes name/value pairs into a header block (the
// encoder's dynamic table carries over, as on a real connection).
func (st *serverTester) encode(kv ...string) []byte {
	st.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = st.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), st.hbuf.Bytes()...)
}

// getRequest is the header block of a GET for path, extra fields after.
func (st *serverTester) getRequest(path string, extra ...string) []byte {
	return st.encode(append([]string{":method", "GET", ":scheme", "https", ":authority", "web.test", ":path", path}, extra...)...)
}

// postRequest is the header block of a POST for path, extra fields after.
func (st *serverTester) postRequest(path string, extra ...string) []byte {
	return st.encode(append([]string{":method", "POST", ":scheme", "https", ":authority", "web.test", ":path", path}, extra...)...)
}

func (st *serverTester) writeSettings(s ...http2.Setting) error { return st.fr.WriteSettings(s...) }
func (st *serverTester) writeSettingsAck() error                { return st.fr.WriteSettingsAck() }
func (st *serverTester) writeHeaders(id uint32, endStream, endHeaders bool, block []byte) error {
	return st.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: endHeaders})
}
func (st *serverTester) writeContinuation(id uint32, endHeaders bool, block []byte) error {
	return st.fr.WriteContinuation(id, endHeaders, block)
}
func (st *serverTester) writeData(id uint32, endStream bool, p []byte) error {
	return st.fr.WriteData(id, endStream, p)
}
func (st *serverTester) writeWindowUpdate(id, incr uint32) error {
	return st.fr.WriteWindowUpdate(id, incr)
}
func (st *serverTester) writeRST(id uint32, code http2.ErrCode) error {
	return st.fr.WriteRSTStream(id, code)
}
func (st *serverTester) writePing(ack bool, data [8]byte) error { return st.fr.WritePing(ack, data) }
func (st *serverTester) writeRaw(t http2.FrameType, flags http2.Flags, id uint32, p []byte) error {
	return st.fr.WriteRawFrame(t, flags, id, p)
}

// must fails the test on a write error.
func (st *serverTester) must(err error) {
	st.t.Helper()
	if err != nil {
		st.t.Fatal(err)
	}
}

var errNoFrame = errors.New("no frame from the server")

// readFrame returns the server's next frame, or an error: io.EOF (or
// another read error) when the server closed, or errNoFrame after d.
func (st *serverTester) readFrame(d time.Duration) (frame, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-st.frames:
		return f, nil
	case <-st.done:
		// frames read before the error come first
		select {
		case f := <-st.frames:
			return f, nil
		default:
		}
		select {
		case err := <-st.rerr:
			st.rerr <- err // stays readable
			return frame{}, err
		default:
			return frame{}, io.EOF
		}
	case <-t.C:
		return frame{}, fmt.Errorf("%w within %v", errNoFrame, d)
	}
}

// closedCleanly reports whether err (from readFrame) is the server
// closing the connection, not a frame the client could not parse.
func closedCleanly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

// wantFrame is readFrame that fails the test on an error.
func (st *serverTester) wantFrame(d time.Duration) frame {
	st.t.Helper()
	f, err := st.readFrame(d)
	if err != nil {
		st.t.Fatal(err)
	}
	return f
}

// until reads frames until want returns true (10 s at most) and
// returns that frame; a GOAWAY or the connection's end fails the test
// unless want took it.
func (st *serverTester) until(want func(f frame) bool) frame {
	st.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := st.readFrame(time.Until(deadline))
		if err != nil {
			st.t.Fatalf("waiting for a frame: %v", err)
		}
		if want(f) {
			return f
		}
		if f.Type == http2.FrameGoAway {
			st.t.Fatalf("GOAWAY %v (last stream %d)", f.Code, f.LastID)
		}
		if f.Type == http2.FrameSettings && !f.Flags.Has(http2.FlagSettingsAck) {
			st.must(st.writeSettingsAck())
		}
	}
}

// greet does the SETTINGS exchange: the client's settings, then the
// server's SETTINGS (acked), up to the server's ack of the client's.
func (st *serverTester) greet(s ...http2.Setting) {
	st.t.Helper()
	st.must(st.writeSettings(s...))
	gotSettings, gotAck := false, false
	for !gotSettings || !gotAck {
		f := st.wantFrame(5 * time.Second)
		switch {
		case f.Type == http2.FrameSettings && f.Flags.Has(http2.FlagSettingsAck):
			gotAck = true
		case f.Type == http2.FrameSettings:
			gotSettings = true
			st.must(st.writeSettingsAck())
		case f.Type == http2.FrameWindowUpdate:
		default:
			st.t.Fatalf("before the SETTINGS ack: %v", f.FrameHeader)
		}
	}
}

// response reads until stream id ended: its final :status, its body,
// and the RST_STREAM code if it was reset (status "RST").
func (st *serverTester) response(id uint32) (status, body string, code http2.ErrCode) {
	st.t.Helper()
	var b strings.Builder
	st.until(func(f frame) bool {
		if f.StreamID != id {
			return false
		}
		switch f.Type {
		case http2.FrameHeaders:
			if s := f.header(":status"); s != "" && s[0] != '1' {
				status = s
			}
		case http2.FrameData:
			b.WriteString(string(f.Data))
		case http2.FrameRSTStream:
			status, code = "RST", f.Code
			return true
		}
		return f.endStream()
	})
	return status, b.String(), code
}

// wantGoAway reads until GOAWAY, then until the server closes; it
// returns the GOAWAY's code and last stream.
func (st *serverTester) wantGoAway() (http2.ErrCode, uint32) {
	st.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var g *frame
	for {
		f, err := st.readFrame(time.Until(deadline))
		if err != nil {
			if g == nil || !closedCleanly(err) {
				st.t.Fatalf("GOAWAY %v, then: %v", g != nil, err)
			}
			return g.Code, g.LastID
		}
		if f.Type == http2.FrameGoAway && g == nil {
			g = &f
		}
	}
}

// goroutines counts goroutines running the server's code (a
// connection's read or write loop, a stream's handler); idle workers
// hold no stream and are not counted.
func goroutines() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var which []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "h2server.(*Conn)") || strings.Contains(g, "h2server.(*Stream)") {
			n++
			which = append(which, g)
		}
	}
	return n, strings.Join(which, "\n\n")
}

// noGoroutinesLeft waits (d at most) until no goroutine runs the
// server's code: after close, every connection and stream has ended
// (a worker may still be returning from the stream it ran when Serve
// returns, a stopped timer's function may be running).
func noGoroutinesLeft(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		n, stacks := goroutines()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server goroutines left %v after Serve returned:\n%s", n, d, stacks)
		}
		time.Sleep(time.Duration(min(i+1, 20)) * time.Millisecond)
	}
}
