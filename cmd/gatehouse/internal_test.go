package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// tls = "internal": names no public CA signs (localhost, an IP address,
// *.internal) get certificates from a local root gatehouse creates once
// in storage; clients that trust that root file verify the served chain.
func TestInternalIssuer(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "L")
	routesTOML := fmt.Sprintf(`
[[route]]
hosts    = ["localhost", "127.0.0.1", "*.app.internal"]
tls      = "internal"
upstream = %q
`, up.URL)
	in := e.start(e.config(routesTOML))

	rootFile := filepath.Join(e.storage, "pki", "root.crt")
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatalf("root certificate not at %s after start: %v", rootFile, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("%s holds no PEM certificate", rootFile)
	}
	for _, key := range []string{"pki/root.key", "pki/intermediate.key"} {
		fi, err := os.Stat(filepath.Join(e.storage, key))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", key, fi.Mode().Perm())
		}
	}

	// by name (SNI), verified against the root file
	var serial string
	testkit.WaitFor(t, 20*time.Second, "internal certificate for localhost", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "localhost", roots)
		if err != nil {
			return err
		}
		defer c.Close()
		st := c.ConnectionState()
		leaf := st.PeerCertificates[0]
		serial = leaf.SerialNumber.Text(16)
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 8*24*time.Hour || life < 6*24*time.Hour {
			return fmt.Errorf("leaf lifetime %s, want about 7 days", life)
		}
		if len(st.VerifiedChains) != 1 || len(st.VerifiedChains[0]) != 3 {
			return fmt.Errorf("chain %v: want leaf, intermediate, root", st.VerifiedChains)
		}
		return nil
	})

	// by IP address: Go sends no SNI for an IP, and checks the IP SAN
	_, portStr, _ := net.SplitHostPort(e.httpsAddr())
	ipAddr := net.JoinHostPort("127.0.0.1", portStr)
	testkit.WaitFor(t, 20*time.Second, "internal certificate for 127.0.0.1", func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", ipAddr, &tls.Config{RootCAs: roots})
		if err != nil {
			return err
		}
		return c.Close()
	})

	// a name under the *.app.internal pattern: one wildcard certificate
	testkit.WaitFor(t, 20*time.Second, "internal wildcard certificate", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "api.app.internal", roots)
		if err != nil {
			return err
		}
		defer c.Close()
		if names := c.ConnectionState().PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != "*.app.internal" {
			return fmt.Errorf("served names %v, want [*.app.internal]", names)
		}
		return nil
	})

	// requests reach the upstream by name and by IP
	for _, url := range []string{"https://localhost/", "https://" + ipAddr + "/", "https://api.app.internal/"} {
		res, err := client(e.httpsAddr(), roots, true).Get(url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if body := readAll(t, res); !strings.HasPrefix(body, "upstream=L") {
			t.Errorf("%s reached %q", url, body)
		}
	}
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command("curl", "-sS", "--max-time", "5", "--cacert", rootFile, "https://"+ipAddr+"/").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "upstream=L") {
			t.Errorf("curl --cacert root.crt https://%s/: %v\n%s", ipAddr, err, out)
		}
	}

	// no CA was asked
	for _, n := range []string{"localhost", "127.0.0.1", "*.app.internal"} {
		if got := e.pebble.OrderAttempts(n); got != 0 {
			t.Errorf("Pebble got %d orders for %s", got, n)
		}
	}

	// a restart keeps the root and serves the stored leaf
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.bind()
	e.start(e.config(routesTOML))
	again, err := os.ReadFile(rootFile)
	if err != nil || string(again) != string(rootPEM) {
		t.Fatalf("root changed across restart (err %v)", err)
	}
	testkit.WaitFor(t, 10*time.Second, "stored leaf after restart", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "localhost", roots)
		if err != nil {
			return err
		}
		defer c.Close()
		if got := c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); got != serial {
			return fmt.Errorf("serial %s after restart, want the stored %s", got, serial)
		}
		return nil
	})
}

// A reload moves a name between the public CA and the internal one, in
// both directions, without a restart.
func TestInternalReloadSwitch(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "S")
	acmeRoute := fmt.Sprintf("[[route]]\nhosts = [\"flip.test\"]\nupstream = %q\n", up.URL)
	in := e.start(e.config(acmeRoute))
	issuerOf := func() (string, error) {
		c, err := testkit.DialTLS(e.httpsAddr(), "flip.test", nil)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Issuer.CommonName, nil
	}
	until := func(what string, want func(string) bool) {
		t.Helper()
		testkit.WaitFor(t, 60*time.Second, what, func() error {
			cn, err := issuerOf()
			if err != nil {
				return err
			}
			if !want(cn) {
				return fmt.Errorf("issued by %q", cn)
			}
			return nil
		})
	}
	isInternal := func(cn string) bool { return strings.HasPrefix(cn, "gatehouse Local Intermediate") }
	until("ACME certificate", func(cn string) bool { return strings.Contains(cn, "Pebble") })

	internalRoute := strings.Replace(acmeRoute, "upstream", "tls = \"internal\"\nupstream", 1)
	if err := in.reload(e.config(internalRoute)); err != nil {
		t.Fatal(err)
	}
	until("internal certificate after reload", isInternal)

	if err := in.reload(e.config(acmeRoute)); err != nil {
		t.Fatal(err)
	}
	until("ACME certificate again after reload", func(cn string) bool { return strings.Contains(cn, "Pebble") })
	if n := e.pebble.Orders("flip.test"); n != 1 {
		t.Errorf("Pebble got %d orders for flip.test, want 1 (the stored one is served again)", n)
	}
}
