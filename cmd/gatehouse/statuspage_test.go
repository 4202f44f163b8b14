package main

import (
	"context"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
)

// statusWorld is a running gatehouse with what the status page and the
// alerts are about: certificates from Pebble with OCSP staples (ok.test,
// www.ok.test), a name whose orders fail (fail.test resolves to an
// address gatehouse does not listen on), and a route with one upstream
// down (nothing listens on it; its active health check fails).
type statusWorld struct {
	e     *env
	in    *instance
	admin string // host:port
	dead  string // the down upstream
}

func startStatusWorld(t *testing.T) *statusWorld {
	t.Helper()
	// newOCSPEnv, with two ACME profiles: the default (90 days) and a
	// six-day one that short.test orders
	responder, err := acmetest.StartOCSPResponder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(responder.Close)
	e := newEnv(t, acmetest.PebbleOptions{OCSPResponderURL: responder.URL(),
		Profiles: map[string]time.Duration{"default": 90 * 24 * time.Hour, "shortlived": 6 * 24 * time.Hour}})
	inter, key, err := e.pebble.IntermediateAndKey()
	if err != nil {
		t.Fatal(err)
	}
	responder.SetIssuer(inter, key)
	responder.SetStatusFunc(e.pebble.OCSPStatus)
	e.acmeExtra = `profile = "default"`
	e.dns.SetA("fail.test", "127.0.0.2")
	up := upstream(t, "A")
	w := &statusWorld{e: e, dead: "http://" + deadAddr(t)}
	w.in = e.start(e.config(fmt.Sprintf(`
[[route]]
hosts = ["ok.test", "www.ok.test"]
upstreams = [%q, %q]
health_path = "/"
health_interval = "200ms"

[[route]]
hosts = ["short.test"]
upstream = %q
profile = "shortlived"

[[route]]
hosts = ["fail.test"]
upstream = %q
`, up.URL, w.dead, up.URL, up.URL)), func(o *startOptions) { o.ocspInterval = 200 * time.Millisecond })
	w.admin = e.admLn.Addr().String()

	for _, name := range []string{"ok.test", "www.ok.test", "short.test"} {
		waitFor(t, 90*time.Second, "a stapled certificate for "+name, func() error {
			c, err := dialTLS(e.httpsAddr(), name, e.roots)
			if err != nil {
				return err
			}
			defer c.Close()
			if len(c.ConnectionState().OCSPResponse) == 0 {
				return fmt.Errorf("no staple yet")
			}
			return nil
		})
	}
	waitFor(t, 90*time.Second, "fail.test's failure and the down upstream", func() error {
		d := w.in.status(context.Background())
		failed := false
		for _, f := range d.Overview.Failures {
			failed = failed || f.Name == "fail.test"
		}
		down := false
		for _, r := range d.Routes {
			for _, u := range r.Upstreams {
				down = down || u.Address == w.dead && !u.Healthy
			}
		}
		staple := false
		for _, c := range d.Overview.Certificates {
			staple = staple || c.Name == "ok.test" && c.Staple != nil && c.Staple.Status == "good"
		}
		if !failed || !down || !staple {
			return fmt.Errorf("failure recorded %v, upstream down %v, staple stored %v", failed, down, staple)
		}
		return nil
	})
	// a refused handshake, for gatehouse_tls_handshake_failures_total
	if c, err := dialTLS(e.httpsAddr(), "unknown.test", nil); err == nil {
		c.Close()
		t.Fatal("a handshake for a name no route serves succeeded")
	}
	return w
}

// chromium runs Debian's headless Chromium with JavaScript off and
// returns its output.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (Debian chromium; test.sh installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// JavaScript off through the profile's content settings: the page's
	// scripts are blocked while --dump-dom still reads the DOM
	// (--blink-settings=scriptEnabled=false also stops --dump-dom, and
	// --disable-javascript is no switch of Chromium's).
	profile := t.TempDir()
	if err := os.MkdirAll(filepath.Join(profile, "Default"), 0o700); err != nil {
		t.Fatal(err)
	}
	prefs := `{"profile":{"default_content_setting_values":{"javascript":2}}}`
	if err := os.WriteFile(filepath.Join(profile, "Default", "Preferences"), []byte(prefs), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile, "--hide-scrollbars"}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// row returns the table row (<tr ...>...</tr>) of the DOM whose class
