package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Reloads under load drop nothing: keep-alive HTTP/1.1 and HTTP/2
// request loops, an open WebSocket and an open tcp stream run across a
// reload that adds a route, one that changes an upstream, a bad config
// and one that removes the WebSocket's route. Every request must
// succeed and no connection may be cut.
func TestReloadUnderLoad(t *testing.T) {
	m := newManualEnv(t)
	upA, upB, upC := upstream(t, "A"), upstream(t, "B"), upstream(t, "C")
	ws, db := wsEcho(t), tcpUpstream(t)
	web := func(up string) string { return m.route("web.test", up, "") }
	wsRoute, dbRoute := m.route("ws.test", ws, ""), m.route("db.test", db, `mode = "tcp"`)
	newRoute := m.route("new.test", upC.URL, "")
	m.write("", web(upA.URL)+wsRoute+dbRoute)
	in := m.run()

	stop, wsStop := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce, wsStopOnce sync.Once
	halt := func() {
		wsStopOnce.Do(func() { close(wsStop) })
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	defer halt() // also when a check below ends the test early
	loops := []*httpLoop{{name: "HTTP/1.1"}, {name: "HTTP/2", h2: true}}
	for _, l := range loops {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(t, m, stop) }()
	}
	wsConn := dialWS(t, m.httpsAddr(), "ws.test", m.roots)
	defer wsConn.Close()
	tcpConn, err := testkit.DialTLS(m.httpsAddr(), "db.test", m.roots)
	if err != nil {
		t.Fatal(err)
	}
	defer tcpConn.Close()
	var wsN, tcpN atomic.Int64
	var wsErr, tcpErr atomic.Value
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-wsStop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if err := wsRoundTrip(wsConn, fmt.Sprint("ws ", i)); err != nil {
				wsErr.Store(err)
				return
			}
			wsN.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		lc := newLineConn(tcpConn)
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if err := lc.roundTrip(fmt.Sprint("row ", i), 5*time.Second); err != nil {
				tcpErr.Store(err)
				return
			}
			tcpN.Add(1)
		}
	}()
	settle := func() { time.Sleep(300 * time.Millisecond) }
	settle()

	// 1. a route added, by editing the file (the watcher reloads)
	m.write("", web(upA.URL)+wsRoute+dbRoute+newRoute)
	testkit.WaitFor(t, 5*time.Second, "new.test served after the file changed", func() error {
		return expectUpstream(m, "new.test", "C")
	})
	settle()

	// 2. web.test's upstream changed (the reload SIGHUP runs)
	m.write("", web(upB.URL)+wsRoute+dbRoute+newRoute)
	if err := in.reload(m.path); err != nil {
		t.Fatal(err)
	}
	if err := expectUpstream(m, "web.test", "B"); err != nil {
		t.Errorf("a new connection after the upstream change: %v", err)
	}
	for _, l := range loops {
		testkit.WaitFor(t, 3*time.Second, l.name+" kept-alive connection following the new upstream", func() error {
			if l.last.Load() != "B" {
				return fmt.Errorf("last answer from %v", l.last.Load())
			}
			return nil
		})
	}
	settle()

	// 3. a bad config: refused, the errors logged, the old one serving
	m.write("", web(upB.URL)+wsRoute+dbRoute+strings.Replace(newRoute, `hosts = ["new.test"]`, "hosts = [\"new.test\"]\nmode = \"udp\"", 1))
	m.logs.waitLog(t, 5*time.Second, "config reload refused", `mode = \"udp\"`)
	for name, want := range map[string]string{"new.test": "C", "web.test": "B"} {
		if err := expectUpstream(m, name, want); err != nil {
			t.Errorf("after the refused reload: %v", err)
		}
	}
	settle()

	// 4. the WebSocket's route removed: the open WebSocket keeps
	// working, new connections for the name are refused
	m.write("", web(upB.URL)+dbRoute+newRoute)
	if err := in.reload(m.path); err != nil {
		t.Fatal(err)
	}
	if _, err := testkit.DialTLS(m.httpsAddr(), "ws.test", m.roots); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Errorf("new connection to the removed ws.test: %v, want unrecognized_name", err)
	}
	before := wsN.Load()
	testkit.WaitFor(t, 5*time.Second, "the WebSocket exchanging messages after its route was removed", func() error {
		if n := wsN.Load() - before; n < 20 {
			return fmt.Errorf("%d messages since", n)
		}
		return nil
	})
	wsStopOnce.Do(func() { close(wsStop) })
	settle()
	halt()

	cut := 0
	for _, l := range loops {
		t.Logf("%s: %d requests, %d failed, %d connection(s) (A=%d B=%d)", l.name, l.ok.Load()+l.fail.Load(), l.fail.Load(), l.dials.Load(), l.by["A"].Load(), l.by["B"].Load())
		if l.fail.Load() != 0 {
			t.Errorf("%s: %d requests failed", l.name, l.fail.Load())
		}
		if l.ok.Load() < 50 || l.by["A"].Load() == 0 || l.by["B"].Load() == 0 {
			t.Errorf("%s: too little load to show anything (%d ok)", l.name, l.ok.Load())
		}
		if d := l.dials.Load(); d != 1 {
			cut += int(d - 1)
		}
	}
	for name, e := range map[string]*atomic.Value{"WebSocket": &wsErr, "tcp stream": &tcpErr} {
		if err := e.Load(); err != nil {
			cut++
			t.Errorf("%s cut: %v", name, err)
		}
	}
	t.Logf("WebSocket: %d messages echoed; tcp stream: %d lines echoed; cut connections: %d", wsN.Load(), tcpN.Load(), cut)
	if cut != 0 {
		t.Errorf("%d connections were cut (kept-alive HTTP connections redialled or streams broken)", cut)
	}
	if n := m.logs.count("config reloaded"); n != 3 {
		t.Errorf("%d reloads logged, want 3 (the bad config refused)", n)
	}
}

