package main

// The many-names scenario (issue 15, points 1, 2 and 7): N names, each
// with its own ECDSA P-256 certificate, served by gatehouse (ACME-managed
// names whose certificates are already in storage), Caddy (the same
// files loaded with load_files, certificate cache capacity 2N so every
// name stays loaded), and at N ≤ 10,000 nginx (a server block per name)
// and HAProxy (a crt-list line per name).
//
// Each proxy is started twice:
//
//	start A: time until every name is served, CPU and RSS then; handshake
//	         CPU with SNI spread over every name and with one name, soon
//	         after start;
//	start B: a sweep that handshakes once with every name (random order,
//	         verified against the CA): the CPU of a name's first
//	         handshake, RSS after it; then spread and one name again, now
//	         that every name was loaded.
//
// With -profile, gatehouse is the pprof build: start A saves a startup
// CPU profile and a heap profile at ready; start B a heap profile after
// the sweep, a CPU profile of the sweep's first seconds (first
// handshakes of names) and of each handshake run.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// namesMaxPeers is the largest N nginx and HAProxy run at (the issue
// compares them at 10k only: their start takes minutes beyond).
const namesMaxPeers = 10000

// namesProxies lists the proxies of the -proxies flag that run at n
// names, and notes the ones skipped.
// The order is fixed (gatehouse, Caddy, nginx, HAProxy) whatever the
// flag's.
func namesProxies(list string, n int, logf func(string, ...any)) (run []string, skipped []string) {
	listed := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		listed[strings.TrimSpace(name)] = true
	}
	for _, name := range []string{"gatehouse", "caddy", "nginx", "haproxy"} {
		if !listed[name] {
			continue
		}
		switch name {
		case "gatehouse":
		case "caddy":
			if _, err := exec.LookPath("caddy"); err != nil {
				logf("names %d: caddy not installed: skipped", n)
				skipped = append(skipped, "caddy (not installed)")
				continue
			}
		case "nginx", "haproxy":
			if n > namesMaxPeers {
				skipped = append(skipped, fmt.Sprintf("%s (above %d names)", name, namesMaxPeers))
				continue
			}
		}
		run = append(run, name)
	}
	return run, skipped
}

type namesSet struct {
	n         int
	dir       string // the cache: ca.crt, names.txt, storage/
	names     []string
	namesFile string
	roots     *x509.CertPool
	issuerKey string
}

func (s *namesSet) certPath(name string) string {
	return filepath.Join(s.dir, "storage", filepath.FromSlash(certmagic.StorageKeys.SiteCert(s.issuerKey, name)))
}

func (s *namesSet) keyPath(name string) string {
	return filepath.Join(s.dir, "storage", filepath.FromSlash(certmagic.StorageKeys.SitePrivateKey(s.issuerKey, name)))
}

func loadNamesSet(cache string, n int, logf func(string, ...any)) (*namesSet, error) {
	dir, err := ensureNames(cache, n, logf)
	if err != nil {
		return nil, err
	}
	all, err := os.ReadFile(filepath.Join(dir, "names.txt"))
	if err != nil {
		return nil, err
	}
	capem, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(capem) {
		return nil, fmt.Errorf("%s/ca.crt: no certificate", dir)
	}
	names := strings.Fields(string(all))
	if len(names) != n {
		return nil, fmt.Errorf("%s/names.txt: %d names, want %d", dir, len(names), n)
	}
	return &namesSet{n: n, dir: dir, names: names, namesFile: filepath.Join(dir, "names.txt"), roots: roots,
		issuerKey: (&certmagic.ACMEIssuer{CA: namesDirectory}).IssuerKey()}, nil
}

