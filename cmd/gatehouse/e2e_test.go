package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Two names on one IP, certificates from a real ACME server (Pebble)
// that validates HTTP-01 / TLS-ALPN-01 against gatehouse's own
// listeners, each name routed to its own upstream.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	upA, upB := upstream(t, "A"), upstream(t, "B")
	wsUp := wsEcho(t)
	cfg := e.config(fmt.Sprintf(`
[[route]]
hosts    = ["a.test"]
upstream = %q

[[route]]
hosts    = ["b.test", "www.b.test"]
upstream = %q

[[route]]
hosts    = ["ws.test"]
upstream = %q
`, upA.URL, upB.URL, wsUp))
	e.start(cfg)

	// certificates obtained by ACME, served by SNI, verifying against Pebble's root
	for _, name := range []string{"a.test", "b.test", "www.b.test", "ws.test"} {
		testkit.WaitFor(t, 60*time.Second, "certificate for "+name, func() error {
			c, err := testkit.DialTLS(e.httpsAddr(), name, e.roots)
			if err != nil {
				return err
			}
			return c.Close()
		})
	}
	for _, name := range []string{"a.test", "b.test", "ws.test"} {
		if n := e.pebble.Orders(name); n != 1 {
			t.Errorf("Pebble received %d orders for %s, want 1", n, name)
		}
	}

	t.Run("routes by SNI, HTTP/2 and HTTP/1.1", func(t *testing.T) {
		for _, h2 := range []bool{true, false} {
			c := client(e.httpsAddr(), e.roots, h2)
			for name, want := range map[string]string{"a.test": "upstream=A", "b.test": "upstream=B", "www.b.test": "upstream=B"} {
				res, err := c.Get("https://" + name + "/hello")
				if err != nil {
					t.Fatal(err)
				}
				if wantProto := map[bool]int{true: 2, false: 1}[h2]; res.ProtoMajor != wantProto {
					t.Errorf("%s: HTTP/%d, want HTTP/%d", name, res.ProtoMajor, wantProto)
				}
				body := readAll(t, res)
				if !strings.HasPrefix(body, want) {
					t.Errorf("%s reached %q, want %s", name, body, want)
				}
				if !strings.Contains(body, "host="+name) || !strings.Contains(body, "xff=127.0.0.1") ||
					!strings.Contains(body, "xfp=https") || !strings.Contains(body, "xfh="+name) {
					t.Errorf("%s: upstream saw %q: want Host and X-Forwarded-For/-Proto/-Host set", name, body)
				}
			}
		}
	})

	t.Run("client-sent X-Forwarded-For is not trusted", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://a.test/", nil)
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		res, err := client(e.httpsAddr(), e.roots, true).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); strings.Contains(body, "6.6.6.6") {
			t.Errorf("forged X-Forwarded-For reached the upstream: %s", body)
		}
	})

	t.Run("request body streams through", func(t *testing.T) {
		body := strings.Repeat("x", 3<<20)
		res, err := client(e.httpsAddr(), e.roots, true).Post("https://a.test/upload", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, res); !strings.Contains(got, fmt.Sprintf("body=%d", len(body))) {
			t.Errorf("upstream answered %q", got)
		}
	})

	t.Run("unknown SNI and no SNI get unrecognized_name", func(t *testing.T) {
		for _, name := range []string{"nope.test", ""} {
			_, err := testkit.DialTLS(e.httpsAddr(), name, nil)
			if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
				t.Errorf("SNI %q: err = %v, want an unrecognized_name alert", name, err)
			}
		}
		if _, err := exec.LookPath("openssl"); err == nil {
			for _, args := range [][]string{{"-servername", "nope.test"}, {"-noservername"}} {
				out, _ := exec.Command("openssl", append([]string{"s_client", "-connect", e.httpsAddr()}, args...)...).CombinedOutput()
				if !strings.Contains(string(out), "unrecognized name") {
					t.Errorf("openssl s_client %v: want unrecognized name alert, got:\n%s", args, out)
				}
				if strings.Contains(string(out), "BEGIN CERTIFICATE") {
					t.Errorf("openssl s_client %v was sent a certificate", args)
				}
			}
		}
	})

	t.Run("HTTP/2 coalesced request for another route gets 421", func(t *testing.T) {
		conn, err := testkit.DialTLS(e.httpsAddr(), "a.test", e.roots, "h2")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: e.roots}}
		h2 := tr.Clone()
		h2.DialTLSContext = func(context.Context, string, string) (net.Conn, error) { return conn, nil }
		req, _ := http.NewRequest("GET", "https://a.test/", nil)
		req.Host = "b.test"
		res, err := h2.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		if res.StatusCode != http.StatusMisdirectedRequest || res.ProtoMajor != 2 {
			t.Errorf("got HTTP/%d %d %q, want HTTP/2 421", res.ProtoMajor, res.StatusCode, body)
		}
	})

	t.Run("plain HTTP redirects with 308", func(t *testing.T) {
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		req, _ := http.NewRequest("GET", "http://"+e.httpLn.Addr().String()+"/path?q=1", nil)
		req.Host = "a.test"
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		want := fmt.Sprintf("https://a.test:%d/path?q=1", port(e.httpsLn))
		if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != want {
			t.Errorf("got %d Location %q, want 308 %s", res.StatusCode, res.Header.Get("Location"), want)
		}
	})

	t.Run("WebSocket echo", func(t *testing.T) {
		wcfg, err := websocket.NewConfig("wss://ws.test/echo", "https://ws.test/")
		if err != nil {
			t.Fatal(err)
		}
		wcfg.TlsConfig = &tls.Config{RootCAs: e.roots, ServerName: "ws.test", NextProtos: []string{"http/1.1"}}
		conn, err := testkit.DialTLS(e.httpsAddr(), "ws.test", e.roots, "http/1.1")
		if err != nil {
			t.Fatal(err)
		}
		ws, err := websocket.NewClient(wcfg, conn)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		for i := range 3 {
			msg := fmt.Sprintf("ping %d", i)
			if err := websocket.Message.Send(ws, msg); err != nil {
				t.Fatal(err)
			}
			var got string
			_ = ws.SetDeadline(time.Now().Add(5 * time.Second))
			if err := websocket.Message.Receive(ws, &got); err != nil {
				t.Fatal(err)
			}
			if got != "echo: "+msg {
				t.Errorf("got %q", got)
			}
		}
	})

	t.Run("keys in storage are 0600", func(t *testing.T) {
		var keys int
		_ = filepath.WalkDir(e.storage, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".key") {
				return err
			}
			keys++
			if info, _ := d.Info(); info.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", p, info.Mode().Perm())
			}
			return nil
		})
		if keys < 4 { // 3 certificates + the ACME account
			t.Errorf("found %d keys in storage, want at least 4", keys)
		}
	})

	t.Run("upstream down gets a short 502", func(t *testing.T) {
		upA.Close()
		res, err := client(e.httpsAddr(), e.roots, true).Get("https://a.test/")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		if res.StatusCode != http.StatusBadGateway || strings.Contains(body, "127.0.0.1") || len(body) > 100 {
			t.Errorf("got %d %q, want a short 502 without internals", res.StatusCode, body)
		}
	})
}

