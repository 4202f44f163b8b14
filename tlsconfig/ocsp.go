package tlsconfig

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/ocsp"
)

// stapler keeps an OCSP response for every served certificate that
// names a responder. Its rules, each a place where proxies have gone
// wrong:
//   - a handshake never waits on the responder: it gets the staple
//     already held, or none;
//   - a staple is served only while Good and before its NextUpdate;
//     an old Good staple is dropped, not kept, once a Revoked answer
//     arrives or NextUpdate passes;
//   - responses are persisted in storage, so a restart with the
//     responder down still staples;
//   - refreshes happen at half the response's validity (a Revoked one
//     too), with bounded backoff on failure;
//   - certificates no longer served (renewed, replaced, removed) are
//     forgotten, so their responders are not asked again.
type stapler struct {
	storage   certmagic.Storage
	log       *slog.Logger
	interval  time.Duration
	onRevoked func(leaf *x509.Certificate, names []string)
	live      func(leaf *x509.Certificate) bool // still served? nil: always
	client    *http.Client
	// crl watches the certificates that name a CRL and no responder
	// (crl.go); nil: none.
	crl *crlWatcher

	mu      sync.RWMutex
	entries map[*x509.Certificate]*stapleEntry
	kick    chan struct{}
}

// stapleEntry is one certificate's OCSP state.
type stapleEntry struct {
	leaf   *x509.Certificate
	issuer *x509.Certificate // nil: no issuer in the chain, cannot staple
	cert   tls.Certificate   // chain and key, without staple
	names  []string
	key    string // storage key of the persisted response

	cur atomic.Pointer[stapled] // the staple to serve, or nil

	// guarded by stapler.mu
	revoked  bool
	failures int
	nextTry  time.Time
	lastErr  error
	lastResp *ocsp.Response
}

// stapled is a certificate with its staple attached, built once per
// response so handshakes only load a pointer.
type stapled struct {
	cert *tls.Certificate
	resp *ocsp.Response
}

func newStapler(storage certmagic.Storage, log *slog.Logger, interval time.Duration, onRevoked func(*x509.Certificate, []string)) *stapler {
	return &stapler{
		storage:   storage,
		log:       log,
		interval:  interval,
		onRevoked: onRevoked,
		client:    &http.Client{Timeout: 10 * time.Second},
		entries:   map[*x509.Certificate]*stapleEntry{},
		kick:      make(chan struct{}, 1),
	}
}

// staple returns cert with a valid Good staple attached, or cert with
// none. Unknown certificates are registered in the background.
func (s *stapler) staple(cert *tls.Certificate) *tls.Certificate {
	s.mu.RLock()
	e := s.entries[cert.Leaf]
	s.mu.RUnlock()
	if e == nil {
		if len(cert.Leaf.OCSPServer) > 0 {
			go s.register(*cert, cert.Leaf.DNSNames)
		} else if s.crl != nil && s.crl.wants(cert.Leaf) {
			go s.crl.register(*cert, cert.Leaf.DNSNames)
		}
		return withoutStaple(cert)
	}
	if sp := e.cur.Load(); sp != nil {
		if time.Now().Before(sp.resp.NextUpdate) {
			return sp.cert
		}
	}
	return withoutStaple(cert)
}

func withoutStaple(cert *tls.Certificate) *tls.Certificate {
	if cert.OCSPStaple == nil {
		return cert
	}
	c := *cert
	c.OCSPStaple = nil
	return &c
}

