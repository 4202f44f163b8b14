package tlsconfig

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// fileConfig is a gatehouse config on a file store in dir with one ACME
// route for a.test; the ACME directory does not answer and there is no
// self-check (these tests are about the store, not about ordering).
func fileConfig(t *testing.T, dir string) *routes.Config {
	t.Helper()
	cfg, err := routes.Parse([]byte(fmt.Sprintf(`
[acme]
email      = "ops@example.test"
directory  = "https://127.0.0.1:1/dir"
self_check = false
[storage]
dir = %q
[[route]]
hosts    = ["a.test"]
upstream = "http://127.0.0.1:1"
`, dir)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// etcdConfig is a gatehouse config on etcd at url with one ACME route
// for a.test; the ACME directory does not answer (these tests are about
// the store, not about ordering).
func etcdConfig(t *testing.T, storage string) *routes.Config {
	t.Helper()
	cfg, err := routes.Parse([]byte(`
[acme]
email     = "ops@example.test"
directory = "https://127.0.0.1:1/dir"
[storage]
backend = "etcd"
` + storage + `
[[route]]
hosts    = ["a.test"]
upstream = "http://127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Both endpoint spellings reach etcd: the URL form Kubernetes manifests
// use and the bare host:port form.
func TestOpenStorageEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	bare := strings.TrimPrefix(etcd.URL, "http://")
	for i, ep := range []string{etcd.URL, bare} {
		cfg := etcdConfig(t, fmt.Sprintf("endpoints = [%q]\nprefix = \"open%d/\"", ep, i))
		st, err := OpenStorage(cfg.Storage)
		if err != nil {
			t.Fatalf("endpoint %q: %v", ep, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := st.Store(ctx, "k", []byte("v")); err != nil {
			t.Fatalf("endpoint %q: store: %v", ep, err)
		}
		if v, err := st.Load(ctx, "k"); err != nil || string(v) != "v" {
			t.Fatalf("endpoint %q: load = %q, %v", ep, v, err)
		}
		cancel()
		st.(interface{ Close() error }).Close()
	}

	// Nothing listening: a clear error naming the endpoint, in bounded time.
	port, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := etcdConfig(t, fmt.Sprintf("endpoints = [\"127.0.0.1:%d\"]", port))
	start := time.Now()
	_, err = OpenStorage(cfg.Storage)
	if err == nil {
		t.Fatal("OpenStorage succeeded with nothing listening")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("OpenStorage took %s to fail", d)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(port)) || !strings.Contains(err.Error(), "is etcd running") {
		t.Errorf("error does not name the endpoint or say what to check: %v", err)
	}
	t.Logf("unreachable: %v", err)
}

// With the store gone, StorageHealthy and gatehouse_storage_up say so
// within one probe interval plus the probe timeout, and recover when it
// is back.
func TestStorageHealth(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	cfg := etcdConfig(t, fmt.Sprintf("endpoints = [%q]\nprefix = \"health/\"\nhealth_interval = \"1s\"", etcd.URL))
	m, err := New(cfg, Options{Logger: testkit.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if up, err := m.StorageHealthy(); !up || err != nil {
		t.Fatalf("StorageHealthy at start = %v, %v", up, err)
	}
	if v := gaugeValue(metricStorageUp); v != 1 {
		t.Errorf("gatehouse_storage_up = %v at start, want 1", v)
	}

	etcd.Stop()
	took := testkit.WaitFor(t, 1*time.Second+healthTimeout+3*time.Second, "storage reported down", func() error {
		if up, _ := m.StorageHealthy(); up {
			return fmt.Errorf("still up")
		}
		return nil
	})
	t.Logf("reported down %s after etcd was killed", took.Round(10*time.Millisecond))
	_, herr := m.StorageHealthy()
	h := m.StorageHealth()
	if herr == nil || h.Up || h.Error == "" || !strings.HasPrefix(h.Backend, "etcdstore:") {
		t.Errorf("StorageHealth = %+v, err %v; want down with an error", h, herr)
	}
	if v := gaugeValue(metricStorageUp); v != 0 {
		t.Errorf("gatehouse_storage_up = %v while etcd is down, want 0", v)
	}

	etcd.Restart()
	took = testkit.WaitFor(t, 20*time.Second, "storage reported up again", func() error {
		if up, err := m.StorageHealthy(); !up {
			return fmt.Errorf("still down: %v", err)
		}
		return nil
	})
	t.Logf("reported up %s after etcd restarted", took.Round(10*time.Millisecond))
	if v := gaugeValue(metricStorageUp); v != 1 {
		t.Errorf("gatehouse_storage_up = %v after recovery, want 1", v)
	}
}

// plant stores a 90-day certificate resource for name the way
// certmagic does, as another replica's order or renewal would.
func plant(t *testing.T, st certmagic.Storage, issuerKey, name string, ca *acmetest.TestCA) *x509.Certificate {
	t.Helper()
	return plantWith(t, st, issuerKey, name, ca, 90*24*time.Hour)
}

// servedSerial handshakes through m.GetCertificate as the proxy does
// (handshake, lazy_test.go), without verifying the chain.
func servedSerial(m *Manager, table *routes.Table, name string) (string, error) {
	leaf, err := handshake(m, table, name, nil, nil)
	if err != nil {
		return "", err
	}
	return leaf.SerialNumber.Text(16), nil
}

// A certificate another replica obtains, then one it renews, reach this
// replica's handshakes within the sync interval, although this replica's
// own order cannot succeed and its copy is nowhere near renewal.
func TestStoreSync(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	cfg := etcdConfig(t, fmt.Sprintf("endpoints = [%q]\nprefix = \"sync/\"\nsync_interval = \"1s\"", etcd.URL))
	m, err := New(cfg, Options{Logger: testkit.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	m.mu.RLock()
	issuerKey := m.acme[""].Issuers[0].IssuerKey()
	m.mu.RUnlock()
	ca, err := acmetest.NewTestCA("peer CA")
	if err != nil {
		t.Fatal(err)
	}
	// A second Storage on the same prefix stands for the other replica.
	peer, err := OpenStorage(cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.(interface{ Close() error }).Close()

	// This replica's own order fails (the CA does not answer) and backs
	// off; the peer's certificate must not wait for its retry.
	testkit.WaitFor(t, 30*time.Second, "first order attempt failed", func() error {
		for _, st := range m.Status() {
			if st.Name == "a.test" && st.LastError != "" {
				return nil
			}
		}
		return fmt.Errorf("status %+v", m.Status())
	})
	first := plant(t, peer, issuerKey, "a.test", ca)
	took := testkit.WaitFor(t, 1*time.Second+5*time.Second, "certificate obtained by the peer served", func() error {
		s, err := servedSerial(m, table, "a.test")
		if err != nil {
			return err
		}
		if s != first.SerialNumber.Text(16) {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
	t.Logf("obtained by peer: served after %s", took.Round(10*time.Millisecond))

	// A renewal has a later NotBefore (whole seconds).
	for time.Now().Truncate(time.Second).Equal(first.NotBefore) {
		time.Sleep(100 * time.Millisecond)
	}
	renewed := plant(t, peer, issuerKey, "a.test", ca)
	took = testkit.WaitFor(t, 1*time.Second+5*time.Second, "certificate renewed by the peer served", func() error {
		s, err := servedSerial(m, table, "a.test")
		if err != nil {
			return err
		}
		if s != renewed.SerialNumber.Text(16) {
			return fmt.Errorf("serving %s", s)
		}
		return nil
	})
	t.Logf("renewed by peer: served after %s", took.Round(10*time.Millisecond))
	if n := len(m.cachedManaged("a.test")); n != 1 {
		t.Errorf("%d certificates cached for a.test after the reload, want 1 (the old one removed)", n)
	}

}
