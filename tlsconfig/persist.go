package tlsconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig/dnsprovider"
)

// dns-persist-01 (draft-ietf-acme-dns-persist): one TXT record at
// _validation-persist.NAME, created once by the operator, binds NAME to
// an ACME account at a CA:
//
//	_validation-persist.example.com. TXT "letsencrypt.org; accounturi=URI[; policy=wildcard]"
//
// Orders validate against it and never touch the zone. certmagic knows
// only its own challenge solvers, so names ordered this way go through
// persistIssuer: the same CA, the same account (certmagic's storage
// layout), the same certificate storage; only the order runs in acmez
// directly, with a dns-persist-01 solver.

// PersistRecord is the dns-persist-01 TXT record for a name.
type PersistRecord struct {
	Name  string `json:"name"`  // _validation-persist.NAME (no trailing dot)
	Value string `json:"value"` // ISSUER; accounturi=URI[; policy=wildcard]
}

// String is the record as a zone file line.
func (r PersistRecord) String() string { return fmt.Sprintf("%s. TXT %q", r.Name, r.Value) }

// persistRecordFor builds the record for name (a wildcard gets the
// wildcard policy, at its base name).
func persistRecordFor(name, issuerDomain, accountURI string) PersistRecord {
	base, wild := strings.CutPrefix(name, "*.")
	v := issuerDomain + "; accounturi=" + accountURI
	if wild {
		v += "; policy=wildcard"
	}
	return PersistRecord{Name: "_validation-persist." + base, Value: v}
}

// acmeHTTPClient is the HTTP client for a CA, trusting caRoot when set.
func acmeHTTPClient(caRoot string) (*http.Client, error) {
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 30 * time.Second,
		ResponseHeaderTimeout: time.Minute, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if caRoot != "" {
		pool, err := loadPool(caRoot)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}, nil
}

// accountKeyKey is where certmagic keeps an account's private key.
func accountKeyKey(directory, email string) string {
	reg := accountRegKey(directory, email)
	return strings.TrimSuffix(reg, ".json") + ".key"
}

// issuerSpec is one CA of the config with its email resolved.
type issuerSpec struct {
	routes.Issuer
}

func issuerSpecs(cfg *routes.Config) []issuerSpec {
	list := cfg.ACME.Issuer.List
	if len(list) == 0 {
		list = []routes.Issuer{{Directory: cfg.ACME.Directory, Email: cfg.ACME.Email, CARoot: cfg.ACME.CARoot}}
	}
	var out []issuerSpec
	for _, is := range list {
		if is.Email == "" {
			is.Email = cfg.ACME.Email
		}
		out = append(out, issuerSpec{is})
	}
	return out
}

// LoadOrRegisterAccount returns the ACME account gatehouse uses at the
// CA: the one in storage (where certmagic keeps it), or a new one it
// registers and stores there, so `gatehouse dns-record` before the first
// run binds the account gatehouse will order with.
func loadOrRegisterAccount(ctx context.Context, storage certmagic.Storage, is issuerSpec, log *slog.Logger) (acme.Account, error) {
	regKey, keyKey := accountRegKey(is.Directory, is.Email), accountKeyKey(is.Directory, is.Email)
	reg, err1 := storage.Load(ctx, regKey)
	keyPEM, err2 := storage.Load(ctx, keyKey)
	if err1 == nil && err2 == nil {
		var acct acme.Account
		if err := json.Unmarshal(reg, &acct); err != nil {
			return acct, fmt.Errorf("account record %s: %w", regKey, err)
		}
		key, err := certmagic.PEMDecodePrivateKey(keyPEM)
		if err != nil {
			return acct, fmt.Errorf("account key %s: %w", keyKey, err)
		}
		acct.PrivateKey = key
		if acct.Location != "" && acct.Status == acme.StatusValid {
			return acct, nil
		}
	} else if !errors.Is(err1, fs.ErrNotExist) && err1 != nil {
		return acme.Account{}, fmt.Errorf("reading the ACME account (%s): %w", regKey, err1)
	}
	hc, err := acmeHTTPClient(is.CARoot)
	if err != nil {
		return acme.Account{}, err
	}
	client := &acme.Client{Directory: is.Directory, HTTPClient: hc, UserAgent: "gatehouse", Logger: log}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return acme.Account{}, err
	}
	acct := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if is.Email != "" {
		acct.Contact = []string{"mailto:" + is.Email}
	}
	if is.EABKeyID != "" {
		if err := acct.SetExternalAccountBinding(ctx, client, acme.EAB{KeyID: is.EABKeyID, MACKey: is.EABHMAC}); err != nil {
			return acme.Account{}, fmt.Errorf("external account binding: %w", err)
		}
	}
	acct, err = client.NewAccount(ctx, acct)
	if err != nil {
		return acme.Account{}, fmt.Errorf("registering an ACME account at %s: %w", is.Directory, err)
	}
	regJSON, err := json.MarshalIndent(acct, "", "\t")
	if err != nil {
		return acct, err
	}
	keyBytes, err := certmagic.PEMEncodePrivateKey(acct.PrivateKey)
	if err != nil {
		return acct, err
	}
	if err := storage.Store(ctx, keyKey, keyBytes); err != nil {
		return acct, fmt.Errorf("storing the account key: %w", err)
	}
	if err := storage.Store(ctx, regKey, regJSON); err != nil {
		return acct, fmt.Errorf("storing the account: %w", err)
	}
	if log != nil {
		log.Info("ACME account registered", "ca", is.Directory, "account", acct.Location)
	}
	return acct, nil
}

