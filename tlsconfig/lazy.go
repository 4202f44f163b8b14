package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// Lazy loading of stored certificates.
//
// At a restart nearly every managed name has its certificate in storage
// already. Reading and parsing all of them before serving costs ~180 µs
// of CPU and a few KiB of memory per name: 20 s and a GiB at 100,000
// names (bench/README.md, many names). So Apply only lists which names
// have a certificate in storage (one directory listing per issuer) and
// keeps them in an index; a name's certificate is read, parsed and cached
// as a managed certificate (so certmagic renews it) on the name's first
// handshake, which waits for that load.
//
// Renewal must not wait for traffic: a background walk, at a bounded rate
// and one name at a time, reads each indexed name's stored certificate
// (the leaf and its metadata, not the key) and
//   - loads it into the cache when it is due for renewal (certmagic's
//     rules: its ARI window, the lifetime ratio, the emergency margins),
//     expired, due for an ARI refresh, or names an OCSP responder (the
//     stapler watches it for revocation from then on), and then asks
//     certmagic to run its renewal scan;
//   - hands the name to certmagic to order when storage has no usable
//     certificate for it after all;
//   - otherwise records when to look again, and the expiry for the
//     metrics, without keeping the certificate.
// Later passes only re-read names whose recorded time has come.
//
// What /readyz says: a name indexed but not checked yet is in state
// "stored", not "ready" (its certificate may have expired): /readyz
// answers 200 with such names, since they are served from storage, and
// counts them in stored_unchecked, which falls to 0 once the walk has
// been through. A name the walk checked is "ready"; one whose only
// certificate has expired is "expired" (counted as waiting, with the
// reason) until its renewal succeeds. `gatehouse certs` reads storage itself and
// reports every certificate's state (ok, renewal_due, expired) whether
// it was loaded or not.

// DefaultStoredCheckRate is how many stored certificates per second the
// background walk reads (Options.StoredCheckRate).
const DefaultStoredCheckRate = 1000

const (
	// storedLoadTimeout bounds one load from storage.
	storedLoadTimeout = 30 * time.Second
	// storedListTimeout bounds the listing of one issuer's certificates.
	storedListTimeout = 2 * time.Minute
	// smallIndex: up to this many names are looked up one by one
	// instead of listing every stored certificate.
	smallIndex = 64
)

// storedIndex is the names whose certificate is in storage and not yet
// loaded into the cache. An entry is 16 bytes beside its map slot; a
// name leaves the index when it is loaded or handed to certmagic.
type storedIndex struct {
	mu       sync.RWMutex
	names    map[string]storedEntry
	loading  map[string]*loadCall // loads in flight, one per name
	loads    atomic.Int64         // certificates loaded through the index
	released atomic.Int64         // idle certificates put back (releaseIdle)
	kick     chan struct{}        // new names to check
	started  bool                 // walk running
}

type storedEntry struct {
	notAfter int64 // Unix seconds; 0 until the walk read it
	checkAt  int64 // Unix seconds when the walk looks again; 0: not checked yet
}

// loadCall is one load of a name's certificate that every handshake
// arriving meanwhile waits for.
type loadCall struct {
	done chan struct{}
	err  error
}

func newStoredIndex() *storedIndex {
	return &storedIndex{names: map[string]storedEntry{}, loading: map[string]*loadCall{}, kick: make(chan struct{}, 1)}
}

// pending reports whether name's certificate is in storage and not loaded.
func (x *storedIndex) pending(name string) bool {
	x.mu.RLock()
	_, ok := x.names[name]
	x.mu.RUnlock()
	return ok
}

// drop removes name from the index (loaded, handed over, or no longer routed).
func (x *storedIndex) drop(name string) {
	x.mu.Lock()
	delete(x.names, name)
	x.mu.Unlock()
}

// StoredLoads is how many certificates were loaded from storage through
// the lazy index (first handshakes and the walk's loads), for tests and
// the operator: at a restart it stays far below the number of names
// until traffic reaches them.
func (m *Manager) StoredLoads() int64 { return m.stored.loads.Load() }

