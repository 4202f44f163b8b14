package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// Three replicas (processes) with one config, one etcd, one Pebble:
//
//   - 20 names, each ordered exactly once across the replicas; every
//     replica serves the same certificate for each;
//   - every challenge is answered by the replica the name's DNS points
//     to, also when another replica placed the order (HTTP-01 for the
//     first 10 names, TLS-ALPN-01 for the next 10, after a rolling
//     restart that reloads the first 10 from etcd without ordering);
//   - a renewal stored by another instance is served by all replicas
//     within sync_interval;
//   - with etcd killed, every replica keeps serving, /readyz and
//     gatehouse_storage_up say the store is down, nothing is lost; after
//     etcd is back, they say so.
func TestReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, Pebble and three gatehouse processes")
	}
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	c := newCluster(t, ips, acmetest.PebbleOptions{})
	const syncInterval = 2 * time.Second
	storageExtra := fmt.Sprintf("sync_interval = %q\nhealth_interval = \"1s\"\nlock_ttl = \"5s\"", syncInterval)

	var names []string
	target := map[string]string{} // name -> replica IP its DNS names
	for i := 1; i <= 20; i++ {
		n := fmt.Sprintf("n%02d.test", i)
		names = append(names, n)
		target[n] = ips[i%len(ips)]
		c.dns.SetA(n, target[n])
	}

	// All replicas are launched before any is waited for: the first
	// one's first validation (a few hundred ms in) must find the others
	// listening, as behind a load balancer that only routes to live ones.
	startAll := func(names []string, challenge string) []*replica {
		var rs []*replica
		for _, ip := range ips {
			cfg := c.config(ip, names, fmt.Sprintf("challenges = [%q]", challenge), storageExtra)
			rs = append(rs, c.launch(ip, cfg))
		}
		for _, r := range rs {
			r.waitHealthy()
		}
		return rs
	}
	// waitServed waits until every replica serves a verified certificate
	// for every name, and returns the serials by replica IP and name.
	waitServed := func(rs []*replica, names []string, limit time.Duration) map[string]map[string]string {
		got := map[string]map[string]string{}
		for _, r := range rs {
			got[r.ip] = map[string]string{}
			for _, n := range names {
				testkit.WaitFor(t, limit, fmt.Sprintf("%s serving %s", r.ip, n), func() error {
					s, err := testkit.ServedSerial(r.https, n, c.roots)
					got[r.ip][n] = s
					return err
				})
			}
		}
		return got
	}
	// checkChallenges: one replica placed each order; the replica the
	// DNS names answered its challenge (from the store when it did not
	// place the order). Returns how many were answered across replicas.
	checkChallenges := func(rs []*replica, names []string, challenge string) (cross int) {
		for _, n := range names {
			var orderers, answerers []string
			for _, r := range rs {
				for _, l := range r.logs() {
					if l.Msg == "obtaining certificate" && l.Name == n {
						orderers = append(orderers, r.ip)
					}
					if strings.HasPrefix(l.Msg, "served key authentication") && l.cm("challenge") == challenge &&
						(l.cm("identifier") == n || l.cm("server_name") == n) {
						answerers = append(answerers, r.ip)
					}
				}
			}
			if len(orderers) != 1 {
				t.Errorf("%s: ordered by %v, want exactly one replica", n, orderers)
				continue
			}
			if len(answerers) == 0 {
				t.Errorf("%s: no replica logged answering its %s challenge", n, challenge)
				continue
			}
			for _, a := range answerers {
				if a != target[n] {
					t.Errorf("%s: challenge answered by %s, but its DNS names %s", n, a, target[n])
				}
			}
			if answerers[0] != orderers[0] {
				cross++
			}
		}
		return cross
	}

	// Phase 1: 10 names, HTTP-01 only.
	start := time.Now()
	rs := startAll(names[:10], "http-01")
	serials := waitServed(rs, names[:10], 90*time.Second)
	t.Logf("10 names (http-01) served by all 3 replicas %s after start", time.Since(start).Round(100*time.Millisecond))
	crossHTTP := checkChallenges(rs, names[:10], "http-01")
	if crossHTTP == 0 {
		t.Errorf("no HTTP-01 challenge was answered by a replica other than the one ordering; the test proves nothing about shared challenges")
	}
	t.Logf("http-01: %d of 10 challenges answered by a replica that did not place the order", crossHTTP)

	// Phase 2: rolling restart onto 20 names, TLS-ALPN-01 only. The first
	// 10 come from etcd: no order.
	for _, r := range rs {
		r.stop()
	}
	start = time.Now()
	rs = startAll(names, "tls-alpn-01")
	all := waitServed(rs, names, 90*time.Second)
	t.Logf("20 names (10 new, tls-alpn-01) served by all 3 replicas %s after the restart", time.Since(start).Round(100*time.Millisecond))
	crossALPN := checkChallenges(rs, names[10:], "tls-alpn-01")
	if crossALPN == 0 {
		t.Errorf("no TLS-ALPN-01 challenge was answered by a replica other than the one ordering")
	}
	t.Logf("tls-alpn-01: %d of 10 challenges answered by a replica that did not place the order", crossALPN)
	for _, r := range rs {
		for _, n := range names[:10] {
			if l, ok := r.find(func(l logLine) bool { return l.Msg == "obtaining certificate" && l.Name == n }); ok {
				t.Errorf("%s ordered %s again after the restart (at %s) instead of loading it from etcd", r.ip, n, l.Time)
			}
			if all[r.ip][n] != serials[ips[0]][n] {
				t.Errorf("%s serves %s for %s after the restart, was %s", r.ip, all[r.ip][n], n, serials[ips[0]][n])
			}
		}
	}

	t.Run("each name ordered once, same certificate everywhere", func(t *testing.T) {
		for _, n := range names {
			if o := c.pebble.Orders(n); o != 1 {
				t.Errorf("Pebble received %d orders for %s, want 1", o, n)
			}
			if is := c.pebble.Issued(n); is != 1 {
				t.Errorf("Pebble issued %d certificates for %s, want 1", is, n)
			}
			s := all[ips[0]][n]
			for _, ip := range ips[1:] {
				if all[ip][n] != s {
					t.Errorf("%s: replica %s serves serial %s, replica %s serves %s", n, ips[0], s, ip, all[ip][n])
				}
			}
		}
	})

	t.Run("a renewal by another instance reaches every replica", func(t *testing.T) {
		// A fourth instance (in this process: certmagic on the same store
		// and CA) renews n01. No replica is anywhere near renewing it.
		name := names[0]
		old := all[ips[0]][name]
		renewStart := renewElsewhere(t, c, name)
		var took []time.Duration
		for _, r := range rs {
			var s string
			d := testkit.WaitSince(t, renewStart, syncInterval+3*time.Second, r.ip+" serving the renewed "+name, func() error {
				var err error
				s, err = testkit.ServedSerial(r.https, name, c.roots)
				if err == nil && s == old {
					err = fmt.Errorf("still serving %s", old)
				}
				return err
			})
			took = append(took, d)
			all[r.ip][name] = s
		}
		t.Logf("renewed certificate served by the 3 replicas %v after it was stored (sync_interval %s)", roundAll(took), syncInterval)
		for _, ip := range ips[1:] {
			if all[ip][name] != all[ips[0]][name] {
				t.Errorf("after the renewal %s serves %s, %s serves %s", ips[0], all[ips[0]][name], ip, all[ip][name])
			}
		}
		if o := c.pebble.Orders(name); o != 2 {
			t.Errorf("Pebble received %d orders for %s, want 2 (the first and the renewal)", o, name)
		}
		for _, r := range rs {
			if _, ok := r.find(func(l logLine) bool {
				return l.Msg == "reloaded certificate renewed by another instance" && l.Name == name
			}); !ok {
				t.Errorf("%s did not log reloading %s from the store", r.ip, name)
			}
		}
	})

	t.Run("etcd down: replicas keep serving and say so", func(t *testing.T) {
		keysBefore := storeKeys(t, c)
		killed := time.Now()
		c.etcd.Stop()
		for _, r := range rs {
			d := testkit.WaitSince(t, killed, 1*time.Second+5*time.Second+5*time.Second, r.ip+" /readyz storage down", func() error {
				up, err := r.storageUp()
				if err == nil && up {
					err = fmt.Errorf("storage still up")
				}
				return err
			})
			t.Logf("%s: /readyz reports storage down %s after etcd was killed", r.ip, d.Round(100*time.Millisecond))
			code, body, err := r.readyz()
			if err != nil || code != 200 {
				t.Errorf("%s: /readyz = %d, %v with every certificate cached; want 200 (serving) with the store down reported: %v", r.ip, code, err, body)
			}
			if v, err := r.metric("gatehouse_storage_up"); err != nil || v != "0" {
				t.Errorf("%s: gatehouse_storage_up = %q, %v; want 0", r.ip, v, err)
			}
		}
		// Every name, every replica, a verified handshake with the same
		// certificate as before; and a request through to the upstream.
		for _, r := range rs {
			for _, n := range names {
				s, err := testkit.ServedSerial(r.https, n, c.roots)
				if err != nil {
					t.Errorf("%s %s with etcd down: %v", r.ip, n, err)
				} else if s != all[r.ip][n] {
					t.Errorf("%s %s with etcd down: serial %s, was %s", r.ip, n, s, all[r.ip][n])
				}
			}
			res, err := client(r.https, c.roots, true).Get("https://" + names[5] + "/")
			if err != nil {
				t.Errorf("%s: request with etcd down: %v", r.ip, err)
			} else if body := readAll(t, res); !strings.HasPrefix(body, "upstream=app") {
				t.Errorf("%s: request with etcd down reached %q", r.ip, body)
			}
		}

		back := time.Now()
		c.etcd.Restart()
		for _, r := range rs {
			d := testkit.WaitSince(t, back, 10*time.Second, r.ip+" /readyz storage up again", func() error {
				up, err := r.storageUp()
				if err == nil && !up {
					err = fmt.Errorf("storage still down")
				}
				return err
			})
			t.Logf("%s: storage up again %s after etcd restarted", r.ip, d.Round(100*time.Millisecond))
			if v, err := r.metric("gatehouse_storage_up"); err != nil || v != "1" {
				t.Errorf("%s: gatehouse_storage_up = %q, %v after recovery; want 1", r.ip, v, err)
			}
		}
		keysAfter := storeKeys(t, c)
		for k := range keysBefore {
			if !keysAfter[k] {
				t.Errorf("key %s gone from etcd after the outage", k)
			}
		}
		t.Logf("%d keys in etcd before the outage, %d after", len(keysBefore), len(keysAfter))
	})
}

