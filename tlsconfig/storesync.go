package tlsconfig

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// Replicas share one store (etcd, usually). certmagic already makes them
// order each name once (its locks live in the store) and answer each
// other's challenges (its distributed solvers keep challenge data in the
// store). Two things it leaves open are done here:
//
//   - A renewal done by one replica reaches the others only when their own
//     copy enters its renewal window. storeSync compares, every
//     SyncInterval, each managed name's certificate in the store with the
//     one served, and loads the store's when it is newer: every replica
//     serves a renewed (or revocation-replaced) certificate at most
//     SyncInterval (+ one pass over the names) after it was stored.
//   - An unreachable store must be visible: storagehealth.go probes it
//     every HealthInterval; /readyz and gatehouse_storage_up report it.

// runStoreSync checks every managed name against the store every
// interval until ctx ends.
func (m *Manager) runStoreSync(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if up, _ := m.StorageHealthy(); !up {
				continue // nothing to compare with; the probe logs the outage
			}
			m.syncFromStorage(ctx, interval/2)
		}
	}
}

// syncFromStorage runs syncName for every ACME-managed name; it stops at
// the first store error (the next pass retries) so an outage costs one
// timeout, not one per name. With many names the pass is spread over
// up to spread (half the sync interval), so its storage reads do not
// come in one burst every interval (at 100,000 names a pass is about a
// second of CPU).
func (m *Manager) syncFromStorage(ctx context.Context, spread time.Duration) {
	type job struct {
		name string
		c    *certmagic.Config
	}
	m.mu.RLock()
	jobs := make([]job, 0, len(m.byName))
	for name, c := range m.byName {
		// On-demand names are not in byName: certmagic loads them
		// from storage per name at the handshake. A "*.suffix" here is
		// one wildcard certificate (DNS-01, internal CA) and is synced
		// like any name. Names in the lazy index (lazy.go) are read
		// from the store when loaded, so they get the newest then.
		if c != m.manual && name != "*" && !m.stored.pending(name) {
			jobs = append(jobs, job{name, c})
		}
	}
	m.mu.RUnlock()
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].name < jobs[j].name })
	const batch = 256
	var pause time.Duration
	if len(jobs) > 4*batch && spread > 0 {
		pause = spread / time.Duration(len(jobs)/batch)
	}
	for i, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		if pause > 0 && i > 0 && i%batch == 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
		if err := m.syncName(ctx, j.c, j.name); err != nil {
			m.log.Warn("comparing certificates with storage; retrying on the next pass", "name", j.name, "error", err)
			return
		}
	}
}

// syncName loads name's certificate from the store when the store holds
// a newer one than the cache (another replica renewed or replaced it), or
// when nothing is cached yet (another replica obtained it while this
// one's own order is backing off). Steady state costs one Stat per issuer:
// the .crt is read only when its size or modification time changed.
func (m *Manager) syncName(ctx context.Context, c *certmagic.Config, name string) error {
	sum, keys, err := m.storeFingerprint(ctx, c, name)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return nil // not obtained yet (or by nobody): certmagic's order handles it
	}
	m.syncMu.Lock()
	same := m.synced[name] == sum
	m.syncMu.Unlock()
	if same {
		return nil
	}
	remember := func() {
		m.syncMu.Lock()
		m.synced[name] = sum
		m.syncMu.Unlock()
	}

	cached := m.cachedManaged(name)
	if len(cached) == 0 {
		cert, err := c.CacheManagedCertificate(ctx, name)
		if err != nil {
			return fmt.Errorf("loading certificate from storage: %w", err)
		}
		m.log.Info("loaded certificate from storage (obtained by another instance)", "name", name, "serial", serialOf(cert))
		metricStoreReloads.Inc()
		remember()
		return nil
	}

	stored, err := m.storedLeaf(ctx, keys)
	if err != nil {
		return err
	}
	newest := cached[0]
	for _, cc := range cached {
		if bytes.Equal(cc.Leaf.Raw, stored.Raw) {
			remember() // already served
			return nil
		}
		if cc.Leaf.NotBefore.After(newest.Leaf.NotBefore) {
			newest = cc
		}
	}
	if !stored.NotBefore.After(newest.Leaf.NotBefore) {
		// The store holds an older certificate (a restored backup?):
		// keep serving the newer one; certmagic renews as usual.
		remember()
		return nil
	}
	cert, err := c.CacheManagedCertificate(ctx, name)
	if err != nil {
		// e.g. read between another replica's writes of key and
		// certificate: the next pass tries again.
		return fmt.Errorf("loading renewed certificate from storage: %w", err)
	}
	var stale []string
	for _, cc := range cached {
		if cc.Hash() != cert.Hash() {
			stale = append(stale, cc.Hash())
		}
	}
	m.cache.Remove(stale)
	m.log.Info("reloaded certificate renewed by another instance", "name", name,
		"old_serial", serialOf(newest), "new_serial", serialOf(cert), "not_after", cert.Leaf.NotAfter)
	metricStoreReloads.Inc()
	remember()
	return nil
}

