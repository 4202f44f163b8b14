package acmetest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/core"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"golang.org/x/crypto/ocsp"
)

// PebbleOptions configures StartPebble. The zero value of every field except
// DNSAddr is usable.
type PebbleOptions struct {
	// HTTPPort and TLSPort are the ports Pebble's VA dials, on the address the
	// DNS server returns for the identifier, for HTTP-01 and TLS-ALPN-01
	// challenges: the listeners of the server under test. 0 leaves that
	// challenge type undialable (Pebble would dial port 0).
	HTTPPort, TLSPort int

	// DNSAddr is the "127.0.0.1:port" of the resolver the VA uses (queried
	// over TCP). Required, and must be a loopback address: without it Pebble
	// would use the system resolver.
	DNSAddr string

	// Profiles maps profile name to certificate validity. Pebble issues
	// NotAfter = NotBefore + validity - 1s, with NotBefore = issuance time (no
	// backdating). A zero validity means Pebble's default (90 days); validity
	// is rounded up to whole seconds. Empty: one profile "default". With
	// several profiles, an order that names none gets a random one.
	Profiles map[string]time.Duration

	// OCSPResponderURL, if set, is put into the AIA of every issued
	// certificate. Pebble does not answer OCSP itself: see StartOCSPResponder
	// and IntermediateAndKey.
	OCSPResponderURL string

	// KeyAlgorithm of Pebble's root and intermediate: "ecdsa" (default),
	// "rsa" or "mldsa".
	KeyAlgorithm string

	// AlwaysValid makes the VA accept every challenge without contacting
	// anything (PEBBLE_VA_ALWAYS_VALID=1).
	AlwaysValid bool

	// Sleep keeps the VA's random 0-5 s sleep before each validation. By
	// default it is disabled (PEBBLE_VA_NOSLEEP=1).
	Sleep bool

	// NoBadNonce turns off Pebble's default rejection of 5% of good nonces
	// (PEBBLE_WFE_NONCEREJECT=0). Leave it off to exercise client retries.
	NoBadNonce bool

	// AuthzReuse is the percentage of identifiers for which Pebble reuses an
	// existing valid authorization (PEBBLE_AUTHZREUSE). 0 keeps Pebble's
	// default of 50; a negative value disables reuse.
	AuthzReuse int

	// AlternateRoots is the number of extra root chains (PEBBLE_ALTERNATE_ROOTS);
	// ChainLength the number of intermediates per chain (default 1).
	AlternateRoots, ChainLength int

	// Log receives Pebble's log output and its HTTP servers' errors.
	// Default io.Discard.
	Log io.Writer

	// ARIRetryAfter, if positive, replaces the Retry-After that Pebble sends
	// with every renewalInfo (ARI) answer (a fixed 6 hours), so a client that
	// honours it polls again within a test. Rounded up to whole seconds.
	ARIRetryAfter time.Duration

	// NoARI hides ARI: the directory does not list renewalInfo, as with a
	// CA that does not implement RFC 9773.
	NoARI bool
}

// Pebble is an in-process Pebble ACME CA with its ACME API and its
// management API each on an HTTPS listener on 127.0.0.1.
type Pebble struct {
	// DirectoryURL is the ACME directory, https://127.0.0.1:PORT/dir.
	DirectoryURL string
	// ManagementURL is the base of the management API, https://127.0.0.1:PORT
	// (paths /roots/0, /intermediates/0, /intermediate-keys/0,
	// /cert-status-by-serial/<hex>, POST /set-renewal-info/).
	ManagementURL string
	// CACertFile is a PEM file with the self-signed certificate that signs
	// the HTTPS certificate of both listeners (for gatehouse's [acme]
	// ca_root). It lives in a temporary directory removed by Close.
	CACertFile string

	dir      string
	httpsCA  *x509.Certificate
	tlsConf  *tls.Config
	errorLog *log.Logger
	ca       *ca.CAImpl
	db       *db.MemoryStore
	acmeH    http.Handler
	mgmtH    http.Handler

	mu        sync.Mutex
	acmeAddr  string
	mgmtAddr  string
	servers   []*http.Server
	orders    map[string]int // accepted new-order requests per identifier
	attempts  map[string]int // all new-order POSTs per identifier
	issued    map[string][]*x509.Certificate
	closed    bool
	stopped   bool
	pebbleLog *log.Logger
}

