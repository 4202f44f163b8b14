package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// Renewal scheduling.
//
// certmagic checks its cache for certificates due for renewal on one
// fixed timer (RenewCheckInterval, 10 minutes by default), whatever the
// certificates' lifetimes, and calls a certificate with less than five
// check intervals left an emergency. A certificate that lives two minutes
// is then never renewed in time: it was served expired for 40 s in a test
// (issue 12). So gatehouse keeps its own schedule over the certificates
// it holds:
//   - each cached managed certificate is due at the lifetime rule (half
//     of its life for short-lived ones under 10 days, else a third of its
//     life left; see shortLived), or earlier at the ARI selected time,
//     which certmagic honours from one check interval before it;
//   - the check interval is at most a tenth of the shortest lifetime held
//     (never below minRenewCheck), and certmagic is told that interval,
//     so its ARI cutoff and emergency margin scale with it;
//   - the scheduler wakes at the earliest due time or after one interval,
//     whichever comes first (but at most ten times an interval), and runs
//     certmagic's renewal scan.
// Certificates indexed in storage but not loaded are checked by the lazy
// walk (lazy.go) against the same rule.
//
// A backstop on the handshake path (renewExpired): a managed certificate
// found expired when a handshake asks for it is renewed synchronously,
// the handshake waiting at most its timeout, and at most one attempt per
// name per expiredRetry, so a CA outage does not turn every handshake
// into an order.

// minRenewCheck is the shortest check interval the lifetime rule gives.
const minRenewCheck = time.Second

// expiredRetry paces handshake-triggered renewals of one name.
const expiredRetry = 30 * time.Second

// renewPlan is the scheduler's state.
type renewPlan struct {
	mu       sync.Mutex
	interval time.Duration // check interval in force
	shortest time.Duration // shortest lifetime held
	next     time.Time     // earliest due time ahead
	kick     chan struct{} // certificates changed: plan again

	// handshake backstop
	expired map[string]*expiredCall
}

type expiredCall struct {
	done chan struct{}
	at   time.Time
	err  error
}

func newRenewPlan() *renewPlan {
	return &renewPlan{kick: make(chan struct{}, 1), expired: map[string]*expiredCall{}}
}

// checkInterval is the renewal check interval with base configured
// (certmagic's default unless set) and shortest the shortest certificate
// lifetime held (0: none).
func checkInterval(base, shortest time.Duration) time.Duration {
	if shortest <= 0 {
		return base
	}
	return min(base, max(shortest/10, minRenewCheck))
}

func (m *Manager) baseRenewInterval() time.Duration {
	if m.opts.RenewCheckInterval > 0 {
		return m.opts.RenewCheckInterval
	}
	return certmagic.DefaultRenewCheckInterval
}

// renewCheckInterval is the check interval in force.
func (m *Manager) renewCheckInterval() time.Duration {
	m.plan.mu.Lock()
	defer m.plan.mu.Unlock()
	if m.plan.interval == 0 {
		return m.baseRenewInterval()
	}
	return m.plan.interval
}

// setRenewCheckInterval puts iv in force, for certmagic's decisions too.
func (m *Manager) setRenewCheckInterval(iv time.Duration) {
	m.plan.mu.Lock()
	changed := m.plan.interval != iv
	m.plan.interval = iv
	m.plan.mu.Unlock()
	if !changed {
		return
	}
	opts := m.cacheOpts
	opts.RenewCheckInterval = iv
	m.cache.SetOptions(opts)
	m.log.Debug("renewal check interval", "interval", iv)
}

