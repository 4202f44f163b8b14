package routes

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// validate checks everything that can be checked without the network.
func (c *Config) validate(idx lineIndex) Errors {
	var errs Errors
	bad := func(path string, format string, args ...any) {
		errs = append(errs, &Error{Line: idx.key(path), Msg: fmt.Sprintf(format, args...)})
	}

	missing := func(keyPath, path string, format string, args ...any) {
		errs = append(errs, &Error{Line: idx.key(path), Msg: fmt.Sprintf(format, args...), missing: keyPath})
	}
	checkAddr := func(key, addr string, optional bool) {
		if addr == "" && optional {
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%s = %q is not a listen address like \":443\" or \"127.0.0.1:8443\"", key, addr)
		}
	}
	checkAddr("listen.https", c.Listen.HTTPS, false)
	checkAddr("listen.http", c.Listen.HTTP, true)
	checkAddr("listen.admin", c.Listen.Admin, true)
	if _, err := ParseAdminAuth(c.Listen.AdminAuth); err != nil {
		bad("listen.admin_auth", "%v", err)
	}
	if l := c.Listen.MetricsNameLimit; l != nil && *l < 0 {
		bad("listen.metrics_name_limit", "metrics_name_limit = %d: want 0 (no limit) or a number of names", *l)
	}
	for _, p := range c.Listen.ProxyProtocolFrom {
		if _, err := netip.ParsePrefix(p); err != nil {
			if _, err2 := netip.ParseAddr(p); err2 != nil {
				bad("listen.proxy_protocol_from", "proxy_protocol_from entry %q is not a CIDR like \"10.0.0.0/8\"", p)
			}
		}
	}

	// [acme]
	needACME := false
	for i := range c.Routes {
		if c.Routes[i].usesACME(c) {
			needACME = true
		}
	}
	if c.ACME.Issuer.Kind != "" && c.ACME.Issuer.Kind != "acme" && c.ACME.Issuer.Kind != "internal" {
		bad("acme.issuer", "issuer = %q: want \"acme\" or \"internal\"", c.ACME.Issuer.Kind)
	}
	if needACME {
		if len(c.ACME.Issuer.List) == 0 {
			if c.ACME.Email == "" {
				missing("acme.email", "acme", "[acme] email is missing: the CA needs a contact address for the account; set email = \"you@example.com\" in [acme] (or the GATEHOUSE_ACME_EMAIL environment variable)")
			}
			checkDirectory(bad, "acme.directory", c.ACME.Directory)
			checkPEMFile(bad, "acme.ca_root", c.ACME.CARoot)
		}
		for i, is := range c.ACME.Issuer.List {
			key := "acme.issuer"
			if is.Directory == "" {
				bad(key, "[[acme.issuer]] #%d has no directory", i+1)
			} else {
				checkDirectory(bad, key, is.Directory)
			}
			if is.Email == "" && c.ACME.Email == "" {
				bad(key, "[[acme.issuer]] #%d has no email and [acme] sets none", i+1)
			}
			if (is.EABKeyID == "") != (is.EABHMAC == "") {
				bad(key, "[[acme.issuer]] #%d: eab_kid and eab_hmac go together", i+1)
			}
			checkPEMFile(bad, key, is.CARoot)
		}
	}
	for _, ch := range c.ACME.Challenges {
		switch ch {
		case "http-01":
			if c.Listen.HTTP == "" && needACME {
				bad("acme.challenges", "challenge \"http-01\" needs [listen] http; set http = \":80\" or drop \"http-01\"")
			}
		case "tls-alpn-01":
		case "dns-01":
			if c.ACME.DNS == nil {
				bad("acme.challenges", "challenge \"dns-01\" needs an [acme.dns] table naming the provider: provider = \"rfc2136\" (with server, tsig_key, tsig_secret) or \"exec\" (with command)")
			}
		case "dns-persist-01":
		default:
			bad("acme.challenges", "unknown challenge %q: want \"http-01\", \"tls-alpn-01\", \"dns-01\" and/or \"dns-persist-01\"", ch)
		}
	}
	if c.ACME.DNS != nil {
		c.ACME.DNS.validate(bad, c.ACME.HasChallenge("dns-01"))
	}

	if r := c.ACME.Resolver; r != "" {
		if host, port, err := net.SplitHostPort(r); err != nil || host == "" || port == "" {
			bad("acme.resolver", "resolver = %q: want a DNS server as host:port, like \"127.0.0.1:53\"", r)
		}
	}
	if p := c.ACME.HTTPChallengePort; p < 1 || p > 65535 {
		bad("acme.http_challenge_port", "http_challenge_port = %d: want a port (1-65535)", p)
	}
	if p := c.ACME.TLSChallengePort; p < 1 || p > 65535 {
		bad("acme.tls_challenge_port", "tls_challenge_port = %d: want a port (1-65535)", p)
	}

	// [storage]
	switch c.Storage.Backend {
	case "file":
		if c.Storage.Dir == "" {
			bad("storage.dir", "[storage] dir is empty")
		}
		c.Storage.checkFileOnly(bad)
	case "etcd":
		c.Storage.checkEtcd(bad)
	default:
		bad("storage.backend", "backend = %q: want \"file\" or \"etcd\"", c.Storage.Backend)
	}
	c.Storage.checkIntervals(bad)

	if c.OnDemand.Ask != "" {
		if u, err := url.Parse(c.OnDemand.Ask); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("on_demand.ask", "ask = %q is not an http:// or https:// URL", c.OnDemand.Ask)
		}
	}
	if _, _, err := c.OnDemand.ParseRate(); err != nil {
		bad("on_demand.rate", "%v", err)
	}
	if c.OnDemand.MaxConcurrent < 0 {
		bad("on_demand.max_concurrent", "max_concurrent = %d: want 1 or more (default %d)", c.OnDemand.MaxConcurrent, DefaultOnDemandMaxConcurrent)
	}
	if t := time.Duration(c.OnDemand.AskTimeout); t < 0 || t > time.Minute {
		bad("on_demand.ask_timeout", "ask_timeout = %s: want a duration up to 1m (a handshake waits on it)", t)
	}
	for _, t := range []struct {
		key string
		d   Duration
	}{{"read_header", c.Timeouts.ReadHeader}, {"idle", c.Timeouts.Idle}, {"upstream_dial", c.Timeouts.UpstreamDial},
		{"upstream_response_header", c.Timeouts.UpstreamHeader}, {"handshake", c.Timeouts.Handshake},
		{"shutdown_drain", c.Timeouts.ShutdownDrain}, {"client_body", c.Timeouts.ClientBody}, {"send", c.Timeouts.Send}} {
		if t.d < 0 {
			bad("timeouts."+t.key, "%s = %s must not be negative (leave it out for the default)", t.key, time.Duration(t.d))
		}
	}
	if d := time.Duration(c.OnDemand.DenyCache); d < 0 {
		bad("on_demand.deny_cache", "deny_cache = %s must not be negative", d)
	}
	if f := c.Log.Format; f != "" && f != "text" && f != "json" {
		bad("log.format", "format = %q: want \"text\" or \"json\"", f)
	}
	if l := c.Log.Level; l != "" && !slices.Contains([]string{"debug", "info", "warn", "error"}, l) {
		bad("log.level", "level = %q: want debug, info, warn or error", l)
	}

	// [[route]]
	if len(c.Routes) == 0 {
		errs = append(errs, &Error{Msg: "no [[route]] defined: add at least one with hosts and upstream", missing: "route"})
	}
	owner := map[string]int{} // host -> route index
	for i := range c.Routes {
		r := &c.Routes[i]
		key := func(k string) string { return fmt.Sprintf("route.%d.%s", i, k) }
		where := fmt.Sprintf("route #%d", i+1)
		if len(r.Hosts) == 0 {
			bad(key("hosts"), "%s has no hosts", where)
		}
		for _, h := range r.Hosts {
			norm, err := NormalizeHost(h)
			if err != nil {
				bad(key("hosts"), "%s: %v", where, err)
				continue
			}
			if j, dup := owner[norm]; dup {
				bad(key("hosts"), "host %q is in route #%d (line %d) and route #%d: each host belongs to one route",
					norm, j+1, c.Routes[j].Line, i+1)
				continue
			}
			owner[norm] = i
			if norm == "*" && r.usesACME(c) && c.OnDemand.Ask == "" {
				bad(key("hosts"), "%s: %q needs a certificate per name, ordered on demand: "+
					"set [on_demand] ask, or give the route cert/key, or tls = \"internal\"", where, norm)
			}
			if _, err := netip.ParseAddr(norm); err == nil && r.usesACME(c) && c.ACME.DNSOnly() {
				bad(key("hosts"), "%s: %q: a CA cannot validate an IP address by DNS; add \"http-01\" or \"tls-alpn-01\" to [acme] challenges, or use tls = \"internal\"", where, norm)
			}
			if isPattern(norm) && norm != "*" && r.usesACME(c) && c.OnDemand.Ask == "" && !c.ACME.WildcardByDNS() {
				bad(key("hosts"), "%s: %q needs a wildcard certificate, which ACME issues only by DNS-01: "+
					"add \"dns-01\" to [acme] challenges with an [acme.dns] provider (or \"dns-persist-01\"); or set [on_demand] ask "+
					"(a certificate per name), give the route cert/key, or tls = \"internal\"", where, norm)
			}
		}
		switch r.Mode {
		case ModeHTTP, ModeTCP, ModePassthrough:
		default:
			bad(key("mode"), "%s: mode = %q: want \"http\", \"tcp\" or \"passthrough\"", where, r.Mode)
		}
		ups := r.AllUpstreams()
		if r.Upstream != "" && len(r.Upstreams) > 0 {
			bad(key("upstreams"), "%s: set upstream or upstreams, not both", where)
		}
		if len(ups) == 0 {
			bad(key("upstream"), "%s has no upstream: set upstream = \"http://127.0.0.1:8080\"", where)
		}
		for _, u := range ups {
			if _, err := ParseUpstream(r.Mode, u); err != nil {
				k := key("upstream")
				if len(r.Upstreams) > 0 {
					k = key("upstreams")
				}
				bad(k, "%s: %v", where, err)
			}
		}
		switch r.TLS {
		case "", "acme", "internal":
		default:
			bad(key("tls"), "%s: tls = %q: want \"acme\" or \"internal\"", where, r.TLS)
		}
		if r.Manual() {
			if r.Mode == ModePassthrough {
				bad(key("cert"), "%s: passthrough routes do not terminate TLS, so cert/key have no use", where)
			} else if r.Cert == "" || r.Key == "" {
				bad(key("cert"), "%s: cert and key go together", where)
			} else if _, err := tls.LoadX509KeyPair(r.Cert, r.Key); err != nil {
				bad(key("cert"), "%s: cannot load cert %q / key %q: %v", where, r.Cert, r.Key, err)
			}
		}
		switch r.ProxyProtocol {
		case "", "v1", "v2":
		default:
			bad(key("proxy_protocol"), "%s: proxy_protocol = %q: want \"v1\" or \"v2\"", where, r.ProxyProtocol)
		}
		switch r.Balance {
		case "", "round_robin", "least_conn":
		default:
			bad(key("balance"), "%s: balance = %q: want \"round_robin\" or \"least_conn\"", where, r.Balance)
		}
		if r.HealthPath != "" && !strings.HasPrefix(r.HealthPath, "/") {
			bad(key("health_path"), "%s: health_path = %q must start with /", where, r.HealthPath)
		}
		checkPEMFile(bad, key("upstream_ca"), r.UpstreamCA)
		r.validateUpstreams(bad, key, where)
	}
	c.ECH.validate(c, owner, bad)
	return errs
}