// starts with class and that contains text.
func row(dom, class, text string) string {
	re := regexp.MustCompile(`(?s)<tr class="` + regexp.QuoteMeta(class) + `[^"]*">.*?</tr>`)
	for _, r := range re.FindAllString(dom, -1) {
		if strings.Contains(r, text) {
			return r
		}
	}
	return ""
}

// The status page in a real browser with JavaScript off: Chromium loads
// it from a running gatehouse and the test reads the DOM it rendered;
// a screenshot is kept ($GATEHOUSE_TEST_ARTIFACTS, else the test's
// temporary directory).
func TestStatusPageInChromium(t *testing.T) {
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("chromium not installed (Debian chromium; test.sh installs it)")
	}
	// the browser as configured runs no script: a control page whose
	// script would change its text keeps the static one
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<html><body><p id="p">static</p><script>document.getElementById("p").textContent="script ran"</script></body></html>`)
	}))
	defer control.Close()
	if dom := chromium(t, "--dump-dom", control.URL); !strings.Contains(dom, `<p id="p">static</p>`) {
		t.Fatalf("JavaScript is not off in this browser setup:\n%s", dom)
	}

	w := startStatusWorld(t)
	url := "http://" + w.admin + "/"

	dom := chromium(t, "--dump-dom", url)
	if !strings.Contains(dom, "<title>gatehouse status</title>") {
		t.Fatalf("Chromium did not render the page:\n%s", dom)
	}
	if strings.Contains(dom, "<script") {
		t.Errorf("the page has a script")
	}
	// routes, hosts, modes, upstream health
	if r := row(dom, "route", "fail.test"); r == "" || !strings.Contains(r, "<td>http</td>") {
		t.Errorf("no route row for fail.test with mode http:\n%s", r)
	}
	okRoute := row(dom, "route", "www.ok.test")
	if !regexp.MustCompile(`class="upstream bad"><code>` + regexp.QuoteMeta(w.dead) + `</code> <span class="pill">down</span>`).MatchString(okRoute) {
		t.Errorf("the down upstream %s is not shown down:\n%s", w.dead, okRoute)
	}
	if !strings.Contains(okRoute, `class="upstream ok"`) || !strings.Contains(okRoute, "healthy") {
		t.Errorf("the healthy upstream is not shown healthy:\n%s", okRoute)
	}
	if !strings.Contains(dom, `<b id="unhealthy">1</b>`) {
		t.Errorf("summary does not count one upstream down")
	}
	// certificates: issuer, not-after and the lifetime bar, the staple
	ok := row(dom, "cert ok", ">ok.test<")
	for _, want := range []string{`<span class="pill state">ok</span>`, "Pebble", `class="bar"`, `class="used" style="width:`, "renews in", `<span class="staple">good, next update in`} {
		if !strings.Contains(ok, want) {
			t.Errorf("ok.test's row lacks %q:\n%s", want, ok)
		}
	}
	// the renewal mark: two thirds into a 90-day lifetime, or where
	// Pebble's ARI window starts (about the same)
	if m := regexp.MustCompile(`class="renew" style="left: (\d+)%"`).FindStringSubmatch(ok); m == nil || len(m[1]) != 2 || m[1] < "60" || m[1] > "70" {
		t.Errorf("ok.test's renewal mark is not at 60-70%% of its lifetime: %v", m)
	}
	// the six-day profile, with its own lifetime bar (its renewal mark
	// is where Pebble's ARI window puts it)
	short := row(dom, "cert ok", ">short.test<")
	if !strings.Contains(short, "<td>shortlived</td>") || !strings.Contains(short, `class="renew" style="left: `) || !strings.Contains(short, "(in 5d)") {
		t.Errorf("short.test's row lacks its profile, its six-day lifetime or its renewal mark:\n%s", short)
	}
	if !strings.Contains(ok, "<td>default</td>") {
		t.Errorf("ok.test's row lacks its profile")
	}
	// the failing name: its error and its next attempt
	fail := row(dom, "cert", ">fail.test<")
	if !strings.Contains(fail, "cert bad") && !strings.Contains(fail, "cert warn") {
		t.Errorf("fail.test is not marked:\n%s", fail)
	}
	if !regexp.MustCompile(`<td class="err">[^<]+</td>`).MatchString(fail) {
		t.Errorf("fail.test's row shows no error:\n%s", fail)
	}
	if f := row(dom, "failure", "fail.test"); f == "" {
		t.Errorf("fail.test is not among the recent failures")
	}
	// the store
	if !strings.Contains(dom, `<div id="store" class="ok">`) || !strings.Contains(dom, `<div id="writable" class="ok">`) {
		t.Errorf("store not shown up and writable")
	}

	// the screenshot, kept as an artifact
	dir := os.Getenv("GATEHOUSE_TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(dir, "status-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	chromium(t, "--screenshot="+shot, "--window-size=1200,900", url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 900 {
		t.Errorf("screenshot is %dx%d", b.Dx(), b.Dy())
	}
	// not a blank page: the header's dark band and the white tables
	dark, light := 0, 0
	for y := 0; y < 900; y += 10 {
		for x := 0; x < 1200; x += 10 {
			r, g, b, _ := img.At(x, y).RGBA()
			switch l := (r + g + b) / 3 >> 8; {
			case l < 80:
				dark++
			case l > 230:
				light++
			}
		}
	}
	if dark < 50 || light < 1000 {
		t.Errorf("screenshot looks blank (dark %d, light %d samples)", dark, light)
	}
	t.Logf("screenshot: %s", shot)

	// the same page over plain HTTP: its headers
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if csp := res.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'; style-src 'unsafe-inline'") {
		t.Errorf("CSP %q", csp)
	}
}

