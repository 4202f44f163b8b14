// Command upstream is the benchmark's plaintext backend: a minimal
// HTTP/1.1 server that answers every request from a prebuilt buffer, so
// that the proxy in front of it, not the backend, is what the bench
// measures. GET /1m answers 1 MiB; anything else answers a fixed
// 100-byte body. Keep-alive unless the request says Connection: close.
//
// It parses only what a proxy sends (request line, headers, a
// Content-Length body); it is not a general HTTP server.
//
// -tls-cert/-tls-key put the same HTTP/1.1 server behind TLS (ALPN
// http/1.1 only): the https:// upstream of h1-tls-up. -h2c serves
// cleartext HTTP/2 (prior knowledge) instead, with the same bodies,
// through net/http: the h2c:// upstream of h2-h2c-up.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func response(n int) []byte {
	body := bytes.Repeat([]byte("x"), n)
	if n >= 1 {
		body[n-1] = '\n'
	}
	head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", n)
	return append([]byte(head), body...)
}

var (
	small = response(100)
	big   = response(1 << 20)
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	certFile := flag.String("tls-cert", "", "serve HTTP/1.1 over TLS with this certificate (PEM chain)")
	keyFile := flag.String("tls-key", "", "the key of -tls-cert")
	h2c := flag.Bool("h2c", false, "serve cleartext HTTP/2 (prior knowledge) instead of HTTP/1.1")
	flag.Parse()
	ln, err := listen(*addr, *certFile, *keyFile, *h2c)
	if err != nil {
		log.Fatal(err)
	}
	// the bench reads the bound address from the first line
	fmt.Fprintln(os.Stdout, ln.Addr().String())
	if *h2c {
		log.Fatal(serveH2C(ln))
	}
	log.Fatal(serveH1(ln))
}

// listen opens the listener: TLS (ALPN http/1.1) when certFile is set.
func listen(addr, certFile, keyFile string, h2c bool) (net.Listener, error) {
	if (certFile == "") != (keyFile == "") || (certFile != "" && h2c) {
		return nil, fmt.Errorf("upstream: -tls-cert and -tls-key go together, and not with -h2c")
	}
	var cert tls.Certificate
	if certFile != "" {
		var err error
		if cert, err = tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if certFile != "" {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	}
	return ln, nil
}

func serveH1(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go serve(c)
	}
}

var (
	hdrConnection    = []byte("connection:")
	hdrContentLength = []byte("content-length:")
	tokClose         = []byte("close")
)

func serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 8<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		resp := small
		// "GET /1m HTTP/1.1"
		if sp := bytes.IndexByte(line, ' '); sp >= 0 {
			rest := line[sp+1:]
			if bytes.HasPrefix(rest, []byte("/1m ")) || bytes.HasPrefix(rest, []byte("/1m?")) {
				resp = big
			}
		}
		closeAfter := false
		bodyLen := int64(0)
		for {
			h, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(h) <= 2 { // "\r\n"
				break
			}
			if len(h) > len(hdrContentLength) && asciiHasPrefixFold(h, hdrContentLength) {
				v := bytes.TrimSpace(h[len(hdrContentLength):])
				bodyLen, _ = strconv.ParseInt(string(v), 10, 64)
			} else if len(h) > len(hdrConnection) && asciiHasPrefixFold(h, hdrConnection) {
				if bytes.Contains(bytes.ToLower(h), tokClose) {
					closeAfter = true
				}
			}
		}
		if bodyLen > 0 {
			if _, err := io.CopyN(io.Discard, br, bodyLen); err != nil {
				return
			}
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
		if closeAfter {
			return
		}
	}
}

func asciiHasPrefixFold(s, prefix []byte) bool {
	for i, p := range prefix {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != p {
			return false
		}
	}
	return true
}

// serveH2C answers cleartext HTTP/2 with the HTTP/1.1 server's bodies.
func serveH2C(ln net.Listener) error {
	smallBody := small[bytes.Index(small, []byte("\r\n\r\n"))+4:]
	bigBody := big[bytes.Index(big, []byte("\r\n\r\n"))+4:]
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       10 * time.Minute,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			body := smallBody
			if r.URL.Path == "/1m" {
				body = bigBody
			}
			h := w.Header()
			h["Content-Type"] = []string{"text/plain"}
			h["Content-Length"] = []string{strconv.Itoa(len(body))}
			_, _ = w.Write(body)
		}),
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv.Serve(ln)
}
