// Package routes owns gatehouse's configuration: the TOML file a user
// writes, its validation (every error with the line it is on), and the
// route table that maps an SNI name to the route that serves it.
//
// Nothing here touches the network or certificates; the proxy and
// tlsconfig packages read what this package produces.
package routes

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// DefaultDirectory is the ACME directory used when [acme] names none.
const DefaultDirectory = "https://acme-v02.api.letsencrypt.org/directory"

// Modes a route can forward in.
const (
	ModeHTTP        = "http"        // terminate TLS, reverse-proxy HTTP/1.1 and HTTP/2
	ModeTCP         = "tcp"         // terminate TLS, pipe plaintext bytes
	ModePassthrough = "passthrough" // do not terminate: route by SNI, pipe the TLS bytes
)

// Config is the whole gatehouse.toml. Field tags are the names users
// write; keep them stable, they are the product's contract.
type Config struct {
	Listen   Listen   `toml:"listen"`
	ACME     ACME     `toml:"acme"`
	Storage  Storage  `toml:"storage"`
	OnDemand OnDemand `toml:"on_demand"`
	Log      Log      `toml:"log"`
	Timeouts Timeouts `toml:"timeouts"`
	ECH      ECH      `toml:"ech"`
	Routes   []Route  `toml:"route"`

	// Path is the file the config was read from ("" when built in memory).
	Path string `toml:"-"`
}

// Listen says where gatehouse accepts connections.
type Listen struct {
	HTTPS string `toml:"https"` // TLS listener; SNI decides the route
	HTTP  string `toml:"http"`  // ACME HTTP-01 and the 308 redirect; "" disables
	Admin string `toml:"admin"` // /healthz /readyz /metrics; "" disables
	// AdminAuth protects the status page and /metrics (adminauth.go).
	AdminAuth string `toml:"admin_auth"`
	// HTTP3 serves HTTP/3 on the https address's UDP port for http
	// routes (default true); false turns it off everywhere.
	HTTP3 *bool `toml:"http3"`

	// ProxyProtocolFrom lists the CIDRs allowed to send a PROXY protocol
	// header (a load balancer in front). Empty: PROXY headers are refused.
	ProxyProtocolFrom []string `toml:"proxy_protocol_from"`

	// SourceLimits (default true) bounds, per client address, the
	// handshakes in flight and the ClientHellos refused in a window
	// (proxy/listener_flood.go); false turns both off — for a load
	// balancer in front that sends no PROXY header, whose address
	// every client shares.
	SourceLimits *bool `toml:"source_limits"`

	// MetricsNameLimit: up to this many names, /metrics has every name's
	// certificate series; above it only the names that need attention
	// (tlsconfig/inventory.go). nil: DefaultMetricsNameLimit; 0: no limit.
	MetricsNameLimit *int `toml:"metrics_name_limit"`
}

// SourceLimitsOn reports whether the per-source limits are on.
func (l Listen) SourceLimitsOn() bool { return l.SourceLimits == nil || *l.SourceLimits }

// DefaultMetricsNameLimit is [listen] metrics_name_limit's default: one
// scrape of 10,000 names' certificate series allocates ~30 MB and sends
// ~2 MB of text; 100,000 names ten times that, every scrape.
const DefaultMetricsNameLimit = 10000

// MetricsNames returns the metrics name limit in force (0: none).
func (l Listen) MetricsNames() int {
	if l.MetricsNameLimit == nil {
		return DefaultMetricsNameLimit
	}
	return *l.MetricsNameLimit
}

