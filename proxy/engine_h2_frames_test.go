package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"golang.org/x/net/http2"
)

// The HTTP/2 server itself is tested frame by frame in
// proxy/internal/h2server; here testkit.H2Client drives it through a
// real gatehouse Server: a TLS connection over loopback (ALPN h2), the
// route, the policy and the upstream.

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

// dialH2 dials w with ALPN h2, sends the client preface and returns a
// frame driver on the connection.
func dialH2(t testing.TB, w *h1World) *testkit.H2Client {
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
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return testkit.NewH2Client(t, c)
}

// Frames through the proxy: a GET answered with the upstream's echo of
// its path, two streams interleaved each get their own response, and
// the server's goroutines are gone after the connection closes.
func TestH2FramesThroughProxy(t *testing.T) {
	w := startH1World(t, pathEchoUpstream(t).URL)
	st := dialH2(t, w)
	st.Greet()
	st.Must(st.WriteHeaders(1, true, true, st.Request("GET", "web.test", "/one")))
	st.Must(st.WriteHeaders(3, true, true, st.Request("GET", "web.test", "/three?x")))
	bodies := map[uint32]string{}
	status := map[uint32]string{}
	ended := 0
	for ended < 2 {
		f := st.WantFrame(10 * time.Second)
		switch f.Type {
		case http2.FrameHeaders:
			status[f.StreamID] = f.Field(":status")
		case http2.FrameData:
			bodies[f.StreamID] += string(f.Data)
		case http2.FrameRSTStream:
			t.Fatalf("stream %d reset: %v", f.StreamID, f.Code)
		}
		if f.EndStream() {
			ended++
		}
	}
	if status[1] != "200" || bodies[1] != "path=/one" || status[3] != "200" || bodies[3] != "path=/three?x" {
		t.Fatalf("status %v bodies %v", status, bodies)
	}
	st.Close()
	testkit.NoGoroutinesLeft(t, 10*time.Second, "h2server.(*Conn)", "h2server.(*Stream)", "proxy.(*Server).serveH2")
}