// indexStored puts those of names (all under config c) whose certificate
// storage holds into the index, marks them "stored", and returns the
// others. When the store cannot be listed it returns names unchanged, so
// the caller loads each one from storage as before.
func (m *Manager) indexStored(c *certmagic.Config, names []string) []string {
	start := time.Now()
	have := map[string]struct{}{}
	if len(names) <= smallIndex {
		// a few names (a small config, or names added by a reload):
		// one Stat each costs less than listing every stored name
		for _, n := range names {
			for _, iss := range c.Issuers {
				ctx, cancel := context.WithTimeout(m.ctx, healthTimeout)
				_, err := m.storage.Stat(ctx, siteKey(issuerKey(iss), n, ".crt"))
				cancel()
				if err == nil {
					have[safeKey(n)] = struct{}{}
					break
				}
				if !errors.Is(err, fs.ErrNotExist) {
					if m.ctx.Err() == nil {
						m.log.Warn("checking storage for certificates failed; reading each name's certificate from storage instead", "error", err)
					}
					return names
				}
			}
		}
	}
	for _, iss := range c.Issuers {
		if len(names) <= smallIndex {
			break
		}
		dir := certmagic.StorageKeys.CertsPrefix(issuerKey(iss))
		ctx, cancel := context.WithTimeout(m.ctx, storedListTimeout)
		sites, err := m.listSites(ctx, dir)
		cancel()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if m.ctx.Err() == nil {
				m.log.Warn("listing stored certificates failed; reading each name's certificate from storage instead",
					"dir", dir, "error", err)
			}
			return names
		}
		for _, s := range sites {
			have[s] = struct{}{}
		}
	}
	var rest, indexed []string
	m.stored.mu.Lock()
	for _, n := range names {
		if _, ok := have[safeKey(n)]; ok {
			m.stored.names[n] = storedEntry{}
			indexed = append(indexed, n)
		} else {
			rest = append(rest, n)
		}
	}
	m.stored.mu.Unlock()
	for _, n := range indexed {
		m.status.set(n, "", stateStored, nil)
	}
	if len(indexed) > 0 {
		m.log.Info("certificates in storage indexed; each is loaded on its name's first handshake and checked for renewal in the background",
			"names", len(indexed), "without_certificate", len(rest), "took", time.Since(start).Round(time.Millisecond))
		m.startWalk()
	}
	return rest
}

// listSites returns the site folder names under dir (one per name with a
// certificate). On the file store it reads the directory once, without
// the stat per entry FileStorage.List does.
func (m *Manager) listSites(ctx context.Context, dir string) ([]string, error) {
	if fst, ok := m.storage.(interface{ Filename(key string) string }); ok { // FileStorage
		entries, err := os.ReadDir(fst.Filename(dir))
		if err != nil {
			return nil, err
		}
		out := make([]string, 0, len(entries))
		for _, e := range entries {
			if e.IsDir() {
				out = append(out, e.Name())
			}
		}
		return out, nil
	}
	keys, err := m.storage.List(ctx, dir, false)
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		keys[i] = path.Base(k)
	}
	return keys, nil
}

// safeKey is certmagic.StorageKeys.Safe without its per-call
// strings.Replacer for the usual host name, which it leaves as is.
func safeKey(name string) string {
	for i := 0; i < len(name); i++ {
		ch := name[i]
		plain := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' ||
			ch == '.' && (i == 0 || name[i-1] != '.')
		if !plain {
			return certmagic.StorageKeys.Safe(name)
		}
	}
	return name
}

// awaitStored loads name's certificate from storage for a handshake (the
// name's first, or its first since the certificate was released from
// memory), waiting at most the handshake timeout. A failed load is
// logged and the name ordered (loadOne).
func (m *Manager) awaitStored(hello *tls.ClientHelloInfo, c *certmagic.Config, name string) {
	limit := m.handshakeTimeout()
	parent := hello.Context()
	if parent == nil { // a ClientHelloInfo not made by crypto/tls
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	if err := m.loadFromIndex(ctx, c, name); err != nil && ctx.Err() != nil {
		m.log.Warn("handshake gave up waiting for its certificate from storage (the load goes on for the next one)", "name", name, "error", err)
	}
}

// loadFromIndex loads name's stored certificate into the cache, once however
// many handshakes ask at the same time; each waits until it is loaded or
// its ctx ends. A failed load is logged and the name handed to certmagic,
// which orders a certificate as for a name that never had one.
func (m *Manager) loadFromIndex(ctx context.Context, c *certmagic.Config, name string) error {
	x := m.stored
	x.mu.Lock()
	if _, ok := x.names[name]; !ok {
		x.mu.Unlock()
		return nil // loaded meanwhile
	}
	call := x.loading[name]
	if call == nil {
		call = &loadCall{done: make(chan struct{})}
		x.loading[name] = call
		m.loaders.run(func() { m.loadOne(c, name, call) })
	}
	x.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s's certificate from storage: %w", name, ctx.Err())
	}
}

