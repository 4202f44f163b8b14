package tlsconfig

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// heldListing is a real store whose listings wait until released: the
// index of stored certificates is then still being built, as it is for
// up to a second after a start with 100,000 names. It has no Filename
// method, so the index lists through List.
type heldListing struct {
	certmagic.Storage
	listing     chan struct{} // closed at the first List
	release     chan struct{} // closed to let the listings go
	listingOnce sync.Once
}

func (s *heldListing) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	s.listingOnce.Do(func() { close(s.listing) })
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Storage.List(ctx, prefix, recursive)
}

// A handshake for a stored name that arrives while the index is being
// built waits for it and is served the stored certificate, loaded
// through the index (no TLS internal_error because gatehouse is still
// indexing).
func TestStoredNameServedWhileIndexing(t *testing.T) {
	const n = 2000
	cfg, fst, names, serials, ca := plantedNames(t, n, "i%04d.indexing.test")
	st := &heldListing{Storage: fst, listing: make(chan struct{}), release: make(chan struct{})}
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	select {
	case <-st.listing:
	case <-time.After(20 * time.Second):
		t.Fatal("the index build never listed the store")
	}
	asked := []string{names[0], names[n/2], names[n-1], names[7]}
	var arrived atomic.Int64
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(asked))
	for _, name := range asked {
		go func() {
			leaf, err := handshake(m, table, name, ca.Pool(), func() { arrived.Add(1) })
			if err == nil && leaf.SerialNumber.Text(16) != serials[name] {
				err = fmt.Errorf("served serial %s, want the stored %s", leaf.SerialNumber.Text(16), serials[name])
			}
			results <- result{name, err}
		}()
	}
	testkit.WaitFor(t, 20*time.Second, "handshakes asking for their certificate", func() error {
		if a := arrived.Load(); a < int64(len(asked)) {
			return fmt.Errorf("%d of %d", a, len(asked))
		}
		return nil
	})
	// the listing is held: none of them can have been answered yet
	select {
	case r := <-results:
		t.Fatalf("%s answered while the index was still being built: %v", r.name, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(st.release)
	for range asked {
		r := <-results
		if r.err != nil {
			t.Errorf("%s during indexing: %v", r.name, r.err)
		}
	}
	if l := m.StoredLoads(); l != int64(len(asked)) {
		t.Errorf("%d certificates loaded through the index, want %d (one per name asked)", l, len(asked))
	}
}

// The wait for the index is bounded by the handshake timeout: with the
// listing held for good, the handshake fails after it instead of
// hanging, and the names are served once the listing goes on.
func TestIndexWaitBoundedByHandshakeTimeout(t *testing.T) {
	const n = 100 // above smallIndex: the index lists the store
	cfg, fst, names, serials, ca := plantedNames(t, n, "b%03d.indexing.test")
	cfg.Timeouts.Handshake = routes.Duration(time.Second)
	st := &heldListing{Storage: fst, listing: make(chan struct{}), release: make(chan struct{})}
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	<-st.listing
	done := make(chan error, 1)
	go func() {
		_, err := handshake(m, table, names[3], ca.Pool(), nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("served a certificate while the index was held")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("handshake still waiting for the index well past the 1s handshake timeout")
	}
	close(st.release)
	testkit.WaitFor(t, 20*time.Second, "names indexed", func() error {
		if !m.stored.pending(names[3]) {
			return errors.New("not indexed yet")
		}
		return nil
	})
	leaf, err := handshake(m, table, names[3], ca.Pool(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.SerialNumber.Text(16) != serials[names[3]] {
		t.Errorf("served serial %s, want %s", leaf.SerialNumber.Text(16), serials[names[3]])
	}
}

// heldStat is a real store whose Stat of a stored certificate waits
// until released: a small index (a name or a few, looked up one by one)
// is then still being built.
type heldStat struct {
	certmagic.Storage
	statting chan struct{} // closed at the first Stat of a certificate
	release  chan struct{}
	once     sync.Once
}

func (s *heldStat) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if strings.HasPrefix(key, "certificates/") {
		s.once.Do(func() { close(s.statting) })
		select {
		case <-s.release:
		case <-ctx.Done():
			return certmagic.KeyInfo{}, ctx.Err()
		}
	}
	return s.Storage.Stat(ctx, key)
}

// A "*.suffix" route's stored wildcard certificate, asked for (as
// a.wild.test) while the index is being built, waits for the index like
// a configured name and is served; it failed with a TLS internal_error
// (TestDNS01WildcardRFC2136 saw it after a restart).
func TestStoredWildcardServedWhileIndexing(t *testing.T) {
	dir := t.TempDir()
	ca, err := acmetest.NewTestCA("wildcard index CA")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := routes.Parse([]byte(fmt.Sprintf(`
[acme]
email      = "ops@example.test"
directory  = "https://127.0.0.1:1/dir"
challenges = ["dns-01"]
[acme.dns]
provider = "exec"
command  = ["/bin/true"]
[storage]
dir = %q
[[route]]
hosts    = ["*.wild.test"]
upstream = "http://127.0.0.1:1"
`, dir)))
	if err != nil {
		t.Fatal(err)
	}
	fst := &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	stored := plantWith(t, fst, issuerKey, "*.wild.test", ca, 24*time.Hour)
	st := &heldStat{Storage: fst, statting: make(chan struct{}), release: make(chan struct{})}
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	select {
	case <-st.statting:
	case <-time.After(20 * time.Second):
		t.Fatal("the index build never looked for the stored certificate")
	}
	done := make(chan error, 1)
	go func() {
		leaf, err := handshake(m, table, "a.wild.test", ca.Pool(), nil)
		if err == nil && !leaf.Equal(stored) {
			err = fmt.Errorf("served serial %s, want the stored %s", leaf.SerialNumber.Text(16), stored.SerialNumber.Text(16))
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("answered while the index was still being built: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(st.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a.wild.test during indexing: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handshake still waiting 20 s after the index was released")
	}
}
