package tlsconfig

// ECH in DNS: with an [acme.dns] provider that can write HTTPS records
// (rfc2136, or an exec hook that takes `https FQDN RDATA`), gatehouse
// publishes each ECH name's HTTPS record (RFC 9460, ech= per RFC 9848)
// itself, and again whenever the key rotates. What was published, and
// the last failure, is kept in storage (echPublishedKey), so `gatehouse
// certs`, /readyz and every replica see the same state, and a replica
// does not publish what another one already did.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

const (
	echPublishedKey = "ech/published.json"
	// echPublishRetry is how long a failed publication waits before the
	// next try (the keyring's minute loop drives the tries).
	echPublishRetry = 5 * time.Minute
	echPublishLimit = 2 * time.Minute // one round of updates
)

// httpsPublisher is a DNS provider that can replace a name's HTTPS records.
type httpsPublisher interface {
	PublishHTTPS(ctx context.Context, zone, fqdn, rdata string) error
}

// ECHPublished is what gatehouse put into DNS for ECH.
type ECHPublished struct {
	ConfigList string    `json:"config_list"` // base64, as published
	Names      []string  `json:"names"`
	At         time.Time `json:"at,omitzero"` // last successful publication
	Error      string    `json:"error,omitempty"`
	ErrorAt    time.Time `json:"error_at,omitzero"`
	// Current reports whether the published config is the one
	// gatehouse serves now (false after a rotation not yet published).
	Current bool `json:"current"`
}

// ECHNames are the names an HTTPS record with ech= should carry: the
// exact hosts of routes gatehouse terminates. Passthrough routes are
// routed by the outer name only and cannot use ECH.
func ECHNames(cfg *routes.Config) []string {
	var names []string
	for _, e := range routes.NewTable(cfg).Entries() {
		if e.Mode() == routes.ModePassthrough {
			continue
		}
		for _, h := range e.Hosts {
			if h != "*" && !strings.HasPrefix(h, "*.") {
				names = append(names, h)
			}
		}
	}
	return names
}

// ECHALPN is the alpn= of the HTTPS records: h3 when HTTP/3 is on.
func ECHALPN(cfg *routes.Config) []string {
	if cfg.Listen.HTTP3 != nil && !*cfg.Listen.HTTP3 {
		return []string{"h2", "http/1.1"}
	}
	return []string{"h3", "h2"}
}

func echRData(alpn []string, list []byte) string {
	return fmt.Sprintf("1 . alpn=%q ech=%q", strings.Join(alpn, ","), base64.StdEncoding.EncodeToString(list))
}

// LoadECHPublished reads what was published, nil when nothing was.
func LoadECHPublished(ctx context.Context, storage certmagic.Storage, current []byte) (*ECHPublished, error) {
	b, err := storage.Load(ctx, echPublishedKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p ECHPublished
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", echPublishedKey, err)
	}
	p.Current = current != nil && p.ConfigList == base64.StdEncoding.EncodeToString(current) && !p.At.IsZero()
	return &p, nil
}

// ECHPublishState is the publication state for /readyz; nil when ECH is
// off or no provider publishes HTTPS records.
func (m *Manager) ECHPublishState() *ECHPublished {
	return m.echPub.Load()
}

// publishECH puts the current ECH config into every ECH name's HTTPS
// record when the stored state says it is not there yet (or the last
// try failed long enough ago). One round at a time.
func (m *Manager) publishECH() {
	if !m.echPublishing.CompareAndSwap(false, true) {
		return
	}
	defer m.echPublishing.Store(false)
	m.mu.RLock()
	cfg := m.cfg
	m.mu.RUnlock()
	list, _ := m.ECHConfigList()
	if cfg == nil || list == nil {
		return
	}
	set := newDNSSettings(cfg)
	if set == nil {
		return
	}
	pub, ok := set.provider.(httpsPublisher)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, echPublishLimit)
	defer cancel()
	names := ECHNames(cfg)
	prev, err := LoadECHPublished(ctx, m.storage, list)
	if err != nil {
		m.log.Warn("ECH: cannot read the publication state; publishing again", "error", err)
		prev = nil
	}
	if prev != nil && prev.Current && slices.Equal(prev.Names, names) {
		m.echPub.Store(prev)
		return
	}
	if prev != nil && prev.Error != "" && time.Since(prev.ErrorAt) < echPublishRetry &&
		prev.ConfigList == base64.StdEncoding.EncodeToString(list) {
		m.echPub.Store(prev)
		return
	}
	st := ECHPublished{ConfigList: base64.StdEncoding.EncodeToString(list), Names: names}
	if prev != nil {
		st.At = prev.At
	}
	rdata := echRData(ECHALPN(cfg), list)
	var errs []string
	for _, n := range names {
		fqdn := dns.Fqdn(n)
		zone, err := set.zoneFor(ctx, fqdn)
		if err == nil {
			err = pub.PublishHTTPS(ctx, zone, fqdn, rdata)
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", n, err))
		}
	}
	if len(errs) > 0 {
		st.Error, st.ErrorAt = strings.Join(errs, "; "), time.Now()
		m.log.Error("ECH: publishing the HTTPS records failed; clients with an older record are answered with retry configs",
			"provider", set.desc, "error", st.Error)
	} else {
		st.At, st.Current = time.Now(), true
		m.log.Info("ECH: HTTPS records published", "names", len(names), "provider", set.desc)
	}
	if b, err := json.MarshalIndent(st, "", "  "); err == nil {
		if err := m.storage.Store(ctx, echPublishedKey, b); err != nil {
			m.log.Warn("ECH: cannot store the publication state", "error", err)
		}
	}
	m.echPub.Store(&st)
}
