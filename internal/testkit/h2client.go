package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// H2Client drives an HTTP/2 server frame by frame from the client's
// end of a connection, the way x/net's serverTester drives net/http's
// server: frames written with x/net/http2's Framer (illegal ones too),
// the server's frames read back by a reader goroutine into a channel
// (copied: a Framer reuses its read buffer). h2server's tests use it
// over net.Pipe, proxy's over a TLS connection to a real Server.
//
//	c := testkit.NewH2Client(t, conn) // after the client preface
//	c.Greet()
//	c.Must(c.WriteHeaders(1, true, true, c.Request("GET", "web.test", "/")))
//	status, body, _ := c.Response(1)
type H2Client struct {
	T    testing.TB
	Conn net.Conn
	Fr   *http2.Framer // writes only; the reader has its own
	// Bound is how long Close waits for the reader and the writers
	// (10 s; a fuzz target sets less, inside the fuzzing engine's 10 s
	// per input)
	Bound time.Duration

	enc     *hpack.Encoder
	hbuf    bytes.Buffer
	frames  chan H2Frame  // the server's frames, in order
	rerr    chan error    // the reader's final error (io.EOF: the server closed)
	done    chan struct{} // closed when the reader has stopped
	quit    chan struct{} // closed by Close: the reader stops
	writers sync.WaitGroup
	closed  bool
	// held: frames of other streams that Response read past, returned
	// by ReadFrame before the server's next ones
	held []H2Frame
}

// H2Frame is a frame read from the server, with what the tests look at
// copied out of the Framer's buffers.
type H2Frame struct {
	http2.FrameHeader
	Fields   []hpack.HeaderField // HEADERS (CONTINUATIONs merged)
	Data     []byte              // DATA payload
	Code     http2.ErrCode       // RST_STREAM, GOAWAY
	LastID   uint32              // GOAWAY
	Ping     [8]byte             // PING
	Settings []http2.Setting     // SETTINGS
	Incr     uint32              // WINDOW_UPDATE
}

// EndStream reports END_STREAM on a HEADERS or DATA frame.
func (f H2Frame) EndStream() bool {
	return (f.Type == http2.FrameHeaders || f.Type == http2.FrameData) && f.Flags.Has(http2.FlagDataEndStream)
}

// Field is the value of a HEADERS frame's field name ("" if absent).
func (f H2Frame) Field(name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// NewH2Client starts reading the server's frames from conn, on which
// the client preface has been (or will be) written; Close (also a
// cleanup of t) ends it.
func NewH2Client(t testing.TB, conn net.Conn) *H2Client {
	c := &H2Client{T: t, Conn: conn, Bound: 10 * time.Second, frames: make(chan H2Frame, 4096),
		rerr: make(chan error, 1), done: make(chan struct{}), quit: make(chan struct{})}
	c.Fr = http2.NewFramer(conn, nil)
	c.Fr.AllowIllegalWrites = true // the tests write what a broken client would
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.enc.SetMaxDynamicTableSizeLimit(4096)
	rfr := http2.NewFramer(nil, conn)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rfr.MaxHeaderListSize = 1 << 20
	rfr.SetMaxReadFrameSize(1<<24 - 1) // a test may advertise more than 16 KiB
	go c.readLoop(rfr)
	t.Cleanup(c.Close)
	return c
}

func (c *H2Client) readLoop(fr *http2.Framer) {
	defer close(c.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			c.rerr <- err
			return
		}
		out := H2Frame{FrameHeader: f.Header()}
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
		case c.frames <- out:
		case <-c.quit:
			c.rerr <- io.ErrClosedPipe
			return
		case <-t.C:
			c.rerr <- errors.New("H2Client: nobody reads the server's frames")
			return
		}
	}
}

// GoWrite runs a writer (a flood) beside the test's reads; Close waits
// for it: it must stop when a write fails.
func (c *H2Client) GoWrite(f func()) {
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		f()
	}()
}