// storeFingerprint hashes the size and modification time of name's
// certificate files (one Stat per issuer), and returns the keys found.
func (m *Manager) storeFingerprint(ctx context.Context, c *certmagic.Config, name string) (uint64, []string, error) {
	fp := fnv.New64a()
	var buf []byte
	var keys []string
	for _, key := range certKeys(c, name) {
		sctx, cancel := context.WithTimeout(ctx, healthTimeout)
		info, err := m.storage.Stat(sctx, key)
		cancel()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, nil, err
		}
		buf = fingerprintLine(fp, buf, key, info.Size, info.Modified)
		keys = append(keys, key)
	}
	return fp.Sum64(), keys, nil
}

// storedLeaf returns the newest (by NotBefore) certificate stored under
// keys, the way certmagic picks among issuers; missing keys are skipped.
func (m *Manager) storedLeaf(ctx context.Context, keys []string) (*x509.Certificate, error) {
	var stored *x509.Certificate
	for _, key := range keys {
		lctx, cancel := context.WithTimeout(ctx, healthTimeout)
		data, err := m.storage.Load(lctx, key)
		cancel()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", key, err)
		}
		leaf, err := firstCert(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if stored == nil || leaf.NotBefore.After(stored.NotBefore) {
			stored = leaf
		}
	}
	if stored == nil {
		return nil, fmt.Errorf("no certificate in storage: %w", fs.ErrNotExist)
	}
	return stored, nil
}

// certKeys returns the storage keys name's certificate can be under, one
// per issuer.
func certKeys(c *certmagic.Config, name string) []string {
	keys := make([]string, 0, len(c.Issuers))
	for _, iss := range c.Issuers {
		keys = append(keys, siteKey(issuerKey(iss), name, ".crt"))
	}
	return keys
}

// issuerKey is iss.IssuerKey(), remembered for certmagic's ACME issuers:
// theirs parses the CA's URL and builds a strings.Replacer on every call,
// and a name's load, check and sync each ask for it.
func issuerKey(iss certmagic.Issuer) string {
	var ai *certmagic.ACMEIssuer
	switch is := iss.(type) {
	case *certmagic.ACMEIssuer:
		ai = is
	case *persistIssuer: // its key is its base's (persist.go)
		ai = is.base
	default:
		return iss.IssuerKey()
	}
	issuerKeys.Lock()
	k, ok := issuerKeys.m[ai]
	issuerKeys.Unlock()
	if ok {
		return k
	}
	k = ai.IssuerKey()
	issuerKeys.Lock()
	if len(issuerKeys.m) >= maxIssuerKeys { // issuers of configs replaced by reloads
		clear(issuerKeys.m)
	}
	issuerKeys.m[ai] = k
	issuerKeys.Unlock()
	return k
}

