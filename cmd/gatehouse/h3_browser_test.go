package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTool returns the path of a tool a test drives; without it the
// test skips on a developer's machine and fails in CI, where test.sh
// installs it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found: test.sh installs it in CI", name)
		}
		t.Skipf("%s not installed (./test.sh installs it)", name)
	}
	return p
}

// A real browser loads a page through gatehouse over HTTP/3: headless
// Chromium, made to use QUIC for the origin, trusting the test CA
// through its NSS database, reports the protocol it used
// (PerformanceNavigationTiming.nextHopProtocol) into the page, which
// the test reads from the DOM Chromium dumps.
func TestHTTP3Chromium(t *testing.T) {
	chromium := needTool(t, "chromium")
	certutil := needTool(t, "certutil")
	e := newCAEnv(t)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<!doctype html><title>h3</title><p id=p>pending</p>
<script>document.getElementById("p").textContent = "protocol=" + performance.getEntriesByType("navigation")[0].nextHopProtocol;</script>`)
	}))
	t.Cleanup(page.Close)
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n%s", page.URL, e.certFor("a.test"))))
	_, port, _ := strings.Cut(e.httpsAddr(), ":")

	home := t.TempDir()
	nss := filepath.Join(home, ".pki", "nssdb")
	caFile := filepath.Join(home, "ca.pem")
	if err := os.MkdirAll(nss, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, e.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-d", "sql:" + nss, "-N", "--empty-password"},
		{"-d", "sql:" + nss, "-A", "-t", "C,,", "-n", "gatehouse-test", "-i", caFile},
	} {
		if out, err := exec.Command(certutil, args...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %v: %v\n%s", args, err, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	origin := "a.test:" + port
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(home, "profile"),
		"--host-resolver-rules=MAP a.test 127.0.0.1",
		"--enable-quic", "--origin-to-force-quic-on="+origin,
		"--virtual-time-budget=5000", "--dump-dom", "https://"+origin+"/")
	cmd.Env = append(os.Environ(), "HOME="+home)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if !strings.Contains(string(out), "protocol=h3") {
		t.Fatalf("Chromium did not load the page over HTTP/3; DOM:\n%s", out)
	}
}
