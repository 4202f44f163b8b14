//go:build linux

package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// An HTTP/2 or HTTP/3 request is written upstream inside the read of
// its answer (sendReader, engine_rawio_linux.go). A head larger than
// the socket takes at once (a 4 KiB receive buffer at the upstream,
// which reads nothing for a while) is finished through the poller: the
// upstream gets all of it, the client gets the answer, on fresh and on
// reused connections.
func TestUpstreamLargeHeadWrittenWhole(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("a", 60<<10)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				for {
					time.Sleep(100 * time.Millisecond) // the proxy's write fills the buffer meanwhile
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body := "short\n"
					if req.Header.Get("X-Big") == big {
						body = "whole\n"
					}
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"+body); err != nil {
						return
					}
				}
			}()
		}
	}()
	w := startH1World(t, "http://"+ln.Addr().String())
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			c := w.clientOf(proto)
			for i := range 3 {
				req, _ := http.NewRequest("GET", "https://web.test/big", nil)
				req.Header.Set("X-Big", big)
				res, err := c.Do(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				got, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || string(got) != "whole\n" {
					t.Fatalf("request %d: %d %q, want 200 \"whole\"", i, res.StatusCode, got)
				}
			}
		})
	}
}

// sendReader's write that the socket takes only in part (a small send
// buffer, a peer that reads later) is finished through the poller
// before the answer is read: the peer gets every byte, in order.
func TestSendReaderPartialWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	nc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	_ = peer.SetDeadline(time.Now().Add(10 * time.Second))
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte(strings.Repeat("0123456789abcdef", 64<<10)) // 1 MiB: more than the socket takes at once
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // the writer finds the socket full meanwhile
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(peer, b); err != nil {
			got <- nil
			return
		}
		got <- b
		_, _ = io.WriteString(peer, "answer")
	}()
	r := &sendReader{rawReader: rawReader{rawConnOf(nc)}}
	r.writeFirst(msg)
	p := make([]byte, 64)
	n, err := r.Read(p)
	if err != nil || string(p[:n]) != "answer" {
		t.Fatalf("Read: %q, %v; want the answer", p[:n], err)
	}
	if b := <-got; string(b) != string(msg) {
		t.Fatalf("the peer got %d bytes, not the %d written (or not in order)", len(b), len(msg))
	}
}

// An upstream that promises keep-alive and then closes the connection
// a moment after each answer — before the idle watch begins, while the
// next request is being sent, or after — never costs a client its
// request: a request on a reused connection that dies before any byte
// of an answer is sent again on a fresh one (the write that rides on
// the answer's read included: sendReader). Every client protocol, the
// close at several delays around the next request's start.
func TestUpstreamClosedJustBeforeReuse(t *testing.T) {
	for _, delay := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
		up := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			time.Sleep(delay)
		})
		w := startH1World(t, up.url())
		for _, proto := range []string{"h1", "h2", "h3"} {
			cl := w.clientOf(proto)
			for i := range 30 {
				res, err := cl.Get("https://web.test/")
				if err != nil {
					t.Fatalf("%s, close %v after each answer, request %d: %v", proto, delay, i, err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || string(b) != "ok" {
					t.Fatalf("%s, close %v after each answer, request %d: %d %q", proto, delay, i, res.StatusCode, b)
				}
				time.Sleep(time.Duration(i%4) * time.Millisecond)
			}
		}
	}
}