// envMu serialises the environment juggling around va.New and wfe.New,
// which read their PEBBLE_* settings from the process environment.
var envMu sync.Mutex

func withEnv(vars map[string]string, f func()) {
	envMu.Lock()
	defer envMu.Unlock()
	type saved struct {
		v  string
		ok bool
	}
	old := make(map[string]saved, len(vars))
	for k, v := range vars {
		ov, ok := os.LookupEnv(k)
		old[k] = saved{ov, ok}
		os.Setenv(k, v)
	}
	defer func() {
		for k, s := range old {
			if s.ok {
				os.Setenv(k, s.v)
			} else {
				os.Unsetenv(k)
			}
		}
	}()
	f()
}

func isLoopbackHostPort(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// StartPebble starts Pebble in-process. Call Close when done.
func StartPebble(opts PebbleOptions) (p *Pebble, err error) {
	if opts.DNSAddr == "" {
		return nil, errors.New("acmetest: PebbleOptions.DNSAddr is required")
	}
	if !isLoopbackHostPort(opts.DNSAddr) {
		return nil, fmt.Errorf("acmetest: PebbleOptions.DNSAddr %q is not a loopback host:port", opts.DNSAddr)
	}
	keyAlg := opts.KeyAlgorithm
	if keyAlg == "" {
		keyAlg = "ecdsa"
	}
	switch keyAlg {
	case "ecdsa", "rsa", "mldsa":
	default:
		return nil, fmt.Errorf("acmetest: unknown KeyAlgorithm %q", keyAlg)
	}
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	chainLength := opts.ChainLength
	if chainLength <= 0 {
		chainLength = 1
	}
	profiles := make(map[string]ca.Profile)
	for name, d := range opts.Profiles {
		var secs uint64
		if d > 0 {
			secs = uint64(math.Ceil(d.Seconds()))
		}
		profiles[name] = ca.Profile{Description: "acmetest profile " + name, ValidityPeriod: secs}
	}
	if len(profiles) == 0 {
		profiles["default"] = ca.Profile{Description: "The default profile"}
	}

	p = &Pebble{
		orders:   make(map[string]int),
		attempts: make(map[string]int),
		issued:   make(map[string][]*x509.Certificate),
	}
	p.dir, err = os.MkdirTemp("", "acmetest-pebble-")
	if err != nil {
		return nil, fmt.Errorf("acmetest: %w", err)
	}
	defer func() {
		if err != nil {
			p.Close()
			p = nil
		}
	}()
	if err = p.makeHTTPSCert(); err != nil {
		return p, err
	}

	// Pebble's logger also feeds the issuance counter.
	p.pebbleLog = log.New(&issueWatcher{p: p, w: logw}, "Pebble ", log.LstdFlags)
	p.errorLog = log.New(logw, "acmetest pebble http: ", log.LstdFlags)

	env := map[string]string{
		"PEBBLE_VA_NOSLEEP":          "1",
		"PEBBLE_VA_SLEEPTIME":        "",
		"PEBBLE_VA_ALWAYS_VALID":     "0",
		"PEBBLE_WFE_NONCEREJECT":     "5",
		"PEBBLE_AUTHZREUSE":          "",
		"PEBBLE_WFE_ORDERS_PER_PAGE": "",
	}
	if opts.Sleep {
		env["PEBBLE_VA_NOSLEEP"] = "0"
	}
	if opts.AlwaysValid {
		env["PEBBLE_VA_ALWAYS_VALID"] = "1"
	}
	if opts.NoBadNonce {
		env["PEBBLE_WFE_NONCEREJECT"] = "0"
	}
	switch {
	case opts.AuthzReuse < 0:
		env["PEBBLE_AUTHZREUSE"] = "0"
	case opts.AuthzReuse > 0:
		env["PEBBLE_AUTHZREUSE"] = strconv.Itoa(min(opts.AuthzReuse, 100))
	}

	func() {
		// ca.New panics on key generation failures.
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("acmetest: starting pebble: %v", r)
			}
		}()
		p.db = db.NewMemoryStore()
		p.ca = ca.New(p.pebbleLog, p.db, opts.OCSPResponderURL, keyAlg, max(opts.AlternateRoots, 0), chainLength, profiles)
		withEnv(env, func() {
			v := va.New(p.pebbleLog, opts.HTTPPort, opts.TLSPort, false, opts.DNSAddr, p.db)
			w := wfe.New(p.pebbleLog, p.db, v, p.ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
			p.acmeH = w.Handler()
			p.mgmtH = w.ManagementHandler()
		})
	}()
	if err != nil {
		return p, err
	}
	p.acmeH = &orderCounter{p: p, next: p.acmeH}
	if opts.ARIRetryAfter > 0 || opts.NoARI {
		p.acmeH = &ariRewriter{next: p.acmeH, retryAfter: opts.ARIRetryAfter, hide: opts.NoARI}
	}

	p.acmeAddr, p.mgmtAddr = "127.0.0.1:0", "127.0.0.1:0"
	if err = p.listen(); err != nil {
		return p, err
	}
	p.DirectoryURL = "https://" + p.acmeAddr + wfe.DirectoryPath
	p.ManagementURL = "https://" + p.mgmtAddr
	return p, nil
}

