package tlsconfig

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// A wildcard certificate (ordered by DNS-01) that another replica
// obtains, then renews, reaches this replica's handshakes for names
// under it within the sync interval, while this replica's own order is
// held by its self-check (the DNS hook fails, and says why).
func TestStoreSyncWildcard(t *testing.T) {
	dir := t.TempDir()
	hook := filepath.Join(dir, "hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho 'zone API down' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := routes.Parse([]byte(fmt.Sprintf(`
[acme]
email      = "ops@example.test"
directory  = "https://127.0.0.1:1/dir"
challenges = ["dns-01"]
[acme.dns]
provider = "exec"
command  = [%q]
zone     = "sync.test."
[storage]
dir = %q
sync_interval = "1s"
[[route]]
hosts    = ["*.sync.test"]
upstream = "http://127.0.0.1:1"
`, hook, filepath.Join(dir, "store"))))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "own order held by the self-check", func() error {
		for _, st := range m.Status() {
			if st.Name == "*.sync.test" && strings.Contains(st.LastError, "zone API down") {
				return nil
			}
		}
		return fmt.Errorf("status %+v", m.Status())
	})
	m.mu.RLock()
	issuerKey := m.byName["*.sync.test"].Issuers[0].IssuerKey()
	m.mu.RUnlock()
	ca, err := acmetest.NewTestCA("peer CA")
	if err != nil {
		t.Fatal(err)
	}
	peer := &certmagic.FileStorage{Path: filepath.Join(dir, "store")}
	first := plant(t, peer, issuerKey, "*.sync.test", ca)
	waitFor(t, 6*time.Second, "wildcard certificate obtained by the peer served", func() error {
		s, err := servedSerial(m, table, "a.sync.test")
		if err != nil {
			return err
		}
		if s != first.SerialNumber.Text(16) {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
	for time.Now().Truncate(time.Second).Equal(first.NotBefore) {
		time.Sleep(100 * time.Millisecond)
	}
	renewed := plant(t, peer, issuerKey, "*.sync.test", ca)
	waitFor(t, 6*time.Second, "wildcard certificate renewed by the peer served", func() error {
		s, err := servedSerial(m, table, "b.sync.test")
		if err != nil {
			return err
		}
		if s != renewed.SerialNumber.Text(16) {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
}
