package tlsconfig

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The ACME account an operator binds a name to in CAA (RFC 8657): with
//
//	example.com. CAA 0 issue "letsencrypt.org; accounturi=URI; validationmethods=dns-01"
//
// only this account, by those challenges, may get certificates for the
// name from that CA, so a stolen or misdirected name cannot be issued
// for by anyone else at that CA.

// AccountInfo is one ACME issuer's account as storage records it.
type AccountInfo struct {
	Directory string `json:"directory"`
	Email     string `json:"email,omitempty"`
	// IssuerKey is the issuer's folder in storage (certificates/<key>/).
	IssuerKey string `json:"issuer"`
	// AccountURI is the account's URL at the CA ("" before gatehouse
	// first registered it).
	AccountURI string `json:"account_uri,omitempty"`
	// CAAIdentities are the issuer domain names the CA recognises in
	// CAA (its directory's meta.caaIdentities), when fetched.
	CAAIdentities []string `json:"caa_identities,omitempty"`
	// Error says why AccountURI or CAAIdentities are missing.
	Error string `json:"error,omitempty"`
}

// Accounts reads the account of each of cfg's ACME issuers from
// storage. With fetch, each CA's directory is fetched (one GET, bounded)
// for the issuer domain its CAA records use; nothing else is sent.
func Accounts(ctx context.Context, storage certmagic.Storage, cfg *routes.Config, fetch bool) []AccountInfo {
	list := cfg.ACME.Issuer.List
	if len(list) == 0 {
		list = []routes.Issuer{{Directory: cfg.ACME.Directory, Email: cfg.ACME.Email, CARoot: cfg.ACME.CARoot}}
	}
	var out []AccountInfo
	for _, is := range list {
		email := is.Email
		if email == "" {
			email = cfg.ACME.Email
		}
		ai := AccountInfo{Directory: is.Directory, Email: email,
			IssuerKey: certmagic.StorageKeys.Safe((&certmagic.ACMEIssuer{CA: is.Directory}).IssuerKey())}
		var errs []string
		if b, err := storage.Load(ctx, accountRegKey(is.Directory, email)); err != nil {
			errs = append(errs, "no account in storage yet (gatehouse registers it at the first order)")
		} else {
			var acct acme.Account
			if err := json.Unmarshal(b, &acct); err != nil {
				errs = append(errs, fmt.Sprintf("account record %s: %v", accountRegKey(is.Directory, email), err))
			}
			if strings.ContainsAny(acct.Location, "\"; \t\r\n\\") {
				errs = append(errs, fmt.Sprintf("account URL %q in storage is not usable in a CAA record", acct.Location))
			} else {
				ai.AccountURI = acct.Location
			}
		}
		if fetch {
			ids, err := caaIdentities(ctx, is.Directory, is.CARoot)
			if err != nil {
				errs = append(errs, err.Error())
			}
			ai.CAAIdentities = ids
		}
		ai.Error = strings.Join(errs, "; ")
		out = append(out, ai)
	}
	return out
}

// accountRegKey is where certmagic keeps an account's registration
// (certmagic's storageKeyUserReg, unexported; TestCertsAccountAndCAA
// checks it against a real registration).
func accountRegKey(directory, email string) string {
	if email == "" {
		email = "default"
	}
	email = strings.ToLower(email)
	user := email
	if at := strings.Index(email, "@"); at == 0 {
		user = email[1:]
	} else if at > 0 {
		user = email[:at]
	}
	if user == "" {
		user = "registration"
	}
	issuer := certmagic.StorageKeys.Safe((&certmagic.ACMEIssuer{CA: directory}).IssuerKey())
	return path.Join("acme", issuer, "users", certmagic.StorageKeys.Safe(email), certmagic.StorageKeys.Safe(user)+".json")
}

// caaIdentities fetches a CA's directory for meta.caaIdentities.
func caaIdentities(ctx context.Context, directory, caRoot string) ([]string, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caRoot != "" {
		pool, err := loadPool(caRoot)
		if err != nil {
			return nil, err
		}
		tlsConf.RootCAs = pool // as for the ACME client itself
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, directory, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "gatehouse certs")
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, Proxy: http.ProxyFromEnvironment}}
	defer hc.CloseIdleConnections()
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %v", directory, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("directory %s: HTTP %d", directory, res.StatusCode)
	}
	var dir struct {
		Meta struct {
			CAAIdentities []string `json:"caaIdentities"`
		} `json:"meta"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&dir); err != nil {
		return nil, fmt.Errorf("directory %s: %v", directory, err)
	}
	var ids []string
	for _, id := range dir.Meta.CAAIdentities {
		// a CA's answer goes into a DNS record: only plain domain names
		if n, err := routes.NormalizeHost(id); err == nil && !strings.Contains(n, "*") && len(ids) < 8 {
			ids = append(ids, n)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("directory %s names no CAA identity (meta.caaIdentities)", directory)
	}
	return ids, nil
}

// Challenges returns the ACME challenge types host's certificate is
// ordered with: dns-persist-01 and/or dns-01 for names ordered by DNS,
// else the others listed.
func Challenges(cfg *routes.Config, host string) []string {
	if orderByDNS(cfg, host) {
		var out []string
		if cfg.ACME.HasChallenge("dns-persist-01") {
			out = append(out, "dns-persist-01")
		}
		if cfg.ACME.HasChallenge("dns-01") && cfg.ACME.DNS != nil {
			out = append(out, "dns-01")
		}
		return out
	}
	var out []string
	for _, c := range cfg.ACME.Challenges {
		if c == "http-01" || c == "tls-alpn-01" {
			out = append(out, c)
		}
	}
	return out
}

// CAARecord is the RFC 8657 CAA record that lets only account (at the
// CA named by caaIdentity) issue for name, by methods. A wildcard name
// gets an issuewild record at its parent.
func CAARecord(name, caaIdentity, accountURI string, methods []string) string {
	tag := "issue"
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name, tag = rest, "issuewild"
	}
	value := caaIdentity
	if accountURI != "" {
		value += "; accounturi=" + accountURI
	}
	if len(methods) > 0 {
		value += "; validationmethods=" + strings.Join(slices.Clip(methods), ",")
	}
	return fmt.Sprintf("%s. CAA 0 %s %q", name, tag, value)
}
