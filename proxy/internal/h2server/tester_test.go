package h2server

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"golang.org/x/net/http2"
)

// serverTester drives a Conn frame by frame over net.Pipe, the way
// x/net's serverTester drives net/http's HTTP/2 server: the client's
// end is a testkit.H2Client (frames written with x/net/http2's Framer,
// the server's read back into a channel). Nothing else runs: no TLS,
// no listener, no proxy.
//
//	st := newServerTester(t, echo)
//	st.Greet()
//	st.Must(st.WriteHeaders(1, true, true, st.getRequest("/")))
//	status, body, _ := st.Response(1)
type serverTester struct {
	*testkit.H2Client
	t      testing.TB
	cc     net.Conn // the client's end of the pipe
	sc     *Conn
	served chan struct{} // closed when Serve has returned
	closed bool
}

// frame is a frame read from the server.
type frame = testkit.H2Frame

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
	st := &serverTester{t: t, cc: cc, served: make(chan struct{})}
	st.sc = NewConn(sc, cfg, h)
	go func() {
		defer close(st.served)
		st.sc.Serve()
	}()
	st.H2Client = testkit.NewH2Client(t, cc)
	t.Cleanup(st.close)
	return st
}

// close closes the client's end and waits (bounded) for the reader,
// the test's writers and Serve: when it returns, no goroutine of the
// connection is left.
func (st *serverTester) close() {
	if st.closed {
		return
	}
	st.closed = true
	start := time.Now() // one bound for all three
	st.H2Client.Close()
	if !st.waitServed(st.Bound - time.Since(start)) {
		st.t.Errorf("serverTester: Serve did not return within %v of close", st.Bound)
	}
}

// waitServed reports whether Serve returned within d.
func (st *serverTester) waitServed(d time.Duration) bool {
	select {
	case <-st.served:
		return true
	case <-time.After(d):
		return false
	}
}

// getRequest is the header block of a GET for path, extra fields after.
func (st *serverTester) getRequest(path string, extra ...string) []byte {
	return st.Request("GET", "web.test", path, extra...)
}

// postRequest is the header block of a POST for path, extra fields after.
func (st *serverTester) postRequest(path string, extra ...string) []byte {
	return st.Request("POST", "web.test", path, extra...)
}

var errNoFrame = testkit.ErrNoFrame

func closedCleanly(err error) bool { return testkit.ClosedCleanly(err) }

// noGoroutinesLeft waits (d at most) until no goroutine runs the
// server's code (a connection's read or write loop, a stream's
// handler; idle workers hold no stream and are not counted): after
// close, every connection and stream has ended.
func noGoroutinesLeft(t testing.TB, d time.Duration) {
	t.Helper()
	testkit.NoGoroutinesLeft(t, d, "h2server.(*Conn)", "h2server.(*Stream)")
}