func roundAll(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Round(100*time.Millisecond).String())
	}
	return out
}

// storeKeys lists every key under the cluster's prefix but the storage probes'.
func storeKeys(t *testing.T, c *cluster) map[string]bool {
	t.Helper()
	st, err := tlsconfig.OpenStorage(routes.Storage{Backend: "etcd", Endpoints: []string{c.etcd.URL}, Prefix: "cluster/"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(st)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys, err := st.List(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		// each replica's storage probe writes and deletes its own key
		// every health_interval: not data that could be lost
		if !strings.HasPrefix(k, "gatehouse/probe/") {
			out[k] = true
		}
	}
	return out
}

// renewElsewhere renews name as another gatehouse instance would: with
// certmagic on the same etcd prefix and CA (and so the same ACME account),
// its challenge answered by whichever replica the DNS names, through the
// store. It returns when the renewed certificate is stored.
func renewElsewhere(t *testing.T, c *cluster, name string) time.Time {
	t.Helper()
	st, err := tlsconfig.OpenStorage(routes.Storage{Backend: "etcd", Endpoints: []string{c.etcd.URL}, Prefix: "cluster/"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(st)
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil }})
	defer cache.Stop()
	cfg = certmagic.New(cache, certmagic.Config{Storage: st, Logger: zap.NewNop()})
	pem, err := os.ReadFile(c.pebble.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(pem)
	iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA: c.pebble.DirectoryURL, Email: "ops@example.test", Agreed: true, TrustedRoots: caPool,
		// The replicas hold these ports: certmagic finds them taken and
		// leaves answering to them, as it does inside gatehouse.
		ListenHost: c.ips[0], AltHTTPPort: c.httpPort, AltTLSALPNPort: c.httpsPort,
		// The replicas' config by now: challenges = ["tls-alpn-01"].
		DisableHTTPChallenge: true,
	})
	cfg.Issuers = []certmagic.Issuer{iss}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cfg.RenewCertSync(ctx, name, true); err != nil {
		t.Fatalf("renewing %s from a fourth instance: %v", name, err)
	}
	return time.Now()
}