// Close closes the client's end and waits (Bound at most) for the
// reader and the writers.
func (c *H2Client) Close() {
	if c.closed {
		return
	}
	c.closed = true
	close(c.quit)
	c.Conn.Close()
	t := time.NewTimer(c.Bound)
	defer t.Stop()
	for _, w := range []struct {
		what string
		ch   <-chan struct{}
	}{{"the reader", c.done}, {"the writers", waitChan(&c.writers)}} {
		select {
		case <-w.ch:
		case <-t.C:
			c.T.Errorf("H2Client: %s did not stop within %v of close", w.what, c.Bound)
			return
		}
	}
}

func waitChan(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}

// Encode HPACK-encodes name/value pairs into a header block (the
// encoder's dynamic table carries over, as on a real connection).
func (c *H2Client) Encode(kv ...string) []byte {
	c.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), c.hbuf.Bytes()...)
}

// Request is the header block of an https request, extra fields after
// the pseudo-fields.
func (c *H2Client) Request(method, authority, path string, extra ...string) []byte {
	return c.Encode(append([]string{":method", method, ":scheme", "https", ":authority", authority, ":path", path}, extra...)...)
}

func (c *H2Client) WriteSettings(s ...http2.Setting) error { return c.Fr.WriteSettings(s...) }
func (c *H2Client) WriteSettingsAck() error                { return c.Fr.WriteSettingsAck() }
func (c *H2Client) WriteHeaders(id uint32, endStream, endHeaders bool, block []byte) error {
	return c.Fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: endHeaders})
}
func (c *H2Client) WriteContinuation(id uint32, endHeaders bool, block []byte) error {
	return c.Fr.WriteContinuation(id, endHeaders, block)
}
func (c *H2Client) WriteData(id uint32, endStream bool, p []byte) error {
	return c.Fr.WriteData(id, endStream, p)
}
func (c *H2Client) WriteWindowUpdate(id, incr uint32) error { return c.Fr.WriteWindowUpdate(id, incr) }
func (c *H2Client) WriteRST(id uint32, code http2.ErrCode) error {
	return c.Fr.WriteRSTStream(id, code)
}
func (c *H2Client) WritePing(ack bool, data [8]byte) error { return c.Fr.WritePing(ack, data) }
func (c *H2Client) WriteRaw(t http2.FrameType, flags http2.Flags, id uint32, p []byte) error {
	return c.Fr.WriteRawFrame(t, flags, id, p)
}

// Must fails the test on a write error.
func (c *H2Client) Must(err error) {
	c.T.Helper()
	if err != nil {
		c.T.Fatal(err)
	}
}

// ErrNoFrame: the server sent no frame within the wait.
var ErrNoFrame = errors.New("no frame from the server")

// ReadFrame returns the server's next frame, or an error: io.EOF (or
// another read error) when the server closed, or ErrNoFrame after d.
func (c *H2Client) ReadFrame(d time.Duration) (H2Frame, error) {
	if len(c.held) > 0 {
		f := c.held[0]
		c.held = c.held[1:]
		return f, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-c.frames:
		return f, nil
	case <-c.done:
		// frames read before the error come first
		select {
		case f := <-c.frames:
			return f, nil
		default:
		}
		select {
		case err := <-c.rerr:
			c.rerr <- err // stays readable
			return H2Frame{}, err
		default:
			return H2Frame{}, io.EOF
		}
	case <-t.C:
		return H2Frame{}, fmt.Errorf("%w within %v", ErrNoFrame, d)
	}
}

// ClosedCleanly reports whether err (from ReadFrame) is the server
// closing the connection, not a frame the client could not parse.
func ClosedCleanly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// WantFrame is ReadFrame that fails the test on an error.
func (c *H2Client) WantFrame(d time.Duration) H2Frame {
	c.T.Helper()
	f, err := c.ReadFrame(d)
	if err != nil {
		c.T.Fatal(err)
	}
	return f
}

