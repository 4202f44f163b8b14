package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Tester drives gatehouse's own HTTP/2 server frame by frame, the way
// x/net's serverTester drives net/http's: a real TLS connection over
// loopback (ALPN h2) to a real gatehouse Server, frames written with
// x/net/http2's Framer, and the server's frames read back by a reader
// goroutine into a channel (copied: a Framer reuses its read buffer).
//
//	st := newH2Tester(t, startH2World(t))
//	st.greet()
//	st.writeHeaders(1, true, true, st.encode(":method", "GET", ...))
//	f := st.wantFrame(time.Second)
type h2Tester struct {
	t    testing.TB
	conn *tls.Conn
	fr   *http2.Framer // writes only; the reader has its own
	enc  *hpack.Encoder
	hbuf bytes.Buffer

	frames chan h2Frame  // the server's frames, in order
	rerr   chan error    // the reader's final error (io.EOF: the server closed)
	done   chan struct{} // closed when the reader has stopped
	closed bool
}

// h2Frame is a frame read from the server, with what the tests look
// at copied out of the Framer's buffers.
type h2Frame struct {
	http2.FrameHeader
	Fields   []hpack.HeaderField // HEADERS (CONTINUATIONs merged)
	Data     []byte              // DATA payload
	Code     http2.ErrCode       // RST_STREAM, GOAWAY
	LastID   uint32              // GOAWAY
	Ping     [8]byte             // PING
	Settings []http2.Setting     // SETTINGS
	Incr     uint32              // WINDOW_UPDATE
}

func (f h2Frame) endStream() bool {
	return (f.Type == http2.FrameHeaders || f.Type == http2.FrameData) && f.Flags.Has(http2.FlagDataEndStream)
}

func (f h2Frame) header(name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// pathEchoUpstream answers every request with 200 and "path=" and the
// request-target it received, so a test can tell whose response a
// stream got. It does not read the request body.
func pathEchoUpstream(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "path="+r.RequestURI)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startH2World serves web.test over gatehouse's own HTTP/2 server (an
// http:// upstream makes the route eligible) in front of pathEchoUpstream.
func startH2World(t testing.TB) *h1World {
	t.Helper()
	return startH1World(t, pathEchoUpstream(t).URL)
}

// newH2Tester dials w with ALPN h2 and sends the client preface.
func newH2Tester(t testing.TB, w *h1World) *h2Tester {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", w.addr,
		&tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		c.Close()
		t.Fatalf("negotiated %q, want h2", p)
	}
	st := &h2Tester{t: t, conn: c, frames: make(chan h2Frame, 1024), rerr: make(chan error, 1), done: make(chan struct{})}
	st.fr = http2.NewFramer(c, nil)
	st.fr.AllowIllegalWrites = true // the tests write what a broken client would
	st.enc = hpack.NewEncoder(&st.hbuf)
	st.enc.SetMaxDynamicTableSizeLimit(4096)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		t.Fatal(err)
	}
	rfr := http2.NewFramer(nil, c)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rfr.MaxHeaderListSize = 1 << 20
	rfr.SetMaxReadFrameSize(1<<24 - 1) // a test may advertise more than 16 KiB
	go st.readLoop(rfr)
	t.Cleanup(st.close)
	return st
}

func (st *h2Tester) readLoop(fr *http2.Framer) {
	defer close(st.done)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			st.rerr <- err
			return
		}
		out := h2Frame{FrameHeader: f.Header()}
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
		select {
		case st.frames <- out:
		case <-time.After(10 * time.Second):
			st.rerr <- errors.New("h2Tester: nobody reads the server's frames")
			return
		}
	}
}

// close closes the connection and waits (bounded) for the reader.
func (st *h2Tester) close() {
	if st.closed {
		return
	}
	st.closed = true
	st.conn.Close()
	select {
	case <-st.done:
	case <-time.After(5 * time.Second):
		st.t.Error("h2Tester: reader did not stop within 5s of close")
	}
}

// encode HPACK-encodes name/value pairs into a header block (the
// encoder's dynamic table carries over, as on a real connection).
func (st *h2Tester) encode(kv ...string) []byte {
	st.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = st.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), st.hbuf.Bytes()...)
}

// getRequest is the header block of a GET for path on web.test.
func (st *h2Tester) getRequest(path string) []byte {
	return st.encode(":method", "GET", ":scheme", "https", ":authority", "web.test", ":path", path)
}

// Writers: each fails the test on a write error unless the server has
// already closed (then the error is returned for the caller to judge).

