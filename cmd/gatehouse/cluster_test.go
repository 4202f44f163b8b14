package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Helpers for tests that run gatehouse replicas as real processes: one
// binary built from this package, several processes with the same config
// and one etcd, each on its own loopback address (127.0.0.1, .2, .3 ...)
// with the same ports, so that Pebble's VA, which dials one port per
// challenge type, reaches whichever replica the test DNS names.

// buildGatehouse builds this command into a temp dir, bounded in time.
func buildGatehouse(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gatehouse")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sharedPorts finds n ports free on every one of ips (loopback addresses;
// on Linux all of 127.0.0.0/8 answers without setup). The kernel cannot
// pick one port for several addresses, and a port it picked for ":0"
// and that was released again is handed to the next ":0" listener or
// outgoing connection of any process (CI saw a replica's admin port
// taken that way between the check and the replica's start). So the
// ports are drawn below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), where no ":0" bind lands, and checked
// free on every address.
func sharedPorts(t *testing.T, ips []string, n int) []int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	from := max(10000, low-12000)
	if low-from < 1000 {
		t.Skipf("ephemeral port range starts at %d: no room below it for ports chosen by the test", low)
	}
	var ports []int
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt > 200 {
			t.Fatalf("no port in %d-%d free on all of %v after 200 tries", from, low-1, ips)
		}
		p := from + rand.IntN(low-from)
		if slices.Contains(ports, p) {
			continue
		}
		ok := true
		var held []net.Listener
		for _, ip := range ips {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p))
			if err != nil {
				ok = false
				break
			}
			held = append(held, l)
		}
		for _, l := range held {
			l.Close()
		}
		if ok {
			ports = append(ports, p)
		}
	}
	return ports
}

// cluster is a test world for replicas: etcd, DNS, Pebble, the binary.
type cluster struct {
	t                              *testing.T
	bin                            string
	etcd                           *etcdtest.Server
	dns                            *acmetest.DNS
	pebble                         *acmetest.Pebble
	roots                          *x509.CertPool
	ips                            []string
	httpsPort, httpPort, adminPort int
	upstream                       string
}

func newCluster(t *testing.T, ips []string, popts acmetest.PebbleOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, ips: ips}
	c.bin = buildGatehouse(t)
	c.etcd = etcdtest.Start(t, etcdtest.Options{})
	ports := sharedPorts(t, ips, 3)
	c.httpsPort, c.httpPort, c.adminPort = ports[0], ports[1], ports[2]
	dns, err := acmetest.StartDNS(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dns.Close)
	c.dns = dns
	popts.HTTPPort, popts.TLSPort, popts.DNSAddr = c.httpPort, c.httpsPort, dns.Addr()
	p, err := acmetest.StartPebble(popts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c.pebble = p
	if c.roots, err = p.Roots(); err != nil {
		t.Fatal(err)
	}
	c.upstream = upstream(t, "app").URL
	return c
}

