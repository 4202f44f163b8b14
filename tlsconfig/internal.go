package tlsconfig

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The internal issuer signs certificates for names no public CA will:
// localhost, *.internal, IP addresses. Its root is made once and kept in
// storage with the certificates, so every gatehouse sharing the storage
// signs under the same root, and a user trusts it once.
//
// It is a certmagic.Issuer, so certmagic keeps its short-lived leaves
// renewed exactly as it does ACME certificates: nothing here schedules.

// InternalIssuerKey is the issuer key internal certificates are stored
// under (certificates/internal/<name>/).
const InternalIssuerKey = "internal"

// Storage keys of the local CA. With the file backend, RootCertKey is
// the file <storage dir>/pki/root.crt a user adds to a trust store.
const (
	RootCertKey         = "pki/root.crt"
	rootKeyKey          = "pki/root.key"
	intermediateCertKey = "pki/intermediate.crt"
	intermediateKeyKey  = "pki/intermediate.key"
	pkiLockName         = "pki_local_ca"
)

// Lifetimes: like Caddy's local CA, a long-lived root that is trusted
// once, and short-lived leaves that certmagic renews (at a third of
// their life left). The intermediate is replaced when a third of its
// life is left, so a leaf never outlives its issuer.
const (
	rootLifetime         = 10 * 365 * 24 * time.Hour
	intermediateLifetime = 365 * 24 * time.Hour
	internalLeafLifetime = 7 * 24 * time.Hour
)

// internalIssuer signs leaves from the local CA.
type internalIssuer struct {
	storage certmagic.Storage
	log     *slog.Logger
	leaf    time.Duration

	mu       sync.Mutex
	root     *x509.Certificate
	inter    *x509.Certificate
	interKey crypto.Signer
}

func newInternalIssuer(storage certmagic.Storage, log *slog.Logger) *internalIssuer {
	return &internalIssuer{storage: storage, log: log, leaf: internalLeafLifetime}
}

// IssuerKey implements certmagic.Issuer.
func (*internalIssuer) IssuerKey() string { return InternalIssuerKey }

