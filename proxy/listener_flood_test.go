package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/sni"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

func counterValue(t testing.TB, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// sendHello connects from the address from (nil: any), writes hello
// in pieces (each a write of its own) and returns what came back
// before gatehouse closed, and how the read ended.
func sendHello(t *testing.T, addr string, from net.IP, pieces ...[]byte) ([]byte, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 3 * time.Second}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	c, err := d.Dial("tcp", addr)
	if isConnReset(err) {
		return nil, err // reset at accept, before the dial returned
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(20 * time.Millisecond) // let gatehouse read the first piece alone
		}
		if _, err := c.Write(p); err != nil {
			break // refused while still writing
		}
	}
	got, err := io.ReadAll(c)
	return got, err
}

// A ClientHello for a name gatehouse does not route gets the
// unrecognized_name alert and nothing else, whether it came whole (the
// accept loop refuses it) or in pieces (crypto/tls reads it); each is
// counted as unknown_sni; clients of routed names are served beside.
func TestUnknownNameRefused(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	hello := testkit.ClientHello(t, "nobody.test")
	before := counterValue(t, metricUnknownSNI)
	for _, pieces := range [][][]byte{
		{hello},                // whole: refused at accept
		{hello[:3], hello[3:]}, // record header split
		{hello[:len(hello)-1], hello[len(hello)-1:]}, // last byte late
	} {
		got, err := sendHello(t, w.addr, nil, pieces...)
		if !bytes.Equal(got, alertUnrecognizedName) {
			t.Errorf("hello in %d pieces: got %x (%v), want the unrecognized_name alert %x", len(pieces), got, err, alertUnrecognizedName)
		}
	}
	if d := counterValue(t, metricUnknownSNI) - before; d != 3 {
		t.Errorf("unknown_sni counted %v times, want 3", d)
	}
	// a routed name whose hello came whole in the first read is served
	res, err := w.client(false).Get("https://web.test/x")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("good client: %v %v", res, err)
	}
	res.Body.Close()
	// a wrong-case name is what crypto/tls would route: no route either
	if got, err := sendHello(t, w.addr, nil, testkit.ClientHello(t, "WEB.test")); !bytes.Equal(got, alertUnrecognizedName) {
		t.Errorf("WEB.test: got %x (%v), want the alert (routes match names as sent, like the full path)", got, err)
	}
}

func isConnReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// setSourceLimits sets the per-source limits and clock for the servers
// the test starts after it.
func setSourceLimits(t *testing.T, handshakes, refused int, clock func() time.Time) {
	h, r, c := sourceMaxHandshakes, sourceMaxRefused, sourceClock
	sourceMaxHandshakes, sourceMaxRefused, sourceClock = handshakes, refused, clock
	t.Cleanup(func() { sourceMaxHandshakes, sourceMaxRefused, sourceClock = h, r, c })
}

// closedAtOnce reports whether c was closed by gatehouse without a byte.
func closedAtOnce(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(make([]byte, 16))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return n == 0 && err != nil
}

// A source that had its quota of refused ClientHellos in the window
// has its next connections reset at accept (no alert: nothing of them
// is read), counted and logged; other sources are served meanwhile;
// the next window serves it again.
func TestSourceLimitRefusedHellos(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	setSourceLimits(t, 512, 3, func() time.Time { return time.Unix(0, now.Load()) })
	w := startH1World(t, echoUpstream(t).URL)
	hello := testkit.ClientHello(t, "nobody.test")
	bad, good := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	for i := 0; i < 3; i++ {
		// whole (the accept loop refuses) and split (crypto/tls reads it): both count
		pieces := [][]byte{hello}
		if i == 1 {
			pieces = [][]byte{hello[:3], hello[3:]}
		}
		if got, err := sendHello(t, w.addr, bad, pieces...); !bytes.Equal(got, alertUnrecognizedName) {
			t.Fatalf("refused hello %d: got %x (%v), want the alert", i+1, got, err)
		}
	}
	before := counterValue(t, metricLimitedRefused)
	got, err := sendHello(t, w.addr, bad, hello)
	if len(got) != 0 {
		t.Errorf("4th hello from the same source: got %x, want a reset without an alert", got)
	}
	if d := counterValue(t, metricLimitedRefused) - before; d != 1 {
		t.Errorf("gatehouse_tls_source_limited_total{limit=refused} +%v, want +1", d)
	}
	// another source: still answered, and a good client served
	if got, _ := sendHello(t, w.addr, good, hello); !bytes.Equal(got, alertUnrecognizedName) {
		t.Errorf("another source's hello: got %x, want the alert", got)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: good}}, "tcp", w.addr,
		&tls.Config{ServerName: "web.test", RootCAs: w.roots})
	if err != nil {
		t.Fatalf("good client from another source: %v", err)
	}
	c.Close()
	// the next window
	now.Add(int64(sourceWindow))
	if got, err := sendHello(t, w.addr, bad, hello); !bytes.Equal(got, alertUnrecognizedName) {
		t.Errorf("after the window: got %x (%v), want the alert again", got, err)
	}
}

