package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// metricDef describes one number a scenario reports.
type metricDef struct {
	key, unit string
	ratio     bool // printed as a ratio against nginx
}

// scenario is one measurement, run once per proxy per round.
type scenario struct {
	key, title string
	metrics    []metricDef
	only       string // run on this proxy only ("gatehouse")
	// proxies, when set, are the only proxies that run it (HTTP/3:
	// gatehouse and Caddy; nginx 1.22 and HAProxy 2.6 here have none),
	// and vs the proxy ratios are taken against (default nginx).
	proxies []string
	vs      string
	restart bool // restart the proxy first (memory scenarios)
	run     func(b *bench, p *proxy) (map[string]float64, error)
}

// measure runs load while sampling the proxy's CPU time (all its
// processes) and wall time.
func measure(p *proxy, load func() error) (cpu, wall float64, err error) {
	c0, t0 := cpuSeconds(p.pid()), time.Now()
	err = load()
	return cpuSeconds(p.pid()) - c0, time.Since(t0).Seconds(), err
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

var (
	reReq = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	reFin = regexp.MustCompile(`finished in ([\d.]+)(m?s)`)
)

type h2res struct {
	ok, failed float64
	seconds    float64
}

func parseH2load(out []byte) (h2res, error) {
	m := reReq.FindSubmatch(out)
	f := reFin.FindSubmatch(out)
	if m == nil || f == nil {
		return h2res{}, fmt.Errorf("cannot read h2load output: %s", lastLines(string(out), 8))
	}
	var r h2res
	r.ok, _ = strconv.ParseFloat(string(m[4]), 64)
	fl, _ := strconv.ParseFloat(string(m[5]), 64)
	er, _ := strconv.ParseFloat(string(m[6]), 64)
	r.failed = fl + er
	r.seconds, _ = strconv.ParseFloat(string(f[1]), 64)
	if string(f[2]) == "ms" {
		r.seconds /= 1000
	}
	return r, nil
}

// h2load runs h2load against p for name, with extra flags.
func (b *bench) h2load(p *proxy, name, path string, flags ...string) (map[string]float64, h2res, error) {
	args := append([]string{"-D", secs(b.dur), "--connect-to=" + p.addr()}, flags...)
	args = append(args, fmt.Sprintf("https://%s:%d%s", name, p.port, path))
	var out []byte
	cpu, wall, err := measure(p, func() error {
		var err error
		out, err = runLoad(b.dur+30*time.Second, false, "h2load", args...)
		return err
	})
	if err != nil {
		return nil, h2res{}, err
	}
	r, err := parseH2load(out)
	if err != nil {
		return nil, r, err
	}
	if r.ok == 0 {
		return nil, r, fmt.Errorf("h2load: no request succeeded: %s", lastLines(string(out), 8))
	}
	return map[string]float64{
		"rps":      r.ok / r.seconds,
		"cpu_us":   cpu / r.ok * 1e6,
		"cpu_pct":  cpu / wall * 100,
		"failures": r.failed,
	}, r, nil
}

// loadgen runs the bench's own load generator and decodes its JSON.
func (b *bench) loadgen(nice bool, limit time.Duration, into any, args ...string) error {
	out, err := runLoad(limit, nice, b.loadgenBin, args...)
	if err != nil {
		return err
	}
	return json.Unmarshal(out, into)
}

type hsOut struct {
	Conns, Errors, Resumed int64
	Seconds, Rate          float64
	Curve                  string
	FirstError             string `json:"first_error"`
}

func (b *bench) handshakes(p *proxy, curve string, sniArgs ...string) (map[string]float64, error) {
	var r hsOut
	args := append([]string{"-addr", p.addr(), "-c", "16", "-d", b.dur.String(), "-curve", curve}, sniArgs...)
	args = append(args, "handshake")
	cpu, wall, err := measure(p, func() error { return b.loadgen(false, b.dur+30*time.Second, &r, args...) })
	if err != nil {
		return nil, err
	}
	if r.Conns == 0 {
		return nil, fmt.Errorf("no handshake succeeded: %s", r.FirstError)
	}
	if curve == "mlkem" && r.Curve != "X25519MLKEM768" {
		return nil, fmt.Errorf("negotiated %q, not X25519MLKEM768", r.Curve)
	}
	if r.Resumed != 0 {
		return nil, fmt.Errorf("%d handshakes were resumed: the scenario is full handshakes only", r.Resumed)
	}
	return map[string]float64{
		"conns_s": r.Rate,
		"cpu_us":  cpu / float64(r.Conns) * 1e6,
		"cpu_pct": cpu / wall * 100,
		"errors":  float64(r.Errors),
		"resumed": float64(r.Resumed),
	}, nil
}

type latOut struct {
	Req   int64   `json:"requests"`
	Err   int64   `json:"errors"`
	Lt    int64   `json:"late_sends"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
	SL50  float64 `json:"send_late_p50_us"`
	Svc99 float64 `json:"svc_p99_us"`
	SL99  float64 `json:"send_late_p99_us"`
}

func (b *bench) latency(p *proxy) (map[string]float64, error) {
	var r latOut
	args := []string{"-addr", p.addr(), "-sni", nameEC, "-rate", "1000", "-c", "32", "-d", b.latDur.String(), "latency"}
	cpu, wall, err := measure(p, func() error { return b.loadgen(false, b.latDur+60*time.Second, &r, args...) })
	if err != nil {
		return nil, err
	}
	return map[string]float64{
		"p50_us": r.P50, "p99_us": r.P99, "p999_us": r.P999,
		"cpu_pct": cpu / wall * 100, "errors": float64(r.Err), "late": float64(r.Lt),
		"send_late_p50_us": r.SL50, "send_late_p99_us": r.SL99, "svc_p99_us": r.Svc99,
	}, nil
}

// idle opens b.idleN connections, each with one request, and reports
// the growth of the proxy's RSS per connection.
func (b *bench) idle(p *proxy) (map[string]float64, error) {
	time.Sleep(time.Second)
	before := rssKiB(p.pid())
	cmd := exec.Command("taskset", "-c", "1", b.loadgenBin, "-addr", p.addr(), "-sni", nameEC,
		"-n", strconv.Itoa(b.idleN), "-c", "32", "-hold", "5m", "idle")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, _ := cmd.StdinPipe()
	stderr, _ := cmd.StderrPipe()
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	track(cmd)
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait(); untrack(cmd) }()
	line, err := readFirstLine(stderr, 3*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("idle client: %v", err)
	}
	var open int
	if _, err := fmt.Sscanf(line, "ready %d", &open); err != nil || open == 0 {
		return nil, fmt.Errorf("idle client: %q", line)
	}
	time.Sleep(3 * time.Second) // let the proxy settle (GC, buffers released)
	after := rssKiB(p.pid())
	if b.afterSettle != nil {
		b.afterSettle()
	}
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return map[string]float64{
		"kib_per_conn": (after - before) / float64(open),
		"rss_before":   before / 1024, "rss_after": after / 1024,
		"open": float64(open),
	}, nil
}

type hostileOut struct {
	Conns, Alerts, Served, Closed, Errors int64
	Rate                                  float64
}

// flood runs loadgen's flood (raw syscalls, one epoll set per thread)
// of kind for d: niced (or SCHED_IDLE, -flood-sched), its two threads pinned to -flood-cpus (by
// default one on each CPU), so it takes every cycle the proxy (CPU 0)
// and the good clients (CPU 1) leave — the proxy's core is
// saturated (cpu0_idle_pct ~0) — and yields to them. 128 connections in
// flight over 2 threads.
func (b *bench) flood(p *proxy, kind string, d time.Duration, into *hostileOut) error {
	out, err := runLoadOn(b.floodCPUs, d+30*time.Second, b.floodSched, b.loadgenBin, "-addr", p.addr(), "-c", "128", "-threads", "2",
		"-cpus", b.floodCPUs, "-kind", kind, "-sni", nameEC, "-d", d.String(), "flood")
	if err != nil {
		return err
	}
	return json.Unmarshal(out, into)
}

// hostile measures the proxy's CPU per connection of a flood of kind:
// unknown (whole ClientHellos for names it does not route: refused) or
// partial (half a ClientHello for a routed name, then a reset: a
// handshake that never finishes).
func (b *bench) hostile(p *proxy, kind string) (map[string]float64, error) {
	var r hostileOut
	i0 := cpu0Idle()
	cpu, wall, err := measure(p, func() error { return b.flood(p, kind, b.dur, &r) })
	if err != nil {
		return nil, err
	}
	if r.Conns == 0 {
		return nil, fmt.Errorf("hostile %s: no connection completed", kind)
	}
	if kind == "unknown" && r.Alerts == 0 {
		return nil, fmt.Errorf("hostile: no ClientHello was refused with an alert (%d closed, %d served)", r.Closed, r.Served)
	}
	return map[string]float64{
		"conns_s": r.Rate, "cpu_us": cpu / float64(r.Conns) * 1e6, "cpu_pct": cpu / wall * 100,
		"cpu0_idle_pct": (cpu0Idle() - i0) / wall * 100,
		"served":        float64(r.Served), "alerts": float64(r.Alerts),
	}, nil
}

// hostileLatency is the latency scenario with a flood of kind beside
// it (see flood: niced, so the good client and the upstream on CPU 1
// and the proxy on CPU 0 keep their share).
func (b *bench) hostileLatency(p *proxy, kind string) (map[string]float64, error) {
	var hr hostileOut
	hdone := make(chan error, 1)
	go func() { hdone <- b.flood(p, kind, b.latDur+4*time.Second, &hr) }()
	time.Sleep(500 * time.Millisecond)
	i0, t0 := cpu0Idle(), time.Now()
	m, err := b.latency(p)
	idle := (cpu0Idle() - i0) / time.Since(t0).Seconds() * 100
	herr := <-hdone
	if err != nil {
		return nil, err
	}
	if herr != nil {
		return nil, fmt.Errorf("hostile load: %v", herr)
	}
	m["hostile_conns_s"] = hr.Rate
	m["cpu0_idle_pct"] = idle
	return m, nil
}

// runs reports whether s runs on proxy name.
func (s *scenario) runs(name string) bool {
	if s.only != "" {
		return name == s.only
	}
	return len(s.proxies) == 0 || slices.Contains(s.proxies, name)
}

// base is the proxy s's ratios are taken against.
func (s *scenario) base() string {
	if s.vs != "" {
		return s.vs
	}
	return "nginx"
}

// h3 runs the loadgen's HTTP/3 request mode (-c connections × -m
// streams, as the h2 scenario's h2load shape).
func (b *bench) h3(p *proxy) (map[string]float64, error) {
	var r struct {
		Requests, Errors int64
		Seconds, Rate    float64
		FirstError       string `json:"first_error"`
	}
	args := []string{"-addr", p.addr(), "-sni", nameEC, "-c", "16", "-m", "16", "-d", b.dur.String(), "h3"}
	cpu, wall, err := measure(p, func() error { return b.loadgen(false, b.dur+30*time.Second, &r, args...) })
	if err != nil {
		return nil, err
	}
	if r.Requests == 0 {
		return nil, fmt.Errorf("h3: no request succeeded: %s", r.FirstError)
	}
	return map[string]float64{"rps": r.Rate, "cpu_us": cpu / float64(r.Requests) * 1e6, "cpu_pct": cpu / wall * 100, "errors": float64(r.Errors)}, nil
}

func (b *bench) h3Handshakes(p *proxy) (map[string]float64, error) {
	var r hsOut
	args := []string{"-addr", p.addr(), "-sni", nameEC, "-c", "16", "-d", b.dur.String(), "h3hs"}
	cpu, wall, err := measure(p, func() error { return b.loadgen(false, b.dur+30*time.Second, &r, args...) })
	if err != nil {
		return nil, err
	}
	if r.Conns == 0 {
		return nil, fmt.Errorf("h3: no handshake succeeded: %s", r.FirstError)
	}
	return map[string]float64{"conns_s": r.Rate, "cpu_us": cpu / float64(r.Conns) * 1e6, "cpu_pct": cpu / wall * 100, "errors": float64(r.Errors)}, nil
}

func (b *bench) h3Hostile(p *proxy) (map[string]float64, error) {
	var r struct {
		Conns, Served, Timeouts int64
		Rate                    float64
		FirstError              string `json:"first_error"`
	}
	args := []string{"-addr", p.addr(), "-c", "16", "-d", b.dur.String(), "h3hostile"}
	cpu, wall, err := measure(p, func() error { return b.loadgen(false, b.dur+30*time.Second, &r, args...) })
	if err != nil {
		return nil, err
	}
	if r.Conns == 0 {
		return nil, fmt.Errorf("h3 hostile: no Initial was refused (%d timeouts): %s", r.Timeouts, r.FirstError)
	}
	return map[string]float64{"conns_s": r.Rate, "cpu_us": cpu / float64(r.Conns) * 1e6, "cpu_pct": cpu / wall * 100,
		"served": float64(r.Served), "timeouts": float64(r.Timeouts)}, nil
}

func (b *bench) scenarios() []*scenario {
	return []*scenario{
		{key: "hs-ecdsa", title: "TLS 1.3 full handshake, X25519, ECDSA P-256, 1 request each",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", true}, {"cpu_pct", "% CPU", false}},
			run:     func(b *bench, p *proxy) (map[string]float64, error) { return b.handshakes(p, "x25519", "-sni", nameEC) }},
		{key: "hs-rsa", title: "TLS 1.3 full handshake, X25519, RSA-2048, 1 request each",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				return b.handshakes(p, "x25519", "-sni", nameRSA)
			}},
		{key: "hs-mlkem", title: "TLS 1.3 full handshake, X25519MLKEM768, ECDSA (gatehouse only: OpenSSL 3.0 peers cannot)", only: "gatehouse",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", false}, {"cpu_pct", "% CPU", false}},
			run:     func(b *bench, p *proxy) (map[string]float64, error) { return b.handshakes(p, "mlkem", "-sni", nameEC) }},
		{key: "h1", title: "HTTP/1.1 keep-alive, 100-byte body, 32 connections (h2load --h1)",
			metrics: []metricDef{{"rps", "req/s", false}, {"cpu_us", "µs/req", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				m, _, err := b.h2load(p, nameEC, "/", "--h1", "-c", "32", "-m", "1")
				return m, err
			}},
		{key: "h2", title: "HTTP/2, 16 connections x 16 streams, 100-byte body (h2load)",
			metrics: []metricDef{{"rps", "req/s", false}, {"cpu_us", "µs/req", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				m, _, err := b.h2load(p, nameEC, "/", "-c", "16", "-m", "16")
				return m, err
			}},
		{key: "h1-tls-up", title: "HTTP/1.1 keep-alive as h1, to an https:// upstream (TLS, verified, kept alive) (h2load --h1)",
			metrics: []metricDef{{"rps", "req/s", false}, {"cpu_us", "µs/req", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				m, _, err := b.h2load(p, nameTLSUp, "/", "--h1", "-c", "32", "-m", "1")
				return m, err
			}},
		{key: "h2-h2c-up", title: "HTTP/2 as h2, to an h2c:// upstream (cleartext HTTP/2, kept alive) (h2load)",
			metrics: []metricDef{{"rps", "req/s", false}, {"cpu_us", "µs/req", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				m, _, err := b.h2load(p, nameH2CUp, "/", "-c", "16", "-m", "16")
				return m, err
			}},
		{key: "bulk", title: "bulk: 1 MiB responses, HTTP/1.1, 4 connections (h2load --h1)",
			metrics: []metricDef{{"mib_s", "MiB/s", false}, {"cpu_ms_gib", "CPU ms/GiB", true}, {"cpu_pct", "% CPU", false}},
			run: func(b *bench, p *proxy) (map[string]float64, error) {
				m, r, err := b.h2load(p, nameEC, "/1m", "--h1", "-c", "4", "-m", "1")
				if err != nil {
					return nil, err
				}
				// cpu_us is per 1 MiB response: ×1024 per GiB, /1000 to ms
				return map[string]float64{"mib_s": r.ok / r.seconds, "cpu_ms_gib": m["cpu_us"] * 1024 / 1000, "cpu_pct": m["cpu_pct"], "failures": m["failures"]}, nil
			}},
		{key: "bulk-nginx-up", title: "bulk: 1 MiB file from an nginx upstream (sendfile), HTTP/1.1 keep-alive, 8 connections (wrk -t1 -c8)",
			metrics: []metricDef{{"mib_s", "MiB/s", false}, {"cpu_ms_gib", "CPU ms/GiB", true}, {"cpu_pct", "% CPU", false}},
			run:     (*bench).bulkNginxUp},
		{key: "latency", title: "open-loop 1,000 req/s, HTTP/1.1 keep-alive, 32 connections (latency from scheduled send)",
			metrics: []metricDef{{"p50_us", "p50 µs", true}, {"p99_us", "p99 µs", true}, {"p999_us", "p99.9 µs", true}, {"cpu_pct", "% CPU", true},
				{"send_late_p50_us", "client send lateness p50 µs", false}, {"send_late_p99_us", "client send lateness p99 µs", false},
				{"svc_p99_us", "p99 from the write µs", true}},
			run: (*bench).latency},
		{key: "idle", title: "idle TLS connections (one request each), RSS growth", restart: true,
			metrics: []metricDef{{"kib_per_conn", "KiB/conn", true}, {"rss_before", "MiB before", false}, {"rss_after", "MiB after", false}},
			run:     (*bench).idle},
		{key: "hostile", title: "hostile: ClientHellos with unknown SNI at full rate (refused; loadgen flood, CPU 0 saturated)",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", true}, {"cpu_pct", "% CPU", false}, {"cpu0_idle_pct", "CPU 0 idle %", false}, {"served", "served (must be 0)", false}},
			run:     func(b *bench, p *proxy) (map[string]float64, error) { return b.hostile(p, "unknown") }},
		{key: "hostile-latency", title: "open-loop 1,000 req/s good traffic beside full-rate unknown-SNI ClientHellos",
			metrics: []metricDef{{"p50_us", "p50 µs", true}, {"p99_us", "p99 µs", true}, {"p999_us", "p99.9 µs", true}, {"cpu_pct", "% CPU", false}, {"cpu0_idle_pct", "CPU 0 idle %", false}, {"hostile_conns_s", "hostile conn/s", false},
				{"send_late_p99_us", "client send lateness p99 µs", false}, {"svc_p99_us", "p99 from the write µs", true}},
			run: func(b *bench, p *proxy) (map[string]float64, error) { return b.hostileLatency(p, "unknown") }},
		{key: "partial", title: "hostile: handshakes that never finish (half a ClientHello for a routed name, then a reset) at full rate",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", true}, {"cpu_pct", "% CPU", false}, {"cpu0_idle_pct", "CPU 0 idle %", false}},
			run:     func(b *bench, p *proxy) (map[string]float64, error) { return b.hostile(p, "partial") }},
		{key: "partial-latency", title: "open-loop 1,000 req/s good traffic beside full-rate handshakes that never finish",
			metrics: []metricDef{{"p50_us", "p50 µs", true}, {"p99_us", "p99 µs", true}, {"p999_us", "p99.9 µs", true}, {"cpu_pct", "% CPU", false}, {"cpu0_idle_pct", "CPU 0 idle %", false}, {"hostile_conns_s", "hostile conn/s", false},
				{"send_late_p99_us", "client send lateness p99 µs", false}, {"svc_p99_us", "p99 from the write µs", true}},
			run: func(b *bench, p *proxy) (map[string]float64, error) { return b.hostileLatency(p, "partial") }},
		{key: "h3", title: "HTTP/3, 16 QUIC connections x 16 streams, 100-byte body (quic-go client)", proxies: []string{"gatehouse", "caddy"}, vs: "caddy",
			metrics: []metricDef{{"rps", "req/s", false}, {"cpu_us", "µs/req", true}, {"cpu_pct", "% CPU", false}},
			run:     (*bench).h3},
		{key: "h3-hs", title: "HTTP/3 full QUIC handshake (TLS 1.3, X25519, ECDSA), 1 request each", proxies: []string{"gatehouse", "caddy"}, vs: "caddy",
			metrics: []metricDef{{"conns_s", "conn/s", false}, {"cpu_us", "µs/conn", true}, {"cpu_pct", "% CPU", false}},
			run:     (*bench).h3Handshakes},
		{key: "h3-hostile", title: "hostile: QUIC Initials with unknown SNI at full rate (refused)", proxies: []string{"gatehouse", "caddy"}, vs: "caddy",
			metrics: []metricDef{{"conns_s", "Initials/s", false}, {"cpu_us", "µs/Initial", true}, {"cpu_pct", "% CPU", false}, {"served", "served (must be 0)", false}},
			run:     (*bench).h3Hostile},
	}
}
