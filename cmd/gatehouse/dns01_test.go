package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig/dnsprovider"
)

// dnsEnv is an env whose DNS is a real BIND (Debian's named): zone
// example.test takes updates signed with the test key, ro.test refuses
// them; Pebble's VA asks it for the challenge records.
type dnsEnv struct {
	*env
	bind *acmetest.Bind
}

func newDNSEnv(t *testing.T, popts acmetest.PebbleOptions) *dnsEnv {
	t.Helper()
	acmetest.NeedNamed(t)
	b, err := acmetest.StartBind(acmetest.BindOptions{Zones: []string{"example.test", "ro.test"}, Updatable: []string{"example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("named's log:\n" + b.Log())
		}
		b.Close()
	})
	e := &env{t: t, storage: filepath.Join(t.TempDir(), "storage")}
	e.bind()
	popts.HTTPPort, popts.TLSPort, popts.DNSAddr = port(e.httpLn), port(e.httpsLn), b.Addr
	p, err := acmetest.StartPebble(popts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	e.pebble = p
	if e.roots, err = p.Roots(); err != nil {
		t.Fatal(err)
	}
	return &dnsEnv{env: e, bind: b}
}

// rfc2136 returns the [acme] lines for DNS-01 by RFC 2136 to the test's
// named with secret.
func (d *dnsEnv) rfc2136(secret string) string {
	return fmt.Sprintf(`challenges = ["dns-01"]
resolver = %q
[acme.dns]
provider = "rfc2136"
server = %q
tsig_key = %q
tsig_secret = %q
`, d.bind.Addr, d.bind.Addr, d.bind.KeyName, secret)
}

// servedCert dials gatehouse with SNI name, verifying against Pebble's
// root, and returns the leaf.
func (d *dnsEnv) servedCert(name string) (*x509.Certificate, error) {
	c, err := testkit.DialTLS(d.httpsAddr(), name, d.roots)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// challengeRecords returns the TXT values left at _acme-challenge.NAME.
func (d *dnsEnv) challengeRecords(name string) []string {
	got, err := d.bind.TXT("_acme-challenge." + name)
	if err != nil {
		d.t.Fatal(err)
	}
	return got
}

// One wildcard certificate, ordered by DNS-01 through RFC 2136 updates
// to a real BIND, serves every name under it, verified by a real TLS
// client; the challenge records are removed afterwards.
func TestDNS01WildcardRFC2136(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true, AuthzReuse: -1})
	up := upstream(t, "wild")
	d.acmeExtra = d.rfc2136(d.bind.Secret)
	cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\"]\nupstream = %q\n", up.URL))
	in := d.start(cfg)

	var leaf *x509.Certificate
	testkit.WaitFor(t, 90*time.Second, "wildcard certificate served for a.example.test", func() (err error) {
		leaf, err = d.servedCert("a.example.test")
		return err
	})
	if !slices.Equal(leaf.DNSNames, []string{"*.example.test"}) {
		t.Fatalf("served certificate names %v, want [*.example.test]", leaf.DNSNames)
	}
	// the same certificate for another name under it, and HTTP through
	for _, name := range []string{"b.example.test", "other-name.example.test"} {
		l2, err := d.servedCert(name)
		if err != nil || !l2.Equal(leaf) {
			t.Fatalf("%s: %v (same certificate: %v)", name, err, err == nil && l2.Equal(leaf))
		}
	}
	res, err := client(d.httpsAddr(), d.roots, true).Get("https://b.example.test/x")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); !strings.HasPrefix(body, "upstream=wild host=b.example.test") {
		t.Errorf("proxied answer %q", body)
	}
	// one certificate, one order
	if n := d.pebble.Issued("*.example.test"); n != 1 {
		t.Errorf("Pebble issued %d certificates for *.example.test, want 1", n)
	}
	if st := nameStatus(in, "*.example.test"); st.State != "ready" {
		t.Errorf("status of *.example.test: %+v", st)
	}
	// a name two labels down is not covered, and not served
	if _, err := d.servedCert("x.a.example.test"); err == nil {
		t.Error("x.a.example.test was served a certificate")
	}
	testkit.WaitFor(t, 10*time.Second, "challenge and probe records removed", func() error {
		if got := d.challengeRecords("example.test"); len(got) > 0 {
			return fmt.Errorf("left: %v", got)
		}
		return nil
	})

	// a restart serves the stored wildcard certificate (loaded on the
	// first handshake of a name under it), without a new order
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	d.rebind()
	d.start(cfg)
	again, err := d.servedCert("c.example.test")
	if err != nil || !again.Equal(leaf) {
		t.Fatalf("after restart: %v (same certificate: %v)", err, err == nil && again.Equal(leaf))
	}
	if n := d.pebble.Orders("*.example.test"); n != 1 {
		t.Errorf("%d orders after the restart, want 1", n)
	}
}