// noteCached updates the plan for names whose certificate was just
// cached (a load or an order; certmagic's swap after a renewal sends no
// event, and the pass after the scan finds it), and wakes the scheduler
// when that brings the next due time or the check interval forward. It
// costs a cache lookup per name, not a pass over every name.
func (m *Manager) noteCached(names []string) {
	now := time.Now()
	wake := false
	for _, n := range names {
		var due time.Time
		var life time.Duration
		for _, cert := range m.cachedManaged(n) {
			cfg, err := m.configForCert(cert)
			if err != nil || cfg == m.manual || cfg.OnDemand != nil {
				continue
			}
			l := cert.Lifetime()
			d := dueAt(cert.Leaf, acme.RenewalInfo{}, m.renewalRatio(cfg, cert.Leaf), checkInterval(m.baseRenewInterval(), l))
			if d.After(due) {
				due, life = d, l
			}
		}
		if due.IsZero() {
			continue
		}
		m.plan.mu.Lock()
		if life > 0 && (m.plan.shortest == 0 || life < m.plan.shortest) {
			m.plan.shortest, wake = life, true
		}
		if due.After(now) && (m.plan.next.IsZero() || due.Before(m.plan.next)) {
			m.plan.next, wake = due, true
		}
		m.plan.mu.Unlock()
	}
	if wake {
		select {
		case m.plan.kick <- struct{}{}:
		default:
		}
	}
}

// renewalRatio is the lifetime rule for leaf under config c: the share of
// the lifetime left when it is due.
func (m *Manager) renewalRatio(c *certmagic.Config, leaf *x509.Certificate) float64 {
	m.mu.RLock()
	hasShort := m.short[c] != nil
	m.mu.RUnlock()
	if shortLived(leaf) && (hasShort || c.RenewalWindowRatio == shortRenewalRatio) {
		return shortRenewalRatio
	}
	if c.RenewalWindowRatio != 0 {
		return c.RenewalWindowRatio
	}
	return certmagic.DefaultRenewalWindowRatio
}

// RenewalDue is when a certificate is due for renewal: the ARI selected
// time (as certmagic acts on it: one check interval before), else the
// lifetime rule (half-life under 10 days, else a third of the lifetime
// left), and never later than certmagic's emergency margin.
func RenewalDue(leaf *x509.Certificate, ari acme.RenewalInfo, interval time.Duration) time.Time {
	ratio := certmagic.DefaultRenewalWindowRatio
	if shortLived(leaf) {
		ratio = shortRenewalRatio
	}
	return dueAt(leaf, ari, ratio, interval)
}

// planRenewals computes each cached managed certificate's due time and
// returns the earliest one still ahead and the shortest lifetime held.
func (m *Manager) planRenewals(now time.Time) (next time.Time, shortest time.Duration) {
	type held struct {
		name string
		cfg  *certmagic.Config
		leaf *x509.Certificate
	}
	m.mu.RLock()
	names := make([]string, 0, len(m.byName))
	for n, c := range m.byName {
		if c != m.manual {
			names = append(names, n)
		}
	}
	m.mu.RUnlock()
	var hs []held
	for _, n := range names {
		for _, cert := range m.cachedManaged(n) {
			cfg, err := m.configForCert(cert)
			if err != nil || cfg == m.manual || cfg.OnDemand != nil {
				continue
			}
			life := cert.Lifetime()
			if life > 0 && (shortest == 0 || life < shortest) {
				shortest = life
			}
			hs = append(hs, held{n, cfg, cert.Leaf})
		}
	}
	iv := checkInterval(m.baseRenewInterval(), shortest)
	due := make(map[string]time.Time, len(hs))
	for _, h := range hs {
		d := dueAt(h.leaf, acme.RenewalInfo{}, m.renewalRatio(h.cfg, h.leaf), iv)
		if old, ok := due[h.name]; ok && old.After(d) {
			continue // the newest certificate of a name decides
		}
		due[h.name] = d
	}
	for _, d := range due {
		if d.After(now) && (next.IsZero() || d.Before(next)) {
			next = d
		}
	}
	m.plan.mu.Lock()
	m.plan.shortest, m.plan.next = shortest, next
	m.plan.mu.Unlock()
	return next, shortest
}

