package h1wire

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

func TestValidHost(t *testing.T) {
	for _, h := range []string{"", "app.test", "APP.test", "app.test.", "app.test:443", "app.test:1", "app.test:65535",
		"127.0.0.1", "127.0.0.1:8443", "[::1]", "[::1]:443", "[2001:db8::1]", "a_b.test", "xn--bcher-kva.test"} {
		if !ValidHost([]byte(h)) {
			t.Errorf("ValidHost(%q) = false, want true", h)
		}
	}
	for _, h := range []string{"app.test:,evil.example", "app.test:", "app.test:abc", "app.test:+443", "app.test:-1",
		"app.test:65536", "app.test:000443", "app.test:443,evil.example", "app.test,evil.example", "app.test;x=y",
		"app.test:443:443", ":443", "[::1", "[::1]x", "[::1]:", "[fe80::1%25eth0]", "[v1.x]", "[127.0.0.1]",
		"user@app.test", "app%2etest", "app test", "app.test/", "[::1]:44a"} {
		if ValidHost([]byte(h)) {
			t.Errorf("ValidHost(%q) = true, want false", h)
		}
	}
}

// The writers' output is what net/http reads back, and what the
// parsers here read back: a request head with a chunked body, and a
// response head with a chunked body and trailers.
func TestWritersRoundTrip(t *testing.T) {
	body := [][]byte{[]byte("hello"), bytes.Repeat([]byte("x"), 300), []byte("!")}
	var b []byte
	b = AppendRequestLine(b, []byte("POST"), []byte("/a?b=c"))
	b = AppendField(b, "Host", []byte("web.test:8443"))
	b = AppendField(b, []byte("X-A"), "1")
	b = AppendChunkedField(b)
	b = AppendEndOfHead(b)
	for _, p := range body {
		b = AppendChunk(b, p)
	}
	b = AppendChunk(b, nil) // writes nothing: a zero size would end the body
	b = AppendLastChunk(b, nil)
	want := "POST /a?b=c HTTP/1.1\r\nHost: web.test:8443\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n12c\r\n" + strings.Repeat("x", 300) + "\r\n1\r\n!\r\n0\r\n\r\n"
	if string(b) != want {
		t.Fatalf("request written as\n%q, want\n%q", b, want)
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(req.Body)
	if err != nil || !bytes.Equal(got, bytes.Join(body, nil)) || req.Host != "web.test:8443" || req.Header.Get("X-A") != "1" {
		t.Fatalf("net/http read %q %v host %q header %v", got, err, req.Host, req.Header)
	}
	end, _, err := HeadEnd(b, 0)
	if err != nil || end == 0 {
		t.Fatal(end, err)
	}
	var rh RequestHead
	if err := rh.Parse(b[:end]); err != nil || !rh.Chunked || string(rh.Host) != "web.test:8443" {
		t.Fatalf("Parse: %v, chunked %v, host %q", err, rh.Chunked, rh.Host)
	}

	b = AppendStatusLine(b[:0], []byte("200 OK"))
	b = AppendField(b, "Trailer", "T")
	b = AppendChunkedField(b)
	b = AppendEndOfHead(b)
	b = AppendChunk(b, body[0])
	b = AppendLastChunk(b, []byte("T: v\r\n"))
	res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(res.Body)
	if err != nil || string(got) != "hello" || res.StatusCode != 200 || !reflect.DeepEqual(res.Trailer, http.Header{"T": {"v"}}) {
		t.Fatalf("net/http read %d %q %v trailer %v", res.StatusCode, got, err, res.Trailer)
	}
	if s := string(AppendStatus(nil, 404, "Not Found")); s != "HTTP/1.1 404 Not Found\r\n" {
		t.Fatalf("AppendStatus: %q", s)
	}
	if s := string(AppendContentLength(nil, 1234567)); s != "Content-Length: 1234567\r\n" {
		t.Fatalf("AppendContentLength: %q", s)
	}
}

// A BufReader holds a pooled buffer from Take to Release, counted in
// BuffersOut; Grow keeps the unread bytes and the count; the framer
// reads a Content-Length body across fills and leaves what follows.
func TestBufReaderAndFramer(t *testing.T) {
	small := &sync.Pool{New: func() any { b := make([]byte, 8); return &b }}
	large := &sync.Pool{New: func() any { b := make([]byte, 64); return &b }}
	before := BuffersOut()
	br := BufReader{Src: iotest.HalfReader(strings.NewReader("0123456789abcdefNEXT"))}
	br.Take(small)
	if !br.Held() || BuffersOut() != before+1 {
		t.Fatalf("after Take: held %v, out %d", br.Held(), BuffersOut()-before)
	}
	for br.Fill() == nil && br.W < len(br.Buf) {
	}
	if err := br.Fill(); err != ErrBufFull {
		t.Fatalf("Fill on a full buffer: %v, want ErrBufFull", err)
	}
	br.R = 2
	br.Grow(large)
	if len(br.Buf) != 64 || string(br.Buf[br.R:br.W]) != "234567" || BuffersOut() != before+1 {
		t.Fatalf("after Grow: len %d, unread %q, out %d", len(br.Buf), br.Buf[br.R:br.W], BuffersOut()-before)
	}
	var f BodyFramer
	f.Init(BodyLength, 14)
	var got []byte
	for !f.Done {
		p, err := f.Next(&br)
		if err != nil {
			t.Fatal(err)
		}
		if p == nil && !f.Done {
			if err := br.Fill(); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, p...)
	}
	if string(got) != "23456789abcdef" {
		t.Fatalf("body %q", got)
	}
	for br.Buffered() < 4 {
		if err := br.Fill(); err != nil {
			t.Fatal(err)
		}
	}
	if string(br.Buf[br.R:br.W]) != "NEXT" {
		t.Fatalf("left after the body: %q", br.Buf[br.R:br.W])
	}
	br.Release()
	if br.Held() || BuffersOut() != before {
		t.Fatalf("after Release: held %v, out %d", br.Held(), BuffersOut()-before)
	}
}

// A field line that is not field-name ":" OWS field-value OWS (RFC 9112
// §5, RFC 9110 §5.5) is refused with its own reason; the first refusal
// in a head decides, a field interpreted on an earlier line included.
// An upstream's is ErrBadResponse, a trailer section's ErrBadChunk; a
// valid line's value is the same, without its OWS, in all three.
func TestFieldLines(t *testing.T) {
	for _, tc := range []struct {
		lines  string // field lines after Host, without the final CRLF
		status int    // 0: accepted
		msg    string // the refusal, or the value of the last field
	}{
		{"X-A: a b\tc\x80\xff", 0, "a b\tc\x80\xff"},
		{"X-A: \t v \t", 0, "v"},
		{"X-A:", 0, ""},
		{"X-A:  \t ", 0, ""},
		{"X-A:b:c", 0, "b:c"},
		{"X-A: \xc2\xa0v\xc2\x85", 0, "\xc2\xa0v\xc2\x85"}, // NBSP, NEL: not OWS (net/http keeps them)
		{"X-A: \tv\tv\t\tvvvvvvvvv\tv\t", 0, "v\tv\t\tvvvvvvvvv\tv"},
		{"!#$%&'*+-.^_`|~0Az: 1", 0, "1"},
		{"X-A: " + strings.Repeat("v\t", 40) + "v", 0, strings.Repeat("v\t", 40) + "v"},
		{" X: 1", 400, "obsolete line folding in a header field"},
		{"\tX: 1", 400, "obsolete line folding in a header field"},
		{"X-A: 1\r\n Y", 400, "obsolete line folding in a header field"},
		{"X 1", 400, "header line without a field name"},
		{"X-A", 400, "header line without a field name"},
		{": 1", 400, "header line without a field name"},
		{"X-A : 1", 400, "invalid header field name"},
		{"X(A): 1", 400, "invalid header field name"},
		{"X\x80: 1", 400, "invalid header field name"},
		{"X\"A: 1", 400, "invalid header field name"},
		{"X-A: 1\x00", 400, "invalid header field value"},
		{"X-A: \x7f", 400, "invalid header field value"},
		{"X-A: " + strings.Repeat("v", 30) + "\x1fb", 400, "invalid header field value"},
		{"X-A: \x1b[31m", 400, "invalid header field value"},
		{"Expect: 100-continue\r\nX(A): 1", 400, "invalid header field name"},
		{"Expect: x\r\nX(A): 1", 417, "unsupported expectation"},
		{"X(A): 1\r\nExpect: x", 400, "invalid header field name"},
		{"Transfer-Encoding: gzip\r\nX-A: \x01", 501, "unsupported Transfer-Encoding"},
		{"X-A: \x01\r\nTransfer-Encoding: gzip", 400, "invalid header field value"},
	} {
		req := "GET / HTTP/1.1\r\nHost: a\r\n" + tc.lines + "\r\n\r\n"
		end, _, err := HeadEnd([]byte(req), 0)
		if err != nil || end != len(req) {
			t.Fatalf("HeadEnd(%q) = %d, %v", req, end, err)
		}
		var rh RequestHead
		err = rh.Parse([]byte(req))
		pe, _ := err.(*ParseError)
		switch {
		case tc.status == 0 && (err != nil || string(rh.Fields[len(rh.Fields)-1].Value) != tc.msg):
			t.Errorf("%q: %v, value %q, want %q", tc.lines, err, rh.Fields[len(rh.Fields)-1].Value, tc.msg)
		case tc.status != 0 && (pe == nil || pe.Status != tc.status || pe.Msg != tc.msg):
			t.Errorf("%q: %#v, want %d %q", tc.lines, err, tc.status, tc.msg)
		}
		if tc.status == 417 || tc.status == 501 {
			continue // a request's policy, not a field line's syntax
		}
		var sh ResponseHead
		err = sh.Parse([]byte("HTTP/1.1 200 OK\r\n" + tc.lines + "\r\n\r\n"))
		if tc.status == 0 && (err != nil || string(sh.Fields[len(sh.Fields)-1].Value) != tc.msg) ||
			tc.status != 0 && err != ErrBadResponse {
			t.Errorf("response %q: %v", tc.lines, err)
		}
		br := BufReader{Buf: []byte("0\r\n" + tc.lines + "\r\n\r\n")}
		br.W = len(br.Buf)
		var fr BodyFramer
		fr.Init(BodyChunked, 0)
		_, err = fr.Next(&br)
		if tc.status != 0 {
			if err != ErrBadChunk {
				t.Errorf("trailers %q: %v, want ErrBadChunk", tc.lines, err)
			}
			continue
		}
		var last []byte
		ForEachTrailer(fr.Trailers, func(name, value []byte) { last = value })
		if err != nil || !fr.Done || string(last) != tc.msg {
			t.Errorf("trailers %q: %v, done %v, value %q", tc.lines, err, fr.Done, last)
		}
	}
}

// valueLen, eight bytes at a time, ends where a byte-by-byte check of
// RFC 9110 §5.5 ends: every byte value at every position of a word and
// of the tail, after a tab or not.
func TestValueLen(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, pre := range []string{"", "\t", "a\tb", "\xff\x80 "} {
			for at := 0; at < 20; at++ {
				b := []byte(pre + strings.Repeat("v", at) + string(rune(0)) + "vvvvvvvvvvvvvvvv\r\n")
				b[len(pre)+at] = byte(c)
				want := 0
				for want < len(b) && (b[want] >= 0x20 || b[want] == '\t') && b[want] != 0x7f {
					want++
				}
				if got := valueLen(b); got != want {
					t.Fatalf("valueLen(%q) = %d, want %d", b, got, want)
				}
			}
		}
	}
}
