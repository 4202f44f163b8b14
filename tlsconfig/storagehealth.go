package tlsconfig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
)

// The store's health, probed in one place. Every HealthInterval ([storage]
// health_interval) one round writes a probe key, reads it back and
// deletes it. The round answers two questions:
//
//   - Is the store reachable (gatehouse_storage_up, /readyz storage.up)?
//     An unreachable store (etcd down, a volume gone) does not stop
//     serving: certificates are served from memory, certmagic retries its
//     orders with backoff, and nothing is deleted.
//   - Does it take writes (gatehouse_storage_writable, /readyz
//     storage_write_error)? Storage that answers but refuses writes (a
//     disk remounted read-only, a full disk, lost etcd quorum) makes every
//     renewal fail inside certmagic before any event gatehouse sees; the
//     round says why.
//
// A failed write is followed by a read of the probe key: the store is
// reachable when that read is answered ("not found" is an answer). The
// file backend first stats its directory, so a missing directory
// (unmounted volume) reads as unreachable and is not created again by the
// probe.

// Defaults for [storage] sync_interval and health_interval.
const (
	DefaultSyncInterval   = time.Minute
	DefaultHealthInterval = 10 * time.Second
	// healthTimeout bounds one probe round (less when the interval is
	// shorter) and each storage call of the sync pass.
	healthTimeout = 5 * time.Second
)

var metricStorageWritable = prometheus.NewGauge(prometheus.GaugeOpts{
	Name: "gatehouse_storage_writable",
	Help: "1 when the certificate storage took the last probe write ([storage] health_interval), 0 when it failed (renewals cannot be saved).",
})

// StorageHealth is the store's state as the last probe round saw it.
type StorageHealth struct {
	Backend   string    `json:"backend"`
	Up        bool      `json:"up"`
	Error     string    `json:"error,omitempty"`
	Since     time.Time `json:"since"`               // when Up last changed
	LastCheck time.Time `json:"last_check,omitzero"` // zero (left out) before the first probe
}

// storeHealth is the outcome of the latest probe round.
type storeHealth struct {
	mu      sync.Mutex
	backend string
	key     string // this manager's probe key (replicas share a store)
	checked time.Time

	up    bool
	err   error     // why the store is not reachable
	since time.Time // when up last changed

	writeErr   error     // why the last probe write failed; nil: writable
	writeSince time.Time // when writes started failing
}

func newStoreHealth(backend string) storeHealth {
	// Opening the storage just reached it; the first round (at once)
	// says whether it takes writes.
	return storeHealth{backend: backend, key: "gatehouse/probe/" + randomHex(8), up: true, since: time.Now()}
}

// StorageHealthy reports whether the last probe reached the store, and
// its error when it did not.
func (m *Manager) StorageHealthy() (bool, error) {
	m.health.mu.Lock()
	defer m.health.mu.Unlock()
	return m.health.up, m.health.err
}

// StorageHealth returns the store's state for /readyz.
func (m *Manager) StorageHealth() StorageHealth {
	h := &m.health
	h.mu.Lock()
	defer h.mu.Unlock()
	out := StorageHealth{Backend: h.backend, Up: h.up, Since: h.since, LastCheck: h.checked}
	if h.err != nil {
		out.Error = h.err.Error()
	}
	return out
}

// StorageWriteError returns the storage's last write failure and since when
// it fails, or nil while storage takes writes.
func (m *Manager) StorageWriteError() (error, time.Time) {
	m.health.mu.Lock()
	defer m.health.mu.Unlock()
	return m.health.writeErr, m.health.writeSince
}

// runStorageHealth runs a probe round at once and then every interval
// until ctx ends.
func (m *Manager) runStorageHealth(ctx context.Context, interval time.Duration) {
	timeout := min(healthTimeout, interval)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.probeStorage(ctx, timeout)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeStorage runs one round, bounded by timeout, and records it.
func (m *Manager) probeStorage(ctx context.Context, timeout time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	reachErr, writeErr := m.storageRound(pctx)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: not the store's fault
	}
	m.setStorageHealth(reachErr, writeErr)
}

// storageRound writes the probe key, reads it back and deletes it.
// reachErr is set when the store did not answer at all, writeErr when
// any step failed.
func (m *Manager) storageRound(ctx context.Context) (reachErr, writeErr error) {
	if _, ok := m.storage.(*certmagic.FileStorage); ok {
		if _, err := m.storage.Stat(ctx, ""); err != nil {
			return err, err
		}
	}
	key := m.health.key
	want := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := m.storage.Store(ctx, key, want); err != nil {
		if _, rerr := m.storage.Stat(ctx, key); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return rerr, err
		}
		return nil, err
	}
	got, err := m.storage.Load(ctx, key)
	if err == nil && !bytes.Equal(got, want) {
		err = fmt.Errorf("read back %d bytes that differ from the %d written", len(got), len(want))
	}
	if derr := m.storage.Delete(ctx, key); err == nil {
		err = derr
	}
	return nil, err
}

// setStorageHealth records a round's outcome in both views (reachable,
// writable), their metrics and the log lines for each change.
func (m *Manager) setStorageHealth(reachErr, writeErr error) {
	if writeErr != nil {
		writeErr = fmt.Errorf("storage %s does not take writes: %w", storageName(m.storage), writeErr)
	}
	h := &m.health
	h.mu.Lock()
	now := time.Now()
	wasUp, upSince := h.up, h.since
	wasWritable, writeSince := h.writeErr == nil, h.writeSince
	h.checked = now
	h.err = reachErr
	up := reachErr == nil
	if up != h.up {
		h.up, h.since = up, now
	}
	h.writeErr = writeErr
	writable := writeErr == nil
	switch {
	case writable:
		h.writeSince = time.Time{}
	case wasWritable:
		h.writeSince = now
	}
	backend := h.backend
	h.mu.Unlock()

	metricStorageUp.Set(map[bool]float64{true: 1, false: 0}[up])
	metricStorageWritable.Set(map[bool]float64{true: 1, false: 0}[writable])
	switch {
	case wasUp && !up:
		m.log.Error("storage unreachable: serving the certificates in memory; orders, renewals and new names wait for it (retried with backoff)",
			"backend", backend, "error", reachErr)
	case !wasUp && up:
		m.log.Info("storage reachable again", "backend", backend, "down_for", now.Sub(upSince).Round(time.Second))
	}
	switch {
	case wasWritable && !writable:
		m.log.Error("STORAGE DOES NOT TAKE WRITES: certificates in memory keep serving, but renewals and new certificates cannot be saved until it does; nothing is deleted",
			"error", writeErr)
	case !wasWritable && writable:
		m.log.Info("storage takes writes again", "failed_for", now.Sub(writeSince).Round(time.Second))
	}
}

func storageName(s any) string {
	if st, ok := s.(fmt.Stringer); ok {
		return st.String()
	}
	return fmt.Sprintf("%T", s)
}
