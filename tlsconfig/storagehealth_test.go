package tlsconfig

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// One probe round (write, read back, delete) updates both views of the
// store at once: reachable (StorageHealth, gatehouse_storage_up) and
// writable (StorageWriteError, gatehouse_storage_writable), with the
// time of the check. A store whose directory is gone is neither
// reachable nor writable (and the probe does not create it again); a
// read-only store is reachable and not writable; each recovers in the
// next round.
func TestStorageProbeOneRound(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	cfg := fileConfig(t, dir)
	// only the round at start runs by itself; the test runs the others
	m, err := New(cfg, Options{Logger: testkit.TestLogger(t), HealthInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	testkit.WaitFor(t, 10*time.Second, "the first probe round", func() error {
		if m.StorageHealth().LastCheck.IsZero() {
			return fmt.Errorf("no round yet")
		}
		return nil
	})

	var last time.Time
	round := func(wantUp, wantWritable bool, wantErr string) {
		t.Helper()
		m.probeStorage(context.Background(), healthTimeout)
		h := m.StorageHealth()
		up, upErr := m.StorageHealthy()
		werr, wsince := m.StorageWriteError()
		if !h.LastCheck.After(last) {
			t.Errorf("LastCheck %v did not move past %v", h.LastCheck, last)
		}
		last = h.LastCheck
		if h.Up != wantUp || up != wantUp || (h.Error == "") != wantUp || (upErr == nil) != wantUp {
			t.Errorf("reachable view: StorageHealth %+v, StorageHealthy %v, %v; want up=%v", h, up, upErr, wantUp)
		}
		if (werr == nil) != wantWritable || wsince.IsZero() != wantWritable {
			t.Errorf("writable view: StorageWriteError %v since %v; want writable=%v", werr, wsince, wantWritable)
		}
		if werr != nil && !strings.Contains(werr.Error(), wantErr) {
			t.Errorf("StorageWriteError %q does not say %q", werr, wantErr)
		}
		b := map[bool]float64{true: 1, false: 0}
		if v := gaugeValue(metricStorageUp); v != b[wantUp] {
			t.Errorf("gatehouse_storage_up = %v, want %v", v, b[wantUp])
		}
		if v := gaugeValue(metricStorageWritable); v != b[wantWritable] {
			t.Errorf("gatehouse_storage_writable = %v, want %v", v, b[wantWritable])
		}
	}

	round(true, true, "")
	ents, err := os.ReadDir(filepath.Join(dir, "gatehouse", "probe"))
	if err != nil || len(ents) != 0 {
		t.Errorf("probe keys left in storage: %v, %v", ents, err)
	}

	// the directory gone (a volume not mounted): neither, and not created again
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	round(false, false, "no such file or directory")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the probe created the missing storage directory again: %v", err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	round(true, true, "")

	// reachable, not writable (skipped where bind mounts are not allowed)
	writable := testkit.ReadOnly(t, dir)
	round(true, false, "read-only file system")
	writable()
	round(true, true, "")
}
