package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Connections whose ClientHello has not come are parked without a
// goroutine each (listener_hellowait.go), closed when the handshake
// timeout runs out, and judged like any other once their hello comes.
func TestParkedConnectionsHoldNoGoroutine(t *testing.T) {
	const handshake = 500 * time.Millisecond
	w := startH1WorldWith(t, func(c *routes.Config) { c.Timeouts.Handshake = routes.Duration(handshake) }, echoUpstream(t).URL)
	acceptedBefore := counterValue(t, metricConnsAccepted)
	badBefore := counterValue(t, metricBadHello)

	// 100 clients that connect and send nothing
	const silent = 100
	var conns []net.Conn
	dialed := time.Now()
	for range silent {
		c, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(t, metricConnsAccepted)-acceptedBefore < silent && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := counterValue(t, metricConnsAccepted) - acceptedBefore; n < silent {
		t.Fatalf("%v of %d connections accepted", n, silent)
	}
	if n, stacks := testkit.Goroutines("proxy.(*Server).handleConn", "proxy.(*Server).waitFirst"); n > 0 {
		t.Errorf("%d goroutines for %d connections that sent nothing, want none:\n%s", n, silent, stacks)
	}

	// while they wait, a routed client and an unknown name whose hellos
	// come after the accept are served and refused
	raw, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // accepted and parked before the hello
	tc := tls.Client(raw, &tls.Config{ServerName: "web.test", RootCAs: w.roots})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("a routed client beside parked ones: %v", err)
	}
	tc.Close()
	unknownBefore := counterValue(t, metricUnknownSNI)
	unknown := testkit.ClientHello(t, "nobody.test")
	if got, err := sendHello(t, w.addr, nil, nil, unknown); !bytes.Equal(got, alertUnrecognizedName) {
		t.Errorf("an unknown name's hello after the accept: got %x (%v), want the alert", got, err)
	}
	if d := counterValue(t, metricUnknownSNI) - unknownBefore; d != 1 {
		t.Errorf("unknown_sni +%v, want +1", d)
	}

	// the silent ones are closed once the handshake timeout ran out, not
	// before
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || !(errors.Is(err, io.EOF) || isConnReset(err)) {
			t.Fatalf("silent connection %d: read %d bytes, %v; want it closed by gatehouse", i, n, err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("silent connection %d still open 10 s later", i)
		}
	}
	if since := time.Since(dialed); since < handshake {
		t.Errorf("silent connections closed %v after they connected, before the handshake timeout (%v)", since, handshake)
	}
	deadline = time.Now().Add(5 * time.Second)
	for counterValue(t, metricBadHello)-badBefore < silent && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d := counterValue(t, metricBadHello) - badBefore; d != silent {
		t.Errorf("bad_hello +%v after %d silent connections timed out, want +%d", d, silent, silent)
	}
}

// A server shut down with connections parked closes them and leaves no
// goroutine behind.
func TestParkedConnectionsClosedAtShutdown(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	c, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(30 * time.Millisecond) // parked
	w.stop()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a parked connection after shutdown: read %d, %v; want it closed", n, err)
	}
	testkit.NoGoroutinesLeft(t, 5*time.Second, "proxy.(*helloWait)")
}

// BenchmarkSilentConnection: what a connection that sends nothing costs
// the proxy while it waits for its ClientHello, parked (the default)
// and on a goroutine of its own (parkHellos off): Go heap and goroutine
// stacks per connection, 2,000 connections.
//
//	go test -run '^$' -bench SilentConnection -benchtime 1x ./proxy
func BenchmarkSilentConnection(b *testing.B) {
	for _, park := range []bool{true, false} {
		name := "parked"
		if !park {
			name = "goroutine"
		}
		b.Run(name, func(b *testing.B) {
			defer func(p bool) { parkHellos = p }(parkHellos)
			parkHellos = park
			const n = 2000
			w := startH1WorldWith(b, func(c *routes.Config) {
				c.Timeouts.Handshake = routes.Duration(time.Minute)
				c.Listen.SourceLimits = new(bool) // one source holds them all
			}, "http://127.0.0.1:9")
			for range b.N {
				before := heapAndStacks()
				accepted := counterValue(b, metricConnsAccepted)
				var conns []net.Conn
				for range n {
					c, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					conns = append(conns, c)
				}
				deadline := time.Now().Add(10 * time.Second)
				for counterValue(b, metricConnsAccepted)-accepted < n && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				after := heapAndStacks()
				b.ReportMetric(float64(int64(after)-int64(before))/n, "B/conn")
				for _, c := range conns {
					c.Close()
				}
			}
		})
	}
}

func heapAndStacks() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}