// validate checks [ech]: the public name must be an exact name a route
// that terminates TLS serves, because a client whose keys are stale
// gets retry configs under that name's certificate and must be able
// to authenticate it.
func (e *ECH) validate(c *Config, owner map[string]int, bad func(string, string, ...any)) {
	if !e.Enabled() {
		return
	}
	if e.PublicName == "" {
		// [ech] without public_name: the first exact name of the first
		// route that terminates TLS
		for _, r := range c.Routes {
			if r.ModeOrDefault() == ModePassthrough {
				continue
			}
			for _, h := range r.Hosts {
				if n, err := NormalizeHost(h); err == nil && !isPattern(n) {
					e.PublicName = n
					break
				}
			}
			if e.PublicName != "" {
				break
			}
		}
		if e.PublicName == "" {
			bad("ech", "[ech] needs a public name and no route that terminates TLS has an exact host: set public_name = \"<a name gatehouse serves>\"")
			return
		}
	}
	name, err := NormalizeHost(e.PublicName)
	switch {
	case err != nil || isPattern(name):
		bad("ech.public_name", "public_name = %q: want one exact host name gatehouse serves, like \"gatehouse.example.com\"", e.PublicName)
	case name != e.PublicName:
		bad("ech.public_name", "public_name = %q: write it as %q", e.PublicName, name)
	default:
		i, ok := owner[name]
		if !ok {
			bad("ech.public_name", "public_name = %q is in no route's hosts: add it to a route that terminates TLS (mode \"http\" or \"tcp\"), so clients with stale keys can authenticate the retry", name)
		} else if c.Routes[i].ModeOrDefault() == ModePassthrough {
			bad("ech.public_name", "public_name = %q belongs to a passthrough route (line %d), which gatehouse does not terminate: pick a name of an http or tcp route", name, c.Routes[i].Line)
		}
	}
	if r := time.Duration(e.Rotate); r != 0 && r < time.Hour {
		bad("ech.rotate", "rotate = %s: want 1h or more (default 720h)", r)
	}
}

