package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	nameEC  = "ec.bench.test"  // ECDSA P-256 certificate
	nameRSA = "rsa.bench.test" // RSA-2048 certificate
	// nameUp is an ECDSA P-256 name whose route goes to the nginx
	// upstream (bulk-nginx-up) instead of the bench's own
	nameUp = "nginxup.bench.test"
	// nameTLSUp routes to the TLS upstream (h1-tls-up), nameH2CUp to
	// the h2c upstream (h2-h2c-up); nameUpstreamTLS is the name in the
	// TLS upstream's certificate (which also holds IP 127.0.0.1)
	nameTLSUp       = "tlsup.bench.test"
	nameH2CUp       = "h2cup.bench.test"
	nameUpstreamTLS = "upstream.bench.test"
)

// tlsUpstream and h2cUpstream are the addresses of the bench's upstream
// behind TLS (verified against the bench CA, certs/ca.crt) and speaking
// cleartext HTTP/2; every proxy routes nameTLSUp and nameH2CUp to them.
var tlsUpstream, h2cUpstream = "127.0.0.1:9", "127.0.0.1:9"

// nginxUpstream is the address of the nginx upstream serving /1m from a
// file with sendfile (bulk-nginx-up); every proxy routes nameUp to it.
var nginxUpstream string

// proxy is one proxy under test: started once, pinned to CPU 0, serving
// nameEC and nameRSA with the same certificates and upstream as the
// others, on its own loopback port.
type proxy struct {
	name string
	port int
	cmd  *exec.Cmd
	env  []string
	bin  string
	args []string
	log  string
}

func (p *proxy) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }
func (p *proxy) pid() int     { return p.cmd.Process.Pid }

// freePort asks the kernel for a loopback port and releases it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (p *proxy) start() error {
	cmd, err := spawn("0", p.env, p.log, p.bin, p.args...)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	p.cmd = cmd
	// serving means: a handshake for nameEC succeeds
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", p.addr(),
			&tls.Config{ServerName: nameEC, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			return fmt.Errorf("%s did not serve within 30 s: %v; log: %s", p.name, err, lastLines(string(b), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Each config keeps its proxy's defaults except where a benchmark of a
// production setup would not: keep-alive to the upstream, logging off,
// limits above the bench's connection counts, one worker/thread (the
// proxy has one CPU), unknown SNI refused.

func nginxProxy(work, certs, upstream string) (*proxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "nginx")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	serverLoc := func(name, loc string) string {
		return fmt.Sprintf(`
    server {
        listen 127.0.0.1:%d ssl http2;
        server_name %s;
        ssl_certificate %s/%s.crt;
        ssl_certificate_key %s/%s.key;
        location / {%s
        }
    }`, port, name, certs, name, certs, name, loc)
	}
	server := func(name, up string) string {
		return serverLoc(name, fmt.Sprintf(`
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;`, up))
	}
	// https:// upstream: keep-alive and TLS session reuse, verified
	tlsServer := serverLoc(nameTLSUp, fmt.Sprintf(`
            proxy_pass https://uptls;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate %s/ca.crt;
            proxy_ssl_name %s;
            proxy_ssl_server_name on;`, certs, nameUpstreamTLS))
	// h2c:// upstream: the grpc module speaks HTTP/2 with prior
	// knowledge to its upstream, for any request (h2-h2c-up)
	h2cServer := serverLoc(nameH2CUp, `
            grpc_pass grpc://uph2c;
            grpc_set_header Host $host;
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            grpc_set_header X-Forwarded-Proto $scheme;`)
	conf := fmt.Sprintf(`
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 18000; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream up {
        server %[2]s;
        keepalive 256;
    }
    upstream upng {
        server %[6]s;
        keepalive 256;
    }
    upstream uptls {
        server %[7]s;
        keepalive 256;
    }
    upstream uph2c {
        server %[8]s;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:%[3]d ssl default_server;
        ssl_reject_handshake on;
    }%[4]s%[5]s
}
`, dir, upstream, port, server(nameEC, "up"), server(nameRSA, "up")+server(nameUp, "upng")+tlsServer+h2cServer, nginxUpstream, tlsUpstream, h2cUpstream)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return &proxy{name: "nginx", port: port, bin: "nginx", args: []string{"-p", dir, "-c", path},
		log: filepath.Join(dir, "stderr.log")}, nil
}

func haproxyProxy(work, certs, upstream string) (*proxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "haproxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var list string
	for _, n := range []string{nameEC, nameRSA, nameUp, nameTLSUp, nameH2CUp} {
		list += fmt.Sprintf("%s/%s.pem %s\n", certs, n, n)
	}
	if err := os.WriteFile(filepath.Join(dir, "crt-list"), []byte(list), 0o644); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`
global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 60s
    timeout http-keep-alive 600s
    option forwardfor
frontend fe
    bind 127.0.0.1:%d ssl crt-list %s/crt-list strict-sni alpn h2,http/1.1
    use_backend be_ng if { ssl_fc_sni %[3]s }
    use_backend be_tls if { ssl_fc_sni %[6]s }
    use_backend be_h2c if { ssl_fc_sni %[7]s }
    default_backend be
backend be
    http-reuse always
    server up %[4]s
backend be_ng
    http-reuse always
    server upng %[5]s
backend be_tls
    http-reuse always
    server uptls %[8]s ssl verify required ca-file %[10]s/ca.crt sni str(%[11]s) verifyhost %[11]s alpn http/1.1
backend be_h2c
    http-reuse always
    server uph2c %[9]s proto h2
`, port, dir, nameUp, upstream, nginxUpstream, nameTLSUp, nameH2CUp, tlsUpstream, h2cUpstream, certs, nameUpstreamTLS)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return &proxy{name: "haproxy", port: port, bin: "haproxy", args: []string{"-db", "-f", path},
		log: filepath.Join(dir, "stderr.log")}, nil
}

func caddyProxy(work, certs, upstream string) (*proxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "caddy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	site := func(name, upstream string) string {
		return fmt.Sprintf(`
https://%s:%d {
    tls %s/%s.crt %s/%s.key
    reverse_proxy %s
}
`, name, port, certs, name, certs, name, upstream)
	}
	conf := fmt.Sprintf(`{
    admin off
    auto_https off
    default_bind 127.0.0.1
    servers {
        protocols h1 h2 h3
        timeouts {
            idle 10m
        }
    }
}
%s%s%s%s%s`, site(nameEC, upstream), site(nameRSA, upstream), site(nameUp, nginxUpstream),
		site(nameTLSUp, fmt.Sprintf(`https://%s {
        transport http {
            tls_trusted_ca_certs %s/ca.crt
            tls_server_name %s
        }
    }`, tlsUpstream, certs, nameUpstreamTLS)),
		site(nameH2CUp, "h2c://"+h2cUpstream))
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	env := []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}
	return &proxy{name: "caddy", port: port, bin: "caddy", env: env, args: []string{"run", "--config", path, "--adapter", "caddyfile"},
		log: filepath.Join(dir, "stderr.log")}, nil
}

