package tlsconfig

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// BenchmarkGetCertificateManyNames looks certificates up the way the
// proxy does, with 10,000 names loaded: the same name every time, and a
// different name each time (SNI spread over all names).
func BenchmarkGetCertificateManyNames(b *testing.B) {
	const n = 10000
	cfg, fst, names, _, _ := plantedNamesValid(b, n, "b%05d.many.test", 24*time.Hour)
	m, err := New(cfg, Options{Logger: quietLogger(b), Storage: fst, ReleaseIdle: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		b.Fatal(err)
	}
	e := table.Lookup(names[0])
	testkit.WaitFor(b, time.Minute, "names indexed", func() error {
		if !m.stored.pending(names[n-1]) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	hellos := make([]*tls.ClientHelloInfo, n)
	for i, name := range names {
		hellos[i] = &tls.ClientHelloInfo{ServerName: name, Conn: conn}
		if _, err := m.GetCertificate(e, hellos[i]); err != nil { // first handshake: loads it
			b.Fatalf("%s: %v", name, err)
		}
	}
	b.Run("one", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.GetCertificate(e, hellos[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("spread", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := m.GetCertificate(e, hellos[i%n]); err != nil {
				b.Fatal(err)
			}
			i += 7919 // a prime: every name, not in storage order
		}
	})
}