func (p *Pebble) makeHTTPSCert() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Minute)
	caTmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "acmetest Pebble HTTPS CA"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	p.httpsCA, err = x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, p.httpsCA, leafKey.Public(), caKey)
	if err != nil {
		return err
	}
	p.tlsConf = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
	p.CACertFile = filepath.Join(p.dir, "pebble-https-ca.pem")
	return os.WriteFile(p.CACertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
}

// listen opens both HTTPS listeners on p.acmeAddr and p.mgmtAddr (which end
// up holding the actual addresses). Callers hold no lock; p.mu is taken here.
func (p *Pebble) listen() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var servers []*http.Server
	addrs := []*string{&p.acmeAddr, &p.mgmtAddr}
	handlers := []http.Handler{p.acmeH, p.mgmtH}
	for i, addr := range addrs {
		l, err := listenFresh(*addr)
		if err != nil {
			for _, s := range servers {
				s.Close()
			}
			return fmt.Errorf("acmetest: pebble listen %s: %w", *addr, err)
		}
		*addr = l.Addr().String()
		s := &http.Server{
			Handler:           handlers[i],
			TLSConfig:         p.tlsConf.Clone(),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       30 * time.Second,
			ErrorLog:          p.errorLog,
		}
		servers = append(servers, s)
		go s.ServeTLS(l, "", "")
	}
	p.servers = servers
	p.stopped = false
	return nil
}

// usedACMEPorts holds every port a Pebble of this process has listened
// on. acmez caches a CA's directory by its URL for the life of the
// process, so a new Pebble on the port of a closed one would be taken
// for it: its profiles and ARI endpoint would be the old CA's (a CI run
// failed so: "unknown profile name 'shortlived'; supported profiles:
// map[default:…]"). listenFresh therefore never reuses a port.
var (
	usedACMEPortsMu sync.Mutex
	usedACMEPorts   = map[string]bool{}
)

// listenFresh listens on addr; for a port-0 address it asks the kernel
// again (up to 64 times, holding the refused listeners so the kernel
// cannot hand them back) until the port is one no Pebble of this process
// had before.
func listenFresh(addr string) (net.Listener, error) {
	if !strings.HasSuffix(addr, ":0") {
		return net.Listen("tcp", addr)
	}
	usedACMEPortsMu.Lock()
	defer usedACMEPortsMu.Unlock()
	var held []net.Listener
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for range 64 {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		if _, port, _ := net.SplitHostPort(l.Addr().String()); !usedACMEPorts[port] {
			usedACMEPorts[port] = true
			return l, nil
		}
		held = append(held, l)
	}
	return nil, fmt.Errorf("acmetest: no fresh port for %s after 64 tries", addr)
}

