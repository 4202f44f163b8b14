package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The configs the names scenario writes are checked by the real
// binaries' own config checkers (caddy validate, nginx -t, haproxy -c),
// so a config a proxy would refuse fails here and not an hour into a
// 100k-name run.
func TestNamesConfigsAcceptedByTheProxies(t *testing.T) {
	cache := t.TempDir()
	s, err := loadNamesSet(cache, 3, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{upstream: "127.0.0.1:9", work: t.TempDir(), gatehouseBin: "gatehouse"}
	checks := map[string]func(p *proxy, work string) *exec.Cmd{
		"caddy": func(p *proxy, work string) *exec.Cmd {
			return exec.Command("caddy", "validate", "--config", p.args[2], "--adapter", "")
		},
		"nginx": func(p *proxy, work string) *exec.Cmd {
			return exec.Command("nginx", "-t", "-p", work, "-c", p.args[3])
		},
		"haproxy": func(p *proxy, work string) *exec.Cmd {
			return exec.Command("haproxy", "-c", "-f", p.args[2])
		},
	}
	for kind, check := range checks {
		t.Run(kind, func(t *testing.T) {
			if _, err := exec.LookPath(kind); err != nil {
				t.Skipf("%s not installed (bench/run.sh installs it)", kind)
			}
			work := t.TempDir()
			p, admin, err := b.namesProxy(kind, s, work, false)
			if err != nil {
				t.Fatal(err)
			}
			if admin != "" {
				t.Errorf("%s: admin %q, want none (only gatehouse has /readyz)", kind, admin)
			}
			cmd := check(p, work)
			cmd.Env = append(cmd.Environ(), p.env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s refuses the names config: %v\n%s", kind, err, out)
			}
		})
	}
}

func TestNamesProxiesOrderAndSkips(t *testing.T) {
	run, skipped := namesProxies("haproxy,nginx,gatehouse", 10000, t.Logf)
	if got := strings.Join(run, ","); got != "gatehouse,nginx,haproxy" {
		t.Errorf("10k: run %s, want gatehouse,nginx,haproxy", got)
	}
	if len(skipped) != 0 {
		t.Errorf("10k: skipped %v", skipped)
	}
	run, skipped = namesProxies("haproxy,nginx,gatehouse", 10001, t.Logf)
	if got := strings.Join(run, ","); got != "gatehouse" {
		t.Errorf("10,001: run %s, want gatehouse", got)
	}
	if len(skipped) != 2 {
		t.Errorf("10,001: skipped %v, want nginx and haproxy", skipped)
	}
}

func TestNamesReportMarksGatehouseAgainstGoals(t *testing.T) {
	var sb strings.Builder
	namesReport(&sb, []result{
		{Proxy: "gatehouse", Scenario: "names-100000", Metrics: map[string]float64{"ready_s": 1.2, "rss_sweep_mib": 1300}},
		{Proxy: "caddy", Scenario: "names-100000", Metrics: map[string]float64{"ready_s": 40}},
	}, []string{"100000 names: nginx (above 10000 names)"}, false)
	out := sb.String()
	for _, want := range []string{
		"| | gatehouse 100k | caddy 100k | goal |",
		"| start → every name served (s) | 1.20 ✅ | 40.0 | ≤ 5 s |",
		"| RSS after a handshake with every name (MiB) | 1300 ❌ | – | ≤ 600 MiB |",
		"skipped: 100000 names: nginx (above 10000 names)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// The main scenarios' configs, with the route of nameUp to the nginx
// upstream (bulk-nginx-up), of nameTLSUp to the https:// upstream
// (h1-tls-up: verified against the bench CA) and of nameH2CUp to the
// h2c:// upstream (h2-h2c-up), pass each proxy's own checker;
// gatehouse's through `gatehouse validate` of a binary built from this
// checkout.
func TestProxyConfigsAcceptedByTheProxies(t *testing.T) {
	work := t.TempDir()
	certs := t.TempDir()
	if _, err := siteCerts(certs); err != nil {
		t.Fatal(err)
	}
	old, oldTLS, oldH2C := nginxUpstream, tlsUpstream, h2cUpstream
	nginxUpstream, tlsUpstream, h2cUpstream = "127.0.0.1:9", "127.0.0.1:10", "127.0.0.1:11"
	defer func() { nginxUpstream, tlsUpstream, h2cUpstream = old, oldTLS, oldH2C }()
	gh := t.TempDir() + "/gatehouse"
	if out, err := exec.Command("go", "build", "-o", gh, "../../cmd/gatehouse").CombinedOutput(); err != nil {
		t.Fatalf("building gatehouse: %v\n%s", err, out)
	}
	type mk func() (*proxy, error)
	cases := []struct {
		kind  string
		make  mk
		check func(p *proxy) *exec.Cmd
	}{
		{"nginx", func() (*proxy, error) { return nginxProxy(work, certs, "127.0.0.1:9") },
			func(p *proxy) *exec.Cmd { return exec.Command("nginx", append([]string{"-t"}, p.args...)...) }},
		{"haproxy", func() (*proxy, error) { return haproxyProxy(work, certs, "127.0.0.1:9") },
			func(p *proxy) *exec.Cmd { return exec.Command("haproxy", "-c", "-f", p.args[2]) }},
		{"caddy", func() (*proxy, error) { return caddyProxy(work, certs, "127.0.0.1:9") },
			func(p *proxy) *exec.Cmd {
				return exec.Command("caddy", "validate", "--config", p.args[2], "--adapter", "caddyfile")
			}},
		{"gatehouse", func() (*proxy, error) { return gatehouseProxy(work, gh, "gatehouse", certs, "127.0.0.1:9", nil) },
			func(p *proxy) *exec.Cmd { return exec.Command(gh, "validate", "--config", p.args[2]) }},
	}
	for _, c := range cases {
		t.Run(c.kind, func(t *testing.T) {
			if _, err := exec.LookPath(c.kind); err != nil && c.kind != "gatehouse" {
				t.Skipf("%s not installed (bench/run.sh installs it)", c.kind)
			}
			p, err := c.make()
			if err != nil {
				t.Fatal(err)
			}
			var path string
			for i, a := range p.args[:len(p.args)-1] {
				if a == "-c" || a == "-f" || a == "--config" {
					path = p.args[i+1]
				}
			}
			cfg, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{nameUp, nameTLSUp, nameH2CUp, tlsUpstream, h2cUpstream, certs + "/ca.crt"} {
				if !strings.Contains(string(cfg), want) {
					t.Errorf("%s config lacks %s (routes of bulk-nginx-up, h1-tls-up, h2-h2c-up)", c.kind, want)
				}
			}
			cmd := c.check(p)
			cmd.Env = append(cmd.Environ(), p.env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s refuses its config: %v\n%s", c.kind, err, out)
			}
		})
	}
}
