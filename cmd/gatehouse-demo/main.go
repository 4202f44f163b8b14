// Command gatehouse-demo shows gatehouse's main job on this machine alone:
// it starts a real ACME CA (Pebble, in-process), a DNS server that points
// every name at 127.0.0.1, two sample upstream apps, and the real
// gatehouse binary with a config it writes; gatehouse obtains a
// certificate for each of two names by ACME and routes each to its app.
// It then prints curl commands to try, and waits for Ctrl-C.
//
// With --check it makes those requests itself and exits 0 or 1 (CI).
//
// Everything it writes (config, storage, Pebble's files, the gatehouse
// binary it builds) goes into one temporary folder under $TMPDIR, removed
// on every exit: success, error, Ctrl-C or SIGTERM.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
)

const modulePath = "github.com/gatehouse-proxy/gatehouse"

// errInterrupted is a Ctrl-C (SIGINT) or SIGTERM before the demo was up.
var errInterrupted = errors.New("interrupted")

func main() {
	httpsPort := flag.Int("https-port", 8443, "gatehouse https port on 127.0.0.1 (0: any free port)")
	httpPort := flag.Int("http-port", 8080, "gatehouse http port on 127.0.0.1 (ACME HTTP-01 and redirects; 0: any free port)")
	bin := flag.String("gatehouse", "", "gatehouse binary (default: build it from the gatehouse source this demo comes from)")
	check := flag.Bool("check", false, "make the demo requests, print the results and exit")
	flag.Parse()

	// Signals become a cancelled context from the first moment, so every
	// wait below ends on Ctrl-C and the deferred clean-up runs.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sigs
		cancel()
	}()
	err := run(ctx, sigs, *httpsPort, *httpPort, *bin, *check)
	switch {
	case err == nil:
	case errors.Is(err, errInterrupted):
		fmt.Fprintln(os.Stderr, "demo: interrupted; stopped everything and removed its temporary files")
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// checkPort fails at once when a port the demo needs is taken, naming
// the demo's own flag to change it.
func checkPort(port int, flagName string) error {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("port %d is in use: pass --%s with a free port (or --%s 0 for any free port)", port, flagName, flagName)
		}
		return fmt.Errorf("cannot listen on 127.0.0.1:%d (%v): pass --%s with another port (or --%s 0 for any free port)", port, err, flagName, flagName)
	}
	ln.Close()
	return nil
}

func run(ctx context.Context, sigs <-chan os.Signal, httpsPort, httpPort int, bin string, check bool) error {
	// a taken port fails now, not after a minute of waiting on it
	for _, p := range []struct {
		port int
		flag string
	}{{httpsPort, "https-port"}, {httpPort, "http-port"}} {
		if p.port != 0 {
			if err := checkPort(p.port, p.flag); err != nil {
				return err
			}
		}
	}
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
	// Pebble's files, go build's work folders and gatehouse's temporary
	// files go in dir too, so the one RemoveAll above takes them all.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	os.Setenv("TMPDIR", tmp)

	if bin == "" {
		if bin, err = buildGatehouse(ctx, dir); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return errInterrupted
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
		defer ln.Close()
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

[ech]                  # Encrypted Client Hello: shop.test travels encrypted,
public_name = "app.test"   # observers see app.test

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
		return fmt.Errorf("starting %s: %w (pass --gatehouse with a gatehouse binary)", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = gh.Wait(); close(exited) }()
	defer func() {
		// SIGTERM drains; a second Ctrl-C, or 10 s, ends it at once
		_ = gh.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return
		case <-sigs:
		case <-time.After(10 * time.Second):
		}
		_ = gh.Process.Kill()
		<-exited
	}()

	roots, _ := pebble.Roots()
	names := []string{"app.test", "shop.test"}
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	fmt.Println("waiting for gatehouse to obtain certificates from Pebble (Ctrl-C stops the demo) ...")
	for _, name := range names {
		if err := waitCert(ctx, exited, addr, name, roots, 60*time.Second); err != nil {
			if errors.Is(err, errGatehouseExited) {
				return fmt.Errorf("gatehouse exited (%v) before it served %s: see its messages above", waitErr, name)
			}
			if errors.Is(err, errInterrupted) {
				return err
			}
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	fmt.Printf("\n== gatehouse has ACME certificates for %s, both on 127.0.0.1:%d ==\n\n", strings.Join(names, " and "), httpsPort)
	fmt.Println("Try (in another terminal):")
	for _, name := range names {
		fmt.Printf("  curl --cacert %s --resolve %s:%d:127.0.0.1 https://%s:%d/\n", rootFile, name, httpsPort, name, httpsPort)
	}
	fmt.Printf("  curl -v --resolve app.test:%d:127.0.0.1 http://app.test:%d/   # 308 to https\n", httpPort, httpPort)
	fmt.Printf("  openssl s_client -connect 127.0.0.1:%d -servername unknown.test   # unrecognized_name alert\n", httpsPort)
	echList, echErr := echConfigList(bin, cfgPath)
	if echErr == nil {
		fmt.Printf("  %s ech --config %s   # the ECH config and the DNS HTTPS records to publish\n", bin, cfgPath)
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		fmt.Printf("  HTTP/3 in a browser (trust %s in its NSS db first, certutil -A -d sql:$HOME/.pki/nssdb -t C,, -n pebble -i %s):\n"+
			"    %s --enable-quic --origin-to-force-quic-on=app.test:%d --host-resolver-rules='MAP *.test 127.0.0.1' https://app.test:%d/\n",
			rootFile, rootFile, p, httpsPort, httpsPort)
	} else {
		fmt.Printf("  HTTP/3: on UDP 127.0.0.1:%d (Alt-Svc announces it; Debian's curl has no HTTP/3, a browser or quic-go's client does)\n", httpsPort)
	}
	fmt.Println()

	if check {
		ok := true
		for _, name := range names {
			body, err := get(addr, name, roots)
			fmt.Printf("https://%s/ -> %q (err %v)\n", name, strings.TrimSpace(body), err)
			if err != nil || !strings.Contains(body, "the "+name+" app") {
				ok = false
			}
		}
		body, err := getH3(addr, "app.test", roots)
		fmt.Printf("https://app.test/ over HTTP/3 -> %q (err %v)\n", strings.TrimSpace(body), err)
		if err != nil || !strings.Contains(body, "the app.test app") {
			ok = false
		}
		if echErr != nil {
			fmt.Printf("gatehouse ech: %v\n", echErr)
			ok = false
		} else {
			body, outer, err := getECH(addr, "shop.test", roots, echList)
			fmt.Printf("https://shop.test/ with ECH -> %q, name in clear text: %s (err %v)\n", strings.TrimSpace(body), outer, err)
			if err != nil || !strings.Contains(body, "the shop.test app") {
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
	select {
	case <-ctx.Done():
		return nil // the way to stop it
	case <-exited:
		return fmt.Errorf("gatehouse exited (%v): see its messages above", waitErr)
	}
}

// buildGatehouse finds the gatehouse source this demo comes from and
// builds the binary into dir; from anywhere, not only from inside the
// repository. Without the source it takes a gatehouse installed beside
// the demo, or installs the demo's own released version with go install.
func buildGatehouse(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "gatehouse")
	if root := sourceRoot(); root != "" {
		fmt.Printf("building gatehouse from %s ...\n", root)
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/gatehouse")
		build.Dir = root
		return bin, runGo(ctx, build)
	}
	if exe, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(exe), "gatehouse")
		if st, err := os.Stat(beside); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			fmt.Printf("using %s\n", beside)
			return beside, nil
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Path == modulePath && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		fmt.Printf("installing gatehouse %s ...\n", bi.Main.Version)
		install := exec.CommandContext(ctx, "go", "install", modulePath+"/cmd/gatehouse@"+bi.Main.Version)
		install.Env = append(os.Environ(), "GOBIN="+dir)
		return bin, runGo(ctx, install)
	}
	return "", errors.New("cannot find the gatehouse source to build gatehouse from. Run the demo from the " +
		"repository: cd path/to/gatehouse && go run ./cmd/gatehouse-demo; or pass --gatehouse PATH to a built binary " +
		"(go build -o gatehouse ./cmd/gatehouse)")
}

// runGo runs a go build or install; Ctrl-C stops it (SIGINT, so it
// removes its own work folder) and is reported as errInterrupted.
func runGo(ctx context.Context, cmd *exec.Cmd) error {
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return errInterrupted
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("building gatehouse failed (go's messages above); or pass --gatehouse PATH to a built binary")
		}
		return fmt.Errorf("building gatehouse: %w: the demo needs the go command, or --gatehouse PATH to a built binary", err)
	}
	return nil
}

