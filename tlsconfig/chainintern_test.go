package tlsconfig

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Names whose stored certificates one CA signed hold one copy of the
// CA's certificate once loaded, not one each (chainintern.go), and
// still send the whole chain.
func TestLoadedCertificatesShareIssuerChain(t *testing.T) {
	const n = 40
	cfg, fst, names, _, ca := plantedNames(t, n, "c%02d.chain.test")
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: fst})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		chain, err := servedChain(m, table, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 2 || !bytes.Equal(chain[1], ca.Cert.Raw) {
			t.Fatalf("%s: served a chain of %d certificates, want the leaf and the CA's", name, len(chain))
		}
	}
	if l := m.StoredLoads(); l != n {
		t.Fatalf("%d certificates loaded from storage, want %d", l, n)
	}
	var shared *byte
	for _, name := range names {
		cached := m.cache.AllMatchingCertificates(name)
		if len(cached) != 1 {
			t.Fatalf("%s: %d certificates cached, want 1", name, len(cached))
		}
		chain := cached[0].Certificate.Certificate
		if len(chain) != 2 || !bytes.Equal(chain[1], ca.Cert.Raw) {
			t.Fatalf("%s: cached chain of %d certificates, want the leaf and the CA's", name, len(chain))
		}
		if shared == nil {
			shared = &chain[1][0]
		} else if &chain[1][0] != shared {
			t.Fatalf("%s: holds its own copy of the CA's certificate; want one copy shared by the %d names it signed", name, n)
		}
	}
}

// servedChain handshakes with name through m as the proxy does and
// returns the DER of every certificate the client received.
func servedChain(m *Manager, table *routes.Table, name string) ([][]byte, error) {
	e := table.Lookup(name)
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	go func() {
		s := tls.Server(srv, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.GetCertificate(e, h)
		}})
		s.SetDeadline(time.Now().Add(20 * time.Second))
		s.Handshake()
	}()
	c := tls.Client(cli, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	var out [][]byte
	for _, pc := range c.ConnectionState().PeerCertificates {
		out = append(out, pc.Raw)
	}
	return out, nil
}