// The exec provider: a hook script that calls nsupdate against the same
// BIND. Every name is ordered by DNS-01 (the only challenge listed),
// the wildcard and its apex together, sharing one record name.
func TestDNS01ExecHook(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true, AuthzReuse: -1})
	nsupdate, err := exec.LookPath("nsupdate")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nsupdate (bind9-dnsutils) is not installed")
		}
		t.Skip("nsupdate not installed: apt-get install bind9-dnsutils")
	}
	host, p, _ := strings.Cut(d.bind.Addr, ":")
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	hook := filepath.Join(dir, "dns-hook")
	script := `#!/bin/sh
set -e
echo "$1 $2" >> ` + calls + `
case "$1" in present) op=add ;; cleanup) op=delete ;; *) exit 2 ;; esac
printf 'server ` + host + ` ` + p + `\nupdate %s %s 60 TXT "%s"\nsend\n' "$op" "$2" "$3" | ` + nsupdate + ` -y "hmac-sha256:` + d.bind.KeyName + `:` + d.bind.Secret + `"
`
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	up := upstream(t, "hooked")
	d.acmeExtra = fmt.Sprintf("challenges = [\"dns-01\"]\nresolver = %q\n[acme.dns]\nprovider = \"exec\"\nserver = %q\ncommand = [%q]\n", d.bind.Addr, d.bind.Addr, hook)
	cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\", \"example.test\"]\nupstream = %q\n", up.URL))
	d.start(cfg)
	for _, name := range []string{"a.example.test", "example.test"} {
		var leaf *x509.Certificate
		testkit.WaitFor(t, 90*time.Second, "certificate served for "+name, func() (err error) {
			leaf, err = d.servedCert(name)
			return err
		})
		t.Logf("%s: served %v", name, leaf.DNSNames)
	}
	testkit.WaitFor(t, 10*time.Second, "records cleaned up", func() error {
		if got := d.challengeRecords("example.test"); len(got) > 0 {
			return fmt.Errorf("left: %v", got)
		}
		return nil
	})
	b, _ := os.ReadFile(calls)
	log := string(b)
	for _, want := range []string{"present _acme-challenge.example.test.", "cleanup _acme-challenge.example.test."} {
		if !strings.Contains(log, want) {
			t.Errorf("hook calls lack %q:\n%s", want, log)
		}
	}
}

// A zone that refuses the update, or a key the server does not accept:
// the self-check finds it before any order, /readyz says why, and the
// CA sees nothing.
func TestDNS01UpdateRefused(t *testing.T) {
	for _, c := range []struct {
		name, host, secret string
		want               []string
	}{
		{"REFUSED", "*.ro.test", "", []string{"REFUSED", "allow-update"}},
		{"NOTAUTH", "*.example.test", "d3JvbmdzZWNyZXR3cm9uZ3NlY3JldA==", []string{"NOTAUTH", "TSIG key name, secret or algorithm"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true})
			secret := c.secret
			if secret == "" {
				secret = d.bind.Secret
			}
			d.acmeExtra = d.rfc2136(secret)
			up := upstream(t, "refused")
			cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [%q]\nupstream = %q\n", c.host, up.URL))
			in := d.start(cfg)
			st := waitStatusError(t, in, c.host, c.want[0], 30*time.Second)
			for _, want := range append(c.want, "does not take the DNS-01 record") {
				if !strings.Contains(st.LastError, want) {
					t.Errorf("reason lacks %q: %s", want, st.LastError)
				}
			}
			if body := readyzBody(t, d.env); !strings.Contains(body, c.want[0]) {
				t.Errorf("/readyz does not say why: %s", body)
			}
			if n := d.pebble.OrderAttempts(c.host); n != 0 {
				t.Errorf("%d orders reached the CA for a zone that does not take the update", n)
			}
		})
	}
}

// readyzBody returns /readyz's body.
func readyzBody(t *testing.T, e *env) string {
	t.Helper()
	res, err := http.Get("http://" + e.admLn.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	var v any
	if json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("/readyz is not JSON: %s", body)
	}
	return body
}

