package proxy

import (
	"net"
	"testing"
	"time"
)

// A rejected ECH handshake followed within the minute by an accepted one
// from the same address is a retry; from another address, or later, it
// is not; a remembered address counts once.
func TestECHRetryLinksByAddress(t *testing.T) {
	var r echRetries
	now := time.Now()
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	sameIPOtherPort := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 2000}
	other := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 1000}
	if r.accepted(a, now) {
		t.Fatal("an accepted handshake with no rejection before counts as retried")
	}
	r.rejected(a, now)
	if r.accepted(other, now.Add(time.Second)) {
		t.Fatal("another address's acceptance counts as the retry")
	}
	if !r.accepted(sameIPOtherPort, now.Add(2*time.Second)) {
		t.Fatal("the retry (a new connection: new port) is not counted")
	}
	if r.accepted(a, now.Add(3*time.Second)) {
		t.Fatal("one rejection counted two retries")
	}
	r.rejected(a, now)
	if r.accepted(a, now.Add(echRetryWindow+time.Second)) {
		t.Fatal("an acceptance after the window counts as retried")
	}
	v4in6 := &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.3")}
	r.rejected(v4in6, now)
	if !r.accepted(&net.UDPAddr{IP: net.ParseIP("192.0.2.3").To4()}, now) {
		t.Fatal("an IPv4 address seen as IPv4-in-IPv6 is another address")
	}
}

// A flood of rejected hellos from many addresses cannot grow the table
// past echRetryMax; once entries expire they make room again.
func TestECHRetryTableBounded(t *testing.T) {
	var r echRetries
	now := time.Now()
	for i := range echRetryMax + 500 {
		r.rejected(&net.TCPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))}, now)
	}
	if n := r.len(); n != echRetryMax {
		t.Fatalf("%d addresses remembered, want the bound %d", n, echRetryMax)
	}
	late := &net.TCPAddr{IP: net.ParseIP("192.0.2.9")}
	r.rejected(late, now.Add(echRetryWindow+time.Second)) // every earlier one expired: pruned
	if n := r.len(); n != 1 {
		t.Fatalf("%d addresses after expiry, want 1", n)
	}
	if !r.accepted(late, now.Add(echRetryWindow+2*time.Second)) {
		t.Fatal("the address rejected after the prune is not tracked")
	}
}
