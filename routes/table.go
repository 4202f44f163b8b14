package routes

import (
	"strings"
)

// Table maps SNI names to routes. It is built once per config and never
// changed, so lookups take no lock; a reload builds a new Table and the
// proxy swaps it in atomically.
type Table struct {
	exact    map[string]*Entry
	wildcard map[string]*Entry // "example.com" for "*.example.com"
	any      *Entry            // hosts = ["*"]
	entries  []*Entry
	config   *Config
}

// Entry is one route, ready to serve.
type Entry struct {
	Index     int    // position in the config's [[route]] list
	Route     *Route // the route as configured
	Hosts     []string
	Upstreams []Upstream
	Issuer    string // "acme", "internal", "manual", or "" for passthrough
}

// Mode returns the route's mode.
func (e *Entry) Mode() string { return e.Route.ModeOrDefault() }

// NewTable builds the route table of a validated config.
func NewTable(cfg *Config) *Table {
	t := &Table{exact: map[string]*Entry{}, wildcard: map[string]*Entry{}, config: cfg}
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		e := &Entry{Index: i, Route: r, Issuer: r.Issuer(cfg)}
		for _, raw := range r.AllUpstreams() {
			if u, err := ParseUpstream(r.ModeOrDefault(), raw); err == nil {
				e.Upstreams = append(e.Upstreams, u)
			}
		}
		for _, h := range r.Hosts {
			h, err := NormalizeHost(h)
			if err != nil {
				continue
			}
			e.Hosts = append(e.Hosts, h)
			switch {
			case h == "*":
				t.any = e
			case strings.HasPrefix(h, "*."):
				t.wildcard[h[2:]] = e
			default:
				t.exact[h] = e
			}
		}
		t.entries = append(t.entries, e)
	}
	return t
}

// Config returns the config the table was built from.
func (t *Table) Config() *Config { return t.config }

// Entries returns every route in config order.
func (t *Table) Entries() []*Entry { return t.entries }

// Lookup returns the route serving name, or nil. name must already be
// lower case without a trailing dot (crypto/tls lower-cases SNI; Host
// headers go through CanonicalHost). An exact name wins over a wildcard,
// a wildcard over the catch-all; "*.example.com" matches exactly one
// label, as certificates do.
func (t *Table) Lookup(name string) *Entry {
	if e, ok := t.exact[name]; ok {
		return e
	}
	if dot := strings.IndexByte(name, '.'); dot > 0 {
		if e, ok := t.wildcard[name[dot+1:]]; ok {
			return e
		}
	}
	if t.any != nil && name != "" {
		return t.any
	}
	return nil
}

// CanonicalHost turns a Host header or :authority into a lookup key:
// port stripped, lower case, trailing dot removed. It allocates only
// when the host is not already canonical.
func CanonicalHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}

// ManagedNames returns the concrete (non-pattern) host names whose
// certificates come from the given issuer ("acme" or "internal").
func (t *Table) ManagedNames(issuer string) []string {
	var names []string
	for _, e := range t.entries {
		if e.Issuer != issuer {
			continue
		}
		for _, h := range e.Hosts {
			if !isPattern(h) {
				names = append(names, h)
			}
		}
	}
	return names
}
