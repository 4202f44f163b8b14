package tlsconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func csrFor(t *testing.T, dns []string, ips []net.IP) *x509.CertificateRequest {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: dns, IPAddresses: ips}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func parseChain(t *testing.T, pemBytes []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, pemBytes = pem.Decode(pemBytes)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func TestInternalIssuerSignsAndKeepsItsRoot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := &certmagic.FileStorage{Path: dir}
	iss := newInternalIssuer(store, quietLog())
	got, err := iss.Issue(ctx, csrFor(t, []string{"localhost", "db.internal"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}))
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, got.Certificate)
	if len(chain) != 2 {
		t.Fatalf("chain of %d certificates, want leaf + intermediate", len(chain))
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	for _, name := range []string{"localhost", "db.internal", "127.0.0.1", "::1"} {
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("leaf does not verify for %s: %v", name, err)
		}
	}
	if chain[0].NotAfter.After(chain[1].NotAfter) {
		t.Error("leaf outlives its intermediate")
	}

	// another instance on the same storage signs under the same root
	other := newInternalIssuer(store, quietLog())
	r2, err := other.Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := iss.Root(ctx)
	if !r1.Equal(r2) {
		t.Error("a second issuer on the same storage made another root")
	}

	// a root without its key is an error, never silently replaced
	if err := os.Remove(filepath.Join(dir, "pki", "root.key")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "pki", "intermediate.crt")); err != nil {
		t.Fatal(err)
	}
	_, err = newInternalIssuer(store, quietLog()).Root(ctx)
	if err == nil || !strings.Contains(err.Error(), "key pki/root.key is missing") {
		t.Errorf("root without key: err = %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "pki", "root.crt")); string(after) != string(rootPEM) {
		t.Error("root certificate was replaced")
	}
}

// An intermediate with a third of its life left is replaced before it
// signs again, under the same root.
func TestInternalIntermediateRenewed(t *testing.T) {
	ctx := context.Background()
	store := &certmagic.FileStorage{Path: t.TempDir()}
	iss := newInternalIssuer(store, quietLog())
	root, err := iss.Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, rootKey, err := loadPair(ctx, store, RootCertKey, rootKeyKey)
	if err != nil {
		t.Fatal(err)
	}
	// replace the stored intermediate with one about to expire
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big1(), Subject: pkix.Name{CommonName: "old intermediate"},
		NotBefore: now.Add(-300 * 24 * time.Hour), NotAfter: now.Add(10 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := certmagic.PEMEncodePrivateKey(key)
	_ = store.Store(ctx, intermediateKeyKey, keyPEM)
	_ = store.Store(ctx, intermediateCertKey, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))

	fresh := newInternalIssuer(store, quietLog())
	got, err := fresh.Issue(ctx, csrFor(t, []string{"localhost"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, got.Certificate)
	if chain[1].Subject.CommonName == "old intermediate" {
		t.Fatal("signed with the expiring intermediate")
	}
	if err := chain[1].CheckSignatureFrom(root); err != nil {
		t.Errorf("new intermediate not under the root: %v", err)
	}
	if time.Until(chain[0].NotAfter) < 6*24*time.Hour {
		t.Errorf("leaf cut short: expires %s", chain[0].NotAfter)
	}
}

func big1() *big.Int { return big.NewInt(1) }
