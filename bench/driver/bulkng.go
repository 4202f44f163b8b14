package main

// bulk-nginx-up: the shape of issue 15's point 5. An nginx upstream
// (one worker, pinned to CPU 1 beside the load) serves a 1 MiB file
// with sendfile; wrk fetches it over HTTP/1.1 keep-alive with 8
// connections through each proxy (SNI nameUp, routed to that upstream).

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// spawnNginxUpstream starts nginx as a plaintext upstream on CPU 1
// serving dir/www/1m (1 MiB) with sendfile, keep-alive without a
// request limit, and returns its address.
func spawnNginxUpstream(work string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(work, "nginx-up")
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(www, 0o755); err != nil {
		return "", err
	}
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = 'x'
	}
	body[len(body)-1] = '\n'
	if err := os.WriteFile(filepath.Join(www, "1m"), body, 0o644); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    default_type text/plain;
    server {
        listen 127.0.0.1:%[2]d default_server;
        root %[3]s;
    }
}
`, dir, port, www)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", err
	}
	cmd, err := spawn("1", nil, filepath.Join(dir, "stderr.log"), "nginx", "-p", dir, "-c", path)
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return addr, nil
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
			return "", fmt.Errorf("nginx upstream did not listen within 10 s: %s", lastLines(string(b), 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wrkScript sends every connection to the proxy's loopback address
// while the URL's host (SNI and Host) stays nameUp, and prints wrk's
// summary as one JSON line.
const wrkScript = `
local target = os.getenv("BENCH_CONNECT_PORT")
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", target)
end
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format('{"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
      summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
`

type wrkOut struct {
	Requests   int64 `json:"requests"`
	Bytes      int64 `json:"bytes"`
	DurationUs int64 `json:"duration_us"`
	Connect    int64 `json:"connect"`
	Read       int64 `json:"read"`
	Write      int64 `json:"write"`
	Status     int64 `json:"status"`
	Timeout    int64 `json:"timeout"`
}

// bulkNginxUp runs wrk -t1 -c8 for b.dur against p, GET /1m on nameUp,
// and reports MiB/s and the proxy's CPU per GiB.
func (b *bench) bulkNginxUp(p *proxy) (map[string]float64, error) {
	script := filepath.Join(b.work, "wrk-bench.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return nil, err
	}
	url := fmt.Sprintf("https://%s:%d/1m", nameUp, p.port)
	var out []byte
	os.Setenv("BENCH_CONNECT_PORT", fmt.Sprint(p.port))
	cpu, wall, err := measure(p, func() error {
		var err error
		out, err = runLoad(b.dur+30*time.Second, false, "wrk", "-t1", "-c8", "--timeout", "10s", "-d", secs(b.dur)+"s", "-s", script, url)
		return err
	})
	if err != nil {
		return nil, err
	}
	var r wrkOut
	var parsed bool
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &r) == nil {
			parsed = true
		}
	}
	if !parsed {
		return nil, fmt.Errorf("cannot read wrk output: %s", lastLines(string(out), 8))
	}
	// a response is 1 MiB plus a head: a short or failed one is an error
	if r.Requests == 0 || r.Status > 0 || r.Bytes < r.Requests<<20 {
		return nil, fmt.Errorf("wrk: %d responses, %d bytes, %d non-2xx: %s", r.Requests, r.Bytes, r.Status, lastLines(string(out), 8))
	}
	secsRun := float64(r.DurationUs) / 1e6
	gib := float64(r.Requests) / 1024 // 1 MiB bodies
	return map[string]float64{
		"mib_s":      float64(r.Requests) / secsRun,
		"cpu_ms_gib": cpu / gib * 1000,
		"cpu_pct":    cpu / wall * 100,
		"failures":   float64(r.Connect + r.Read + r.Write + r.Timeout),
	}, nil
}