// writeHook writes an executable shell script.
func writeHook(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dns-hook")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// A provider that says it added the record, which never shows on the
// zone's server: the order fails before the CA is asked to validate,
// /readyz and the log say why, and the next order waits its backoff.
func TestDNS01TXTNeverVisible(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true})
	hook := writeHook(t, "exit 0\n") // claims success, adds nothing
	d.acmeExtra = fmt.Sprintf("challenges = [\"dns-01\"]\nresolver = %q\nself_check = false\n[acme.dns]\nprovider = \"exec\"\nserver = %q\ncommand = [%q]\n", d.bind.Addr, d.bind.Addr, hook)
	up := upstream(t, "never")
	logs := &logBuffer{t: t}
	in := d.start(d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\"]\nupstream = %q\n", up.URL)),
		withLogs(t, logs), func(o *startOptions) { o.dnsPropagation = 2 * time.Second })
	st := waitStatusError(t, in, "*.example.test", "is not visible at "+d.bind.Addr, 60*time.Second)
	if !strings.Contains(st.LastError, "_acme-challenge.example.test.") {
		t.Errorf("reason: %s", st.LastError)
	}
	if body := readyzBody(t, d.env); !strings.Contains(body, "is not visible at") {
		t.Errorf("/readyz does not say why: %s", body)
	}
	logs.waitLog(t, 10*time.Second, "certificate order failed", "is not visible at") // logged after what it reports: waited for, bounded
	rec, err := tlsconfig.LoadAttempt(t.Context(), fileStorage(d.env), "*.example.test")
	if err != nil || rec == nil || rec.Failures != 1 || time.Until(rec.NextOrder) < 30*time.Second {
		t.Fatalf("order record %+v, %v: want one failure and the next order a backoff away", rec, err)
	}
	if n := d.pebble.Issued("*.example.test"); n != 0 {
		t.Errorf("issued %d", n)
	}
}

// When the DNS side breaks after a certificate was issued, the renewal
// fails with the provider's own words on /readyz and in the log, and
// the certificate already held keeps serving.
func TestDNS01RenewalFailureKeepsServing(t *testing.T) {
	const life = 40 * time.Second
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true, Profiles: map[string]time.Duration{"short": life}, NoARI: true})
	nsupdate, err := exec.LookPath("nsupdate")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nsupdate (bind9-dnsutils) is not installed")
		}
		t.Skip("nsupdate not installed: apt-get install bind9-dnsutils")
	}
	broken := filepath.Join(t.TempDir(), "broken")
	host, p, _ := strings.Cut(d.bind.Addr, ":")
	hook := writeHook(t, `set -e
if [ -e `+broken+` ]; then echo "provider API: 500 SERVFAIL updating zone" >&2; exit 1; fi
case "$1" in present) op=add ;; cleanup) op=delete ;; *) exit 2 ;; esac
printf 'server `+host+` `+p+`\nupdate %s %s 60 TXT "%s"\nsend\n' "$op" "$2" "$3" | `+nsupdate+` -y "hmac-sha256:`+d.bind.KeyName+`:`+d.bind.Secret+`"
`)
	d.acmeExtra = fmt.Sprintf("profile = \"short\"\nchallenges = [\"dns-01\"]\nresolver = %q\n[acme.dns]\nprovider = \"exec\"\nserver = %q\ncommand = [%q]\n", d.bind.Addr, d.bind.Addr, hook)
	up := upstream(t, "kept")
	logs := &logBuffer{t: t}
	in := d.start(d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\"]\nupstream = %q\n", up.URL)), withLogs(t, logs), fastRenew)
	var first *x509.Certificate
	testkit.WaitFor(t, 60*time.Second, "first certificate", func() (err error) {
		first, err = d.servedCert("a.example.test")
		return err
	})
	if err := os.WriteFile(broken, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// renewal at half of the 40 s life
	st := waitStatusError(t, in, "*.example.test", "500 SERVFAIL updating zone", life)
	if st.State != "ready" {
		t.Errorf("state %q while the held certificate is valid", st.State)
	}
	if body := readyzBody(t, d.env); !strings.Contains(body, "500 SERVFAIL updating zone") {
		t.Errorf("/readyz does not say why: %s", body)
	}
	logs.waitLog(t, 10*time.Second, "500 SERVFAIL updating zone") // logged after what it reports: waited for, bounded
	served, err := d.servedCert("b.example.test")
	if err != nil || served.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("after the failed renewal: %v, serial %v want %x", err, served, first.SerialNumber)
	}
	if n := d.pebble.Orders("*.example.test"); n != 1 {
		t.Errorf("%d orders reached the CA; the self-check should have held the renewal", n)
	}
}

