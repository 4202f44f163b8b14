package acmetest

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

func query(t *testing.T, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return in
}

func aAnswer(t *testing.T, m *dns.Msg) string {
	t.Helper()
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("want one answer NOERROR, got rcode %s, %d answers", dns.RcodeToString[m.Rcode], len(m.Answer))
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("answer %v is not A", m.Answer[0])
	}
	return a.A.String()
}

func TestDNS(t *testing.T) {
	d, err := StartDNS(func(name string) (string, bool) {
		switch name {
		case "nx.test":
			return "", false
		case "other.test":
			return "127.0.0.3", true
		}
		return "127.0.0.1", true
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	for _, network := range []string{"udp", "tcp"} {
		if got := aAnswer(t, query(t, d.Addr(), network, "a.test", dns.TypeA)); got != "127.0.0.1" {
			t.Errorf("%s: A a.test = %s", network, got)
		}
		if got := aAnswer(t, query(t, d.Addr(), network, "Other.Test", dns.TypeA)); got != "127.0.0.3" {
			t.Errorf("%s: A other.test = %s", network, got)
		}
		for _, qt := range []uint16{dns.TypeAAAA, dns.TypeCAA, dns.TypeTXT} {
			m := query(t, d.Addr(), network, "a.test", qt)
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
				t.Errorf("%s %s: rcode %s, %d answers; want empty NOERROR", network, dns.TypeToString[qt], dns.RcodeToString[m.Rcode], len(m.Answer))
			}
		}
		if m := query(t, d.Addr(), network, "nx.test", dns.TypeA); m.Rcode != dns.RcodeNameError {
			t.Errorf("%s: nx.test rcode %s, want NXDOMAIN", network, dns.RcodeToString[m.Rcode])
		}
	}

	d.SetA("a.test.", "127.0.0.2")
	if got := aAnswer(t, query(t, d.Addr(), "tcp", "a.test", dns.TypeA)); got != "127.0.0.2" {
		t.Errorf("after SetA: %s", got)
	}
	d.SetA("a.test", "")
	if got := aAnswer(t, query(t, d.Addr(), "udp", "a.test", dns.TypeA)); got != "127.0.0.1" {
		t.Errorf("after SetA reset: %s", got)
	}
	d.SetTXT("_acme-challenge.a.test", "v1")
	m := query(t, d.Addr(), "tcp", "_acme-challenge.a.test", dns.TypeTXT)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.TXT).Txt[0] != "v1" {
		t.Errorf("TXT answer %v", m.Answer)
	}
	if q := d.Queries("a.test"); q != 2*4+2 {
		t.Errorf("Queries(a.test) = %d, want 10", q)
	}
}

func TestDNSDefault(t *testing.T) {
	d, err := StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := aAnswer(t, query(t, d.Addr(), "udp", "anything.example", dns.TypeA)); got != "127.0.0.1" {
		t.Errorf("default A = %s", got)
	}
	d.Close()
	d.Close() // idempotent
	c := &dns.Client{Net: "tcp", Timeout: time.Second}
	m := new(dns.Msg)
	m.SetQuestion("a.test.", dns.TypeA)
	if _, _, err := c.Exchange(m, d.Addr()); err == nil {
		t.Error("query after Close succeeded")
	}
}
