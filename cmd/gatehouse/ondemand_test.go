package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// askServer is an on-demand ask endpoint: it allows the names in allow,
// hangs on names starting with "hang.", denies the rest, and records
// every question.
type askServer struct {
	*httptest.Server
	mu    sync.Mutex
	allow map[string]bool // nil: allow all but hang.*
	asked []string        // "domain ip"
}

func newAskServer(t *testing.T, allow ...string) *askServer {
	a := &askServer{}
	if len(allow) > 0 {
		a.allow = map[string]bool{}
		for _, n := range allow {
			a.allow[n] = true
		}
	}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := r.URL.Query().Get("domain")
		a.mu.Lock()
		a.asked = append(a.asked, d+" "+r.URL.Query().Get("ip"))
		ok := a.allow == nil || a.allow[d]
		a.mu.Unlock()
		if strings.HasPrefix(d, "hang.") {
			select { // hang until gatehouse gives up (bounded for the test's sake)
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
			return
		}
		if !ok {
			http.Error(w, "not ours", http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *askServer) count(domain string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, q := range a.asked {
		if strings.HasPrefix(q, domain+" ") {
			n++
		}
	}
	return n
}

// metric reads one sample ("name{labels}") from gatehouse's /metrics; 0
// when absent.
func metric(t testing.TB, adminAddr, sample string) float64 {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return v
		}
	}
	return 0
}

// A pattern route obtains a certificate for a name nobody listed during
// that name's first handshake, only when the ask endpoint allows it;
// denied names are refused fast and without an order, and remembered; an
// ask endpoint that hangs is a denial after ask_timeout.
func TestOnDemand(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	ask := newAskServer(t, "ok.od.test", "two.od.test")
	up := upstream(t, "OD")
	cfg := e.config(fmt.Sprintf(`
[on_demand]
ask         = "%s/check?token=x"
ask_timeout = "1s"
deny_cache  = "1m"

[[route]]
hosts    = ["*.od.test"]
upstream = %q
`, ask.URL, up.URL))
	in := e.start(cfg)
	adm := e.admLn.Addr().String()
	before := map[string]float64{}
	for _, s := range []string{
		`gatehouse_on_demand_ask_total{decision="allowed"}`, `gatehouse_on_demand_ask_total{decision="denied"}`,
		`gatehouse_on_demand_ask_total{decision="error"}`, `gatehouse_on_demand_refused_total{reason="denied_cached"}`,
	} {
		before[s] = metric(t, adm, s)
	}

	t.Run("allowed name: certificate during the first handshake", func(t *testing.T) {
		began := time.Now()
		c, err := testkit.DialTLS(e.httpsAddr(), "ok.od.test", e.roots)
		if err != nil {
			t.Fatalf("first handshake for an allowed name failed: %v", err)
		}
		names := c.ConnectionState().PeerCertificates[0].DNSNames
		c.Close()
		t.Logf("first handshake with an order took %s", time.Since(began).Round(time.Millisecond))
		if len(names) != 1 || names[0] != "ok.od.test" {
			t.Errorf("served names %v", names)
		}
		if n := e.pebble.Orders("ok.od.test"); n != 1 {
			t.Errorf("Pebble got %d orders for ok.od.test, want 1", n)
		}
		if q := ask.asked; len(q) == 0 || q[0] != "ok.od.test 127.0.0.1" {
			t.Errorf("ask endpoint got %q, want domain and client ip", q)
		}
		// later handshakes and requests use the cached certificate: no new ask, no order
		asks := ask.count("ok.od.test")
		res, err := client(e.httpsAddr(), e.roots, true).Get("https://ok.od.test/x")
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); !strings.HasPrefix(body, "upstream=OD") {
			t.Errorf("reached %q", body)
		}
		if got := ask.count("ok.od.test"); got != asks {
			t.Errorf("asked again for a cached name (%d -> %d)", asks, got)
		}
		if n := e.pebble.Orders("ok.od.test"); n != 1 {
			t.Errorf("Pebble got %d orders for ok.od.test, want 1", n)
		}
	})

	t.Run("denied name: refused fast, no order, answer remembered", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			began := time.Now()
			_, err := testkit.DialTLS(e.httpsAddr(), "no.od.test", e.roots)
			took := time.Since(began)
			if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
				t.Fatalf("denied name: err = %v, want unrecognized_name", err)
			}
			if took > time.Second {
				t.Errorf("refusing a denied name took %s", took)
			}
		}
		if n := ask.count("no.od.test"); n != 1 {
			t.Errorf("ask endpoint asked %d times about no.od.test, want 1 (denial remembered)", n)
		}
		if n := e.pebble.OrderAttempts("no.od.test"); n != 0 {
			t.Errorf("Pebble got %d orders for a denied name", n)
		}
	})

	t.Run("hanging ask endpoint: denied after ask_timeout", func(t *testing.T) {
		began := time.Now()
		_, err := testkit.DialTLS(e.httpsAddr(), "hang.od.test", e.roots)
		took := time.Since(began)
		if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Fatalf("hanging ask: err = %v, want unrecognized_name", err)
		}
		if took < time.Second || took > 3*time.Second {
			t.Errorf("refusal took %s, want about ask_timeout (1s)", took)
		}
		if n := e.pebble.OrderAttempts("hang.od.test"); n != 0 {
			t.Errorf("Pebble got %d orders for hang.od.test", n)
		}
	})

	t.Run("names outside the pattern are not asked about", func(t *testing.T) {
		_, err := testkit.DialTLS(e.httpsAddr(), "other.test", e.roots)
		if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Fatalf("err = %v", err)
		}
		if n := ask.count("other.test"); n != 0 {
			t.Errorf("asked about a name no route matches")
		}
	})

	t.Run("metrics count ask decisions", func(t *testing.T) {
		want := map[string]float64{
			`gatehouse_on_demand_ask_total{decision="allowed"}`:         1,
			`gatehouse_on_demand_ask_total{decision="denied"}`:          1,
			`gatehouse_on_demand_ask_total{decision="error"}`:           1,
			`gatehouse_on_demand_refused_total{reason="denied_cached"}`: 2,
		}
		for s, d := range want {
			if got := metric(t, adm, s) - before[s]; got != d {
				t.Errorf("%s rose by %v, want %v", s, got, d)
			}
		}
	})

	t.Run("after a restart with the CA down, the stored certificate is served", func(t *testing.T) {
		first, err := testkit.ServedSerial(e.httpsAddr(), "ok.od.test", e.roots)
		if err != nil {
			t.Fatal(err)
		}
		if err := in.shutdown(2 * time.Second); err != nil {
			t.Fatal(err)
		}
		e.pebble.Stop()
		e.bind()
		e.start(e.config(fmt.Sprintf(`
[on_demand]
ask = "%s/check"

[[route]]
hosts    = ["*.od.test"]
upstream = %q
`, ask.URL, up.URL)))
		got, err := testkit.ServedSerial(e.httpsAddr(), "ok.od.test", e.roots)
		if err != nil || got != first {
			t.Fatalf("after restart: serial %s, err %v; want the stored %s", got, err, first)
		}
		if n := e.pebble.Orders("ok.od.test"); n != 1 {
			t.Errorf("Pebble got %d orders for ok.od.test, want the first one only", n)
		}
	})

}

