package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// certsJSON runs `gatehouse certs --json` and returns its entries by name.
func certsJSON(t *testing.T, cfgPath string) map[string]tlsconfig.CertInfo {
	t.Helper()
	out, errOut, code := runCerts(t, "--config", cfgPath, "--json")
	if code != 0 {
		t.Fatalf("certs --json: exit %d: %s", code, errOut)
	}
	var infos []tlsconfig.CertInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("certs --json output is not JSON: %v\n%s", err, out)
	}
	by := map[string]tlsconfig.CertInfo{}
	for _, ci := range infos {
		by[ci.Name] = ci
	}
	return by
}

// An IP address route with no profile gets its certificate under the
// "shortlived" profile when the CA offers it (Let's Encrypt issues IP
// certificates only there), and keeps that profile at every renewal.
// Pebble has two profiles and picks one at random for an order that names
// none: three renewals at the shortlived validity show the profile asked
// for each time (issue 12 points 4 and 8).
func TestIPCertificateShortlivedProfileKeptAtRenewal(t *testing.T) {
	const short, classic = 20 * time.Second, 90 * time.Second
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"shortlived": short, "classic": classic}, NoARI: true})
	up := upstream(t, "A")
	cfgPath := e.config(routeTOML("127.0.0.1", up.URL))
	e.start(cfgPath)
	first := waitLeaf(t, e, "127.0.0.1", 60*time.Second)
	if len(first.IPAddresses) != 1 || first.IPAddresses[0].String() != "127.0.0.1" {
		t.Fatalf("certificate SANs %v %v, want the IP address 127.0.0.1", first.DNSNames, first.IPAddresses)
	}
	l := startLoad(t, e, "127.0.0.1", 2, 4*short, nil)
	prev := first.SerialNumber
	for i := 1; i <= 3; i++ {
		prev, _ = l.waitServed(short, prev)
		l.mu.Lock()
		l.serials, l.firstAt = l.serials[:0], l.firstAt[:0]
		l.mu.Unlock()
	}
	l.end()
	certs := e.pebble.Certificates("127.0.0.1")
	if len(certs) < 4 {
		t.Fatalf("Pebble issued %d certificates, want at least 4", len(certs))
	}
	for i, c := range certs {
		if got := c.NotAfter.Sub(c.NotBefore) + time.Second; got != short {
			t.Errorf("certificate %d (serial %x) lives %v, want the shortlived profile's %v", i, c.SerialNumber, got, short)
		}
	}
	ci := certsJSON(t, cfgPath)["127.0.0.1"]
	if ci.Profile != "shortlived" {
		t.Errorf("certs --json: profile %q, want \"shortlived\" (%+v)", ci.Profile, ci)
	}
}

