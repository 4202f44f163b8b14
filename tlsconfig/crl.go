package tlsconfig

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// crlWatcher checks served certificates against their CA's CRL when
// they name a CRL distribution point and no OCSP responder (Let's
// Encrypt since 2025). Its rules, mirroring the stapler's (ocsp.go):
//   - a handshake never waits on a CRL server: the fetch runs in the
//     background, and a handshake at most registers the certificate;
//   - a CRL is fetched once per refresh per URL (and issuer), however
//     many certificates name it: CAs shard their CRLs and many
//     certificates share a shard;
//   - refreshes happen at half the CRL's validity, no sooner than
//     crlMinRefresh after the last fetch and no later than
//     crlMaxRefresh, with backoff on failure;
//   - a CRL is accepted only when signed by the certificate's issuer,
//     issued by it by name, current (ThisUpdate not in the future,
//     NextUpdate not passed), not older than the one held, and at most
//     crlMaxSize bytes; anything else is no information (logged), never
//     a revocation;
//   - the last accepted CRL is persisted in storage, so a restart with
//     the CRL server down still knows it;
//   - memory: only the CRL's dates and the certificates that use it are
//     kept; the list itself is parsed, matched against those
//     certificates' serials and dropped. Lists no served certificate
//     names are forgotten.
//
// A serial found on a CRL is a revocation: onRevoked is called once per
// certificate (the manager replaces a managed certificate at once and
// reports a manual one), exactly like an OCSP Revoked answer.
type crlWatcher struct {
	storage   certmagic.Storage
	log       *slog.Logger
	interval  time.Duration
	onRevoked func(leaf *x509.Certificate, names []string)
	live      func(leaf *x509.Certificate) bool // still served? nil: always
	client    *http.Client

	mu         sync.RWMutex
	minRefresh time.Duration
	maxRefresh time.Duration
	maxSize    int64
	timeout    time.Duration
	certs      map[*x509.Certificate]*crlCert
	lists      map[string]*crlList // by listID(url, issuer)
	kick       chan struct{}
}

// Defaults of the CRL refresh.
const (
	crlMinRefresh   = 5 * time.Minute  // never fetch one URL more often
	crlMaxRefresh   = 6 * time.Hour    // fetch at least this often
	crlMaxBackoff   = time.Hour        // longest wait after failures
	crlMaxSize      = 64 << 20         // bytes; larger CRLs are refused
	crlFetchTimeout = 30 * time.Second // per fetch, body included
)

// oidDeltaCRLIndicator marks a delta CRL (RFC 5280 5.2.4), which lists
// only changes since a base CRL: not supported, so not trusted as complete.
var oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}

// crlCert is one certificate watched through a CRL.
type crlCert struct {
	leaf    *x509.Certificate
	names   []string
	list    *crlList // nil: cannot be checked (no issuer in the chain)
	revoked bool     // guarded by crlWatcher.mu
	checked bool     // matched against the list held (guarded by mu)
}

// crlList is one CRL (URL + issuer) and what is known of it. Guarded by
// crlWatcher.mu.
type crlList struct {
	id     string
	url    string
	issuer *x509.Certificate
	key    string // storage key of the persisted CRL
	certs  map[*x509.Certificate]*crlCert

	loaded     bool // storage was read once
	have       bool // a valid CRL was accepted
	thisUpdate time.Time
	nextUpdate time.Time
	number     *big.Int
	fetched    time.Time // last fetch attempt that succeeded
	nextFetch  time.Time
	failures   int
	lastErr    error
}

func newCRLWatcher(storage certmagic.Storage, log *slog.Logger, interval time.Duration, onRevoked func(*x509.Certificate, []string)) *crlWatcher {
	return &crlWatcher{
		storage:    storage,
		log:        log,
		interval:   interval,
		onRevoked:  onRevoked,
		client:     &http.Client{},
		minRefresh: crlMinRefresh,
		maxRefresh: crlMaxRefresh,
		maxSize:    crlMaxSize,
		timeout:    crlFetchTimeout,
		certs:      map[*x509.Certificate]*crlCert{},
		lists:      map[string]*crlList{},
		kick:       make(chan struct{}, 1),
	}
}

// setLimits changes the refresh bounds, the size cap and the fetch
// timeout (tests use seconds and bytes where production uses hours and
// MiB).
func (w *crlWatcher) setLimits(minRefresh, maxRefresh time.Duration, maxSize int64, timeout time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.minRefresh, w.maxRefresh, w.maxSize, w.timeout = minRefresh, maxRefresh, maxSize, timeout
}