// maxIssuerKeys bounds issuerKeys; a config has a handful of issuers.
const maxIssuerKeys = 256

// issuerKeys: an issuer's CA (what its key is made from) is set when
// gatehouse makes it (manager.go, acmeConfig) and never changed.
var issuerKeys = struct {
	sync.Mutex
	m map[*certmagic.ACMEIssuer]string
}{m: map[*certmagic.ACMEIssuer]string{}}

// siteKey is certmagic.StorageKeys.SiteCert (ext ".crt"), SitePrivateKey
// (".key") or SiteMeta (".json") without a strings.Replacer per call
// (certmagic's Safe builds one each time: 8% of a 100,000-name startup).
func siteKey(issuerKey, name, ext string) string {
	safeIssuer.Lock()
	ik, ok := safeIssuer.m[issuerKey]
	if !ok {
		ik = certmagic.StorageKeys.CertsPrefix(issuerKey)
		safeIssuer.m[issuerKey] = ik
	}
	safeIssuer.Unlock()
	s := safeKey(name)
	if s == "" || s == "." || s == ".." {
		switch ext { // certmagic's own rules for the odd name
		case ".crt":
			return certmagic.StorageKeys.SiteCert(issuerKey, name)
		case ".key":
			return certmagic.StorageKeys.SitePrivateKey(issuerKey, name)
		}
		return certmagic.StorageKeys.SiteMeta(issuerKey, name)
	}
	return ik + "/" + s + "/" + s + ext
}

// safeIssuer caches the storage prefix of each issuer key (a handful).
var safeIssuer = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// replaceRevokedOnce replaces name's revoked certificate once across all
// replicas sharing the store: each replica's stapler sees the revocation,
// but under one store-wide lock only the first orders a replacement; the
// others find it already in the store and load it.
func (m *Manager) replaceRevokedOnce(ctx context.Context, c *certmagic.Config, name string, revoked *x509.Certificate) error {
	lock := "gatehouse_replace_revoked_" + name
	if err := m.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("locking %s: %w", lock, err)
	}
	defer func() {
		if err := m.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			m.log.Warn("releasing lock", "lock", lock, "error", err)
		}
	}()
	if stored, err := m.storedLeaf(ctx, certKeys(c, name)); err == nil &&
		stored.SerialNumber.Cmp(revoked.SerialNumber) != 0 && stored.NotBefore.After(revoked.NotBefore) {
		m.log.Info("revoked certificate already replaced in storage (by another instance); loading the replacement",
			"name", name, "revoked_serial", revoked.SerialNumber.Text(16), "serial", stored.SerialNumber.Text(16))
	} else if err := c.RenewCertSync(ctx, name, true); err != nil {
		return err
	}
	if _, err := c.CacheManagedCertificate(ctx, name); err != nil {
		return fmt.Errorf("loading replacement certificate: %w", err)
	}
	var stale []string
	for _, oc := range m.cache.AllMatchingCertificates(name) {
		if oc.Leaf != nil && oc.Leaf.SerialNumber.Cmp(revoked.SerialNumber) == 0 {
			stale = append(stale, oc.Hash())
		}
	}
	m.cache.Remove(stale)
	return nil
}

// cachedManaged returns the ACME certificates cached for exactly name
// (manual certificates are tagged "manual").
func (m *Manager) cachedManaged(name string) []certmagic.Certificate {
	var out []certmagic.Certificate
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if c.HasTag("manual") || c.Leaf == nil {
			continue
		}
		for _, n := range c.Names {
			if n == name {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func firstCert(bundle []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, bundle = pem.Decode(bundle)
		if b == nil {
			return nil, errors.New("no PEM certificate in it")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

func serialOf(c certmagic.Certificate) string {
	if c.Leaf == nil {
		return ""
	}
	return c.Leaf.SerialNumber.Text(16)
}