// ACME configures how certificates are obtained.
type ACME struct {
	Email      string   `toml:"email"`
	Directory  string   `toml:"directory"`
	CARoot     string   `toml:"ca_root"`    // extra root trusted for the ACME server's own HTTPS
	Challenges []string `toml:"challenges"` // "http-01", "tls-alpn-01", "dns-01", "dns-persist-01"
	Profile    string   `toml:"profile"`    // ACME profile, e.g. "shortlived"

	// Before each order gatehouse checks that the name's DNS leads back
	// to it (an HTTP-01 or TLS-ALPN-01 style request to the name's
	// addresses), so a misdirected name does not burn the CA's
	// failed-validation limit. SelfCheck = false turns that off: only
	// for hosts that cannot reach their own public address (NAT without
	// hairpin). Default true.
	SelfCheck *bool `toml:"self_check"`
	// Resolver is the DNS server ("host:port") for the self-check and
	// for finding the CA. Default: the system's.
	Resolver string `toml:"resolver"`
	// HTTPChallengePort and TLSChallengePort are the ports the CA
	// validates on, which the self-check dials: 80 and 443 for every
	// public CA. Change them only for a test CA (Pebble's httpPort and
	// tlsPort).
	HTTPChallengePort int `toml:"http_challenge_port"`
	TLSChallengePort  int `toml:"tls_challenge_port"`

	// DNS is the DNS-01 provider, [acme.dns]: how gatehouse puts the
	// challenge's TXT record into the zone.
	DNS *DNSProvider `toml:"dns"`

	// Issuer is either a word, issuer = "internal" (sign from a local
	// root) or "acme" (the default), or a list of CAs to try in order,
	// [[acme.issuer]], which replaces Directory/Email/CARoot above.
	Issuer IssuerSpec `toml:"issuer"`
}

// DNSProvider is [acme.dns]: where DNS-01 challenge records go.
type DNSProvider struct {
	// Provider is "rfc2136" (dynamic update with TSIG) or "exec" (a hook
	// run as COMMAND present|cleanup FQDN VALUE).
	Provider string `toml:"provider"`
	// Server is "host:port" of the zone's primary: where rfc2136 updates
	// go. With either provider, the zone is looked up and the record's
	// propagation checked there as well as at the zone's NS servers.
	Server        string   `toml:"server"`
	TSIGKey       string   `toml:"tsig_key"`       // TSIG key name
	TSIGSecret    string   `toml:"tsig_secret"`    // base64
	TSIGAlgorithm string   `toml:"tsig_algorithm"` // default hmac-sha256
	Zone          string   `toml:"zone"`           // default: found from the SOA
	Command       []string `toml:"command"`        // exec provider
}

// DNS-01 provider defaults.
const DefaultTSIGAlgorithm = "hmac-sha256"

// TSIGAlgorithms are the TSIG algorithms gatehouse signs updates with.
var TSIGAlgorithms = []string{"hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1"}

// ServerAddr returns Server with port 53 added when it has none.
func (d *DNSProvider) ServerAddr() string {
	if d.Server == "" {
		return ""
	}
	if _, _, err := net.SplitHostPort(d.Server); err == nil {
		return d.Server
	}
	return net.JoinHostPort(strings.Trim(d.Server, "[]"), "53")
}

// HasChallenge reports whether [acme] challenges lists ch.
func (a *ACME) HasChallenge(ch string) bool {
	for _, c := range a.Challenges {
		if c == ch {
			return true
		}
	}
	return false
}

// WildcardByDNS reports whether "*.suffix" hosts of ACME routes get one
// wildcard certificate by DNS-01 or dns-persist-01 (instead of a
// certificate per name on demand).
func (a *ACME) WildcardByDNS() bool {
	return a.HasChallenge("dns-01") && a.DNS != nil || a.HasChallenge("dns-persist-01")
}

// DNSOnly reports whether every name is ordered by DNS-01: it is the
// only ACME challenge listed. With http-01 or tls-alpn-01 listed too,
// only wildcard names use DNS-01.
func (a *ACME) DNSOnly() bool {
	return a.WildcardByDNS() && !a.HasChallenge("http-01") && !a.HasChallenge("tls-alpn-01")
}

// IssuerSpec holds [acme] issuer in either of its two spellings.
type IssuerSpec struct {
	Kind string   // "acme" or "internal"; "" means acme
	List []Issuer // [[acme.issuer]] entries, in order of preference
}

