package tlsconfig

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// statCounting is a file store (it lists and names files like one) that
// counts the Stats of each key.
type statCounting struct {
	countingFiles
	mu    sync.Mutex
	stats map[string]int
}

func (s *statCounting) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	s.mu.Lock()
	s.stats[key]++
	s.mu.Unlock()
	return s.countingFiles.Stat(ctx, key)
}

func (s *statCounting) statsOf(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, c := range s.stats {
		if strings.Contains(k, "/"+name+"/") {
			n += c
		}
	}
	return n
}

// A name's first handshake on the file store looks its certificate
// files up once — certmagic's read — not once more to fingerprint them
// for the store sync (loadnotes.go); the fingerprint it records is the
// one the sync pass computes, so an unchanged store is not read again
// and a certificate another replica stored afterwards is loaded.
func TestFirstLoadFingerprintsWhatItReads(t *testing.T) {
	const n = 80 // above smallIndex: indexed by listing, not by Stat
	cfg, fst, names, _, ca := plantedNames(t, n, "fp%02d.many.test")
	st := &statCounting{countingFiles: countingFiles{testkit.NewCountingStorage(fst), fst}, stats: map[string]int{}}
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: st, SyncInterval: time.Hour, StoredCheckRate: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	name := names[n-1] // (the walk, 1 a second, reads files; it never Stats them)
	testkit.WaitFor(t, 30*time.Second, "names indexed", func() error {
		if !m.stored.pending(name) {
			return errNotAllRead
		}
		return nil
	})
	before := st.statsOf(name)
	if _, err := servedSerial(m, table, name); err != nil {
		t.Fatal(err)
	}
	if l := m.StoredLoads(); l != 1 {
		t.Fatalf("%d loads from storage, want 1", l)
	}
	if s := st.statsOf(name) - before; s != 0 {
		t.Errorf("the first handshake looked %s's files up %d times more than it read them, want 0", name, s)
	}

	ctx := context.Background()
	m.mu.RLock()
	c := m.byName[name]
	m.mu.RUnlock()
	want, _, err := m.storeFingerprint(ctx, c, name)
	if err != nil {
		t.Fatal(err)
	}
	m.syncMu.Lock()
	got, ok := m.synced[name]
	m.syncMu.Unlock()
	if !ok || got != want {
		t.Fatalf("fingerprint recorded by the load %x (recorded %v), the sync pass computes %x", got, ok, want)
	}
	reads := st.LoadsOf(name)
	if err := m.syncName(ctx, c, name); err != nil {
		t.Fatal(err)
	}
	if r := st.LoadsOf(name) - reads; r != 0 {
		t.Errorf("sync pass over an unchanged store read %s's files %d times, want 0", name, r)
	}

	// another replica renews it (a later NotBefore: the test CA's is
	// in whole seconds): the next pass loads the new one
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	renewed := plantWith(t, fst, issuerKey, name, ca, 48*time.Hour)
	if err := m.syncName(ctx, c, name); err != nil {
		t.Fatal(err)
	}
	if s, err := servedSerial(m, table, name); err != nil || s != renewed.SerialNumber.Text(16) {
		t.Errorf("after the store changed: serving %s (%v), want the renewed %s", s, err, renewed.SerialNumber.Text(16))
	}
}
