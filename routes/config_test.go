package routes

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValid(t *testing.T) {
	p := writeFile(t, "g.toml", `
[acme]
email = "ops@example.com"
[storage]
dir = "/tmp/x"
[[route]]
hosts = ["App.Example.com", "www.example.com"]
upstream = "http://127.0.0.1:8080"
[[route]]
hosts = ["db.example.com"]
mode = "tcp"
upstream = "127.0.0.1:5432"
alpn = ["postgresql"]
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.HTTPS != ":443" || cfg.Listen.HTTP != ":80" || cfg.Listen.Admin != "127.0.0.1:2019" {
		t.Errorf("listen defaults: %+v", cfg.Listen)
	}
	if cfg.ACME.Directory != DefaultDirectory {
		t.Errorf("directory default: %q", cfg.ACME.Directory)
	}
	tab := NewTable(cfg)
	if e := tab.Lookup("app.example.com"); e == nil || e.Index != 0 {
		t.Errorf("app.example.com -> %v", e)
	}
	if e := tab.Lookup("db.example.com"); e == nil || e.Mode() != ModeTCP {
		t.Errorf("db.example.com -> %v", e)
	}
	if e := tab.Lookup("other.example.com"); e != nil {
		t.Errorf("other.example.com routed to %v", e.Hosts)
	}
	if got := tab.ManagedNames("acme"); strings.Join(got, ",") != "app.example.com,www.example.com,db.example.com" {
		t.Errorf("ManagedNames = %v", got)
	}
}

func TestHTTPDisabled(t *testing.T) {
	p := writeFile(t, "g.toml", `
[listen]
http = ""
[acme]
email = "a@b.c"
challenges = ["tls-alpn-01"]
[[route]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:1"
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.HTTP != "" {
		t.Errorf("http = %q, want disabled", cfg.Listen.HTTP)
	}
}

// Every error a user can make is reported, each with its line.
func TestLoadErrorsHaveLines(t *testing.T) {
	p := writeFile(t, "g.toml", `[listen]
https = ":443"
htps = ":80"

[acme]
directory = "https://acme.example/dir"

[[route]]
hosts = ["a.example.com"]
upstream = "http//bad"

[[route]]
hosts = ["a.example.com"]
upstream = "http://127.0.0.1:9000"
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"

[[route]]
hosts = ["c.example.com"]
upstrem = "http://127.0.0.1:9001"
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
		{3, `unknown key "htps" in [listen] (did you mean "https"?)`},
		{5, `[acme] email is missing`},
		{10, `upstream "http//bad"`},
		{13, `host "a.example.com" is in route #1 (line 8) and route #2`},
		{15, `cannot load cert "/nonexistent/cert.pem"`},
		{18, `route #3 has no upstream`},
		{20, `unknown key "upstrem" in [route] (did you mean "upstream"?)`},
	}
	text := err.Error()
	for _, w := range want {
		found := false
		for _, e := range es {
			if e.Line == w.line && strings.Contains(e.Msg, w.frag) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing error at line %d containing %q; got:\n%s", w.line, w.frag, text)
		}
	}
	if !strings.Contains(text, p+":3: ") {
		t.Errorf("errors should be prefixed file:line, got:\n%s", text)
	}
}

func TestSyntaxErrorLine(t *testing.T) {
	p := writeFile(t, "g.toml", "[listen]\nhttps = \":443\"\nhttp = \n")
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), ":3: ") {
		t.Fatalf("want a line-3 syntax error, got %v", err)
	}
}

func TestWildcardNeedsOnDemandForACME(t *testing.T) {
	_, err := Parse([]byte(`
[acme]
email = "a@b.c"
[[route]]
hosts = ["*.example.com"]
upstream = "http://127.0.0.1:1"
`))
	if err == nil || !strings.Contains(err.Error(), "DNS-01") {
		t.Fatalf("want wildcard error, got %v", err)
	}
}

