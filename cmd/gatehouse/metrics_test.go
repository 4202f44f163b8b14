package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// scrape reads the admin /metrics and returns every sample line as
// "name{labels}" -> value.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sample sums the samples of name whose labels contain every one of
// labels (several series can match: other tests in this process add
// their own, e.g. another issuer's orders).
func sample(m map[string]float64, name string, labels ...string) (sum float64, found bool) {
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") && k != name {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(k, l)
		}
		if all {
			sum += v
			found = true
		}
	}
	return sum, found
}

// The metrics a dashboard is built from, scraped during real traffic,
// with values that match what the test did.
func TestMetricsDuringTraffic(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "A")
	echo := tcpUpstream(t)
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"m.test\"]\nupstream = %q\n[[route]]\nhosts = [\"mtcp.test\"]\nmode = \"tcp\"\nupstream = %q\n", up.URL, echo)))
	for _, name := range []string{"m.test", "mtcp.test"} {
		testkit.WaitFor(t, 60*time.Second, "certificate for "+name, func() error {
			c, err := testkit.DialTLS(e.httpsAddr(), name, e.roots)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	// counters live as long as the process: compare with a baseline
	admin := e.admLn.Addr().String()
	before := scrape(t, admin)
	base := func(name string, labels ...string) float64 { v, _ := sample(before, name, labels...); return v }
	reqs0 := base("gatehouse_http_requests_total", `route="m.test"`, `code_class="2xx"`, `upstream="`+up.URL+`"`)
	count0 := base("gatehouse_http_request_duration_seconds_count", `route="m.test"`)
	const n = 25
	c := client(e.httpsAddr(), e.roots, true)
	for range n {
		res, err := c.Get("https://m.test/x")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
	}
	_, _ = testkit.DialTLS(e.httpsAddr(), "unknown.test", nil)
	stream, err := testkit.DialTLS(e.httpsAddr(), "mtcp.test", e.roots)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	served, _ := testkit.DialTLS(e.httpsAddr(), "m.test", e.roots)
	notAfter := served.ConnectionState().PeerCertificates[0].NotAfter
	served.Close()

	checks := []struct {
		what   string
		name   string
		labels []string
		ok     func(float64) bool
	}{
		{"2xx requests by route and upstream", "gatehouse_http_requests_total", []string{`route="m.test"`, `code_class="2xx"`, `upstream="` + up.URL + `"`}, func(v float64) bool { return v-reqs0 == n }},
		{"latency histogram count", "gatehouse_http_request_duration_seconds_count", []string{`route="m.test"`}, func(v float64) bool { return v-count0 == n }},
		{"upstream health", "gatehouse_upstream_healthy", []string{`route="m.test"`}, func(v float64) bool { return v == 1 }},
		{"TLS 1.3 handshakes", "gatehouse_tls_handshakes_total", []string{`version="TLS 1.3"`}, func(v float64) bool { return v >= 4 }},
		{"unknown SNI refused", "gatehouse_tls_handshake_failures_total", []string{`reason="unknown_sni"`}, func(v float64) bool { return v >= 1 }},
		{"open http connections", "gatehouse_active_connections", []string{`mode="http"`}, func(v float64) bool { return v >= 1 }},
		{"certificate expiry", "gatehouse_cert_not_after_seconds", []string{`name="m.test"`}, func(v float64) bool { return int64(v) == notAfter.Unix() }},
		{"orders that succeeded", "gatehouse_cert_obtain_total", []string{`kind="obtain"`, `result="success"`}, func(v float64) bool { return v >= 2 }},
	}
	// the server counts a request or handshake when its side of it
	// ends, which can be after the client saw the end: wait, bounded
	testkit.WaitFor(t, 5*time.Second, "metrics match the traffic", func() error {
		m := scrape(t, admin)
		if v, _ := sample(m, "gatehouse_active_connections", `mode="tcp"`); v != 1 {
			return fmt.Errorf("active tcp connections = %v, want the open stream", v)
		}
		for _, c := range checks {
			v, found := sample(m, c.name, c.labels...)
			if !found || !c.ok(v) {
				return fmt.Errorf("%s: %s%v = %v (found %v)", c.what, c.name, c.labels, v, found)
			}
		}
		return nil
	})
	stream.Close()
	testkit.WaitFor(t, 5*time.Second, "closed stream no longer counted", func() error {
		if v, _ := sample(scrape(t, admin), "gatehouse_active_connections", `mode="tcp"`); v != 0 {
			return fmt.Errorf("active tcp connections = %v", v)
		}
		return nil
	})
}
