// Package testkit holds the helpers gatehouse's tests share across
// packages (a logger into the test output, a bounded wait, a storage
// that counts its reads, ...). Only _test.go files import it.
package testkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestLogger writes a logger's lines (debug and up) into the test's
// output, shown on failure. Lines logged after the test ended (by
// goroutines still winding down) are dropped: testing panics on a Log
// after the test is done.
func TestLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// LogWriter is TestLogger's writer, for a handler that also writes
// elsewhere (io.MultiWriter with a buffer the test searches).
func LogWriter(t testing.TB) io.Writer {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// WaitPoll is how often WaitFor asks.
const WaitPoll = 50 * time.Millisecond

// WaitFor asks cond every WaitPoll until it returns nil, and fails the
// test with what and cond's last error when limit passes first. It is
// bounded in time (limit) and in count (limit/WaitPoll+1 asks, so a cond
// that returns at once cannot spin). It returns how long it took.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	return WaitSince(t, time.Now(), limit, what, cond)
}

// WaitSince is WaitFor with the limit counted from since (an event that
// happened before the wait began); it returns the time since then.
func WaitSince(t testing.TB, since time.Time, limit time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	tries := int((limit-time.Since(since))/WaitPoll) + 1
	for i := 0; ; i++ {
		err := cond()
		if err == nil {
			return time.Since(since)
		}
		if i >= tries || time.Since(since) > limit {
			t.Fatalf("%s: not within %s: %v", what, limit, err)
		}
		time.Sleep(WaitPoll)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a log
// handler's output read by the test).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ServedSerial handshakes with addr for name, verifying the chain
// against roots (nil: no verification), and returns the served
// certificate's serial in hex.
func ServedSerial(addr, name string, roots *x509.CertPool) (string, error) {
	c, err := DialTLS(addr, name, roots)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

// DialTLS handshakes with addr for name (SNI), offering alpn, verifying
// the chain against roots (nil: no verification); the dial is bounded
// by 3 s.
func DialTLS(addr, name string, roots *x509.CertPool, alpn ...string) (*tls.Conn, error) {
	cfg := &tls.Config{ServerName: name, RootCAs: roots, NextProtos: alpn, InsecureSkipVerify: roots == nil}
	d := &net.Dialer{Timeout: 3 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, cfg)
}

// ReadTree returns every regular file under root by slash path.
func ReadTree(t testing.TB, root string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// ReadOnly bind-mounts dir read-only over itself and returns the
// function that makes it writable again (also run at cleanup); it skips
// the test where mounting is not allowed.
func ReadOnly(t testing.TB, dir string) (writable func()) {
	t.Helper()
	if out, err := exec.Command("mount", "--bind", dir, dir).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount (needs root with CAP_SYS_ADMIN): %v %s", err, out)
	}
	var once sync.Once
	umount := func() error {
		var err error
		once.Do(func() {
			if out, uerr := exec.Command("umount", dir).CombinedOutput(); uerr != nil {
				err = fmt.Errorf("umount %s: %v %s", dir, uerr, out)
			}
		})
		return err
	}
	t.Cleanup(func() { _ = umount() })
	// a file held open for writing at that instant (a save, the storage
	// probe) makes the remount fail with "busy": try again, a bounded
	// number of times
	for i := 0; ; i++ {
		out, err := exec.Command("mount", "-o", "remount,bind,ro", dir).CombinedOutput()
		if err == nil {
			break
		}
		if i == 50 || !strings.Contains(string(out), "busy") {
			t.Fatalf("remount read-only: %v %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o600); err == nil {
		t.Fatalf("%s is still writable after the read-only remount", dir)
	}
	return func() {
		t.Helper()
		if err := umount(); err != nil {
			t.Fatal(err)
		}
	}
}

// CountingStorage is a real certmagic.Storage that counts the loads of
// each key, and can hold the private-key loads of one name until
// released (to line up concurrent first handshakes).
type CountingStorage struct {
	certmagic.Storage

	mu      sync.Mutex
	loads   map[string]int
	holdFor string        // name whose private-key loads wait on release
	release chan struct{} // closed to let them go
}

// NewCountingStorage counts the loads from s.
func NewCountingStorage(s certmagic.Storage) *CountingStorage {
	return &CountingStorage{Storage: s, loads: map[string]int{}}
}

// isPrivateKey: certmagic's site private keys (certificates/<issuer>/<name>/<name>.key).
func isPrivateKey(key string) bool {
	return strings.HasPrefix(key, "certificates/") && strings.HasSuffix(key, ".key")
}

func (s *CountingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	s.loads[key]++
	hold, release := s.holdFor, s.release
	s.mu.Unlock()
	if hold != "" && isPrivateKey(key) && strings.HasSuffix(key, "/"+hold+".key") {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Storage.Load(ctx, key)
}

// Hold makes the private-key loads of name wait until the returned
// function is called (once).
func (s *CountingStorage) Hold(name string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.holdFor, s.release = name, ch
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// Loads counts the loads of key.
func (s *CountingStorage) Loads(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads[key]
}

// LoadsOf counts the loads of keys that mention name.
func (s *CountingStorage) LoadsOf(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, c := range s.loads {
		if strings.Contains(k, name) {
			n += c
		}
	}
	return n
}

// KeyLoads counts the loads of certificates' private keys (only a load
// into the certificate cache reads one).
func (s *CountingStorage) KeyLoads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, c := range s.loads {
		if isPrivateKey(k) {
			n += c
		}
	}
	return n
}

// ClientHello returns the first record (the ClientHello) Go's default
// TLS client sends for name.
func ClientHello(t testing.TB, name string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() { _ = tls.Client(a, &tls.Config{ServerName: name}).Handshake() }()
	defer a.Close()
	defer b.Close()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
	copy(rec, hdr)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}