// Stop makes the CA unreachable: it closes both listeners and every open
// connection (clients see connection refused). State is kept; Resume brings
// it back on the same ports.
func (p *Pebble) Stop() {
	p.mu.Lock()
	servers := p.servers
	p.servers = nil
	p.stopped = true
	p.mu.Unlock()
	for _, s := range servers {
		s.Close()
	}
}

// Resume reopens the listeners closed by Stop on the same addresses.
func (p *Pebble) Resume() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("acmetest: pebble is closed")
	}
	if !p.stopped {
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	return p.listen()
}

// Close stops Pebble and removes its temporary directory. Pebble's VA keeps
// one idle goroutine per instance (it has no shutdown).
func (p *Pebble) Close() {
	p.Stop()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
}

// HTTPClient returns a client that trusts CACertFile, for talking to the ACME
// and management APIs. It uses no proxy and times out after 30 s.
func (p *Pebble) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(p.httpsCA)
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

// HTTPSCACert returns the certificate in CACertFile.
func (p *Pebble) HTTPSCACert() *x509.Certificate { return p.httpsCA }

// Roots returns the roots of the chains Pebble issues under (one, plus
// AlternateRoots). They are regenerated at every start.
func (p *Pebble) Roots() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := p.ca.GetNumberOfRootCerts()
	for i := 0; i < n; i++ {
		c := p.ca.GetRootCert(i)
		if c == nil || c.Cert == nil {
			return nil, fmt.Errorf("acmetest: pebble root %d missing", i)
		}
		pool.AddCert(c.Cert)
	}
	if n == 0 {
		return nil, errors.New("acmetest: pebble has no roots")
	}
	return pool, nil
}

// Intermediates returns the issuing intermediate of each chain (index 0 is the
// default chain).
func (p *Pebble) Intermediates() []*x509.Certificate {
	var out []*x509.Certificate
	for i := 0; i < p.ca.GetNumberOfRootCerts(); i++ {
		if c := p.ca.GetIntermediateCert(i); c != nil {
			out = append(out, c.Cert)
		}
	}
	return out
}

// IntermediateAndKey returns the intermediate that signs issued leaves and its
// private key, for signing OCSP responses for Pebble-issued certificates.
//
// Pebble's own accessor (and the /intermediate-keys/ management endpoint)
// only returns RSA keys; for "ecdsa" and "mldsa" the key is read from
// Pebble's unexported fields by reflection, which is tied to Pebble v2.10.x's
// struct layout and returns an error if that layout changes.
func (p *Pebble) IntermediateAndKey() (*x509.Certificate, crypto.Signer, error) {
	ic := p.ca.GetIntermediateCert(0)
	if ic == nil || ic.Cert == nil {
		return nil, nil, errors.New("acmetest: pebble has no intermediate")
	}
	if k := p.ca.GetIntermediateKey(0); k != nil {
		return ic.Cert, k, nil
	}
	k, err := intermediateKeyByReflection(p.ca)
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(k.Public(), ic.Cert.PublicKey) {
		return nil, nil, errors.New("acmetest: pebble intermediate key does not match its certificate")
	}
	return ic.Cert, k, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// intermediateKeyByReflection reads ca.CAImpl.chains[0].intermediates[0].key.
func intermediateKeyByReflection(c *ca.CAImpl) (k crypto.Signer, err error) {
	defer func() {
		if r := recover(); r != nil {
			k, err = nil, fmt.Errorf("acmetest: reading pebble intermediate key: %v", r)
		}
	}()
	fail := errors.New("acmetest: pebble's CA layout changed; intermediate key not reachable")
	field := func(v reflect.Value, name string) (reflect.Value, bool) {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		f := v.FieldByName(name)
		return f, f.IsValid()
	}
	chains, ok := field(reflect.ValueOf(c), "chains")
	if !ok || chains.Kind() != reflect.Slice || chains.Len() == 0 {
		return nil, fail
	}
	inters, ok := field(chains.Index(0), "intermediates")
	if !ok || inters.Kind() != reflect.Slice || inters.Len() == 0 {
		return nil, fail
	}
	key, ok := field(inters.Index(0), "key")
	if !ok || !key.CanAddr() || key.Kind() != reflect.Interface {
		return nil, fail
	}
	v := reflect.NewAt(key.Type(), unsafe.Pointer(key.UnsafeAddr())).Elem().Interface()
	s, ok := v.(crypto.Signer)
	if !ok {
		return nil, fail
	}
	return s, nil
}

// Orders returns how many new-order requests naming identifier name Pebble
// accepted (HTTP 201). Requests Pebble rejected (e.g. its random badNonce)
// and that the client retried are not counted; see OrderAttempts.
func (p *Pebble) Orders(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.orders[normName(name)]
}

// OrderAttempts returns how many new-order POSTs naming name Pebble received,
// including rejected ones.
func (p *Pebble) OrderAttempts(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.attempts[normName(name)]
}

// Issued returns how many certificates Pebble issued that include name (a
// DNS name or an IP address literal).
func (p *Pebble) Issued(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.issued[normName(name)])
}