// UnmarshalTOML implements toml.Unmarshaler for both spellings.
func (s *IssuerSpec) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		s.Kind = v
		return nil
	case []map[string]any:
		for i, m := range v {
			var is Issuer
			if err := is.fromMap(m); err != nil {
				return fmt.Errorf("[[acme.issuer]] #%d: %w", i+1, err)
			}
			s.List = append(s.List, is)
		}
		return nil
	case []any:
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				return fmt.Errorf("[[acme.issuer]] #%d: want a table", i+1)
			}
			var is Issuer
			if err := is.fromMap(m); err != nil {
				return fmt.Errorf("[[acme.issuer]] #%d: %w", i+1, err)
			}
			s.List = append(s.List, is)
		}
		return nil
	}
	return fmt.Errorf("issuer must be \"acme\", \"internal\" or a list of [[acme.issuer]] tables, not %T", v)
}

func (is *Issuer) fromMap(m map[string]any) error {
	fields := map[string]*string{
		"directory": &is.Directory, "email": &is.Email, "ca_root": &is.CARoot,
		"eab_kid": &is.EABKeyID, "eab_hmac": &is.EABHMAC, "profile": &is.Profile,
	}
	for k, v := range m {
		dst, ok := fields[k]
		if !ok {
			return fmt.Errorf("unknown key %q (known: directory, email, ca_root, eab_kid, eab_hmac, profile)", k)
		}
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s must be a string", k)
		}
		*dst = str
	}
	return nil
}

// Issuer is one CA in a fallback list.
type Issuer struct {
	Directory string `toml:"directory"`
	Email     string `toml:"email"`
	CARoot    string `toml:"ca_root"`
	EABKeyID  string `toml:"eab_kid"`
	EABHMAC   string `toml:"eab_hmac"`
	Profile   string `toml:"profile"`
}

// Storage says where certificates, keys, the ACME account and staples live.
type Storage struct {
	Backend string `toml:"backend"` // "file" (default) or "etcd"
	Dir     string `toml:"dir"`

	// etcd backend
	Endpoints []string `toml:"endpoints"`
	Prefix    string   `toml:"prefix"`
	Username  string   `toml:"username"`
	Password  string   `toml:"password"`
	CACert    string   `toml:"ca_cert"`
	Cert      string   `toml:"cert"`
	Key       string   `toml:"key"`
	// LockTTL bounds how long a crashed replica's lock outlives it
	// (etcd lease TTL); 0 means the backend's default (30s).
	LockTTL Duration `toml:"lock_ttl"`

	// SyncInterval is how often each instance compares the certificates
	// it serves with the store, to pick up renewals done by another
	// replica; 0 means 1m.
	SyncInterval Duration `toml:"sync_interval"`
	// HealthInterval is how often the store is probed for /readyz and
	// gatehouse_storage_up; 0 means 10s.
	HealthInterval Duration `toml:"health_interval"`
}

// OnDemand configures certificates obtained during the first handshake
// for names that are not listed in config (routes with hosts = ["*"] or
// "*.suffix"). Every knob bounds what a stranger's ClientHello can make
// gatehouse do: ask whether the name is wanted, how many orders a
// minute, how many at once, how long a "no" is remembered.
type OnDemand struct {
	// Ask is asked GET ?domain=NAME&ip=CLIENT before any order; only a
	// 2xx answer allows one.
	Ask string `toml:"ask"`
	// AskTimeout bounds the ask call; a slower answer is a denial.
	// Default 5s.
	AskTimeout Duration `toml:"ask_timeout"`
	// Rate is the most new on-demand orders gatehouse places, "N/period"
	// like "10/1m". Default "10/1m".
	Rate string `toml:"rate"`
	// MaxConcurrent caps on-demand orders in flight at once. Default 4.
	MaxConcurrent int `toml:"max_concurrent"`
	// DenyCache is how long a denied name is refused without asking
	// again. Default 1m.
	DenyCache Duration `toml:"deny_cache"`
}

// On-demand defaults.
const (
	DefaultOnDemandRate          = "10/1m"
	DefaultOnDemandMaxConcurrent = 4
	DefaultOnDemandAskTimeout    = 5 * time.Second
	DefaultOnDemandDenyCache     = time.Minute
)

