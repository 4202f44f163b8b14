// Package dnsprovider puts ACME DNS-01 challenge records into a zone:
// by RFC 2136 dynamic update signed with TSIG (BIND, Knot, PowerDNS and
// most self-hosted DNS take it), or through an operator's hook command
// (any DNS API). Both implement libdns's RecordAppender and
// RecordDeleter, certmagic's DNSProvider.
//
// Everything a DNS server answers is treated as hostile: rcodes and
// TSIG errors become errors that say what to fix; nothing it sends is
// trusted beyond the question asked.
package dnsprovider

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// Provider adds and removes records in a zone (certmagic.DNSProvider).
type Provider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// DefaultTimeout bounds one update exchange or hook run.
const DefaultTimeout = 30 * time.Second

// RFC2136 sends dynamic updates (RFC 2136) signed with TSIG (RFC 8945).
type RFC2136 struct {
	Server    string // host:port of the zone's primary
	KeyName   string // TSIG key name
	Secret    string // base64
	Algorithm string // "hmac-sha256" (default), "hmac-sha512", ...
	Timeout   time.Duration
}

// AppendRecords adds recs to zone in one update.
func (p *RFC2136) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	rrs, err := toRRs(zone, recs)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	m.Insert(rrs)
	if err := p.send(ctx, m, zone, "adding"); err != nil {
		return nil, err
	}
	return recs, nil
}

// DeleteRecords removes exactly recs (name, type and value) from zone.
func (p *RFC2136) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	rrs, err := toRRs(zone, recs)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	m.Remove(rrs)
	if err := p.send(ctx, m, zone, "removing"); err != nil {
		return nil, err
	}
	return recs, nil
}

// PublishHTTPS replaces the HTTPS records (RFC 9460) at fqdn with one
// whose RDATA is rdata (e.g. `1 . alpn="h2" ech="..."`), in one update.
func (p *RFC2136) PublishHTTPS(ctx context.Context, zone, fqdn, rdata string) error {
	rr, err := dns.NewRR(dns.Fqdn(fqdn) + " 300 IN HTTPS " + rdata)
	if err != nil {
		return fmt.Errorf("HTTPS record for %s: %w", fqdn, err)
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	m.RemoveRRset([]dns.RR{&dns.HTTPS{SVCB: dns.SVCB{Hdr: dns.RR_Header{Name: dns.Fqdn(fqdn), Rrtype: dns.TypeHTTPS, Class: dns.ClassINET}}}})
	m.Insert([]dns.RR{rr})
	return p.send(ctx, m, zone, "replacing HTTPS")
}

// UpdateError is an update the server answered with an error rcode.
type UpdateError struct {
	Server, Zone, Action string
	Rcode                int
	TSIGError            int // TSIG error code from the answer, 0 if none
}

func (e *UpdateError) Error() string {
	rc := dns.RcodeToString[e.Rcode]
	if rc == "" {
		rc = fmt.Sprintf("rcode %d", e.Rcode)
	}
	tsig := ""
	if e.TSIGError != 0 {
		tsig = " (TSIG " + dns.RcodeToString[e.TSIGError] + ")"
	}
	why := ""
	switch e.Rcode {
	case dns.RcodeRefused:
		why = ": the server does not let this key update the zone; allow it (BIND: allow-update { key \"NAME\"; } or update-policy in the zone)"
	case dns.RcodeNotAuth:
		why = ": the TSIG key name, secret or algorithm does not match the server's, the clocks differ by more than 5 minutes, or the server is not authoritative for the zone"
	case dns.RcodeServerFailure:
		why = ": the server could not apply the update (see its log: journal not writable, zone not loaded)"
	case dns.RcodeNotZone:
		why = ": the record's name is not inside the zone; set [acme.dns] zone"
	}
	return fmt.Sprintf("DNS update %s record in zone %s at %s: %s%s%s", e.Action, e.Zone, e.Server, rc, tsig, why)
}

func (p *RFC2136) send(ctx context.Context, m *dns.Msg, zone, action string) error {
	alg := p.Algorithm
	if alg == "" {
		alg = "hmac-sha256"
	}
	key := dns.Fqdn(strings.ToLower(p.KeyName))
	m.SetTsig(key, dns.Fqdn(strings.ToLower(alg)), 300, time.Now().Unix())
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &dns.Client{Net: "tcp", Timeout: timeout, TsigSecret: map[string]string{key: p.Secret}}
	r, _, err := c.ExchangeContext(ctx, m, p.Server)
	if r != nil && r.Rcode != dns.RcodeSuccess {
		ue := &UpdateError{Server: p.Server, Zone: dns.Fqdn(zone), Action: action, Rcode: r.Rcode}
		if t := r.IsTsig(); t != nil {
			ue.TSIGError = int(t.Error)
		}
		return ue
	}
	if err != nil {
		if errors.Is(err, dns.ErrSig) || errors.Is(err, dns.ErrSecret) || errors.Is(err, dns.ErrKeyAlg) || errors.Is(err, dns.ErrAuth) {
			return fmt.Errorf("DNS update %s record in zone %s at %s: the answer's TSIG signature does not verify (%v): check tsig_key, tsig_secret and tsig_algorithm", action, dns.Fqdn(zone), p.Server, err)
		}
		return fmt.Errorf("DNS update %s record in zone %s at %s: %w", action, dns.Fqdn(zone), p.Server, err)
	}
	if r == nil {
		return fmt.Errorf("DNS update %s record in zone %s at %s: no answer", action, dns.Fqdn(zone), p.Server)
	}
	if r.Id != m.Id || !r.Response || r.Opcode != dns.OpcodeUpdate {
		return fmt.Errorf("DNS update %s record in zone %s at %s: the answer does not match the update", action, dns.Fqdn(zone), p.Server)
	}
	return nil
}

// toRRs turns TXT records relative to zone into DNS resource records.
func toRRs(zone string, recs []libdns.Record) ([]dns.RR, error) {
	var out []dns.RR
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("dnsprovider: only TXT records are supported, not %s", rr.Type)
		}
		ttl := uint32(rr.TTL / time.Second)
		if ttl == 0 {
			ttl = 60
		}
		out = append(out, &dns.TXT{
			Hdr: dns.RR_Header{Name: dns.Fqdn(libdns.AbsoluteName(rr.Name, zone)), Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
			Txt: splitTXT(rr.Data),
		})
	}
	return out, nil
}

// splitTXT cuts a value into the 255-byte strings a TXT record holds.
func splitTXT(s string) []string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, s[:255])
		s = s[255:]
	}
	return append(parts, s)
}
