package proxy

import (
	"crypto/tls"
	"testing"
)

// BenchmarkAcceptHandshake is a full TLS 1.3 handshake through the
// accept loop over loopback TCP, client and server in this process (the
// client's CPU is in it too): for instruction counts of the accept path
// (callgrind, two -test.benchtime=Nx runs, the difference divided by
// the difference of N), e.g. with and without the accept loop's own read
// of the ClientHello (listener_flood.go; bench/README.md "Many names").
func BenchmarkAcceptHandshake(b *testing.B) {
	w := startH1World(b, "http://127.0.0.1:1")
	cfg := &tls.Config{ServerName: "web.test", RootCAs: w.roots}
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", w.addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
