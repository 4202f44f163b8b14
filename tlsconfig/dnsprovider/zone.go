package dnsprovider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Finder looks up a name's zone and the zone's authoritative servers,
// and waits for a record to be visible on all of them.
type Finder struct {
	// Server is the zone's primary ("host:port"), asked first: it is
	// authoritative, and for private zones the only server that knows.
	Server string
	// Resolver is a recursive resolver ("host:port") for names the
	// primary does not answer (NS host addresses outside the zone);
	// "" means the system's (/etc/resolv.conf).
	Resolver string
	// QueryTimeout bounds one query; default 5 s.
	QueryTimeout time.Duration
}

// maxAuthorities bounds the servers a propagation check asks.
const maxAuthorities = 8

func (f *Finder) timeout() time.Duration {
	if f.QueryTimeout > 0 {
		return f.QueryTimeout
	}
	return 5 * time.Second
}

func (f *Finder) resolver() (string, error) {
	if f.Resolver != "" {
		return f.Resolver, nil
	}
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cc.Servers) == 0 {
		return "", fmt.Errorf("no DNS resolver: /etc/resolv.conf: %v; set [acme] resolver or [acme.dns] server", err)
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

// query asks server one question: UDP, then TCP when truncated.
func (f *Finder) query(ctx context.Context, server, name string, qtype uint16, recursive bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = recursive
	m.SetEdns0(1232, false)
	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	c := &dns.Client{Timeout: f.timeout(), UDPSize: 1232}
	r, _, err := c.ExchangeContext(ctx, m, server)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && ctx.Err() == nil || err == nil && r.Truncated {
		// truncated, or an answer too big for UDP that the server did
		// not mark as truncated: ask over TCP
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, m, server)
	}
	if err != nil {
		return nil, err
	}
	if r.Id != m.Id || !r.Response || len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, m.Question[0].Name) {
		return nil, errors.New("the answer does not match the question")
	}
	return r, nil
}

// Zone returns the zone (FQDN) that holds fqdn, from its SOA: asked of
// the primary when one is set, else of the resolver.
func (f *Finder) Zone(ctx context.Context, fqdn string) (string, error) {
	server, recursive := f.Server, false
	if server == "" {
		var err error
		if server, err = f.resolver(); err != nil {
			return "", err
		}
		recursive = true
	}
	name := dns.Fqdn(strings.ToLower(fqdn))
	for range 16 {
		r, err := f.query(ctx, server, name, dns.TypeSOA, recursive)
		if err != nil {
			return "", fmt.Errorf("finding the zone of %s: SOA query to %s: %v", fqdn, server, err)
		}
		if r.Rcode == dns.RcodeRefused || r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeNotAuth {
			return "", fmt.Errorf("finding the zone of %s: %s answered %s: it does not serve a zone holding the name; set [acme.dns] zone, or server to the zone's primary",
				fqdn, server, dns.RcodeToString[r.Rcode])
		}
		for _, rr := range append(r.Answer, r.Ns...) {
			if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(strings.ToLower(soa.Hdr.Name), dns.Fqdn(strings.ToLower(fqdn))) {
				return strings.ToLower(soa.Hdr.Name), nil
			}
		}
		// no SOA (a CNAME, or a resolver that left it out): one label up
		i, end := dns.NextLabel(name, 0)
		if end || name == "." {
			break
		}
		name = name[i:]
	}
	return "", fmt.Errorf("finding the zone of %s: no SOA record found (asked %s); set [acme.dns] zone", fqdn, server)
}

