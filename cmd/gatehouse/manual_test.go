package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// manualEnv is a test world without a CA server: gatehouse's listeners,
// and certificates from a local test CA written to cert/key files that
// routes name (cert = / key =). Tests about forwarding and reloading
// use it: no ACME order to wait for.
type manualEnv struct {
	*env
	ca   *acmetest.TestCA
	dir  string
	path string // the config file; rewritten in place for reloads
	logs *logBuffer

	certs map[string][2]string // name -> cert, key files, issued once
}

func newManualEnv(t *testing.T) *manualEnv {
	t.Helper()
	ca, err := acmetest.NewTestCA("gatehouse test root")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, storage: filepath.Join(t.TempDir(), "storage")}
	e.bind()
	e.roots = ca.Pool()
	dir := t.TempDir()
	return &manualEnv{env: e, ca: ca, dir: dir, path: filepath.Join(dir, "gatehouse.toml"), logs: &logBuffer{t: t}, certs: map[string][2]string{}}
}

// cert issues a certificate for names and writes it to files named
// after the first name; it returns their paths and the leaf.
func (m *manualEnv) cert(names ...string) (certFile, keyFile string, leaf *x509.Certificate) {
	m.t.Helper()
	certPEM, keyPEM, leaf, err := m.ca.Issue(names, "", 0)
	if err != nil {
		m.t.Fatal(err)
	}
	certFile = filepath.Join(m.dir, names[0]+".crt")
	keyFile = filepath.Join(m.dir, names[0]+".key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		m.t.Fatal(err)
	}
	return certFile, keyFile, leaf
}

// route returns a [[route]] for name with a certificate of its own
// (issued at the first call for name, the same files after).
func (m *manualEnv) route(name, upstream, extra string) string {
	f, ok := m.certs[name]
	if !ok {
		f[0], f[1], _ = m.cert(name)
		m.certs[name] = f
	}
	c, k := f[0], f[1]
	return fmt.Sprintf("\n[[route]]\nhosts = [%q]\nupstream = %q\ncert = %q\nkey = %q\n%s\n", name, upstream, c, k, extra)
}

// write (re)writes the config file with the given [timeouts] lines and routes.
func (m *manualEnv) write(timeouts, routesTOML string) {
	m.t.Helper()
	text := fmt.Sprintf("[listen]\nhttps = %q\nhttp = %q\nadmin = %q\n\n[storage]\ndir = %q\n\n[timeouts]\n%s\n%s",
		m.httpsLn.Addr(), m.httpLn.Addr(), m.admLn.Addr(), m.storage, timeouts, routesTOML)
	// write and rename, as careful tools do: the watcher never sees half a file
	tmp := m.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, m.path); err != nil {
		m.t.Fatal(err)
	}
}

// run starts gatehouse on the config file, logging into the test and
// into m.logs; the file is polled every 100 ms.
func (m *manualEnv) run(opts ...func(*startOptions)) *instance {
	m.t.Helper()
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testkit.LogWriter(m.t), m.logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return m.start(m.path, append([]func(*startOptions){func(o *startOptions) {
		o.logger = log
		o.watchEvery = 100 * time.Millisecond
	}}, opts...)...)
}

// logBuffer keeps gatehouse's log lines for assertions.
type logBuffer struct {
	t testing.TB
	testkit.SyncBuffer
}

// count returns how many log lines contain every one of subs.
func (l *logBuffer) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// waitLog waits until some log line contains every one of subs.
func (l *logBuffer) waitLog(t testing.TB, limit time.Duration, subs ...string) {
	t.Helper()
	testkit.WaitFor(t, limit, "log line with "+strings.Join(subs, " & "), func() error {
		if l.count(subs...) == 0 {
			return fmt.Errorf("not logged")
		}
		return nil
	})
}

// waitCount waits (bounded) until exactly want lines contain every one
// of subs: a log line can be seen after what it reports (it is written
// after the change, and a child's log comes through a pipe).
func (l *logBuffer) waitCount(t testing.TB, limit time.Duration, want int, subs ...string) {
	t.Helper()
	testkit.WaitFor(t, limit, fmt.Sprintf("%d log lines with %s", want, strings.Join(subs, " & ")), func() error {
		if n := l.count(subs...); n != want {
			return fmt.Errorf("%d lines", n)
		}
		return nil
	})
}

// tcpUpstream is a Postgres-like raw TCP server: it echoes every byte
// it receives and, once the client half-closes, answers with a summary
// ("summary: N bytes") and closes: an answer that can only arrive if
// the client's end-of-stream got through and the way back stayed open.
func tcpUpstream(t testing.TB) string {
	t.Helper()
	return serveTCP(t, time.Minute, func(c net.Conn) {
		n, err := io.Copy(c, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "summary: %d bytes\n", n)
	})
}

// lineConn exchanges newline-terminated messages over a connection.
type lineConn struct {
	net.Conn
	r *bufio.Reader
}

func newLineConn(c net.Conn) *lineConn { return &lineConn{Conn: c, r: bufio.NewReader(c)} }

// roundTrip sends msg and reads the echoed line back, within limit.
func (c *lineConn) roundTrip(msg string, limit time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(limit))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// dialTLSConfig connects to addr with a full client config.
func dialTLSConfig(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 3 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, cfg)
}
