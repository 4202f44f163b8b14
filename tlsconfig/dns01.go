package tlsconfig

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig/dnsprovider"
)

// DNS-01: the challenge is a TXT record at _acme-challenge.NAME, put
// into the zone by the [acme.dns] provider. Names ordered this way need
// not lead to this gatehouse (wildcards, private names), so the
// self-check before an order checks instead that the zone takes the
// record (probe). Before the CA is told to look, the record must be
// visible on every authoritative server of the zone (Wait): the CA may
// ask any of them, and a lookup that misses counts as a failed
// validation.

const (
	// DefaultDNSPropagationTimeout bounds the wait for a challenge
	// record to be visible on the zone's servers.
	DefaultDNSPropagationTimeout = 2 * time.Minute
	dnsChallengeTTL              = time.Minute
	dnsProbeTimeout              = 20 * time.Second
)

// dnsSolver is the DNS-01 solver of every ACME issuer of a Manager
// (acmez.Solver and acmez.Waiter). configure swaps its settings on
// reload; a challenge in flight keeps the settings it started with.
type dnsSolver struct {
	log         *slog.Logger
	propagation time.Duration

	mu  sync.Mutex
	set *dnsSettings // nil: no [acme.dns]

	recMu sync.Mutex
	added map[string]addedRecord // fqdn + "\x00" + value
}

type addedRecord struct {
	zone string
	set  *dnsSettings
}

type dnsSettings struct {
	provider dnsprovider.Provider
	finder   *dnsprovider.Finder
	zone     string // configured zone (FQDN), "" to find it from the SOA
	desc     string // for messages: which provider, where
}

func newDNSSolver(log *slog.Logger, propagation time.Duration) *dnsSolver {
	if propagation <= 0 {
		propagation = DefaultDNSPropagationTimeout
	}
	return &dnsSolver{log: log, propagation: propagation, added: map[string]addedRecord{}}
}

// configure applies [acme.dns] (validated already).
func (s *dnsSolver) configure(cfg *routes.Config) {
	var set *dnsSettings
	if cfg.ACME.HasChallenge("dns-01") {
		set = newDNSSettings(cfg)
	}
	s.mu.Lock()
	s.set = set
	s.mu.Unlock()
}

// newDNSSettings builds the [acme.dns] provider, or nil when there is
// none; DNS-01 challenges and ECH's HTTPS records (echdns.go) use it.
func newDNSSettings(cfg *routes.Config) *dnsSettings {
	var set *dnsSettings
	if d := cfg.ACME.DNS; d != nil {
		set = &dnsSettings{finder: &dnsprovider.Finder{Server: d.ServerAddr(), Resolver: cfg.ACME.Resolver}}
		if d.Zone != "" {
			set.zone = dns.Fqdn(strings.ToLower(d.Zone))
		}
		switch d.Provider {
		case "rfc2136":
			alg := d.TSIGAlgorithm
			if alg == "" {
				alg = routes.DefaultTSIGAlgorithm
			}
			set.provider = &dnsprovider.RFC2136{Server: d.ServerAddr(), KeyName: d.TSIGKey, Secret: d.TSIGSecret, Algorithm: alg}
			set.desc = "rfc2136 update to " + d.ServerAddr()
		case "exec":
			set.provider = &dnsprovider.Exec{Command: d.Command}
			set.desc = "exec hook " + d.Command[0]
		default:
			set = nil
		}
	}
	return set
}

func (s *dnsSolver) settings() (*dnsSettings, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		return nil, fmt.Errorf("dns-01: no [acme.dns] provider configured")
	}
	return s.set, nil
}

// zoneFor returns the zone a record at fqdn goes into.
func (set *dnsSettings) zoneFor(ctx context.Context, fqdn string) (string, error) {
	if set.zone != "" {
		if !dns.IsSubDomain(set.zone, fqdn) {
			return "", fmt.Errorf("dns-01: %s is not inside [acme.dns] zone %s", fqdn, set.zone)
		}
		return set.zone, nil
	}
	return set.finder.Zone(ctx, fqdn)
}

// add puts a TXT record for value at fqdn.
func (s *dnsSolver) add(ctx context.Context, set *dnsSettings, fqdn, value string) (string, error) {
	zone, err := set.zoneFor(ctx, fqdn)
	if err != nil {
		return "", fmt.Errorf("dns-01 (%s): %w", set.desc, err)
	}
	rec := libdns.TXT{Name: libdns.RelativeName(fqdn, zone), Text: value, TTL: dnsChallengeTTL}
	if _, err := set.provider.AppendRecords(ctx, zone, []libdns.Record{rec}); err != nil {
		return "", fmt.Errorf("dns-01 (%s): %w", set.desc, err)
	}
	return zone, nil
}