// DNSPersistRecord returns the dns-persist-01 record for name under
// cfg's first ACME issuer, registering the account first if storage has
// none. A name served by a "*.suffix" route gets the wildcard policy.
func DNSPersistRecord(ctx context.Context, storage certmagic.Storage, cfg *routes.Config, name string) (PersistRecord, error) {
	n, err := routes.NormalizeHost(name)
	if err != nil {
		return PersistRecord{}, err
	}
	n = persistName(cfg, n)
	is := issuerSpecs(cfg)[0]
	acct, err := loadOrRegisterAccount(ctx, storage, is, nil)
	if err != nil {
		return PersistRecord{}, err
	}
	ids, err := caaIdentities(ctx, is.Directory, is.CARoot)
	if err != nil {
		return PersistRecord{}, err
	}
	return persistRecordFor(n, ids[0], acct.Location), nil
}

// persistName returns name, or "*.name" when a route also holds
// "*.name": the one record at _validation-persist.name then serves the
// wildcard certificate too, and needs the wildcard policy.
func persistName(cfg *routes.Config, name string) string {
	if strings.HasPrefix(name, "*.") {
		return name
	}
	for _, e := range routes.NewTable(cfg).Entries() {
		if slices.Contains(e.Hosts, "*."+name) {
			return "*." + name
		}
	}
	return name
}

// persistIssuer orders certificates by dns-persist-01 (and by dns-01 too
// when [acme.dns] is set) at one CA. It is a certmagic.Issuer with the
// IssuerKey of that CA's ACMEIssuer, so certificates land where that
// issuer's would, and it answers ARI through it.
type persistIssuer struct {
	base    *certmagic.ACMEIssuer
	spec    issuerSpec
	profile string
	storage certmagic.Storage
	finder  func() *dnsprovider.Finder
	dns01   *dnsSolver // nil: dns-persist-01 only
	log     *slog.Logger
}

// IssuerKey implements certmagic.Issuer.
func (p *persistIssuer) IssuerKey() string { return p.base.IssuerKey() }

// GetRenewalInfo implements certmagic.RenewalInfoGetter (ARI).
func (p *persistIssuer) GetRenewalInfo(ctx context.Context, cert certmagic.Certificate) (acme.RenewalInfo, error) {
	return p.base.GetRenewalInfo(ctx, cert)
}

// Issue implements certmagic.Issuer.
func (p *persistIssuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	acct, err := loadOrRegisterAccount(ctx, p.storage, p.spec, p.log)
	if err != nil {
		return nil, err
	}
	hc, err := acmeHTTPClient(p.spec.CARoot)
	if err != nil {
		return nil, err
	}
	client := &acmez.Client{
		Client:           &acme.Client{Directory: p.spec.Directory, HTTPClient: hc, UserAgent: "gatehouse", Logger: p.log},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeDNSPersist01: &persistSolver{account: acct, finder: p.finder, log: p.log}},
	}
	if p.dns01 != nil && !p.persistReady(ctx, csr, acct) {
		// acmez gives up an order whose chosen solver fails, rather
		// than trying another challenge: choose here. Without every
		// name's persistent record, dns-01 alone.
		client.ChallengeSolvers = map[string]acmez.Solver{acme.ChallengeTypeDNS01: p.dns01}
	}
	params, err := acmez.OrderParametersFromCSR(acct, csr)
	if err != nil {
		return nil, err
	}
	params.Profile = p.profile
	certs, err := client.ObtainCertificate(ctx, params)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("the CA returned no certificate")
	}
	c := certs[0]
	return &certmagic.IssuedCertificate{Certificate: c.ChainPEM, Metadata: c}, nil
}

// persistReady reports whether every name of csr has its dns-persist-01
// record for acct.
func (p *persistIssuer) persistReady(ctx context.Context, csr *x509.CertificateRequest, acct acme.Account) bool {
	ids, err := caaIdentities(ctx, p.spec.Directory, p.spec.CARoot)
	if err != nil {
		return false
	}
	for _, name := range csr.DNSNames {
		if checkPersistRecord(ctx, p.finder(), name, ids, acct.Location, strings.HasPrefix(name, "*.")) != nil {
			return false
		}
	}
	return len(csr.DNSNames) > 0
}

