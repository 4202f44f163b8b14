package tlsconfig

import (
	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// forget lets go of what the new table no longer uses, never of a file
// in storage: a name no route serves any more is no longer renewed nor
// reported; a name whose route switched between ACME and the internal
// CA, or to a manual certificate, drops its old managed certificate (a
// new one is then loaded or ordered); a manual certificate whose files
// no route names is dropped from the cache — when its names' route
// switched to ACME or internal, only once they have their managed
// certificate, so the switch fails no handshake. Called by Apply with
// m.mu held, before the new names are handed to certmagic.
func (m *Manager) forget(t *routes.Table, before map[string]*certmagic.Config) {
	routed := map[string]string{} // name -> issuer in the new table
	files := map[string]bool{}
	for _, e := range t.Entries() {
		for _, h := range e.Hosts {
			routed[h] = e.Issuer
		}
		if e.Issuer == "manual" {
			files[e.Route.Cert+"\x00"+e.Route.Key] = true
		}
	}
	var unmanage []certmagic.SubjectIssuer
	for name, prev := range before {
		_, still := routed[name]
		now := m.byName[name]
		switch {
		case !still:
			delete(m.byName, name)
			m.status.remove(name)
			m.stored.drop(name)
			if prev != m.manual {
				unmanage = append(unmanage, certmagic.SubjectIssuer{Subject: name})
				m.log.Info("name no longer routed: its certificate stays in storage but is no longer renewed", "name", name)
			}
		case prev != m.manual && m.kind(prev) != m.kind(now):
			m.stored.drop(name)
			unmanage = append(unmanage, certmagic.SubjectIssuer{Subject: name})
			m.log.Info("certificate source changed on reload", "name", name, "from", m.kind(prev), "to", m.kind(now))
		}
	}
	m.cache.RemoveManaged(unmanage)

	for key, mc := range m.manualBy {
		if files[key] {
			continue
		}
		delete(m.manualBy, key)
		if m.manualInUse(mc.hash, key) {
			continue
		}
		waiting := map[string]bool{}
		for _, n := range mc.leaf.DNSNames {
			if iss := routed[n]; (iss == "acme" || iss == "internal") && !m.hasManaged(n) {
				waiting[n] = true
			}
		}
		if len(waiting) == 0 {
			m.cache.Remove([]string{mc.hash})
			m.staples.unregister(mc.leaf)
			continue
		}
		m.staleMu.Lock()
		m.stale = append(m.stale, &staleManual{mc: mc, waiting: waiting})
		m.staleMu.Unlock()
	}
}

// staleManual is a manual certificate kept serving its names until the
// managed certificates that replace it are cached.
type staleManual struct {
	mc      *manualCert
	waiting map[string]bool
}

// replaced is told that a managed certificate for name was cached: a
// stale manual certificate whose names all have theirs now goes.
func (m *Manager) replaced(name string) {
	m.staleMu.Lock()
	defer m.staleMu.Unlock()
	kept := m.stale[:0]
	for _, st := range m.stale {
		delete(st.waiting, name)
		if len(st.waiting) > 0 {
			kept = append(kept, st)
			continue
		}
		m.cache.Remove([]string{st.mc.hash})
		m.staples.unregister(st.mc.leaf)
		m.log.Info("manual certificate replaced by a managed one", "names", st.mc.leaf.DNSNames, "serial", st.mc.leaf.SerialNumber.Text(16))
	}
	m.stale = kept
}

// kind names where a certmagic config gets its certificates.
func (m *Manager) kind(c *certmagic.Config) string {
	switch {
	case c == nil:
		return ""
	case c == m.manual:
		return "manual"
	case c == m.internal:
		return "internal"
	}
	return "acme"
}

// hasManaged reports whether a managed certificate for name is cached.
func (m *Manager) hasManaged(name string) bool {
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if !c.HasTag("manual") {
			return true
		}
	}
	return false
}