// ParseRate reads Rate ("N/period"; "" means the default) as a count
// and a period.
func (o OnDemand) ParseRate() (int, time.Duration, error) {
	r := o.Rate
	if r == "" {
		r = DefaultOnDemandRate
	}
	n, per, ok := strings.Cut(r, "/")
	if !ok {
		return 0, 0, fmt.Errorf("rate = %q: write it as N/period, like %q", o.Rate, DefaultOnDemandRate)
	}
	count, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || count < 1 {
		return 0, 0, fmt.Errorf("rate = %q: %q is not a positive whole number of orders", o.Rate, n)
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per // "10/m" reads as "10/1m"
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		return 0, 0, fmt.Errorf("rate = %q: %q is not a period like 1m or 1h", o.Rate, per)
	}
	return count, d, nil
}

// Log configures logging.
type Log struct {
	Format string `toml:"format"` // "text" (default) or "json"
	Level  string `toml:"level"`  // "debug", "info" (default), "warn", "error"
	Access *bool  `toml:"access"` // one line per request and stream; default true
}

// AccessEnabled reports whether access logging is on (the default).
func (l Log) AccessEnabled() bool { return l.Access == nil || *l.Access }

// ECH turns on Encrypted Client Hello for terminated routes.
type ECH struct {
	// PublicName is the name clients put in the outer, clear-text
	// ClientHello; setting it turns ECH on. It must be an exact name a
	// terminated route serves, so a client with stale keys can
	// authenticate the retry configs gatehouse answers with.
	PublicName string `toml:"public_name"`
	// Rotate is how often a new key is made (default 720h).
	Rotate Duration `toml:"rotate"`

	// Table: the config has an [ech] table. An [ech] table without
	// public_name turns ECH on too, with the first exact name of the
	// first route that terminates TLS as the public name.
	Table bool `toml:"-"`
}

// Enabled reports whether ECH is on.
func (e ECH) Enabled() bool { return e.PublicName != "" || e.Table }

// Timeouts bound every wait the proxy does on a peer. Zero means the default.
type Timeouts struct {
	ReadHeader     Duration `toml:"read_header"`
	Idle           Duration `toml:"idle"`
	UpstreamDial   Duration `toml:"upstream_dial"`
	UpstreamHeader Duration `toml:"upstream_response_header"`
	Handshake      Duration `toml:"handshake"`
	ShutdownDrain  Duration `toml:"shutdown_drain"`
	// ClientBody bounds each wait for more of a client's request body
	// (no progress for this long ends the request: nginx's
	// client_body_timeout); Send each wait for the client to take more
	// of a response, HTTP/2 flow-control window included (nginx's
	// send_timeout). Both run while an upstream connection is held.
	ClientBody Duration `toml:"client_body"`
	Send       Duration `toml:"send"`
}

// The [timeouts] defaults, written here only: every package reads a
// timeout through the methods below, which apply them (README,
// "Timeouts").
const (
	DefaultReadHeaderTimeout     = 10 * time.Second
	DefaultIdleTimeout           = 2 * time.Minute
	DefaultUpstreamDialTimeout   = 5 * time.Second
	DefaultUpstreamHeaderTimeout = 60 * time.Second
	DefaultHandshakeTimeout      = 10 * time.Second
	DefaultShutdownDrain         = 20 * time.Second
	DefaultClientBodyTimeout     = 60 * time.Second
	DefaultSendTimeout           = 60 * time.Second
)

// ReadHeaderTimeout is [timeouts] read_header with its default applied.
func (t Timeouts) ReadHeaderTimeout() time.Duration {
	return t.ReadHeader.Or(DefaultReadHeaderTimeout)
}

// IdleTimeout is [timeouts] idle with its default applied.
func (t Timeouts) IdleTimeout() time.Duration { return t.Idle.Or(DefaultIdleTimeout) }

// UpstreamDialTimeout is [timeouts] upstream_dial with its default applied.
func (t Timeouts) UpstreamDialTimeout() time.Duration {
	return t.UpstreamDial.Or(DefaultUpstreamDialTimeout)
}

// UpstreamHeaderTimeout is [timeouts] upstream_response_header with its
// default applied.
func (t Timeouts) UpstreamHeaderTimeout() time.Duration {
	return t.UpstreamHeader.Or(DefaultUpstreamHeaderTimeout)
}

