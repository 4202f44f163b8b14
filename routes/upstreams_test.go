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