// TLS-ALPN-01 alone: the CA's acme-tls/1 handshake for a configured name
// that has no certificate yet must get through the route check.
func TestTLSALPNChallenge(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	e.acmeExtra = `challenges = ["tls-alpn-01"]`
	up := upstream(t, "A")
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"alpn.test\"]\nupstream = %q\nmode = \"tcp\"\n", strings.TrimPrefix(up.URL, "http://"))))
	testkit.WaitFor(t, 60*time.Second, "certificate by tls-alpn-01", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "alpn.test", e.roots)
		if err == nil {
			c.Close()
		}
		return err
	})
	if n := e.pebble.Orders("alpn.test"); n != 1 {
		t.Errorf("orders = %d, want 1", n)
	}
}

// A restart with the CA down serves the certificates already in storage
// at once; a name whose order fails keeps being retried without
// stopping the others.
func TestRestartWithCAStopped(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "A")
	routesTOML := fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n", up.URL)
	in := e.start(e.config(routesTOML))
	testkit.WaitFor(t, 60*time.Second, "first certificate", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "a.test", e.roots)
		if err == nil {
			c.Close()
		}
		return err
	})
	first, _ := testkit.DialTLS(e.httpsAddr(), "a.test", e.roots)
	serial := first.ConnectionState().PeerCertificates[0].SerialNumber
	first.Close()
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}

	e.pebble.Stop() // the CA is unreachable from here on
	e.bind()
	began := time.Now()
	e.start(e.config(routesTOML))
	testkit.WaitFor(t, 5*time.Second, "certificate from storage after restart", func() error {
		res, err := client(e.httpsAddr(), e.roots, true).Get("https://a.test/")
		if err != nil {
			return err
		}
		if body := readAll(t, res); !strings.HasPrefix(body, "upstream=A") {
			return fmt.Errorf("body %q", body)
		}
		return nil
	})
	t.Logf("served from storage %v after restart, CA down", time.Since(began).Round(time.Millisecond))
	c, err := testkit.DialTLS(e.httpsAddr(), "a.test", e.roots)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial) != 0 {
		t.Errorf("serial %x after restart, want the stored %x", got, serial)
	}
}

