package tlsconfig

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// BenchmarkHeapPerLoadedName reports the heap a name costs once its
// certificate is loaded (after its first handshake), over 2,000 names:
// heap-B/name is the live heap after loading every name less the live
// heap with every name indexed and none loaded, divided by the names.
// GATEHOUSE_HEAP_PROFILE=FILE writes the heap profile with every name
// loaded.
func BenchmarkHeapPerLoadedName(b *testing.B) {
	const n = 2000
	dir := b.TempDir()
	ca, err := acmetest.NewTestCA("heap CA")
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("h%05d.heap.test", i)
	}
	cfg := manyNamesConfig(b, fmt.Sprintf("[storage]\ndir = %q\n", dir), names)
	fst := &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	for _, name := range names {
		plantWith(b, fst, issuerKey, name, ca, 24*time.Hour)
	}
	for b.Loop() {
		m, err := New(cfg, Options{Logger: quietLogger(b), Storage: fst, ReleaseIdle: -1})
		if err != nil {
			b.Fatal(err)
		}
		table := routes.NewTable(cfg)
		if err := m.Apply(table); err != nil {
			b.Fatal(err)
		}
		waitFor(b, time.Minute, "names indexed", func() error {
			if !m.stored.pending(names[n-1]) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		e := table.Lookup(names[0])
		before := liveHeap()
		conn, peer := net.Pipe()
		for _, name := range names {
			if _, err := m.GetCertificate(e, &tls.ClientHelloInfo{ServerName: name, Conn: conn}); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
		}
		after := liveHeap()
		b.ReportMetric(float64(after-before)/n, "heap-B/name")
		if p := os.Getenv("GATEHOUSE_HEAP_PROFILE"); p != "" {
			f, err := os.Create(p)
			if err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
		conn.Close()
		peer.Close()
		m.Close()
	}
}

func liveHeap() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
