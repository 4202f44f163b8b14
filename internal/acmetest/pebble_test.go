package acmetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/ocsp"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// challengeServer serves HTTP-01 key authorizations on one address.
type challengeServer struct {
	srv    *http.Server
	port   int
	tokens *sync.Map // token -> key authorization

	mu   sync.Mutex
	hits int
	ua   string
}

func startChallengeServer(t *testing.T, addr string, tokens *sync.Map) (*challengeServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	cs := &challengeServer{port: l.Addr().(*net.TCPAddr).Port, tokens: tokens}
	cs.srv = &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
			v, found := tokens.Load(tok)
			if !ok || !found {
				http.NotFound(w, r)
				return
			}
			cs.mu.Lock()
			cs.hits++
			cs.ua = r.UserAgent()
			cs.mu.Unlock()
			io.WriteString(w, v.(string))
		}),
	}
	go cs.srv.Serve(l)
	t.Cleanup(func() { cs.srv.Close() })
	return cs, nil
}

func (cs *challengeServer) stats() (int, string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.hits, cs.ua
}

type env struct {
	dns    *DNS
	pebble *Pebble
	chal   *challengeServer
	tokens *sync.Map
	ocsp   *OCSPResponder
	log    *testkit.SyncBuffer // Pebble's log, printed only when a test fails (its goroutines may log after the test ends, so no t.Log writer)
	client *acme.Client
}

func setup(t *testing.T) *env {
	e := &env{tokens: new(sync.Map), log: new(testkit.SyncBuffer)}
	var err error
	if e.dns, err = StartDNS(nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.dns.Close)
	if e.chal, err = startChallengeServer(t, "127.0.0.1:0", e.tokens); err != nil {
		t.Fatal(err)
	}
	// The responder's URL must be known before Pebble starts; its issuer
	// (Pebble's intermediate) only after.
	if e.ocsp, err = StartOCSPResponder(nil, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.ocsp.Close)
	e.pebble, err = StartPebble(PebbleOptions{
		HTTPPort:         e.chal.port,
		TLSPort:          1, // nothing: TLS-ALPN-01 is not used here
		DNSAddr:          e.dns.Addr(),
		OCSPResponderURL: e.ocsp.URL(),
		Profiles:         map[string]time.Duration{"short": 6 * time.Hour},
		AuthzReuse:       -1,
		Log:              e.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.pebble.Close()
		if t.Failed() {
			t.Logf("pebble log:\n%s", e.log.String())
		}
	})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.client = &acme.Client{
		Key:          key,
		DirectoryURL: e.pebble.DirectoryURL,
		HTTPClient:   e.pebble.HTTPClient(),
		UserAgent:    "gatehouse-acmetest",
		// Retries (Pebble's random badNonce) and polling without the
		// default exponential backoff; the context bounds them.
		RetryBackoff: func(int, *http.Request, *http.Response) time.Duration { return 25 * time.Millisecond },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.client.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil {
		t.Fatalf("register: %v", err)
	}
	return e
}

// obtain runs an order for name solving HTTP-01 and returns the chain.
func (e *env) obtain(ctx context.Context, name string) ([][]byte, error) {
	order, err := e.client.AuthorizeOrder(ctx, acme.DomainIDs(name))
	if err != nil {
		return nil, err
	}
	for _, u := range order.AuthzURLs {
		z, err := e.client.GetAuthorization(ctx, u)
		if err != nil {
			return nil, err
		}
		if z.Status == acme.StatusValid {
			continue
		}
		var chal *acme.Challenge
		for _, c := range z.Challenges {
			if c.Type == "http-01" {
				chal = c
			}
		}
		if chal == nil {
			return nil, errors.New("no http-01 challenge offered")
		}
		ka, err := e.client.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return nil, err
		}
		e.tokens.Store(chal.Token, ka)
		if _, err := e.client.Accept(ctx, chal); err != nil {
			return nil, err
		}
		if err := e.waitAuthz(ctx, z.URI); err != nil {
			return nil, err
		}
	}
	if order, err = e.waitOrder(ctx, order.URI, acme.StatusReady); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, key)
	if err != nil {
		return nil, err
	}
	// x/crypto/acme polls the order right after finalizing, then every
	// second; Pebble usually has issued by the first poll.
	der, _, err := e.client.CreateCertFromOrder(ctx, order, csr, true)
	return der, err
}

