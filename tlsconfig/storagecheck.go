package tlsconfig

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Storage that stops taking writes (a disk remounted read-only, a full
// disk, lost etcd quorum) does not stop serving: certificates are
// served from memory. But every renewal then fails inside certmagic
// before any event gatehouse sees, and the reachability probe
// (storesync.go) only reads, so nothing would say why. The manager
// writes, reads back and deletes a probe key on a schedule and reports
// the first failure, the recovery, and the state in between.

var metricStorageWritable = prometheus.NewGauge(prometheus.GaugeOpts{
	Name: "gatehouse_storage_writable",
	Help: "1 when the certificate storage took the last probe write, 0 when it failed (renewals cannot be saved).",
})

// writeHealth is the outcome of the latest probes.
type writeHealth struct {
	mu    sync.Mutex
	err   error
	since time.Time
}

// StorageWriteError returns the storage's last write failure and since when
// it fails, or nil while storage takes writes.
func (m *Manager) StorageWriteError() (error, time.Time) {
	m.writeHealth.mu.Lock()
	defer m.writeHealth.mu.Unlock()
	return m.writeHealth.err, m.writeHealth.since
}

// watchWrites probes storage every interval until ctx ends.
func (m *Manager) watchWrites(ctx context.Context, interval time.Duration) {
	key := "gatehouse/probe/" + randomHex(8)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.probeWrite(ctx, key)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) probeWrite(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	want := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	err := m.storage.Store(ctx, key, want)
	if err == nil {
		var got []byte
		if got, err = m.storage.Load(ctx, key); err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("read back %d bytes that differ from the %d written", len(got), len(want))
		}
		if derr := m.storage.Delete(ctx, key); err == nil {
			err = derr
		}
	}
	if ctx.Err() != nil && m.ctx.Err() != nil {
		return // shutting down
	}
	h := &m.writeHealth
	h.mu.Lock()
	was, since := h.err, h.since
	if err != nil {
		if was == nil {
			h.since = time.Now()
		}
		h.err = fmt.Errorf("storage %s does not take writes: %w", storageName(m.storage), err)
	} else {
		h.err, h.since = nil, time.Time{}
	}
	now := h.err
	h.mu.Unlock()
	switch {
	case now != nil && was == nil:
		metricStorageWritable.Set(0)
		m.log.Error("STORAGE DOES NOT TAKE WRITES: certificates in memory keep serving, but renewals and new certificates cannot be saved until it does; nothing is deleted",
			"error", now)
	case now == nil && was != nil:
		metricStorageWritable.Set(1)
		m.log.Info("storage takes writes again", "failed_for", time.Since(since).Round(time.Second))
	case now == nil:
		metricStorageWritable.Set(1)
	}
}

func storageName(s any) string {
	if st, ok := s.(fmt.Stringer); ok {
		return st.String()
	}
	return fmt.Sprintf("%T", s)
}
