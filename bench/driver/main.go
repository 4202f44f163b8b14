// Command driver runs gatehouse beside nginx, HAProxy and (when
// installed) Caddy under the same load and prints a table of medians
// and per-round ratios against nginx. bench/run.sh builds it and calls
// it; see bench/README.md.
//
// Every proxy is pinned to CPU 0; the load generators and the
// upstream run on CPU 1. Each proxy's CPU time is read from
// /proc/<pid>/stat (utime+stime, summed over all its processes) around
// each run. Rounds interleave the proxies: for each round, each
// scenario runs once against each proxy, in an order rotated per round.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type bench struct {
	floodCPUs   string // -flood-cpus
	floodSched  string // -flood-sched
	dur, latDur time.Duration
	idleN       int
	rounds      int
	profile     bool
	quick       bool

	work, cache, out  string
	upstream          string
	loadgenBin        string
	gatehouseBin      string
	gatehousePprofBin string
	pprofAddr         string
	afterSettle       func()
	loadStart         string

	log *os.File
}

func (b *bench) logf(format string, args ...any) {
	line := fmt.Sprintf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	os.Stderr.WriteString(line)
	if b.log != nil {
		b.log.WriteString(line)
	}
}

func main() {
	quick := flag.Bool("quick", false, "short smoke run: small counts, one round")
	binDir := flag.String("bin", "", "directory holding gatehouse, gatehouse-pprof, loadgen, upstream")
	outDir := flag.String("out", "", "results directory")
	cacheDir := flag.String("cache", "", "cache directory (many-names certificates)")
	only := flag.String("only", "", "comma-separated scenario keys (default all; 'names' for many names)")
	proxiesFlag := flag.String("proxies", "nginx,haproxy,caddy,gatehouse", "proxies to run (caddy is skipped when not installed)")
	rounds := flag.Int("rounds", 3, "rounds")
	dur := flag.Duration("d", 8*time.Second, "duration of each throughput run")
	namesFlag := flag.String("names", "10000,100000", "many-names counts")
	namesLayout := flag.String("names-layout", "hosts", "many names: 'hosts' (one route listing every name) or 'routes' (a route per name)")
	floodSched := flag.String("flood-sched", "nice", "the floods' scheduling: nice (nice 19) or idle (SCHED_IDLE: any other task waking on the CPU preempts the flood's threads at once, so what the proxy waits for beside a flood is the flood's kernel work, not its threads' time slices)")
	floodCPUs := flag.String("flood-cpus", "0,1", "CPUs of the hostile/partial floods' two threads (one pinned to each, round robin): 0,1 saturates both CPUs; 0 only the proxy's, leaving CPU 1 to the good client and the upstream")
	profile := flag.Bool("profile", false, "after the rounds, profile gatehouse (pprof build) in each scenario")
	importPrep := flag.String("import-prep", "", "write DIR/autocert (an autocert cache of the first -names set) and DIR/gatehouse-names.toml, then exit (bench/import.sh)")
	flag.Parse()
	if *floodSched != "nice" && *floodSched != "idle" {
		fatal(fmt.Errorf("-flood-sched %q: nice or idle", *floodSched))
	}
	initClkTck()
	if *importPrep != "" {
		ns := parseInts(*namesFlag)
		if len(ns) == 0 {
			fatal(fmt.Errorf("-import-prep: no -names count"))
		}
		if err := importPrepare(*cacheDir, ns[0], *importPrep); err != nil {
			fatal(err)
		}
		return
	}

	b := &bench{dur: *dur, latDur: 15 * time.Second, idleN: 5000, rounds: *rounds, profile: *profile,
		cache: *cacheDir, out: *outDir, floodCPUs: *floodCPUs, floodSched: *floodSched}
	names := parseInts(*namesFlag)
	if *quick {
		b.dur, b.latDur, b.idleN, b.rounds = 2*time.Second, 3*time.Second, 200, 1
		b.quick = true
		names = []int{200}
	}
	b.loadgenBin = filepath.Join(*binDir, "loadgen")
	b.gatehouseBin = filepath.Join(*binDir, "gatehouse")
	b.gatehousePprofBin = filepath.Join(*binDir, "gatehouse-pprof")
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		fatal(err)
	}
	b.log, _ = os.Create(filepath.Join(b.out, "driver.log"))

	var err error
	if b.work, err = os.MkdirTemp("", "gatehouse-bench-"); err != nil {
		fatal(err)
	}
	workDir = b.work
	cleanup := func() {
		stopAll()
		_ = os.RemoveAll(b.work)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		b.logf("signal %v: stopping", s)
		killAllNow()
		_ = os.RemoveAll(b.work)
		os.Exit(130)
	}()
	code := b.main(*only, *proxiesFlag, names, *namesLayout == "routes")
	cleanup()
	os.Exit(code)
}