func (m *Manager) loadOne(c *certmagic.Config, name string, call *loadCall) {
	ctx, cancel := context.WithTimeout(m.ctx, storedLoadTimeout)
	defer cancel()
	// the store's fingerprint of what is read: the sync pass
	// (storesync.go) then need not read the files again to find that
	// the cached certificate is the stored one (loadnotes.go)
	var sum uint64
	var keys []string
	var fpErr error
	lctx, notes := m.loadNotes(ctx, certKeys(c, name))
	if notes == nil { // not the file store: Stat before reading
		sum, keys, fpErr = m.storeFingerprint(ctx, c, name)
	}
	cert, err := c.CacheManagedCertificate(lctx, name)
	if notes != nil {
		var ok bool
		if sum, keys, ok = notes.fingerprint(); !ok {
			fpErr = errNotAllRead
		}
	}
	x := m.stored
	if err == nil {
		if len(cert.Names) == 1 && cert.Names[0] == name && !isPattern(name) {
			// only this name's handshakes can reach it, and they wait
			// for call.done (chainintern.go)
			shareChain(cert)
			trimLeaf(cert.Leaf) // leaftrim.go
		}
		x.loads.Add(1) // before the waiters go on: they may read it
	}
	x.mu.Lock()
	delete(x.names, name)
	delete(x.loading, name)
	x.mu.Unlock()
	if err == nil && fpErr == nil && len(keys) > 0 {
		m.syncMu.Lock()
		m.synced[name] = sum
		m.syncMu.Unlock()
	}
	call.err = err
	close(call.done)
	if err != nil {
		if m.ctx.Err() != nil {
			return
		}
		m.log.Error("loading the stored certificate failed; ordering a new one (the stored files are left as they are)",
			"name", name, "error", err)
		m.status.reset(name, stateWaiting, fmt.Errorf("stored certificate unusable: %w", err))
		if err := c.ManageAsync(m.ctx, []string{name}); err != nil {
			m.log.Error("starting certificate management", "name", name, "error", err)
		}
		return
	}
	if cfg, err := m.configForCert(cert); err == nil && (cert.Expired() || cert.NeedsRenewal(cfg)) {
		// served as it is until certmagic's renewal replaces it
		m.log.Info("stored certificate is due for renewal; renewing it", "name", name,
			"not_after", cert.Leaf.NotAfter, "expired", cert.Expired())
		m.kickRenewal()
	}
}

// errNotAllRead: a load did not read every issuer's certificate file,
// so it has no fingerprint of them to record (loadnotes.go).
var errNotAllRead = errors.New("not every certificate file was read")

// loaders runs loads from the lazy index on goroutines kept for a
// second after their last load. A load (certmagic's storage keys,
// parsing, hashing the chain) grows a fresh goroutine's stack three or
// four times, copying it each time: ~6% of a load's CPU
// (BenchmarkFirstLoad); a kept goroutine has grown already. As many run
// as there are loads at the same time, as when each had its own.
type loaders struct {
	ctx  context.Context
	work chan func()
}

// loaderIdle is how long a loader waits for the next load.
const loaderIdle = time.Second

func newLoaders(ctx context.Context) *loaders {
	return &loaders{ctx: ctx, work: make(chan func())}
}

// run runs f on an idle loader, or on a new one.
func (l *loaders) run(f func()) {
	select {
	case l.work <- f:
	default:
		go l.loop(f)
	}
}

func (l *loaders) loop(f func()) {
	idle := time.NewTimer(loaderIdle)
	defer idle.Stop()
	for {
		f()
		idle.Reset(loaderIdle)
		select {
		case f = <-l.work:
		case <-idle.C:
			return
		case <-l.ctx.Done():
			return
		}
	}
}