// usesACME reports whether the route's names get certificates from an ACME CA.
func (r *Route) usesACME(c *Config) bool {
	if r.Mode == ModePassthrough || r.Manual() {
		return false
	}
	return r.Issuer(c) == "acme"
}

// Issuer returns "acme", "internal" or "manual" for the route's certificates
// ("" for passthrough routes, which hold none).
func (r *Route) Issuer(c *Config) string {
	switch {
	case r.Mode == ModePassthrough:
		return ""
	case r.Manual():
		return "manual"
	case r.TLS == "internal":
		return "internal"
	case r.TLS == "" && c.ACME.Issuer.Kind == "internal":
		return "internal"
	}
	return "acme"
}

func checkDirectory(bad func(string, string, ...any), key, dir string) {
	u, err := url.Parse(dir)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad(key, "directory = %q is not an ACME directory URL like %q", dir, DefaultDirectory)
	}
}

func checkPEMFile(bad func(string, string, ...any), key, path string) {
	if path == "" {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		bad(key, "cannot read %q: %v", path, err)
		return
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		bad(key, "%q holds no PEM certificate", path)
	}
}

// NormalizeHost lower-cases a host name and checks it is one gatehouse can
// route: a DNS name, "*.suffix" (one leading wildcard label), "*" (any
// name, on-demand only) or an IP address.
func NormalizeHost(h string) (string, error) {
	h = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
	if h == "" {
		return "", fmt.Errorf("empty host name")
	}
	if h == "*" {
		return h, nil
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return h, nil
	}
	if strings.ContainsAny(h, ":/ ") {
		return "", fmt.Errorf("host %q: write a bare name, without scheme, port or path", h)
	}
	name := strings.TrimPrefix(h, "*.")
	if strings.Contains(name, "*") {
		return "", fmt.Errorf("host %q: a wildcard is allowed only as the whole leftmost label, as in \"*.example.com\"", h)
	}
	if len(name) > 253 {
		return "", fmt.Errorf("host %q is longer than 253 characters", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("host %q has an empty or over-long label", h)
		}
		for _, ch := range label {
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "", fmt.Errorf("host %q: %q is not allowed in a DNS name", h, ch)
			}
		}
	}
	return h, nil
}

