package tlsconfig

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// A certificate loaded from storage has its parsed leaf trimmed
// (leaftrim.go) and still: serves a verified handshake, gets its OCSP
// staple from a real responder, and is judged by certmagic (expiry,
// renewal window, ARI identifier) as the untrimmed leaf is.
func TestTrimmedLeafServesAndRenews(t *testing.T) {
	ca, err := acmetest.NewTestCA("trim CA")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := acmetest.StartOCSPResponder(ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()

	const stapled, fresh, due = "staple.trim.test", "fresh.trim.test", "due.trim.test"
	dir := t.TempDir()
	cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dir), []string{stapled, fresh, due})
	fst := &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	stored := map[string]*x509.Certificate{ // as issued, untrimmed
		stapled: plantOCSP(t, fst, issuerKey, stapled, ca, resp.URL(), 24*time.Hour),
		fresh:   plantWith(t, fst, issuerKey, fresh, ca, 24*time.Hour),
		// 40 min of lifetime: in certmagic's emergency window (under five
		// renewal check intervals left), so the background walk loads it
		// to renew (lazy.go, checkStored); the CA is unreachable here, so
		// it goes on serving
		due: plantWith(t, fst, issuerKey, due, ca, 40*time.Minute),
	}

	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: fst, OCSPCheckInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	// loaded through the lazy path (loadOne): the due and the stapled
	// one by the background walk, the fresh one by its first handshake
	testkit.WaitFor(t, 30*time.Second, "names indexed", func() error {
		if !m.stored.pending(fresh) {
			return errors.New("not yet")
		}
		return nil
	})

	for name, want := range stored {
		// served, and verified by the client against the CA
		state, err := verifiedHandshake(m, table, name, ca.Pool())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(state.PeerCertificates[0].Raw, want.Raw) {
			t.Fatalf("%s: served another certificate", name)
		}
		cached := m.cache.AllMatchingCertificates(name)
		if len(cached) != 1 {
			t.Fatalf("%s: %d certificates cached, want 1", name, len(cached))
		}
		cert := cached[0]
		leaf := cert.Leaf

		// trimmed: what leaftrim.go drops is gone
		if len(leaf.Extensions) != 1 || !leaf.Extensions[0].Id.Equal(oidSubjectAltName) {
			t.Errorf("%s: cached leaf keeps %d extensions, want the subjectAltName alone", name, len(leaf.Extensions))
		}
		if leaf.PublicKey != nil || leaf.Subject.Names != nil || leaf.Issuer.Names != nil || leaf.ExtKeyUsage != nil {
			t.Errorf("%s: cached leaf not trimmed (public key %T, %d subject attributes, %d issuer attributes, %d extended key usages)",
				name, leaf.PublicKey, len(leaf.Subject.Names), len(leaf.Issuer.Names), len(leaf.ExtKeyUsage))
		}
		// kept: what certmagic, acmez, crypto/tls and gatehouse read
		if !bytes.Equal(leaf.Raw, want.Raw) || !leaf.NotBefore.Equal(want.NotBefore) || !leaf.NotAfter.Equal(want.NotAfter) ||
			leaf.SerialNumber.Cmp(want.SerialNumber) != 0 || !bytes.Equal(leaf.AuthorityKeyId, want.AuthorityKeyId) ||
			!slices.Equal(leaf.DNSNames, want.DNSNames) || !slices.Equal(leaf.OCSPServer, want.OCSPServer) ||
			!slices.Equal(leaf.CRLDistributionPoints, want.CRLDistributionPoints) ||
			leaf.Subject.CommonName != want.Subject.CommonName || leaf.Issuer.CommonName != want.Issuer.CommonName ||
			leaf.PublicKeyAlgorithm != want.PublicKeyAlgorithm {
			t.Errorf("%s: a field something reads changed in the trim", name)
		}
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("%s: VerifyHostname on the trimmed leaf: %v", name, err)
		}
		hello := &tls.ClientHelloInfo{ServerName: name, SupportedVersions: []uint16{tls.VersionTLS13},
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}, SupportedCurves: []tls.CurveID{tls.X25519}}
		if err := hello.SupportsCertificate(&tls.Certificate{Certificate: cert.Certificate.Certificate,
			PrivateKey: cert.Certificate.PrivateKey, Leaf: leaf}); err != nil {
			t.Errorf("%s: crypto/tls SupportsCertificate on the trimmed leaf: %v", name, err)
		}

		// certmagic's judgement is the untrimmed leaf's
		mcfg, err := m.configForCert(cert)
		if err != nil {
			t.Fatal(err)
		}
		untrimmed := certmagic.Certificate{Certificate: tls.Certificate{Leaf: want}}
		if got, w := cert.NeedsRenewal(mcfg), untrimmed.NeedsRenewal(mcfg); got != w {
			t.Errorf("%s: certmagic says renewal needed %v on the trimmed leaf, %v on the issued one", name, got, w)
		}
		// gatehouse's own renewal time (the walk's and the inventory's)
		ratio := certmagic.DefaultRenewalWindowRatio
		if got, w := dueAt(leaf, acme.RenewalInfo{}, ratio, time.Minute), dueAt(want, acme.RenewalInfo{}, ratio, time.Minute); !got.Equal(w) {
			t.Errorf("%s: due at %v on the trimmed leaf, %v on the issued one", name, got, w)
		}
		if cert.Expired() != untrimmed.Expired() || cert.Lifetime() != untrimmed.Lifetime() {
			t.Errorf("%s: expiry or lifetime differ after the trim", name)
		}
		gotID, err1 := acme.ARIUniqueIdentifier(leaf)
		wantID, err2 := acme.ARIUniqueIdentifier(want)
		if err1 != nil || err2 != nil || gotID != wantID {
			t.Errorf("%s: ARI identifier %q (%v), want %q (%v)", name, gotID, err1, wantID, err2)
		}
	}

	// the certificate naming a responder gets its Good staple
	testkit.WaitFor(t, 20*time.Second, "an OCSP staple", func() error {
		state, err := verifiedHandshake(m, table, stapled, ca.Pool())
		if err != nil {
			return err
		}
		if len(state.OCSPResponse) == 0 {
			return errors.New("handshake without a staple")
		}
		return nil
	})
	if m.StoredLoads() != int64(len(stored)) {
		t.Fatalf("%d certificates loaded from storage, want %d (the trim applies to those)", m.StoredLoads(), len(stored))
	}
}

// verifiedHandshake handshakes with name through m as the proxy does,
// the client verifying the chain against roots.
func verifiedHandshake(m *Manager, table *routes.Table, name string, roots *x509.CertPool) (tls.ConnectionState, error) {
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
	c := tls.Client(cli, &tls.Config{ServerName: name, RootCAs: roots})
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

// plantOCSP stores a certificate naming the OCSP responder at ocspURL, as
// certmagic stores one.
func plantOCSP(t *testing.T, st certmagic.Storage, issuerKey, name string, ca *acmetest.TestCA, ocspURL string, validity time.Duration) *x509.Certificate {
	t.Helper()
	certPEM, keyPEM, leaf, err := ca.Issue([]string{name}, ocspURL, validity)
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := json.Marshal(map[string]any{"sans": []string{name}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for key, v := range map[string][]byte{
		certmagic.StorageKeys.SitePrivateKey(issuerKey, name): keyPEM,
		certmagic.StorageKeys.SiteCert(issuerKey, name):       certPEM,
		certmagic.StorageKeys.SiteMeta(issuerKey, name):       meta,
	} {
		if err := st.Store(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	return leaf
}