// Until reads frames until want returns true (10 s at most) and
// returns that frame; a GOAWAY or the connection's end fails the test
// unless want took it. The server's SETTINGS are acknowledged.
func (c *H2Client) Until(want func(f H2Frame) bool) H2Frame {
	c.T.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			c.T.Fatalf("waiting for a frame: %v", err)
		}
		if want(f) {
			return f
		}
		if f.Type == http2.FrameGoAway {
			c.T.Fatalf("GOAWAY %v (last stream %d)", f.Code, f.LastID)
		}
		if f.Type == http2.FrameSettings && !f.Flags.Has(http2.FlagSettingsAck) {
			c.Must(c.WriteSettingsAck())
		}
	}
}

// Greet does the SETTINGS exchange: the client's settings, then the
// server's SETTINGS (acked), up to the server's ack of the client's.
func (c *H2Client) Greet(s ...http2.Setting) {
	c.T.Helper()
	c.Must(c.WriteSettings(s...))
	gotSettings, gotAck := false, false
	for !gotSettings || !gotAck {
		f := c.WantFrame(5 * time.Second)
		switch {
		case f.Type == http2.FrameSettings && f.Flags.Has(http2.FlagSettingsAck):
			gotAck = true
		case f.Type == http2.FrameSettings:
			gotSettings = true
			c.Must(c.WriteSettingsAck())
		case f.Type == http2.FrameWindowUpdate:
		default:
			c.T.Fatalf("before the SETTINGS ack: %v", f.FrameHeader)
		}
	}
}

// Response reads until stream id ended: its final :status, its body,
// and the RST_STREAM code if it was reset (status "RST"). Frames of
// other streams read on the way are held for the next reads (the
// server may interleave its responses).
func (c *H2Client) Response(id uint32) (status, body string, code http2.ErrCode) {
	c.T.Helper()
	var b strings.Builder
	var others []H2Frame
	defer func() { c.held = append(others, c.held...) }()
	c.Until(func(f H2Frame) bool {
		if f.StreamID != id {
			if f.StreamID != 0 {
				others = append(others, f)
			}
			return false
		}
		switch f.Type {
		case http2.FrameHeaders:
			if s := f.Field(":status"); s != "" && s[0] != '1' {
				status = s
			}
		case http2.FrameData:
			b.WriteString(string(f.Data))
		case http2.FrameRSTStream:
			status, code = "RST", f.Code
			return true
		}
		return f.EndStream()
	})
	return status, b.String(), code
}

// WantGoAway reads until GOAWAY, then until the server closes; it
// returns the GOAWAY's code and last stream.
func (c *H2Client) WantGoAway() (http2.ErrCode, uint32) {
	c.T.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var g *H2Frame
	for {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			if g == nil || !ClosedCleanly(err) {
				c.T.Fatalf("GOAWAY %v, then: %v", g != nil, err)
			}
			return g.Code, g.LastID
		}
		if f.Type == http2.FrameGoAway && g == nil {
			g = &f
		}
	}
}

// Goroutines counts the goroutines whose stack mentions any of marks
// (e.g. "h2server.(*Conn)"), with their stacks.
func Goroutines(marks ...string) (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var which []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range marks {
			if strings.Contains(g, m) {
				n++
				which = append(which, g)
				break
			}
		}
	}
	return n, strings.Join(which, "\n\n")
}

// NoGoroutinesLeft waits (d at most) until no goroutine's stack
// mentions any of marks, and fails the test with their stacks if some
// are left.
func NoGoroutinesLeft(t testing.TB, d time.Duration, marks ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		n, stacks := Goroutines(marks...)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines (%s) left after %v:\n%s", n, strings.Join(marks, ", "), d, stacks)
		}
		time.Sleep(time.Duration(min(i+1, 20)) * time.Millisecond)
	}
}
