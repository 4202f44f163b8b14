package routes

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestUpstreamRulesHaveLines(t *testing.T) {
	p := writeFile(t, "g.toml", `[acme]
email = "ops@example.com"

[[route]]
hosts = ["a.example.com"]
upstreams = ["http://127.0.0.1:1", "https://127.0.0.1:2", "http://127.0.0.1:1"]
balance = "random"

[[route]]
hosts = ["b.example.com"]
upstream = "http://127.0.0.1:3"
health_interval = "5s"
upstream_ca = "/etc/hosts"

[[route]]
hosts = ["c.example.com"]
mode = "tcp"
upstreams = ["127.0.0.1:4", "127.0.0.1:5"]
health_path = "/health"
proxy_protocol = "v3"

[[route]]
hosts = ["d.example.com"]
upstream = "http://127.0.0.1:6"
health_path = "/healthz"
health_interval = "1s"
health_timeout = "3s"

[[route]]
hosts = ["e.example.com"]
mode = "passthrough"
upstreams = ["127.0.0.1:7"]
health_interval = "10ms"
`)
	_, err := Load(p)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("want Errors, got %v", err)
	}
	want := []struct {
		line int
		frag string
	}{
		{6, `upstreams mix http:// and https://`},
		{6, `upstream "http://127.0.0.1:1" is listed twice`},
		{7, `balance = "random"`},
		{12, `health_interval/health_timeout need health_path`},
		{13, `"/etc/hosts" holds no PEM certificate`},
		{13, `upstream_ca is used only to verify https:// upstreams`},
		{19, `health_path is for http routes`},
		{20, `proxy_protocol = "v3"`},
		{27, `health_timeout (3s) must not exceed health_interval (1s)`},
		{33, `health_interval = 10ms is below the 100ms minimum`},
	}
	for _, w := range want {
		found := false
		for _, e := range es {
			if e.Line == w.line && strings.Contains(e.Msg, w.frag) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing error at line %d containing %q; got:\n%s", w.line, w.frag, err)
		}
	}
	if len(es) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(es), len(want), err)
	}
}

func TestHealthTimings(t *testing.T) {
	for _, c := range []struct {
		r       Route
		iv, to  time.Duration
		checked bool
	}{
		{Route{Mode: ModeHTTP, HealthPath: "/h"}, 10 * time.Second, 2 * time.Second, true},
		{Route{Mode: ModeHTTP, HealthPath: "/h", HealthInterval: Duration(time.Second)}, time.Second, time.Second, true},
		{Route{Mode: ModeHTTP, HealthPath: "/h", HealthTimeout: Duration(500 * time.Millisecond)}, 10 * time.Second, 500 * time.Millisecond, true},
		{Route{Mode: ModeTCP, HealthInterval: Duration(3 * time.Second)}, 3 * time.Second, 2 * time.Second, true},
		{Route{Mode: ModeTCP}, 10 * time.Second, 2 * time.Second, false},
		{Route{Mode: ModeHTTP}, 10 * time.Second, 2 * time.Second, false},
	} {
		iv, to := c.r.HealthTimings()
		if iv != c.iv || to != c.to || c.r.HealthChecked() != c.checked {
			t.Errorf("%+v: interval %v timeout %v checked %v; want %v %v %v", c.r, iv, to, c.r.HealthChecked(), c.iv, c.to, c.checked)
		}
	}
}