func isPattern(h string) bool { return h == "*" || strings.HasPrefix(h, "*.") }

// Upstream is a parsed upstream address.
type Upstream struct {
	Raw    string
	Scheme string // http, https, h2c for http mode; tcp for tcp/passthrough
	Host   string // host:port
	URL    *url.URL
}

// ParseUpstream parses an upstream for a route of the given mode.
// HTTP routes take http://, https:// or h2c:// URLs, and a bare host:port,
// which means http://host:port (the same rule as `run --to`); tcp and
// passthrough routes take host:port or tcp://host:port. Ports are 1-65535.
func ParseUpstream(mode, raw string) (Upstream, error) {
	if mode == ModeTCP || mode == ModePassthrough {
		hostport := strings.TrimPrefix(raw, "tcp://")
		host, port, err := net.SplitHostPort(hostport)
		if err != nil || port == "" || host == "" {
			return Upstream{}, fmt.Errorf("upstream %q: a %s route needs host:port (or tcp://host:port)", raw, mode)
		}
		if err := checkPort(port); err != nil {
			return Upstream{}, fmt.Errorf("upstream %q: %v", raw, err)
		}
		return Upstream{Raw: raw, Scheme: "tcp", Host: hostport}, nil
	}
	u, err := url.Parse(BareUpstreamToURL(raw))
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %q is not a URL like \"http://127.0.0.1:8080\"", raw)
	}
	switch u.Scheme {
	case "http", "https", "h2c":
	default:
		return Upstream{}, fmt.Errorf("upstream %q: want http://, https:// or h2c:// followed by host:port", raw)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Upstream{}, fmt.Errorf("upstream %q has no host", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return Upstream{}, fmt.Errorf("upstream %q: only scheme://host:port is allowed (no path, query or credentials)", raw)
	}
	host := u.Host
	if u.Port() == "" {
		if strings.HasSuffix(u.Host, ":") {
			return Upstream{}, fmt.Errorf("upstream %q: empty port", raw)
		}
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	} else if err := checkPort(u.Port()); err != nil {
		return Upstream{}, fmt.Errorf("upstream %q: %v", raw, err)
	}
	return Upstream{Raw: raw, Scheme: u.Scheme, Host: host, URL: u}, nil
}

// BareUpstreamToURL turns an http route's upstream written as host:port
// (no scheme) into http://host:port, the rule shared by the config file's
// upstream/upstreams and `run --to`. Anything with a scheme is returned as is.
func BareUpstreamToURL(raw string) string {
	if raw == "" || strings.Contains(raw, "://") {
		return raw
	}
	return "http://" + raw
}

// checkPort accepts a decimal port 1-65535.
func checkPort(p string) error {
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' || n > 65535 {
			return fmt.Errorf("port %q is not a number 1-65535", p)
		}
		n = n*10 + int(c-'0')
	}
	if p == "" || n < 1 || n > 65535 {
		return fmt.Errorf("port %s is out of range: ports are 1-65535", p)
	}
	return nil
}
