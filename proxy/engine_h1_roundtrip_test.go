package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// HTTP/1.1 clients on routes whose upstreams the own client does not
// speak to (h2c://, https://): gatehouse's HTTP/1.1 server exchanges
// their requests through the route's RoundTrip (engine_h1_roundtrip.go), with the same
// bounds, access log and routing after a reload as the native path.

// h2cUpstream is an h2c:// upstream (net/http's server, cleartext
// HTTP/2) whose handlers report how each exchange ended.
type h2cUpstream struct {
	srv   *httptest.Server
	ended chan string
}

func startH2CUpstream(t *testing.T) *h2cUpstream {
	u := &h2cUpstream{ended: make(chan string, 100)}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			_, err := io.Copy(io.Discard, r.Body)
			u.ended <- fmt.Sprint("body: ", err)
		case "/huge":
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			var err error
			for i := 0; i < 1<<14 && err == nil; i++ {
				_, err = w.Write(chunk)
			}
			u.ended <- fmt.Sprint("huge: ", err)
		default:
			fmt.Fprintf(w, "h2c HTTP/%d %s", r.ProtoMajor, r.URL.Path)
		}
	}))
	u.srv.Config.Protocols = new(http.Protocols)
	u.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *h2cUpstream) url() string { return "h2c://" + u.srv.Listener.Addr().String() }

// next returns how the next exchange ended for the upstream, within 20 s.
func (u *h2cUpstream) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-u.ended:
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("no upstream exchange ended within 20s")
		return ""
	}
}

// setUpstream reloads w with web.test forwarding to upstream.
func setUpstream(t *testing.T, w *h1World, upstream string) {
	t.Helper()
	cfg := &routes.Config{Routes: []routes.Route{{Hosts: []string{"web.test"}, Upstream: upstream}}}
	cfg.Timeouts.ReadHeader = routes.Duration(2 * time.Second)
	cfg.ApplyDefaults()
	if err := w.s.SetTable(routes.NewTable(cfg)); err != nil {
		t.Fatal(err)
	}
}

// A reload that moves a name from an http:// upstream to an h2c:// one
// (an app moved behind a gRPC-capable server) takes effect for the next
// request of a kept-alive HTTP/1.1 connection, on that connection: the
// old upstream may be gone already. Before gatehouse's HTTP/1.1 server
// served h2c:// routes itself, such a request was still sent to the old
// upstream (a 502 once it had stopped) and the connection closed. And
// back to an http:// upstream, on the same connection again.
func TestH1ReloadToH2CUpstream(t *testing.T) {
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "old")
	}))
	t.Cleanup(old.Close)
	h2c := startH2CUpstream(t)
	back := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "back")
	}))
	t.Cleanup(back.Close)

	lb := &testkit.SyncBuffer{}
	w := startH1WorldLog(t, nil, lb, old.URL)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(lb.String())
		}
	})
	c, br := w.dial()
	const get = "GET /who HTTP/1.1\r\nHost: web.test\r\n\r\n"
	if res, body := roundTrip(t, c, br, get, false); res.StatusCode != 200 || body != "old" {
		t.Fatalf("before the reload: %d %q", res.StatusCode, body)
	}

	setUpstream(t, w, h2c.url())
	old.Close() // the old upstream is gone
	res, body := roundTrip(t, c, br, get, false)
	if res.StatusCode != 200 || body != "h2c HTTP/2 /who" {
		t.Fatalf("after the reload to h2c://: %d %q, want the new upstream's answer", res.StatusCode, body)
	}
	if res.Close {
		t.Error("the connection closes after the reload: want it kept alive on the new route")
	}

	setUpstream(t, w, back.URL)
	if res, body := roundTrip(t, c, br, get, false); res.StatusCode != 200 || body != "back" {
		t.Fatalf("after the reload back to http://: %d %q", res.StatusCode, body)
	}
}