// `gatehouse certs` shows the ACME account each name is ordered under,
// how it is ordered, and the RFC 8657 CAA record that pins the name to
// that account: the account URL is the one the CA knows (gatehouse's
// own orders use it), the issuer domain is the CA's (Pebble's directory
// names pebble.letsencrypt.org). Wildcards by DNS-01 and the apex by
// HTTP-01 in one config.
func TestCertsAccountAndCAA(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true})
	d.acmeExtra = fmt.Sprintf("http_challenge_port = %d\ntls_challenge_port = %d\n", port(d.httpLn), port(d.httpsLn)) +
		strings.Replace(d.rfc2136(d.bind.Secret), `challenges = ["dns-01"]`, `challenges = ["dns-01", "http-01"]`, 1)
	up := upstream(t, "caa")
	cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\", \"example.test\"]\nupstream = %q\n", up.URL))
	logs := &logBuffer{t: t}
	d.start(cfg, withLogs(t, logs))
	for _, name := range []string{"a.example.test", "example.test"} {
		testkit.WaitFor(t, 90*time.Second, "certificate for "+name, func() error { _, err := d.servedCert(name); return err })
	}

	out, errOut, code := runCerts(t, "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("certs --json: %d %s", code, errOut)
	}
	var infos []tlsconfig.CertInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatal(err)
	}
	byName := map[string]tlsconfig.CertInfo{}
	for _, ci := range infos {
		byName[ci.Name] = ci
	}
	wild, apex := byName["*.example.test"], byName["example.test"]
	acct := wild.AccountURI
	if !strings.HasPrefix(acct, strings.TrimSuffix(d.pebble.DirectoryURL, "/dir")+"/my-account/") || apex.AccountURI != acct {
		t.Fatalf("account_uri %q / %q, want Pebble's account URL", acct, apex.AccountURI)
	}
	logs.waitLog(t, 10*time.Second, "creating order", "certmagic.account="+acct) // logged after what it reports: waited for, bounded
	if wild.State != "ok" || wild.Challenge != "dns-01" || apex.Challenge != "http-01" {
		t.Errorf("*.example.test %s by %q; example.test by %q", wild.State, wild.Challenge, apex.Challenge)
	}
	for _, c := range []struct {
		ci       tlsconfig.CertInfo
		tag, how string
	}{{wild, "issuewild", "dns-01"}, {apex, "issue", "http-01"}} {
		want := fmt.Sprintf(`example.test. CAA 0 %s "pebble.letsencrypt.org; accounturi=%s; validationmethods=%s"`, c.tag, acct, c.how)
		if c.ci.CAA != want {
			t.Errorf("%s: caa\n %s\nwant\n %s", c.ci.Name, c.ci.CAA, want)
			continue
		}
		rr, err := dns.NewRR(c.ci.CAA) // a record a zone file takes
		caa, ok := rr.(*dns.CAA)
		if err != nil || !ok || caa.Tag != c.tag || caa.Flag != 0 || !strings.Contains(caa.Value, "accounturi="+acct) {
			t.Errorf("%s: CAA record does not parse as one: %v %v", c.ci.Name, rr, err)
		}
	}
	human, _, _ := runCerts(t, "--config", cfg)
	for _, want := range []string{"ACME account at " + d.pebble.DirectoryURL + " (ops@example.test): " + acct, wild.CAA, apex.CAA} {
		if !strings.Contains(human, want) {
			t.Errorf("certs output lacks %q:\n%s", want, human)
		}
	}
}

