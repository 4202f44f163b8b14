package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// ca is the bench's private CA.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func newCA() (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gatehouse bench CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func (c *ca) save(dir string) error {
	kder, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), c.pem, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

func loadCA(dir string) (*ca, error) {
	cp, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	kp, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(cp)
	kb, _ := pem.Decode(kp)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("bad CA files in %s", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	return &ca{cert: cert, key: k.(crypto.Signer), pem: cp}, nil
}

// issue returns a leaf for names: ECDSA P-256, or RSA-2048 when rsaKey.
func (c *ca) issue(names []string, rsaKey bool, serial int64, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	var key crypto.Signer
	if rsaKey {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if rsaKey {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// siteCerts writes the CA, an ECDSA and an RSA leaf for the main
// scenarios into dir: <name>.crt, <name>.key and <name>.pem (both, for
// HAProxy); and the TLS upstream's leaf (nameUpstreamTLS, for that name
// and 127.0.0.1: each proxy dials 127.0.0.1 and verifies one or the
// other).
func siteCerts(dir string) (*ca, error) {
	c, err := newCA()
	if err != nil {
		return nil, err
	}
	if err := c.save(dir); err != nil {
		return nil, err
	}
	for i, leaf := range []struct {
		name string
		rsa  bool
	}{{nameEC, false}, {nameRSA, true}, {nameUp, false}, {nameTLSUp, false}, {nameH2CUp, false}, {nameUpstreamTLS, false}} {
		names := []string{leaf.name}
		if leaf.name == nameUpstreamTLS {
			names = append(names, "127.0.0.1")
		}
		cp, kp, err := c.issue(names, leaf.rsa, int64(i+2), 90*24*time.Hour)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(dir, leaf.name)
		if err := os.WriteFile(base+".crt", cp, 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(base+".key", kp, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(base+".pem", append(append([]byte{}, cp...), kp...), 0o600); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Many names: certificates already in storage, written where certmagic
// looks for an ACME-managed name: certificates/<issuer key>/<name>/
// <name>.{crt,key,json}, the issuer key being the one gatehouse's ACME
// issuer computes for its directory URL.

// namesDirectory is the ACME directory of the many-names config: a
// loopback port nothing listens on, so any attempt to reach the CA fails
// at once (and is visible in the log).
const namesDirectory = "https://127.0.0.1:9/directory"

func manyName(i int) string { return fmt.Sprintf("site%06d.bench.test", i) }

type namesMeta struct {
	N       int       `json:"n"`
	Created time.Time `json:"created"`
}

// ensureNames makes (or reuses) a storage tree holding n names'
// certificates under cacheDir/names-<n>, and returns its directory.
// A cache older than 30 days is remade (the certificates are valid 90
// days; certmagic would start renewing at 30 days left).
func ensureNames(cacheDir string, n int, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(cacheDir, fmt.Sprintf("names-%d", n))
	var meta namesMeta
	if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil && json.Unmarshal(b, &meta) == nil &&
		meta.N == n && time.Since(meta.Created) < 30*24*time.Hour {
		return dir, nil
	}
	logf("generating %d certificates into %s (cached for later runs)", n, dir)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	c, err := newCA()
	if err != nil {
		return "", err
	}
	if err := c.save(dir); err != nil {
		return "", err
	}
	issuerKey := (&certmagic.ACMEIssuer{CA: namesDirectory}).IssuerKey()
	storage := filepath.Join(dir, "storage")
	var list strings.Builder
	for i := 0; i < n; i++ {
		list.WriteString(manyName(i))
		list.WriteByte('\n')
	}
	if err := os.WriteFile(filepath.Join(dir, "names.txt"), []byte(list.String()), 0o644); err != nil {
		return "", err
	}
	start := time.Now()
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := writeStored(c, storage, issuerKey, manyName(i), int64(i+100)); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return "", firstErr
	}
	logf("generated %d certificates in %s", n, time.Since(start).Round(time.Millisecond))
	b, _ := json.Marshal(namesMeta{N: n, Created: time.Now()})
	return dir, os.WriteFile(filepath.Join(dir, "meta.json"), b, 0o644)
}

func writeStored(c *ca, storage, issuerKey, name string, serial int64) error {
	cp, kp, err := c.issue([]string{name}, false, serial, 90*24*time.Hour)
	if err != nil {
		return err
	}
	meta, _ := json.Marshal(map[string]any{
		"sans":        []string{name},
		"issuer_data": map[string]any{"url": "https://127.0.0.1:9/cert/" + name},
	})
	files := []struct {
		key  string
		data []byte
	}{
		{certmagic.StorageKeys.SiteCert(issuerKey, name), cp},
		{certmagic.StorageKeys.SitePrivateKey(issuerKey, name), kp},
		{certmagic.StorageKeys.SiteMeta(issuerKey, name), meta},
	}
	for _, f := range files {
		p := filepath.Join(storage, filepath.FromSlash(f.key))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			return err
		}
	}
	return nil
}
