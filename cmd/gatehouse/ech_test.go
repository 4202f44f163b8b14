package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// echOut is what `gatehouse ech --json` prints.
type echOut struct {
	PublicName  string   `json:"public_name"`
	ConfigList  string   `json:"config_list"`
	HTTPSRecord string   `json:"https_record"`
	Records     []string `json:"records"`
	Published   *struct {
		Current bool   `json:"current"`
		Error   string `json:"error"`
	} `json:"published"`
}

func runECH(t *testing.T, cfgPath string) (echOut, []byte) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := realMain([]string{"ech", "--config", cfgPath, "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("gatehouse ech: exit %d: %s", code, errOut.String())
	}
	var o echOut
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatalf("gatehouse ech --json: %v\n%s", err, out.String())
	}
	list, err := base64.StdEncoding.DecodeString(o.ConfigList)
	if err != nil {
		t.Fatal(err)
	}
	return o, list
}

// recorder is a TCP relay in front of gatehouse keeping what the client
// sent: what an observer on the path sees.
type recorder struct {
	addr string
	mu   sync.Mutex
	seen bytes.Buffer
}

func newRecorder(t *testing.T, target string) *recorder {
	r := &recorder{}
	r.addr = serveTCP(t, 10*time.Second, func(c net.Conn) {
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		go func() { _, _ = io.Copy(c, up) }()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			r.mu.Lock()
			r.seen.Write(buf[:n])
			r.mu.Unlock()
			if _, werr := up.Write(buf[:n]); err != nil || werr != nil {
				return
			}
		}
	})
	return r
}

// observedSNI parses the first ClientHello the recorder saw the way a
// passive observer (or a middlebox without gatehouse's keys) does.
func (r *recorder) observedSNI(t *testing.T) string {
	r.mu.Lock()
	raw := bytes.Clone(r.seen.Bytes())
	r.mu.Unlock()
	var name string
	_ = tls.Server(&replay{r: bytes.NewReader(raw)}, &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			name = chi.ServerName
			return nil, errors.New("seen")
		},
	}).Handshake()
	return name
}

type replay struct {
	net.Conn
	r io.Reader
}

func (p *replay) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *replay) Write(b []byte) (int, error) { return len(b), nil }
func (p *replay) Close() error                { return nil }

func get(t *testing.T, c *tls.Conn, host string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, res)
}

// Encrypted Client Hello, end to end through the binary: `gatehouse ech`
// gives the config list; Go's client encrypts the real name to it; the
// inner name is routed and served while an observer sees only the
// public name; a client with a stale config is answered under the
// public name with retry configs and gets in with them; the metric
// counts both results.
func TestECH(t *testing.T) {
	e := newCAEnv(t)
	pub, secret := upstream(t, "public"), upstream(t, "secret")
	e.topExtra = "[ech]\npublic_name = \"public.test\"\n"
	cfgPath := e.config(fmt.Sprintf("[[route]]\nhosts = [\"public.test\"]\nupstream = %q\n%s\n[[route]]\nhosts = [\"secret.test\"]\nupstream = %q\n%s",
		pub.URL, e.certFor("public.test"), secret.URL, e.certFor("secret.test")))

	o, list := runECH(t, cfgPath) // before the first run: makes the keys
	if o.PublicName != "public.test" || !strings.Contains(o.HTTPSRecord, `ech="`+o.ConfigList+`"`) {
		t.Fatalf("gatehouse ech: %+v", o)
	}
	if len(o.Records) != 2 || !strings.HasPrefix(o.Records[1], "secret.test. 300 IN HTTPS 1 . alpn=") {
		t.Fatalf("want an HTTPS record per name, got %q", o.Records)
	}
	e.start(cfgPath)
	if again, l := runECH(t, cfgPath); again.ConfigList != o.ConfigList || !bytes.Equal(l, list) {
		t.Fatal("gatehouse run made other keys than gatehouse ech printed")
	}

	rec := newRecorder(t, e.httpsAddr())
	dial := func(list []byte) (*tls.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", rec.addr, &tls.Config{
			ServerName: "secret.test", RootCAs: e.roots, NextProtos: []string{"http/1.1"},
			EncryptedClientHelloConfigList: list,
		})
	}
	c, err := dial(list)
	if err != nil {
		t.Fatal(err)
	}
	if !c.ConnectionState().ECHAccepted {
		t.Fatal("ECH not accepted")
	}
	if body := get(t, c, "secret.test"); !strings.Contains(body, "upstream=secret") {
		t.Fatalf("inner name not routed to its upstream: %q", body)
	}
	c.Close()
	if got := rec.observedSNI(t); got != "public.test" {
		t.Fatalf("an observer saw SNI %q, want the public name", got)
	}
	rec.mu.Lock()
	leaked := bytes.Contains(rec.seen.Bytes(), []byte("secret.test"))
	rec.mu.Unlock()
	if leaked {
		t.Fatal("the inner name travels in clear text")
	}

	// a stale config (keys made for another store): rejected under the
	// public name's certificate, with retry configs that work
	stale := e.config("[[route]]\nhosts = [\"public.test\"]\nupstream = \"http://127.0.0.1:1\"\n" + e.certFor("public.test"))
	staleStore := filepath.Join(t.TempDir(), "other")
	rewriteStorage(t, stale, staleStore)
	_, staleList := runECH(t, stale)
	_, err = dial(staleList)
	var rej *tls.ECHRejectionError
	if !errors.As(err, &rej) || len(rej.RetryConfigList) == 0 {
		t.Fatalf("stale config: want a rejection with retry configs, got %v", err)
	}
	if !bytes.Equal(rej.RetryConfigList, list) {
		t.Fatal("retry configs are not the published config list")
	}
	c, err = dial(rej.RetryConfigList)
	if err != nil || !c.ConnectionState().ECHAccepted {
		t.Fatalf("retry with the server's configs: %v", err)
	}
	c.Close()

	// the server counts a handshake when its side of it ends, which can
	// be after the client's dial returned: wait (bounded) for the counts
	want := []struct {
		result string
		min    float64
	}{{"accepted", 2}, {"rejected", 1}, {"retried", 1}} // retried: the retry came from the address just rejected
	testkit.WaitFor(t, 5*time.Second, "ECH handshakes counted", func() error {
		m := scrape(t, e.admLn.Addr().String())
		for _, w := range want {
			if v, _ := sample(m, "gatehouse_ech_handshakes_total", `result="`+w.result+`"`); v < w.min {
				return fmt.Errorf("%s ECH handshakes = %v, want %v", w.result, v, w.min)
			}
		}
		return nil
	})
}

