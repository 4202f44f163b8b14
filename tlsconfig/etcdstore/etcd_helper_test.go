package etcdstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// etcdBinary is where Debian's etcd-server package installs the server.
const etcdBinary = "/usr/bin/etcd"

// etcdHealthWait bounds how long a started etcd may take to become
// healthy; it is ready in about a second on loopback.
const etcdHealthWait = 10 * time.Second

// etcdOpts tunes a test server.
type etcdOpts struct {
	// tls, when set, serves clients over https with these files and
	// requires client certificates signed by ca.
	tls *tlsFiles
}

type tlsFiles struct{ ca, serverCert, serverKey string }

// etcdProc is a running test etcd.
type etcdProc struct {
	url  string
	stop func() // kills it; safe to call more than once
}

// startEtcd runs a throwaway single-member etcd on 127.0.0.1 with its
// data in a test temp dir and returns its client URL. It is killed when
// the test ends. A missing binary fails the test (CI must install
// etcd-server) unless GATEHOUSE_SKIP_ETCD=1, which skips etcd-backed tests.
func startEtcd(t *testing.T, opts etcdOpts) *etcdProc {
	t.Helper()
	if os.Getenv("GATEHOUSE_SKIP_ETCD") == "1" {
		t.Skip("GATEHOUSE_SKIP_ETCD=1: skipping test that needs a real etcd")
	}
	if _, err := os.Stat(etcdBinary); err != nil {
		t.Fatalf("%s not found (%v): install it with `apt-get install -y etcd-server` (or run .ci/start-etcd.sh), or set GATEHOUSE_SKIP_ETCD=1 to skip etcd tests", etcdBinary, err)
	}
	// A port picked by listening on :0 can be taken by someone else before
	// etcd binds it; try a few fresh pairs.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := tryStartEtcd(t, opts)
		if err == nil {
			return p
		}
		lastErr = err
		t.Logf("etcd start attempt %d: %v", attempt+1, err)
	}
	t.Fatalf("etcd did not start: %v", lastErr)
	return nil
}

func tryStartEtcd(t *testing.T, opts etcdOpts) (*etcdProc, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if opts.tls != nil {
		scheme = "https"
	}
	clientURL := fmt.Sprintf("%s://127.0.0.1:%d", scheme, clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	dir := t.TempDir()
	args := []string{
		"--name", "test",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test=" + peerURL,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	if opts.tls != nil {
		args = append(args,
			"--cert-file", opts.tls.serverCert,
			"--key-file", opts.tls.serverKey,
			"--trusted-ca-file", opts.tls.ca,
			"--client-cert-auth")
	}
	logPath := filepath.Join(dir, "etcd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(etcdBinary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// No ETCD_* variables from the environment may change the setup.
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", etcdBinary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				t.Errorf("etcd (pid %d) did not exit 5s after SIGKILL", cmd.Process.Pid)
			}
			logFile.Close()
		})
	}
	logTail := func() string {
		b, _ := os.ReadFile(logPath)
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		return string(b)
	}

	// Health: plain HTTP GET /health on the client port (over TLS, just
	// wait for the port: the health endpoint would need a client cert).
	httpClient := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(etcdHealthWait)
	for i := 0; ; i++ {
		select {
		case err := <-exited:
			exited <- err
			stop()
			return nil, fmt.Errorf("etcd exited early (%v); log:\n%s", err, logTail())
		default:
		}
		if healthy(httpClient, clientURL, clientPort, opts.tls != nil) {
			break
		}
		if time.Now().After(deadline) || i >= 200 {
			stop()
			return nil, fmt.Errorf("etcd not healthy within %s; log:\n%s", etcdHealthWait, logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return &etcdProc{url: clientURL, stop: stop}, nil
}

func healthy(c *http.Client, url string, port int, tls bool) bool {
	if tls {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 500*time.Millisecond)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode == http.StatusOK && strings.Contains(b.String(), `"health":"true"`)
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// newTestStorage connects a Storage to url with a short LockTTL and
// closes it at the end of the test.
func newTestStorage(t *testing.T, url string, mod func(*Config)) *Storage {
	t.Helper()
	cfg := Config{
		Endpoints:      []string{url},
		Prefix:         "test/",
		DialTimeout:    5 * time.Second,
		RequestTimeout: 5 * time.Second,
		LockTTL:        2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testCtx is a context bounded well below the package test timeout, so a
// hang fails one test with a clear message.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
