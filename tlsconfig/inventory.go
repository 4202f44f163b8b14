package tlsconfig

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ocsp"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The operator's view: what storage says about every name, read without
// a running gatehouse and without contacting any CA, so it answers the
// same whether the proxy runs, is stopped, or is failing.

// CertInfo is one name's certificate as storage records it.
type CertInfo struct {
	Name  string `json:"name"`
	Route int    `json:"route,omitempty"` // 1-based [[route]] serving the name; 0: none (left over in storage)
	// Source is how the name gets certificates: acme, on_demand,
	// internal, manual.
	Source string `json:"source"`
	// Profile is the ACME profile the certificate was ordered with, as
	// stored beside it (profile.go); before one is stored, the profile the
	// route orders with ("" = the CA's default).
	Profile string `json:"profile,omitempty"`
	// State: ok, renewal_due, expired, missing (no certificate in
	// storage yet), pattern (an on-demand pattern; its names follow).
	State string `json:"state"`
	// Issuer is where the certificate is stored: the ACME directory's
	// issuer key, "internal", or "manual" (a file).
	Issuer     string    `json:"issuer,omitempty"`
	IssuerCN   string    `json:"issuer_cn,omitempty"` // the certificate's issuer, e.g. "R11"
	Serial     string    `json:"serial,omitempty"`    // hex
	SANs       []string  `json:"sans,omitempty"`
	NotBefore  time.Time `json:"not_before,omitzero"`
	NotAfter   time.Time `json:"not_after,omitzero"`
	RenewAt    time.Time `json:"renew_at,omitzero"`    // when gatehouse renews it
	RenewBy    string    `json:"renew_by,omitempty"`   // "ari" (the CA's window) or "lifetime"
	ARI        *ARIInfo  `json:"ari,omitempty"`        // renewal window the CA suggested, when stored
	Staple     *Staple   `json:"staple,omitempty"`     // persisted OCSP response
	LastError  string    `json:"last_error,omitempty"` // last failed order or renewal
	NextRetry  time.Time `json:"next_retry,omitzero"`
	StorageKey string    `json:"storage_key,omitempty"` // certificate file key, or the manual cert path
	// Challenge lists the ACME challenge types the name is ordered
	// with ("dns-01", "http-01,tls-alpn-01"); AccountURI is the ACME
	// account it is ordered under; CAA the RFC 8657 record that pins
	// the name to that account (filled by `gatehouse certs`, which
	// fetches the CA's CAA identity).
	Challenge  string `json:"challenge,omitempty"`
	AccountURI string `json:"account_uri,omitempty"`
	CAA        string `json:"caa,omitempty"`
	// DNSPersist is the dns-persist-01 record to create for the name
	// (`gatehouse dns-record NAME` prints the same), when it is ordered
	// that way and the account is registered.
	DNSPersist *PersistRecord `json:"dns_persist,omitempty"`
}

// ARIInfo is the ACME Renewal Information stored with a certificate.
type ARIInfo struct {
	WindowStart    time.Time `json:"window_start,omitzero"`
	WindowEnd      time.Time `json:"window_end,omitzero"`
	SelectedTime   time.Time `json:"selected_time,omitzero"`
	RetryAfter     time.Time `json:"retry_after,omitzero"`
	ExplanationURL string    `json:"explanation_url,omitempty"`
}