// rewriteStorage points the config file at another storage dir.
func rewriteStorage(t *testing.T, cfgPath, dir string) {
	t.Helper()
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	b := string(raw)
	i := strings.Index(b, "[storage]\ndir = ")
	j := strings.Index(b[i:], "\n\n")
	b = b[:i] + fmt.Sprintf("[storage]\ndir = %q", dir) + b[i+j:]
	if err := os.WriteFile(cfgPath, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// httpsRecord asks the test's BIND for the HTTPS record at name and
// returns its ech= value (base64), "" when there is none.
func httpsRecord(t *testing.T, server, name string) string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeHTTPS)
	c := dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatal(err)
	}
	for _, rr := range r.Answer {
		if h, ok := rr.(*dns.HTTPS); ok {
			for _, kv := range h.Value {
				if e, ok := kv.(*dns.SVCBECHConfig); ok {
					return base64.StdEncoding.EncodeToString(e.ECH)
				}
			}
		}
	}
	return ""
}

// With an [acme.dns] provider gatehouse publishes the HTTPS records
// itself, into a real BIND by RFC 2136: each ECH name's record carries
// the config `gatehouse ech` prints, /readyz says so, and a new key (a
// changed public name here; a rotation takes the same path) is
// published again, replacing the old record.
func TestECHPublishedByRFC2136(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{})
	d.acmeExtra = d.rfc2136(d.bind.Secret)
	routesTOML := "[[route]]\nhosts = [\"a.example.test\", \"b.example.test\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n"
	d.topExtra = "[ech]\npublic_name = \"a.example.test\"\n"
	cfgPath := d.config(routesTOML)
	in := d.start(cfgPath)
	o, _ := runECH(t, cfgPath)
	for _, name := range []string{"a.example.test", "b.example.test"} {
		testkit.WaitFor(t, 30*time.Second, "HTTPS record of "+name, func() error {
			if got := httpsRecord(t, d.bind.Addr, name); got != o.ConfigList {
				return fmt.Errorf("ech=%q, want %q", got, o.ConfigList)
			}
			return nil
		})
	}
	// the records are in DNS a moment before the state is stored
	testkit.WaitFor(t, 10*time.Second, "/readyz showing the published ECH records", func() error {
		res, err := http.Get("http://" + d.admLn.Addr().String() + "/readyz")
		if err != nil {
			return err
		}
		var ready struct {
			Detail struct {
				ECH *struct {
					Current bool     `json:"current"`
					Names   []string `json:"names"`
				} `json:"ech_dns"`
			} `json:"detail"`
		}
		body := readAll(t, res)
		if err := json.Unmarshal([]byte(body), &ready); err != nil || ready.Detail.ECH == nil || !ready.Detail.ECH.Current || len(ready.Detail.ECH.Names) != 2 {
			return fmt.Errorf("(%v): %s", err, body)
		}
		return nil
	})
	if again, _ := runECH(t, cfgPath); again.Published == nil || !again.Published.Current {
		t.Fatalf("gatehouse ech --json: published = %+v", again.Published)
	}

	var certsOut, certsErr bytes.Buffer
	if code := realMain([]string{"certs", "--config", cfgPath}, &certsOut, &certsErr); code != 0 {
		t.Fatalf("gatehouse certs: exit %d: %s", code, certsErr.String())
	}
	if !strings.Contains(certsOut.String(), "ECH: public name a.example.test; HTTPS records for 2 names published") {
		t.Fatalf("gatehouse certs does not show the published ECH records:\n%s", certsOut.String())
	}

	d.topExtra = "[ech]\npublic_name = \"b.example.test\"\n"
	cfgPath = d.config(routesTOML)
	if err := in.reload(cfgPath); err != nil {
		t.Fatal(err)
	}
	o2, _ := runECH(t, cfgPath)
	if o2.ConfigList == o.ConfigList {
		t.Fatal("a new public name kept the old ECH config")
	}
	testkit.WaitFor(t, 30*time.Second, "the new config in DNS", func() error {
		if got := httpsRecord(t, d.bind.Addr, "a.example.test"); got != o2.ConfigList {
			return fmt.Errorf("ech=%q, want the new %q", got, o2.ConfigList)
		}
		return nil
	})
}