// sourceRoot is the root of the gatehouse module: the one the current
// directory is in, else the one this demo was compiled from (go run
// records absolute source paths unless -trimpath); "" if neither.
func sourceRoot() string {
	var candidates []string
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			candidates = append(candidates, d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		candidates = append(candidates, filepath.Dir(filepath.Dir(filepath.Dir(file))))
	}
	for _, d := range candidates {
		if isGatehouseModule(d) {
			return d
		}
	}
	return ""
}

// isGatehouseModule reports whether dir holds gatehouse's go.mod and
// the gatehouse command's source.
func isGatehouseModule(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			if strings.Trim(fields[1], `"`) != modulePath {
				return false
			}
			_, err := os.Stat(filepath.Join(dir, "cmd", "gatehouse", "main.go"))
			return err == nil
		}
	}
	return false
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

var errGatehouseExited = errors.New("gatehouse exited")

// waitCert waits until gatehouse serves name with a certificate roots
// trust: at most limit, and not past Ctrl-C or gatehouse exiting.
func waitCert(ctx context.Context, exited <-chan struct{}, addr, name string, roots *x509.CertPool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: &tls.Config{ServerName: name, RootCAs: roots}}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no certificate within %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-exited:
			return errGatehouseExited
		case <-time.After(200 * time.Millisecond):
		}
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

// echConfigList asks gatehouse for the ECH config list to encrypt to.
func echConfigList(bin, cfgPath string) ([]byte, error) {
	out, err := exec.Command(bin, "ech", "--config", cfgPath, "--json").Output()
	if err != nil {
		return nil, fmt.Errorf("gatehouse ech: %w", err)
	}
	var v struct {
		ConfigList string `json:"config_list"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(v.ConfigList)
}

// getECH fetches https://name/ with the real name encrypted (ECH); it
// returns the body and the name an observer sees.
func getECH(addr, name string, roots *x509.CertPool, list []byte) (string, string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}, EncryptedClientHelloConfigList: list,
	})
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	st := c.ConnectionState()
	if !st.ECHAccepted {
		return "", "", errors.New("ECH not accepted")
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return string(b), "app.test (the public name)", err
}

// getH3 fetches https://name/ over HTTP/3 (quic-go's client).
func getH3(addr, name string, roots *x509.CertPool) (string, error) {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, addr, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	res, err := c.Get("https://" + name + "/")
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return string(b), err
}