// Authorities returns the servers ("host:port") that answer for zone:
// its NS hosts on port 53, and the primary when one is set. An NS host
// at the primary's address is the primary (asked on its port).
func (f *Finder) Authorities(ctx context.Context, zone string) ([]string, error) {
	var out []string
	primaryIP := ""
	if f.Server != "" {
		out = append(out, f.Server)
		host, _, _ := net.SplitHostPort(f.Server)
		primaryIP = host
		if net.ParseIP(host) == nil {
			if ips, err := f.addrs(ctx, host, nil); err == nil && len(ips) > 0 {
				primaryIP = ips[0]
			}
		}
	}
	server, recursive := f.Server, false
	if server == "" {
		var err error
		if server, err = f.resolver(); err != nil {
			return nil, err
		}
		recursive = true
	}
	r, err := f.query(ctx, server, zone, dns.TypeNS, recursive)
	if err != nil || r.Rcode != dns.RcodeSuccess {
		if len(out) > 0 {
			return out, nil // the primary alone
		}
		if err == nil {
			err = fmt.Errorf("answer %s", dns.RcodeToString[r.Rcode])
		}
		return nil, fmt.Errorf("finding the authoritative servers of %s: NS query to %s: %v; set [acme.dns] server", zone, server, err)
	}
	var problems []string
	for _, rr := range r.Answer {
		ns, ok := rr.(*dns.NS)
		if !ok || len(out) >= maxAuthorities {
			continue
		}
		ips, err := f.addrs(ctx, ns.Ns, r.Extra)
		if err != nil || len(ips) == 0 {
			problems = append(problems, fmt.Sprintf("%s: no address (%v)", ns.Ns, err))
			continue
		}
		// one address per server, IPv4 first: an address this host
		// cannot reach (IPv6 without a route) must not hold every order
		ip := ips[0]
		for _, a := range ips {
			if net.ParseIP(a).To4() != nil {
				ip = a
				break
			}
		}
		addr := net.JoinHostPort(ip, "53")
		if ip == primaryIP {
			addr = f.Server
		}
		if !slices.Contains(out, addr) {
			out = append(out, addr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("finding the authoritative servers of %s: %s", zone, strings.Join(problems, "; "))
	}
	return out, nil
}

// addrs returns host's addresses: from glue, else from the primary,
// else from the resolver.
func (f *Finder) addrs(ctx context.Context, host string, glue []dns.RR) ([]string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []string{ip.String()}, nil
	}
	var ips []string
	for _, rr := range glue {
		switch a := rr.(type) {
		case *dns.A:
			if strings.EqualFold(a.Hdr.Name, dns.Fqdn(host)) {
				ips = append(ips, a.A.String())
			}
		case *dns.AAAA:
			if strings.EqualFold(a.Hdr.Name, dns.Fqdn(host)) {
				ips = append(ips, a.AAAA.String())
			}
		}
	}
	if len(ips) > 0 {
		return ips, nil
	}
	servers := []struct {
		addr      string
		recursive bool
	}{}
	if f.Server != "" {
		servers = append(servers, struct {
			addr      string
			recursive bool
		}{f.Server, false})
	}
	if res, err := f.resolver(); err == nil {
		servers = append(servers, struct {
			addr      string
			recursive bool
		}{res, true})
	}
	var lastErr error = errors.New("no resolver")
	for _, s := range servers {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			r, err := f.query(ctx, s.addr, host, qt, s.recursive)
			if err != nil {
				lastErr = err
				continue
			}
			for _, rr := range r.Answer {
				switch a := rr.(type) {
				case *dns.A:
					ips = append(ips, a.A.String())
				case *dns.AAAA:
					ips = append(ips, a.AAAA.String())
				}
			}
		}
		if len(ips) > 0 {
			return ips, nil
		}
	}
	return nil, lastErr
}

// TXTAt reports whether server answers authoritatively with value among
// the TXT records at fqdn, and what it answered otherwise.
func (f *Finder) TXTAt(ctx context.Context, server, fqdn, value string) (bool, string) {
	r, err := f.query(ctx, server, fqdn, dns.TypeTXT, false)
	if err != nil {
		return false, err.Error()
	}
	if r.Rcode != dns.RcodeSuccess {
		return false, dns.RcodeToString[r.Rcode]
	}
	n := 0
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, dns.Fqdn(fqdn)) {
			n++
			if strings.Join(t.Txt, "") == value {
				return true, ""
			}
		}
	}
	if !r.Authoritative {
		return false, "not authoritative for the zone"
	}
	return false, fmt.Sprintf("%d TXT record(s), none with the value", n)
}

// TXTValues returns the TXT values server answers authoritatively at
// fqdn (none for NXDOMAIN).
func (f *Finder) TXTValues(ctx context.Context, server, fqdn string) ([]string, error) {
	r, err := f.query(ctx, server, fqdn, dns.TypeTXT, false)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, errors.New(dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, dns.Fqdn(fqdn)) && len(out) < 64 {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// WaitTXT waits until every server answers value at fqdn, polling
// every interval, at most timeout.
func (f *Finder) WaitTXT(ctx context.Context, servers []string, fqdn, value string, timeout, interval time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := map[string]bool{}
	last := map[string]string{}
	for {
		for _, s := range servers {
			if seen[s] {
				continue
			}
			ok, why := f.TXTAt(ctx, s, fqdn, value)
			seen[s], last[s] = ok, why
		}
		if len(seen) == len(servers) && !slices.Contains(mapValues(seen), false) {
			return nil
		}
		select {
		case <-ctx.Done():
			var missing []string
			for _, s := range servers {
				if !seen[s] {
					missing = append(missing, s+" ("+last[s]+")")
				}
			}
			return fmt.Errorf("the TXT record %s was added but is not visible at %s after %s: check that it lands in the zone the servers serve (and that secondaries get it: NOTIFY, zone transfers)",
				fqdn, strings.Join(missing, ", "), timeout)
		case <-time.After(interval):
		}
	}
}

func mapValues(m map[string]bool) []bool {
	out := make([]bool, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