// Ports are 1-65535 in every upstream form, each refusal on its line
// (issue 12 point 2).
func TestUpstreamPortRange(t *testing.T) {
	p := writeFile(t, "g.toml", `[acme]
email = "ops@example.com"

[[route]]
hosts = ["a.example.com"]
upstream = "http://127.0.0.1:99999"

[[route]]
hosts = ["b.example.com"]
upstreams = ["http://127.0.0.1:8080", "127.0.0.1:0"]

[[route]]
hosts = ["c.example.com"]
mode = "tcp"
upstream = "127.0.0.1:65536"

[[route]]
hosts = ["d.example.com"]
mode = "passthrough"
upstream = "tcp://127.0.0.1:0"

[[route]]
hosts = ["e.example.com"]
mode = "tcp"
upstream = "127.0.0.1:65535"

[[route]]
hosts = ["f.example.com"]
upstream = "https://[::1]:1"
`)
	_, err := Load(p)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("want Errors, got %v", err)
	}
	want := []struct {
		line int
		frag string
	}{
		{6, `upstream "http://127.0.0.1:99999": port 99999 is out of range: ports are 1-65535`},
		{10, `upstream "127.0.0.1:0": port 0 is out of range`},
		{15, `upstream "127.0.0.1:65536": port 65536 is out of range`},
		{20, `upstream "tcp://127.0.0.1:0": port 0 is out of range`},
	}
	for _, w := range want {
		found := false
		for _, e := range es {
			if e.Line == w.line && strings.Contains(e.Msg, w.frag) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing error at line %d containing %q; got:\n%s", w.line, w.frag, err)
		}
	}
	if len(es) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(es), len(want), err)
	}
	if !strings.Contains(err.Error(), p+":6: ") {
		t.Errorf("errors should be prefixed file:line, got:\n%s", err)
	}

	for _, to := range []string{"127.0.0.1:99999", "http://127.0.0.1:0", "127.0.0.1:123456789012345678901"} {
		_, err := Quick(QuickOptions{From: []string{"a.example.com"}, To: []string{to}, HTTPS: ":443", Email: "ops@example.com"})
		if err == nil || !strings.Contains(err.Error(), "1-65535") {
			t.Errorf("--to %s: err = %v, want a port range error", to, err)
		}
	}
}

// A bare host:port upstream on an http route means http://host:port, in the
// file as on the command line (issue 12 point 3); tcp/passthrough routes take
// host:port as they are.
func TestBareUpstreamIsHTTP(t *testing.T) {
	p := writeFile(t, "g.toml", `[acme]
email = "ops@example.com"

[[route]]
hosts = ["a.example.com"]
upstream = "127.0.0.1:8080"

[[route]]
hosts = ["b.example.com"]
upstreams = ["localhost:8081", "[::1]:8082"]

[[route]]
hosts = ["c.example.com"]
mode = "tcp"
upstream = "127.0.0.1:5432"
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	tbl := NewTable(cfg)
	check := func(host string, wantScheme string, wantHosts ...string) {
		t.Helper()
		e := tbl.exact[host]
		if e == nil || len(e.Upstreams) != len(wantHosts) {
			t.Fatalf("%s: entry %+v, want %d upstreams", host, e, len(wantHosts))
		}
		for i, u := range e.Upstreams {
			if u.Scheme != wantScheme || u.Host != wantHosts[i] {
				t.Errorf("%s: upstream %d = %s %s, want %s %s", host, i, u.Scheme, u.Host, wantScheme, wantHosts[i])
			}
			if wantScheme == "http" && (u.URL == nil || u.URL.String() != "http://"+wantHosts[i]) {
				t.Errorf("%s: upstream URL %v, want http://%s", host, u.URL, wantHosts[i])
			}
		}
	}
	check("a.example.com", "http", "127.0.0.1:8080")
	check("b.example.com", "http", "localhost:8081", "[::1]:8082")
	check("c.example.com", "tcp", "127.0.0.1:5432")

	q, err := Quick(QuickOptions{From: []string{"a.example.com"}, To: []string{"127.0.0.1:8080"}, HTTPS: ":443", Email: "ops@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	qu := NewTable(q).exact["a.example.com"].Upstreams[0]
	fu := tbl.exact["a.example.com"].Upstreams[0]
	if qu.Scheme != fu.Scheme || qu.Host != fu.Host {
		t.Errorf("--to 127.0.0.1:8080 gives %s %s, the file gives %s %s", qu.Scheme, qu.Host, fu.Scheme, fu.Host)
	}
}