// httpLoop sends requests for web.test on one kept-alive connection,
// counting answers by upstream, failures and connections dialled.
type httpLoop struct {
	name     string
	h2       bool
	ok, fail atomic.Int64
	dials    atomic.Int64
	last     atomic.Value
	by       map[string]*atomic.Int64
}

func (l *httpLoop) run(t *testing.T, m *manualEnv, stop chan struct{}) {
	l.by = map[string]*atomic.Int64{"A": {}, "B": {}}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: m.roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			l.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", m.httpsAddr())
		},
		ForceAttemptHTTP2: l.h2,
	}
	if !l.h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	for i := 0; i < 100000; i++ {
		select {
		case <-stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		res, err := c.Get("https://web.test/")
		if err == nil {
			var b []byte
			b, err = io.ReadAll(res.Body)
			res.Body.Close()
			name := strings.TrimPrefix(strings.Fields(string(b) + " ")[0], "upstream=")
			if res.StatusCode != 200 || l.by[name] == nil {
				err = fmt.Errorf("%d %q", res.StatusCode, b)
			} else {
				l.by[name].Add(1)
				l.last.Store(name)
			}
		}
		if err != nil {
			l.fail.Add(1)
			t.Errorf("%s request failed: %v", l.name, err)
			continue
		}
		l.ok.Add(1)
	}
}

// expectUpstream checks that a new connection for name reaches upstream want.
func expectUpstream(m *manualEnv, name, want string) error {
	c := client(m.httpsAddr(), m.roots, true)
	defer c.CloseIdleConnections()
	res, err := c.Get("https://" + name + "/")
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if !strings.HasPrefix(string(b), "upstream="+want+" ") {
		return fmt.Errorf("%s answered %q, want upstream %s", name, b, want)
	}
	return nil
}