// config writes the config of the replica on ip: same store and routes
// for every replica, listeners on ip.
func (c *cluster) config(ip string, names []string, acmeExtra, storageExtra string) string {
	c.t.Helper()
	var routes strings.Builder
	for _, n := range names {
		fmt.Fprintf(&routes, "\n[[route]]\nhosts = [%q]\nupstream = %q\n", n, c.upstream)
	}
	text := fmt.Sprintf(`
[listen]
https = "%[1]s:%[2]d"
http  = "%[1]s:%[3]d"
admin = "%[1]s:%[4]d"

[log]
format = "json"

[acme]
email     = "ops@example.test"
directory = %[5]q
ca_root   = %[6]q
resolver  = %[11]q   # the self-check resolves like Pebble's VA
http_challenge_port = %[3]d
tls_challenge_port  = %[2]d
%[7]s

[storage]
backend   = "etcd"
endpoints = [%[8]q]
prefix    = "cluster/"
%[9]s
%[10]s`, ip, c.httpsPort, c.httpPort, c.adminPort, c.pebble.DirectoryURL, c.pebble.CACertFile,
		acmeExtra, c.etcd.URL, storageExtra, routes.String(), c.dns.Addr())
	p := filepath.Join(c.t.TempDir(), "gatehouse-"+ip+".toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// replica is one gatehouse process.
type replica struct {
	t       *testing.T
	ip      string
	https   string
	admin   string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// start runs the binary with cfgPath and waits until its admin port
// answers /healthz.
func (c *cluster) start(ip, cfgPath string) *replica {
	c.t.Helper()
	r := c.launch(ip, cfgPath)
	r.waitHealthy()
	return r
}

// launch runs the binary with cfgPath without waiting for it.
func (c *cluster) launch(ip, cfgPath string) *replica {
	c.t.Helper()
	r := &replica{t: c.t, ip: ip, https: fmt.Sprintf("%s:%d", ip, c.httpsPort),
		admin:   fmt.Sprintf("http://%s:%d", ip, c.adminPort),
		logPath: filepath.Join(c.t.TempDir(), "replica-"+ip+".log"), exited: make(chan struct{})}
	logf, err := os.Create(r.logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	r.cmd = exec.Command(c.bin, "run", "--config", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.t.TempDir()}
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatal(err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	c.t.Cleanup(func() {
		r.kill()
		if c.t.Failed() {
			c.t.Logf("replica %s log tail:\n%s", ip, r.tail(3000))
		}
		// GATEHOUSE_TEST_KEEP_LOGS=DIR keeps every replica's full log.
		if dir := os.Getenv("GATEHOUSE_TEST_KEEP_LOGS"); dir != "" {
			b, _ := os.ReadFile(r.logPath)
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", c.t.Name(), ip, time.Now().UnixNano())), b, 0o600)
		}
	})
	return r
}

// waitHealthy waits until the replica's /healthz answers.
func (r *replica) waitHealthy() {
	r.t.Helper()
	testkit.WaitFor(r.t, 15*time.Second, "replica "+r.ip+" /healthz", func() error {
		select {
		case <-r.exited:
			return fmt.Errorf("exited: %v\n%s", r.waitErr, r.tail(3000))
		default:
		}
		res, err := http.Get(r.admin + "/healthz")
		if err != nil {
			return err
		}
		res.Body.Close()
		return nil
	})
}

// kill sends SIGKILL (a crash) and waits for the process to go.
func (r *replica) kill() {
	if r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		r.t.Errorf("replica %s did not exit 5s after SIGKILL", r.ip)
	}
}

// stop sends SIGTERM (a rolling restart) and waits, bounded.
func (r *replica) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		r.t.Errorf("replica %s did not exit 30s after SIGTERM", r.ip)
		r.kill()
	}
}

func (r *replica) tail(n int) string {
	b, _ := os.ReadFile(r.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// logLine is one JSON log record; certmagic's fields are in its group.
type logLine struct {
	Time      time.Time      `json:"time"`
	Msg       string         `json:"msg"`
	Name      string         `json:"name"`
	Certmagic map[string]any `json:"certmagic"`
}

func (l logLine) cm(key string) string {
	v, _ := l.Certmagic[key].(string)
	return v
}

// logs returns the replica's JSON log records so far.
func (r *replica) logs() []logLine {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg != "" {
			out = append(out, l)
		}
	}
	return out
}

// find returns the first record matching f, if any.
func (r *replica) find(f func(logLine) bool) (logLine, bool) {
	for _, l := range r.logs() {
		if f(l) {
			return l, true
		}
	}
	return logLine{}, false
}

// readyz returns the replica's /readyz status code and body.
func (r *replica) readyz() (int, map[string]any, error) {
	cl := &http.Client{Timeout: 5 * time.Second}
	res, err := cl.Get(r.admin + "/readyz")
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return res.StatusCode, nil, err
	}
	return res.StatusCode, body, nil
}

// storageUp reads /readyz's storage.up.
func (r *replica) storageUp() (bool, error) {
	_, body, err := r.readyz()
	if err != nil {
		return false, err
	}
	detail, _ := body["detail"].(map[string]any)
	st, _ := detail["storage"].(map[string]any)
	up, ok := st["up"].(bool)
	if !ok {
		return false, fmt.Errorf("no detail.storage.up in /readyz: %v", body)
	}
	return up, nil
}

// metric returns the value line of a metric without labels from /metrics.
func (r *replica) metric(name string) (string, error) {
	cl := &http.Client{Timeout: 5 * time.Second}
	res, err := cl.Get(r.admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("%s not in /metrics", name)
}

// tarpit accepts connections on addr and never answers, counting them:
// a validation that reaches it hangs until the CA gives up.
type tarpit struct {
	mu    sync.Mutex
	n     int
	conns []net.Conn
	lns   []net.Listener
}

func startTarpit(t *testing.T, addrs ...string) *tarpit {
	tp := &tarpit{}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		tp.lns = append(tp.lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				tp.mu.Lock()
				tp.n++
				tp.conns = append(tp.conns, c)
				tp.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		for _, l := range tp.lns {
			l.Close()
		}
		for _, c := range tp.conns {
			c.Close()
		}
	})
	return tp
}

func (tp *tarpit) hits() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.n
}