// Certificates of 45, 64, 100 and 200 days and a 6-day shortlived one,
// issued by Pebble under one profile each: every stored certificate
// records its profile, and `certs` reports the renewal time gatehouse
// acts on: the lifetime rule (a third of the lifetime left; half-life
// under 10 days) unless the CA's ARI selected time (less one check
// interval) comes first. Then ARI windows set through Pebble's management
// API: one an hour from now decides the renewal time; one later than
// the lifetime rule does not postpone it (issue 12 point 8).
func TestRenewalTimesByLifetimeAndARI(t *testing.T) {
	day := 24 * time.Hour
	lifetimes := map[string]time.Duration{
		"tlsserver": 45 * day, "classic": 64 * day, "d100": 100 * day, "d200": 200 * day, "shortlived": 6 * day,
	}
	e := newEnv(t, acmetest.PebbleOptions{Profiles: lifetimes, ARIRetryAfter: time.Second})
	up := upstream(t, "A")
	var routesTOML strings.Builder
	hosts := map[string]string{} // host -> profile
	for prof := range lifetimes {
		host := prof + ".test"
		hosts[host] = prof
		fmt.Fprintf(&routesTOML, "[[route]]\nhosts = [%q]\nupstream = %q\nprofile = %q\n\n", host, up.URL, prof)
	}
	cfgPath := e.config(routesTOML.String())
	e.start(cfgPath, fastRenew)
	leaves := map[string]*tlsconfig.CertInfo{}
	for host := range hosts {
		waitLeaf(t, e, host, 60*time.Second)
	}
	// the ARI answer is stored shortly after issuance
	var by map[string]tlsconfig.CertInfo
	waitFor(t, 20*time.Second, "ARI stored for every certificate", func() error {
		by = certsJSON(t, cfgPath)
		for host := range hosts {
			if ci := by[host]; ci.ARI == nil || ci.ARI.SelectedTime.IsZero() {
				return fmt.Errorf("%s: no ARI selected time stored yet", host)
			}
		}
		return nil
	})
	const interval = 10 * time.Minute // a gatehouse holding these certificates checks every 10 min
	for host, prof := range hosts {
		ci := by[host]
		leaves[host] = &ci
		life := ci.NotAfter.Truncate(time.Second).Add(time.Second).Sub(ci.NotBefore)
		if life != lifetimes[prof] {
			t.Errorf("%s: lifetime %v, want profile %s's %v", host, life, prof, lifetimes[prof])
		}
		if ci.Profile != prof {
			t.Errorf("%s: stored profile %q, want %q", host, ci.Profile, prof)
		}
		ratio := 3 // a third of the lifetime left
		if life < 10*day {
			ratio = 2 // half-life
		}
		byLife := ci.NotBefore.Add(life).Add(-life / time.Duration(ratio))
		want, wantBy := byLife, "lifetime"
		if a := ci.ARI.SelectedTime.Add(-interval); a.Before(byLife) {
			want, wantBy = a, "ari"
		}
		if !ci.RenewAt.Equal(want) || ci.RenewBy != wantBy {
			t.Errorf("%s (%v): renews at %s by %s; want %s by %s (ARI selected %s)", host, life,
				ci.RenewAt, ci.RenewBy, want, wantBy, ci.ARI.SelectedTime)
		}
		t.Logf("%s: %v certificate renews at %.3f of its lifetime by %s (ARI window %s..%s)", host, life,
			float64(ci.RenewAt.Sub(ci.NotBefore))/float64(life), ci.RenewBy,
			ci.ARI.WindowStart.Format(time.DateOnly), ci.ARI.WindowEnd.Format(time.DateOnly))
	}

	// ARI decides when it comes first, not when it comes later
	now := time.Now().Truncate(time.Second)
	early, late := leaves["d100.test"], leaves["d200.test"]
	if err := e.pebble.SetRenewalWindow(serialOf(t, early.Serial), now.Add(time.Hour), now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := e.pebble.SetRenewalWindow(serialOf(t, late.Serial), late.NotAfter.Add(-10*day), late.NotAfter.Add(-5*day)); err != nil {
		t.Fatal(err)
	}
	within := func(ci tlsconfig.CertInfo, from, to time.Time) error {
		if ci.ARI == nil || ci.ARI.SelectedTime.Before(from) || ci.ARI.SelectedTime.After(to) {
			return fmt.Errorf("%s: ARI %+v, want a selected time in %s..%s", ci.Name, ci.ARI, from, to)
		}
		return nil
	}
	waitFor(t, 30*time.Second, "the new ARI windows stored", func() error {
		by = certsJSON(t, cfgPath)
		if err := within(by["d100.test"], now.Add(time.Hour), now.Add(2*time.Hour)); err != nil {
			return err
		}
		return within(by["d200.test"], late.NotAfter.Add(-10*day), late.NotAfter.Add(-5*day))
	})
	d100, d200 := by["d100.test"], by["d200.test"]
	if d100.RenewBy != "ari" || !d100.RenewAt.Equal(d100.ARI.SelectedTime.Add(-interval)) ||
		d100.RenewAt.Before(now.Add(time.Hour-interval)) || d100.RenewAt.After(now.Add(2*time.Hour)) {
		t.Errorf("d100.test: renews at %s by %s; want by ari within the window set %s..%s", d100.RenewAt, d100.RenewBy,
			now.Add(time.Hour), now.Add(2*time.Hour))
	}
	life200 := 200 * day
	if want := d200.NotBefore.Add(life200 - life200/3); d200.RenewBy != "lifetime" || !d200.RenewAt.Equal(want) {
		t.Errorf("d200.test: renews at %s by %s; want %s by lifetime (the ARI window %s is later)", d200.RenewAt, d200.RenewBy,
			want, d200.ARI.SelectedTime)
	}
	// the scheduler's rule (tlsconfig.RenewalDue) gives the same times,
	// and its decision flips there
	for _, ci := range []tlsconfig.CertInfo{d100, d200} {
		leaf := pebbleCert(t, e, ci.Name, ci.Serial)
		ari := acme.RenewalInfo{SelectedTime: ci.ARI.SelectedTime}
		ari.SuggestedWindow.Start, ari.SuggestedWindow.End = ci.ARI.WindowStart, ci.ARI.WindowEnd
		due := tlsconfig.RenewalDue(leaf, ari, interval)
		if !due.Equal(ci.RenewAt) {
			t.Errorf("%s: scheduler's due time %s, certs says %s", ci.Name, due, ci.RenewAt)
		}
		if tlsconfig.RenewalDueAt(leaf, ari, interval, due.Add(-time.Second)) || !tlsconfig.RenewalDueAt(leaf, ari, interval, due.Add(time.Second)) {
			t.Errorf("%s: decision does not flip at %s", ci.Name, due)
		}
	}
}

// pebbleCert is the certificate Pebble issued for name with serial (hex).
func pebbleCert(t *testing.T, e *env, name, serial string) *x509.Certificate {
	t.Helper()
	for _, c := range e.pebble.Certificates(name) {
		if c.SerialNumber.Text(16) == serial {
			return c
		}
	}
	t.Fatalf("Pebble issued no certificate %s for %s", serial, name)
	return nil
}

func serialOf(t *testing.T, hex string) *big.Int {
	t.Helper()
	n, ok := new(big.Int).SetString(hex, 16)
	if !ok {
		t.Fatalf("serial %q is not hex", hex)
	}
	return n
}

// With a CA whose directory does not offer "shortlived" (a private CA),
// an IP address route is ordered with the CA's default, as before; and a
// route that sets a profile keeps it, IP address or not.
func TestIPCertificateWithoutShortlivedProfile(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"default": 90 * time.Second}})
	up := upstream(t, "A")
	cfgPath := e.config(routeTOML("127.0.0.1", up.URL))
	e.start(cfgPath)
	leaf := waitLeaf(t, e, "127.0.0.1", 60*time.Second)
	if got := leaf.NotAfter.Sub(leaf.NotBefore) + time.Second; got != 90*time.Second {
		t.Errorf("certificate lives %v, want the default profile's 90s", got)
	}
	if ci := certsJSON(t, cfgPath)["127.0.0.1"]; ci.Profile != "" || ci.Serial != leaf.SerialNumber.Text(16) {
		t.Errorf("certs --json: %+v; want the served certificate, ordered without a profile", ci)
	}
}

func TestIPCertificateExplicitProfileKept(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{Profiles: map[string]time.Duration{"shortlived": 30 * time.Second, "classic": 90 * time.Second}})
	up := upstream(t, "A")
	cfgPath := e.config(routeTOML("127.0.0.1", up.URL) + "profile = \"classic\"\n")
	e.start(cfgPath)
	leaf := waitLeaf(t, e, "127.0.0.1", 60*time.Second)
	if got := leaf.NotAfter.Sub(leaf.NotBefore) + time.Second; got != 90*time.Second {
		t.Errorf("certificate lives %v, want the classic profile's 90s", got)
	}
	if ci := certsJSON(t, cfgPath)["127.0.0.1"]; ci.Profile != "classic" {
		t.Errorf("certs --json: profile %q, want classic", ci.Profile)
	}
}