// crlURL is the first http(s) CRL distribution point of a certificate
// that names no OCSP responder, or "".
func crlURL(leaf *x509.Certificate) string {
	if leaf == nil || len(leaf.OCSPServer) > 0 {
		return ""
	}
	for _, u := range leaf.CRLDistributionPoints {
		p, err := url.Parse(u)
		if err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "" {
			return u
		}
	}
	return ""
}

// wants reports whether leaf is a CRL certificate not tracked yet. It
// is what a handshake asks: two map lookups under a read lock.
func (w *crlWatcher) wants(leaf *x509.Certificate) bool {
	if leaf == nil || len(leaf.OCSPServer) > 0 || len(leaf.CRLDistributionPoints) == 0 {
		return false
	}
	w.mu.RLock()
	_, ok := w.certs[leaf]
	w.mu.RUnlock()
	return !ok && crlURL(leaf) != ""
}

// register starts watching a certificate; the fetch (or the read of a
// persisted CRL) happens in run, never here.
func (w *crlWatcher) register(cert tls.Certificate, names []string) {
	leaf := cert.Leaf
	u := crlURL(leaf)
	if u == "" {
		return
	}
	issuer := chainIssuer(cert)
	w.mu.Lock()
	if _, ok := w.certs[leaf]; ok {
		w.mu.Unlock()
		return
	}
	c := &crlCert{leaf: leaf, names: names}
	w.certs[leaf] = c
	if issuer != nil {
		id := listID(u, issuer)
		l := w.lists[id]
		if l == nil {
			l = &crlList{id: id, url: u, issuer: issuer, key: crlKey(u, id), certs: map[*x509.Certificate]*crlCert{}}
			w.lists[id] = l
		}
		l.certs[leaf] = c
		c.list = l
	}
	w.mu.Unlock()
	if issuer == nil {
		w.log.Warn("CRL: cannot check revocation: the served chain lacks the issuer certificate", "names", names, "crl", u)
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// unregister stops watching a certificate no longer served.
func (w *crlWatcher) unregister(leaf *x509.Certificate) {
	if leaf == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.drop(leaf)
}

// drop forgets leaf, and its list when no certificate names it any more.
// Called with w.mu held.
func (w *crlWatcher) drop(leaf *x509.Certificate) {
	c := w.certs[leaf]
	if c == nil {
		return
	}
	delete(w.certs, leaf)
	if l := c.list; l != nil {
		delete(l.certs, leaf)
		if len(l.certs) == 0 {
			delete(w.lists, l.id)
		}
	}
}

// run refreshes CRLs until ctx ends.
func (w *crlWatcher) run(ctx context.Context) { refreshLoop(ctx, w.interval, w.kick, w.refreshDue) }

// refreshDue works through the lists one at a time (bounding the memory
// a parsed CRL takes to one list): a list not read from storage yet is
// read; a list due is fetched; a list with certificates not yet matched
// against it is matched from its persisted copy.
func (w *crlWatcher) refreshDue(ctx context.Context) {
	w.prune()
	type job struct {
		l              *crlList
		load, fetch    bool
		rematch        bool
		url, storeKey  string
		issuer         *x509.Certificate
		lastThisUpdate time.Time
	}
	now := time.Now()
	var jobs []job
	w.mu.RLock()
	for _, l := range w.lists {
		j := job{l: l, url: l.url, storeKey: l.key, issuer: l.issuer}
		j.load = !l.loaded
		j.fetch = !now.Before(l.nextFetch)
		for _, c := range l.certs {
			if !c.checked {
				j.rematch = true
				break
			}
		}
		if j.load || j.fetch || j.rematch {
			jobs = append(jobs, j)
		}
	}
	w.mu.RUnlock()
	for _, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		ok := false
		if j.load || (j.rematch && !j.fetch) {
			ok = w.fromStorage(ctx, j.l)
		}
		w.mu.RLock()
		due := !time.Now().Before(j.l.nextFetch)
		w.mu.RUnlock()
		// a certificate new to a list held whose persisted copy is gone
		// (a store refusing large values) is matched by a fetch, unless
		// fetches are failing (then it waits for the backoff)
		w.mu.RLock()
		refetch := j.rematch && !ok && j.l.have && j.l.failures == 0
		w.mu.RUnlock()
		if due || refetch {
			w.refresh(ctx, j.l)
		}
	}
}

// fromStorage accepts the persisted copy of l, if any and still valid.
func (w *crlWatcher) fromStorage(ctx context.Context, l *crlList) bool {
	w.mu.Lock()
	first := !l.loaded
	l.loaded = true
	w.mu.Unlock()
	der, err := w.storage.Load(ctx, l.key)
	if err != nil {
		return false
	}
	rl, err := w.accept(l, der)
	if err != nil {
		if first {
			w.log.Warn("CRL: persisted CRL not used", "crl", l.url, "error", err)
		}
		return false
	}
	w.mu.Lock()
	if l.nextFetch.IsZero() {
		l.nextFetch = w.nextFetchLocked(rl, time.Now())
	}
	w.mu.Unlock()
	if first {
		w.log.Info("CRL: loaded persisted CRL", "crl", l.url, "this_update", rl.ThisUpdate, "next_update", rl.NextUpdate)
	}
	return true
}

// refresh fetches l; on failure the CRL held stays (until its own
// NextUpdate) and the next try backs off.
func (w *crlWatcher) refresh(ctx context.Context, l *crlList) {
	der, err := w.fetch(ctx, l.url)
	var rl *x509.RevocationList
	if err == nil {
		rl, err = w.accept(l, der)
	}
	now := time.Now()
	w.mu.Lock()
	if err != nil {
		l.failures++
		l.lastErr = err
		backoff := min(w.minRefresh<<min(l.failures-1, 10), max(crlMaxBackoff, w.minRefresh))
		if backoff > w.maxRefresh {
			backoff = max(w.maxRefresh, w.minRefresh)
		}
		l.nextFetch = now.Add(backoff)
		w.mu.Unlock()
		w.log.Warn("CRL: refresh failed; this is no revocation information, the CRL held (if any) stays until its nextUpdate",
			"crl", l.url, "error", err, "retry_in", backoff)
		return
	}
	l.failures, l.lastErr, l.fetched = 0, nil, now
	l.nextFetch = w.nextFetchLocked(rl, now)
	next := l.nextFetch
	w.mu.Unlock()
	if err := w.storage.Store(ctx, l.key, der); err != nil {
		w.log.Warn("CRL: could not persist CRL", "crl", l.url, "error", err)
	}
	w.log.Info("CRL: updated", "crl", l.url, "this_update", rl.ThisUpdate, "next_update", rl.NextUpdate,
		"entries", len(rl.RevokedCertificateEntries), "next_fetch", next)
}

// nextFetchLocked schedules the next fetch: half the CRL's validity,
// bounded by minRefresh and maxRefresh from now. Called with w.mu held.
func (w *crlWatcher) nextFetchLocked(rl *x509.RevocationList, now time.Time) time.Time {
	at := now.Add(w.maxRefresh)
	if !rl.NextUpdate.IsZero() {
		if half := rl.ThisUpdate.Add(rl.NextUpdate.Sub(rl.ThisUpdate) / 2); half.Before(at) {
			at = half
		}
	}
	if floor := now.Add(w.minRefresh); at.Before(floor) {
		at = floor
	}
	return at
}

// fetch downloads a CRL, bounded in time and size.
func (w *crlWatcher) fetch(ctx context.Context, u string) ([]byte, error) {
	w.mu.RLock()
	limit, timeout := w.maxSize, w.timeout
	w.mu.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/pkix-crl")
	res, err := w.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("CRL %s: %w", u, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CRL %s: HTTP %d", u, res.StatusCode)
	}
	if res.ContentLength > limit {
		return nil, fmt.Errorf("CRL %s: %d bytes, more than the %d allowed", u, res.ContentLength, limit)
	}
	der, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("CRL %s: reading: %w", u, err)
	}
	if int64(len(der)) > limit {
		return nil, fmt.Errorf("CRL %s: more than the %d bytes allowed", u, limit)
	}
	return der, nil
}