// gatehouseProxy configures gatehouse with manual-certificate routes.
// env may carry GATEHOUSE_PPROF for the profiling build.
func gatehouseProxy(work, bin, name, certs, upstream string, env []string) (*proxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`
[listen]
https = "127.0.0.1:%d"
http  = ""
admin = ""
# the hostile load comes from one address: with the per-source limits on
# it would be reset at accept, which nginx and HAProxy (configured with no
# such limit) do not do; off, the scenarios measure the refusal itself
source_limits = false

[storage]
dir = %q

[log]
level = "warn"

[timeouts]
idle = "10m"

[[route]]
hosts    = [%q]
cert     = "%s/%s.crt"
key      = "%s/%s.key"
upstream = "http://%s"

[[route]]
hosts    = [%q]
cert     = "%s/%s.crt"
key      = "%s/%s.key"
upstream = "http://%s"

[[route]]
hosts    = [%q]
cert     = "%s/%s.crt"
key      = "%s/%s.key"
upstream = "http://%s"

[[route]]
hosts       = [%q]
cert        = "%s/%s.crt"
key         = "%s/%s.key"
upstream    = "https://%s"
upstream_ca = "%s/ca.crt"

[[route]]
hosts    = [%q]
cert     = "%s/%s.crt"
key      = "%s/%s.key"
upstream = "h2c://%s"
`, port, filepath.Join(dir, "storage"), nameEC, certs, nameEC, certs, nameEC, upstream,
		nameRSA, certs, nameRSA, certs, nameRSA, upstream,
		nameUp, certs, nameUp, certs, nameUp, nginxUpstream,
		nameTLSUp, certs, nameTLSUp, certs, nameTLSUp, tlsUpstream, certs,
		nameH2CUp, certs, nameH2CUp, certs, nameH2CUp, h2cUpstream)
	path := filepath.Join(dir, "gatehouse.toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return &proxy{name: name, port: port, bin: bin, env: env, args: []string{"run", "--config", path},
		log: filepath.Join(dir, "stderr.log")}, nil
}

// namesConfig writes a gatehouse config routing every name of a
// many-names storage tree, ACME-managed (certificates already in
// storage, CA unreachable). perRoute puts each name in its own
// [[route]]; otherwise one route lists all names.
func namesConfig(dir, storage string, names []string, perRoute bool, port, admin int, upstream string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, `
[listen]
https = "127.0.0.1:%d"
http  = ""
admin = "127.0.0.1:%d"

[acme]
email      = "ops@bench.test"
directory  = %q
challenges = ["tls-alpn-01"]

[storage]
dir = %q

[log]
level = "warn"
`, port, admin, namesDirectory, storage)
	if perRoute {
		for _, n := range names {
			fmt.Fprintf(&b, "\n[[route]]\nhosts = [%q]\nupstream = \"http://%s\"\n", n, upstream)
		}
	} else {
		b.WriteString("\n[[route]]\nhosts = [\n")
		for _, n := range names {
			fmt.Fprintf(&b, "  %q,\n", n)
		}
		fmt.Fprintf(&b, "]\nupstream = \"http://%s\"\n", upstream)
	}
	path := filepath.Join(dir, "gatehouse-names.toml")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}
