package tlsconfig

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// Before an order, gatehouse checks that the name actually leads to it,
// the way the CA will look: resolve the name, then ask each address on
// the CA's validation port for something only a gatehouse sharing this
// storage can answer. A name whose DNS points elsewhere would fail
// validation at the CA and count against its failed-validation limit;
// the self-check fails instead, says why, and the order waits.
//
//   - HTTP-01 path: GET http://ADDR:80/.well-known/acme-challenge/
//     gatehouse-selfcheck-NONCE with Host: NAME; gatehouse answers with
//     HMAC(key, NONCE), the key kept in storage, so any instance sharing
//     the storage (as certmagic's distributed challenge solving does)
//     answers for the others.
//   - TLS-ALPN-01 path: a handshake to ADDR:443 with SNI NAME and ALPN
//     acme-tls/1, like the CA's; while a check for NAME runs, a throwaway
//     certificate for it is kept in memory and in storage, and any
//     instance sharing the storage answers the handshake with it; the
//     check compares it byte for byte. (certmagic's lock on NAME means no
//     real order for NAME runs meanwhile, so no CA handshake is answered
//     with it.)
//
// The check passes when one enabled path reaches a gatehouse on every
// address that accepts a connection; acmez falls back to the other
// challenge type when one fails.

const (
	selfCheckPathPrefix = "/.well-known/acme-challenge/gatehouse-selfcheck-"
	selfCheckKeyKey     = "gatehouse/selfcheck.key"
	selfCheckTimeout    = 20 * time.Second // the whole check
	selfCheckDial       = 5 * time.Second  // one connection, request or handshake
	selfCheckMaxAddrs   = 4
)

// selfChecker runs self-checks and answers them.
type selfChecker struct {
	storage certmagic.Storage

	setMu sync.Mutex
	set   checkSettings

	keyMu sync.Mutex
	key   []byte

	pendMu  sync.Mutex
	pending map[string]*tls.Certificate // name -> certificate the TLS check expects
}

// checkSettings are what a check needs from the config.
type checkSettings struct {
	resolver     *net.Resolver
	resolverName string // for messages
	httpPort     int    // 0: HTTP-01 path not used
	tlsPort      int    // 0: TLS-ALPN-01 path not used

	// dnsCheck checks a name ordered by DNS-01 (the zone takes a probe
	// record, dns01.go) or dns-persist-01 (its record exists,
	// persist.go); nil: no name is.
	dnsCheck func(context.Context, string) error
	dnsOnly  bool // every name is ordered by DNS, not only wildcards
}

func newSelfChecker(storage certmagic.Storage) *selfChecker {
	sc := &selfChecker{storage: storage, pending: map[string]*tls.Certificate{}}
	sc.configure("", 0, 0)
	return sc
}

// configure sets the resolver ("host:port", "" for the system's) and
// the ports the CA validates on (0: that challenge is not used).
func (sc *selfChecker) configure(resolver string, httpPort, tlsPort int) {
	sc.setMu.Lock()
	dnsCheck, dnsOnly := sc.set.dnsCheck, sc.set.dnsOnly
	sc.setMu.Unlock()
	set := checkSettings{resolver: net.DefaultResolver, resolverName: "the system resolver", httpPort: httpPort, tlsPort: tlsPort,
		dnsCheck: dnsCheck, dnsOnly: dnsOnly}
	if resolver != "" {
		set.resolverName = resolver
		set.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: selfCheckDial}
			return d.DialContext(ctx, network, resolver)
		}}
	}
	sc.setMu.Lock()
	sc.set = set
	sc.setMu.Unlock()
}

// configureDNS sets the check of names ordered by DNS (nil: none), and
// whether that is every name or only wildcards.
func (sc *selfChecker) configureDNS(check func(context.Context, string) error, dnsOnly bool) {
	sc.setMu.Lock()
	sc.set.dnsCheck, sc.set.dnsOnly = check, dnsOnly
	sc.setMu.Unlock()
}

func (sc *selfChecker) settings() checkSettings {
	sc.setMu.Lock()
	defer sc.setMu.Unlock()
	return sc.set
}

// secret returns the HMAC key, loading or creating it in storage.
// reload forces a fresh read (another instance may have created it).
func (sc *selfChecker) secret(ctx context.Context, reload bool) ([]byte, error) {
	sc.keyMu.Lock()
	defer sc.keyMu.Unlock()
	if sc.key != nil && !reload {
		return sc.key, nil
	}
	b, err := sc.storage.Load(ctx, selfCheckKeyKey)
	if err == nil && len(b) >= 32 {
		sc.key = b
		return b, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("self-check key: %w", err)
	}
	if sc.key != nil {
		return sc.key, nil
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := sc.storage.Store(ctx, selfCheckKeyKey, b); err != nil {
		return nil, fmt.Errorf("self-check key: %w", err)
	}
	sc.key = b
	return b, nil
}

func proof(key []byte, nonce string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(nonce))
	return hex.EncodeToString(h.Sum(nil))
}