// accept validates a CRL for l and matches l's certificates against it.
// It never marks a certificate revoked from a CRL it did not accept.
func (w *crlWatcher) accept(l *crlList, der []byte) (*x509.RevocationList, error) {
	if bytes.HasPrefix(bytes.TrimSpace(der), []byte("-----BEGIN")) {
		b, _ := pem.Decode(bytes.TrimSpace(der))
		if b == nil || b.Type != "X509 CRL" {
			return nil, errors.New("invalid CRL: PEM without an X509 CRL block")
		}
		der = b.Bytes
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("invalid CRL: %w", err)
	}
	if !bytes.Equal(rl.RawIssuer, l.issuer.RawSubject) {
		return nil, fmt.Errorf("CRL issuer %q is not the certificate's issuer %q", rl.Issuer, l.issuer.Subject)
	}
	if err := rl.CheckSignatureFrom(l.issuer); err != nil {
		return nil, fmt.Errorf("CRL signature does not verify with the issuer's key: %w", err)
	}
	for _, ext := range rl.Extensions {
		if ext.Id.Equal(oidDeltaCRLIndicator) {
			return nil, errors.New("delta CRLs are not supported")
		}
	}
	now := time.Now()
	if rl.ThisUpdate.After(now.Add(5 * time.Minute)) {
		return nil, fmt.Errorf("CRL thisUpdate %s is in the future", rl.ThisUpdate)
	}
	if !rl.NextUpdate.IsZero() && !now.Before(rl.NextUpdate) {
		return nil, fmt.Errorf("CRL is stale: nextUpdate %s has passed", rl.NextUpdate)
	}

	older := func() bool {
		return l.have && (rl.ThisUpdate.Before(l.thisUpdate) ||
			(l.number != nil && rl.Number != nil && rl.Number.Cmp(l.number) < 0))
	}
	// only the serials of the certificates on this list are looked
	// for; the list is walked without the lock (it can be long, and a
	// handshake may take the read lock)
	w.mu.RLock()
	if older() {
		w.mu.RUnlock()
		return nil, fmt.Errorf("CRL (thisUpdate %s) is older than the one held (thisUpdate %s)", rl.ThisUpdate, l.thisUpdate)
	}
	bySerial := make(map[string][]*crlCert, len(l.certs)) // the same certificate may be loaded twice
	for _, c := range l.certs {
		k := string(c.leaf.SerialNumber.Bytes())
		bySerial[k] = append(bySerial[k], c)
	}
	w.mu.RUnlock()
	var listed []*crlCert
	for i := range rl.RevokedCertificateEntries {
		e := &rl.RevokedCertificateEntries[i]
		if e.SerialNumber == nil || e.SerialNumber.Sign() <= 0 {
			continue
		}
		listed = append(listed, bySerial[string(e.SerialNumber.Bytes())]...)
	}
	w.mu.Lock()
	if older() { // cannot happen with one refresher; kept for safety
		w.mu.Unlock()
		return nil, fmt.Errorf("CRL (thisUpdate %s) is older than the one held (thisUpdate %s)", rl.ThisUpdate, l.thisUpdate)
	}
	l.have, l.thisUpdate, l.nextUpdate, l.number = true, rl.ThisUpdate, rl.NextUpdate, rl.Number
	var newly []*crlCert
	for _, c := range listed {
		if !c.revoked {
			c.revoked = true
			newly = append(newly, c)
		}
	}
	for _, cs := range bySerial {
		for _, c := range cs {
			c.checked = true
		}
	}
	w.mu.Unlock()
	// the parsed list is not kept: rl goes when the caller returns
	for _, c := range newly {
		w.log.Error("CRL: certificate is REVOKED (its serial is on its CA's CRL)", "names", c.names,
			"serial", c.leaf.SerialNumber.Text(16), "crl", l.url)
		if w.onRevoked != nil {
			w.onRevoked(c.leaf, c.names)
		}
	}
	return rl, nil
}