// A manual certificate: unchanged files are not loaded again on reload;
// a replaced certificate is served from the next handshake on, the old
// one dropped; a broken replacement is refused and the last good
// certificate keeps serving.
func TestReloadManualCertificate(t *testing.T) {
	m := newManualEnv(t)
	cfg := m.route("a.test", upstream(t, "A").URL, "")
	m.write("", cfg)
	in := m.run()
	certFile := m.certs["a.test"][0]
	loaded := func() int { return m.logs.count("certificate loaded from files", "cert="+certFile) }
	serial := func() string {
		s, err := testkit.ServedSerial(m.httpsAddr(), "a.test", m.roots)
		if err != nil {
			return "error: " + err.Error()
		}
		return s
	}
	first := serial()
	if loaded() != 1 {
		t.Fatalf("loaded %d times at start", loaded())
	}

	if err := in.reload(m.path); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	for _, f := range m.certs["a.test"] { // touched, same content
		os.Chtimes(f, later, later)
	}
	testkit.WaitFor(t, 5*time.Second, "the watcher reloading after the files were touched", func() error {
		if n := m.logs.count("config reloaded"); n != 2 {
			return fmt.Errorf("%d reloads", n)
		}
		return nil
	})
	if n := loaded(); n != 1 {
		t.Errorf("unchanged certificate loaded %d times after two reloads, want once", n)
	}
	if s := serial(); s != first {
		t.Errorf("serving %s after reloads, want the unchanged %s", s, first)
	}

	// a renewed certificate written over the files: the watcher picks it up
	_, _, leaf := m.cert("a.test")
	want := leaf.SerialNumber.Text(16)
	testkit.WaitFor(t, 5*time.Second, "the renewed certificate served", func() error {
		if s := serial(); s != want {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
	for range 20 {
		if s := serial(); s != want {
			t.Fatalf("handshake served %s, want only the new %s (the old one left in the cache?)", s, want)
		}
	}
	if n := loaded(); n != 2 {
		t.Errorf("certificate loaded %d times, want 2", n)
	}

	// a broken replacement: refused, the good certificate stays
	os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"), 0o600)
	m.logs.waitLog(t, 5*time.Second, "config reload refused", "cannot load cert", certFile)
	if s := serial(); s != want {
		t.Errorf("after a broken certificate file: serving %s, want the last good %s", s, want)
	}
}

// A reload leaves the ACME names it already manages alone: no new
// order, nothing read again from storage, the same certificate served;
// a name the reload adds is obtained.
func TestReloadKeepsACMECertificates(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "A")
	store := testkit.NewCountingStorage(&certmagic.FileStorage{Path: e.storage})
	one := fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n", up.URL)
	in := e.start(e.config(one), func(o *startOptions) { o.storage = store })
	serial := func(name string) (string, error) { return testkit.ServedSerial(e.httpsAddr(), name, e.roots) }
	var first string
	testkit.WaitFor(t, 60*time.Second, "a.test certificate", func() (err error) { first, err = serial("a.test"); return err })
	loads := store.LoadsOf("a.test")
	t.Logf("a.test: %d storage loads before the reload", loads)

	if err := in.reload(e.config(one + fmt.Sprintf("[[route]]\nhosts = [\"b.test\"]\nupstream = %q\n", up.URL))); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 60*time.Second, "b.test certificate after the reload", func() error { _, err := serial("b.test"); return err })
	if s, err := serial("a.test"); err != nil || s != first {
		t.Errorf("a.test after the reload: serial %s (%v), want the same %s", s, err, first)
	}
	if n := e.pebble.Orders("a.test"); n != 1 {
		t.Errorf("a.test ordered %d times, want once", n)
	}
	if n := store.LoadsOf("a.test"); n != loads {
		t.Errorf("a.test read from storage %d more times across the reload, want none", n-loads)
	}
	if n := e.pebble.Orders("b.test"); n != 1 {
		t.Errorf("b.test ordered %d times, want once", n)
	}
}

// New [timeouts] apply to connections made after the reload, while a
// kept-alive connection made before keeps being served.
func TestReloadTimeouts(t *testing.T) {
	m := newManualEnv(t)
	web := m.route("web.test", upstream(t, "A").URL, "")
	m.write("read_header = \"30s\"\n", web)
	in := m.run()
	old := client(m.httpsAddr(), m.roots, false)
	var reused bool
	get := func(c *http.Client) error {
		req, _ := http.NewRequest("GET", "https://web.test/", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		}))
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		readAll(t, res)
		return nil
	}
	if err := get(old); err != nil {
		t.Fatal(err)
	}
	m.write("read_header = \"1s\"\n", web)
	if err := in.reload(m.path); err != nil {
		t.Fatal(err)
	}
	c, err := testkit.DialTLS(m.httpsAddr(), "web.test", m.roots, "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	began := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\n") // and nothing more
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	if took := time.Since(began); took < 800*time.Millisecond || took > 3*time.Second {
		t.Errorf("a connection after the reload was closed %v into its headers, want the new read_header 1s", took)
	}
	if err := get(old); err != nil || !reused {
		t.Errorf("the connection kept alive across the reload: reused %v, %v", reused, err)
	}
}