// A source may hold at most sourceMaxHandshakes connections between
// accept and the end of their handshake: the next is reset at accept
// and counted; other sources are served meanwhile; once those
// connections end (here: their clients leave) the source is served.
func TestSourceLimitHandshakesInFlight(t *testing.T) {
	setSourceLimits(t, 3, 1000, time.Now)
	w := startH1World(t, echoUpstream(t).URL)
	bad, good := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	d := &net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: bad}}
	hello := testkit.ClientHello(t, "web.test")
	var silent []net.Conn
	for i := 0; i < 3; i++ { // handshakes that never finish: half a hello, then nothing
		c, err := d.Dial("tcp", w.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write(hello[:len(hello)/2])
		silent = append(silent, c)
	}
	before := counterValue(t, metricLimitedHandshakes)
	// reset at accept: the dial itself may see the reset
	if c, err := d.Dial("tcp", w.addr); err == nil {
		_, _ = c.Write(hello)
		if !closedAtOnce(t, c) {
			t.Error("4th connection from a source with 3 handshakes in flight: not closed at once")
		}
		c.Close()
	} else if !isConnReset(err) {
		t.Fatal(err)
	}
	if d := counterValue(t, metricLimitedHandshakes) - before; d != 1 {
		t.Errorf("gatehouse_tls_source_limited_total{limit=handshakes} +%v, want +1", d)
	}
	gc, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: good}}, "tcp", w.addr,
		&tls.Config{ServerName: "web.test", RootCAs: w.roots})
	if err != nil {
		t.Fatalf("good client from another source: %v", err)
	}
	gc.Close()
	for _, c := range silent {
		c.Close()
	}
	served := poll(func() bool {
		c, err := tls.DialWithDialer(d, "tcp", w.addr, &tls.Config{ServerName: "web.test", RootCAs: w.roots})
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if !served {
		t.Error("the source was not served again after its stalled handshakes ended")
	}
}

// The limits are per source and off with [listen] source_limits = false.
func TestSourceLimitsOff(t *testing.T) {
	setSourceLimits(t, 1, 1, time.Now)
	off := false
	w := startH1WorldWith(t, func(c *routes.Config) { c.Listen.SourceLimits = &off }, echoUpstream(t).URL)
	hello := testkit.ClientHello(t, "nobody.test")
	for i := 0; i < 3; i++ {
		if got, err := sendHello(t, w.addr, nil, hello); !bytes.Equal(got, alertUnrecognizedName) {
			t.Fatalf("hello %d with the limits off: got %x (%v), want the alert", i+1, got, err)
		}
	}
}

// Finding the name and looking it up allocates nothing: a flood of
// unknown names costs no garbage beyond accepting the sockets.
func TestHelloSNIAllocatesNothing(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	snap := w.s.state.Load()
	hello := testkit.ClientHello(t, "nobody.test")
	allocs := testing.AllocsPerRun(100, func() {
		name, ok := sni.FromHello(hello)
		if !ok || snap.lookup(unsafe.String(unsafe.SliceData(name), len(name))) != nil {
			t.Fatal("nobody.test: not found unknown")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per refused hello's parse and lookup, want 0", allocs)
	}
}

// The accept loop lets the poller run every acceptTurn accepts: a burst
// of connections larger than a turn is served whole, and so is one that
// ends with connections still in the backlog and no new one after them
// (the loop does not wait for a new connection); a routed client is
// served after both.
func TestAcceptTurns(t *testing.T) {
	turn := acceptTurn
	acceptTurn = 4
	t.Cleanup(func() { acceptTurn = turn })
	w := startH1World(t, echoUpstream(t).URL)
	hello := testkit.ClientHello(t, "nobody.test")
	before := counterValue(t, metricAcceptTurns)

	// connect all first (the kernel queues them in the backlog), then
	// send every hello: each must get its alert
	burst := func(n int) {
		t.Helper()
		conns := make([]net.Conn, n)
		for i := range conns {
			c, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns[i] = c
		}
		for i, c := range conns {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(hello); err != nil {
				t.Fatalf("connection %d of %d: %v", i+1, n, err)
			}
		}
		for i, c := range conns {
			if got, err := io.ReadAll(c); !bytes.Equal(got, alertUnrecognizedName) {
				t.Fatalf("connection %d of %d: got %x (%v), want the alert", i+1, n, got, err)
			}
		}
	}
	burst(4*acceptTurn + 1)
	burst(acceptTurn + 1) // a turn ends with connections in the backlog and nothing after them
	if d := counterValue(t, metricAcceptTurns) - before; d < 5 {
		t.Errorf("gatehouse_tls_accept_turns_total +%v after %d accepts in turns of %d, want ≥ 5", d, 6*acceptTurn+2, acceptTurn)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr, &tls.Config{ServerName: "web.test", RootCAs: w.roots})
	if err != nil {
		t.Fatalf("routed client after the bursts: %v", err)
	}
	c.Close()
}

// A ClientHello whose first record comes in pieces is read to the
// record's end before anything else: split in the middle, a routed
// name's hello completes its handshake and an unknown name's is
// refused; a client that leaves within the record (a handshake that
// never finishes) is closed and counted as bad_hello.
func TestFirstRecordInPieces(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	unknown := testkit.ClientHello(t, "nobody.test")
	if got, err := sendHello(t, w.addr, nil, unknown[:len(unknown)/2], unknown[len(unknown)/2:]); !bytes.Equal(got, alertUnrecognizedName) {
		t.Errorf("unknown name's hello in two pieces: got %x (%v), want the alert", got, err)
	}

	// a routed name: a real client whose first write is split in two
	raw, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sc := &splitFirstWrite{Conn: raw}
	tc := tls.Client(sc, &tls.Config{ServerName: "web.test", RootCAs: w.roots})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("routed hello in two pieces: %v", err)
	}
	if !sc.split {
		t.Fatal("the first write was not split")
	}
	tc.Close()

	before := counterValue(t, metricBadHello)
	for _, reset := range []bool{true, false} {
		c, err := net.DialTimeout("tcp", w.addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		hello := testkit.ClientHello(t, "web.test")
		_, _ = c.Write(hello[:len(hello)/2])
		time.Sleep(20 * time.Millisecond) // let gatehouse read the first half alone
		if reset {
			resetConn(c)
		} else {
			c.Close()
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(t, metricBadHello)-before < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := counterValue(t, metricBadHello) - before; d != 2 {
		t.Errorf("gatehouse_tls_handshake_failures_total{reason=bad_hello} +%v after two clients left mid-hello, want +2", d)
	}
}

// splitFirstWrite writes its first Write in two, 20 ms apart.
type splitFirstWrite struct {
	net.Conn
	split bool
}

func (s *splitFirstWrite) Write(p []byte) (int, error) {
	if s.split || len(p) < 10 {
		return s.Conn.Write(p)
	}
	s.split = true
	n, err := s.Conn.Write(p[:len(p)/2])
	if err != nil {
		return n, err
	}
	time.Sleep(20 * time.Millisecond)
	m, err := s.Conn.Write(p[len(p)/2:])
	return n + m, err
}
