package proxy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// A client whose Encrypted Client Hello was rejected (stale keys from a
// DNS cache) gets the current configs as retry configs and connects
// again with them (RFC 9849 §6.1.6). The server never sees the two
// connections linked; echRetries links them by client address: an
// accepted ECH handshake from an address that had a rejected one within
// echRetryWindow counts as retried. That is what an operator rotating
// keys wants to see: clients with stale records still get in, at the
// price of one more round trip.
const (
	echRetryWindow = time.Minute
	// echRetryMax bounds the addresses remembered: a flood of rejected
	// hellos from many addresses cannot grow it (expired entries are
	// pruned when it is full; past that, new rejections are not tracked).
	echRetryMax = 4096
)

type echRetries struct {
	mu sync.Mutex
	m  map[netip.Addr]time.Time // address → time of its last rejected ECH handshake
}

var echRetry echRetries

// rejected records a rejected ECH handshake from addr at now.
func (r *echRetries) rejected(addr net.Addr, now time.Time) {
	ip, ok := addrIP(addr)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[netip.Addr]time.Time)
	}
	if _, seen := r.m[ip]; !seen && len(r.m) >= echRetryMax {
		for k, t := range r.m {
			if now.Sub(t) > echRetryWindow {
				delete(r.m, k)
			}
		}
		if len(r.m) >= echRetryMax {
			return
		}
	}
	r.m[ip] = now
}

// accepted reports whether an accepted ECH handshake from addr at now
// is the retry of a rejected one.
func (r *echRetries) accepted(addr net.Addr, now time.Time) bool {
	ip, ok := addrIP(addr)
	if !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t, seen := r.m[ip]
	if !seen {
		return false
	}
	delete(r.m, ip)
	return now.Sub(t) <= echRetryWindow
}

func (r *echRetries) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// addrIP is the IP of a TCP or UDP address.
func addrIP(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case *net.UDPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap(), err == nil
}
