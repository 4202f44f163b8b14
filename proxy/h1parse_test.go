package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// parseHead runs the fast path's head scan and parse over b as the
// serve loop does; ok with the head length, or the refusal.
func parseHead(b []byte) (*reqHead, int, error) {
	end, _, err := headEnd(b, 0)
	if err != nil || end == 0 {
		return nil, 0, err
	}
	h := new(reqHead)
	return h, end, h.parse(b[:end])
}

// FuzzH1Parse: the parser never panics, and whatever it accepts,
// net/http's own parser accepts too, with the same method, Host and
// body framing: gatehouse is never the more lenient side of a pair of
// parsers (the condition for request smuggling).
//
//	go test -run '^$' -fuzz FuzzH1Parse -fuzztime 30s ./proxy
func FuzzH1Parse(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET http://a/b HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, end, err := parseHead(b)
		if err != nil || h == nil {
			return
		}
		req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:end])))
		if rerr != nil {
			// net/http is stricter on a few things gatehouse passes on
			// unchanged to an upstream that parses them itself
			msg := rerr.Error()
			if strings.Contains(msg, "malformed HTTP request") && h.target[0] != '/' && h.target[0] != '*' ||
				strings.Contains(msg, "invalid URI") || strings.Contains(msg, "invalid Host") ||
				strings.Contains(msg, "missing protocol scheme") {
				return
			}
			t.Fatalf("gatehouse accepted what net/http refuses (%v):\n%q", rerr, b[:end])
		}
		if req.Method != string(h.method) {
			t.Fatalf("method %q vs net/http %q", h.method, req.Method)
		}
		chunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if chunked != h.chunked {
			t.Fatalf("chunked %v vs net/http %v:\n%q", h.chunked, chunked, b[:end])
		}
		if !h.chunked && h.contentLength > 0 && req.ContentLength != h.contentLength {
			t.Fatalf("Content-Length %d vs net/http %d:\n%q", h.contentLength, req.ContentLength, b[:end])
		}
	})
}

// FuzzChunked: the chunked decoder never panics, never returns more
// data than it was given, and agrees with net/http's decoder on what a
// valid body holds.
func FuzzChunked(f *testing.F) {
	for _, s := range []string{"3\r\nabc\r\n0\r\n\r\n", "1;x=y\r\na\r\n0\r\nT: v\r\n\r\n", "0\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufReader{buf: append([]byte(nil), b...), w: len(b)}
		var fr bodyFramer
		fr.init(bodyChunked, 0)
		var got []byte
		for {
			data, err := fr.next(&br)
			if err != nil {
				return
			}
			if data == nil {
				break
			}
			got = append(got, data...)
		}
		if len(got) > len(b) {
			t.Fatalf("decoded %d bytes from %d", len(got), len(b))
		}
		if !fr.done {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(append([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), b...))))
		if err != nil {
			t.Fatal(err)
		}
		want, err := readAllBody(req)
		if err != nil {
			t.Fatalf("gatehouse decoded %q, net/http refused: %v (input %q)", got, err, b)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %q, net/http %q", got, want)
		}
	})
}

func readAllBody(req *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(req.Body)
	return buf.Bytes(), err
}
