// Package tlsconfig owns gatehouse's certificates: obtaining and renewing
// them by ACME (through certmagic), loading manual ones, stapling OCSP
// responses, and the storage all of that lives in.
//
// The proxy asks one question of it per handshake, GetCertificate, and
// only after the route table has matched the SNI name: certmagic on its
// own answers unknown names with an error (an internal_error alert),
// where gatehouse must answer unrecognized_name.
package tlsconfig

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig/etcdstore"
)

// Options configure a Manager.
type Options struct {
	// HTTPPort and TLSPort are the ports gatehouse's own listeners hold.
	// certmagic tries to bind its challenge solvers there, finds them
	// taken, and leaves the challenges to gatehouse's listeners, which
	// answer them through HandleHTTPChallenge and GetCertificate.
	// Zero disables that challenge type.
	HTTPPort, TLSPort int
	// ListenHost is the host the listeners are bound to ("" for all).
	ListenHost string

	Logger *slog.Logger

	// Storage overrides the storage built from the config (tests, etcd).
	Storage certmagic.Storage

	// OCSPCheckInterval is how often staples are checked for refresh;
	// default one minute.
	OCSPCheckInterval time.Duration

	// RenewCheckInterval is how often certmagic scans the cache for
	// certificates due for renewal and for ARI updates; default
	// certmagic's 10 minutes. Tests with certificates that live seconds
	// shorten it.
	RenewCheckInterval time.Duration

	// SyncInterval and HealthInterval override [storage] sync_interval
	// and health_interval (see storesync.go, storagehealth.go).
	SyncInterval, HealthInterval time.Duration

	// StoredCheckRate is how many stored certificates a second the
	// background walk reads to find those due for renewal (lazy.go);
	// default DefaultStoredCheckRate.
	StoredCheckRate int

	// ReleaseIdle: a managed certificate no handshake used for this
	// long is dropped from memory and loaded again from storage on its
	// next handshake (lazy.go). Default DefaultReleaseIdle; negative:
	// never.
	ReleaseIdle time.Duration

	// DNSPropagationTimeout bounds the wait for a DNS-01 challenge
	// record to be visible on the zone's servers (dns01.go); default
	// DefaultDNSPropagationTimeout.
	DNSPropagationTimeout time.Duration
}

// Manager holds every certificate gatehouse serves.
type Manager struct {
	log     *slog.Logger
	opts    Options
	storage certmagic.Storage
	owned   bool // storage opened by New: Close closes it
	cache   *certmagic.Cache
	staples *stapler
	crls    *crlWatcher // revocation through CRLs (crl.go), fed by staples
	status  *statusBook
	health  storeHealth

	syncMu sync.Mutex
	synced map[string]uint64 // name -> hash of the store fingerprint last compared

	mu       sync.RWMutex
	acme     map[string]*certmagic.Config            // by ACME profile ("" = default)
	short    map[*certmagic.Config]*certmagic.Config // ACME config -> its twin for short-lived certificates
	manual   *certmagic.Config                       // unmanaged: manual cert/key files
	byName   map[string]*certmagic.Config            // every configured name -> its config
	manualBy map[string]*manualCert                  // cert+key paths -> what was loaded from them
	issuers  []*certmagic.ACMEIssuer                 // for HTTP-01 answers
	cfg      *routes.Config

	ipProfileMu sync.Mutex
	ipProfile   map[string]bool // directories -> whether all offer IPProfile (profile.go)

	internal   *certmagic.Config // tls = "internal" (internal.go)
	internalCA *internalIssuer
	onDemand   *onDemand // pattern routes: hosts = ["*"], "*.suffix" (ondemand.go)

	staleMu sync.Mutex // not mu: certmagic's events take it
	stale   []*staleManual

	attempts  *attempts    // per-name order pacing kept in storage (attempts.go)
	selfCheck *selfChecker // does a name lead here? (selfcheck.go)
	dns01     *dnsSolver   // [acme.dns]: DNS-01 challenges (dns01.go)
	checkOn   bool         // [acme] self_check

	stored    *storedIndex  // certificates in storage not loaded yet (lazy.go)
	loaders   *loaders      // goroutines loading them (lazy.go)
	indexing  indexing      // index builds in flight (indexready.go)
	used      *usedBook     // name -> last handshake (lazy.go)
	renewKick chan struct{} // run certmagic's renewal scan soon (lazy.go)
	plan      *renewPlan    // renewal schedule and handshake backstop (renew.go)
	cacheOpts certmagic.CacheOptions

	certStore certmagic.Storage // what certmagic's configs write through (safestore.go)

	echMu sync.Mutex
	ech   *echKeyring // [ech] keys (ech.go); nil while ECH is off
	echOn atomic.Pointer[echKeyring]
	// ECH's HTTPS records in DNS (echdns.go)
	echPub        atomic.Pointer[ECHPublished]
	echPublishing atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
}

