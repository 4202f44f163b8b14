// Package acmetest provides real ACME, DNS and OCSP components for tests and
// demos: a loopback DNS server, an in-process Pebble CA and an OCSP responder.
//
// Everything listens on 127.0.0.1 with kernel-picked ports, and every wait is
// bounded. The package does not import "testing": constructors return errors
// and every component has a Close method that the caller must call.
package acmetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// shutdownTimeout bounds every Close/Stop in this package.
const shutdownTimeout = 5 * time.Second

// DNS is an authoritative-for-everything DNS server on 127.0.0.1 serving UDP
// and TCP on the same port. It answers:
//
//   - A: the override set with SetA, else what the answers callback returns,
//     else 127.0.0.1. If the callback returns ok == false the answer is
//     NXDOMAIN.
//   - AAAA, CAA and every other type: an empty NOERROR answer, so resolvers
//     (Pebble's VA asks AAAA first) fall back to the A record.
//   - TXT: the values set with SetTXT (for DNS-01), else empty NOERROR.
type DNS struct {
	udp, tcp *dns.Server
	addr     string
	answers  func(name string) (string, bool)

	mu      sync.Mutex
	a       map[string]net.IP
	txt     map[string][]string
	queries map[string]int
	closed  bool
}

// StartDNS starts a DNS server on 127.0.0.1:0 (TCP and UDP on the same port).
// answers, which may be nil, is called for A queries without an override; its
// argument is the lower-case query name without the trailing dot, and it must
// return a loopback IP address to keep test traffic on the machine.
func StartDNS(answers func(name string) (ip string, ok bool)) (*DNS, error) {
	d := &DNS{
		answers: answers,
		a:       make(map[string]net.IP),
		txt:     make(map[string][]string),
		queries: make(map[string]int),
	}
	var (
		tl  net.Listener
		pc  net.PacketConn
		err error
	)
	// The kernel picks the TCP port; the same UDP port is usually free, but
	// retry a bounded number of times if it is not.
	for attempt := 0; attempt < 20; attempt++ {
		tl, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("acmetest: dns tcp listen: %w", err)
		}
		pc, err = net.ListenPacket("udp", tl.Addr().String())
		if err == nil {
			break
		}
		tl.Close()
		tl = nil
	}
	if tl == nil {
		return nil, fmt.Errorf("acmetest: dns: no port free for both tcp and udp: %w", err)
	}
	d.addr = tl.Addr().String()
	h := dns.HandlerFunc(d.serve)
	d.tcp = &dns.Server{Listener: tl, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	d.udp = &dns.Server{PacketConn: pc, Handler: h}

	started := make(chan error, 2)
	for _, s := range []*dns.Server{d.tcp, d.udp} {
		ready := make(chan struct{})
		s.NotifyStartedFunc = func() { close(ready) }
		go func(s *dns.Server) {
			if err := s.ActivateAndServe(); err != nil {
				select {
				case started <- err:
				default:
				}
			}
		}(s)
		select {
		case <-ready:
		case err := <-started:
			d.Close()
			return nil, fmt.Errorf("acmetest: dns serve: %w", err)
		case <-time.After(shutdownTimeout):
			d.Close()
			return nil, errors.New("acmetest: dns server did not start within 5s")
		}
	}
	return d, nil
}

// Addr returns the server's "127.0.0.1:port" (valid for both UDP and TCP).
func (d *DNS) Addr() string { return d.addr }

func normName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// SetA overrides the A answer for name (case-insensitive, trailing dot
// optional). An empty ip removes the override. ip must be an IPv4 address,
// and should be a loopback one (127.0.0.0/8).
func (d *DNS) SetA(name, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ip == "" {
		delete(d.a, normName(name))
		return
	}
	d.a[normName(name)] = net.ParseIP(ip).To4()
}

// SetTXT sets the TXT answer for name (e.g. "_acme-challenge.a.test");
// no values removes it.
func (d *DNS) SetTXT(name string, values ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(values) == 0 {
		delete(d.txt, normName(name))
		return
	}
	d.txt[normName(name)] = append([]string(nil), values...)
}

// Queries returns how many questions (any type) the server received for name.
func (d *DNS) Queries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[normName(name)]
}

// Close stops both servers; it waits at most a few seconds.
func (d *DNS) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	d.mu.Unlock()
	for _, s := range []*dns.Server{d.tcp, d.udp} {
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := s.ShutdownContext(ctx); err != nil {
			// Not started (or already stopped): close the socket directly.
			if s.Listener != nil {
				s.Listener.Close()
			}
			if s.PacketConn != nil {
				s.PacketConn.Close()
			}
		}
		cancel()
	}
}

func (d *DNS) lookupA(name string) (net.IP, bool) {
	d.mu.Lock()
	ip, ok := d.a[name]
	d.mu.Unlock()
	if ok {
		return ip, ip != nil
	}
	if d.answers == nil {
		return net.IPv4(127, 0, 0, 1).To4(), true
	}
	s, ok := d.answers(name)
	if !ok {
		return nil, false
	}
	ip = net.ParseIP(s).To4()
	return ip, ip != nil
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		name := normName(q.Name)
		d.mu.Lock()
		d.queries[name]++
		d.mu.Unlock()
		switch q.Qtype {
		case dns.TypeA:
			ip, ok := d.lookupA(name)
			if !ok {
				m.Rcode = dns.RcodeNameError
				continue
			}
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
				A:   ip,
			})
		case dns.TypeTXT:
			d.mu.Lock()
			vals := d.txt[name]
			d.mu.Unlock()
			for _, v := range vals {
				m.Answer = append(m.Answer, &dns.TXT{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0},
					Txt: []string{v},
				})
			}
		default:
			// AAAA, CAA, ...: empty NOERROR.
		}
	}
	_ = w.WriteMsg(m)
}