// Issue implements certmagic.Issuer: it signs the CSR's names with the
// intermediate, returning leaf + intermediate in PEM.
func (iss *internalIssuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("internal issuer: CSR signature: %w", err)
	}
	if len(csr.DNSNames) == 0 && len(csr.IPAddresses) == 0 {
		return nil, errors.New("internal issuer: CSR names no DNS name or IP address")
	}
	inter, key, err := iss.signer(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(iss.leaf)
	if notAfter.After(inter.NotAfter) {
		notAfter = inter.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// a minute of backdating absorbs small clock differences
		// between gatehouse and its clients
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    notAfter,
		DNSNames:    csr.DNSNames,
		IPAddresses: csr.IPAddresses,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, csr.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("internal issuer: signing: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw})...)
	return &certmagic.IssuedCertificate{Certificate: chain}, nil
}

// signer returns the intermediate and its key, loading or creating the
// CA first, and replacing an intermediate with a third of its life left.
func (iss *internalIssuer) signer(ctx context.Context) (*x509.Certificate, crypto.Signer, error) {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	if iss.inter != nil && !renewDue(iss.inter, time.Now()) {
		return iss.inter, iss.interKey, nil
	}
	if err := iss.load(ctx); err != nil {
		return nil, nil, err
	}
	return iss.inter, iss.interKey, nil
}

// Root returns the root certificate, creating the CA if it does not
// exist yet.
func (iss *internalIssuer) Root(ctx context.Context) (*x509.Certificate, error) {
	if _, _, err := iss.signer(ctx); err != nil {
		return nil, err
	}
	iss.mu.Lock()
	defer iss.mu.Unlock()
	return iss.root, nil
}

func renewDue(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotAfter.Sub(now) < life/3
}

// load reads the CA from storage, creating what is missing, under a
// storage lock so gatehouse instances sharing storage make one root.
// Called with iss.mu held.
func (iss *internalIssuer) load(ctx context.Context) error {
	if err := iss.storage.Lock(ctx, pkiLockName); err != nil {
		return fmt.Errorf("internal issuer: locking storage: %w", err)
	}
	defer func() {
		if err := iss.storage.Unlock(context.Background(), pkiLockName); err != nil {
			iss.log.Warn("internal issuer: unlocking storage", "error", err)
		}
	}()

	root, rootKey, err := loadPair(ctx, iss.storage, RootCertKey, rootKeyKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		root, rootKey, err = iss.create(ctx, nil, nil, RootCertKey, rootKeyKey)
		if err != nil {
			return err
		}
		iss.root = root
		iss.log.Warn("internal issuer: created a new local root CA; add it to the trust store of the clients that should trust gatehouse's internal certificates",
			"root", iss.rootLocation(), "fingerprint_sha256", fingerprint(root), "expires", root.NotAfter)
	case err != nil:
		return fmt.Errorf("internal issuer: loading root: %w", err)
	}

	inter, interKey, err := loadPair(ctx, iss.storage, intermediateCertKey, intermediateKeyKey)
	now := time.Now()
	switch {
	case err == nil && inter.CheckSignatureFrom(root) == nil && !renewDue(inter, now):
	case err == nil || errors.Is(err, fs.ErrNotExist):
		// missing, expiring, or signed by another root: make a new one
		// (leaves signed by the old one carry it in their chain)
		inter, interKey, err = iss.create(ctx, root, rootKey, intermediateCertKey, intermediateKeyKey)
		if err != nil {
			return err
		}
		iss.log.Info("internal issuer: new intermediate", "expires", inter.NotAfter)
	default:
		return fmt.Errorf("internal issuer: loading intermediate: %w", err)
	}
	if iss.root == nil || !iss.root.Equal(root) {
		iss.log.Info("internal issuer: local root CA", "root", iss.rootLocation(), "fingerprint_sha256", fingerprint(root), "expires", root.NotAfter)
	}
	iss.root, iss.inter, iss.interKey = root, inter, interKey
	return nil
}

// rootLocation says where a user finds the root: a file path for the
// file backend, the storage key otherwise.
func (iss *internalIssuer) rootLocation() string {
	if fsStore, ok := iss.storage.(*certmagic.FileStorage); ok {
		return filepath.Join(fsStore.Path, filepath.FromSlash(RootCertKey))
	}
	return "storage key " + RootCertKey + " (print it with: gatehouse certs --root)"
}

// create makes a CA certificate: a self-signed root when parent is nil,
// else an intermediate under parent. The key is stored before the
// certificate, so a certificate in storage always has its key.
func (iss *internalIssuer) create(ctx context.Context, parent *x509.Certificate, parentKey crypto.Signer, certKey, keyKey string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signer := crypto.Signer(key)
	if parent == nil {
		tmpl.Subject = pkix.Name{CommonName: fmt.Sprintf("gatehouse Local Root - %d ECC", now.Year()), Organization: []string{"gatehouse"}}
		tmpl.NotAfter = now.Add(rootLifetime)
		tmpl.MaxPathLen = 1
		parent = tmpl
	} else {
		tmpl.Subject = pkix.Name{CommonName: fmt.Sprintf("gatehouse Local Intermediate - %d ECC", now.Year()), Organization: []string{"gatehouse"}}
		tmpl.NotAfter = now.Add(intermediateLifetime)
		if tmpl.NotAfter.After(parent.NotAfter) {
			tmpl.NotAfter = parent.NotAfter
		}
		tmpl.MaxPathLenZero = true
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, fmt.Errorf("internal issuer: creating %s: %w", certKey, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := iss.storage.Store(ctx, keyKey, keyPEM); err != nil {
		return nil, nil, fmt.Errorf("internal issuer: storing %s: %w", keyKey, err)
	}
	if err := iss.storage.Store(ctx, certKey, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return nil, nil, fmt.Errorf("internal issuer: storing %s: %w", certKey, err)
	}
	return cert, key, nil
}

// loadPair reads a CA certificate and its key. A certificate without its
// key is an error, never a reason to make a new CA: that would silently
// replace a root users already trust.
func loadPair(ctx context.Context, s certmagic.Storage, certKey, keyKey string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := s.Load(ctx, certKey)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("%s holds no PEM certificate", certKey)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certKey, err)
	}
	keyPEM, err := s.Load(ctx, keyKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s exists but its key %s is missing: restore the key from a backup, or remove both to make a new CA (clients must then trust the new root)", certKey, keyKey)
		}
		return nil, nil, err
	}
	signer, err := certmagic.PEMDecodePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyKey, err)
	}
	if !publicKeyMatches(cert.PublicKey, signer.Public()) {
		return nil, nil, fmt.Errorf("%s does not belong to %s", keyKey, certKey)
	}
	return cert, signer, nil
}

func publicKeyMatches(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	return s.Add(s, big.NewInt(1)), nil
}

// fingerprint is the SHA-256 of a certificate, as trust stores show it.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// internalConfig returns (creating once) the certmagic config that signs
// from the local CA. Called with m.mu held.
func (m *Manager) internalConfig() *certmagic.Config {
	if m.internal == nil {
		m.internalCA = newInternalIssuer(m.storage, m.log)
		c := m.newConfig()
		c.Issuers = []certmagic.Issuer{m.internalCA}
		c.DisableARI = true // no ACME CA to ask
		m.internal = c
	}
	return m.internal
}

// applyInternal makes the names of a tls = "internal" route served from
// the local CA: exact names and IP addresses get their own certificate,
// "*.suffix" one wildcard certificate (a local CA needs no DNS-01 for
// it), and "*" a certificate per name on demand. The CA itself is
// loaded (or created) now, so its location is logged at startup.
// Called with m.mu held.
func (m *Manager) applyInternal(cfg *routes.Config, e *routes.Entry, toManage map[*certmagic.Config][]string) error {
	c := m.internalConfig()
	if _, err := m.internalCA.Root(m.ctx); err != nil {
		return fmt.Errorf("route #%d: %w", e.Index+1, err)
	}
	for _, h := range e.Hosts {
		if h == "*" {
			m.prepareOnDemand(cfg, e)
			continue
		}
		if prev, seen := m.byName[h]; seen && prev == c {
			continue
		}
		m.byName[h] = c
		m.status.set(h, "internal", stateWaiting, nil)
		toManage[c] = append(toManage[c], h)
	}
	return nil
}