// The no-progress bounds hold for an h2c:// route over HTTP/1.1, with
// one access-log record per request: a client that stalls in its body
// gets 408 and the upstream sees its request aborted; a client that
// stops reading is cut off after send and the upstream's stream ends;
// kept-alive requests are each logged once.
func TestH1H2CRouteBoundsAndLog(t *testing.T) {
	up := startH2CUpstream(t)
	lb := &testkit.SyncBuffer{}
	w := startH1WorldLog(t, tinyTimeouts, lb, up.url())

	t.Run("body stall", func(t *testing.T) {
		c, br := w.dial()
		if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("a", 1000)); err != nil {
			t.Fatal(err)
		}
		if got := up.next(t); got == "body: <nil>" {
			t.Errorf("upstream: %s, want its request body cut off", got)
		}
		res, body := readResp(t, br, false)
		if res.StatusCode != 408 || body != "408 Request Timeout: the request body stopped arriving\n" {
			t.Errorf("status %d %q, want 408", res.StatusCode, body)
		}
	})

	t.Run("client not reading", func(t *testing.T) {
		c, _ := w.dial()
		if _, err := io.WriteString(c, "GET /huge HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// the client reads nothing
		if got := up.next(t); got == "huge: <nil>" {
			t.Errorf("upstream: %s, want its response cut off", got)
		}
	})

	t.Run("one record per request", func(t *testing.T) {
		c, br := w.dial()
		for i := range 3 {
			// the second one has a body: the connection stays open after it
			req := fmt.Sprintf("GET /kept%d HTTP/1.1\r\nHost: web.test\r\n\r\n", i)
			if i == 1 {
				req = "POST /kept1 HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello"
			}
			res, body := roundTrip(t, c, br, req, false)
			if res.Close {
				t.Errorf("request %d: the connection closes after it", i)
			}
			if res.StatusCode != 200 || body != fmt.Sprintf("h2c HTTP/2 /kept%d", i) {
				t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
			}
		}
		want := map[string]string{
			"path=/kept0 ": "status=200", "path=/kept1 ": "status=200", "path=/kept2 ": "status=200",
			"path=/upload ": "status=408",
		}
		// the record is written once the response is out: wait for it
		// (bounded), then for a moment more, for a second one
		check := func() (bad []string) {
			for path, status := range want {
				var lines []string
				for _, l := range strings.Split(lb.String(), "\n") {
					if strings.Contains(l, "msg=access ") && strings.Contains(l, path) {
						lines = append(lines, l)
					}
				}
				if len(lines) != 1 || !strings.Contains(lines[0], status) || !strings.Contains(lines[0], "upstream="+up.url()) {
					bad = append(bad, fmt.Sprintf("access log for %q: %q, want one line with %s and the upstream", path, lines, status))
				}
			}
			return bad
		}
		for i := 0; i < 500 && len(check()) > 0; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		for _, b := range check() {
			t.Error(b)
		}
	})
}

// An h2c:// upstream that answers before it has read the whole request
// body (a 413) and ends the stream: the client gets that answer, as on
// the native path (TestUpstreamEarlyResponse), over HTTP/1.1 and HTTP/2,
// and can send again.
func TestRoundTripEarlyResponse(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	up.Config.Protocols = new(http.Protocols)
	up.Config.Protocols.SetUnencryptedHTTP2(true)
	up.Start()
	t.Cleanup(up.Close)
	w := startH1World(t, "h2c://"+up.Listener.Addr().String())
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	for _, h2 := range []bool{false, true} {
		t.Run(protoName(h2), func(t *testing.T) {
			c := w.client(h2)
			for i := range 3 {
				req, _ := http.NewRequest("POST", "https://web.test/upload", bytes.NewReader(body))
				res, err := c.Do(req)
				if err != nil {
					t.Fatalf("upload %d: %v", i, err)
				}
				got, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 413 || string(got) != "too large\n" {
					t.Fatalf("upload %d: %d %q, want the upstream's 413", i, res.StatusCode, got)
				}
			}
		})
	}
}

// An h2c:// upstream that answers a POST without reading its body: the
// answer reaches the client at once, and the rest of a small body that
// comes after it is read and dropped, so the connection carries the
// next request (as nginx discards an unread body); a body that stops
// coming closes the connection instead.
func TestH1H2CUnreadBodyKeepsConnection(t *testing.T) {
	up := startH2CUpstream(t)
	lb := &testkit.SyncBuffer{}
	w := startH1WorldLog(t, nil, lb, up.url())
	defer func() {
		if t.Failed() {
			t.Log(lb.String())
		}
	}()
	c, br := w.dial()
	for i := range 3 {
		if _, err := io.WriteString(c, "POST /unread HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\nhello"); err != nil {
			t.Fatal(err)
		}
		res, body := readResp(t, br, false)
		if res.StatusCode != 200 || body != "h2c HTTP/2 /unread" {
			t.Fatalf("round %d: %d %q", i, res.StatusCode, body)
		}
		if _, err := io.WriteString(c, "world"); err != nil { // the body's rest, after the answer
			t.Fatal(err)
		}
		res, body = roundTrip(t, c, br, "GET /next HTTP/1.1\r\nHost: web.test\r\n\r\n", false)
		if res.StatusCode != 200 || body != "h2c HTTP/2 /next" {
			t.Fatalf("round %d: the next request on the connection: %d %q", i, res.StatusCode, body)
		}
	}
	// the rest never comes: the connection ends after rtDrainWait
	if _, err := io.WriteString(c, "POST /unread HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\nhello"); err != nil {
		t.Fatal(err)
	}
	if res, _ := readResp(t, br, false); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	_ = c.SetReadDeadline(time.Now().Add(rtDrainWait + 5*time.Second))
	if n, err := br.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d more bytes; want the connection closed once the body stopped coming", n)
	}
}