// persistSolver "solves" dns-persist-01: the record is the operator's;
// before the CA is asked, it must be answered by every authoritative
// server of the zone.
type persistSolver struct {
	account acme.Account
	finder  func() *dnsprovider.Finder
	log     *slog.Logger
}

func (s *persistSolver) Present(context.Context, acme.Challenge) error { return nil }
func (s *persistSolver) CleanUp(context.Context, acme.Challenge) error { return nil }

// Wait implements acmez.Waiter.
func (s *persistSolver) Wait(ctx context.Context, chal acme.Challenge) error {
	if len(chal.IssuerDomainNames) == 0 {
		return errors.New("dns-persist-01: the CA's challenge names no issuer domain")
	}
	return checkPersistRecord(ctx, s.finder(), chal.Identifier.Value, chal.IssuerDomainNames, s.account.Location, false)
}

// checkPersistRecord reports nil when every authoritative server of
// name's zone answers a dns-persist-01 record for one of issuers and
// account (with the wildcard policy when wildcard), else an error that
// shows the record to create.
func checkPersistRecord(ctx context.Context, f *dnsprovider.Finder, name string, issuers []string, account string, wildcard bool) error {
	base := strings.TrimPrefix(name, "*.")
	fqdn := dns.Fqdn("_validation-persist." + base)
	want := persistRecordFor(map[bool]string{true: "*.", false: ""}[wildcard]+base, issuers[0], account)
	zone, err := f.Zone(ctx, fqdn)
	if err != nil {
		return fmt.Errorf("dns-persist-01 record for %s: %w; create %s", name, err, want)
	}
	servers, err := f.Authorities(ctx, zone)
	if err != nil {
		return fmt.Errorf("dns-persist-01 record for %s: %w", name, err)
	}
	var missing []string
	for _, srv := range servers {
		vals, err := f.TXTValues(ctx, srv, fqdn)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", srv, err))
			continue
		}
		if !slices.ContainsFunc(vals, func(v string) bool { return persistMatches(v, issuers, account, wildcard) }) {
			missing = append(missing, fmt.Sprintf("%s (%d TXT record(s), none for this account)", srv, len(vals)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("dns-persist-01: the record binding %s to this ACME account is not answered by %s; create it (`gatehouse dns-record %s` prints it): %s",
			name, strings.Join(missing, ", "), name, want)
	}
	return nil
}

// persistMatches parses an RFC 8659 issue-value the way the CA does.
func persistMatches(v string, issuers []string, account string, wildcard bool) bool {
	parts := strings.Split(v, ";")
	if !slices.Contains(issuers, strings.TrimSpace(parts[0])) {
		return false
	}
	acct, policy := "", ""
	for _, p := range parts[1:] {
		tag, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			return false
		}
		switch strings.ToLower(strings.TrimSpace(tag)) {
		case "accounturi":
			acct = strings.TrimSpace(val)
		case "policy":
			policy = strings.ToLower(strings.TrimSpace(val))
		}
	}
	return acct == account && (!wildcard || policy == "wildcard")
}

// persistCheck is the self-check of a name ordered by dns-persist-01:
// its record exists for this account (nothing reaches the CA).
func (m *Manager) persistCheck(ctx context.Context, name string) error {
	m.mu.RLock()
	cfg := m.cfg
	m.mu.RUnlock()
	if cfg == nil {
		return nil
	}
	is := issuerSpecs(cfg)[0]
	acct, err := loadOrRegisterAccount(ctx, m.storage, is, m.log)
	if err != nil {
		return fmt.Errorf("self-check: %w", err)
	}
	ids, err := caaIdentities(ctx, is.Directory, is.CARoot)
	if err != nil {
		return fmt.Errorf("self-check: the CA's issuer domain for dns-persist-01: %w", err)
	}
	if err := checkPersistRecord(ctx, m.persistFinder(), name, ids, acct.Location, strings.HasPrefix(name, "*.")); err != nil {
		return fmt.Errorf("self-check: %w", err)
	}
	return nil
}

// persistFinder looks records up at [acme.dns] server when set, else
// through [acme] resolver.
func (m *Manager) persistFinder() *dnsprovider.Finder {
	m.mu.RLock()
	cfg := m.cfg
	m.mu.RUnlock()
	f := &dnsprovider.Finder{}
	if cfg != nil {
		f.Resolver = cfg.ACME.Resolver
		if cfg.ACME.DNS != nil {
			f.Server = cfg.ACME.DNS.ServerAddr()
		}
	}
	return f
}

// persistIssuer returns the dns-persist-01 issuer for one CA of cfg.
func (m *Manager) persistIssuer(cfg *routes.Config, base *certmagic.ACMEIssuer, is routes.Issuer, email, profile string) *persistIssuer {
	is.Email = email
	p := &persistIssuer{base: base, spec: issuerSpec{is}, profile: profile, storage: m.storage, finder: m.persistFinder, log: m.log}
	if cfg.ACME.HasChallenge("dns-01") && cfg.ACME.DNS != nil {
		p.dns01 = m.dns01
	}
	return p
}
