// Command gatehouse-demo shows gatehouse's main job on this machine alone:
// it starts a real ACME CA (Pebble, in-process), a DNS server that points
// every name at 127.0.0.1, two sample upstream apps, and the real
// gatehouse binary with a config it writes; gatehouse obtains a
// certificate for each of two names by ACME and routes each to its app.
// It then prints curl commands to try, and waits for Ctrl-C.
//
// With --check it makes those requests itself and exits 0 or 1 (CI).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
)

func main() {
	httpsPort := flag.Int("https-port", 8443, "gatehouse https port on 127.0.0.1 (0: any free port)")
	httpPort := flag.Int("http-port", 8080, "gatehouse http port on 127.0.0.1 (ACME HTTP-01 and redirects)")
	bin := flag.String("gatehouse", "", "gatehouse binary (default: build ./cmd/gatehouse)")
	check := flag.Bool("check", false, "make the demo requests, print the results and exit")
	flag.Parse()
	if err := run(*httpsPort, *httpPort, *bin, *check); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(httpsPort, httpPort int, bin string, check bool) error {
	// port 0: pick free ports (Pebble must know them before gatehouse binds)
	for _, p := range []*int{&httpsPort, &httpPort} {
		if *p == 0 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			*p = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		}
	}
	dir, err := os.MkdirTemp("", "gatehouse-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if bin == "" {
		bin = filepath.Join(dir, "gatehouse")
		fmt.Println("building gatehouse ...")
		build := exec.Command("go", "build", "-o", bin, "github.com/gatehouse-proxy/gatehouse/cmd/gatehouse")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building gatehouse: %w", err)
		}
	}

	dns, err := acmetest.StartDNS(nil) // every name -> 127.0.0.1
	if err != nil {
		return err
	}
	defer dns.Close()
	pebble, err := acmetest.StartPebble(acmetest.PebbleOptions{HTTPPort: httpPort, TLSPort: httpsPort, DNSAddr: dns.Addr()})
	if err != nil {
		return err
	}
	defer pebble.Close()
	rootFile := filepath.Join(dir, "pebble-root.pem")
	if err := saveRoot(pebble, rootFile); err != nil {
		return err
	}

	apps := map[string]string{}
	for _, name := range []string{"app.test", "shop.test"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		name := name
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from the %s app (you asked for %s%s, over %s, from %s)\n",
				name, r.Host, r.URL.Path, r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-For"))
		}))
		apps[name] = "http://" + ln.Addr().String()
	}

	cfgPath := filepath.Join(dir, "gatehouse.toml")
	cfg := fmt.Sprintf(`# written by gatehouse-demo
[listen]
https = "127.0.0.1:%d"
http  = "127.0.0.1:%d"
admin = "127.0.0.1:0"

[acme]
email     = "demo@example.test"
directory = %q   # Pebble, a real ACME server, in-process
ca_root   = %q   # trust Pebble's own HTTPS
# before ordering, gatehouse checks each name leads back to it: through
# the demo's DNS, on the ports Pebble validates on (80/443 for real CAs)
resolver            = %q
http_challenge_port = %d
tls_challenge_port  = %d

[storage]
dir = %q

[[route]]
hosts    = ["app.test"]
upstream = %q

[[route]]
hosts    = ["shop.test"]
upstream = %q
`, httpsPort, httpPort, pebble.DirectoryURL, pebble.CACertFile, dns.Addr(), httpPort, httpsPort, filepath.Join(dir, "storage"), apps["app.test"], apps["shop.test"])
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	fmt.Printf("\nconfig (%s):\n%s\n", cfgPath, cfg)

	gh := exec.Command(bin, "run", "--config", cfgPath)
	gh.Stdout, gh.Stderr = os.Stderr, os.Stderr
	if err := gh.Start(); err != nil {
		return err
	}
	defer func() {
		_ = gh.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = gh.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = gh.Process.Kill()
		}
	}()

	roots, _ := pebble.Roots()
	names := []string{"app.test", "shop.test"}
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	for _, name := range names {
		if err := waitCert(addr, name, roots, 60*time.Second); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	fmt.Printf("\n== gatehouse has ACME certificates for %s, both on 127.0.0.1:%d ==\n\n", strings.Join(names, " and "), httpsPort)
	fmt.Println("Try (in another terminal):")
	for _, name := range names {
		fmt.Printf("  curl --cacert %s --resolve %s:%d:127.0.0.1 https://%s:%d/\n", rootFile, name, httpsPort, name, httpsPort)
	}
	fmt.Printf("  curl -v --resolve app.test:%d:127.0.0.1 http://app.test:%d/   # 308 to https\n", httpPort, httpPort)
	fmt.Printf("  openssl s_client -connect 127.0.0.1:%d -servername unknown.test   # unrecognized_name alert\n\n", httpsPort)

	if check {
		ok := true
		for _, name := range names {
			body, err := get(addr, name, roots)
			fmt.Printf("https://%s/ -> %q (err %v)\n", name, strings.TrimSpace(body), err)
			if err != nil || !strings.Contains(body, "the "+name+" app") {
				ok = false
			}
		}
		if !ok {
			return fmt.Errorf("check failed")
		}
		fmt.Println("demo check: PASS")
		return nil
	}
	fmt.Println("Ctrl-C to stop.")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}

func saveRoot(p *acmetest.Pebble, file string) error {
	res, err := p.HTTPClient().Get(p.ManagementURL + "/roots/0")
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if blk, _ := pem.Decode(b); blk == nil {
		return fmt.Errorf("pebble root: not PEM")
	}
	return os.WriteFile(file, b, 0o644)
}

func waitCert(addr, name string, roots *x509.CertPool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no certificate within %s: %w", limit, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(addr, name string, roots *x509.CertPool) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}}
	res, err := c.Get("https://" + name + "/")
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return string(b), err
}