// answerHTTP answers a self-check request, reporting whether r was one.
func (sc *selfChecker) answerHTTP(w http.ResponseWriter, r *http.Request) bool {
	nonce, ok := strings.CutPrefix(r.URL.Path, selfCheckPathPrefix)
	if !ok {
		return false
	}
	key, err := sc.secret(r.Context(), false)
	if err != nil || len(nonce) == 0 || len(nonce) > 64 {
		http.Error(w, "self-check unavailable", http.StatusServiceUnavailable)
		return true
	}
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, proof(key, nonce))
	return true
}

// answerTLS returns the certificate a running TLS check for name
// expects (this process's, or another instance's through storage), or
// nil. Called for acme-tls/1 handshakes only.
func (sc *selfChecker) answerTLS(ctx context.Context, name string) *tls.Certificate {
	sc.pendMu.Lock()
	c := sc.pending[name]
	sc.pendMu.Unlock()
	if c != nil {
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := sc.storage.Load(ctx, tlsCheckKey(name))
	if err != nil {
		return nil
	}
	var rec tlsCheckRecord
	if json.Unmarshal(b, &rec) != nil || time.Now().After(rec.Expires) {
		return nil
	}
	key, err := x509.ParsePKCS8PrivateKey(rec.Key)
	if err != nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(rec.Cert)
	if err != nil {
		return nil
	}
	return &tls.Certificate{Certificate: [][]byte{rec.Cert}, PrivateKey: key, Leaf: leaf}
}

// tlsCheckRecord is a running TLS self-check's certificate, in storage
// for the other instances.
type tlsCheckRecord struct {
	Cert    []byte    `json:"cert"` // DER
	Key     []byte    `json:"key"`  // PKCS#8 DER of a throwaway key
	Expires time.Time `json:"expires"`
}

func tlsCheckKey(name string) string {
	return "gatehouse/selfcheck/tls/" + strings.NewReplacer("*", "wildcard_", "/", "_", ":", "_").Replace(name) + ".json"
}

// check reports nil when name leads to this gatehouse, or an error that
// says what the DNS answered and what each address did.
func (sc *selfChecker) check(ctx context.Context, name string) error {
	set := sc.settings()
	if set.dnsCheck != nil && (set.dnsOnly || strings.HasPrefix(name, "*.")) {
		// ordered by DNS: the name need not lead here; the zone must
		// take the challenge record, or hold the persistent one
		return set.dnsCheck(ctx, name)
	}
	if set.httpPort == 0 && set.tlsPort == 0 {
		return nil // no challenge this process answers: nothing to check
	}
	ctx, cancel := context.WithTimeout(ctx, selfCheckTimeout)
	defer cancel()
	if ip := net.ParseIP(name); ip != nil {
		return sc.checkAddrs(ctx, set, name, []net.IP{ip})
	}
	rctx, rcancel := context.WithTimeout(ctx, selfCheckDial)
	addrs, err := set.resolver.LookupIPAddr(rctx, name)
	rcancel()
	if err != nil {
		return fmt.Errorf("self-check: %s does not resolve (DNS via %s: %v)", name, set.resolverName, err)
	}
	var ips []net.IP
	for _, a := range addrs {
		ips = append(ips, a.IP)
	}
	return sc.checkAddrs(ctx, set, name, ips)
}

func (sc *selfChecker) checkAddrs(ctx context.Context, set checkSettings, name string, ips []net.IP) error {
	if len(ips) > selfCheckMaxAddrs {
		ips = ips[:selfCheckMaxAddrs]
	}
	var shown []string
	for _, ip := range ips {
		shown = append(shown, ip.String())
	}
	var reasons []string
	if set.httpPort > 0 {
		err := sc.viaAll(ips, func(ip net.IP) (bool, error) { return sc.checkHTTP(ctx, name, ip, set.httpPort) })
		if err == nil {
			return nil
		}
		reasons = append(reasons, "HTTP-01 path: "+err.Error())
	}
	if set.tlsPort > 0 {
		err := sc.viaAll(ips, func(ip net.IP) (bool, error) { return sc.checkTLS(ctx, name, ip, set.tlsPort) })
		if err == nil {
			return nil
		}
		reasons = append(reasons, "TLS-ALPN-01 path: "+err.Error())
	}
	return fmt.Errorf("self-check: %s resolves to %s (DNS via %s), which does not lead to this gatehouse: %s",
		name, strings.Join(shown, ", "), set.resolverName, strings.Join(reasons, "; "))
}

// viaAll runs one path's check on every address. It passes when every
// address that accepted a connection answered as gatehouse and at least
// one did: a CA falls back to another address only when one does not
// connect.
func (sc *selfChecker) viaAll(ips []net.IP, f func(net.IP) (bool, error)) error {
	reached := 0
	var errs []string
	for _, ip := range ips {
		connected, err := f(ip)
		if err != nil {
			errs = append(errs, err.Error())
			if connected {
				return errors.New(strings.Join(errs, ", "))
			}
			continue
		}
		reached++
	}
	if reached == 0 {
		return errors.New(strings.Join(errs, ", "))
	}
	return nil
}

// checkHTTP asks ip for a proof; connected reports whether a TCP
// connection was made.
func (sc *selfChecker) checkHTTP(ctx context.Context, name string, ip net.IP, port int) (bool, error) {
	var dialed atomic.Bool // set by the transport's dialing goroutine
	key, err := sc.secret(ctx, false)
	if err != nil {
		return false, err
	}
	nonce := randomHex(16)
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	tr := &http.Transport{
		Proxy:                 nil,
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: selfCheckDial,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: selfCheckDial}
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				dialed.Store(true)
			}
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * selfCheckDial,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+selfCheckPathPrefix+nonce, nil)
	if err != nil {
		return false, err
	}
	req.Host = name
	req.Header.Set("User-Agent", "gatehouse-selfcheck")
	res, err := hc.Do(req)
	if err != nil {
		connected := dialed.Load()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !connected {
			return false, fmt.Errorf("http %s: no connection within %s", addr, selfCheckDial)
		}
		return connected, fmt.Errorf("http %s: %v", addr, innermost(err))
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 256))
	got := string(bytes.TrimSpace(body))
	if res.StatusCode == http.StatusOK && hmac.Equal([]byte(got), []byte(proof(key, nonce))) {
		return true, nil
	}
	if res.StatusCode == http.StatusOK && len(got) == 64 {
		// maybe another instance created the key meanwhile
		if k2, err := sc.secret(ctx, true); err == nil && hmac.Equal([]byte(got), []byte(proof(k2, nonce))) {
			return true, nil
		}
		return true, fmt.Errorf("http %s: a gatehouse answered, but one using other storage", addr)
	}
	what := fmt.Sprintf("HTTP %d", res.StatusCode)
	if loc := res.Header.Get("Location"); loc != "" {
		what += " redirect to " + loc
	}
	if srv := res.Header.Get("Server"); srv != "" {
		what += " from server " + strconv.Quote(srv)
	}
	return true, fmt.Errorf("http %s: answered %s, not as this gatehouse", addr, what)
}