// namesProxy writes kind's config for s into work and returns the proxy
// and, for gatehouse, its admin address (its /readyz says when every
// name is served).
func (b *bench) namesProxy(kind string, s *namesSet, work string, perRoute bool) (*proxy, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	p := &proxy{name: kind, port: port, log: filepath.Join(work, "stderr-a.log")}
	switch kind {
	case "gatehouse":
		admin, _ := freePort()
		cfg, err := namesConfig(work, filepath.Join(s.dir, "storage"), s.names, perRoute, port, admin, b.upstream)
		if err != nil {
			return nil, "", err
		}
		p.bin, p.args = b.gatehouseBin, []string{"run", "--config", cfg}
		if b.profile {
			p.bin = b.gatehousePprofBin
			pp, _ := freePort()
			b.pprofAddr = "127.0.0.1:" + strconv.Itoa(pp)
			p.env = []string{"GATEHOUSE_PPROF=" + b.pprofAddr}
		}
		return p, "127.0.0.1:" + strconv.Itoa(admin), nil
	case "caddy":
		type file struct {
			Certificate string `json:"certificate"`
			Key         string `json:"key"`
		}
		files := make([]file, 0, s.n)
		for _, n := range s.names {
			files = append(files, file{s.certPath(n), s.keyPath(n)})
		}
		// Caddy 2.6's Caddyfile has no global option for the cache
		// capacity; the JSON config has apps.tls.cache.capacity
		// (checked: caddy validate rejects an unknown field there).
		cfg := map[string]any{
			"admin":   map[string]any{"disabled": true},
			"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
			"storage": map[string]any{"module": "file_system", "root": filepath.Join(work, "storage")},
			"apps": map[string]any{
				"tls": map[string]any{
					"cache": map[string]any{"capacity": 2 * s.n},
					// the certificates name no OCSP responder: without
					// this Caddy logs one warning per name at start
					"disable_ocsp_stapling": true,
					"certificates":          map[string]any{"load_files": files},
				},
				"http": map[string]any{"servers": map[string]any{"names": map[string]any{
					"listen":                  []string{p.addr()},
					"automatic_https":         map[string]any{"disable": true},
					"tls_connection_policies": []any{map[string]any{}},
					"routes": []any{map[string]any{"handle": []any{map[string]any{
						"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": b.upstream}}}}}},
				}}},
			},
		}
		js, _ := json.Marshal(cfg)
		path := filepath.Join(work, "caddy.json")
		if err := os.WriteFile(path, js, 0o644); err != nil {
			return nil, "", err
		}
		p.bin, p.args = "caddy", []string{"run", "--config", path, "--adapter", ""}
		p.env = []string{"HOME=" + work, "XDG_DATA_HOME=" + work, "XDG_CONFIG_HOME=" + work}
		return p, "", nil
	case "nginx":
		var sb strings.Builder
		fmt.Fprintf(&sb, `
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server_names_hash_max_size %[4]d;
    server_names_hash_bucket_size 128;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream up {
        server %[2]s;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:%[3]d ssl default_server;
        ssl_reject_handshake on;
    }
`, work, b.upstream, port, 4*s.n)
		for _, n := range s.names {
			fmt.Fprintf(&sb, "    server { listen 127.0.0.1:%d ssl; server_name %s; ssl_certificate %s; ssl_certificate_key %s;\n"+
				"        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; } }\n",
				port, n, s.certPath(n), s.keyPath(n))
		}
		sb.WriteString("}\n")
		path := filepath.Join(work, "nginx.conf")
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			return nil, "", err
		}
		p.bin, p.args = "nginx", []string{"-p", work, "-c", path}
		return p, "", nil
	case "haproxy":
		// HAProxy wants certificate and key in one file
		pems := filepath.Join(work, "pems")
		if err := os.MkdirAll(pems, 0o700); err != nil {
			return nil, "", err
		}
		var list strings.Builder
		for _, n := range s.names {
			c, err := os.ReadFile(s.certPath(n))
			if err != nil {
				return nil, "", err
			}
			k, err := os.ReadFile(s.keyPath(n))
			if err != nil {
				return nil, "", err
			}
			pf := filepath.Join(pems, n+".pem")
			if err := os.WriteFile(pf, append(c, k...), 0o600); err != nil {
				return nil, "", err
			}
			fmt.Fprintf(&list, "%s %s\n", pf, n)
		}
		if err := os.WriteFile(filepath.Join(work, "crt-list"), []byte(list.String()), 0o644); err != nil {
			return nil, "", err
		}
		conf := fmt.Sprintf(`
global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:%d ssl crt-list %s/crt-list strict-sni alpn h2,http/1.1
    default_backend be
backend be
    http-reuse always
    server up %s
`, port, work, b.upstream)
		path := filepath.Join(work, "haproxy.cfg")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			return nil, "", err
		}
		p.bin, p.args = "haproxy", []string{"-db", "-f", path}
		return p, "", nil
	}
	return nil, "", fmt.Errorf("names: unknown proxy %q", kind)
}