// poll bounds every wait by ctx and polls every 25 ms.
func poll(ctx context.Context, f func() (bool, error)) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := f()
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (e *env) waitAuthz(ctx context.Context, url string) error {
	return poll(ctx, func() (bool, error) {
		z, err := e.client.GetAuthorization(ctx, url)
		if err != nil {
			return false, err
		}
		switch z.Status {
		case acme.StatusValid:
			return true, nil
		case acme.StatusPending, acme.StatusProcessing:
			return false, nil
		}
		return false, &acme.AuthorizationError{URI: url, Identifier: z.Identifier.Value}
	})
}

func (e *env) waitOrder(ctx context.Context, url, want string) (*acme.Order, error) {
	var o *acme.Order
	err := poll(ctx, func() (bool, error) {
		var err error
		if o, err = e.client.GetOrder(ctx, url); err != nil {
			return false, err
		}
		switch o.Status {
		case want, acme.StatusValid:
			return true, nil
		case acme.StatusInvalid:
			return false, &acme.OrderError{OrderURL: url, Status: o.Status, Problem: o.Error}
		}
		return false, nil
	})
	return o, err
}

func TestPebble(t *testing.T) {
	start := time.Now()
	e := setup(t)
	p := e.pebble
	t.Logf("setup (dns, pebble, account) took %v", time.Since(start))

	var leaf, inter *x509.Certificate
	t.Run("http01", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		t0 := time.Now()
		der, err := e.obtain(ctx, "a.test")
		if err != nil {
			t.Fatalf("obtain: %v", err)
		}
		t.Logf("order to certificate took %v", time.Since(t0))
		if len(der) < 2 {
			t.Fatalf("chain has %d certificates", len(der))
		}
		if leaf, err = x509.ParseCertificate(der[0]); err != nil {
			t.Fatal(err)
		}
		if inter, err = x509.ParseCertificate(der[1]); err != nil {
			t.Fatal(err)
		}
		roots, err := p.Roots()
		if err != nil {
			t.Fatal(err)
		}
		ip := x509.NewCertPool()
		ip.AddCert(inter)
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "a.test", Roots: roots, Intermediates: ip}); err != nil {
			t.Fatalf("verify against Roots(): %v", err)
		}
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 6*time.Hour-time.Second {
			t.Errorf("validity %v, want 6h-1s (profile \"short\")", got)
		}
		if len(leaf.OCSPServer) != 1 || leaf.OCSPServer[0] != e.ocsp.URL() {
			t.Errorf("OCSP URL %v, want %s", leaf.OCSPServer, e.ocsp.URL())
		}
		hits, ua := e.chal.stats()
		if hits < 1 || !strings.Contains(ua, "Pebble") {
			t.Errorf("challenge server: %d hits, UA %q; Pebble did not validate over loopback", hits, ua)
		}
		if n := e.dns.Queries("a.test"); n < 2 {
			t.Errorf("DNS queries for a.test: %d", n)
		}
		if n := p.Orders("a.test"); n != 1 {
			t.Errorf("Orders(a.test) = %d, want 1 (attempts %d)", n, p.OrderAttempts("a.test"))
		}
		if n := p.Issued("a.test"); n != 1 {
			t.Errorf("Issued(a.test) = %d, want 1", n)
		}
		if c := p.Certificates("A.TEST"); len(c) != 1 || c[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Errorf("Certificates(a.test) = %v", c)
		}
		if p.Orders("b.test") != 0 || p.Issued("b.test") != 0 {
			t.Error("counters for an unused name are not 0")
		}
	})
	if leaf == nil {
		t.FailNow()
	}

	t.Run("dns-redirect", func(t *testing.T) {
		// Point b.test at 127.0.0.2, where a second challenge server listens
		// on the same port: only it may see the validation request.
		other, err := startChallengeServer(t, net.JoinHostPort("127.0.0.2", strconv.Itoa(e.chal.port)), e.tokens)
		if err != nil {
			t.Skipf("cannot listen on 127.0.0.2: %v", err)
		}
		e.dns.SetA("b.test", "127.0.0.2")
		before, _ := e.chal.stats()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := e.obtain(ctx, "b.test"); err != nil {
			t.Fatalf("obtain: %v", err)
		}
		if hits, _ := other.stats(); hits < 1 {
			t.Error("127.0.0.2 challenge server saw no request")
		}
		if after, _ := e.chal.stats(); after != before {
			t.Errorf("127.0.0.1 challenge server saw %d requests for b.test", after-before)
		}

		// And a name pointing where nothing listens fails validation.
		e.dns.SetA("c.test", "127.0.0.3")
		if _, err := e.obtain(ctx, "c.test"); err == nil {
			t.Error("c.test validated against a closed port")
		}
		if p.Orders("c.test") != 1 || p.Issued("c.test") != 0 {
			t.Errorf("c.test: Orders %d Issued %d, want 1 and 0", p.Orders("c.test"), p.Issued("c.test"))
		}
	})

	t.Run("ocsp-for-pebble-leaf", func(t *testing.T) {
		ic, key, err := p.IntermediateAndKey()
		if err != nil {
			t.Fatal(err)
		}
		if !ic.Equal(inter) {
			t.Fatal("IntermediateAndKey returned another certificate than the served chain")
		}
		e.ocsp.SetIssuer(ic, key)
		e.ocsp.SetStatusFunc(p.OCSPStatus)
		if r := ocspStatus(t, leaf, ic, false); r.Status != ocsp.Good {
			t.Errorf("status %d, want Good", r.Status)
		}
		if err := p.Revoke(leaf.SerialNumber, ocsp.KeyCompromise); err != nil {
			t.Fatal(err)
		}
		if r := ocspStatus(t, leaf, ic, true); r.Status != ocsp.Revoked {
			t.Errorf("after Revoke: status %d, want Revoked", r.Status)
		}
	})

	t.Run("ari", func(t *testing.T) {
		// Revoked above: Pebble's ARI suggests renewing now.
		certID := base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." +
			base64.RawURLEncoding.EncodeToString(leaf.SerialNumber.Bytes())
		get := func() (start, end time.Time) {
			t.Helper()
			resp, err := p.HTTPClient().Get(strings.TrimSuffix(p.DirectoryURL, "/dir") + "/draft-ietf-acme-ari-03/renewalInfo/" + certID)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var ri struct {
				SuggestedWindow struct{ Start, End time.Time } `json:"suggestedWindow"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&ri); err != nil {
				t.Fatalf("renewalInfo (%d): %v", resp.StatusCode, err)
			}
			return ri.SuggestedWindow.Start, ri.SuggestedWindow.End
		}
		if s, _ := get(); s.After(time.Now().Add(time.Minute)) {
			t.Errorf("revoked certificate: window starts %v, want now", s)
		}
		ws := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
		we := ws.Add(time.Hour)
		if err := p.SetRenewalWindow(leaf.SerialNumber, ws, we); err != nil {
			t.Fatal(err)
		}
		if s, en := get(); !s.Equal(ws) || !en.Equal(we) {
			t.Errorf("window %v-%v, want %v-%v", s, en, ws, we)
		}
	})

	t.Run("management", func(t *testing.T) {
		hc := p.HTTPClient()
		get := func(path string) (int, []byte) {
			resp, err := hc.Get(p.ManagementURL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, b
		}
		code, b := get("/roots/0")
		blk, _ := pem.Decode(b)
		if code != 200 || blk == nil {
			t.Fatalf("/roots/0: %d %q", code, b)
		}
		root, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := inter.CheckSignatureFrom(root); err != nil {
			t.Errorf("/roots/0 did not sign the intermediate: %v", err)
		}
		// Pebble serves only RSA keys there; ours is ECDSA.
		if code, _ := get("/intermediate-keys/0"); code != http.StatusNotFound {
			t.Errorf("/intermediate-keys/0 = %d, want 404 for an ECDSA CA", code)
		}
		if code, b := get("/cert-status-by-serial/" + leaf.SerialNumber.Text(16)); code != 200 || !bytes.Contains(b, []byte(`"Revoked"`)) {
			t.Errorf("cert-status-by-serial: %d %s", code, b)
		}
		pemFile, err := os.ReadFile(p.CACertFile)
		if err != nil {
			t.Fatal(err)
		}
		if blk, _ := pem.Decode(pemFile); blk == nil || !bytes.Equal(blk.Bytes, p.HTTPSCACert().Raw) {
			t.Error("CACertFile does not hold the HTTPS CA")
		}
	})

	t.Run("stop-resume", func(t *testing.T) {
		hc := p.HTTPClient()
		hc.Timeout = 3 * time.Second
		p.Stop()
		if resp, err := hc.Get(p.DirectoryURL); err == nil {
			resp.Body.Close()
			t.Fatal("directory reachable after Stop")
		}
		if err := p.Resume(); err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Get(p.DirectoryURL)
		if err != nil {
			t.Fatalf("after Resume: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("after Resume: %d", resp.StatusCode)
		}
	})

	dir := p.CACertFile
	p.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("CACertFile still there after Close: %v", err)
	}
	t.Logf("total %v", time.Since(start))
}

func TestPebbleAlwaysValidRSA(t *testing.T) {
	d, err := StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := StartPebble(PebbleOptions{DNSAddr: d.Addr(), AlwaysValid: true, KeyAlgorithm: "rsa", NoBadNonce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	e := &env{dns: d, pebble: p, tokens: new(sync.Map)}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.client = &acme.Client{Key: key, DirectoryURL: p.DirectoryURL, HTTPClient: p.HTTPClient(),
		RetryBackoff: func(int, *http.Request, *http.Response) time.Duration { return 25 * time.Millisecond }}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := e.client.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil {
		t.Fatal(err)
	}
	// Nothing serves the challenge: AlwaysValid must pass it anyway.
	if _, err := e.obtain(ctx, "nowhere.test"); err != nil {
		t.Fatalf("obtain with AlwaysValid: %v", err)
	}
	if p.Issued("nowhere.test") != 1 || p.OrderAttempts("nowhere.test") != 1 {
		t.Errorf("Issued %d, attempts %d", p.Issued("nowhere.test"), p.OrderAttempts("nowhere.test"))
	}
	ic, k, err := p.IntermediateAndKey()
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(k.Public(), ic.PublicKey) {
		t.Error("RSA intermediate key does not match")
	}
}

func TestStartPebbleRequiresLoopbackDNS(t *testing.T) {
	for _, addr := range []string{"", "192.0.2.1:53", "localhost:53"} {
		if p, err := StartPebble(PebbleOptions{DNSAddr: addr}); err == nil {
			p.Close()
			t.Errorf("DNSAddr %q accepted", addr)
		}
	}
}

func TestOrderIdentifiers(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"identifiers":[{"type":"dns","value":"A.test"},{"type":"ip","value":"127.0.0.1"},{"type":"dns","value":"a.test"}]}`))
	got := orderIdentifiers([]byte(`{"protected":"x","payload":"` + payload + `","signature":"y"}`))
	if strings.Join(got, ",") != "a.test,127.0.0.1" {
		t.Errorf("got %v", got)
	}
	if orderIdentifiers([]byte("garbage")) != nil {
		t.Error("garbage parsed")
	}
}

// NoARI hides renewalInfo from the directory; the default lists it.
func TestPebbleNoARI(t *testing.T) {
	dns, err := StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	for _, hide := range []bool{false, true} {
		p, err := StartPebble(PebbleOptions{DNSAddr: dns.Addr(), NoARI: hide, ARIRetryAfter: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := p.HTTPClient().Get(p.DirectoryURL)
		if err != nil {
			p.Close()
			t.Fatal(err)
		}
		var dir map[string]any
		err = json.NewDecoder(resp.Body).Decode(&dir)
		resp.Body.Close()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := dir["newOrder"]; !ok {
			t.Errorf("NoARI=%v: directory lost newOrder: %v", hide, dir)
		}
		if _, has := dir["renewalInfo"]; has == hide {
			t.Errorf("NoARI=%v: directory has renewalInfo = %v", hide, has)
		}
	}
}
