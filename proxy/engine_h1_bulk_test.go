package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// bulkBody is a 1 MiB body whose every 8-byte word differs, so a lost,
// doubled or reordered piece (a TLS record, a read) shows.
func bulkBody() []byte {
	b := make([]byte, 0, 1<<20)
	for i := 0; len(b) < 1<<20; i++ {
		b = fmt.Appendf(b, "%07x\n", i)
	}
	return b
}

// bulkUpstream serves, on every keep-alive connection, /big (bulkBody
// with a Content-Length), /big-stray (the same, followed in the same
// write by a whole second response the request did not ask for) and
// anything else as "small".
func bulkUpstream(c net.Conn, br *bufio.Reader) error {
	body := bulkBody()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return err
		}
		var out []byte
		switch req.URL.Path {
		case "/big", "/big-stray":
			out = fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
			out = append(out, body...)
			if req.URL.Path == "/big-stray" {
				out = append(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"...)
			}
		default:
			out = []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
		}
		if _, err := c.Write(out); err != nil {
			return err
		}
	}
}

// slowRead reads r to the end in small reads with pauses, as a slow
// client does: gatehouse's writes to it block and resume many times.
func slowRead(r io.Reader) ([]byte, error) {
	var out []byte
	buf := make([]byte, 3000)
	for i := 0; ; i++ {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if i%16 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// A 1 MiB Content-Length body (the size read from the upstream in
// larger pieces and written to the client two TLS records at a time)
// reaches a slow client byte-exact over HTTP/1.1 and HTTP/2, bytes the
// upstream sent past the body's end are never delivered (the next
// request on the connection gets its own answer), and once the
// exchanges are over no pooled buffer is held.
func TestH1BulkBodyExact(t *testing.T) {
	up := startHeldUpstream(t, bulkUpstream)
	w := startH1World(t, up.url())
	want := bulkBody()
	before := h1wire.BuffersOut()

	t.Run("http1.1", func(t *testing.T) {
		c, br := w.dial()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		for _, path := range []string{"/big-stray", "/small", "/big", "/big", "/small"} {
			if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			got, err := slowRead(res.Body)
			if err != nil {
				t.Fatalf("%s: reading the body: %v", path, err)
			}
			if strings.HasPrefix(path, "/big") {
				if !bytes.Equal(got, want) || res.ContentLength != int64(len(want)) {
					t.Fatalf("%s: %d bytes (Content-Length %d), equal %v; want the 1 MiB body exactly", path, len(got), res.ContentLength, bytes.Equal(got, want))
				}
			} else if string(got) != "small" {
				t.Fatalf("%s: %q, want small (not the stray)", path, got)
			}
		}
	})

	t.Run("http2", func(t *testing.T) {
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{ServerName: "web.test", RootCAs: w.roots},
			ForceAttemptHTTP2: true,
			DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				d := tls.Dialer{Config: &tls.Config{ServerName: "web.test", RootCAs: w.roots, NextProtos: []string{"h2"}}}
				return d.DialContext(ctx, network, w.addr)
			},
		}
		defer tr.CloseIdleConnections()
		cl := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		for _, path := range []string{"/big-stray", "/small", "/big"} {
			res, err := cl.Get("https://web.test" + path)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			got, err := slowRead(res.Body)
			res.Body.Close()
			if err != nil || res.ProtoMajor != 2 {
				t.Fatalf("%s: %v, HTTP/%d", path, err, res.ProtoMajor)
			}
			if strings.HasPrefix(path, "/big") && !bytes.Equal(got, want) {
				t.Fatalf("%s: %d bytes, want the 1 MiB body exactly", path, len(got))
			}
			if path == "/small" && string(got) != "small" {
				t.Fatalf("%s: %q, want small (not the stray)", path, got)
			}
		}
	})

	deadline := time.Now().Add(5 * time.Second)
	for h1wire.BuffersOut() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h1wire.BuffersOut() - before; n > 0 {
		t.Errorf("%d pooled buffers still held after the exchanges, want 0", n)
	}
}

// HTTP/1.1: a client that takes part of a large response and then
// stops reading is cut off after send, though the response is written
// in gathered writes of several TLS records, and the upstream
// connection is released.
func TestH1BulkSendTimeoutMidway(t *testing.T) {
	up := startHeldUpstream(t, sendsForever)
	w := startH1WorldWith(t, tinyTimeouts, up.url())
	c, br := w.dial()
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, res.Body, 512<<10); err != nil {
		t.Fatalf("reading the first 512 KiB: %v", err)
	}
	// the client reads nothing more
	abortedByGatehouse(t, up.next(t))
	up.waitOpen(t, 0)
	// and the client's connection was closed: what is left of the
	// socket buffers drains and then the read ends early
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, res.Body)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("client read after the cut: %v, want the connection closed", err)
	}
}
