package h1wire

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"reflect"
	"testing"
	"testing/iotest"
)

// parseHead runs the fast path's head scan and parse over b as the
// serve loop does; ok with the head length, or the refusal.
func parseHead(b []byte) (*RequestHead, int, error) {
	end, _, err := HeadEnd(b, 0)
	if err != nil || end == 0 {
		return nil, 0, err
	}
	h := new(RequestHead)
	return h, end, h.Parse(b[:end])
}

// FuzzReqHead: the request-head parser never panics, and whatever it
// accepts, net/http's own parser (http.ReadRequest) accepts too, with
// the same method, target, Host, Content-Length, chunked decision and
// field values: gatehouse may be stricter than net/http, never looser,
// and never frames a body differently (the condition for request
// smuggling). Seeds: testdata/fuzz/FuzzReqHead.
//
//	go test -run '^$' -fuzz '^FuzzReqHead$' -fuzztime 30s ./proxy/internal/h1wire
func FuzzReqHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET http://a/b HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET https://a:8443?q HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET http://[::1]:80/x%20y#f HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET HTTP://u@a/ HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 03\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\nX-A: 1\r\nx-a:\t2 \r\nEmpty:\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rawTarget := func() []byte { // the target as sent (parse rewrites absolute-form)
			sp := bytes.IndexByte(b, ' ')
			return b[sp+1 : sp+1+bytes.IndexByte(b[sp+1:], ' ')]
		}
		h, end, err := parseHead(b)
		if err != nil || h == nil {
			return
		}
		head := b[:end]
		req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if rerr != nil {
			t.Fatalf("gatehouse accepted what net/http refuses (%v):\n%q", rerr, head)
		}
		if req.Method != string(h.Method) {
			t.Fatalf("method %q vs net/http %q:\n%q", h.Method, req.Method, head)
		}
		if rt := rawTarget(); req.RequestURI != string(rt) {
			t.Fatalf("target %q vs net/http %q:\n%q", rt, req.RequestURI, head)
		}
		if req.Host != string(h.Host) {
			t.Fatalf("Host %q vs net/http %q:\n%q", h.Host, req.Host, head)
		}
		chunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[len(req.TransferEncoding)-1] == "chunked"
		if chunked != h.Chunked {
			t.Fatalf("chunked %v vs net/http %v:\n%q", h.Chunked, chunked, head)
		}
		want := h.ContentLength // net/http: 0 for a request with neither field, -1 for chunked
		switch {
		case h.Chunked:
			want = -1
		case want < 0:
			want = 0
		}
		if req.ContentLength != want {
			t.Fatalf("Content-Length %d (body %d) vs net/http %d:\n%q", h.ContentLength, want, req.ContentLength, head)
		}
		if req.Close && !h.Close && !h.Upgrade {
			t.Fatalf("gatehouse keeps the connection, net/http closes it:\n%q", head)
		}
		// field values, in order, per name; net/http takes Host out
		// of the header, Transfer-Encoding into its own field and
		// keeps one of identical Content-Lengths
		got := http.Header{}
		for _, fl := range h.Fields {
			k := http.CanonicalHeaderKey(string(fl.Name))
			if k == "Host" || k == "Transfer-Encoding" || k == "Content-Length" { // compared above
				continue
			}
			got[k] = append(got[k], string(fl.Value))
		}
		delete(req.Header, "Transfer-Encoding")
		delete(req.Header, "Content-Length")
		if !reflect.DeepEqual(got, req.Header) {
			t.Fatalf("fields %q vs net/http %q:\n%q", got, req.Header, head)
		}
	})
}

