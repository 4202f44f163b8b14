package tlsconfig

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
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

// Certificates one CA signed that name an OCSP responder share one
// parsed issuer in the stapler, not ~2.4 KB each.
func TestStaplerSharesParsedIssuer(t *testing.T) {
	ca, err := acmetest.NewTestCA("staple issuer CA")
	if err != nil {
		t.Fatal(err)
	}
	s := newStapler(&certmagic.FileStorage{Path: t.TempDir()}, quietLogger(t), time.Hour, nil)
	var leaves []*x509.Certificate
	for i := range 5 {
		name := fmt.Sprintf("s%d.staple.test", i)
		certPEM, keyPEM, _, err := ca.Issue([]string{name}, "http://127.0.0.1:1/ocsp", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		s.register(pair, []string{name})
		leaves = append(leaves, pair.Leaf)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var shared *x509.Certificate
	for _, leaf := range leaves {
		e := s.entries[leaf]
		if e == nil || e.issuer == nil || !bytes.Equal(e.issuer.Raw, ca.Cert.Raw) {
			t.Fatalf("%s: no staple entry with the CA as issuer", leaf.DNSNames[0])
		}
		if shared == nil {
			shared = e.issuer
		} else if e.issuer != shared {
			t.Fatalf("%s: its own parsed copy of the issuer; want one shared by the %d certificates", leaf.DNSNames[0], len(leaves))
		}
	}
}