// The global rate limit and the concurrency cap hold when many new names
// arrive at once: orders run one at a time (max_concurrent = 1) and
// beyond rate no order reaches the CA.
func TestOnDemandLimits(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{Sleep: true}) // validations take 0-5 s
	ask := newAskServer(t)
	up := upstream(t, "RL")
	cfg := e.config(fmt.Sprintf(`
[on_demand]
ask            = "%s/check"
rate           = "2/1m"
max_concurrent = 1

[timeouts]
handshake = "40s"

[[route]]
hosts    = ["*"]
upstream = %q
`, ask.URL, up.URL))
	e.start(cfg)
	adm := e.admLn.Addr().String()

	names := []string{"a.rl.test", "b.rl.test", "c.rl.test"}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// a client patient enough to wait for three orders in a row
			d := &net.Dialer{Timeout: 45 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", e.httpsAddr(), &tls.Config{ServerName: n, RootCAs: e.roots})
			if err == nil {
				c.Close()
			}
			errs[i] = err
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	maxInFlight := 0.0
	deadline := time.After(60 * time.Second)
poll:
	for {
		select {
		case <-done:
			break poll
		case <-deadline:
			t.Fatal("handshakes did not finish within 60s")
		case <-time.After(50 * time.Millisecond):
			maxInFlight = max(maxInFlight, metric(t, adm, "gatehouse_on_demand_orders_in_flight"))
		}
	}
	if maxInFlight > 1 {
		t.Errorf("%v on-demand orders ran at once, want at most max_concurrent = 1", maxInFlight)
	}
	t.Logf("most on-demand orders seen in flight at once: %v", maxInFlight)
	ok, orders := 0, 0
	for i, n := range names {
		orders += e.pebble.Orders(n) // accepted ones (a badNonce retry is one order)
		if errs[i] == nil {
			ok++
		} else {
			t.Logf("%s: %v", n, errs[i])
			if strings.Contains(errs[i].Error(), "unrecognized name") {
				t.Errorf("%s: a rate-limited name must fail as an error, not as unknown: %v", n, errs[i])
			}
		}
	}
	if ok != 2 || orders != 2 {
		t.Errorf("%d handshakes succeeded and Pebble got %d orders; want 2 and 2 (rate = 2/1m)", ok, orders)
	}
	// a refused name is not retried in a loop: a new handshake within
	// the backoff does not reach the CA either
	for i, n := range names {
		if errs[i] == nil {
			continue
		}
		if _, err := testkit.DialTLS(e.httpsAddr(), n, e.roots); err == nil {
			t.Errorf("%s served within the backoff", n)
		}
		if got := e.pebble.OrderAttempts(n); got != 0 {
			t.Errorf("%s: %d orders after the rate limit refused it", n, got)
		}
	}
}