func (s *dnsSolver) remove(set *dnsSettings, zone, fqdn, value string) error {
	// cleanup runs even when the order's context has ended
	ctx, cancel := context.WithTimeout(context.Background(), dnsprovider.DefaultTimeout)
	defer cancel()
	rec := libdns.TXT{Name: libdns.RelativeName(fqdn, zone), Text: value, TTL: dnsChallengeTTL}
	if _, err := set.provider.DeleteRecords(ctx, zone, []libdns.Record{rec}); err != nil {
		return fmt.Errorf("dns-01 (%s): %w", set.desc, err)
	}
	return nil
}

// Present implements acmez.Solver: it adds the challenge record.
func (s *dnsSolver) Present(ctx context.Context, chal acme.Challenge) error {
	set, err := s.settings()
	if err != nil {
		return err
	}
	fqdn, value := dns.Fqdn(chal.DNS01TXTRecordName()), chal.DNS01KeyAuthorization()
	zone, err := s.add(ctx, set, fqdn, value)
	if err != nil {
		return err
	}
	s.recMu.Lock()
	s.added[fqdn+"\x00"+value] = addedRecord{zone: zone, set: set}
	s.recMu.Unlock()
	s.log.Info("dns-01 challenge record added", "record", fqdn, "zone", zone, "via", set.desc)
	return nil
}

// Wait implements acmez.Waiter: it returns once every authoritative
// server of the zone answers the record, so the CA finds it wherever it
// asks.
func (s *dnsSolver) Wait(ctx context.Context, chal acme.Challenge) error {
	fqdn, value := dns.Fqdn(chal.DNS01TXTRecordName()), chal.DNS01KeyAuthorization()
	s.recMu.Lock()
	rec, ok := s.added[fqdn+"\x00"+value]
	s.recMu.Unlock()
	if !ok {
		return fmt.Errorf("dns-01: no record was added for %s", fqdn)
	}
	servers, err := rec.set.finder.Authorities(ctx, rec.zone)
	if err != nil {
		return fmt.Errorf("dns-01 (%s): %w", rec.set.desc, err)
	}
	start := time.Now()
	interval := min(2*time.Second, max(s.propagation/20, 100*time.Millisecond))
	if err := rec.set.finder.WaitTXT(ctx, servers, fqdn, value, s.propagation, interval); err != nil {
		return fmt.Errorf("dns-01 (%s): %w", rec.set.desc, err)
	}
	s.log.Info("dns-01 challenge record visible on the zone's servers", "record", fqdn, "servers", servers, "after", time.Since(start).Round(time.Millisecond))
	return nil
}

// CleanUp implements acmez.Solver: it removes the challenge record.
func (s *dnsSolver) CleanUp(_ context.Context, chal acme.Challenge) error {
	fqdn, value := dns.Fqdn(chal.DNS01TXTRecordName()), chal.DNS01KeyAuthorization()
	key := fqdn + "\x00" + value
	s.recMu.Lock()
	rec, ok := s.added[key]
	delete(s.added, key)
	s.recMu.Unlock()
	if !ok {
		return nil // Present failed: nothing to remove
	}
	if err := s.remove(rec.set, rec.zone, fqdn, value); err != nil {
		s.log.Warn("dns-01 challenge record left in the zone; remove it by hand", "record", fqdn, "error", err)
		return err
	}
	return nil
}

// probe is the self-check of a name ordered by DNS-01: the zone takes
// a throwaway record at _acme-challenge.NAME (and the primary, when one
// is configured, answers it), and lets it be removed. Nothing reaches
// the CA. Extra TXT values there are harmless to a later challenge.
func (s *dnsSolver) probe(ctx context.Context, name string) error {
	set, err := s.settings()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, dnsProbeTimeout)
	defer cancel()
	fqdn := dns.Fqdn("_acme-challenge." + strings.TrimPrefix(name, "*."))
	value := "gatehouse-selfcheck-" + randomHex(8)
	zone, err := s.add(ctx, set, fqdn, value)
	if err != nil {
		return fmt.Errorf("self-check: the zone does not take the DNS-01 record for %s: %w", name, err)
	}
	var seenErr error
	if server := set.finder.Server; server != "" {
		seenErr = set.finder.WaitTXT(ctx, []string{server}, fqdn, value, 5*time.Second, 250*time.Millisecond)
	}
	if err := s.remove(set, zone, fqdn, value); err != nil {
		return fmt.Errorf("self-check: the zone took the DNS-01 probe record for %s but did not let it be removed: %w", name, err)
	}
	if seenErr != nil {
		return fmt.Errorf("self-check: the DNS-01 probe record for %s: %w", name, seenErr)
	}
	return nil
}

// wildcardByDNS reports whether host is a "*.suffix" host that gets one
// wildcard certificate by DNS-01.
func wildcardByDNS(cfg *routes.Config, host string) bool {
	return strings.HasPrefix(host, "*.") && cfg.ACME.WildcardByDNS()
}

// orderByDNS reports whether host's certificate is ordered by DNS-01:
// every name when dns-01 is the only challenge listed, else wildcards.
func orderByDNS(cfg *routes.Config, host string) bool {
	return cfg.ACME.DNSOnly() || wildcardByDNS(cfg, host)
}