// dns-persist-01: `gatehouse dns-record` registers the account before
// the first run and prints the record; without it in the zone nothing
// is ordered and the reason shows the record to create; with it, the
// wildcard certificate is issued by a CA that validates dns-persist-01
// (Pebble), without gatehouse touching the zone.
func TestDNSPersist01(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true, AuthzReuse: -1})
	d.acmeExtra = fmt.Sprintf("challenges = [\"dns-persist-01\"]\nresolver = %q\n[acme.dns]\nserver = %q\n", d.bind.Addr, d.bind.Addr)
	up := upstream(t, "persist")
	cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\", \"example.test\"]\nupstream = %q\n", up.URL))

	out, errOut, code := runCmd(t, "dns-record", "example.test", "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("dns-record: %d %s", code, errOut)
	}
	var rec struct{ Name, Value string }
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	acctPrefix := strings.TrimSuffix(d.pebble.DirectoryURL, "/dir") + "/my-account/"
	if rec.Name != "_validation-persist.example.test" || !strings.HasPrefix(rec.Value, "pebble.letsencrypt.org; accounturi="+acctPrefix) ||
		!strings.HasSuffix(rec.Value, "; policy=wildcard") {
		t.Fatalf("record %+v", rec)
	}
	// the account it registered is where gatehouse keeps its own, key 0600
	keys, _ := filepath.Glob(filepath.Join(d.storage, "acme", "*", "users", "ops@example.test", "ops.key"))
	if len(keys) != 1 {
		t.Fatalf("account key files: %v", keys)
	}
	if st, err := os.Stat(keys[0]); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("account key %s: %v %v", keys[0], st.Mode(), err)
	}
	again, _, _ := runCmd(t, "dns-record", "*.example.test", "--config", cfg, "--json")
	if again != out {
		t.Errorf("a second dns-record (same account) printed\n%s\nnot\n%s", again, out)
	}
	human, _, _ := runCmd(t, "dns-record", "example.test", "--config", cfg)
	if strings.TrimSpace(human) != fmt.Sprintf("%s. TXT %q", rec.Name, rec.Value) {
		t.Errorf("human output %q", human)
	}

	// no record yet: held before the CA, with the record to create
	in := d.start(cfg)
	st := waitStatusError(t, in, "*.example.test", "dns-persist-01", 30*time.Second)
	if !strings.Contains(st.LastError, rec.Value) || !strings.Contains(st.LastError, "none for this account") {
		t.Errorf("reason: %s", st.LastError)
	}
	if n := d.pebble.OrderAttempts("*.example.test"); n != 0 {
		t.Errorf("%d orders reached the CA without the record", n)
	}
	if err := in.shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}

	// the operator creates the record once
	p := &dnsprovider.RFC2136{Server: d.bind.Addr, KeyName: d.bind.KeyName, Secret: d.bind.Secret}
	if _, err := p.AppendRecords(t.Context(), "example.test.", []libdns.Record{libdns.TXT{Name: "_validation-persist", Text: rec.Value, TTL: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	d.rebind()
	logs := &logBuffer{t: t}
	d.start(cfg, withLogs(t, logs))
	for _, name := range []string{"a.example.test", "example.test"} {
		testkit.WaitFor(t, 90*time.Second, "certificate for "+name, func() error { _, err := d.servedCert(name); return err })
	}
	leaf, _ := d.servedCert("a.example.test")
	if !slices.Equal(leaf.DNSNames, []string{"*.example.test"}) {
		t.Errorf("served %v", leaf.DNSNames)
	}
	logs.waitLog(t, 10*time.Second, "challenge_type=dns-persist-01") // logged after what it reports: waited for, bounded
	// certs shows the record for each name, and the CAA record
	certsOut, _, _ := runCerts(t, "--config", cfg, "--json")
	var infos []tlsconfig.CertInfo
	if err := json.Unmarshal([]byte(certsOut), &infos); err != nil {
		t.Fatal(err)
	}
	for _, ci := range infos {
		if ci.DNSPersist == nil || ci.DNSPersist.Name != rec.Name || ci.DNSPersist.Value != rec.Value || ci.Challenge != "dns-persist-01" ||
			!strings.Contains(ci.CAA, "validationmethods=dns-persist-01") {
			t.Errorf("certs --json for %s: %+v %q %q", ci.Name, ci.DNSPersist, ci.Challenge, ci.CAA)
		}
	}
	if human, _, _ := runCerts(t, "--config", cfg); strings.Count(human, fmt.Sprintf("%s. TXT %q", rec.Name, rec.Value)) != 1 {
		t.Errorf("certs output does not show the record once:\n%s", human)
	}
	// the zone was not touched: the operator's record alone
	if got, _ := d.bind.TXT("_validation-persist.example.test"); !slices.Equal(got, []string{rec.Value}) {
		t.Errorf("records at _validation-persist.example.test: %v", got)
	}
	if got := d.challengeRecords("example.test"); len(got) != 0 {
		t.Errorf("dns-01 records written: %v", got)
	}
}

func runCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut strings.Builder
	code := realMain(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// With dns-persist-01 and dns-01 both listed, a name without the
// persistent record passes the self-check through the dns-01 probe and
// is issued by whichever challenge works.
func TestDNSPersist01WithDNS01(t *testing.T) {
	d := newDNSEnv(t, acmetest.PebbleOptions{NoBadNonce: true, AuthzReuse: -1})
	d.acmeExtra = strings.Replace(d.rfc2136(d.bind.Secret), `challenges = ["dns-01"]`, `challenges = ["dns-persist-01", "dns-01"]`, 1)
	up := upstream(t, "both")
	cfg := d.config(fmt.Sprintf("[[route]]\nhosts = [\"*.example.test\"]\nupstream = %q\n", up.URL))
	d.start(cfg)
	testkit.WaitFor(t, 90*time.Second, "wildcard certificate", func() error { _, err := d.servedCert("a.example.test"); return err })
}
