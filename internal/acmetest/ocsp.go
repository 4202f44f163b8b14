package acmetest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// TestCA is a self-signed ECDSA P-256 root that issues leaves directly.
type TestCA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// NewTestCA creates a root named name, valid from an hour ago for ten years.
func NewTestCA(name string) (*TestCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &TestCA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// Pool returns a pool holding the root.
func (c *TestCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

// Issue issues an ECDSA P-256 server certificate for names (DNS names or IP
// literals) with NotBefore = now (whole seconds) and NotAfter = NotBefore +
// validity (24 h if validity <= 0). ocspURL, if not empty, goes into the AIA.
// certPEM holds the leaf then the root, keyPEM a PKCS#8 "PRIVATE KEY"; both
// load with tls.X509KeyPair.
func (c *TestCA) Issue(names []string, ocspURL string, validity time.Duration) (certPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	if len(names) == 0 {
		return nil, nil, nil, errors.New("acmetest: Issue needs at least one name")
	}
	if validity <= 0 {
		validity = 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	nb := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    nb,
		NotAfter:     nb.Add(validity),
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
	if ocspURL != "" {
		tmpl.OCSPServer = []string{ocspURL}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c.CertPEM...)
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
	return certPEM, keyPEM, leaf, nil
}

// OCSPResponder is an HTTP OCSP responder on 127.0.0.1 answering GET and
// POST requests with responses signed directly by the issuer's key (no
// delegated responder certificate, none embedded).
type OCSPResponder struct {
	srv *http.Server
	url string

	mu         sync.Mutex
	issuer     *x509.Certificate
	signer     crypto.Signer
	status     map[string]statusEntry // serial (hex) -> status
	statusFunc func(*big.Int) (int, bool)
	thisOffset time.Duration
	nextAfter  time.Duration
	failCode   int
	requests   int
	perSerial  map[string]int
}

type statusEntry struct {
	status    int
	revokedAt time.Time
}

// StartOCSPResponder starts a responder for certificates issued by issuer.
// issuer and signer may both be nil, to learn the URL before the issuer
// exists (e.g. for PebbleOptions.OCSPResponderURL); until SetIssuer is
// called the responder answers "tryLater".
func StartOCSPResponder(issuer *x509.Certificate, signer crypto.Signer) (*OCSPResponder, error) {
	if (issuer == nil) != (signer == nil) {
		return nil, errors.New("acmetest: issuer and signer must both be set or both be nil")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("acmetest: ocsp listen: %w", err)
	}
	r := &OCSPResponder{
		issuer:     issuer,
		signer:     signer,
		status:     make(map[string]statusEntry),
		perSerial:  make(map[string]int),
		thisOffset: -time.Minute,
		nextAfter:  time.Hour,
		url:        "http://" + l.Addr().String() + "/",
	}
	r.srv = &http.Server{
		Handler:           r,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	go r.srv.Serve(l)
	return r, nil
}

// URL returns the responder URL, http://127.0.0.1:PORT/.
func (r *OCSPResponder) URL() string { return r.url }

// SetIssuer sets (or replaces) the issuer whose certificates are answered
// for and the key that signs responses.
func (r *OCSPResponder) SetIssuer(issuer *x509.Certificate, signer crypto.Signer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.issuer, r.signer = issuer, signer
}

// SetStatus sets the status of serial: ocsp.Good, ocsp.Revoked (revoked now,
// reason unspecified) or ocsp.Unknown. Serials never set are Good unless a
// status func says otherwise.
func (r *OCSPResponder) SetStatus(serial *big.Int, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[serial.Text(16)] = statusEntry{status: status, revokedAt: time.Now().Add(-time.Second).Truncate(time.Second)}
}

// SetStatusFunc sets a fallback for serials without a SetStatus entry (e.g.
// (*Pebble).OCSPStatus); ok == false answers Unknown. nil restores the
// default (Good).
func (r *OCSPResponder) SetStatusFunc(f func(serial *big.Int) (status int, ok bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statusFunc = f
}

// SetValidity sets the window of the responses produced from now on:
// ThisUpdate = now + thisUpdateOffset (usually <= 0), NextUpdate =
// ThisUpdate + nextUpdate. Default: -1 min and 1 h. Times are whole seconds
// (GeneralizedTime). nextUpdate <= 0 omits NextUpdate.
func (r *OCSPResponder) SetValidity(thisUpdateOffset, nextUpdate time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.thisOffset, r.nextAfter = thisUpdateOffset, nextUpdate
}

// Fail makes the responder answer every request with HTTP status code (e.g.
// 500 or 503) until called with 0.
func (r *OCSPResponder) Fail(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failCode = code
}

// Requests returns how many OCSP requests (well-formed or not) arrived.
func (r *OCSPResponder) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// RequestsFor returns how many well-formed requests asked about serial.
func (r *OCSPResponder) RequestsFor(serial *big.Int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.perSerial[serial.Text(16)]
}

// Close shuts the responder down, waiting at most a few seconds.
func (r *OCSPResponder) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if r.srv.Shutdown(ctx) != nil {
		r.srv.Close()
	}
}

func (r *OCSPResponder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var der []byte
	var err error
	switch req.Method {
	case http.MethodPost:
		der, err = io.ReadAll(io.LimitReader(req.Body, 64<<10))
	case http.MethodGet:
		// GET {url}/{url-encoding of base64 encoding of the DER request}.
		var p string
		p, err = url.PathUnescape(strings.TrimPrefix(req.URL.EscapedPath(), "/"))
		if err == nil {
			p = strings.TrimPrefix(p, "/")
			der, err = base64.StdEncoding.DecodeString(p)
			if err != nil {
				der, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(p, "="))
			}
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}

	r.mu.Lock()
	r.requests++
	failCode := r.failCode
	r.mu.Unlock()
	if failCode != 0 {
		http.Error(w, "acmetest: responder failing on purpose", failCode)
		return
	}
	if err != nil {
		writeOCSP(w, ocsp.MalformedRequestErrorResponse, 0)
		return
	}
	ocspReq, err := ocsp.ParseRequest(der)
	if err != nil {
		writeOCSP(w, ocsp.MalformedRequestErrorResponse, 0)
		return
	}
	resp, maxAge := r.respond(ocspReq)
	writeOCSP(w, resp, maxAge)
}

func writeOCSP(w http.ResponseWriter, b []byte, maxAge time.Duration) {
	w.Header().Set("Content-Type", "application/ocsp-response")
	if maxAge > 0 {
		w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d, public", int(maxAge.Seconds())))
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (r *OCSPResponder) respond(req *ocsp.Request) ([]byte, time.Duration) {
	r.mu.Lock()
	issuer, signer := r.issuer, r.signer
	entry, set := r.status[req.SerialNumber.Text(16)]
	statusFunc := r.statusFunc
	thisOffset, nextAfter := r.thisOffset, r.nextAfter
	r.perSerial[req.SerialNumber.Text(16)]++
	r.mu.Unlock()

	if issuer == nil {
		return ocsp.TryLaterErrorResponse, 0
	}
	if !issuerMatches(req, issuer) {
		return ocsp.UnauthorizedErrorResponse, 0
	}
	if !set {
		entry = statusEntry{status: ocsp.Good}
		if statusFunc != nil {
			st, ok := statusFunc(req.SerialNumber)
			if !ok {
				st = ocsp.Unknown
			}
			entry = statusEntry{status: st, revokedAt: time.Now().Add(-time.Second).Truncate(time.Second)}
		}
	}
	now := time.Now()
	this := now.Add(thisOffset).Truncate(time.Second)
	tmpl := ocsp.Response{
		Status:       entry.status,
		SerialNumber: req.SerialNumber,
		ThisUpdate:   this,
		IssuerHash:   req.HashAlgorithm,
	}
	var maxAge time.Duration
	if nextAfter > 0 {
		tmpl.NextUpdate = this.Add(nextAfter).Truncate(time.Second)
		maxAge = tmpl.NextUpdate.Sub(now)
	}
	if entry.status == ocsp.Revoked {
		tmpl.RevokedAt = entry.revokedAt
		tmpl.RevocationReason = ocsp.Unspecified
	}
	b, err := ocsp.CreateResponse(issuer, issuer, tmpl, signer)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, 0
	}
	return b, maxAge
}

// issuerMatches checks the request's CertID issuer hashes against issuer.
func issuerMatches(req *ocsp.Request, issuer *x509.Certificate) bool {
	if !req.HashAlgorithm.Available() {
		return false
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return false
	}
	h := req.HashAlgorithm.New()
	h.Write(issuer.RawSubject)
	nameHash := h.Sum(nil)
	h.Reset()
	h.Write(spki.PublicKey.RightAlign())
	keyHash := h.Sum(nil)
	return bytes.Equal(nameHash, req.IssuerNameHash) && bytes.Equal(keyHash, req.IssuerKeyHash)
}