func TestIssuerSpellings(t *testing.T) {
	cfg, err := Parse([]byte(`
[acme]
email = "a@b.c"
[[acme.issuer]]
directory = "https://one.example/dir"
[[acme.issuer]]
directory = "https://two.example/dir"
eab_kid = "k"
eab_hmac = "h"
[[route]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.ACME.Issuer.List) != 2 || cfg.ACME.Issuer.List[1].EABKeyID != "k" {
		t.Fatalf("issuer list = %+v", cfg.ACME.Issuer)
	}
	cfg, err = Parse([]byte(`
[acme]
issuer = "internal"
[[route]]
hosts = ["a.internal"]
upstream = "http://127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Routes[0].Issuer(cfg) != "internal" {
		t.Fatalf("issuer = %q", cfg.Routes[0].Issuer(cfg))
	}
}

func TestLookupWildcard(t *testing.T) {
	cfg := &Config{Routes: []Route{
		{Hosts: []string{"*.example.com"}, Upstream: "http://127.0.0.1:1"},
		{Hosts: []string{"api.example.com"}, Upstream: "http://127.0.0.1:2"},
	}}
	cfg.ApplyDefaults()
	tab := NewTable(cfg)
	cases := map[string]int{"api.example.com": 1, "x.example.com": 0, "a.b.example.com": -1, "example.com": -1}
	for name, want := range cases {
		e := tab.Lookup(name)
		got := -1
		if e != nil {
			got = e.Index
		}
		if got != want {
			t.Errorf("Lookup(%q) = %d, want %d", name, got, want)
		}
	}
}

func TestCanonicalHost(t *testing.T) {
	for in, want := range map[string]string{"A.Test:443": "a.test", "a.test.": "a.test", "a.test": "a.test", "[::1]:8443": "[::1]"} {
		if got := CanonicalHost(in); got != want {
			t.Errorf("CanonicalHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv(EnvACMEEmail, "env@example.com")
	t.Setenv(EnvACMEDirectory, "https://ca.example/dir")
	t.Setenv(EnvStorageDir, "/tmp/env-storage")
	// no email in the file: the environment provides it, so this validates
	cfg, err := Parse([]byte("[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ACME.Email != "env@example.com" || cfg.ACME.Directory != "https://ca.example/dir" || cfg.Storage.Dir != "/tmp/env-storage" {
		t.Errorf("env not applied: %+v %+v", cfg.ACME, cfg.Storage)
	}
}

func TestQuick(t *testing.T) {
	t.Setenv(EnvStorageDir, t.TempDir())
	cfg, err := Quick(QuickOptions{
		From:  []string{"app.example.com", "www.example.com", "localhost"},
		To:    []string{"127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.0.0.1:9000"},
		Email: "a@example.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 2 {
		t.Fatalf("routes = %+v", cfg.Routes)
	}
	if r := cfg.Routes[0]; strings.Join(r.Hosts, ",") != "app.example.com,www.example.com" || r.Upstream != "http://127.0.0.1:8080" {
		t.Errorf("route 0 = %+v", r)
	}
	if r := cfg.Routes[1]; r.Issuer(cfg) != "internal" {
		t.Errorf("localhost should use the internal issuer, got %q", r.Issuer(cfg))
	}
	if _, err := Quick(QuickOptions{From: []string{"a.example.com"}}); err == nil {
		t.Error("unpaired --from accepted")
	}
	if _, err := Quick(QuickOptions{From: []string{"a.example.com"}, To: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "email") {
		t.Errorf("missing email: %v", err)
	}
}

// [timeouts] client_body and send: defaults up to a minute, the value
// given when set, and a negative one refused at its line.
func TestTimeoutsClientBodySend(t *testing.T) {
	var d Timeouts
	if d.ClientBodyTimeout() != DefaultClientBodyTimeout || d.SendTimeout() != DefaultSendTimeout ||
		DefaultClientBodyTimeout > time.Minute || DefaultSendTimeout > time.Minute {
		t.Errorf("defaults: client_body %s, send %s", d.ClientBodyTimeout(), d.SendTimeout())
	}
	p := writeFile(t, "g.toml", `[acme]
email = "a@b.c"
[timeouts]
client_body = "15s"
send = "20s"
[[route]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:1"
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timeouts.ClientBodyTimeout() != 15*time.Second || cfg.Timeouts.SendTimeout() != 20*time.Second {
		t.Errorf("client_body %s, send %s", cfg.Timeouts.ClientBodyTimeout(), cfg.Timeouts.SendTimeout())
	}
	p = writeFile(t, "g.toml", `[acme]
email = "a@b.c"
[timeouts]
idle = "1m"
client_body = "-1s"
send = "-5s"
[[route]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:1"
`)
	_, err = Load(p)
	if err == nil || !strings.Contains(err.Error(), p+":5: client_body = -1s must not be negative") ||
		!strings.Contains(err.Error(), p+":6: send = -5s must not be negative") {
		t.Errorf("negative timeouts: %v", err)
	}
}

// [listen] metrics_name_limit: 10,000 unless set, 0 for no limit, a
// negative number refused at its line.
func TestMetricsNameLimit(t *testing.T) {
	base := "[acme]\nemail = \"ops@example.test\"\n\n[[route]]\nhosts = [\"a.example.com\"]\nupstream = \"http://127.0.0.1:9000\"\n"
	for _, c := range []struct {
		listen string
		want   int
	}{{"", DefaultMetricsNameLimit}, {"metrics_name_limit = 0\n", 0}, {"metrics_name_limit = 250\n", 250}} {
		cfg, err := Load(writeFile(t, "m.toml", "[listen]\nhttps = \":443\"\n"+c.listen+base))
		if err != nil {
			t.Fatalf("%q: %v", c.listen, err)
		}
		if got := cfg.Listen.MetricsNames(); got != c.want {
			t.Errorf("%q: limit %d, want %d", c.listen, got, c.want)
		}
	}
	_, err := Load(writeFile(t, "m.toml", "[listen]\nhttps = \":443\"\nmetrics_name_limit = -1\n"+base))
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 3 || !strings.Contains(es[0].Msg, "metrics_name_limit = -1") {
		t.Errorf("negative limit: got %v, want one error at line 3", err)
	}
}