// workDir is removed on every exit path.
var workDir string

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	stopAll()
	if workDir != "" {
		_ = os.RemoveAll(workDir)
	}
	os.Exit(1)
}

func parseInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	return out
}

type result struct {
	Round    int                `json:"round"`
	Proxy    string             `json:"proxy"`
	Scenario string             `json:"scenario"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	Error    string             `json:"error,omitempty"`
}

func (b *bench) main(only, proxyList string, names []int, perRoute bool) int {
	want := func(key string) bool {
		if only == "" {
			return true
		}
		return slices.Contains(strings.Split(only, ","), key)
	}
	b.loadStart = loadavg()
	certs := filepath.Join(b.work, "certs")
	if err := os.MkdirAll(certs, 0o755); err != nil {
		fatal(err)
	}
	if _, err := siteCerts(certs); err != nil {
		fatal(err)
	}
	up, err := spawnUpstream(b.work, filepath.Dir(b.loadgenBin))
	if err != nil {
		fatal(err)
	}
	b.upstream = up
	b.logf("upstream on %s (CPU 1); work dir %s", up, b.work)
	if want("bulk-nginx-up") {
		if nginxUpstream, err = spawnNginxUpstream(b.work); err != nil {
			fatal(err)
		}
		b.logf("nginx upstream (sendfile, /1m) on %s (CPU 1)", nginxUpstream)
	} else {
		nginxUpstream = "127.0.0.1:9" // routed, never used
	}
	// the https:// and h2c:// upstreams: the same upstream behind TLS
	// (the bench CA's certificate) and speaking h2c; routed, and started
	// only when their scenario runs
	if want("h1-tls-up") {
		if tlsUpstream, err = spawnUpstream(b.work, filepath.Dir(b.loadgenBin),
			"-tls-cert", filepath.Join(certs, nameUpstreamTLS+".crt"), "-tls-key", filepath.Join(certs, nameUpstreamTLS+".key")); err != nil {
			fatal(err)
		}
		b.logf("TLS upstream on %s (CPU 1)", tlsUpstream)
	}
	if want("h2-h2c-up") {
		if h2cUpstream, err = spawnUpstream(b.work, filepath.Dir(b.loadgenBin), "-h2c"); err != nil {
			fatal(err)
		}
		b.logf("h2c upstream on %s (CPU 1)", h2cUpstream)
	}

	var proxies []*proxy
	for _, name := range strings.Split(proxyList, ",") {
		var p *proxy
		var err error
		switch strings.TrimSpace(name) {
		case "nginx":
			p, err = nginxProxy(b.work, certs, up)
		case "haproxy":
			p, err = haproxyProxy(b.work, certs, up)
		case "caddy":
			if _, lerr := exec.LookPath("caddy"); lerr != nil {
				b.logf("caddy not installed: skipped")
				continue
			}
			p, err = caddyProxy(b.work, certs, up)
		case "gatehouse":
			p, err = gatehouseProxy(b.work, b.gatehouseBin, "gatehouse", certs, up, nil)
		default:
			err = fmt.Errorf("unknown proxy %q", name)
		}
		if err != nil {
			fatal(err)
		}
		proxies = append(proxies, p)
	}

	var results []result
	scens := b.scenarios()
	runScen := false
	for _, s := range scens {
		if want(s.key) {
			runScen = true
		}
	}
	if runScen {
		for _, p := range proxies {
			if err := p.start(); err != nil {
				fatal(err)
			}
			b.logf("%s serving on %s (pid %d, CPU 0)", p.name, p.addr(), p.pid())
		}
		for r := 1; r <= b.rounds; r++ {
			order := rotate(proxies, r-1)
			for _, s := range scens {
				if !want(s.key) {
					continue
				}
				for _, p := range order {
					if !s.runs(p.name) {
						continue
					}
					if s.restart {
						stop(p.cmd)
						if err := p.start(); err != nil {
							fatal(err)
						}
					}
					time.Sleep(500 * time.Millisecond)
					m, err := s.run(b, p)
					if err != nil && b.quick {
						// the smoke run proves the bench works; one retry
						// keeps a stray stall on a busy CI machine from
						// failing it (the full run reports every error)
						b.logf("round %d %-16s %-9s error, retrying once: %v", r, s.key, p.name, err)
						time.Sleep(3 * time.Second)
						m, err = s.run(b, p)
					}
					res := result{Round: r, Proxy: p.name, Scenario: s.key, Metrics: m}
					if err != nil {
						res.Error = err.Error()
						b.logf("round %d %-16s %-9s ERROR %v", r, s.key, p.name, err)
					} else {
						b.logf("round %d %-16s %-9s %s", r, s.key, p.name, fmtMetrics(m))
					}
					results = append(results, res)
				}
			}
		}
		for _, p := range proxies {
			stop(p.cmd)
		}
	}

	var namesRes []result
	var namesSkipped []string
	if want("names") {
		for _, n := range names {
			set, err := loadNamesSet(b.cache, n, b.logf)
			kinds, skipped := namesProxies(proxyList, n, b.logf)
			if b.quick && slices.Contains(kinds, "gatehouse") {
				// the smoke run keeps its length: gatehouse alone (the
				// others' names configs are checked by go test ./bench/driver)
				for _, k := range kinds[1:] {
					skipped = append(skipped, fmt.Sprintf("%s (--quick)", k))
				}
				kinds = kinds[:1]
			}
			for _, sk := range skipped {
				namesSkipped = append(namesSkipped, fmt.Sprintf("%d names: %s", n, sk))
			}
			for _, kind := range kinds {
				var m map[string]float64
				if err == nil {
					m, err = b.namesRun(kind, set, perRoute)
				}
				res := result{Proxy: kind, Scenario: fmt.Sprintf("names-%d", n), Metrics: m}
				if err != nil {
					res.Error = err.Error()
					b.logf("names %d %s ERROR %v", n, kind, err)
					if set != nil {
						err = nil // the next proxy runs
					}
				} else {
					b.logf("names %d %s %s", n, kind, fmtMetrics(m))
				}
				namesRes = append(namesRes, res)
			}
		}
	}

	if b.profile && runScen {
		b.profileScenarios(scens, want, certs)
	}

	all := append(results, namesRes...)
	js, _ := json.MarshalIndent(all, "", "  ")
	_ = os.WriteFile(filepath.Join(b.out, "results.json"), js, 0o644)
	table := b.report(scens, proxies, results, namesRes, namesSkipped, perRoute)
	_ = os.WriteFile(filepath.Join(b.out, "results.md"), []byte(table), 0o644)
	fmt.Print(table)
	b.logf("results in %s", b.out)
	for _, r := range all {
		if r.Error != "" {
			return 1
		}
	}
	return 0
}

func rotate(ps []*proxy, k int) []*proxy {
	if len(ps) == 0 {
		return nil
	}
	k %= len(ps)
	return append(append([]*proxy{}, ps[k:]...), ps[:k]...)
}

func fmtMetrics(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s=%s ", k, num(m[k]))
	}
	return sb.String()
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10 || v <= -10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func spawnUpstream(work, binDir string, extra ...string) (string, error) {
	cmd := exec.Command("taskset", append([]string{"-c", "1", filepath.Join(binDir, "upstream"), "-addr", "127.0.0.1:0"}, extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	logName := "upstream.log"
	if len(extra) > 0 {
		logName = "upstream" + strings.TrimLeft(extra[0], "-") + ".log"
	}
	f, _ := os.Create(filepath.Join(work, logName))
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		return "", err
	}
	started.Lock()
	started.procs = append(started.procs, cmd)
	started.Unlock()
	return readFirstLine(stdout, 10*time.Second)
}

func newHTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: false, MaxIdleConnsPerHost: 2}}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report prints, per scenario and metric, each proxy's median over the
// rounds and, for the metrics compared with nginx, the ratio of medians
// and the per-round ratios (round r of a proxy against round r of nginx).
func (b *bench) report(scens []*scenario, proxies []*proxy, results, namesRes []result, namesSkipped []string, perRoute bool) string {
	var sb strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&sb, "\n# gatehouse bench — %s, %s, %d CPUs (%s), %s\n\n", time.Now().Format("2006-01-02 15:04"), host, runtime.NumCPU(), cpuModel(), goVersion())
	fmt.Fprintf(&sb, "rounds %d, throughput runs %s, latency runs %s, idle connections %d; proxy on CPU 0, load + upstream on CPU 1; medians over rounds; ratio = proxy ÷ nginx (per round in brackets)\n\n",
		b.rounds, b.dur, b.latDur, b.idleN)
	sched := "nice 19"
	if b.floodSched == "idle" {
		sched = "SCHED_IDLE"
	}
	fmt.Fprintf(&sb, "floods (hostile, partial): 2 threads pinned to CPUs %s, %s\n\n", b.floodCPUs, sched)
	fmt.Fprintf(&sb, "load average (1/5/15 min) at start %s, at end %s: other work on the machine skews latency more than CPU per operation\n\n", b.loadStart, loadavg())
	get := func(scen, proxy, metric string) (vals []float64, byRound map[int]float64) {
		byRound = map[int]float64{}
		for _, r := range results {
			if r.Scenario == scen && r.Proxy == proxy && r.Error == "" {
				if v, ok := r.Metrics[metric]; ok {
					vals = append(vals, v)
					byRound[r.Round] = v
				}
			}
		}
		return
	}
	for _, s := range scens {
		has := false
		for _, r := range results {
			if r.Scenario == s.key {
				has = true
			}
		}
		if !has {
			continue
		}
		fmt.Fprintf(&sb, "## %s — %s\n\n", s.key, s.title)
		fmt.Fprintf(&sb, "| metric |")
		var ps []*proxy
		for _, p := range proxies {
			if s.runs(p.name) {
				ps = append(ps, p)
				fmt.Fprintf(&sb, " %s |", p.name)
			}
		}
		fmt.Fprintf(&sb, "\n|---|%s\n", strings.Repeat("---|", len(ps)))
		for _, m := range s.metrics {
			fmt.Fprintf(&sb, "| %s |", m.unit)
			for _, p := range ps {
				v, _ := get(s.key, p.name, m.key)
				if len(v) == 0 {
					sb.WriteString(" – |")
					continue
				}
				fmt.Fprintf(&sb, " %s |", num(median(v)))
			}
			sb.WriteString("\n")
			if m.ratio && s.only == "" {
				nv, nr := get(s.key, s.base(), m.key)
				if len(nv) == 0 {
					continue
				}
				fmt.Fprintf(&sb, "| ↳ ÷ %s |", s.base())
				for _, p := range ps {
					v, br := get(s.key, p.name, m.key)
					if len(v) == 0 || median(nv) == 0 {
						sb.WriteString(" – |")
						continue
					}
					var per []string
					for r := 1; r <= b.rounds; r++ {
						if a, ok := br[r]; ok {
							if n, ok := nr[r]; ok && n != 0 {
								per = append(per, num(a/n))
							}
						}
					}
					fmt.Fprintf(&sb, " %s× [%s] |", num(median(v)/median(nv)), strings.Join(per, " "))
				}
				sb.WriteString("\n")
			}
		}
		var errs []string
		for _, r := range results {
			if r.Scenario == s.key && r.Error != "" {
				errs = append(errs, fmt.Sprintf("round %d %s: %s", r.Round, r.Proxy, r.Error))
			}
		}
		if len(errs) > 0 {
			fmt.Fprintf(&sb, "\nerrors: %s\n", strings.Join(errs, "; "))
		}
		sb.WriteString("\n")
	}
	// derived comparisons inside one proxy
	var extra []string
	for _, p := range proxies {
		if hs, _ := get("hs-ecdsa", p.name, "cpu_us"); len(hs) > 0 {
			if ho, _ := get("hostile", p.name, "cpu_us"); len(ho) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | hostile CPU per refused conn ÷ good handshake | %s× |", p.name, num(median(ho)/median(hs))))
			}
			if ho, _ := get("partial", p.name, "cpu_us"); len(ho) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | CPU per handshake that never finishes ÷ good handshake | %s× |", p.name, num(median(ho)/median(hs))))
			}
		}
		if l, _ := get("latency", p.name, "p99_us"); len(l) > 0 {
			if hl, _ := get("hostile-latency", p.name, "p99_us"); len(hl) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | good-traffic p99 with hostile load ÷ without | %s× |", p.name, num(median(hl)/median(l))))
			}
			if hl, _ := get("partial-latency", p.name, "p99_us"); len(hl) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | good-traffic p99 beside handshakes that never finish ÷ without | %s× |", p.name, num(median(hl)/median(l))))
			}
			if s, _ := get("latency", p.name, "svc_p99_us"); len(s) > 0 {
				for _, k := range []string{"hostile-latency", "partial-latency"} {
					if hs, _ := get(k, p.name, "svc_p99_us"); len(hs) > 0 {
						extra = append(extra, fmt.Sprintf("| %s | %s p99 from the write ÷ latency's | %s× |", p.name, k, num(median(hs)/median(s))))
					}
				}
			}
		}
		if h3, _ := get("h3", p.name, "cpu_us"); len(h3) > 0 {
			if h2, _ := get("h2", p.name, "cpu_us"); len(h2) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | HTTP/3 CPU per request ÷ HTTP/2 | %s× |", p.name, num(median(h3)/median(h2))))
			}
		}
		if h3, _ := get("h3-hs", p.name, "cpu_us"); len(h3) > 0 {
			if hs, _ := get("hs-ecdsa", p.name, "cpu_us"); len(hs) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | QUIC handshake CPU ÷ TCP+TLS handshake | %s× |", p.name, num(median(h3)/median(hs))))
			}
			if ho, _ := get("h3-hostile", p.name, "cpu_us"); len(ho) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | refused QUIC Initial CPU ÷ good QUIC handshake | %s× |", p.name, num(median(ho)/median(h3))))
			}
		}
		if mk, _ := get("hs-mlkem", p.name, "cpu_us"); len(mk) > 0 {
			if hs, _ := get("hs-ecdsa", p.name, "cpu_us"); len(hs) > 0 {
				extra = append(extra, fmt.Sprintf("| %s | X25519MLKEM768 handshake CPU ÷ X25519 | %s× (+%s µs) |", p.name, num(median(mk)/median(hs)), num(median(mk)-median(hs))))
			}
		}
	}
	if len(extra) > 0 {
		sb.WriteString("## within each proxy\n\n| proxy | comparison | value |\n|---|---|---|\n")
		sb.WriteString(strings.Join(extra, "\n") + "\n\n")
	}
	namesReport(&sb, namesRes, namesSkipped, perRoute)
	return sb.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func goVersion() string { return runtime.Version() }

// --- profiling (gatehouse built with -tags gatehouse_pprof) ---

// fetchProfile fetches a CPU profile of d seconds from the pprof
// listener in the background; the channel closes when it is saved.
func (b *bench) fetchProfile(name string, d time.Duration, _ bool) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.savePprof(name+".cpu.pb.gz", fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())), d+30*time.Second)
	}()
	return done
}

func (b *bench) fetchHeap(name string) {
	// the text form first, before the profile's collection: it ends with
	// runtime.MemStats (heap in use, idle, released; stacks; spans), what
	// RSS holds beside the live objects
	b.savePprof(name+".heap.txt", "/debug/pprof/heap?debug=1", 30*time.Second)
	b.savePprof(name+".heap.pb.gz", "/debug/pprof/heap?gc=1", 30*time.Second)
}

func (b *bench) savePprof(file, path string, limit time.Duration) {
	dir := filepath.Join(b.out, "profiles")
	_ = os.MkdirAll(dir, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var res *http.Response
	var err error
	for i := 0; i < 50; i++ { // the listener may not be up yet at process start
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+b.pprofAddr+path, nil)
		if res, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.logf("profile %s: %v", file, err)
		return
	}
	defer res.Body.Close()
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		return
	}
	_, _ = io.Copy(f, res.Body)
	f.Close()
	// a text summary beside it
	kind := "-top"
	out, err := exec.Command("go", "tool", "pprof", kind, "-nodecount=45", b.gatehousePprofBin, filepath.Join(dir, file)).CombinedOutput()
	if err == nil {
		_ = os.WriteFile(filepath.Join(dir, strings.TrimSuffix(file, ".pb.gz")+".top.txt"), out, 0o644)
	}
	if strings.HasSuffix(file, ".heap.pb.gz") {
		out, err := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=45", b.gatehousePprofBin, filepath.Join(dir, file)).CombinedOutput()
		if err == nil {
			_ = os.WriteFile(filepath.Join(dir, strings.TrimSuffix(file, ".pb.gz")+".inuse.top.txt"), out, 0o644)
		}
	}
}

// profileScenarios runs each scenario once more against the pprof
// build of gatehouse, taking a CPU profile over the load (a heap
// profile for the idle connections).
func (b *bench) profileScenarios(scens []*scenario, want func(string) bool, certs string) {
	pp, _ := freePort()
	b.pprofAddr = "127.0.0.1:" + strconv.Itoa(pp)
	p, err := gatehouseProxy(b.work, b.gatehousePprofBin, "gatehouse-pprof", certs, b.upstream, []string{"GATEHOUSE_PPROF=" + b.pprofAddr})
	if err != nil {
		b.logf("profile: %v", err)
		return
	}
	p.name = "gatehouse"
	if err := p.start(); err != nil {
		b.logf("profile: %v", err)
		return
	}
	defer func() { stop(p.cmd) }()
	for _, s := range scens {
		if !want(s.key) {
			continue
		}
		if s.restart {
			stop(p.cmd)
			if err := p.start(); err != nil {
				b.logf("profile: %v", err)
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
		if s.key == "idle" {
			b.afterSettle = func() { b.fetchHeap("idle") }
			_, err := s.run(b, p)
			b.afterSettle = nil
			b.logf("profiled %s (heap) %v", s.key, err)
			continue
		}
		d := b.dur
		if strings.Contains(s.key, "latency") {
			d = b.latDur
		}
		done := b.fetchProfile(s.key, d-time.Second, false)
		var traced chan struct{}
		if strings.Contains(s.key, "latency") {
			// and an execution trace of a few seconds inside it: `go tool
			// trace -pprof=sched` says what a goroutine waited for while
			// runnable (the scheduler's share of a request's latency)
			traced = make(chan struct{})
			go func() {
				defer close(traced)
				time.Sleep(d / 2)
				b.savePprof(s.key+".trace", "/debug/pprof/trace?seconds=3", 40*time.Second)
			}()
		}
		_, err := s.run(b, p)
		<-done
		if traced != nil {
			<-traced
		}
		b.logf("profiled %s %v", s.key, err)
	}
	b.fetchHeap("after-all")
}