// kickRenewal asks for certmagic's renewal scan over the cache soon
// (debounced): a certificate just loaded and due for renewal is renewed
// now, not at the next periodic scan.
func (m *Manager) kickRenewal() {
	select {
	case m.renewKick <- struct{}{}:
	default:
	}
}

func (m *Manager) runRenewKicks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.renewKick:
		}
		select { // gather the loads of a burst into one scan
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if err := m.cache.RenewManagedCertificates(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("renewal scan", "error", err)
		}
	}
}

// startWalk starts the background walk once, or tells it that new names
// were indexed.
func (m *Manager) startWalk() {
	x := m.stored
	x.mu.Lock()
	started := x.started
	x.started = true
	x.mu.Unlock()
	if !started {
		go m.walkStored(m.ctx)
		return
	}
	select {
	case x.kick <- struct{}{}:
	default:
	}
}

// walkStored checks the indexed names whose time has come (all of them
// on the first pass), at most StoredCheckRate a second, then sleeps for
// the renewal check interval or until new names are indexed.
func (m *Manager) walkStored(ctx context.Context) {
	rate := m.opts.StoredCheckRate
	if rate <= 0 {
		rate = DefaultStoredCheckRate
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		now := time.Now().Unix()
		var nextCheck int64 // earliest checkAt ahead (renew.go: no sleeping past a due time)
		m.stored.mu.RLock()
		var due []string
		for n, e := range m.stored.names {
			if e.checkAt <= now {
				due = append(due, n)
			} else if nextCheck == 0 || e.checkAt < nextCheck {
				nextCheck = e.checkAt
			}
		}
		m.stored.mu.RUnlock()
		checked, start := 0, time.Now()
		for _, n := range due {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := m.checkStored(ctx, n); err != nil {
				if ctx.Err() == nil {
					m.log.Warn("checking stored certificates: storage error; the next pass retries", "name", n, "error", err)
				}
				break
			}
			checked++
		}
		if checked > 0 {
			m.log.Info("stored certificates checked", "names", checked, "took", time.Since(start).Round(time.Millisecond))
		}
		interval := m.renewCheckInterval()
		if nextCheck != 0 {
			interval = min(interval, max(time.Until(time.Unix(nextCheck, 0)), time.Second))
		}
		select {
		case <-ctx.Done():
			return
		case <-m.stored.kick:
		case <-time.After(interval):
		}
	}
}

// checkStored reads name's stored certificate (not its key) and decides:
// load it now (due, expired, ARI to refresh, OCSP to watch), hand the name
// to certmagic to order (nothing usable stored), or look again when it
// will be due. It returns only storage errors.
func (m *Manager) checkStored(ctx context.Context, name string) error {
	m.mu.RLock()
	c := m.byName[name]
	hasShort := m.short[c] != nil
	m.mu.RUnlock()
	if c == nil || c == m.manual {
		m.stored.drop(name)
		return nil
	}
	if !m.stored.pending(name) {
		return nil
	}
	leaf, ari, err := m.readStoredLeaf(ctx, c, name)
	if errors.Is(err, fs.ErrNotExist) {
		m.stored.drop(name)
		m.log.Warn("certificate no longer in storage; ordering one", "name", name)
		m.status.reset(name, stateWaiting, nil)
		if err := c.ManageAsync(m.ctx, []string{name}); err != nil {
			m.log.Error("starting certificate management", "name", name, "error", err)
		}
		return nil
	}
	if err != nil {
		var perr parseError
		if !errors.As(err, &perr) {
			return err
		}
		// unparsable: let the load report it and fall back to ordering
		return m.loadChecked(ctx, c, name)
	}
	interval := m.renewCheckInterval()
	ratio := c.RenewalWindowRatio
	if ratio == 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	if shortLived(leaf) && hasShort {
		ratio = shortRenewalRatio
	}
	due := dueAt(leaf, ari, ratio, interval)
	now := time.Now()
	switch {
	case !now.Before(due):
		m.log.Info("stored certificate is due for renewal; loading it to renew", "name", name, "not_after", leaf.NotAfter)
		return m.loadChecked(ctx, c, name)
	case !c.DisableARI && ari.NeedsRefresh():
		// certmagic polls the CA's ARI only for cached certificates
		return m.loadChecked(ctx, c, name)
	case len(leaf.OCSPServer) > 0:
		// the stapler watches cached certificates for revocation
		return m.loadChecked(ctx, c, name)
	}
	next := due
	if ari.RetryAfter != nil && ari.RetryAfter.Before(next) {
		next = *ari.RetryAfter
	}
	m.stored.mu.Lock()
	if _, ok := m.stored.names[name]; ok {
		m.stored.names[name] = storedEntry{notAfter: leaf.NotAfter.Unix(), checkAt: next.Unix()}
	}
	m.stored.mu.Unlock()
	if m.status.state(name) == stateStored {
		m.status.set(name, "", stateReady, nil)
	}
	return nil
}

