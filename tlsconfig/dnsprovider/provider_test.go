package dnsprovider

import (
	"context"
	"fmt"
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
)

// startBind starts Debian's named for the test: zone example.test takes
// updates signed with the test key, ro.test refuses them. Without named
// the test is skipped, except in CI, where it fails.
func startBind(t *testing.T) *acmetest.Bind {
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
	return b
}

func txt(name, value string) []libdns.Record {
	return []libdns.Record{libdns.TXT{Name: name, Text: value, TTL: time.Minute}}
}

func TestRFC2136AgainstBind(t *testing.T) {
	b := startBind(t)
	ctx := context.Background()
	p := &RFC2136{Server: b.Addr, KeyName: b.KeyName, Secret: b.Secret}
	f := &Finder{Server: b.Addr, Resolver: b.Addr}

	zone, err := f.Zone(ctx, "_acme-challenge.a.example.test.")
	if err != nil || zone != "example.test." {
		t.Fatalf("Zone = %q, %v", zone, err)
	}
	auth, err := f.Authorities(ctx, zone)
	if err != nil || !slices.Equal(auth, []string{b.Addr}) {
		t.Fatalf("Authorities = %v, %v (NS ns1.example.test is 127.0.0.1: the primary itself)", auth, err)
	}
	name := libdns.RelativeName("_acme-challenge.a.example.test.", zone)
	long := strings.Repeat("v", 300) // more than one TXT string
	for _, v := range []string{"token-1", "token-2", long} {
		if _, err := p.AppendRecords(ctx, zone, txt(name, v)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := b.TXT("_acme-challenge.a.example.test")
	if err != nil || !slices.Contains(got, "token-1") || !slices.Contains(got, "token-2") || !slices.Contains(got, long) {
		t.Fatalf("TXT after update = %v, %v", got, err)
	}
	if err := f.WaitTXT(ctx, auth, "_acme-challenge.a.example.test.", "token-2", 5*time.Second, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// delete removes exactly one value
	if _, err := p.DeleteRecords(ctx, zone, txt(name, "token-1")); err != nil {
		t.Fatal(err)
	}
	got, _ = b.TXT("_acme-challenge.a.example.test")
	if slices.Contains(got, "token-1") || !slices.Contains(got, "token-2") {
		t.Fatalf("TXT after delete = %v", got)
	}
}

// What the server refuses comes back as an error that says what to fix.
func TestRFC2136Refusals(t *testing.T) {
	b := startBind(t)
	ctx := context.Background()
	wrong := &RFC2136{Server: b.Addr, KeyName: b.KeyName, Secret: "d3JvbmdzZWNyZXR3cm9uZ3NlY3JldA=="}
	_, err := wrong.AppendRecords(ctx, "example.test.", txt("_acme-challenge", "x"))
	var ue *UpdateError
	if !asUpdateError(err, &ue) || ue.Rcode != dns.RcodeNotAuth || !strings.Contains(err.Error(), "NOTAUTH") || !strings.Contains(err.Error(), "TSIG key name, secret or algorithm") {
		t.Errorf("wrong secret: %v", err)
	}
	unknownKey := &RFC2136{Server: b.Addr, KeyName: "other-key.", Secret: b.Secret}
	if _, err := unknownKey.AppendRecords(ctx, "example.test.", txt("_acme-challenge", "x")); !asUpdateError(err, &ue) || ue.Rcode != dns.RcodeNotAuth {
		t.Errorf("unknown key: %v", err)
	}
	good := &RFC2136{Server: b.Addr, KeyName: b.KeyName, Secret: b.Secret}
	if _, err := good.AppendRecords(ctx, "ro.test.", txt("_acme-challenge", "x")); !asUpdateError(err, &ue) || ue.Rcode != dns.RcodeRefused || !strings.Contains(err.Error(), "allow-update") {
		t.Errorf("zone without allow-update: %v", err)
	}
	if _, err := good.AppendRecords(ctx, "elsewhere.test.", txt("_acme-challenge", "x")); !asUpdateError(err, &ue) || ue.Rcode != dns.RcodeNotAuth {
		t.Errorf("zone the server does not serve: %v", err)
	}
	if got, _ := b.TXT("_acme-challenge.example.test"); len(got) != 0 {
		t.Errorf("a refused update changed the zone: %v", got)
	}
	// a server that does not answer: bounded by the timeout
	dead := &RFC2136{Server: "127.0.0.1:1", KeyName: b.KeyName, Secret: b.Secret, Timeout: time.Second}
	if _, err := dead.AppendRecords(ctx, "example.test.", txt("_acme-challenge", "x")); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("dead server: %v", err)
	}
	f := &Finder{Server: b.Addr}
	if _, err := f.Zone(ctx, "_acme-challenge.elsewhere.test."); err == nil || !strings.Contains(err.Error(), "REFUSED") {
		t.Errorf("Zone of a name the server does not serve: %v", err)
	}
}

// A server that cannot apply an update (here: named cannot write the
// zone's journal) answers SERVFAIL: the error names it and says where to
// look, and the zone is unchanged.
func TestRFC2136ServFail(t *testing.T) {
	acmetest.NeedNamed(t)
	b, err := acmetest.StartBind(acmetest.BindOptions{Zones: []string{"broken.test"}, Updatable: []string{"broken.test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	// the zone is loaded; its journal, opened at the first update, cannot be
	if err := os.Mkdir(filepath.Join(b.Dir, "broken.test.db.jnl"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := &RFC2136{Server: b.Addr, KeyName: b.KeyName, Secret: b.Secret}
	_, err = p.AppendRecords(context.Background(), "broken.test.", txt("_acme-challenge", "x"))
	var ue *UpdateError
	if !asUpdateError(err, &ue) || ue.Rcode != dns.RcodeServerFailure || !strings.Contains(err.Error(), "SERVFAIL") || !strings.Contains(err.Error(), "see its log") {
		t.Fatalf("update the server cannot apply: %v\nnamed's log:\n%s", err, b.Log())
	}
	if got, _ := b.TXT("_acme-challenge.broken.test"); len(got) != 0 {
		t.Errorf("a failed update changed the zone: %v", got)
	}
}

func asUpdateError(err error, target **UpdateError) bool {
	ue, ok := err.(*UpdateError)
	if ok {
		*target = ue
	}
	return ok
}

// A record that never appears fails the wait with what each server said.
func TestWaitTXTNeverVisible(t *testing.T) {
	b := startBind(t)
	f := &Finder{Server: b.Addr}
	start := time.Now()
	err := f.WaitTXT(context.Background(), []string{b.Addr}, "_acme-challenge.a.example.test.", "never", 1500*time.Millisecond, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not visible at "+b.Addr) || !strings.Contains(err.Error(), "none with the value") {
		t.Errorf("WaitTXT = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("WaitTXT took %s with a 1.5s limit", d)
	}
}

// The exec provider runs a hook that itself calls nsupdate against the
// same named.
func TestExecHookWithNsupdate(t *testing.T) {
	b := startBind(t)
	nsupdate, err := exec.LookPath("nsupdate")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nsupdate (bind9-dnsutils) is not installed")
		}
		t.Skip("nsupdate not installed: apt-get install bind9-dnsutils")
	}
	host, port, _ := strings.Cut(b.Addr, ":")
	hook := filepath.Join(t.TempDir(), "hook")
	script := `#!/bin/sh
set -e
case "$1" in present) op=add ;; cleanup) op=delete ;; *) echo "unknown action $1" >&2; exit 2 ;; esac
printf 'server ` + host + ` ` + port + `\nupdate %s %s 60 TXT "%s"\nsend\n' "$op" "$2" "$3" | ` + nsupdate + ` -y "hmac-sha256:` + b.KeyName + `:` + b.Secret + `"
`
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := &Exec{Command: []string{hook}}
	ctx := context.Background()
	if _, err := p.AppendRecords(ctx, "example.test.", txt("_acme-challenge.b", "hook-value")); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.TXT("_acme-challenge.b.example.test"); !slices.Equal(got, []string{"hook-value"}) {
		t.Fatalf("TXT after present = %v", got)
	}
	if _, err := p.DeleteRecords(ctx, "example.test.", txt("_acme-challenge.b", "hook-value")); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.TXT("_acme-challenge.b.example.test"); len(got) != 0 {
		t.Fatalf("TXT after cleanup = %v", got)
	}
	// nsupdate refused (ro.test): the hook fails, its stderr is in the error
	_, err = p.AppendRecords(ctx, "ro.test.", txt("_acme-challenge", "x"))
	if err == nil || !strings.Contains(err.Error(), "REFUSED") || !strings.Contains(err.Error(), "present _acme-challenge.ro.test.") {
		t.Errorf("refused hook: %v", err)
	}
}

func TestExecHookFailures(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	// the arguments, exactly: present FQDN VALUE
	argsFile := filepath.Join(dir, "args")
	ok := write("ok", `echo "$@" > `+argsFile+"\n")
	if err := (&Exec{Command: []string{ok, "--zone-id", "Z1"}}).Run(ctx, "present", "_acme-challenge.a.example.com.", "v1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(argsFile); strings.TrimSpace(string(b)) != "--zone-id Z1 present _acme-challenge.a.example.com. v1" {
		t.Errorf("hook args = %q", b)
	}
	// stderr is captured, and capped
	fail := write("fail", "echo 'API said 403: token lacks Zone.DNS edit' >&2\nhead -c 100000 /dev/zero | tr '\\0' x >&2\nexit 3\n")
	err := (&Exec{Command: []string{fail}}).Run(ctx, "present", "x.", "v")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "token lacks Zone.DNS edit") || len(err.Error()) > maxHookOutput+500 {
		t.Errorf("failing hook: %.300v (len %d)", err, len(err.Error()))
	}
	// a hung hook, and the child it started, are killed at the timeout
	hang := write("hang", "sleep 60 &\nsleep 60\n")
	start := time.Now()
	err = (&Exec{Command: []string{hang}, Timeout: 500 * time.Millisecond}).Run(ctx, "present", "x.", "v")
	if err == nil || !strings.Contains(err.Error(), "killed after 500ms") {
		t.Errorf("hung hook: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("hung hook returned after %s", d)
	}
}

// The bounds on what DNS servers can make a lookup do: at most
// maxAuthorities servers asked, 64 TXT values read, 16 SOA queries to
// find a zone.
func TestFinderLimits(t *testing.T) {
	acmetest.NeedNamed(t)
	var ns strings.Builder
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&ns, "@ IN NS ns%[1]d.many.test.\nns%[1]d IN A 127.0.0.%[2]d\n", i, i+1)
	}
	b, err := acmetest.StartBind(acmetest.BindOptions{Zones: []string{"many.test"}, Extra: map[string]string{"many.test": ns.String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	f := &Finder{Server: b.Addr, Resolver: b.Addr}
	auth, err := f.Authorities(ctx, "many.test.")
	if err != nil || len(auth) != maxAuthorities || auth[0] != b.Addr {
		t.Errorf("Authorities of a zone with 13 NS = %v (%d), %v; want the primary and %d more", auth, len(auth), err, maxAuthorities-1)
	}

	d, err := acmetest.StartDNS(nil) // answers SOA with nothing, TXT as set
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var vals []string
	for i := range 70 {
		vals = append(vals, fmt.Sprintf("v%02d", i))
	}
	d.SetTXT("_validation-persist.big.test", vals...)
	got, err := (&Finder{}).TXTValues(ctx, d.Addr(), "_validation-persist.big.test.")
	if err != nil || len(got) != 64 {
		t.Errorf("TXTValues of 70 records: %d, %v; want 64", len(got), err)
	}
	deep := strings.Repeat("x.", 20) + "big.test."
	_, err = (&Finder{Resolver: d.Addr()}).Zone(ctx, deep)
	if err == nil || !strings.Contains(err.Error(), "no SOA record found") {
		t.Errorf("Zone without any SOA: %v", err)
	}
	if n := d.Queries(strings.Repeat("x.", 4) + "big.test"); n != 0 {
		t.Errorf("asked %d times for a name past 16 labels up", n)
	}
	if n := d.Queries(strings.Repeat("x.", 5) + "big.test"); n != 1 {
		t.Errorf("asked %d times for the 16th name, want 1", n)
	}
}

// The exec hook is asked to replace HTTPS records (ECH) as
// `COMMAND https FQDN RDATA`, with the RDATA as one argument.
func TestExecHookHTTPS(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "args")
	hook := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\nprintf '%s|' \"$@\" > "+out+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	rdata := `1 . alpn="h3,h2" ech="AEX+DQ=="`
	if err := (&Exec{Command: []string{hook}}).PublishHTTPS(context.Background(), "example.com.", "a.example.com", rdata); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := "https|a.example.com.|" + rdata + "|"; string(got) != want {
		t.Fatalf("hook got %q, want %q", got, want)
	}
}
