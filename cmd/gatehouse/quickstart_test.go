package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// gatehouse run --from NAME --to URL, without a config file: a name no
// public CA signs (localhost) gets a certificate from the internal CA
// at once, and requests reach the upstream.
func TestQuickStart(t *testing.T) {
	up := upstream(t, "A")
	storage := t.TempDir()
	p := startProcessArgs(t, []string{"GATEHOUSE_STORAGE_DIR=" + storage},
		"run", "--from", "localhost", "--to", strings.TrimPrefix(up.URL, "http://"),
		"--https", "127.0.0.1:0", "--http", "", "--admin", "")
	var roots *x509.CertPool
	testkit.WaitFor(t, 10*time.Second, "internal root written", func() error {
		pem, err := os.ReadFile(filepath.Join(storage, "pki", "root.crt"))
		if err != nil {
			return err
		}
		roots = x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		return nil
	})
	testkit.WaitFor(t, 10*time.Second, "localhost served through the quick start", func() error {
		c := client(p.https, roots, true)
		c.Transport.(interface{ CloseIdleConnections() }).CloseIdleConnections()
		res, err := c.Get("https://localhost/")
		if err != nil {
			return err
		}
		if body := readAll(t, res); !strings.HasPrefix(body, "upstream=A") {
			t.Errorf("body %q", body)
		}
		return nil
	})
}