// New builds a Manager for cfg. It does not contact any CA: Apply does,
// in the background.
func New(cfg *routes.Config, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.OCSPCheckInterval == 0 {
		opts.OCSPCheckInterval = time.Minute
	}
	if opts.SyncInterval == 0 {
		opts.SyncInterval = cfg.Storage.SyncInterval.Or(DefaultSyncInterval)
	}
	if opts.HealthInterval == 0 {
		opts.HealthInterval = cfg.Storage.HealthInterval.Or(DefaultHealthInterval)
	}
	storage := opts.Storage
	if storage == nil {
		var err error
		storage, err = OpenStorage(cfg.Storage)
		if err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		log:     opts.Logger,
		opts:    opts,
		storage: storage,
		// certmagic's writes: a failed save restores, never deletes
		certStore: rollbackSafeStorage(storage, opts.Logger),
		owned:     opts.Storage == nil,
		status:    newStatusBook(),
		synced:    map[string]uint64{},
		used:      newUsedBook(),
		acme:      map[string]*certmagic.Config{},
		short:     map[*certmagic.Config]*certmagic.Config{},
		byName:    map[string]*certmagic.Config{},
		manualBy:  map[string]*manualCert{},
		onDemand:  newOnDemand(),
		attempts:  newAttempts(storage),
		stored:    newStoredIndex(),
		loaders:   newLoaders(ctx),
		renewKick: make(chan struct{}, 1),
		dns01:     newDNSSolver(opts.Logger, opts.DNSPropagationTimeout),
		plan:      newRenewPlan(),
		ctx:       ctx,
		cancel:    cancel,
	}
	m.cacheOpts = certmagic.CacheOptions{
		GetConfigForCert: m.configForCert,
		Logger:           zapLogger(opts.Logger),
		// Size the cache on purpose: certmagic scans the whole cache for
		// each certificate added past capacity (see field notes).
		Capacity:           0,
		RenewCheckInterval: opts.RenewCheckInterval,
	}
	m.cache = certmagic.NewCache(m.cacheOpts)
	m.setSelfCheck(cfg)
	m.staples = newStapler(storage, opts.Logger, opts.OCSPCheckInterval, m.onRevoked)
	m.staples.live = m.cached
	m.crls = newCRLWatcher(storage, opts.Logger, opts.OCSPCheckInterval, m.onRevoked)
	m.crls.live = m.cached
	m.staples.crl = m.crls
	go m.staples.run(ctx)
	go m.crls.run(ctx)
	liveMetrics.add(m) // expiry and staple age metrics (inventory.go)
	// one probe round (write, read back, delete) feeds up and writable (storagehealth.go)
	m.health = newStoreHealth(storageBackend(cfg.Storage, storage))
	metricStorageUp.Set(1)
	go m.runStorageHealth(ctx, opts.HealthInterval)
	go m.runStoreSync(ctx, opts.SyncInterval)
	go m.runRenewKicks(ctx)
	go m.runRenewSchedule(ctx)
	go m.runRelease(ctx)
	return m, nil
}