// FuzzChunked: the chunked decoder (BodyFramer) never panics, never
// returns more data than it was given, decodes the same whether the
// bytes arrive at once or one at a time, and on a body it accepts
// agrees with net/http — httputil.NewChunkedReader on the body bytes,
// http.ReadRequest on the trailer fields and on where the body ends
// (the next request on the connection starts at the same byte).
//
//	go test -run '^$' -fuzz '^FuzzChunked$' -fuzztime 30s ./proxy/internal/h1wire
func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"3\r\nabc\r\n0\r\n\r\n", "1;x=y\r\na\r\n0\r\nT: v\r\n\r\n", "0\r\n\r\n",
		"A\r\n0123456789\r\n0\r\nX-A: 1\r\nx-a: 2\r\nY:\r\n\r\nGET / HTTP/1.1\r\n",
		"1 \r\na\r\n0\r\n\r\n", "1\r\na\n0\r\n\r\n", "fffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	// decode runs the framer over b, all in the buffer at once or (one)
	// fed a byte per read; used: the bytes of b the body took
	decode := func(b []byte, one bool) (body []byte, fr BodyFramer, used int, err error) {
		br := BufReader{Buf: make([]byte, len(b)+MaxChunkLine)}
		var src *bytes.Reader
		if !one {
			br.W = copy(br.Buf, b)
		} else {
			src = bytes.NewReader(b)
			br.Src = iotest.OneByteReader(src)
		}
		unread := func() int {
			if src == nil {
				return br.W - br.R
			}
			return br.W - br.R + src.Len()
		}
		fr.Init(BodyChunked, 0)
		for !fr.Done {
			data, err := fr.Next(&br)
			if err != nil {
				return nil, fr, 0, err
			}
			if data != nil {
				body = append(body, data...)
				continue
			}
			if fr.Done || !one {
				break
			}
			if err := br.Fill(); err != nil {
				return body, fr, len(b) - unread(), err
			}
		}
		fr.Trailers = append([]byte(nil), fr.Trailers...)
		return body, fr, len(b) - unread(), nil
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, fr, used, err := decode(b, false)
		if err != nil {
			return
		}
		if len(got) > len(b) {
			t.Fatalf("decoded %d bytes from %d", len(got), len(b))
		}
		if !fr.Done {
			return
		}
		// the same, a byte at a time (state kept across reads)
		got1, fr1, used1, err1 := decode(b, true)
		if err1 != nil || !bytes.Equal(got, got1) || used != used1 || !bytes.Equal(fr.Trailers, fr1.Trailers) {
			t.Fatalf("byte at a time: %q/%d/%q/%v, at once: %q/%d/%q:\n%q", got1, used1, fr1.Trailers, err1, got, used, fr.Trailers, b)
		}

		want, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("gatehouse decoded %q, httputil.NewChunkedReader refused: %v (input %q)", got, err, b)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %q, httputil.NewChunkedReader %q (input %q)", got, want, b)
		}

		const head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
		full := append([]byte(head), b...)
		rd := bytes.NewReader(full)
		bufr := bufio.NewReader(rd)
		req, err := http.ReadRequest(bufr)
		if err != nil {
			t.Fatal(err)
		}
		want, err = readAllBody(req)
		if err != nil {
			t.Fatalf("gatehouse decoded %q (trailers %q), net/http refused: %v (input %q)", got, fr.Trailers, err, b)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %q, net/http %q", got, want)
		}
		if rest := bufr.Buffered() + rd.Len(); len(b)-rest != used {
			t.Fatalf("body ends after %d bytes, net/http after %d:\n%q", used, len(b)-rest, b)
		}
		trailer := http.Header{}
		for tl := fr.Trailers; len(tl) > 0; {
			nl := bytes.IndexByte(tl, '\n')
			line := tl[:nl-1]
			tl = tl[nl+1:]
			colon := bytes.IndexByte(line, ':')
			k := http.CanonicalHeaderKey(string(line[:colon]))
			trailer[k] = append(trailer[k], string(TrimOWS(line[colon+1:])))
		}
		if len(trailer) == 0 && len(req.Trailer) == 0 {
			return
		}
		if !reflect.DeepEqual(trailer, req.Trailer) {
			t.Fatalf("trailers %q, net/http %q:\n%q", trailer, req.Trailer, b)
		}
	})
}

func readAllBody(req *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(req.Body)
	return buf.Bytes(), err
}

// FuzzRespHead: the upstream response-head parser (ResponseHead.Parse)
// never panics, and whatever it accepts http.ReadResponse accepts too,
// with the same status, and the same framing of the body for a GET or a
// HEAD: none (HEAD, 1xx, 204, 304), Content-Length n, chunked, or until
// the connection closes. gatehouse may close where net/http would keep
// the connection, never the reverse.
//
//	go test -run '^$' -fuzz '^FuzzRespHead$' -fuzztime 30s ./proxy/internal/h1wire
func FuzzRespHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
		"HTTP/1.1 404 \xff\r\nX: a\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, b []byte, head bool) {
		end, _, err := HeadEnd(b, 0)
		if err != nil || end == 0 {
			return
		}
		var h ResponseHead
		if h.Parse(b[:end]) != nil {
			return
		}
		kind, n := h.BodyKind(head)
		method := "GET"
		if head {
			method = "HEAD"
		}
		res, rerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(b[:end])), &http.Request{Method: method})
		if rerr != nil {
			t.Fatalf("gatehouse accepted what net/http refuses (%v):\n%q", rerr, b[:end])
		}
		if res.StatusCode != h.Status {
			t.Fatalf("status %d vs net/http %d:\n%q", h.Status, res.StatusCode, b[:end])
		}
		if res.StatusCode == 101 {
			return // the connection is handed over: no body framing
		}
		chunked := len(res.TransferEncoding) > 0 && res.TransferEncoding[len(res.TransferEncoding)-1] == "chunked"
		switch kind {
		case BodyNone:
			if res.Body != http.NoBody {
				t.Fatalf("no body vs net/http reading one (cl %d, te %q):\n%q", res.ContentLength, res.TransferEncoding, b[:end])
			}
		case BodyLength:
			if chunked || res.ContentLength != n || (n == 0) != (res.Body == http.NoBody) {
				t.Fatalf("Content-Length %d vs net/http %d (te %q):\n%q", n, res.ContentLength, res.TransferEncoding, b[:end])
			}
		case BodyChunked:
			if !chunked || res.Body == http.NoBody {
				t.Fatalf("chunked vs net/http te %q cl %d:\n%q", res.TransferEncoding, res.ContentLength, b[:end])
			}
		case BodyClose:
			if chunked || res.ContentLength != -1 || !res.Close || res.Body == http.NoBody {
				t.Fatalf("read to close vs net/http te %q cl %d close %v:\n%q", res.TransferEncoding, res.ContentLength, res.Close, b[:end])
			}
		}
		if !h.Close && kind != BodyClose && res.Close { // a body read to close ends the connection anyway
			t.Fatalf("gatehouse keeps the connection, net/http closes it:\n%q", b[:end])
		}
	})
}