// Certificates returns the certificates Pebble issued that include name, in
// issuance order.
func (p *Pebble) Certificates(name string) []*x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*x509.Certificate(nil), p.issued[normName(name)]...)
}

// Revoke marks a Pebble-issued certificate as revoked (as the ACME revokeCert
// endpoint would): ARI then suggests renewing immediately, and OCSPStatus
// reports it revoked.
func (p *Pebble) Revoke(serial *big.Int, reason int) error {
	c := p.db.GetCertificateBySerial(serial)
	if c == nil {
		return fmt.Errorf("acmetest: pebble issued no certificate with serial %x", serial)
	}
	r := uint(reason)
	p.db.RevokeCertificate(&core.RevokedCertificate{Certificate: c, RevokedAt: time.Now(), Reason: &r})
	return nil
}

// SetRenewalInfo sets the literal ARI (renewalInfo) response body for a
// Pebble-issued certificate, as POST /set-renewal-info/ does.
func (p *Pebble) SetRenewalInfo(serial *big.Int, ariResponse string) error {
	return p.db.SetARIResponse(serial, ariResponse)
}

// SetRenewalWindow sets the ARI suggested window of a Pebble-issued
// certificate.
func (p *Pebble) SetRenewalWindow(serial *big.Int, start, end time.Time) error {
	b, err := json.Marshal(map[string]any{
		"suggestedWindow": map[string]string{
			"start": start.UTC().Format(time.RFC3339),
			"end":   end.UTC().Format(time.RFC3339),
		},
	})
	if err != nil {
		return err
	}
	return p.SetRenewalInfo(serial, string(b))
}

// OCSPStatus reports a serial's status as an OCSP responder for Pebble's
// intermediate should: ocsp.Revoked if revoked, ocsp.Good if issued, else
// ok == false. It fits OCSPResponder.SetStatusFunc.
func (p *Pebble) OCSPStatus(serial *big.Int) (status int, ok bool) {
	if p.db.GetRevokedCertificateBySerial(serial) != nil {
		return ocsp.Revoked, true
	}
	if p.db.GetCertificateBySerial(serial) != nil {
		return ocsp.Good, true
	}
	return ocsp.Unknown, false
}

// issueWatcher passes Pebble's log through and records each issuance, which
// Pebble logs ("Issued certificate serial <hex> for order <id>") after
// storing the certificate and before the order turns valid.
type issueWatcher struct {
	p *Pebble
	w io.Writer
}

const issuedMarker = "Issued certificate serial "