// The replica holding a name's lock is killed (SIGKILL) in the middle of
// the order, while the CA is validating; another replica takes the lock
// when the lease expires (lock_ttl) and finishes the order.
func TestReplicaKilledHoldingLock(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, Pebble and three gatehouse processes")
	}
	const lockTTL = 5 * time.Second
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	// 127.0.0.4 takes the CA's validation connections and never answers,
	// so the first order hangs in validation with its lock held.
	c := newCluster(t, append(ips, "127.0.0.4"), acmetest.PebbleOptions{AuthzReuse: -1})
	c.ips = ips
	pit := startTarpit(t, fmt.Sprintf("127.0.0.4:%d", c.httpPort), fmt.Sprintf("127.0.0.4:%d", c.httpsPort))
	const name = "slow.test"
	c.dns.SetA(name, "127.0.0.4")

	var rs []*replica
	for _, ip := range ips {
		// no pre-order self-check: it would find the tarpit and not order
		rs = append(rs, c.launch(ip, c.config(ip, []string{name}, "self_check = false", fmt.Sprintf("lock_ttl = %q", lockTTL))))
	}
	for _, r := range rs {
		r.waitHealthy()
	}
	testkit.WaitFor(t, 30*time.Second, "the CA validating against the tarpit", func() error {
		if pit.hits() == 0 {
			return fmt.Errorf("no connection yet")
		}
		return nil
	})
	var holder *replica
	var survivors []*replica
	for _, r := range rs {
		if _, ok := r.find(func(l logLine) bool { return l.Msg == "obtaining certificate" && l.Name == name }); ok {
			if holder != nil {
				t.Fatalf("both %s and %s are ordering %s", holder.ip, r.ip, name)
			}
			holder = r
		} else {
			survivors = append(survivors, r)
		}
	}
	if holder == nil {
		t.Fatal("the CA is validating but no replica logged ordering")
	}
	if _, ok := holder.find(func(l logLine) bool { return l.Msg == "certificate obtained" && l.Name == name }); ok {
		t.Fatal("the holder finished before it could be killed")
	}
	ordersBefore := c.pebble.Orders(name)
	holder.kill()
	killed := time.Now()
	t.Logf("killed %s (SIGKILL) holding the lock for %s, mid-validation; Pebble had %d order(s)", holder.ip, name, ordersBefore)
	// Validation now reaches a survivor.
	c.dns.SetA(name, survivors[0].ip)

	var taker *replica
	var acquired time.Time
	testkit.WaitFor(t, lockTTL+10*time.Second, "a survivor acquiring the lock", func() error {
		for _, r := range survivors {
			if l, ok := r.find(func(l logLine) bool {
				return l.Msg == "lock acquired" && l.cm("identifier") == name
			}); ok {
				taker, acquired = r, l.Time
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	takeover := acquired.Sub(killed)
	t.Logf("%s acquired the lock %s after the kill (lock_ttl %s)", taker.ip, takeover.Round(10*time.Millisecond), lockTTL)
	// etcd sweeps expired leases every 500 ms: allow that and a little.
	if takeover > lockTTL+2*time.Second {
		t.Errorf("takeover took %s, more than lock_ttl %s (+2s)", takeover, lockTTL)
	}

	var serials []string
	for _, r := range survivors {
		var s string
		d := testkit.WaitSince(t, killed, lockTTL+20*time.Second, r.ip+" serving "+name, func() error {
			var err error
			s, err = testkit.ServedSerial(r.https, name, c.roots)
			return err
		})
		t.Logf("%s serves %s %s after the kill", r.ip, name, d.Round(10*time.Millisecond))
		serials = append(serials, s)
	}
	if serials[0] != serials[1] {
		t.Errorf("survivors serve different certificates: %v", serials)
	}
	ordering := 0
	for _, r := range survivors {
		if _, ok := r.find(func(l logLine) bool { return l.Msg == "obtaining certificate" && l.Name == name }); ok {
			ordering++
		}
	}
	if ordering != 1 {
		t.Errorf("%d survivors ordered %s, want exactly 1", ordering, name)
	}
	if o := c.pebble.Orders(name); o != ordersBefore+1 {
		t.Errorf("Pebble received %d orders for %s: want %d (the killed replica's, then one more)", o, name, ordersBefore+1)
	}
}