// [listen] admin_auth reaches the running admin listener: the page and
// /metrics want the token, the probes do not, and nothing changes state.
func TestAdminAuthRunning(t *testing.T) {
	e := newCAEnv(t)
	e.listenExtra = `admin_auth = "bearer:0123456789abcdef-token"`
	up := upstream(t, "A")
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"auth.test\"]\nupstream = %q\n%s", up.URL, e.certFor("auth.test"))))
	base := "http://" + e.admLn.Addr().String()
	do := func(method, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res.StatusCode, readAll(t, res)
	}
	for _, p := range []string{"/", "/metrics"} {
		if code, _ := do("GET", p, ""); code != 401 {
			t.Errorf("GET %s without the token: %d, want 401", p, code)
		}
		if code, _ := do("GET", p, "0123456789abcdef-wrong"); code != 401 {
			t.Errorf("GET %s with a wrong token: %d, want 401", p, code)
		}
	}
	if code, body := do("GET", "/", "0123456789abcdef-token"); code != 200 || !strings.Contains(body, `<code class="name">auth.test</code>`) {
		t.Errorf("GET / with the token: %d\n%s", code, body)
	}
	if code, body := do("GET", "/metrics", "0123456789abcdef-token"); code != 200 || !strings.Contains(body, "gatehouse_storage_up") {
		t.Errorf("GET /metrics with the token: %d", code)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := do("GET", p, ""); code != 200 {
			t.Errorf("GET %s (open for probes): %d", p, code)
		}
	}
	if code, _ := do("POST", "/", "0123456789abcdef-token"); code != 405 {
		t.Errorf("POST / with the token: %d, want 405", code)
	}
}

// `gatehouse validate` warns (and still passes) when the admin listener
// is reachable from other hosts without admin_auth.
func TestValidateWarnsOpenAdmin(t *testing.T) {
	dir := t.TempDir()
	cfg := func(listen string) string {
		p := filepath.Join(dir, "g.toml")
		os.WriteFile(p, []byte("[listen]\nhttps = \":443\"\n"+listen+"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:8080\"\ntls = \"internal\"\n"), 0o600)
		return p
	}
	var out, errOut strings.Builder
	if code := realMain([]string{"validate", "--config", cfg(`admin = "0.0.0.0:2019"`)}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), "warning: [listen] admin = \"0.0.0.0:2019\" is reachable from other hosts and admin_auth is not set") {
		t.Errorf("no warning:\n%s", errOut.String())
	}
	for _, listen := range []string{`admin = "127.0.0.1:2019"`, "admin = \"0.0.0.0:2019\"\nadmin_auth = \"bearer:0123456789abcdef\""} {
		out.Reset()
		errOut.Reset()
		if code := realMain([]string{"validate", "--config", cfg(listen)}, &out, &errOut); code != 0 || strings.Contains(errOut.String(), "warning") {
			t.Errorf("%s: exit %d, %q", listen, code, errOut.String())
		}
	}
}