func (iw *issueWatcher) Write(b []byte) (int, error) {
	if i := bytes.Index(b, []byte(issuedMarker)); i >= 0 {
		rest := string(b[i+len(issuedMarker):])
		if j := strings.IndexAny(rest, " \n"); j > 0 {
			if c := iw.p.db.GetCertificateByID(rest[:j]); c != nil && c.Cert != nil {
				iw.p.recordIssued(c.Cert)
			}
		}
	}
	return iw.w.Write(b)
}

func (p *Pebble) recordIssued(c *x509.Certificate) {
	names := make(map[string]bool)
	for _, n := range c.DNSNames {
		names[normName(n)] = true
	}
	for _, ip := range c.IPAddresses {
		names[ip.String()] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := range names {
		p.issued[n] = append(p.issued[n], c)
	}
}

// orderCounter wraps Pebble's ACME handler and counts new-order requests per
// identifier from their JWS payload.
type orderCounter struct {
	p    *Pebble
	next http.Handler
}

const newOrderPath = "/order-plz" // Pebble v2.10's new-order path

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (oc *orderCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != newOrderPath {
		oc.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	names := orderIdentifiers(body)
	oc.p.mu.Lock()
	for _, n := range names {
		oc.p.attempts[n]++
	}
	oc.p.mu.Unlock()
	rec := &statusRecorder{ResponseWriter: w}
	oc.next.ServeHTTP(rec, r)
	if rec.status == http.StatusCreated {
		oc.p.mu.Lock()
		for _, n := range names {
			oc.p.orders[n]++
		}
		oc.p.mu.Unlock()
	}
}

// orderIdentifiers extracts the identifier values from a flattened JWS
// new-order request body; nil if it cannot.
func orderIdentifiers(body []byte) []string {
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(jws.Payload, "="))
	if err != nil {
		return nil
	}
	var payload struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if json.Unmarshal(raw, &payload) != nil {
		return nil
	}
	seen := make(map[string]bool)
	var out []string
	for _, id := range payload.Identifiers {
		n := normName(id.Value)
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func randSerial() *big.Int {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms.
		panic(err)
	}
	return s.Add(s, big.NewInt(1))
}

// ariRewriter adjusts Pebble's ARI behaviour: the Retry-After of renewalInfo
// answers, or the directory's renewalInfo entry.
type ariRewriter struct {
	next       http.Handler
	retryAfter time.Duration
	hide       bool
}

const renewalInfoPrefix = "/draft-ietf-acme-ari-03/renewalInfo/" // Pebble v2.10's ARI path

func (a *ariRewriter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case a.retryAfter > 0 && strings.HasPrefix(r.URL.Path, renewalInfoPrefix):
		secs := int(math.Ceil(a.retryAfter.Seconds()))
		a.next.ServeHTTP(&headerRewriter{ResponseWriter: w, set: func(h http.Header) {
			if h.Get("Retry-After") != "" {
				h.Set("Retry-After", strconv.Itoa(secs))
			}
		}}, r)
	case a.hide && r.Method == http.MethodGet && r.URL.Path == wfe.DirectoryPath:
		rec := &bufferedResponse{header: http.Header{}}
		a.next.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		var dir map[string]any
		if rec.status == http.StatusOK && json.Unmarshal(body, &dir) == nil {
			delete(dir, "renewalInfo")
			if b, err := json.MarshalIndent(dir, "", "  "); err == nil {
				body = b
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(max(rec.status, http.StatusOK))
		w.Write(body)
	default:
		a.next.ServeHTTP(w, r)
	}
}

// headerRewriter calls set on the headers just before they are written.
type headerRewriter struct {
	http.ResponseWriter
	set   func(http.Header)
	wrote bool
}

func (h *headerRewriter) WriteHeader(code int) {
	if !h.wrote {
		h.wrote = true
		h.set(h.ResponseWriter.Header())
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerRewriter) Write(b []byte) (int, error) {
	if !h.wrote {
		h.WriteHeader(http.StatusOK)
	}
	return h.ResponseWriter.Write(b)
}

// bufferedResponse holds a whole response so it can be edited.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }
func (b *bufferedResponse) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}