// Staple is a persisted OCSP response.
type Staple struct {
	Status     string    `json:"status"` // good, revoked, unknown, invalid
	ThisUpdate time.Time `json:"this_update,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	AgeSeconds int64     `json:"age_seconds"`
	Stale      bool      `json:"stale,omitempty"` // NextUpdate has passed
	Error      string    `json:"error,omitempty"`
}

// storedCert is one certificate resource found in storage.
type storedCert struct {
	issuerKey string
	certKey   string
	chain     []*x509.Certificate
	meta      certmagic.CertificateResource
}

func (s *storedCert) leaf() *x509.Certificate { return s.chain[0] }

// OpenStorageForReading opens the storage a config names without
// creating or writing anything (OpenStorage checks it is writable).
func OpenStorageForReading(s routes.Storage) (certmagic.Storage, error) {
	switch s.Backend {
	case "", "file":
		if _, err := os.Stat(s.Dir); err != nil {
			return nil, fmt.Errorf("storage dir %s: %v", s.Dir, errors.Unwrap(err))
		}
		return &certmagic.FileStorage{Path: s.Dir}, nil
	}
	return OpenStorage(s)
}

// acmeIssuerKeys returns the issuer keys of cfg's ACME CAs, in order of
// preference, as they appear in storage (certificates/<key>/).
func acmeIssuerKeys(cfg *routes.Config) []string {
	dirs := []string{cfg.ACME.Directory}
	if len(cfg.ACME.Issuer.List) > 0 {
		dirs = dirs[:0]
		for _, is := range cfg.ACME.Issuer.List {
			dirs = append(dirs, is.Directory)
		}
	}
	var keys []string
	for _, d := range dirs {
		keys = append(keys, certmagic.StorageKeys.Safe((&certmagic.ACMEIssuer{CA: d}).IssuerKey()))
	}
	return keys
}

// Inventory lists every name cfg serves and every certificate storage
// holds: issuer, serial, validity, when it renews (and the CA's ARI
// window), its persisted OCSP staple. It only reads.
func Inventory(ctx context.Context, storage certmagic.Storage, cfg *routes.Config) ([]CertInfo, error) {
	now := time.Now()
	t := routes.NewTable(cfg)
	stored, err := listStored(ctx, storage)
	if err != nil {
		return nil, err
	}
	// newest certificate per name, preferring the config's issuers
	prefer := map[string]int{InternalIssuerKey: 1}
	for i, k := range acmeIssuerKeys(cfg) {
		prefer[k] = 2 + i
	}
	best := map[string]*storedCert{}
	for _, sc := range stored {
		for _, name := range sc.meta.SANs {
			cur := best[name]
			if cur == nil || better(sc, cur, prefer) {
				best[name] = sc
			}
		}
	}

	var out []CertInfo
	listed := map[string]bool{}
	for _, e := range t.Entries() {
		if e.Issuer == "" { // passthrough: gatehouse holds no certificate
			continue
		}
		var manual []*x509.Certificate
		var manualErr error
		if e.Issuer == "manual" {
			manual, manualErr = readChainFile(e.Route.Cert)
		}
		for _, h := range e.Hosts {
			ci := CertInfo{Name: h, Route: e.Index + 1, Source: e.Issuer, Profile: routeProfile(cfg, e)}
			switch {
			case e.Issuer == "manual":
				ci.Issuer, ci.StorageKey = "manual", e.Route.Cert
				if manualErr != nil {
					ci.State, ci.LastError = "missing", manualErr.Error()
				} else {
					fillCert(&ci, manual, now)
				}
			case h == "*" || (strings.HasPrefix(h, "*.") && e.Issuer == "acme" && !cfg.ACME.WildcardByDNS()):
				ci.Source, ci.State = "on_demand", "pattern"
			default:
				if sc := best[h]; sc != nil {
					fillStored(ctx, storage, &ci, sc, now)
				} else {
					ci.State = "missing"
				}
			}
			if ci.Staple == nil && len(ci.SANs) > 0 && e.Issuer == "manual" && manualErr == nil {
				ci.Staple = readStaple(ctx, storage, manual, now)
			}
			if e.Issuer == "acme" && ci.State != "pattern" {
				fillAttempt(ctx, storage, &ci)
			}
			listed[h] = true
			out = append(out, ci)
		}
	}
	// what else storage holds: names obtained on demand, imported ones,
	// names no longer in the config
	var rest []string
	for name := range best {
		if !listed[name] {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	for _, name := range rest {
		sc := best[name]
		ci := CertInfo{Name: name, Source: "acme"}
		if sc.issuerKey == InternalIssuerKey {
			ci.Source = "internal"
		}
		if e := t.Lookup(name); e != nil && e.Issuer != "manual" && e.Issuer != "" {
			ci.Route = e.Index + 1
			if e.Issuer == "acme" {
				ci.Source = "on_demand"
			}
		}
		fillStored(ctx, storage, &ci, sc, now)
		if ci.Source != "internal" {
			fillAttempt(ctx, storage, &ci)
		}
		out = append(out, ci)
	}
	addAccounts(out, cfg, Accounts(ctx, storage, cfg, false))
	return out, nil
}

// addAccounts fills the challenge and account of every ACME name, and
// with the CA's CAA identity known, the CAA record that pins it.
func addAccounts(infos []CertInfo, cfg *routes.Config, accounts []AccountInfo) {
	for i := range infos {
		ci := &infos[i]
		if ci.Source != "acme" && ci.Source != "on_demand" || len(accounts) == 0 {
			continue
		}
		ci.Challenge = strings.Join(Challenges(cfg, ci.Name), ",")
		acct := accounts[0] // the first issuer orders first
		for _, a := range accounts {
			if a.IssuerKey == ci.Issuer {
				acct = a // the issuer of the certificate held
			}
		}
		ci.AccountURI = acct.AccountURI
		if len(acct.CAAIdentities) > 0 && ci.State != "pattern" {
			ci.CAA = CAARecord(ci.Name, acct.CAAIdentities[0], acct.AccountURI, Challenges(cfg, ci.Name))
			if slices.Contains(Challenges(cfg, ci.Name), "dns-persist-01") && acct.AccountURI != "" {
				rec := persistRecordFor(persistName(cfg, ci.Name), acct.CAAIdentities[0], acct.AccountURI)
				ci.DNSPersist = &rec
			}
		}
	}
}

// AddCAA fills the CAA record of every ACME name from accounts fetched
// with their CA's CAA identity (Accounts with fetch).
func AddCAA(infos []CertInfo, cfg *routes.Config, accounts []AccountInfo) {
	addAccounts(infos, cfg, accounts)
}

// fillAttempt adds the stored order record (attempts.go): the last
// failure and when the next order may go.
func fillAttempt(ctx context.Context, storage certmagic.Storage, ci *CertInfo) {
	rec, err := LoadAttempt(ctx, storage, ci.Name)
	if err != nil || rec == nil || rec.LastError == "" {
		return
	}
	if ci.LastError == "" {
		ci.LastError = rec.LastError
	}
	ci.NextRetry = rec.NextOrder
}

// better reports whether a should be served over b for a name: certmagic
// serves the newest; ties go to the preferred issuer.
func better(a, b *storedCert, prefer map[string]int) bool {
	if !a.leaf().NotBefore.Equal(b.leaf().NotBefore) {
		return a.leaf().NotBefore.After(b.leaf().NotBefore)
	}
	pa, pb := prefer[a.issuerKey], prefer[b.issuerKey]
	return pa != 0 && (pb == 0 || pa < pb)
}

// listStored reads every certificate resource under certificates/.
func listStored(ctx context.Context, storage certmagic.Storage) ([]*storedCert, error) {
	issuers, err := storage.List(ctx, "certificates", false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing certificates in storage: %w", err)
	}
	var out []*storedCert
	for _, issuerPrefix := range issuers {
		sites, err := storage.List(ctx, issuerPrefix, false)
		if err != nil {
			continue // a file, not an issuer folder
		}
		for _, site := range sites {
			sc, err := loadStored(ctx, storage, path.Base(issuerPrefix), site)
			if err != nil {
				continue // not a certificate resource (or a partial one)
			}
			out = append(out, sc)
		}
	}
	return out, nil
}

func loadStored(ctx context.Context, storage certmagic.Storage, issuerKey, sitePrefix string) (*storedCert, error) {
	base := path.Base(sitePrefix)
	certKey := path.Join(sitePrefix, base+".crt")
	certPEM, err := storage.Load(ctx, certKey)
	if err != nil {
		return nil, err
	}
	chain, err := parsePEMChain(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certKey, err)
	}
	sc := &storedCert{issuerKey: issuerKey, certKey: certKey, chain: chain}
	if metaJSON, err := storage.Load(ctx, path.Join(sitePrefix, base+".json")); err == nil {
		_ = json.Unmarshal(metaJSON, &sc.meta)
	}
	if len(sc.meta.SANs) == 0 {
		sc.meta.SANs = leafNames(chain[0])
	}
	return sc, nil
}

func leafNames(leaf *x509.Certificate) []string {
	names := append([]string(nil), leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{leaf.Subject.CommonName}
	}
	return names
}

func parsePEMChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return chain, nil
}

func readChainFile(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	chain, err := parsePEMChain(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return chain, nil
}

// fillCert sets the fields every certificate has.
func fillCert(ci *CertInfo, chain []*x509.Certificate, now time.Time) {
	leaf := chain[0]
	ci.Serial = leaf.SerialNumber.Text(16)
	ci.SANs = leafNames(leaf)
	ci.NotBefore, ci.NotAfter = leaf.NotBefore, leaf.NotAfter
	ci.IssuerCN = leaf.Issuer.CommonName
	ci.State = "ok"
	if now.After(leaf.NotAfter) {
		ci.State = "expired"
	}
}

// fillStored sets the fields of a managed certificate from storage.
func fillStored(ctx context.Context, storage certmagic.Storage, ci *CertInfo, sc *storedCert, now time.Time) {
	fillCert(ci, sc.chain, now)
	ci.Issuer, ci.StorageKey = sc.issuerKey, sc.certKey
	leaf := sc.leaf()
	var data acme.Certificate
	if len(sc.meta.IssuerData) > 0 {
		_ = json.Unmarshal(sc.meta.IssuerData, &data)
	}
	ci.RenewAt, ci.RenewBy = renewalTime(leaf, sc.issuerKey, data.RenewalInfo)
	if p, _ := storedProfile(ctx, storage, strings.TrimSuffix(sc.certKey, ".crt")+".json"); p != "" {
		ci.Profile = p
	}
	if ri := data.RenewalInfo; ri != nil && (ri.HasWindow() || !ri.SelectedTime.IsZero()) {
		ci.ARI = &ARIInfo{
			WindowStart: ri.SuggestedWindow.Start, WindowEnd: ri.SuggestedWindow.End,
			SelectedTime: ri.SelectedTime, ExplanationURL: ri.ExplanationURL,
		}
		if ri.RetryAfter != nil {
			ci.ARI.RetryAfter = *ri.RetryAfter
		}
	}
	if ci.State == "ok" && !ci.RenewAt.IsZero() && !now.Before(ci.RenewAt) {
		ci.State = "renewal_due"
	}
	ci.Staple = readStaple(ctx, storage, sc.chain, now)
}

// renewalTime is when gatehouse renews a stored certificate, by the rule
// its scheduler follows (renew.go): the lifetime rule (renewalRatio), or
// earlier the ARI selected time (else the window's start) less one check
// interval, as certmagic acts on it, with the check interval a running
// gatehouse holding only this certificate would use. It reports "ari"
// when the CA's window decides, else "lifetime".
func renewalTime(leaf *x509.Certificate, issuerKey string, ri *acme.RenewalInfo) (time.Time, string) {
	ratio := renewalRatio(leaf, issuerKey)
	iv := checkInterval(certmagic.DefaultRenewCheckInterval, expiresAt(leaf).Sub(leaf.NotBefore))
	byLife := dueAt(leaf, acme.RenewalInfo{}, ratio, iv)
	if ri != nil {
		if byARI := dueAt(leaf, *ri, ratio, iv); byARI.Before(byLife) {
			return byARI, "ari"
		}
	}
	return byLife, "lifetime"
}

// expiresAt is certmagic's end of validity: NotAfter's second included.
func expiresAt(leaf *x509.Certificate) time.Time {
	return leaf.NotAfter.Truncate(time.Second).Add(time.Second)
}

// renewalRatio is the remaining:total lifetime at which a certificate
// is renewed: certmagic's third, or half for short-lived ACME
// certificates (under ten days).
func renewalRatio(leaf *x509.Certificate, issuerKey string) float64 {
	if issuerKey != InternalIssuerKey && leaf.NotAfter.Sub(leaf.NotBefore) < 10*24*time.Hour {
		return 0.5
	}
	return certmagic.DefaultRenewalWindowRatio
}

// readStaple reads the persisted OCSP response of a chain, if any. The
// stapler keys it by the certificate's first name (certmagic's order:
// common name, then SANs) or its first DNS name.
func readStaple(ctx context.Context, storage certmagic.Storage, chain []*x509.Certificate, now time.Time) *Staple {
	leaf := chain[0]
	if len(leaf.OCSPServer) == 0 {
		return nil
	}
	var candidates []string
	if names := cacheNames(leaf); len(names) > 0 {
		candidates = append(candidates, stapleKey(leaf, names))
	}
	candidates = append(candidates, stapleKey(leaf, leaf.DNSNames))
	var der []byte
	for _, key := range candidates {
		if b, err := storage.Load(ctx, key); err == nil {
			der = b
			break
		}
	}
	if der == nil {
		return &Staple{Status: "none"}
	}
	var issuer *x509.Certificate
	if len(chain) > 1 {
		issuer = chain[1]
	}
	resp, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		return &Staple{Status: "invalid", Error: err.Error()}
	}
	st := &Staple{
		Status: statusName(resp.Status), ThisUpdate: resp.ThisUpdate, NextUpdate: resp.NextUpdate,
		AgeSeconds: int64(now.Sub(resp.ThisUpdate) / time.Second),
	}
	st.Stale = !resp.NextUpdate.IsZero() && now.After(resp.NextUpdate)
	return st
}

// cacheNames returns the names certmagic gives a certificate in its
// cache (the order the stapler registers them in).
func cacheNames(leaf *x509.Certificate) []string {
	var names []string
	if cn := leaf.Subject.CommonName; cn != "" {
		names = append(names, strings.ToLower(cn))
	}
	for _, n := range leaf.DNSNames {
		if n != leaf.Subject.CommonName {
			names = append(names, strings.ToLower(n))
		}
	}
	for _, ip := range leaf.IPAddresses {
		if s := ip.String(); s != leaf.Subject.CommonName {
			names = append(names, s)
		}
	}
	return names
}

// Metrics computed at scrape time from what the managers of this process
// serve: always the certificate in the cache now, whatever path
// (startup, on-demand, renewal, reload) put it there.
//
// Per-name series cost at every scrape: ~3 KB allocated and ~210 bytes
// of text per name (BenchmarkHeapPerLoadedName), 300 MB and 21 MB a
// scrape at 100,000 names, and as many series for Prometheus to keep.
// Above [listen] metrics_name_limit names, only the names that need
// attention (needsAttention) keep their per-name series, which is every
// name the alert rules in deploy/monitoring can fire for; the count of
// names and the earliest expiry are exported whatever the count.
var liveMetrics = &liveCollector{managers: map[*Manager]map[string]struct{}{}}

func init() {
	certopsCollectors = append(certopsCollectors, liveMetrics)
}

var (
	notAfterDesc = prometheus.NewDesc("gatehouse_cert_not_after_seconds",
		"Unix time the certificate served for a name expires (NotAfter; the newest one when several are cached).", []string{"name"}, nil)
	certNamesDesc = prometheus.NewDesc("gatehouse_cert_names",
		"Names whose certificate expiry gatehouse knows (served, or read from storage by the background check): the number of gatehouse_cert_not_after_seconds series when they are not limited.", nil, nil)
	earliestDesc = prometheus.NewDesc("gatehouse_cert_not_after_earliest_seconds",
		"Unix time the first of the certificates gatehouse serves expires (the lowest gatehouse_cert_not_after_seconds, limited or not).", nil, nil)
	limitedDesc = prometheus.NewDesc("gatehouse_cert_series_limited",
		"1 when there are more names than [listen] metrics_name_limit and the per-name certificate series cover only the names that need attention (an order running, within two days of expiry, or past their renewal point), 0 when they cover every name.", nil, nil)
	stapleAgeDesc = prometheus.NewDesc("gatehouse_ocsp_staple_age_seconds",
		"Age (now - ThisUpdate) of the OCSP staple served for a certificate, by the certificate's first name.", []string{"name"}, nil)
)

// liveCollector reports certificate expiry per name and OCSP staple age.
type liveCollector struct {
	mu       sync.Mutex
	managers map[*Manager]map[string]struct{} // -> names seen cached beyond the configured ones
}

func (c *liveCollector) add(m *Manager) {
	c.mu.Lock()
	if c.managers[m] == nil {
		c.managers[m] = map[string]struct{}{}
	}
	c.mu.Unlock()
}

// observeCertEvent records the names of every certificate cached, so
// names obtained on demand are reported too.
func (m *Manager) observeCertEvent(_ context.Context, event string, data map[string]any) {
	if event != "cached_managed_cert" && event != "cached_unmanaged_cert" {
		return
	}
	sans, _ := data["sans"].([]string)
	liveMetrics.mu.Lock()
	defer liveMetrics.mu.Unlock()
	names := liveMetrics.managers[m]
	if names == nil {
		return
	}
	for _, n := range sans {
		if len(names) < maxDecisionCache {
			names[n] = struct{}{}
		}
	}
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- certNamesDesc
	ch <- earliestDesc
	ch <- limitedDesc
	ch <- notAfterDesc
	ch <- notBeforeDesc
	ch <- stapleExpiryDesc
	ch <- renewingDesc
	ch <- stapleAgeDesc
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	live := map[*Manager][]string{}
	for m, seen := range c.managers {
		if m.ctx.Err() != nil {
			delete(c.managers, m) // closed
			continue
		}
		for n := range seen {
			live[m] = append(live[m], n)
		}
	}
	c.mu.Unlock()
	now := time.Now()
	expiry := map[string]time.Time{}     // name -> newest NotAfter
	begins := map[string]time.Time{}     // name -> that certificate's NotBefore (loaded ones only)
	ordering := map[string]bool{}        // name -> an order attempt is running (overview.go)
	thisUpdate := map[string]time.Time{} // name -> newest staple ThisUpdate
	nextUpdate := map[string]time.Time{} // name -> that staple's NextUpdate
	limit := 0                           // the smallest [listen] metrics_name_limit in force (0: none)
	for m, seen := range live {
		m.mu.RLock()
		names := make([]string, 0, len(m.byName)+len(seen))
		for n := range m.byName {
			names = append(names, n)
		}
		for _, n := range seen { // names cached beyond the configured ones
			if _, ok := m.byName[n]; !ok {
				names = append(names, n)
			}
		}
		if m.cfg != nil {
			if l := m.cfg.Listen.MetricsNames(); l > 0 && (limit == 0 || l < limit) {
				limit = l
			}
		}
		m.mu.RUnlock()
		for _, n := range names {
			for _, cert := range m.cache.AllMatchingCertificates(n) {
				if cert.Leaf != nil && cert.Leaf.NotAfter.After(expiry[n]) {
					expiry[n] = cert.Leaf.NotAfter
					begins[n] = cert.Leaf.NotBefore
				}
			}
		}
		// names not loaded yet: the expiry the background walk read
		m.stored.mu.RLock()
		for n, e := range m.stored.names {
			if t := time.Unix(e.notAfter, 0); e.notAfter != 0 && t.After(expiry[n]) {
				expiry[n] = t
			}
		}
		m.stored.mu.RUnlock()
		for n := range m.status.orderingNow(now) {
			ordering[n] = true
		}
		s := m.staples
		s.mu.RLock()
		for _, e := range s.entries {
			sp := e.cur.Load()
			if sp == nil || len(e.names) == 0 {
				continue
			}
			if sp.resp.ThisUpdate.After(thisUpdate[e.names[0]]) {
				thisUpdate[e.names[0]] = sp.resp.ThisUpdate
				nextUpdate[e.names[0]] = sp.resp.NextUpdate
			}
		}
		s.mu.RUnlock()
	}
	// above the limit, per-name series only for the names that need
	// attention; the aggregates below are there whatever the count
	limited := limit > 0 && len(expiry) > limit
	var earliest time.Time
	for n, t := range expiry {
		if earliest.IsZero() || t.Before(earliest) {
			earliest = t
		}
		if limited {
			b, known := begins[n]
			if !needsAttention(now, t, b, known, ordering[n]) {
				continue
			}
		}
		ch <- prometheus.MustNewConstMetric(notAfterDesc, prometheus.GaugeValue, float64(t.Unix()), n)
		if b, ok := begins[n]; ok && !b.After(t) {
			ch <- prometheus.MustNewConstMetric(notBeforeDesc, prometheus.GaugeValue, float64(b.Unix()), n)
		}
		v := 0.0
		if ordering[n] {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(renewingDesc, prometheus.GaugeValue, v, n)
	}
	for n, t := range thisUpdate {
		ch <- prometheus.MustNewConstMetric(stapleAgeDesc, prometheus.GaugeValue, now.Sub(t).Seconds(), n)
		if nu := nextUpdate[n]; !nu.IsZero() {
			ch <- prometheus.MustNewConstMetric(stapleExpiryDesc, prometheus.GaugeValue, float64(nu.Unix()), n)
		}
	}
	ch <- prometheus.MustNewConstMetric(certNamesDesc, prometheus.GaugeValue, float64(len(expiry)))
	if !earliest.IsZero() {
		ch <- prometheus.MustNewConstMetric(earliestDesc, prometheus.GaugeValue, float64(earliest.Unix()))
	}
	v := 0.0
	if limited {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(limitedDesc, prometheus.GaugeValue, v)
}

// attentionMargin: above the name limit, a certificate expiring within
// this long keeps its per-name series whatever its lifetime (the alert
// GatehouseCertificateExpiresWithinADay looks one day ahead).
const attentionMargin = 48 * time.Hour

// needsAttention reports whether a name keeps its per-name series above
// the name limit: an order running for it, its certificate within
// attentionMargin of expiry (or expired), or past a third of its
// lifetime left, where gatehouse renews (or earlier); the alert
// GatehouseCertificateNotRenewed fires at a fifth, so every name either
// alert can fire for is still there.
func needsAttention(now, notAfter, notBefore time.Time, lifetimeKnown, ordering bool) bool {
	left := notAfter.Sub(now)
	if ordering || left <= attentionMargin {
		return true
	}
	return lifetimeKnown && left <= notAfter.Sub(notBefore)/3
}