// runRenewSchedule is the scheduler loop (see above): a pass over the
// cached certificates after each scan; between scans it sleeps until the
// earliest due time or one check interval, brought forward by noteCached.
func (m *Manager) runRenewSchedule(ctx context.Context) {
	m.planRenewals(time.Now())
	scanned := time.Now()
	for {
		m.plan.mu.Lock()
		next, shortest := m.plan.next, m.plan.shortest
		m.plan.mu.Unlock()
		iv := checkInterval(m.baseRenewInterval(), shortest)
		m.setRenewCheckInterval(iv)
		wakeAt := nextWake(scanned, next, iv)
		timer := time.NewTimer(time.Until(wakeAt))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-m.plan.kick:
			timer.Stop()
			continue
		case <-timer.C:
		}
		if err := m.cache.RenewManagedCertificates(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("renewal scan", "error", err)
		}
		scanned = time.Now()
		m.planRenewals(scanned)
	}
}

// renewExpired is the handshake backstop: cert, a managed certificate of
// config c for name, has expired. It renews now (once for every handshake
// waiting, at most once per expiredRetry per name) and returns the
// renewed certificate, or cert when the renewal fails or takes longer
// than the handshake may wait.
func (m *Manager) renewExpired(hello *tls.ClientHelloInfo, c *certmagic.Config, name string, cert *tls.Certificate) *tls.Certificate {
	p := m.plan
	p.mu.Lock()
	call := p.expired[name]
	if call == nil || (time.Since(call.at) > expiredRetry && isDone(call.done)) {
		call = &expiredCall{done: make(chan struct{}), at: time.Now()}
		p.expired[name] = call
		go m.renewExpiredOnce(c, name, cert.Leaf, call)
	}
	p.mu.Unlock()
	limit := m.handshakeTimeout()
	parent := hello.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	select {
	case <-call.done:
	case <-ctx.Done():
		return cert
	}
	if call.err != nil {
		return cert
	}
	if fresh, err := c.GetCertificate(hello); err == nil && fresh != nil && fresh.Leaf != nil && time.Now().Before(fresh.Leaf.NotAfter) {
		return fresh
	}
	return cert
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// renewExpiredOnce renews name's expired certificate (or loads a renewal
// another instance or certmagic's own job stored meanwhile) and swaps it
// into the cache.
func (m *Manager) renewExpiredOnce(c *certmagic.Config, name string, old *x509.Certificate, call *expiredCall) {
	defer close(call.done)
	ctx, cancel := context.WithTimeout(m.ctx, 2*time.Minute)
	defer cancel()
	m.log.Warn("certificate expired before its renewal; renewing it now for the waiting handshake", "name", name,
		"not_after", old.NotAfter, "serial", old.SerialNumber.Text(16))
	if err := c.RenewCertSync(ctx, name, false); err != nil {
		call.err = err
		m.log.Error("renewing an expired certificate failed; it is served until a renewal succeeds", "name", name, "error", err)
		return
	}
	if _, err := c.CacheManagedCertificate(ctx, name); err != nil {
		call.err = fmt.Errorf("loading the renewed certificate: %w", err)
		m.log.Error("loading the renewed certificate failed", "name", name, "error", err)
		return
	}
	var stale []string
	for _, oc := range m.cachedManaged(name) {
		if oc.Leaf.SerialNumber.Cmp(old.SerialNumber) == 0 {
			stale = append(stale, oc.Hash())
		}
	}
	m.cache.Remove(stale)
	m.noteCached([]string{name})
}

// RenewalDueAt reports whether a certificate is due for renewal at now
// by RenewalDue's rule.
func RenewalDueAt(leaf *x509.Certificate, ari acme.RenewalInfo, interval time.Duration, now time.Time) bool {
	return !now.Before(RenewalDue(leaf, ari, interval))
}

// nextWake is when the scheduler scans next, the last scan at scanned:
// one check interval later, or just past the next due time when that
// comes first (certmagic's window test is strict), but no sooner than a
// tenth of the interval after the last scan, so that 100,000 names falling
// due one by one over weeks cost at most ten scans an interval.
func nextWake(scanned, next time.Time, iv time.Duration) time.Time {
	wakeAt := scanned.Add(iv)
	if !next.IsZero() && next.Before(wakeAt) {
		wakeAt = later(next.Add(10*time.Millisecond), scanned.Add(iv/10))
	}
	return wakeAt
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