// HandshakeTimeout is [timeouts] handshake with its default applied: it
// bounds a TLS handshake, and every wait a handshake may do for its
// certificate (a stored name loading, an order on demand).
func (t Timeouts) HandshakeTimeout() time.Duration {
	return t.Handshake.Or(DefaultHandshakeTimeout)
}

// ShutdownDrainTimeout is [timeouts] shutdown_drain with its default applied.
func (t Timeouts) ShutdownDrainTimeout() time.Duration {
	return t.ShutdownDrain.Or(DefaultShutdownDrain)
}

// ClientBodyTimeout is [timeouts] client_body with its default applied.
func (t Timeouts) ClientBodyTimeout() time.Duration {
	return t.ClientBody.Or(DefaultClientBodyTimeout)
}

// SendTimeout is [timeouts] send with its default applied.
func (t Timeouts) SendTimeout() time.Duration { return t.Send.Or(DefaultSendTimeout) }

// Route maps host names to an upstream.
type Route struct {
	Hosts     []string `toml:"hosts"`
	Upstream  string   `toml:"upstream"`
	Upstreams []string `toml:"upstreams"`
	Mode      string   `toml:"mode"` // http (default), tcp, passthrough

	// Manual certificate: served and stapled, never ACME-managed.
	Cert string `toml:"cert"`
	Key  string `toml:"key"`

	TLS     string `toml:"tls"`     // "acme" (default) or "internal"
	Profile string `toml:"profile"` // ACME profile for this route's names

	ALPN          []string `toml:"alpn"`           // tcp mode: protocols to negotiate
	ProxyProtocol string   `toml:"proxy_protocol"` // "", "v1", "v2"
	HSTS          string   `toml:"hsts"`           // Strict-Transport-Security value; "" off
	HTTP3         *bool    `toml:"http3"`          // http mode: serve HTTP/3 too (default true)
	UpstreamCA    string   `toml:"upstream_ca"`    // CA file for https:// upstreams

	Balance        string   `toml:"balance"` // "round_robin" (default), "least_conn"
	HealthPath     string   `toml:"health_path"`
	HealthInterval Duration `toml:"health_interval"`
	HealthTimeout  Duration `toml:"health_timeout"`

	// Line is where the route's [[route]] header is in the file (0 if unknown).
	Line int `toml:"-"`
}

// Duration is a time.Duration written as "10s", "1m30s" in TOML.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Or returns d, or def when d is zero.
func (d Duration) Or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// AllUpstreams returns the route's upstreams: Upstreams, or the single Upstream.
func (r *Route) AllUpstreams() []string {
	if len(r.Upstreams) > 0 {
		return r.Upstreams
	}
	if r.Upstream != "" {
		return []string{r.Upstream}
	}
	return nil
}

// SelfCheckOn reports whether orders wait for the self-check.
func (a *ACME) SelfCheckOn() bool { return a.SelfCheck == nil || *a.SelfCheck }

// ModeOrDefault returns the route's mode, "http" when unset.
func (r *Route) ModeOrDefault() string {
	if r.Mode == "" {
		return ModeHTTP
	}
	return r.Mode
}

// Manual reports whether the route serves a certificate from files.
func (r *Route) Manual() bool { return r.Cert != "" || r.Key != "" }

// ApplyDefaults fills in what the user left out.
func (c *Config) ApplyDefaults() {
	if c.Listen.HTTPS == "" {
		c.Listen.HTTPS = ":443"
	}
	if c.ACME.Directory == "" {
		c.ACME.Directory = DefaultDirectory
	}
	if c.ACME.HTTPChallengePort == 0 {
		c.ACME.HTTPChallengePort = 80
	}
	if c.ACME.TLSChallengePort == 0 {
		c.ACME.TLSChallengePort = 443
	}
	if len(c.ACME.Challenges) == 0 {
		c.ACME.Challenges = []string{"http-01", "tls-alpn-01"}
	}
	if c.Storage.Backend == "" {
		c.Storage.Backend = "file"
	}
	if c.Storage.Backend == "file" && c.Storage.Dir == "" {
		c.Storage.Dir = "/var/lib/gatehouse"
	}
	for i := range c.Routes {
		if c.Routes[i].Mode == "" {
			c.Routes[i].Mode = ModeHTTP
		}
	}
}
