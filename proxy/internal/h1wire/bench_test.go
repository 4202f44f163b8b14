package h1wire

import "testing"

// Benchmarks of the parsers over typical heads. Compare a change by its
// instructions per op, both binaries in one sitting (perf stat -e
// instructions:u at two -test.benchtime counts: the difference over the
// difference of the counts leaves out the start-up):
//
//	go test -run '^$' -bench 'BenchmarkParse|BenchmarkChunkedTrailers' -benchmem ./proxy/internal/h1wire

// browserReq is a request head as a browser sends it for a script of a
// page it has open: 14 fields, Chromium's names and values.
const browserReq = "GET /assets/app.js?v=3 HTTP/1.1\r\n" +
	"Host: www.example.test\r\n" +
	"Connection: keep-alive\r\n" +
	"sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n" +
	"sec-ch-ua-mobile: ?0\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
	"sec-ch-ua-platform: \"Linux\"\r\n" +
	"Accept: */*\r\n" +
	"Sec-Fetch-Site: same-origin\r\n" +
	"Sec-Fetch-Mode: no-cors\r\n" +
	"Sec-Fetch-Dest: script\r\n" +
	"Referer: https://www.example.test/\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Cookie: session=3f9a1c2e8b7d4a6f0e1d2c3b; theme=dark\r\n" +
	"\r\n"

// upstreamResp is the answer of an nginx upstream to it: 10 fields.
const upstreamResp = "HTTP/1.1 200 OK\r\n" +
	"Server: nginx\r\n" +
	"Date: Thu, 03 Dec 2026 04:00:00 GMT\r\n" +
	"Content-Type: application/javascript; charset=utf-8\r\n" +
	"Content-Length: 48213\r\n" +
	"Connection: keep-alive\r\n" +
	"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n" +
	"ETag: \"6930a1e0-bc55\"\r\n" +
	"Cache-Control: public, max-age=31536000, immutable\r\n" +
	"Vary: Accept-Encoding\r\n" +
	"Accept-Ranges: bytes\r\n" +
	"\r\n"

func BenchmarkParseRequestHead(b *testing.B) {
	head := []byte(browserReq)
	var h RequestHead
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Parse(head); err != nil || len(h.Fields) != 14 {
			b.Fatal(err, len(h.Fields))
		}
	}
}

func BenchmarkParseResponseHead(b *testing.B) {
	head := []byte(upstreamResp)
	var h ResponseHead
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Parse(head); err != nil || h.ContentLength != 48213 {
			b.Fatal(err, h.ContentLength)
		}
	}
}

// BenchmarkChunkedTrailers: a short chunked body with a trailer section
// of two fields, decoded, and the trailers walked as a relay walks them.
func BenchmarkChunkedTrailers(b *testing.B) {
	body := []byte("5\r\nhello\r\n0\r\nServer-Timing: db;dur=53, app;dur=47.2\r\n" +
		"Digest: sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\r\n\r\n")
	br := BufReader{Buf: make([]byte, len(body))}
	var fr BodyFramer
	n := 0
	count := func(name, value []byte) { n += len(name) + len(value) }
	b.ReportAllocs()
	for b.Loop() {
		br.R, br.W = 0, copy(br.Buf, body)
		fr.Init(BodyChunked, 0)
		for !fr.Done {
			if _, err := fr.Next(&br); err != nil {
				b.Fatal(err)
			}
		}
		ForEachTrailer(fr.Trailers, count)
	}
	if n == 0 {
		b.Fatal("no trailers")
	}
}
