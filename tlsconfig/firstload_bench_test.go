package tlsconfig

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// BenchmarkFirstLoad is the server side of a stored name's first
// handshake (issue 15, "first handshake"): GetCertificate for a name
// whose certificate is in storage and not loaded yet — the lazy load
// (lazy.go, loadOne: certmagic's CacheManagedCertificate and what
// gatehouse does around it) — beside GetCertificate for a name already
// loaded. "handshake-first" and "handshake-warm" are whole TLS 1.3
// handshakes over net.Pipe (client and server in this process, so the
// client's CPU is in them too).
//
// Each sub-benchmark starts a fresh Manager over the same stored
// names (GATEHOUSE_FIRSTLOAD_NAMES, default 2,000): "first" loads a
// different name each iteration; past the pool it releases every name
// (timer stopped) and goes round again. For instruction counts run it
// under callgrind twice with -test.benchtime=Nx at two N below the pool
// size and divide the difference (bench/README.md, many names).
func BenchmarkFirstLoad(b *testing.B) {
	pool := 2000
	if v, err := strconv.Atoi(os.Getenv("GATEHOUSE_FIRSTLOAD_NAMES")); err == nil && v > 0 {
		pool = v
	}
	cfg, fst, names, _, ca := plantedNamesValid(b, pool, "f%05d.first.test", 30*24*time.Hour)
	start := func(b *testing.B) (*Manager, *routes.Entry) {
		// the walk at one name a second: what it costs is measured apart
		// ("check"), not mixed into the loads at the rate of the clock
		m, err := New(cfg, Options{Logger: quietLogger(b), Storage: fst, ReleaseIdle: -1, StoredCheckRate: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(m.Close)
		table := routes.NewTable(cfg)
		if err := m.Apply(table); err != nil {
			b.Fatal(err)
		}
		testkit.WaitFor(b, time.Minute, "names indexed", func() error {
			if !m.stored.pending(names[pool-1]) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		return m, table.Lookup(names[0])
	}
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	hello := func(name string) *tls.ClientHelloInfo { return &tls.ClientHelloInfo{ServerName: name, Conn: conn} }
	// releaseAll puts every loaded name back into the index
	releaseAll := func(b *testing.B, m *Manager, upto int) {
		b.StopTimer()
		for _, n := range names[:upto] {
			if !m.release(n) {
				b.Fatalf("%s not released", n)
			}
		}
		b.StartTimer()
	}

	b.Run("first", func(b *testing.B) {
		m, e := start(b)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i == pool {
				releaseAll(b, m, pool)
				i = 0
			}
			cert, err := m.GetCertificate(e, hello(names[i]))
			if err != nil || cert == nil {
				b.Fatalf("%s: %v", names[i], err)
			}
			i++
		}
	})
	b.Run("warm", func(b *testing.B) {
		m, e := start(b)
		h := hello(names[0])
		if _, err := m.GetCertificate(e, h); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.GetCertificate(e, h); err != nil {
				b.Fatal(err)
			}
		}
	})
	// the background walk's check of one stored name (lazy.go,
	// checkStored): it reads the certificate and its metadata, not the
	// key, and keeps the name in the index (none is due)
	b.Run("check", func(b *testing.B) {
		m, _ := start(b)
		ctx := context.Background()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := m.checkStored(ctx, names[i%pool]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		if !m.stored.pending(names[0]) {
			b.Fatal("a checked name left the index")
		}
	})
	roots := ca.Pool()
	shake := func(b *testing.B, m *Manager, e *routes.Entry, name string) {
		srv, cli := net.Pipe()
		defer cli.Close()
		done := make(chan error, 1)
		go func() {
			defer srv.Close()
			s := tls.Server(srv, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				return m.GetCertificate(e, h)
			}})
			done <- s.Handshake()
		}()
		c := tls.Client(cli, &tls.Config{ServerName: name, RootCAs: roots})
		if err := c.Handshake(); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		if err := <-done; err != nil {
			b.Fatalf("%s: server: %v", name, err)
		}
	}
	b.Run("handshake-first", func(b *testing.B) {
		m, e := start(b)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i == pool {
				releaseAll(b, m, pool)
				i = 0
			}
			shake(b, m, e, names[i])
			i++
		}
	})
	b.Run("handshake-warm", func(b *testing.B) {
		m, e := start(b)
		shake(b, m, e, names[0])
		b.ReportAllocs()
		for b.Loop() {
			shake(b, m, e, names[0])
		}
	})
}
