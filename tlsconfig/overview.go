package tlsconfig

import (
	"context"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The status page's data (proxy/admin_statuspage.go): what `gatehouse certs
// --json` reads from storage (Inventory), merged with what this process
// knows live (Status: orders running, failures, backoff) and what
// /readyz reports (the store's health, the counts).

// orderStale: an order attempt "running" for longer than this is not
// counted as running (certmagic gives up on an attempt well before; a
// lost event must not hide an expiring certificate from the alert that
// asks whether a renewal is in progress).
const orderStale = 15 * time.Minute

var (
	notBeforeDesc = prometheus.NewDesc("gatehouse_cert_not_before_seconds",
		"Unix time the certificate served for a name became valid (NotBefore of the certificate gatehouse_cert_not_after_seconds reports; loaded certificates only).", []string{"name"}, nil)
	stapleExpiryDesc = prometheus.NewDesc("gatehouse_ocsp_staple_next_update_by_name_seconds",
		"Unix time the OCSP staple served for a certificate stops being current (its NextUpdate), by the certificate's first name; it is refreshed at half its validity.", []string{"name"}, nil)
	renewingDesc = prometheus.NewDesc("gatehouse_cert_renewal_in_progress",
		"1 while an order or renewal attempt for the name is running, 0 otherwise (one series per name with a certificate).", []string{"name"}, nil)
)

func (b *statusBook) orderStarted(name string) {
	if name == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ordering == nil {
		b.ordering = map[string]time.Time{}
	}
	b.ordering[name] = time.Now()
}

func (b *statusBook) orderDone(name string) {
	b.mu.Lock()
	delete(b.ordering, name)
	b.mu.Unlock()
}

// orderingNow returns the names with an attempt running at now.
func (b *statusBook) orderingNow(now time.Time) map[string]time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]time.Time{}
	for n, t := range b.ordering {
		if now.Sub(t) < orderStale {
			out[n] = t
		} else {
			delete(b.ordering, n)
		}
	}
	return out
}

// CertView is one row of the status page: the stored certificate
// (Inventory) and the running process's view of the name.
type CertView struct {
	CertInfo
	Live     string    `json:"live_state,omitempty"` // NameStatus.State: ready, waiting, stored, expired ("" when this process does not serve it)
	Ordering bool      `json:"ordering,omitempty"`   // an order attempt is running now
	FailedAt time.Time `json:"failed_at,omitzero"`
}

// Overview is everything the status page shows about certificates and
// the store.
type Overview struct {
	Generated    time.Time  `json:"generated"`
	Certificates []CertView `json:"certificates"`
	// More is how many certificates were left out (limit).
	More int `json:"more,omitempty"`
	// InventoryError is why storage could not be listed (the rows then
	// come from memory alone).
	InventoryError string `json:"inventory_error,omitempty"`

	Storage           StorageHealth `json:"storage"`
	WriteError        string        `json:"storage_write_error,omitempty"`
	WriteFailingSince time.Time     `json:"storage_write_failing_since,omitzero"`

	Names, Waiting, InFlight, StoredUnchecked int
	// Failures are the names whose last order failed, newest first.
	Failures []NameStatus `json:"failures"`
}

// routeProfile is the ACME profile a route's names are ordered with.
func routeProfile(cfg *routes.Config, e *routes.Entry) string {
	if e.Issuer != "acme" {
		return ""
	}
	if e.Route.Profile != "" {
		return e.Route.Profile
	}
	if len(cfg.ACME.Issuer.List) > 0 && cfg.ACME.Issuer.List[0].Profile != "" {
		return cfg.ACME.Issuer.List[0].Profile
	}
	return cfg.ACME.Profile
}

// Overview builds the status page's data: at most limit certificate
// rows (the configured names first, in config order, then what else
// storage holds) and at most limit recent failures. Reading storage is
// bounded by ctx; when it fails, the rows come from memory and
// InventoryError says why.
func (m *Manager) Overview(ctx context.Context, limit int) Overview {
	now := time.Now()
	m.mu.RLock()
	cfg := m.cfg
	m.mu.RUnlock()
	ov := Overview{Generated: now, Storage: m.StorageHealth(), StoredUnchecked: m.StoredUnchecked()}
	if err, since := m.StorageWriteError(); err != nil {
		ov.WriteError, ov.WriteFailingSince = err.Error(), since
	}
	ov.Names, ov.Waiting, ov.InFlight, _ = m.Readiness(0)

	live := m.Status()
	byName := make(map[string]NameStatus, len(live))
	for _, st := range live {
		byName[st.Name] = st
		if st.LastError != "" {
			ov.Failures = append(ov.Failures, st)
		}
	}
	sort.SliceStable(ov.Failures, func(i, j int) bool { return ov.Failures[i].FailedAt.After(ov.Failures[j].FailedAt) })
	if len(ov.Failures) > limit {
		ov.Failures = ov.Failures[:limit]
	}
	ordering := m.status.orderingNow(now)

	var infos []CertInfo
	if cfg != nil {
		var err error
		if infos, err = Inventory(ctx, m.storage, cfg); err != nil {
			ov.InventoryError = err.Error()
		}
	}
	listed := map[string]bool{}
	for _, ci := range infos {
		listed[ci.Name] = true
	}
	// names this process serves that storage did not list (storage down)
	for _, st := range live {
		if !listed[st.Name] {
			infos = append(infos, CertInfo{Name: st.Name, Source: st.Issuer, State: "unknown"})
		}
	}
	for _, ci := range infos {
		if len(ov.Certificates) >= limit {
			ov.More++
			continue
		}
		v := CertView{CertInfo: ci}
		if st, ok := byName[ci.Name]; ok {
			v.Live = st.State
			if st.LastError != "" {
				v.LastError, v.FailedAt = st.LastError, st.FailedAt
			}
			if !st.NextOrder.IsZero() {
				v.NextRetry = st.NextOrder
			}
		}
		_, v.Ordering = ordering[ci.Name]
		ov.Certificates = append(ov.Certificates, v)
	}
	return ov
}