// loadChecked loads a name the walk decided to load, and runs
// certmagic's renewal scan when it is due.
func (m *Manager) loadChecked(ctx context.Context, c *certmagic.Config, name string) error {
	lctx, cancel := context.WithTimeout(ctx, storedLoadTimeout)
	defer cancel()
	_ = m.loadFromIndex(lctx, c, name) // a failure is logged and ordered by loadOne
	return nil
}

// parseError marks a stored certificate that is there but does not parse.
type parseError struct{ error }

// readStoredLeaf returns the newest (by NotBefore, as certmagic picks
// among issuers) stored leaf for name and the ARI data stored with it.
func (m *Manager) readStoredLeaf(ctx context.Context, c *certmagic.Config, name string) (*x509.Certificate, acme.RenewalInfo, error) {
	var best *x509.Certificate
	var bestIssuer string
	for _, iss := range c.Issuers {
		ik := issuerKey(iss)
		lctx, cancel := context.WithTimeout(ctx, healthTimeout)
		data, err := m.storage.Load(lctx, siteKey(ik, name, ".crt"))
		cancel()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, acme.RenewalInfo{}, err
		}
		leaf, err := firstCert(data)
		if err != nil {
			return nil, acme.RenewalInfo{}, parseError{fmt.Errorf("%s: %w", name, err)}
		}
		if best == nil || leaf.NotBefore.After(best.NotBefore) {
			best, bestIssuer = leaf, ik
		}
	}
	if best == nil {
		return nil, acme.RenewalInfo{}, fs.ErrNotExist
	}
	var ari acme.RenewalInfo
	lctx, cancel := context.WithTimeout(ctx, healthTimeout)
	meta, err := m.storage.Load(lctx, siteKey(bestIssuer, name, ".json"))
	cancel()
	if err == nil {
		var res certmagic.CertificateResource
		var data acme.Certificate
		if json.Unmarshal(meta, &res) == nil && len(res.IssuerData) > 0 && json.Unmarshal(res.IssuerData, &data) == nil && data.RenewalInfo != nil {
			ari = *data.RenewalInfo
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, acme.RenewalInfo{}, err
	}
	return best, ari, nil
}

