package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// Benchmarks of the HTTP/1.1 path, to compare a change against the code
// before it (run both on the same machine, one after the other):
//
//	go test -run '^$' -bench 'BenchmarkH1' -benchmem -count 5 ./proxy/

// BenchmarkH1Wire: the wire work of one proxied request with a chunked
// response, without sockets: scan and parse the client's head, write
// the upstream's head, scan and parse the response head, decode a
// chunked body and re-chunk it for the client.
func BenchmarkH1Wire(b *testing.B) {
	req := []byte("POST /api/v1/items?page=2 HTTP/1.1\r\nHost: web.test\r\nUser-Agent: bench/1.0\r\n" +
		"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nCookie: a=1; b=2\r\nConnection: keep-alive\r\n" +
		"Content-Length: 5\r\n\r\nhello")
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Wed, 02 Dec 2026 20:00:00 GMT\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\n")
	var (
		rh   h1wire.RequestHead
		rsh  h1wire.ResponseHead
		fwd  fwdInfo
		br   h1wire.BufReader
		fr   h1wire.BodyFramer
		out  = make([]byte, 0, 4096)
		sink int
	)
	br.Buf = make([]byte, 4096)
	fwd.set("192.0.2.1:1234", []byte("web.test"))
	b.ReportAllocs()
	for b.Loop() {
		end, _, err := h1wire.HeadEnd(req, 0)
		if err != nil || end == 0 {
			b.Fatal(end, err)
		}
		if err := rh.Parse(req[:end]); err != nil {
			b.Fatal(err)
		}
		out = appendUpstreamHead(out[:0], &rh, &fwd, rh.ContentLength)
		end, _, err = h1wire.HeadEnd(resp, 0)
		if err != nil || end == 0 {
			b.Fatal(end, err)
		}
		if err := rsh.Parse(resp[:end]); err != nil {
			b.Fatal(err)
		}
		kind, n := rsh.BodyKind(false)
		br.R, br.W = 0, copy(br.Buf, resp[end:])
		fr.Init(kind, n)
		out = out[:0]
		for !fr.Done {
			data, err := fr.Next(&br)
			if err != nil || data == nil && !fr.Done {
				b.Fatal(err)
			}
			out = h1wire.AppendChunk(out, data)
		}
		out = h1wire.AppendLastChunk(out, fr.Trailers)
		sink += len(out)
	}
	_ = sink
}

// BenchmarkH1KeepAlive: one GET through a real Server over one TLS
// keep-alive connection to a raw upstream answering a fixed response
// (allocations counted over the whole process: client, gatehouse,
// upstream).
func BenchmarkH1KeepAlive(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	const answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(line) == 2 {
						if _, err := io.WriteString(c, answer); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	w := startH1World(b, "http://"+ln.Addr().String())
	c, br := w.dial()
	const get = "GET /x HTTP/1.1\r\nHost: web.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
	body := make([]byte, 5)
	roundTrip := func() {
		if _, err := io.WriteString(c, get); err != nil {
			b.Fatal(err)
		}
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) == 2 {
				break
			}
		}
		if _, err := io.ReadFull(br, body); err != nil || !bytes.Equal(body, []byte("hello")) {
			b.Fatal(err, body)
		}
	}
	roundTrip() // the upstream connection is open and pooled
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
}
