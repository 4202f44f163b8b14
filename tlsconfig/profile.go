package tlsconfig

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The ACME profile a certificate was ordered with is stored beside it, in
// "<name>.profile" next to certmagic's "<name>.json" metadata (certmagic
// rewrites that file on every ARI update from its own struct, which would
// drop a field of ours). `gatehouse certs` shows it. A renewal goes
// through the same certmagic config as the order, whose issuers carry the
// profile (the route's, else the issuer's, else [acme]'s, else the one
// chosen for IP addresses), so it is asked for again at every renewal;
// the record tells an operator which profile the certificate in storage
// came from, and the tests check the two agree.

// profileRecord is the stored record.
type profileRecord struct {
	Profile string    `json:"profile"` // "" : the CA's default
	Issuer  string    `json:"issuer"`
	At      time.Time `json:"ordered_at"`
}

// profileKey is the record's key for a certificate's metadata key.
func profileKey(metaKey string) string {
	return strings.TrimSuffix(metaKey, ".json") + ".profile"
}

// recordProfile stores the profile of a certificate just obtained by one
// of profiles' issuers (issuer key -> profile).
func (m *Manager) recordProfile(ctx context.Context, data map[string]any, profiles map[string]string) {
	meta, _ := data["metadata_path"].(string)
	issuer, _ := data["issuer"].(string)
	if meta == "" {
		return
	}
	prof, ok := profiles[issuer]
	if !ok {
		return
	}
	b, _ := json.Marshal(profileRecord{Profile: prof, Issuer: issuer, At: time.Now().UTC()})
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), healthTimeout)
	defer cancel()
	if err := m.storage.Store(sctx, profileKey(meta), b); err != nil {
		m.log.Warn("could not store the certificate's ACME profile beside it", "key", profileKey(meta), "error", err)
	}
}

// storedProfile reads the profile record of the certificate whose
// metadata key is metaKey ("", false: none stored).
func storedProfile(ctx context.Context, storage certmagic.Storage, metaKey string) (string, bool) {
	b, err := storage.Load(ctx, profileKey(metaKey))
	if err != nil {
		return "", false
	}
	var rec profileRecord
	if json.Unmarshal(b, &rec) != nil {
		return "", false
	}
	return rec.Profile, true
}

// IP addresses. Let's Encrypt issues certificates for IP addresses only
// under its "shortlived" profile (6 days). A route naming an IP address
// and no profile (not on the route, its issuers or [acme]) has its IP
// names ordered with IPProfile when every configured CA's directory
// offers that profile, and with the CA's default otherwise (a CA without
// profiles, e.g. a private one). The directory is read once per set of
// directories, in the background (Apply does not wait on a CA); the IP
// names are put under management when the answer is in.

// IPProfile is the ACME profile chosen for IP address names.
const IPProfile = "shortlived"

// maxDirectorySize bounds the directory document read.
const maxDirectorySize = 1 << 20

func isIPName(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

// profileSet reports whether the config names a profile for route r.
func profileSet(cfg *routes.Config, r *routes.Route) bool {
	if r.Profile != "" || cfg.ACME.Profile != "" {
		return true
	}
	for _, is := range cfg.ACME.Issuer.List {
		if is.Profile != "" {
			return true
		}
	}
	return false
}

// acmeIssuers is the config's ACME issuers (the [acme] one when no list).
func acmeIssuers(cfg *routes.Config) []routes.Issuer {
	if len(cfg.ACME.Issuer.List) > 0 {
		return cfg.ACME.Issuer.List
	}
	return []routes.Issuer{{Directory: cfg.ACME.Directory, CARoot: cfg.ACME.CARoot}}
}

func directoriesKey(cfg *routes.Config) string {
	var dirs []string
	for _, is := range acmeIssuers(cfg) {
		dirs = append(dirs, is.Directory)
	}
	return strings.Join(dirs, " ")
}

// ipConfig returns the config for IP names without a profile: the
// IPProfile config when the CAs offer it, nil for the default one;
// decided is false while the CAs' answer is not in. m.mu is held.
func (m *Manager) ipConfig(cfg *routes.Config) (c *certmagic.Config, decided bool, err error) {
	m.ipProfileMu.Lock()
	offered, known := m.ipProfile[directoriesKey(cfg)]
	m.ipProfileMu.Unlock()
	if !known || !offered {
		return nil, known, nil
	}
	c, err = m.acmeConfig(cfg, IPProfile, false) // IP names are never ordered by DNS (validate refuses it)
	return c, true, err
}

// manageIPs finds out whether the CAs offer IPProfile (retrying while
// they cannot be reached), moves names (IP addresses, under the default
// config c until now) to the IPProfile config if so, and manages them.
func (m *Manager) manageIPs(cfg *routes.Config, c *certmagic.Config, names []string) {
	key := directoriesKey(cfg)
	wait := 2 * time.Second
	var offered bool
	for {
		var err error
		offered, err = offersProfile(m.ctx, cfg, IPProfile)
		if err == nil {
			break
		}
		m.log.Warn("cannot read the ACME directory to choose the profile for IP address certificates; retrying",
			"names", names, "error", err, "retry_in", wait)
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Minute)
	}
	m.ipProfileMu.Lock()
	if m.ipProfile == nil {
		m.ipProfile = map[string]bool{}
	}
	m.ipProfile[key] = offered
	m.ipProfileMu.Unlock()
	if !offered {
		m.log.Info("IP address names: the CA does not offer the \""+IPProfile+"\" profile; ordering with its default profile",
			"names", names)
		m.manage(c, names)
		return
	}
	m.mu.Lock()
	ipc, err := m.acmeConfig(cfg, IPProfile, false) // IP names are never ordered by DNS (validate refuses it)
	var moved []string
	if err == nil {
		for _, n := range names {
			if m.byName[n] == c {
				m.byName[n] = ipc
				moved = append(moved, n)
			}
		}
	}
	m.mu.Unlock()
	if err != nil {
		m.log.Error("IP address names: building the ACME config", "names", names, "error", err)
		return
	}
	m.log.Info("IP address names get the ACME profile \""+IPProfile+"\" (no profile set; Let's Encrypt issues IP certificates only under it)",
		"names", moved)
	m.manage(ipc, moved)
}

// offersProfile reports whether every configured ACME directory lists
// profile in meta.profiles.
func offersProfile(ctx context.Context, cfg *routes.Config, profile string) (bool, error) {
	for _, is := range acmeIssuers(cfg) {
		profiles, err := directoryProfiles(ctx, is)
		if err != nil {
			return false, err
		}
		if _, ok := profiles[profile]; !ok {
			return false, nil
		}
	}
	return true, nil
}

// directoryProfiles reads an ACME directory's meta.profiles.
func directoryProfiles(ctx context.Context, is routes.Issuer) (map[string]string, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{}, Proxy: http.ProxyFromEnvironment}
	defer tr.CloseIdleConnections()
	if is.CARoot != "" {
		pool, err := loadPool(is.CARoot)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, is.Directory, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "gatehouse")
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("directory %s: HTTP %d", is.Directory, res.StatusCode)
	}
	var dir struct {
		Meta struct {
			Profiles map[string]string `json:"profiles"`
		} `json:"meta"`
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxDirectorySize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxDirectorySize {
		return nil, fmt.Errorf("directory %s: larger than %d bytes", is.Directory, maxDirectorySize)
	}
	if err := json.Unmarshal(body, &dir); err != nil {
		return nil, fmt.Errorf("directory %s: %v", is.Directory, err)
	}
	return dir.Meta.Profiles, nil
}