// probeName is one verified handshake for name: the proxy serves it,
// with its own certificate.
func probeName(addr, name string, roots *x509.CertPool) error {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return err
	}
	return c.Close()
}

// exited reports whether pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// namesStart starts p and waits until every name is served: gatehouse's
// /readyz answers 200 (it reports every configured name loaded or
// indexed) and, for every proxy, verified handshakes with the first,
// middle and last name succeed. It returns the time from the start.
func (b *bench) namesStart(p *proxy, admin string, s *namesSet) (time.Duration, error) {
	t0 := time.Now()
	cmd, err := spawn("0", p.env, p.log, p.bin, p.args...)
	if err != nil {
		return 0, err
	}
	p.cmd = cmd
	limit := 10 * time.Minute
	client := newHTTPClient()
	probes := []string{s.names[0], s.names[len(s.names)/2], s.names[len(s.names)-1]}
	adminOK := admin == ""
	for {
		if time.Since(t0) > limit {
			return 0, fmt.Errorf("%s, %d names: not serving every name within %s", p.name, s.n, limit)
		}
		if exited(cmd.Process.Pid) {
			lb, _ := os.ReadFile(p.log)
			return 0, fmt.Errorf("%s exited: %s", p.name, lastLines(string(lb), 5))
		}
		if !adminOK {
			res, err := client.Get("http://" + admin + "/readyz")
			if err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				adminOK = res.StatusCode == 200
			}
			if !adminOK {
				// a not-ready /readyz may list waiting names: poll gently
				time.Sleep(250 * time.Millisecond)
				continue
			}
		}
		ok := true
		for _, n := range probes {
			if probeName(p.addr(), n, s.roots) != nil {
				ok = false
				break
			}
		}
		if ok {
			return time.Since(t0), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// namesRun measures one proxy with s's names.
func (b *bench) namesRun(kind string, s *namesSet, perRoute bool) (map[string]float64, error) {
	n := s.n
	work, err := os.MkdirTemp(b.work, "names-"+kind+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work) // HAProxy's pems: copies of private keys
	p, admin, err := b.namesProxy(kind, s, work, perRoute)
	if err != nil {
		return nil, err
	}
	gh := kind == "gatehouse"
	prof := b.profile && gh
	profiled := func(name string, run func() (map[string]float64, error)) (map[string]float64, error) {
		if !prof {
			return run()
		}
		done := b.fetchProfile(fmt.Sprintf("names-%d-%s", n, name), b.dur-time.Second, false)
		defer func() { <-done }()
		return run()
	}
	spreadArgs := []string{"-names", s.namesFile}
	m := map[string]float64{}

	// start A: start → every name served; spread and one name soon after
	var profDone chan struct{}
	if prof {
		// the startup CPU profile starts with the process (fetchProfile
		// retries until the pprof listener is up): about 1 s per 2,000
		// names, 5 s at least; the spread run waits for it
		profDone = b.fetchProfile(fmt.Sprintf("names-%d-startup", n), max(5*time.Second, time.Duration(n/2000)*time.Second), true)
	}
	ready, err := b.namesStart(p, admin, s)
	if err != nil {
		stop(p.cmd)
		if profDone != nil {
			<-profDone
		}
		return nil, err
	}
	m["ready_s"] = ready.Seconds()
	m["cpu_to_ready_s"] = cpuSeconds(p.pid())
	m["rss_ready_mib"] = rssKiB(p.pid()) / 1024
	if profDone != nil {
		<-profDone
		b.fetchHeap(fmt.Sprintf("names-%d-ready", n))
	}
	spreadA, err := profiled("fresh-spread", func() (map[string]float64, error) { return b.handshakes(p, "x25519", spreadArgs...) })
	if err != nil {
		stop(p.cmd)
		return nil, fmt.Errorf("spread after start: %w", err)
	}
	oneA, err := b.handshakes(p, "x25519", "-sni", s.names[0])
	stop(p.cmd)
	if err != nil {
		return nil, fmt.Errorf("one name after start: %w", err)
	}
	m["fresh_spread_cpu_us"], m["fresh_one_cpu_us"] = spreadA["cpu_us"], oneA["cpu_us"]
	m["fresh_spread_conns_s"], m["fresh_one_conns_s"] = spreadA["conns_s"], oneA["conns_s"]
	m["fresh_spread_vs_one_cpu"] = spreadA["cpu_us"] / oneA["cpu_us"]

	m["fresh_hs_errors"] = spreadA["errors"] + oneA["errors"]
	logA, _ := os.ReadFile(p.log)

	// start B: the sweep (every name's first handshake), then spread and
	// one name once every name was loaded
	time.Sleep(time.Second)
	p.log = filepath.Join(work, "stderr-b.log")
	readyB, err := b.namesStart(p, admin, s)
	if err != nil {
		stop(p.cmd)
		return nil, err
	}
	defer stop(p.cmd)
	m["ready_b_s"] = readyB.Seconds()
	var sw hsOut
	sweepLimit := 20 * time.Minute
	if prof {
		// the first handshakes of names: a CPU profile over the sweep's
		// start (~1 s per 4,000 names, 2–30 s; the sweep at 16 clients
		// runs for longer than that)
		d := min(max(2*time.Second, time.Duration(n/4000)*time.Second), 30*time.Second)
		sweepDone := b.fetchProfile(fmt.Sprintf("names-%d-sweep", n), d, false)
		defer func() { <-sweepDone }()
	}
	t1 := time.Now()
	cpuS, _, err := measure(p, func() error {
		return b.loadgen(false, sweepLimit+time.Minute, &sw, "-addr", p.addr(), "-names", s.namesFile, "-ca", filepath.Join(s.dir, "ca.crt"),
			"-c", "16", "-d", sweepLimit.String(), "sweep")
	})
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	m["sweep_s"] = time.Since(t1).Seconds()
	if sw.Errors > 0 {
		b.logf("names %d %s: %d names not served: %s", n, kind, sw.Errors, sw.FirstError)
	}
	m["sweep_ok"], m["sweep_missing"] = float64(sw.Conns), float64(sw.Errors)
	m["sweep_cpu_us"] = cpuS / float64(max(sw.Conns, 1)) * 1e6
	m["rss_sweep_mib"] = rssKiB(p.pid()) / 1024
	// the same process at rest: nothing asked of it for up to restWait
	// (gatehouse gives a burst's garbage back after a quiet second,
	// cmd/gatehouse/memtrim.go; Go's scavenger returns some more over
	// time; the others keep what they hold): read once a second until
	// no reading came 1% under the lowest for restSettle, or restWait
	// passed; the last reading is the figure
	t0 := time.Now()
	if admin != "" {
		// gatehouse's own background walk over the stored names (at
		// 1,000 a second) may still run after a sweep at 100,000: at
		// rest is after it, when /readyz counts no stored name unchecked
		m["walk_wait_s"] = b.waitWalked(admin, restWalkWait).Seconds()
	}
	rest, low, lowAt := m["rss_sweep_mib"], m["rss_sweep_mib"], time.Now()
	for time.Since(t0) < restWait && time.Since(lowAt) < restSettle {
		time.Sleep(time.Second)
		rest = rssKiB(p.pid()) / 1024
		if rest < 0.99*low {
			low, lowAt = rest, time.Now()
		}
	}
	m["rss_rest_mib"], m["rss_rest_s"] = rest, time.Since(t0).Seconds()
	if prof {
		b.fetchHeap(fmt.Sprintf("names-%d-swept", n))
	}
	spread, err := profiled("spread", func() (map[string]float64, error) { return b.handshakes(p, "x25519", spreadArgs...) })
	if err != nil {
		return nil, fmt.Errorf("spread after the sweep: %w", err)
	}
	one, err := profiled("one", func() (map[string]float64, error) { return b.handshakes(p, "x25519", "-sni", s.names[0]) })
	if err != nil {
		return nil, fmt.Errorf("one name after the sweep: %w", err)
	}
	m["spread_conns_s"], m["spread_cpu_us"], m["spread_cpu_pct"] = spread["conns_s"], spread["cpu_us"], spread["cpu_pct"]
	m["one_conns_s"], m["one_cpu_us"], m["one_cpu_pct"] = one["conns_s"], one["cpu_us"], one["cpu_pct"]
	m["spread_vs_one"] = spread["conns_s"] / one["conns_s"]
	m["spread_vs_one_cpu"] = spread["cpu_us"] / one["cpu_us"]
	m["first_vs_warm_cpu"] = m["sweep_cpu_us"] / one["cpu_us"]
	m["hs_errors"] = spread["errors"] + one["errors"]
	logB, _ := os.ReadFile(p.log)
	logs := string(logA) + string(logB)
	// kept beside the results (the work directory goes)
	_ = os.WriteFile(filepath.Join(b.out, fmt.Sprintf("names-%d-%s.log", n, kind)), []byte(logs), 0o644)
	m["log_lines"] = float64(strings.Count(logs, "\n"))
	if gh {
		m["log_error_lines"] = float64(strings.Count(logs, "level=ERROR"))
	}
	return m, nil
}

// waitWalked polls gatehouse's /readyz once a second until it reports
// no stored name unchecked (the background walk is through), limit at
// most; it returns how long it waited.
func (b *bench) waitWalked(admin string, limit time.Duration) time.Duration {
	t0 := time.Now()
	client := newHTTPClient()
	for time.Since(t0) < limit {
		res, err := client.Get("http://" + admin + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
			res.Body.Close()
			if m := storedUncheckedRE.FindSubmatch(body); m != nil && string(m[1]) == "0" {
				return time.Since(t0)
			}
		}
		time.Sleep(time.Second)
	}
	b.logf("names: the walk over the stored names was not through within %v of the sweep", limit)
	return time.Since(t0)
}

var storedUncheckedRE = regexp.MustCompile(`"stored_unchecked":\s*(\d+)`)

// restWalkWait bounds the wait for gatehouse's walk after the sweep.
const restWalkWait = 3 * time.Minute

// restWait is how long the sweep's process is left alone, at most,
// for its RSS at rest; restSettle, how long it must go without falling
// further.
const (
	restWait   = 60 * time.Second
	restSettle = 10 * time.Second
)

// namesReport prints issue 15's table: one column per proxy and size,
// the goal beside; gatehouse's cells carry ✅/❌ where the goal is a
// number.
func namesReport(sb *strings.Builder, res []result, skipped []string, perRoute bool) {
	if len(res) == 0 {
		return
	}
	layout := "gatehouse: one [[route]] listing every name"
	if perRoute {
		layout = "gatehouse: one [[route]] per name"
	}
	fmt.Fprintf(sb, "## many names (ECDSA P-256 certificates already on disk; %s, ACME-managed, CA unreachable; Caddy: load_files, cache capacity 2N; nginx: a server block per name; HAProxy: crt-list)\n\n", layout)
	type row struct {
		key, label, goal string
		ratio            bool
		met              func(v float64) bool
	}
	rows := []row{
		{"ready_s", "start → every name served (s)", "≤ 5 s", false, func(v float64) bool { return v <= 5 }},
		{"cpu_to_ready_s", "CPU until then (s)", "", false, nil},
		{"rss_ready_mib", "RSS at start (MiB)", "—", false, nil},
		{"rss_sweep_mib", "RSS after a handshake with every name (MiB)", "≤ 600 MiB", false, func(v float64) bool { return v <= 600 }},
		{"rss_rest_mib", "↳ the same at rest, nothing asked (MiB)", "≤ 600 MiB", false, func(v float64) bool { return v <= 600 }},
		{"rss_rest_s", "↳ read after (s; gatehouse: after its walk over the stored names; then once 10 s passed without a new low, 60 s at most)", "", false, nil},
		{"fresh_spread_vs_one_cpu", "handshake CPU, SNI spread over all names ÷ one name, soon after start", "≤ 1.05×", true, func(v float64) bool { return v <= 1.05 }},
		{"spread_vs_one_cpu", "the same once every name was loaded", "≤ 1.05×", true, func(v float64) bool { return v <= 1.05 }},
		{"spread_vs_one", "↳ conn/s spread ÷ one name (loaded)", "", true, nil},
		{"sweep_cpu_us", "first handshake of a name, CPU µs (the sweep)", "", false, nil},
		{"first_vs_warm_cpu", "↳ ÷ a warm one-name handshake", "≤ 2×", true, func(v float64) bool { return v <= 2 }},
		{"one_cpu_us", "warm handshake, one name, CPU µs", "", false, nil},
		{"fresh_spread_cpu_us", "spread handshake CPU µs, soon after start", "", false, nil},
		{"spread_cpu_us", "spread handshake CPU µs, every name loaded", "", false, nil},
		{"sweep_ok", "names served (verified handshake)", "every name", false, nil},
		{"sweep_missing", "names not served", "0", false, func(v float64) bool { return v == 0 }},
		{"sweep_s", "sweep time (s, 16 clients)", "", false, nil},
		{"fresh_hs_errors", "failed handshakes soon after start (spread + one name)", "0", false, func(v float64) bool { return v == 0 }},
		{"hs_errors", "failed handshakes once loaded (spread + one name)", "0", false, func(v float64) bool { return v == 0 }},
		{"log_error_lines", "ERROR lines in gatehouse's log (both starts)", "0", false, func(v float64) bool { return v == 0 }},
	}
	label := func(r result) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.Scenario, "names-"))
		size := strconv.Itoa(n)
		if n >= 1000 && n%1000 == 0 {
			size = strconv.Itoa(n/1000) + "k"
		}
		return r.Proxy + " " + size
	}
	sb.WriteString("| |")
	for _, r := range res {
		fmt.Fprintf(sb, " %s |", label(r))
	}
	sb.WriteString(" goal |\n|---|" + strings.Repeat("---|", len(res)) + "---|\n")
	for _, rw := range rows {
		fmt.Fprintf(sb, "| %s |", rw.label)
		for _, r := range res {
			v, ok := r.Metrics[rw.key]
			switch {
			case r.Error != "":
				sb.WriteString(" error |")
			case !ok:
				sb.WriteString(" – |")
			default:
				cell := num(v)
				if rw.ratio {
					cell += "×"
				}
				if rw.met != nil && r.Proxy == "gatehouse" {
					if rw.met(v) {
						cell += " ✅"
					} else {
						cell += " ❌"
					}
				}
				fmt.Fprintf(sb, " %s |", cell)
			}
		}
		fmt.Fprintf(sb, " %s |\n", rw.goal)
	}
	sb.WriteString("\n`import autocert` of N names (issue 15's last row) is not part of this scenario.\n")
	for _, r := range res {
		if r.Error != "" {
			fmt.Fprintf(sb, "\n%s error: %s\n", label(r), r.Error)
		}
	}
	if len(skipped) > 0 {
		fmt.Fprintf(sb, "\nskipped: %s", strings.Join(skipped, "; "))
		if strings.Contains(strings.Join(skipped, ";"), "above") {
			fmt.Fprintf(sb, " (nginx and HAProxy run at ≤ %d names only, as issue 15 asks)", namesMaxPeers)
		}
		sb.WriteString(".\n")
	}
	sb.WriteString("\n")
}