// prune forgets certificates that are no longer served.
func (w *crlWatcher) prune() {
	if w.live == nil {
		return
	}
	dead := notServed(&w.mu, w.certs, w.live)
	if len(dead) == 0 {
		return
	}
	w.mu.Lock()
	for _, leaf := range dead {
		w.drop(leaf)
	}
	w.mu.Unlock()
}

// CRLInfo describes what the CRL says about a certificate.
type CRLInfo struct {
	URL        string    `json:"url"`
	Status     string    `json:"status"` // good (not listed), revoked, unknown (no valid CRL held)
	ThisUpdate time.Time `json:"this_update,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
	NextFetch  time.Time `json:"next_fetch,omitzero"`
}

func (w *crlWatcher) info(leaf *x509.Certificate) (CRLInfo, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	c := w.certs[leaf]
	if c == nil {
		return CRLInfo{}, false
	}
	ci := CRLInfo{URL: crlURL(leaf), Status: "unknown"}
	l := c.list
	if l == nil {
		ci.LastError = "the served chain lacks the issuer certificate"
		return ci, true
	}
	ci.NextFetch = l.nextFetch
	if l.lastErr != nil {
		ci.LastError = l.lastErr.Error()
	}
	switch {
	case c.revoked:
		ci.Status = "revoked"
	case l.have && c.checked && time.Now().Before(l.nextUpdate):
		ci.Status = "good"
	}
	if l.have {
		ci.ThisUpdate, ci.NextUpdate = l.thisUpdate, l.nextUpdate
	}
	return ci, true
}

// listID identifies a CRL: its URL and the issuer that must sign it.
func listID(u string, issuer *x509.Certificate) string {
	h := sha256.New()
	h.Write([]byte(u))
	h.Write([]byte{0})
	h.Write(issuer.Raw)
	return hex.EncodeToString(h.Sum(nil))
}

// crlKey is where a CRL is persisted: by host, for an operator reading
// the store, and the list's hash.
func crlKey(u, id string) string {
	host := "crl"
	if p, err := url.Parse(u); err == nil && p.Hostname() != "" {
		host = strings.NewReplacer("*", "_", "/", "_", ":", "_").Replace(p.Hostname())
	}
	return "crl/" + host + "-" + id[:32] + ".crl"
}
