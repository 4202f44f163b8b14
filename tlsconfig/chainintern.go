package tlsconfig

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"sync"

	"github.com/caddyserver/certmagic"
)

// One copy of an issuer chain for every certificate it signed.
//
// certmagic makes each cached certificate from its stored PEM bundle:
// every certificate of the chain is decoded into bytes of its own, so
// 100,000 names signed by one intermediate hold 100,000 copies of it
// (Let's Encrypt's ~1.1 KB each: ~110 MB). A certificate loaded from
// storage (lazy.go, loadOne) has the certificates after its leaf
// replaced by one shared copy of the same bytes: what a handshake sends
// and certmagic's hash of the chain are unchanged.
//
// The replacement writes into the chain certmagic has just cached, so it
// is done only while nothing else can read it: before loadOne lets the
// name's waiting handshakes go, and only for a certificate that names
// that one name and no pattern (a handshake for another name, or one a
// wildcard matches, does not wait for this load). Certificates certmagic
// obtains or renews itself keep their own copies until their next load.

// maxInterned bounds the shared chain certificates: issuers are few (a
// CA has a handful of intermediates at a time); past this many, new ones
// are left as they are rather than kept for the process's life.
const maxInterned = 256

var chainCerts = struct {
	sync.Mutex
	by     map[[32]byte][]byte
	parsed map[[32]byte]*x509.Certificate
}{by: map[[32]byte][]byte{}, parsed: map[[32]byte]*x509.Certificate{}}

// internDER returns the shared copy of der (adding der when it is new),
// or der itself when the table is full.
func internDER(der []byte) []byte {
	sum := sha256.Sum256(der)
	chainCerts.Lock()
	defer chainCerts.Unlock()
	if s, ok := chainCerts.by[sum]; ok && bytes.Equal(s, der) {
		return s
	}
	if len(chainCerts.by) >= maxInterned {
		return der
	}
	s := bytes.Clone(der) // exactly its length: der may sit in a larger block
	chainCerts.by[sum] = s
	return s
}

// shareChain points the certificates after cert's leaf at the shared
// copies; see above for when it may be called.
func shareChain(cert certmagic.Certificate) {
	chain := cert.Certificate.Certificate
	for i := 1; i < len(chain); i++ {
		chain[i] = internDER(chain[i])
	}
}

// parsedIssuer returns der parsed, one shared *x509.Certificate per
// issuer: the stapler (ocsp.go) keeps an issuer for every certificate it
// staples, ~2.4 KB parsed; the CRL watcher (crl.go) parses one per
// certificate it registers. Both only read it.
// chainIssuer is the parsed certificate after cert's leaf (shared, see
// parsedIssuer), or nil when the chain has none or it does not parse.
func chainIssuer(cert tls.Certificate) *x509.Certificate {
	if len(cert.Certificate) < 2 {
		return nil
	}
	iss, err := parsedIssuer(cert.Certificate[1])
	if err != nil {
		return nil
	}
	return iss
}

func parsedIssuer(der []byte) (*x509.Certificate, error) {
	sum := sha256.Sum256(der)
	chainCerts.Lock()
	c, ok := chainCerts.parsed[sum]
	chainCerts.Unlock()
	if ok && bytes.Equal(c.Raw, der) {
		return c, nil
	}
	c, err := x509.ParseCertificate(internDER(der))
	if err != nil {
		return nil, err
	}
	chainCerts.Lock()
	defer chainCerts.Unlock()
	if prev, ok := chainCerts.parsed[sum]; ok && bytes.Equal(prev.Raw, der) {
		return prev, nil // parsed meanwhile
	}
	if len(chainCerts.parsed) < maxInterned {
		chainCerts.parsed[sum] = c
	}
	return c, nil
}
