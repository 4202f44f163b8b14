package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Bad input on the TLS listener and from upstreams: each gets a
// bounded, clear failure, and a good client is served all along.
func TestBadInput(t *testing.T) {
	m := newManualEnv(t)
	good := upstream(t, "good")
	resetter := resetUpstream(t)
	const handshake, readHeader = 2 * time.Second, time.Second
	m.write(fmt.Sprintf("handshake = %q\nread_header = %q\n", handshake, readHeader),
		m.route("web.test", good.URL, "")+m.route("reset.test", resetter.URL, ""))
	m.run()

	// a good client all along, on new connections and on a kept-alive one
	stop := make(chan struct{})
	var goodOK, goodFail atomic.Int64
	var wg sync.WaitGroup
	for _, keepAlive := range []bool{false, true} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(m.httpsAddr(), m.roots, false)
			c.Transport.(*http.Transport).DisableKeepAlives = !keepAlive
			for i := 0; i < 10000; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				res, err := c.Get("https://web.test/")
				if err == nil {
					b, _ := io.ReadAll(res.Body)
					res.Body.Close()
					if res.StatusCode != 200 || !strings.HasPrefix(string(b), "upstream=good") {
						err = fmt.Errorf("%d %q", res.StatusCode, b)
					}
				}
				if err != nil {
					goodFail.Add(1)
					t.Errorf("good request failed during bad input: %v", err)
					continue
				}
				goodOK.Add(1)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		t.Logf("good requests alongside the bad input: %d ok, %d failed", goodOK.Load(), goodFail.Load())
		if goodOK.Load() < 10 {
			t.Errorf("only %d good requests were made", goodOK.Load())
		}
	}()

	hello := testkit.ClientHello(t, "web.test")

	t.Run("garbage instead of a ClientHello is closed at once", func(t *testing.T) {
		took, _, err := exchange(t, m.httpsAddr(), []byte("\x00\x01\x02garbage that is not TLS\r\n\r\n"), false)
		if took > handshake/2 {
			t.Errorf("closed after %v, want at once (handshake timeout %v)", took, handshake)
		}
		if err != nil && !isReset(err) {
			t.Errorf("read: %v", err)
		}
	})

	t.Run("plain HTTP to the TLS port is told so", func(t *testing.T) {
		took, got, _ := exchange(t, m.httpsAddr(), []byte("GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"), false)
		if !strings.HasPrefix(got, "HTTP/1.0 400 Bad Request") || !strings.Contains(got, "HTTP request to an HTTPS server") {
			t.Errorf("got %q, want a 400 saying HTTPS is expected", got)
		}
		if took > handshake/2 {
			t.Errorf("answered after %v", took)
		}
	})

	t.Run("truncated ClientHello then EOF is closed at once", func(t *testing.T) {
		took, _, _ := exchange(t, m.httpsAddr(), hello[:len(hello)/2], true)
		if took > handshake/2 {
			t.Errorf("closed after %v, want at once", took)
		}
	})

	t.Run("truncated ClientHello then silence is closed at the handshake timeout", func(t *testing.T) {
		took, _, _ := exchange(t, m.httpsAddr(), hello[:len(hello)/2], false)
		if took < handshake-200*time.Millisecond || took > handshake+2*time.Second {
			t.Errorf("closed after %v, want about the handshake timeout %v", took, handshake)
		}
	})

	t.Run("a client that sends nothing is closed at the handshake timeout", func(t *testing.T) {
		took, _, _ := exchange(t, m.httpsAddr(), nil, false)
		if took < handshake-200*time.Millisecond || took > handshake+2*time.Second {
			t.Errorf("closed after %v, want about the handshake timeout %v", took, handshake)
		}
	})

	t.Run("a ClientHello dribbled slower than the timeout is closed at the timeout", func(t *testing.T) {
		c, err := net.Dial("tcp", m.httpsAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		began := time.Now()
		closed := make(chan time.Duration, 1)
		go func() { _, _ = io.Copy(io.Discard, c); closed <- time.Since(began) }()
		for i := 0; i < len(hello); i++ { // one byte every 50 ms: 75 s for the whole hello
			if _, err := c.Write(hello[i : i+1]); err != nil {
				break
			}
			select {
			case took := <-closed:
				if took < handshake-200*time.Millisecond || took > handshake+2*time.Second {
					t.Errorf("closed after %v, want about %v", took, handshake)
				}
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Error("the dribbling client was never closed")
	})

	t.Run("a ClientHello larger than 64 KiB is refused without waiting", func(t *testing.T) {
		// a hello announcing a 64 KiB message, in full-size records:
		// 65,565 bytes with headers, past the 64 KiB peek bound
		var big []byte
		body := append([]byte{1, 1, 0, 0}, make([]byte, 65536)...)
		for len(body) > 0 {
			k := min(16384, len(body))
			big = append(big, 22, 3, 1, byte(k>>8), byte(k))
			big = append(big, body[:k]...)
			body = body[k:]
		}
		took, _, _ := exchange(t, m.httpsAddr(), big, false)
		if took > handshake/2 {
			t.Errorf("closed after %v, want at once", took)
		}
		m.logs.waitLog(t, 2*time.Second, "no valid ClientHello", "larger than 64 KiB")
	})

	t.Run("slowloris HTTP headers are cut at read_header", func(t *testing.T) {
		c, err := testkit.DialTLS(m.httpsAddr(), "web.test", m.roots, "http/1.1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		began := time.Now()
		closed := make(chan time.Duration, 1)
		go func() { _, _ = io.Copy(io.Discard, c); closed <- time.Since(began) }()
		req := "GET / HTTP/1.1\r\nHost: web.test\r\nX-Slow: " + strings.Repeat("a", 200) + "\r\n\r\n"
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				break
			}
			select {
			case took := <-closed:
				if took < readHeader-200*time.Millisecond || took > readHeader+2*time.Second {
					t.Errorf("closed after %v, want about read_header %v", took, readHeader)
				}
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Error("the slowloris client got its headers through")
	})

	t.Run("upstream reset mid-response: truncated for the client, logged, nothing else touched", func(t *testing.T) {
		for _, h2 := range []bool{false, true} {
			c := client(m.httpsAddr(), m.roots, h2)
			// the client sees an error: before the headers (HTTP/1.1:
			// they were still buffered) or as a truncated body
			res, err := c.Get("https://reset.test/")
			if err == nil {
				var b []byte
				b, err = io.ReadAll(res.Body)
				res.Body.Close()
				if err == nil {
					t.Errorf("h2=%v: read the whole body (%d bytes) of a response the upstream reset", h2, len(b))
				} else if len(b) >= resetBodyLen {
					t.Errorf("h2=%v: got %d bytes, want fewer than %d", h2, len(b), resetBodyLen)
				}
			}
			t.Logf("h2=%v: client saw: %v", h2, err)
			if h2 {
				// the same HTTP/2 connection still serves other requests
				res, err := c.Get("https://reset.test/ok")
				if err != nil {
					t.Fatalf("request after the reset stream: %v", err)
				}
				if body := readAll(t, res); body != "fine" {
					t.Errorf("request after the reset stream got %q", body)
				}
			}
		}
		m.logs.waitLog(t, 2*time.Second, "level=WARN", "route=reset.test", "read error during body copy")
	})
}

const resetBodyLen = 100000

// resetUpstream promises a 100 kB body, sends 1 kB, then resets the
// connection; /ok answers normally.
func resetUpstream(t testing.TB) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			io.WriteString(w, "fine")
			return
		}
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", resetBodyLen, strings.Repeat("x", 1000))
		buf.Flush()
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // close sends RST
		c.Close()
	}))
	t.Cleanup(s.Close)
	return s
}

// exchange connects, sends data (then half-closes when eof), and reads
// until gatehouse closes; it returns how long that took and what came back.
func exchange(t *testing.T, addr string, data []byte, eof bool) (time.Duration, string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	began := time.Now()
	if len(data) > 0 {
		go c.Write(data) // may not all be read: gatehouse stops early
	}
	if eof {
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(bufio.NewReader(c))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("gatehouse did not close the connection within 15 s")
	}
	return time.Since(began), string(got), err
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }
