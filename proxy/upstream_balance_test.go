package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

func testBalancer(n int, leastConn bool) *balancer {
	b := &balancer{leastConn: leastConn, passive: n > 1}
	for range n {
		b.ups = append(b.ups, &upstream{})
	}
	return b
}

func TestRoundRobinSkipsDownAndTried(t *testing.T) {
	b := testBalancer(3, false)
	seen := map[*upstream]int{}
	for range 30 {
		seen[b.pick(0)]++
	}
	for i, u := range b.ups {
		if seen[u] != 10 {
			t.Errorf("upstream %d picked %d times of 30, want 10", i, seen[u])
		}
	}
	b.ups[1].checkDown.Store(true)
	var skip tried
	skip.add(0)
	for range 10 {
		if u := b.pick(skip); u != b.ups[2] {
			t.Fatalf("with 0 tried and 1 down, picked %d", b.index(u))
		}
	}
	skip.add(2)
	if u := b.pick(skip); u != nil {
		t.Errorf("every upstream tried or down, picked %d", b.index(u))
	}
}

func TestLeastConnPicksLeastLoaded(t *testing.T) {
	b := testBalancer(3, true)
	b.ups[0].active.Store(5)
	b.ups[1].active.Store(2)
	b.ups[2].active.Store(7)
	for range 10 {
		if u := b.pick(0); u != b.ups[1] {
			t.Fatalf("picked %d, want 1 (2 in flight)", b.index(u))
		}
	}
	// ties rotate
	b.ups[0].active.Store(2)
	seen := map[*upstream]int{}
	for range 10 {
		seen[b.pick(0)]++
	}
	if seen[b.ups[0]] == 0 || seen[b.ups[1]] == 0 || seen[b.ups[2]] != 0 {
		t.Errorf("ties between 0 and 1: %v", seen)
	}
}

func TestPassiveCooldown(t *testing.T) {
	b := testBalancer(2, false)
	u := b.ups[0]
	for i := range passiveFails - 1 {
		if u.failed(b.passive) {
			t.Fatalf("out of rotation after %d failures", i+1)
		}
	}
	if !u.failed(b.passive) || u.healthy() {
		t.Fatalf("not out of rotation after %d failures", passiveFails)
	}
	for range 10 {
		if b.pick(0) != b.ups[1] {
			t.Fatal("picked the upstream in cooldown")
		}
	}
	// cooldown over: one more failure puts it straight back out
	u.downUntil.Store(0)
	if !u.failed(b.passive) {
		t.Error("a failure after the cooldown did not restart it")
	}
	u.downUntil.Store(0)
	u.succeeded()
	if u.failed(b.passive) {
		t.Error("a success did not reset the failure count")
	}

	// a single upstream is never skipped passively
	one := testBalancer(1, false)
	for range 10 {
		one.ups[0].failed(one.passive)
	}
	if one.pick(0) == nil {
		t.Error("single upstream skipped after failures")
	}
	one.ups[0].checkDown.Store(true)
	if one.pick(0) != nil {
		t.Error("single upstream picked while its health check says down")
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	for _, lc := range []bool{false, true} {
		b := testBalancer(4, lc)
		if n := testing.AllocsPerRun(100, func() { b.pick(0) }); n != 0 {
			t.Errorf("least_conn=%v: pick allocates %v times", lc, n)
		}
	}
}

func TestForwardedValue(t *testing.T) {
	for _, c := range []struct {
		remote, host string
		tls          bool
		want         string
	}{
		{"192.0.2.7:4000", "a.test", true, "for=192.0.2.7;host=a.test;proto=https"},
		{"[2001:db8::7]:4000", "a.test:8443", true, `for="[2001:db8::7]";host="a.test:8443";proto=https`},
		{"bogus", "a.test", false, "for=unknown;host=a.test;proto=http"},
	} {
		r := &http.Request{RemoteAddr: c.remote, Host: c.host}
		if c.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if got := forwardedValue(r); got != c.want {
			t.Errorf("forwardedValue(%s, %s) = %s, want %s", c.remote, c.host, got, c.want)
		}
	}
}

func TestTrustedSources(t *testing.T) {
	ts := parseTrusted([]string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"})
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "11.0.0.1": false, "192.0.2.1": true, "192.0.2.2": false,
		"2001:db8::5": true, "2001:db9::5": false, "::ffff:10.0.0.1": true,
	} {
		if got := ts.contains(&net.TCPAddr{IP: net.ParseIP(addr), Port: 1}); got != want {
			t.Errorf("contains(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestProxyProblem(t *testing.T) {
	if proxyProblem(errors.New("not a TLS handshake"), []byte{0x16, 3, 1}) != "" {
		t.Error("a bad ClientHello reported as a PROXY problem")
	}
	if m := proxyProblem(proxyproto.ErrSuperfluousProxyHeader, nil); m == "" {
		t.Error("untrusted header not reported")
	}
	if m := proxyProblem(errors.New("x"), []byte("PROXY TCP4 1.2.3.4")); m == "" {
		t.Error("v1 header with no trusted sources not reported")
	}
	if m := proxyProblem(errors.New("x"), proxyproto.SIGV2); m == "" {
		t.Error("v2 header with no trusted sources not reported")
	}
}