func (st *h2Tester) writeSettings(s ...http2.Setting) error { return st.fr.WriteSettings(s...) }
func (st *h2Tester) writeSettingsAck() error                { return st.fr.WriteSettingsAck() }
func (st *h2Tester) writeHeaders(id uint32, endStream, endHeaders bool, block []byte) error {
	return st.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: endHeaders})
}
func (st *h2Tester) writeContinuation(id uint32, endHeaders bool, block []byte) error {
	return st.fr.WriteContinuation(id, endHeaders, block)
}
func (st *h2Tester) writeData(id uint32, endStream bool, p []byte) error {
	return st.fr.WriteData(id, endStream, p)
}
func (st *h2Tester) writeWindowUpdate(id, incr uint32) error {
	return st.fr.WriteWindowUpdate(id, incr)
}
func (st *h2Tester) writeRST(id uint32, code http2.ErrCode) error {
	return st.fr.WriteRSTStream(id, code)
}
func (st *h2Tester) writePing(ack bool, data [8]byte) error { return st.fr.WritePing(ack, data) }
func (st *h2Tester) writeRaw(t http2.FrameType, flags http2.Flags, id uint32, p []byte) error {
	return st.fr.WriteRawFrame(t, flags, id, p)
}

var errNoFrame = errors.New("no frame from the server")

// readFrame returns the server's next frame, or an error: io.EOF (or
// another read error) when the server closed, or errNoFrame after d.
func (st *h2Tester) readFrame(d time.Duration) (h2Frame, error) {
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
			return h2Frame{}, err
		default:
			return h2Frame{}, io.EOF
		}
	case <-t.C:
		return h2Frame{}, fmt.Errorf("%w within %v", errNoFrame, d)
	}
}

// closedCleanly reports whether err (from readFrame) is the server
// closing the connection, not a frame the client could not parse.
func closedCleanly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// wantFrame is readFrame that fails the test on an error.
func (st *h2Tester) wantFrame(d time.Duration) h2Frame {
	st.t.Helper()
	f, err := st.readFrame(d)
	if err != nil {
		st.t.Fatal(err)
	}
	return f
}

// greet does the SETTINGS exchange: the client's settings, then the
// server's SETTINGS (acked), up to the server's ack of the client's.
func (st *h2Tester) greet(s ...http2.Setting) {
	st.t.Helper()
	if err := st.writeSettings(s...); err != nil {
		st.t.Fatal(err)
	}
	gotSettings, gotAck := false, false
	for !gotSettings || !gotAck {
		f := st.wantFrame(5 * time.Second)
		switch {
		case f.Type == http2.FrameSettings && f.Flags.Has(http2.FlagSettingsAck):
			gotAck = true
		case f.Type == http2.FrameSettings:
			gotSettings = true
			if err := st.writeSettingsAck(); err != nil {
				st.t.Fatal(err)
			}
		case f.Type == http2.FrameWindowUpdate:
		default:
			st.t.Fatalf("before the SETTINGS ack: %v", f.FrameHeader)
		}
	}
}

// h2Goroutines counts goroutines running gatehouse's HTTP/2 server code
// (a connection's read or write loop, a stream's handler); idle workers
// in the pool hold no stream and are not counted.
func h2Goroutines() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var which []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "h2server.(*Conn)") || strings.Contains(g, "h2server.(*Stream)") || strings.Contains(g, "proxy.(*Server).serveH2") {
			n++
			which = append(which, g)
		}
	}
	return n, strings.Join(which, "\n\n")
}

// waitNoH2Goroutines waits (at most d) until no goroutine runs HTTP/2
// server code: every connection and stream has ended.
func waitNoH2Goroutines(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		n, stacks := h2Goroutines()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d HTTP/2 server goroutines left %v after the connection closed:\n%s", n, d, stacks)
		}
		time.Sleep(time.Duration(min(i+1, 20)) * 5 * time.Millisecond)
	}
}

// The tester itself: a GET answered with the upstream's echo of its
// path, two streams interleaved each get their own response, and the
// server's goroutines are gone after the connection closes.
func TestH2TesterRoundTrip(t *testing.T) {
	w := startH2World(t)
	st := newH2Tester(t, w)
	st.greet()
	if err := st.writeHeaders(1, true, true, st.getRequest("/one")); err != nil {
		t.Fatal(err)
	}
	if err := st.writeHeaders(3, true, true, st.getRequest("/three?x")); err != nil {
		t.Fatal(err)
	}
	bodies := map[uint32]string{}
	status := map[uint32]string{}
	ended := 0
	for ended < 2 {
		f := st.wantFrame(10 * time.Second)
		switch f.Type {
		case http2.FrameHeaders:
			status[f.StreamID] = f.header(":status")
		case http2.FrameData:
			bodies[f.StreamID] += string(f.Data)
		case http2.FrameRSTStream:
			t.Fatalf("stream %d reset: %v", f.StreamID, f.Code)
		}
		if f.endStream() {
			ended++
		}
	}
	if status[1] != "200" || bodies[1] != "path=/one" || status[3] != "200" || bodies[3] != "path=/three?x" {
		t.Fatalf("status %v bodies %v", status, bodies)
	}
	st.close()
	waitNoH2Goroutines(t, 10*time.Second)
}
