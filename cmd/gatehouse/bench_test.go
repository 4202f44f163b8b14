package main

// Benchmarks through a real in-process gatehouse on loopback: a manual
// ECDSA P-256 certificate route in front of a minimal fixed-response
// upstream. Run with -benchmem to track allocations per operation:
//
//	go test -run '^$' -bench . -benchmem ./cmd/gatehouse
//
// The counts include the in-process client (and the upstream, which
// allocates nothing per request); the /direct sub-benchmarks measure the
// client against the upstream without gatehouse, so the difference is
// gatehouse's share. Timings here are for comparing revisions on one
// machine; bench/run.sh compares gatehouse with nginx and HAProxy.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

const benchName = "bench.example.test"

// benchWorld is gatehouse serving benchName from a manual certificate.
type benchWorld struct {
	addr     string // gatehouse https
	upstream string // plaintext upstream
}

func startBenchWorld(b *testing.B) *benchWorld {
	b.Helper()
	return startBenchWorldUp(b, false)
}

// startBenchWorldUp is startBenchWorld with an https:// upstream (the
// same fixed answer over TLS, verified with upstream_ca) when tlsUp.
func startBenchWorldUp(b *testing.B, tlsUp bool) *benchWorld {
	b.Helper()
	ca, err := acmetest.NewTestCA("bench CA")
	if err != nil {
		b.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{benchName}, "", 24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	var upURL, extra string
	if !tlsUp {
		upURL = "http://" + startFixedUpstream(b, nil)
	} else {
		upCert, upKey, _, err := ca.Issue([]string{"127.0.0.1"}, "", 24*time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		kp, err := tls.X509KeyPair(upCert, upKey)
		if err != nil {
			b.Fatal(err)
		}
		caFile := filepath.Join(dir, "ca.pem")
		if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
			b.Fatal(err)
		}
		upURL = "https://" + startFixedUpstream(b, &tls.Config{Certificates: []tls.Certificate{kp}})
		extra = fmt.Sprintf("upstream_ca = %q\n", caFile)
	}
	https := listen(b)
	cfgText := fmt.Sprintf(`
[listen]
https = %q
http = ""
admin = ""
[storage]
dir = %q
[[route]]
hosts = [%q]
cert = %q
key = %q
upstream = %q
%s`, https.Addr(), filepath.Join(dir, "storage"), benchName, certFile, keyFile, upURL, extra)
	path := filepath.Join(dir, "gatehouse.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := routes.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	in, err := start(cfg, startOptions{httpsLn: https, logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = in.shutdown(2 * time.Second) })
	return &benchWorld{addr: https.Addr().String(), upstream: strings.TrimPrefix(strings.TrimPrefix(upURL, "http://"), "https://")}
}

// startFixedUpstream serves a fixed 100-byte body on keep-alive
// HTTP/1.1 connections without allocating per request, so it adds
// nothing to allocs/op (over TLS with cfg, when set: then TLS's own).
func startFixedUpstream(b *testing.B, cfg *tls.Config) string {
	var ln net.Listener = listen(b)
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	body := bytes.Repeat([]byte("x"), 100)
	resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"), body...)
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
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
				br := bufio.NewReader(c)
				for {
					// a request ends with an empty line (benchmarks send no bodies)
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func benchClientTLS() *tls.Config {
	return &tls.Config{ServerName: benchName, InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}}
}

// BenchmarkHandshake: a full TLS 1.3 handshake (X25519, ECDSA P-256,
// never resumed) per op; client and server both in process.
func BenchmarkHandshake(b *testing.B) {
	w := startBenchWorld(b)
	cfg := benchClientTLS()
	cfg.NextProtos = []string{"http/1.1"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := tls.Dial("tcp", w.addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if c.ConnectionState().DidResume {
			b.Fatal("resumed")
		}
		c.Close()
	}
}

// keepAliveConn sends GETs on one connection and reads the 100-byte answers.
type keepAliveConn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
	buf []byte
}

func newKeepAliveConn(c net.Conn, host string) *keepAliveConn {
	return &keepAliveConn{c: c, br: bufio.NewReaderSize(c, 4096),
		req: []byte("GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"), buf: make([]byte, 4096)}
}

// do sends a request and reads headers and a Content-Length body
// without allocating.
func (k *keepAliveConn) do() error {
	if _, err := k.c.Write(k.req); err != nil {
		return err
	}
	n := -1
	for first := true; ; first = false {
		line, err := k.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if first && !bytes.HasPrefix(line, []byte("HTTP/1.1 200")) {
			return fmt.Errorf("status %q", line)
		}
		if len(line) <= 2 {
			break
		}
		const cl = "content-length:"
		if len(line) > len(cl) && bytes.EqualFold(line[:len(cl)], []byte(cl)) {
			n = 0
			for _, d := range bytes.TrimSpace(line[len(cl):]) {
				n = n*10 + int(d-'0')
			}
		}
	}
	if n < 0 {
		return fmt.Errorf("no content-length")
	}
	_, err := io.ReadFull(k.br, k.buf[:n])
	return err
}

// BenchmarkHTTP1Request: one 100-byte GET per op on keep-alive TLS
// HTTP/1.1 connections (one per parallel goroutine).
func BenchmarkHTTP1Request(b *testing.B) {
	w := startBenchWorld(b)
	b.Run("gatehouse", func(b *testing.B) {
		benchKeepAlive(b, func() (net.Conn, error) {
			cfg := benchClientTLS()
			cfg.NextProtos = []string{"http/1.1"}
			return tls.Dial("tcp", w.addr, cfg)
		})
	})
	b.Run("direct", func(b *testing.B) {
		benchKeepAlive(b, func() (net.Conn, error) { return net.Dial("tcp", w.upstream) })
	})
}

func benchKeepAlive(b *testing.B, dial func() (net.Conn, error)) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := dial()
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		k := newKeepAliveConn(c, benchName)
		for pb.Next() {
			if err := k.do(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHTTPSUpstream: BenchmarkHTTP1Request's op to a route whose
// upstream is https:// (keep-alive TLS to the upstream too).
func BenchmarkHTTPSUpstream(b *testing.B) {
	w := startBenchWorldUp(b, true)
	benchKeepAlive(b, func() (net.Conn, error) {
		cfg := benchClientTLS()
		cfg.NextProtos = []string{"http/1.1"}
		return tls.Dial("tcp", w.addr, cfg)
	})
}

// BenchmarkHTTP2Request: one 100-byte GET per op, as concurrent streams
// on one TLS HTTP/2 connection (net/http's client).
func BenchmarkHTTP2Request(b *testing.B) {
	w := startBenchWorld(b)
	tr := &http.Transport{
		TLSClientConfig:   benchClientTLS(),
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", w.addr)
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	url := "https://" + benchName + "/"
	get := func() error {
		res, err := cl.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.ProtoMajor != 2 || res.StatusCode != 200 {
			return fmt.Errorf("%s %d", res.Proto, res.StatusCode)
		}
		return err
	}
	if err := get(); err != nil { // one connection, opened before timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := get(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHTTP3Request: one 100-byte GET per op, as concurrent streams
// on one QUIC connection (quic-go's HTTP/3 client), the same route and
// upstream as BenchmarkHTTP2Request.
func BenchmarkHTTP3Request(b *testing.B) {
	w := startBenchWorld(b)
	tr := &http3.Transport{
		TLSClientConfig: benchClientTLS(),
		Dial: func(ctx context.Context, _ string, cfg *tls.Config, qc *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, w.addr, cfg, qc)
		},
	}
	defer tr.Close()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "https://" + benchName + "/"
	get := func() error {
		res, err := cl.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.ProtoMajor != 3 || res.StatusCode != 200 {
			return fmt.Errorf("%s %d", res.Proto, res.StatusCode)
		}
		return err
	}
	// one connection, opened before timing (the UDP listener comes up
	// with the server: a few tries)
	var err error
	for range 50 {
		if err = get(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := get(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