// A reload that changes where names get their certificates: a manual
// route switched to ACME keeps its manual certificate until the ACME
// one is there, an ACME route switched to a manual certificate serves
// it at once, and a removed name is no longer reported (nor renewed).
// Handshakes for the switched names never fail meanwhile.
func TestReloadSwitchesCertificateSource(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	ca, err := acmetest.NewTestCA("manual test root")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	manual := func(name string) string {
		certPEM, keyPEM, _, err := ca.Issue([]string{name}, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		os.WriteFile(c, certPEM, 0o600)
		os.WriteFile(k, keyPEM, 0o600)
		return fmt.Sprintf("cert = %q\nkey = %q\n", c, k)
	}
	up := upstream(t, "A")
	route := func(name, extra string) string {
		return fmt.Sprintf("[[route]]\nhosts = [%q]\nupstream = %q\n%s\n", name, up.URL, extra)
	}
	in := e.start(e.config(route("a.test", manual("a.test")) + route("b.test", "") + route("c.test", "")))
	both := e.roots.Clone()
	both.AddCert(ca.Cert)
	issuer := func(name string) (string, error) {
		c, err := testkit.DialTLS(e.httpsAddr(), name, both)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Issuer.CommonName, nil
	}
	for _, name := range []string{"b.test", "c.test"} {
		testkit.WaitFor(t, 60*time.Second, name+" ACME certificate", func() error { _, err := issuer(name); return err })
	}

	stop := make(chan struct{})
	var fails, ok atomic.Int64
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // also when a check below fails the test early
	for _, name := range []string{"a.test", "b.test"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := issuer(name); err != nil {
					fails.Add(1)
					t.Errorf("%s handshake during the switch: %v", name, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}

	if err := in.reload(e.config(route("a.test", "") + route("b.test", manual("b.test")))); err != nil {
		t.Fatal(err)
	}
	if iss, err := issuer("b.test"); err != nil || iss != "manual test root" {
		t.Errorf("b.test right after switching to a manual certificate: issuer %q, %v", iss, err)
	}
	testkit.WaitFor(t, 60*time.Second, "a.test served its ACME certificate", func() error {
		iss, err := issuer("a.test")
		if err != nil {
			return err
		}
		if iss == "manual test root" {
			return fmt.Errorf("still the manual certificate")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	halt()
	for range 10 {
		for name, want := range map[string]bool{"a.test": false, "b.test": true} {
			if iss, err := issuer(name); err != nil || (iss == "manual test root") != want {
				t.Fatalf("%s after the switch: issuer %q, %v", name, iss, err)
			}
		}
	}
	for _, st := range in.certs.Status() {
		if st.Name == "c.test" {
			t.Errorf("the removed c.test is still reported: %+v", st)
		}
	}
	t.Logf("handshakes during the switch: %d ok, %d failed", ok.Load(), fails.Load())
}