// dueAt is the earliest time certmagic's certNeedsRenewal would call leaf
// due: the ARI selected time (or window start) less one check interval,
// the configured lifetime ratio, or the emergency margins (1/50 of the
// lifetime, five check intervals).
func dueAt(leaf *x509.Certificate, ari acme.RenewalInfo, ratio float64, interval time.Duration) time.Time {
	notAfter := leaf.NotAfter.Truncate(time.Second).Add(time.Second)
	life := notAfter.Sub(leaf.NotBefore)
	due := notAfter.Add(-time.Duration(float64(life) * ratio))
	due = earliest(due, notAfter.Add(-max(life/50, 5*interval)))
	if !ari.SelectedTime.IsZero() {
		due = earliest(due, ari.SelectedTime.Add(-interval))
	} else if !ari.SuggestedWindow.Start.IsZero() {
		due = earliest(due, ari.SuggestedWindow.Start.Add(-interval))
	}
	return due
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Releasing idle certificates. A loaded certificate costs about 7 KiB
// of heap (the parsed leaf, the chain's DER, the key, certmagic's cache
// entries): 700 MiB at 100,000 names, most of which may see no traffic
// for hours. A managed certificate no handshake used for ReleaseIdle is
// dropped from the cache and its name put back into the index: its next
// handshake loads it again (~200 µs once), and the background walk
// watches its renewal as for a name never loaded. Not released: manual
// certificates, certificates naming an OCSP responder (the stapler
// watches them), several names on one certificate, one due for renewal,
// or a name with more than one certificate cached (a swap in progress).

// DefaultReleaseIdle is Options.ReleaseIdle's default.
const DefaultReleaseIdle = time.Hour

// markUsed records that a handshake was served name's certificate, in
// whole seconds.
func (m *Manager) markUsed(name string) {
	if m.releaseIdle() <= 0 {
		return
	}
	m.used.mark(name, time.Now().Unix())
}

// usedBook is each name's last handshake (Unix seconds), in shards of a
// plain map so a handshake locks only its shard: ~50 bytes a name, where
// a sync.Map of *atomic.Int64 cost ~130 (BenchmarkHeapPerLoadedName).
type usedBook struct {
	seed   maphash.Seed
	shards [64]usedShard
}

type usedShard struct {
	mu   sync.Mutex
	last map[string]int64
}

func newUsedBook() *usedBook { return &usedBook{seed: maphash.MakeSeed()} }

func (b *usedBook) shard(name string) *usedShard {
	return &b.shards[maphash.String(b.seed, name)%uint64(len(b.shards))]
}

func (b *usedBook) mark(name string, now int64) {
	sh := b.shard(name)
	sh.mu.Lock()
	if sh.last == nil {
		sh.last = map[string]int64{}
	}
	if sh.last[name] != now {
		sh.last[name] = now
	}
	sh.mu.Unlock()
}

func (b *usedBook) forget(name string) {
	sh := b.shard(name)
	sh.mu.Lock()
	delete(sh.last, name)
	sh.mu.Unlock()
}

// before returns the names last used before cutoff.
func (b *usedBook) before(cutoff int64) []string {
	var out []string
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for n, t := range sh.last {
			if t < cutoff {
				out = append(out, n)
			}
		}
		sh.mu.Unlock()
	}
	return out
}

func (m *Manager) releaseIdle() time.Duration {
	if m.opts.ReleaseIdle == 0 {
		return DefaultReleaseIdle
	}
	return m.opts.ReleaseIdle
}

// runRelease releases certificates idle for ReleaseIdle, checking every
// half of it (at most every 10 minutes).
func (m *Manager) runRelease(ctx context.Context) {
	idle := m.releaseIdle()
	if idle <= 0 {
		return
	}
	t := time.NewTicker(min(idle/2, 10*time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cutoff := time.Now().Add(-idle).Unix()
		idleNames := m.used.before(cutoff)
		released := 0
		for _, name := range idleNames {
			if m.release(name) {
				released++
			}
		}
		if released > 0 {
			m.log.Debug("idle certificates released from memory; they load again on their next handshake", "names", released)
			m.startWalk()
		}
	}
}

// release drops name's certificate from the cache into the index, if it
// may (see above), and reports whether it did.
func (m *Manager) release(name string) bool {
	m.used.forget(name)
	m.mu.RLock()
	c := m.byName[name]
	m.mu.RUnlock()
	if c == nil || c == m.manual || isPattern(name) || m.stored.pending(name) {
		return false
	}
	certs := m.cachedManaged(name)
	if len(certs) != 1 {
		return false
	}
	cert := certs[0]
	if len(cert.Names) != 1 || len(cert.Leaf.OCSPServer) > 0 || cert.Expired() {
		return false
	}
	if cfg, err := m.configForCert(cert); err != nil || cert.NeedsRenewal(cfg) {
		return false
	}
	// into the index first: a handshake between the two steps finds
	// either the cached certificate or the name pending
	m.stored.mu.Lock()
	m.stored.names[name] = storedEntry{notAfter: cert.Leaf.NotAfter.Unix()} // checkAt 0: the walk reads it again
	m.stored.mu.Unlock()
	m.cache.Remove([]string{cert.Hash()})
	m.stored.released.Add(1)
	return true
}

// StoredReleased is how many idle certificates were released from memory.
func (m *Manager) StoredReleased() int64 { return m.stored.released.Load() }
