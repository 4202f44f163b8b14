// Package etcdtest runs a real, throwaway etcd server for tests: Debian's
// etcd-server binary, single member, on 127.0.0.1 with kernel-picked
// ports and its data in a test temp dir. It can be stopped (SIGKILL) and
// started again on the same ports and data, to test what clients do while
// the store is gone.
package etcdtest

import (
	"bytes"
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

// Binary is where Debian's etcd-server package installs the server.
const Binary = "/usr/bin/etcd"

// healthWait bounds how long a started etcd may take to become healthy;
// it is ready in about a second on loopback.
const healthWait = 10 * time.Second

// Options tune a test server.
type Options struct {
	// TLS, when set, serves clients over https with these files and
	// requires client certificates signed by CA.
	TLS *TLSFiles
}

// TLSFiles are the PEM files of a TLS-serving etcd.
type TLSFiles struct{ CA, ServerCert, ServerKey string }

// Server is a running (or stopped) test etcd.
type Server struct {
	// URL is the client URL, http://127.0.0.1:PORT (https with TLS).
	URL string

	t          testing.TB
	args       []string
	clientPort int
	tls        bool
	logPath    string

	mu   sync.Mutex
	stop func()
}

// Start runs an etcd and returns it healthy; it is killed when the test
// ends. A missing binary fails the test (CI must install etcd-server)
// unless GATEHOUSE_SKIP_ETCD=1, which skips etcd-backed tests.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if os.Getenv("GATEHOUSE_SKIP_ETCD") == "1" {
		t.Skip("GATEHOUSE_SKIP_ETCD=1: skipping test that needs a real etcd")
	}
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("%s not found (%v): install it with `apt-get install -y etcd-server` (./test.sh does), or set GATEHOUSE_SKIP_ETCD=1 to skip etcd tests", Binary, err)
	}
	// A port picked by listening on :0 can be taken by someone else before
	// etcd binds it; try a few fresh pairs.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := newServer(t, opts)
		if err == nil {
			err = s.run()
		}
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		lastErr = err
		t.Logf("etcd start attempt %d: %v", attempt+1, err)
	}
	t.Fatalf("etcd did not start: %v", lastErr)
	return nil
}

func newServer(t testing.TB, opts Options) (*Server, error) {
	clientPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if opts.TLS != nil {
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
	if opts.TLS != nil {
		args = append(args,
			"--cert-file", opts.TLS.ServerCert,
			"--key-file", opts.TLS.ServerKey,
			"--trusted-ca-file", opts.TLS.CA,
			"--client-cert-auth")
	}
	return &Server{URL: clientURL, t: t, args: args, clientPort: clientPort, tls: opts.TLS != nil,
		logPath: filepath.Join(dir, "etcd.log")}, nil
}

// run starts the process and waits until it is healthy.
func (s *Server) run() error {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(Binary, s.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// No ETCD_* variables from the environment may change the setup.
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", Binary, err)
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
				s.t.Errorf("etcd (pid %d) did not exit 5s after SIGKILL", cmd.Process.Pid)
			}
			logFile.Close()
		})
	}

	// Health: plain HTTP GET /health on the client port (over TLS, just
	// wait for the port: the health endpoint would need a client cert).
	httpClient := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(healthWait)
	for i := 0; ; i++ {
		select {
		case err := <-exited:
			exited <- err
			stop()
			return fmt.Errorf("etcd exited early (%v); log:\n%s", err, s.logTail())
		default:
		}
		if healthy(httpClient, s.URL, s.clientPort, s.tls) {
			break
		}
		if time.Now().After(deadline) || i >= 200 {
			stop()
			return fmt.Errorf("etcd not healthy within %s; log:\n%s", healthWait, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
	return nil
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// Stop kills the server (SIGKILL, like a crash or a lost machine); its
// data stays for Restart. Safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Restart starts a stopped server again on the same ports and data and
// waits until it is healthy; the test fails if it cannot.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	// The same ports: another process may take them meanwhile, which
	// would fail the start; try a few times.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = s.run(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("etcd restart: %v", err)
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

// FreePort asks the kernel for a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