// gatehouse validate: every error with its line, exit 1; a good config, exit 0.
func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[listen]\nhttps = \":443\"\n\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"ftp://x\"\nmode = \"udp\"\n"), 0o600)
	var out, errOut strings.Builder
	if code := realMain([]string{"validate", "--config", bad}, &out, &errOut); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{bad + ":6: route #1: upstream \"ftp://x\"", bad + ":7: route #1: mode = \"udp\"", "[acme] email is missing"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("missing %q in:\n%s", want, errOut.String())
		}
	}
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[acme]\nemail = \"a@b.example\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:8080\"\n"), 0o600)
	out.Reset()
	errOut.Reset()
	if code := realMain([]string{"validate", "--config", good}, &out, &errOut); code != 0 {
		t.Errorf("exit %d for a good config: %s", code, errOut.String())
	}
	if code := realMain([]string{"version"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "gatehouse") {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
}

// wsEcho starts a WebSocket echo upstream and returns its http:// URL.
func wsEcho(t *testing.T) string {
	srv := httptest.NewServer(websocket.Handler(func(ws *websocket.Conn) {
		for {
			var msg string
			if err := websocket.Message.Receive(ws, &msg); err != nil {
				return
			}
			if err := websocket.Message.Send(ws, "echo: "+msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A name whose order fails (its DNS points elsewhere) is reported with
// the CA's error on /readyz, while the other names are served.
func TestFailedOrderReported(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	e.dns.SetA("elsewhere.test", "127.0.0.2") // nothing of gatehouse's listens there
	up := upstream(t, "A")
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"ok.test\"]\nupstream = %q\n[[route]]\nhosts = [\"elsewhere.test\"]\nupstream = %q\n", up.URL, up.URL)))
	testkit.WaitFor(t, 60*time.Second, "ok.test served", func() error {
		c, err := testkit.DialTLS(e.httpsAddr(), "ok.test", e.roots)
		if err == nil {
			c.Close()
		}
		return err
	})
	var body string
	testkit.WaitFor(t, 60*time.Second, "elsewhere.test reported with the CA's error", func() error {
		res, err := http.Get("http://" + e.admLn.Addr().String() + "/readyz")
		if err != nil {
			return err
		}
		body = readAll(t, res)
		if !strings.Contains(body, `"name": "elsewhere.test"`) || !strings.Contains(body, "last_error") {
			return fmt.Errorf("readyz: %s", body)
		}
		return nil
	})
	if !strings.Contains(body, "127.0.0.2") && !strings.Contains(strings.ToLower(body), "connection refused") {
		t.Errorf("the reported error should carry the CA's validation detail: %s", body)
	}
	if _, err := testkit.DialTLS(e.httpsAddr(), "elsewhere.test", e.roots); err == nil {
		t.Errorf("elsewhere.test has no certificate but the handshake succeeded")
	}
}