// OpenStorage opens the storage a config names. The file backend checks
// that the directory is writable now, not at the first issuance.
func OpenStorage(s routes.Storage) (certmagic.Storage, error) {
	switch s.Backend {
	case "", "file":
		if err := os.MkdirAll(s.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("storage dir %s: cannot create it (%v): create it and give gatehouse's user write access, or set [storage] dir / GATEHOUSE_STORAGE_DIR", s.Dir, errors.Unwrap(err))
		}
		probe := filepath.Join(s.Dir, ".gatehouse-write-test")
		if err := os.WriteFile(probe, []byte("ok"), 0o600); err != nil {
			return nil, fmt.Errorf("storage dir %s is not writable (%v): give gatehouse's user write access (chown/chmod), or set [storage] dir / GATEHOUSE_STORAGE_DIR", s.Dir, errors.Unwrap(err))
		}
		_ = os.Remove(probe)
		return &certmagic.FileStorage{Path: s.Dir}, nil
	case "etcd":
		eps := make([]string, 0, len(s.Endpoints))
		for _, ep := range s.Endpoints {
			n, err := routes.EtcdEndpoint(ep)
			if err != nil {
				return nil, fmt.Errorf("[storage] endpoints: %w", err)
			}
			eps = append(eps, n)
		}
		st, err := etcdstore.New(etcdstore.Config{
			Endpoints: eps,
			Prefix:    s.Prefix,
			Username:  s.Username,
			Password:  s.Password,
			CACert:    s.CACert,
			Cert:      s.Cert,
			Key:       s.Key,
			LockTTL:   time.Duration(s.LockTTL),
		})
		if err != nil {
			return nil, fmt.Errorf("storage: %w (is etcd running and reachable from here? check [storage] endpoints, TLS files and credentials)", err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("unknown storage backend %q", s.Backend)
}

// storageBackend names the store for logs and /readyz (no credentials).
func storageBackend(s routes.Storage, st certmagic.Storage) string {
	if fs, ok := st.(*certmagic.FileStorage); ok {
		return "file:" + fs.Path
	}
	if str, ok := st.(fmt.Stringer); ok {
		return str.String()
	}
	return s.Backend
}

// Storage returns the storage certificates live in.
func (m *Manager) Storage() certmagic.Storage { return m.storage }

// Close stops background work (renewals, staple refreshes) and closes a
// storage New opened, which releases the locks it holds at once (peers
// need not wait for their TTL).
func (m *Manager) Close() {
	m.cancel()
	m.echMu.Lock()
	m.ech.close()
	m.echMu.Unlock()
	m.cache.Stop()
	if c, ok := m.storage.(io.Closer); ok && m.owned {
		if err := c.Close(); err != nil {
			m.log.Warn("closing storage", "error", err)
		}
	}
}

// configForCert tells certmagic's maintenance which config manages a
// cached certificate. A short-lived one (see shortLived) gets its ACME
// config's twin that renews at half its life instead of certmagic's
// one third remaining.
func (m *Manager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, name := range c.Names {
		if cfg, ok := m.byName[name]; ok {
			if twin := m.short[cfg]; twin != nil && shortLived(c.Leaf) {
				return twin, nil
			}
			return cfg, nil
		}
	}
	if cfg := m.patternConfigFor(c.Names); cfg != nil {
		return cfg, nil
	}
	if m.manual != nil {
		return m.manual, nil
	}
	return nil, fmt.Errorf("no config for certificate %v", c.Names)
}

// newConfig returns a certmagic config sharing the manager's cache.
func (m *Manager) newConfig() *certmagic.Config {
	return certmagic.New(m.cache, certmagic.Config{
		Storage: m.certStore,
		Logger:  zapLogger(m.log),
		// gatehouse staples OCSP itself (ocsp.go): certmagic's stapler
		// fetches on the load path (blocking a manual certificate's
		// first handshake on the responder) and keeps serving an old
		// Good staple after the responder says Revoked.
		OCSP:    certmagic.OCSPConfig{DisableStapling: true},
		OnEvent: m.onEvent,
		// Only the events onEvent reads: certmagic builds a map per
		// handshake for tls_get_certificate otherwise.
		ShouldEmitFunc: func(event string) bool {
			switch event {
			case "cert_obtaining", "cert_obtained", "cert_failed", "cached_managed_cert", "cached_unmanaged_cert":
				return true
			}
			return false
		},
	})
}

// acmeConfig returns (creating once) the certmagic config for an ACME
// profile; byDNS selects the one whose issuers solve DNS-01 (certmagic
// uses a DNS-01 solver to the exclusion of the other challenges).
func (m *Manager) acmeConfig(cfg *routes.Config, profile string, byDNS bool) (*certmagic.Config, error) {
	key := profile
	if byDNS {
		key = profile + "\x00dns-01"
	}
	if c, ok := m.acme[key]; ok {
		return c, nil
	}
	c := m.newConfig()
	profiles := map[string]string{} // issuer key -> profile ordered (profile.go)
	c.OnEvent = func(ctx context.Context, event string, data map[string]any) error {
		if event == "cert_obtained" {
			m.recordProfile(ctx, data, profiles)
		}
		return m.onACMEEvent(ctx, event, data)
	}
	list := cfg.ACME.Issuer.List
	if len(list) == 0 {
		list = []routes.Issuer{{Directory: cfg.ACME.Directory, Email: cfg.ACME.Email, CARoot: cfg.ACME.CARoot}}
	}
	var issuers []certmagic.Issuer
	for _, is := range list {
		email := is.Email
		if email == "" {
			email = cfg.ACME.Email
		}
		prof := profile
		if prof == "" {
			prof = is.Profile
		}
		if prof == "" {
			prof = cfg.ACME.Profile
		}
		ai := certmagic.ACMEIssuer{
			CA:                      is.Directory,
			Email:                   email,
			Agreed:                  true,
			Profile:                 prof,
			DisableHTTPChallenge:    m.opts.HTTPPort == 0 || !hasChallenge(cfg, "http-01"),
			DisableTLSALPNChallenge: m.opts.TLSPort == 0 || !hasChallenge(cfg, "tls-alpn-01"),
			AltHTTPPort:             m.opts.HTTPPort,
			AltTLSALPNPort:          m.opts.TLSPort,
			ListenHost:              m.opts.ListenHost,
			Resolver:                cfg.ACME.Resolver,
			Logger:                  zapLogger(m.log),
		}
		if byDNS {
			ai.DNS01Solver = m.dns01
		}
		if is.CARoot != "" {
			pool, err := loadPool(is.CARoot)
			if err != nil {
				return nil, err
			}
			ai.TrustedRoots = pool
		}
		if is.EABKeyID != "" {
			ai.ExternalAccount = &acme.EAB{KeyID: is.EABKeyID, MACKey: is.EABHMAC}
		}
		issuer := certmagic.NewACMEIssuer(c, ai)
		profiles[issuer.IssuerKey()] = prof
		if byDNS && hasChallenge(cfg, "dns-persist-01") {
			// dns-persist-01 orders run outside certmagic's ACME
			// issuer (persist.go); it still names the storage and ARI
			issuers = append(issuers, m.persistIssuer(cfg, issuer, is, email, prof))
			continue
		}
		issuers = append(issuers, issuer)
		m.issuers = append(m.issuers, issuer)
	}
	c.Issuers = issuers
	m.acme[key] = c

	// certmagic's renewal window is one ratio per config; certificates
	// of one profile share a lifetime, but which lifetime a profile
	// gives is only known once one is issued, so each ACME config has a
	// twin for short-lived certificates, chosen per certificate in
	// configForCert. Both share issuers, storage, cache and events.
	twin := m.newConfig()
	twin.RenewalWindowRatio = shortRenewalRatio
	twin.Issuers = issuers
	twin.OnEvent, twin.ShouldEmitFunc = c.OnEvent, c.ShouldEmitFunc
	m.short[c] = twin
	return c, nil
}

// Renewal of short-lived certificates. certmagic renews when a third of
// the lifetime remains (ARI may say earlier) and has no rule of its own
// for short certificates; for Let's Encrypt's 6-day "shortlived" profile
// that leaves 2 days to get through a CA outage. Below shortLifetime,
// renew at half-life, as Let's Encrypt's own ARI suggests for them.
const (
	shortLifetime     = 10 * 24 * time.Hour
	shortRenewalRatio = 0.5
)

// shortLived reports whether leaf is renewed at half-life.
func shortLived(leaf *x509.Certificate) bool {
	return leaf != nil && leaf.NotAfter.Sub(leaf.NotBefore) < shortLifetime
}

func hasChallenge(cfg *routes.Config, name string) bool {
	for _, c := range cfg.ACME.Challenges {
		if c == name {
			return true
		}
	}
	return false
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca_root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_root %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// Apply makes the manager serve the names of table t: manual
// certificates are loaded now (from files, without any network), ACME
// names are loaded from storage or obtained in the background. It
// returns without waiting on any CA. Apply is called again on reload
// with the new table; names it already manages are left alone.
func (m *Manager) Apply(t *routes.Table) error {
	cfg := t.Config()
	if err := m.applyECH(cfg); err != nil {
		return err
	}
	if cfg.ECH.Enabled() {
		defer func() { go m.publishECH() }() // runs after the unlock below, with m.cfg set
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg = cfg
	m.setSelfCheck(cfg)
	if m.manual == nil {
		m.manual = m.newConfig()
	}

	var errs []error
	var toManage = map[*certmagic.Config][]string{}
	deferIP := map[*certmagic.Config][]string{} // IP names waiting for the CA's profile list (profile.go)
	before := maps.Clone(m.byName)
	for _, e := range t.Entries() {
		switch e.Issuer {
		case "manual":
			if err := m.loadManual(e); err != nil {
				errs = append(errs, err)
			}
		case "acme":
			for _, h := range e.Hosts {
				if isPattern(h) && !wildcardByDNS(cfg, h) {
					continue // on demand (ondemand.go)
				}
				c, err := m.acmeConfig(cfg, e.Route.Profile, orderByDNS(cfg, h))
				if err != nil {
					errs = append(errs, err)
					break
				}
				hc, decided := c, true
				if isIPName(h) && !profileSet(cfg, e.Route) { // profile.go
					var ipc *certmagic.Config
					if ipc, decided, err = m.ipConfig(cfg); err != nil {
						errs = append(errs, err)
						continue
					} else if ipc != nil {
						hc = ipc
					}
				}
				if prev, seen := m.byName[h]; seen && prev == hc {
					continue // managed already: left to its renewal
				}
				m.byName[h] = hc
				m.status.set(h, "acme", stateWaiting, nil)
				if !decided {
					deferIP[hc] = append(deferIP[hc], h)
					continue
				}
				toManage[hc] = append(toManage[hc], h)
			}
		case "internal":
			if err := m.applyInternal(cfg, e, toManage); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.applyPatterns(cfg, t)
	m.forget(t, before)
	for c, names := range toManage {
		sort.Strings(names)
		m.indexing.begin() // ended by manage once its names are indexed
		go m.manage(c, names)
	}
	for c, names := range deferIP {
		sort.Strings(names)
		go m.manageIPs(cfg, c, names)
	}
	return errors.Join(errs...)
}

// manage puts names under certificate management. Names whose
// certificate storage holds go into the lazy index (lazy.go): loaded on
// first handshake, checked for renewal by a background walk. The others
// (or all, when the store cannot be listed) are first loaded from
// storage by a small pool of workers (no network); only names without a
// certificate, or with one due for renewal, go to certmagic's
// ManageAsync, which orders or renews in a background job per name, so
// a slow CA never holds up the others or the listeners.
//
// Handing every name to ManageAsync at once starts a goroutine per
// name: at 100,000 names they all queued on the cache and storage
// locks, and the garbage collector spent a third of the startup
// shrinking their stacks (bench/README.md, many names).
//
// The caller has called m.indexing.begin(); manage ends it.
func (m *Manager) manage(c *certmagic.Config, names []string) {
	names = m.indexStored(c, names)
	m.indexing.end()
	if len(names) == 0 {
		return
	}
	workers := min(len(names), max(4, 4*runtime.GOMAXPROCS(0)))
	next := make(chan string)
	var wg sync.WaitGroup
	var ordered []string
	var mu sync.Mutex
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range next {
				if m.cacheFromStorage(c, name) {
					continue
				}
				mu.Lock()
				ordered = append(ordered, name)
				mu.Unlock()
			}
		}()
	}
	for _, name := range names {
		select {
		case next <- name:
		case <-m.ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if len(ordered) == 0 {
		return
	}
	sort.Strings(ordered)
	if err := c.ManageAsync(m.ctx, ordered); err != nil {
		m.log.Error("starting certificate management", "names", len(ordered), "error", err)
	}
}

// cacheFromStorage caches name's certificate from storage if it has one that
// is not yet due for renewal, and reports whether it did.
func (m *Manager) cacheFromStorage(c *certmagic.Config, name string) bool {
	if m.ctx.Err() != nil {
		return true
	}
	cert, err := c.CacheManagedCertificate(m.ctx, name)
	if err != nil {
		return false // none in storage (or unreadable): certmagic orders it
	}
	if cert.NeedsRenewal(c) {
		// let certmagic's job load it again and renew it: its renewal
		// path also swaps the renewed certificate into the cache
		m.cache.Remove([]string{cert.Hash()})
		return false
	}
	return true
}

func isPattern(h string) bool { return h == "*" || len(h) > 1 && h[0] == '*' }

// manualCert is a certificate loaded from a route's cert/key files.
type manualCert struct {
	stamp string   // size, mtime and inode of both files when read
	sum   [32]byte // their content
	hash  string   // certmagic's cache key
	leaf  *x509.Certificate
}

// loadManual caches a route's cert/key files. On reload, files whose
// size, mtime and inode are unchanged are not read again, and files
// rewritten with the same content are not parsed again; a changed
// certificate replaces the old one in the cache, so the next handshake
// serves it.
func (m *Manager) loadManual(e *routes.Entry) error {
	r := e.Route
	key := r.Cert + "\x00" + r.Key
	mc := m.manualBy[key]
	if stamp := fileStamp(r.Cert) + "|" + fileStamp(r.Key); mc == nil || mc.stamp != stamp {
		certPEM, err := os.ReadFile(r.Cert)
		if err != nil {
			return fmt.Errorf("route #%d: reading cert: %w", e.Index+1, err)
		}
		keyPEM, err := os.ReadFile(r.Key)
		if err != nil {
			return fmt.Errorf("route #%d: reading key: %w", e.Index+1, err)
		}
		sum := sha256.Sum256(append(append(certPEM, 0), keyPEM...))
		if mc != nil && mc.sum == sum {
			mc.stamp = stamp // touched, not changed
		} else {
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return fmt.Errorf("route #%d: cert %s / key %s: %w", e.Index+1, r.Cert, r.Key, err)
			}
			hash, err := m.manual.CacheUnmanagedTLSCertificate(m.ctx, pair, []string{"manual"})
			if err != nil {
				return fmt.Errorf("route #%d: caching cert %s: %w", e.Index+1, r.Cert, err)
			}
			m.log.Info("certificate loaded from files", "cert", r.Cert, "names", pair.Leaf.DNSNames,
				"serial", pair.Leaf.SerialNumber.Text(16), "not_after", pair.Leaf.NotAfter)
			if mc != nil && mc.hash != hash && !m.manualInUse(mc.hash, key) {
				m.cache.Remove([]string{mc.hash})
				m.staples.unregister(mc.leaf)
			}
			mc = &manualCert{stamp: stamp, sum: sum, hash: hash, leaf: pair.Leaf}
			m.manualBy[key] = mc
		}
	}
	for _, h := range e.Hosts {
		m.byName[h] = m.manual
		m.status.set(h, "manual", stateReady, nil)
	}
	for _, c := range m.cache.AllMatchingCertificates(e.Hosts[0]) {
		m.staples.register(c.Certificate, c.Names)
	}
	return nil
}

// manualInUse reports whether another route's files hold the cached
// certificate hash.
func (m *Manager) manualInUse(hash, except string) bool {
	for k, mc := range m.manualBy {
		if k != except && mc.hash == hash {
			return true
		}
	}
	return false
}

// fileStamp identifies a file's version without reading it.
func fileStamp(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return fmt.Sprintf("%d/%d/%d", st.Size(), st.ModTime().UnixNano(), ino)
}

// GetCertificate returns the certificate for a handshake the route
// table has already matched to e. It never waits on an OCSP responder,
// nor on a CA for a configured name (one without a certificate yet
// fails the handshake); only an on-demand name's first handshake waits
// for its order, at most the handshake timeout (ondemand.go).
func (m *Manager) GetCertificate(e *routes.Entry, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := serverName(hello)
	m.mu.RLock()
	c := m.byName[name]
	sc := m.selfCheck
	m.mu.RUnlock()
	challenge := isChallenge(hello)
	if challenge {
		if cert := sc.answerTLS(hello.Context(), name); cert != nil {
			return cert, nil // our own pre-order check, not the CA
		}
	}
	var cert *tls.Certificate
	var err error
	if c != nil {
		cert, err = m.storedCertificate(c, name, hello)
		if err == nil && c != m.manual {
			m.markUsed(name)
			if !challenge && cert != nil && cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
				cert = m.renewExpired(hello, c, name, cert) // renew.go
			}
		}
	} else {
		cert, err = m.patternCertificate(e, name, hello)
	}
	if err != nil || cert == nil || cert.Leaf == nil {
		return cert, err
	}
	return m.staples.staple(cert), nil
}

// storedCertificate is c.GetCertificate for a configured name (or the
// wildcard name a "*.suffix" route's certificate is stored under): a
// stored name not loaded yet is loaded first (lazy.go), and right after
// a start or reload, while the index of stored certificates is still
// being built, a name found nowhere waits for the index (indexready.go)
// and is looked up again.
func (m *Manager) storedCertificate(c *certmagic.Config, name string, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if isChallenge(hello) {
		return c.GetCertificate(hello)
	}
	if m.stored.pending(name) {
		m.awaitStored(hello, c, name)
	}
	cert, err := c.GetCertificate(hello)
	if err != nil || cert == nil || cert.Leaf == nil {
		waited := m.awaitIndexed(hello, name)
		if m.stored.pending(name) {
			// indexed meanwhile, or released from memory between the
			// check and the cache lookup (releaseIdle, lazy.go): load it
			m.awaitStored(hello, c, name)
			waited = true
		}
		if waited {
			cert, err = c.GetCertificate(hello)
		}
	}
	return cert, err
}

// HandleHTTPChallenge answers an ACME HTTP-01 request; it reports
// whether it did.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if !certmagic.LooksLikeHTTPChallenge(r) {
		return false
	}
	m.mu.RLock()
	issuers, sc := m.issuers, m.selfCheck
	m.mu.RUnlock()
	if sc.answerHTTP(w, r) {
		return true
	}
	for _, is := range issuers {
		if is.HandleHTTPChallenge(w, r) {
			return true
		}
	}
	return false
}

// onEvent follows certmagic's work so readiness and logs can tell an
// operator what is happening to each name.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	m.observeCertEvent(ctx, event, data) // names for the expiry metric (inventory.go)
	switch event {
	case "cert_obtaining":
		name, _ := data["identifier"].(string)
		m.status.orderStarted(name)
		m.log.Info("obtaining certificate", "name", name)
	case "cert_obtained":
		name, _ := data["identifier"].(string)
		renewal, _ := data["renewal"].(bool)
		issuer, _ := data["issuer"].(string)
		m.status.orderDone(name)
		m.status.set(name, "acme", stateReady, nil)
		m.log.Info("certificate obtained", "name", name, "renewal", renewal, "issuer", issuer)
		metricObtain(issuer, renewal, nil)
		// the new certificate is cached after this event; register
		// its staple lazily on first handshake.
	case "cert_failed":
		name, _ := data["identifier"].(string)
		renewal, _ := data["renewal"].(bool)
		err, _ := data["error"].(error)
		issuers, _ := data["issuers"].([]string)
		m.status.orderDone(name)
		m.status.fail(name, err)
		m.log.Error("certificate order failed; will retry with backoff, existing certificate (if any) keeps serving",
			"name", name, "renewal", renewal, "issuers", issuers, "error", err)
		metricObtain(fmt.Sprint(issuers), renewal, err)
	case "cached_managed_cert", "cached_unmanaged_cert":
		sans, _ := data["sans"].([]string)
		if event == "cached_managed_cert" {
			m.noteCached(sans) // renew.go
		}
		for _, name := range sans {
			if event == "cached_managed_cert" {
				m.replaced(name)
			}
			cached := m.cache.AllMatchingCertificates(name)
			state, reason := stateReady, error(nil)
			if event == "cached_managed_cert" {
				// an expired certificate is served until its renewal
				// succeeds, but the name is not called ready
				var newest time.Time
				for _, c := range cached {
					if c.Leaf != nil && c.Leaf.NotAfter.After(newest) {
						newest = c.Leaf.NotAfter
					}
				}
				if !newest.IsZero() && time.Now().After(newest) {
					state = stateExpired
					reason = fmt.Errorf("the certificate held expired at %s; it is served until its renewal succeeds", newest.UTC().Format(time.RFC3339))
				}
			}
			m.status.set(name, "", state, reason)
			for _, c := range cached {
				m.staples.register(c.Certificate, c.Names)
			}
		}
	}
	return nil
}

// cached reports whether leaf is in the certificate cache, i.e. served.
func (m *Manager) cached(leaf *x509.Certificate) bool {
	names := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	for _, name := range names {
		if name == "" {
			continue
		}
		for _, c := range m.cache.AllMatchingCertificates(name) {
			if c.Leaf == leaf {
				return true
			}
		}
	}
	return false
}

// onRevoked is the stapler telling that a certificate is revoked.
// A managed certificate is replaced at once; a manual one cannot be,
// so it is reported loudly (and its staple is already withheld).
func (m *Manager) onRevoked(leaf *x509.Certificate, names []string) {
	m.mu.RLock()
	var c *certmagic.Config
	name := ""
	for _, name = range names {
		if c = m.byName[name]; c != nil {
			break
		}
	}
	manual := c == nil || c == m.manual
	m.mu.RUnlock()
	metricRevoked.WithLabelValues(map[bool]string{true: "manual", false: "acme"}[manual]).Inc()
	if manual {
		m.log.Error("MANUAL CERTIFICATE IS REVOKED: gatehouse cannot replace it and withholds its staple; install a new cert/key and reload",
			"names", names, "serial", leaf.SerialNumber.Text(16))
		return
	}
	m.log.Warn("certificate revoked by its CA; replacing it now", "name", name, "serial", leaf.SerialNumber.Text(16))
	go m.replaceRevoked(c, name, leaf)
}

// replaceRevoked obtains a replacement for a revoked managed certificate
// and swaps it in, retrying with backoff (30 s doubling to 30 min, and no
// sooner than the name's recorded backoff allows) until it succeeds, the
// certificate is no longer served, or it expires.
func (m *Manager) replaceRevoked(c *certmagic.Config, name string, leaf *x509.Certificate) {
	for attempt := 0; m.cached(leaf) && time.Now().Before(leaf.NotAfter); attempt++ {
		// Once across replicas: see replaceRevokedOnce (storesync.go).
		err := m.replaceRevokedOnce(m.ctx, c, name, leaf)
		if err == nil {
			m.log.Info("revoked certificate replaced", "name", name, "revoked_serial", leaf.SerialNumber.Text(16))
			return
		}
		wait := min(30*time.Second<<min(attempt, 6), 30*time.Minute)
		m.log.Error("replacing revoked certificate failed; the revoked one is served (without staple) until then",
			"name", name, "error", err, "retry_in", wait)
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// handshakeTimeout is the config's [timeouts] handshake: the longest a
// handshake waits for its certificate (a stored name loading, the index
// being built, an expired one renewing).
func (m *Manager) handshakeTimeout() time.Duration {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.cfg == nil {
		return routes.DefaultHandshakeTimeout
	}
	return m.cfg.Timeouts.HandshakeTimeout()
}
