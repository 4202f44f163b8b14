package routes

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/caddyserver/certmagic"
)

// Environment variables that override the file, for containers where
// the config is baked into an image or a ConfigMap and the per-deployment
// values come from the environment.
const (
	EnvACMEEmail     = "GATEHOUSE_ACME_EMAIL"
	EnvACMEDirectory = "GATEHOUSE_ACME_DIRECTORY"
	EnvStorageDir    = "GATEHOUSE_STORAGE_DIR"
	// EnvDNSTSIGSecret sets [acme.dns] tsig_secret, so the secret need
	// not be written into the config file.
	EnvDNSTSIGSecret = "GATEHOUSE_ACME_DNS_TSIG_SECRET"
)

func (c *Config) applyEnv() {
	if v := os.Getenv(EnvACMEEmail); v != "" {
		c.ACME.Email = v
	}
	if v := os.Getenv(EnvACMEDirectory); v != "" {
		c.ACME.Directory = v
	}
	if v := os.Getenv(EnvStorageDir); v != "" {
		c.Storage.Dir = v
	}
	if v := os.Getenv(EnvDNSTSIGSecret); v != "" && c.ACME.DNS != nil {
		c.ACME.DNS.TSIGSecret = v
	}
	if v := os.Getenv(EnvAdminAuth); v != "" {
		c.Listen.AdminAuth = v
	}
}

// QuickOptions describe a config built from the command line, like
// `caddy reverse-proxy`: gatehouse run --from NAME --to URL [...].
type QuickOptions struct {
	From, To    []string // pairs: From[i] is served from To[i]
	HTTPS, HTTP string   // listen addresses ("" for HTTP disables it)
	Admin       string   // admin listen address; "" disables
	Email       string
}

// Quick builds and validates a config from command-line pairs. Names no
// public CA will sign (localhost, *.localhost, *.internal, IP addresses)
// get certificates from gatehouse's internal issuer; the rest use ACME.
func Quick(o QuickOptions) (*Config, error) {
	if len(o.From) == 0 || len(o.From) != len(o.To) {
		return nil, Errors{{Msg: "quick start needs matching pairs: --from NAME --to URL (repeatable)"}}
	}
	c := &Config{}
	c.Listen.HTTPS = o.HTTPS
	c.Listen.HTTP = o.HTTP   // "" disables
	c.Listen.Admin = o.Admin // "" disables
	if c.Listen.HTTP == "" {
		c.ACME.Challenges = []string{"tls-alpn-01"}
	}
	c.ACME.Email = o.Email
	if os.Getenv(EnvStorageDir) == "" { // applyEnv sets it; create nothing elsewhere
		c.Storage.Dir = defaultStorageDir()
	}
	byUpstream := map[string]int{}
	for i, from := range o.From {
		to := o.To[i]
		to = BareUpstreamToURL(to) // --to 127.0.0.1:8080, as caddy accepts
		if u, err := url.Parse(to); err == nil && u.Path == "/" {
			to = strings.TrimSuffix(to, "/")
		}
		host := strings.ToLower(from)
		if u, err := url.Parse(from); err == nil && u.Host != "" {
			host = u.Hostname()
		}
		r := Route{Hosts: []string{host}, Upstream: to}
		if !certmagic.SubjectQualifiesForPublicCert(host) {
			r.TLS = "internal"
		}
		if j, ok := byUpstream[to+"|"+r.TLS]; ok {
			c.Routes[j].Hosts = append(c.Routes[j].Hosts, host)
			continue
		}
		byUpstream[to+"|"+r.TLS] = len(c.Routes)
		c.Routes = append(c.Routes, r)
	}
	cfg, err := c.finish(lineIndex{}, nil)
	if err != nil {
		return nil, fmt.Errorf("quick start: %w", err)
	}
	return cfg, nil
}

// QuickStorageDir is where a quick start keeps its certificates, for
// readers (gatehouse certs): /var/lib/gatehouse when it exists and this
// user may write there, else ~/.local/share/gatehouse. It creates nothing.
func QuickStorageDir() string {
	const system = "/var/lib/gatehouse"
	if st, err := os.Stat(system); err == nil && st.IsDir() && syscall.Access(system, 2 /* W_OK */) == nil {
		return system
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "gatehouse")
	}
	return filepath.Join(os.TempDir(), "gatehouse")
}

// defaultStorageDir is /var/lib/gatehouse when it can be used, else a
// directory in the user's home, so a quick start works without root.
func defaultStorageDir() string {
	const system = "/var/lib/gatehouse"
	if err := os.MkdirAll(system, 0o700); err == nil {
		if f, err := os.CreateTemp(system, ".probe"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return system
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "gatehouse")
	}
	return filepath.Join(os.TempDir(), "gatehouse")
}