// register starts tracking a certificate. It reads a persisted response
// from storage (no network), then asks the refresher to fetch a fresh one.
func (s *stapler) register(cert tls.Certificate, names []string) {
	leaf := cert.Leaf
	if leaf != nil && len(leaf.OCSPServer) == 0 && s.crl != nil {
		s.crl.register(cert, names) // no responder: its CRL, if any
		return
	}
	if leaf == nil || len(leaf.OCSPServer) == 0 {
		return
	}
	// the entry is complete before the refresher can see it (it reads
	// issuer under s.mu)
	issuer := chainIssuer(cert)
	s.mu.Lock()
	if _, ok := s.entries[leaf]; ok {
		s.mu.Unlock()
		return
	}
	cert.OCSPStaple = nil
	e := &stapleEntry{leaf: leaf, cert: cert, names: names, key: stapleKey(leaf, names), issuer: issuer}
	s.entries[leaf] = e
	s.mu.Unlock()

	if e.issuer == nil {
		s.setErr(e, errors.New("chain has no issuer certificate to check OCSP responses against"))
		s.log.Warn("OCSP: cannot staple: the served chain lacks the issuer certificate", "names", names)
		return
	}
	if der, err := s.storage.Load(context.Background(), e.key); err == nil {
		if resp, err := s.accept(e, der); err == nil {
			s.log.Info("OCSP: loaded persisted staple", "names", names, "status", statusName(resp.Status), "next_update", resp.NextUpdate)
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// accept validates a response for e and makes it current. A Revoked
// response clears the staple and reports the revocation once.
// unregister stops keeping a staple for a certificate no longer served.
func (s *stapler) unregister(leaf *x509.Certificate) {
	if leaf == nil {
		return
	}
	s.mu.Lock()
	delete(s.entries, leaf)
	s.mu.Unlock()
	if s.crl != nil {
		s.crl.unregister(leaf)
	}
}

func (s *stapler) accept(e *stapleEntry, der []byte) (*ocsp.Response, error) {
	resp, err := ocsp.ParseResponseForCert(der, e.leaf, e.issuer)
	if err != nil {
		return nil, fmt.Errorf("invalid OCSP response: %w", err)
	}
	now := time.Now()
	if resp.NextUpdate.IsZero() {
		// no NextUpdate means "newer information is always available":
		// serve it for a short while only.
		resp.NextUpdate = resp.ThisUpdate.Add(time.Hour)
	}
	if resp.ThisUpdate.After(now.Add(5 * time.Minute)) {
		return nil, fmt.Errorf("OCSP response thisUpdate %s is in the future", resp.ThisUpdate)
	}
	if !now.Before(resp.NextUpdate) {
		return nil, fmt.Errorf("OCSP response is stale: nextUpdate %s has passed", resp.NextUpdate)
	}
	if resp.NextUpdate.After(e.leaf.NotAfter) {
		return nil, fmt.Errorf("OCSP response nextUpdate %s is after the certificate expires", resp.NextUpdate)
	}
	s.mu.Lock()
	e.lastResp = resp
	wasRevoked := e.revoked
	switch resp.Status {
	case ocsp.Good:
		c := new(tls.Certificate)
		*c = e.cert
		c.OCSPStaple = der
		e.cur.Store(&stapled{cert: c, resp: resp})
		e.revoked = false
	case ocsp.Revoked:
		e.cur.Store(nil)
		e.revoked = true
	default:
		// Unknown: keep a still-valid Good staple; nothing new to serve.
	}
	s.mu.Unlock()
	if resp.Status == ocsp.Revoked && !wasRevoked {
		s.log.Error("OCSP: certificate is REVOKED; staple withheld", "names", e.names,
			"serial", e.leaf.SerialNumber.Text(16), "revoked_at", resp.RevokedAt)
		if s.onRevoked != nil {
			s.onRevoked(e.leaf, e.names)
		}
	}
	return resp, nil
}

// run refreshes staples until ctx ends.
func (s *stapler) run(ctx context.Context) { refreshLoop(ctx, s.interval, s.kick, s.refreshDue) }

// refreshLoop runs refresh every interval and when kicked, until ctx
// ends (the stapler's and the CRL watcher's loop).
func refreshLoop(ctx context.Context, interval time.Duration, kick <-chan struct{}, refresh func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		refresh(ctx)
	}
}

func (s *stapler) refreshDue(ctx context.Context) {
	s.prune()
	now := time.Now()
	var due []*stapleEntry
	s.mu.RLock()
	for _, e := range s.entries {
		if e.issuer == nil || now.Before(e.nextTry) || time.Now().After(e.leaf.NotAfter) {
			continue
		}
		if r := e.lastResp; r != nil && now.Before(r.NextUpdate) {
			half := r.ThisUpdate.Add(r.NextUpdate.Sub(r.ThisUpdate) / 2)
			if now.Before(half) {
				continue
			}
		}
		due = append(due, e)
	}
	s.mu.RUnlock()

	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, e := range due {
		sem <- struct{}{}
		wg.Add(1)
		go func(e *stapleEntry) {
			defer func() { <-sem; wg.Done() }()
			s.refresh(ctx, e)
		}(e)
	}
	wg.Wait()
}

// notServed returns the certificates of m that live says are no longer
// served; live runs without mu held (it takes the cache's lock).
func notServed[V any](mu *sync.RWMutex, m map[*x509.Certificate]V, live func(*x509.Certificate) bool) []*x509.Certificate {
	mu.RLock()
	leaves := make([]*x509.Certificate, 0, len(m))
	for leaf := range m {
		leaves = append(leaves, leaf)
	}
	mu.RUnlock()
	var dead []*x509.Certificate
	for _, leaf := range leaves {
		if !live(leaf) {
			dead = append(dead, leaf)
		}
	}
	return dead
}

// prune forgets certificates that are no longer served.
func (s *stapler) prune() {
	if s.live == nil {
		return
	}
	dead := notServed(&s.mu, s.entries, s.live)
	if len(dead) == 0 {
		return
	}
	s.mu.Lock()
	for _, leaf := range dead {
		delete(s.entries, leaf)
	}
	s.mu.Unlock()
}

// refresh fetches a new response for e; on failure the current staple
// stays until its own NextUpdate, and the next try backs off.
func (s *stapler) refresh(ctx context.Context, e *stapleEntry) {
	der, err := s.fetch(ctx, e)
	var resp *ocsp.Response
	if err == nil {
		resp, err = s.accept(e, der)
	}
	if err != nil {
		s.setErr(e, err)
		s.log.Warn("OCSP: refresh failed; keeping the current staple until its nextUpdate",
			"names", e.names, "responder", e.leaf.OCSPServer[0], "error", err)
		return
	}
	s.mu.Lock()
	e.failures, e.lastErr, e.nextTry = 0, nil, time.Time{}
	s.mu.Unlock()
	if err := s.storage.Store(ctx, e.key, der); err != nil {
		s.log.Warn("OCSP: could not persist staple", "names", e.names, "error", err)
	}
	metricStapleUpdate(resp)
	s.log.Info("OCSP: staple updated", "names", e.names, "status", statusName(resp.Status), "next_update", resp.NextUpdate)
}

func (s *stapler) setErr(e *stapleEntry, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.failures++
	e.lastErr = err
	backoff := time.Duration(1<<min(e.failures-1, 6)) * 30 * time.Second // 30s .. 32m
	// a staple close to its NextUpdate is retried sooner: losing it
	// costs clients more than a few extra requests to the responder
	if sp := e.cur.Load(); sp != nil {
		if left := time.Until(sp.resp.NextUpdate) / 4; left < backoff {
			backoff = max(left, time.Second)
		}
	}
	e.nextTry = time.Now().Add(backoff)
}

func (s *stapler) fetch(ctx context.Context, e *stapleEntry) ([]byte, error) {
	req, err := ocsp.CreateRequest(e.leaf, e.issuer, &ocsp.RequestOptions{})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, e.leaf.OCSPServer[0], bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	hreq.Header.Set("Accept", "application/ocsp-response")
	res, err := s.client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("responder %s: %w", e.leaf.OCSPServer[0], err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("responder %s answered HTTP %d", e.leaf.OCSPServer[0], res.StatusCode)
	}
	return io.ReadAll(io.LimitReader(res.Body, 64<<10))
}

// StapleInfo describes a certificate's staple for the operator view.
type StapleInfo struct {
	Status     string    `json:"status"` // good, revoked, unknown, none
	ThisUpdate time.Time `json:"this_update,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
	NextTry    time.Time `json:"next_try,omitzero"`
}

func (s *stapler) info(leaf *x509.Certificate) (StapleInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.entries[leaf]
	if e == nil {
		return StapleInfo{}, false
	}
	si := StapleInfo{Status: "none", NextTry: e.nextTry}
	if e.lastResp != nil {
		si.Status = statusName(e.lastResp.Status)
		si.ThisUpdate, si.NextUpdate = e.lastResp.ThisUpdate, e.lastResp.NextUpdate
	}
	if e.lastErr != nil {
		si.LastError = e.lastErr.Error()
	}
	return si, true
}

func statusName(s int) string {
	switch s {
	case ocsp.Good:
		return "good"
	case ocsp.Revoked:
		return "revoked"
	}
	return "unknown"
}

// stapleKey is where a certificate's response is persisted.
func stapleKey(leaf *x509.Certificate, names []string) string {
	name := "cert"
	if len(names) > 0 {
		name = strings.NewReplacer("*", "wildcard_", "/", "_", ":", "_").Replace(names[0])
	}
	return "ocsp/" + name + "-" + leaf.SerialNumber.Text(16)
}
