package acmetest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Bind is a real BIND 9 (Debian's named) authoritative server on
// 127.0.0.1, for DNS-01 tests: RFC 2136 updates signed with a TSIG key,
// and Pebble's VA pointed at it.
type Bind struct {
	// Addr is "127.0.0.1:PORT", UDP and TCP.
	Addr string
	// KeyName and Secret (base64) are the TSIG key allowed to update the
	// zones listed in BindOptions.Updatable.
	KeyName, Secret string
	// Dir holds named.conf, the zone files and named's journal.
	Dir string

	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	once   sync.Once
}

// BindOptions configures StartBind.
type BindOptions struct {
	// Zones are served as primary. Each gets SOA, NS ns1.<zone> (A
	// 127.0.0.1), and A 127.0.0.1 for the apex and "*".
	Zones []string
	// Updatable lists the zones the TSIG key may update; the others
	// refuse updates (REFUSED).
	Updatable []string
	// Extra holds more zone-file lines per zone (key as in Zones).
	Extra map[string]string
}

// NeedNamed skips t when BIND is not installed, except in CI (CI=true),
// where ./test.sh installs it and its absence fails the test.
func NeedNamed(t testing.TB) {
	t.Helper()
	if NamedPath() != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("named (bind9) is not installed: ./test.sh installs it in CI")
	}
	t.Skip("named (bind9) not installed: apt-get install bind9 bind9-dnsutils")
}

// NamedPath returns the path of named, or "" when BIND is not installed.
func NamedPath() string {
	for _, p := range []string{"named", "/usr/sbin/named"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	return ""
}

// StartBind starts named in the foreground on a free loopback port and
// waits (at most 15 s) until it answers for every zone. Call Close.
func StartBind(o BindOptions) (*Bind, error) {
	named := NamedPath()
	if named == "" {
		return nil, errors.New("acmetest: named not found (apt-get install bind9)")
	}
	dir, err := os.MkdirTemp("", "acmetest-bind-")
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	b := &Bind{KeyName: "gatehouse-test.", Secret: base64.StdEncoding.EncodeToString(secret), Dir: dir,
		stderr: &lockedBuffer{}, done: make(chan struct{})}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	updatable := map[string]bool{}
	for _, z := range o.Updatable {
		updatable[dns.Fqdn(z)] = true
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, `options {
	directory %q;
	pid-file %q;
	session-keyfile %q;
	managed-keys-directory %q;
	listen-on port %d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	allow-query { any; };
	notify no;
	dnssec-validation no;
};
controls { };
key %q { algorithm hmac-sha256; secret %q; };
`, dir, filepath.Join(dir, "named.pid"), filepath.Join(dir, "session.key"), dir, port, b.KeyName, b.Secret)
	for _, z := range o.Zones {
		z = dns.Fqdn(z)
		file := filepath.Join(dir, strings.TrimSuffix(z, ".")+".db")
		zone := fmt.Sprintf(`$TTL 60
@ IN SOA ns1.%[1]s hostmaster.%[1]s 1 60 60 600 5
@ IN NS ns1.%[1]s
ns1 IN A 127.0.0.1
@ IN A 127.0.0.1
* IN A 127.0.0.1
%[2]s
`, z, o.Extra[strings.TrimSuffix(z, ".")])
		if err := os.WriteFile(file, []byte(zone), 0o644); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		update := "none"
		if updatable[z] {
			update = fmt.Sprintf("key %q", b.KeyName)
		}
		fmt.Fprintf(&conf, "zone %q { type primary; file %q; allow-update { %s; }; };\n", strings.TrimSuffix(z, "."), file, update)
	}
	confFile := filepath.Join(dir, "named.conf")
	if err := os.WriteFile(confFile, []byte(conf.String()), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b.cmd = exec.Command(named, "-g", "-n", "1", "-4", "-c", confFile)
	b.cmd.Stderr = b.stderr
	b.cmd.Stdout = b.stderr
	if err := b.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("acmetest: starting named: %w", err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for _, z := range o.Zones {
		for {
			if err := b.soa(z); err == nil {
				break
			} else if time.Now().After(deadline) {
				b.Close()
				return nil, fmt.Errorf("acmetest: named not answering for %s within 15s: %v; its log:\n%s", z, err, b.Log())
			}
			select {
			case <-b.done:
				b.Close()
				return nil, fmt.Errorf("acmetest: named exited; its log:\n%s", b.Log())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return b, nil
}

func (b *Bind) soa(zone string) error {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(zone), dns.TypeSOA)
	c := dns.Client{Net: "tcp", Timeout: time.Second}
	r, _, err := c.Exchange(m, b.Addr)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return fmt.Errorf("SOA %s: %s", zone, dns.RcodeToString[r.Rcode])
	}
	return nil
}

// TXT returns the TXT values at name, asked over TCP.
func (b *Bind) TXT(name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	c := dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, b.Addr)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// Log returns what named wrote so far.
func (b *Bind) Log() string { return b.stderr.String() }

// Close stops named (at most shutdownTimeout, then kills it) and removes
// its directory.
func (b *Bind) Close() {
	b.once.Do(func() {
		if b.cmd != nil && b.cmd.Process != nil {
			_ = b.cmd.Process.Signal(os.Interrupt)
			select {
			case <-b.done:
			case <-time.After(shutdownTimeout):
				_ = b.cmd.Process.Kill()
				<-b.done
			}
		}
		os.RemoveAll(b.Dir)
	})
}

// freePort asks the kernel for a port free for TCP and UDP on 127.0.0.1
// (named needs the number; a small race with other processes remains).
func freePort() (int, error) {
	for attempt := 0; attempt < 20; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port, nil
	}
	return 0, errors.New("acmetest: no port free for both tcp and udp")
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