// checkTLS runs an acme-tls/1 handshake with ip and expects the
// certificate registered for name while it runs.
func (sc *selfChecker) checkTLS(ctx context.Context, name string, ip net.IP, port int) (connected bool, err error) {
	want, err := throwawayCert(name)
	if err != nil {
		return false, err
	}
	sc.pendMu.Lock()
	if sc.pending[name] != nil {
		sc.pendMu.Unlock()
		return false, errors.New("another self-check for this name is running")
	}
	sc.pending[name] = want
	sc.pendMu.Unlock()
	stored := false
	if keyDER, err := x509.MarshalPKCS8PrivateKey(want.PrivateKey); err == nil {
		b, _ := json.Marshal(tlsCheckRecord{Cert: want.Leaf.Raw, Key: keyDER, Expires: time.Now().Add(selfCheckTimeout)})
		stored = sc.storage.Store(ctx, tlsCheckKey(name), b) == nil // else only this process answers
	}
	defer func() {
		sc.pendMu.Lock()
		delete(sc.pending, name)
		sc.pendMu.Unlock()
		if stored {
			_ = sc.storage.Delete(context.WithoutCancel(ctx), tlsCheckKey(name))
		}
	}()
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	d := net.Dialer{Timeout: selfCheckDial}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, fmt.Errorf("tls %s: %v", addr, innermost(err))
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(selfCheckDial))
	c := tls.Client(raw, &tls.Config{
		ServerName:         name,
		NextProtos:         []string{"acme-tls/1"},
		InsecureSkipVerify: true, // the check compares the certificate itself
		MinVersion:         tls.VersionTLS12,
	})
	if err := c.HandshakeContext(ctx); err != nil {
		return true, fmt.Errorf("tls %s: handshake: %v", addr, err)
	}
	peer := c.ConnectionState().PeerCertificates
	if len(peer) == 0 || !bytes.Equal(peer[0].Raw, want.Leaf.Raw) {
		return true, fmt.Errorf("tls %s: answered with another certificate, not as this gatehouse", addr)
	}
	return true, nil
}

// throwawayCert is a self-signed certificate for one TLS self-check.
func throwawayCert(name string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "gatehouse self-check"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		DNSNames:     []string{name},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.DNSNames, tmpl.IPAddresses = nil, []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// innermost strips the URL and dial wrappers off a network error:
// "connect: connection refused" instead of three layers of addresses.
func innermost(err error) error {
	for {
		var ue *url.Error
		var oe *net.OpError
		switch {
		case errors.As(err, &ue) && ue.Err != nil && ue.Err != err:
			err = ue.Err
		case errors.As(err, &oe) && oe.Err != nil && oe.Err != err:
			err = oe.Err
		default:
			return err
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
