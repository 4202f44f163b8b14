package tlsconfig

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Above [listen] metrics_name_limit names, /metrics keeps the per-name
// certificate series only for names that need attention (here: two
// certificates within two days of expiry), with the count of names and
// the earliest expiry beside them; at or below it (or with the limit
// lifted by a reload) every name has its series.
func TestCertSeriesLimitedAboveNameLimit(t *testing.T) {
	dir := t.TempDir()
	ca, err := acmetest.NewTestCA("limit test CA")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 12 {
		names = append(names, fmt.Sprintf("l%02d.limit.test", i))
	}
	cfgFor := func(limit int) *routes.Config {
		cfg := manyNamesConfig(t, fmt.Sprintf("[storage]\ndir = %q\n", dir), names)
		cfg.Listen.MetricsNameLimit = &limit
		return cfg
	}
	cfg := cfgFor(5)
	fst := &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	soon := map[string]time.Time{} // names[0] and names[1]: 12 h left
	for i, name := range names {
		validity := 90 * 24 * time.Hour
		if i < 2 {
			validity = 12 * time.Hour
		}
		leaf := plantWith(t, fst, issuerKey, name, ca, validity)
		if i < 2 {
			soon[name] = leaf.NotAfter
		}
	}
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: fst, StoredCheckRate: 5000})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	table := routes.NewTable(cfg)
	if err := m.Apply(table); err != nil {
		t.Fatal(err)
	}
	// one name of each kind served (loaded), the others read by the walk
	for _, name := range []string{names[0], names[5]} {
		if _, err := handshake(m, table, name, ca.Pool(), nil); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 30*time.Second, "background walk over the stored certificates", func() error {
		if u := m.StoredUnchecked(); u != 0 {
			return fmt.Errorf("%d names not checked yet", u)
		}
		return nil
	})

	earliest := soon[names[0]]
	if soon[names[1]].Before(earliest) {
		earliest = soon[names[1]]
	}
	s := scrapeLive(t)
	if got := s.names("gatehouse_cert_not_after_seconds"); !sameSet(got, names[:2]) {
		t.Errorf("12 names, limit 5: not_after series for %v, want only the two expiring within a day %v", got, names[:2])
	}
	if got := s.names("gatehouse_cert_not_before_seconds"); !sameSet(got, names[:1]) {
		t.Errorf("12 names, limit 5: not_before series for %v, want the loaded one needing attention %v", got, names[:1])
	}
	if got := s.names("gatehouse_cert_renewal_in_progress"); !sameSet(got, names[:2]) {
		t.Errorf("12 names, limit 5: renewal_in_progress series for %v, want %v", got, names[:2])
	}
	if v := s.value("gatehouse_cert_not_after_seconds", names[0]); v != float64(soon[names[0]].Unix()) {
		t.Errorf("%s: not_after %v, want %d", names[0], v, soon[names[0]].Unix())
	}
	if v := s.value("gatehouse_cert_names", ""); v != 12 {
		t.Errorf("gatehouse_cert_names = %v, want 12", v)
	}
	if v := s.value("gatehouse_cert_not_after_earliest_seconds", ""); v != float64(earliest.Unix()) {
		t.Errorf("gatehouse_cert_not_after_earliest_seconds = %v, want %d", v, earliest.Unix())
	}
	if v := s.value("gatehouse_cert_series_limited", ""); v != 1 {
		t.Errorf("gatehouse_cert_series_limited = %v, want 1", v)
	}

	// a reload lifting the limit: every name again
	if err := m.Apply(routes.NewTable(cfgFor(0))); err != nil {
		t.Fatal(err)
	}
	s = scrapeLive(t)
	if got := s.names("gatehouse_cert_not_after_seconds"); !sameSet(got, names) {
		t.Errorf("no limit: not_after series for %d names %v, want all 12", len(got), got)
	}
	if v := s.value("gatehouse_cert_series_limited", ""); v != 0 {
		t.Errorf("no limit: gatehouse_cert_series_limited = %v, want 0", v)
	}
	if v := s.value("gatehouse_cert_not_after_earliest_seconds", ""); v != float64(earliest.Unix()) {
		t.Errorf("no limit: gatehouse_cert_not_after_earliest_seconds = %v, want %d", v, earliest.Unix())
	}
}

type scrape map[string]*dto.MetricFamily

// scrapeLive gathers the per-certificate metrics as /metrics does.
func scrapeLive(t *testing.T) scrape {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(liveMetrics)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	s := scrape{}
	for _, mf := range mfs {
		s[mf.GetName()] = mf
	}
	return s
}

// names returns the name labels of family's series under .limit.test.
func (s scrape) names(family string) []string {
	var out []string
	if mf := s[family]; mf != nil {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" && strings.HasSuffix(l.GetValue(), ".limit.test") {
					out = append(out, l.GetValue())
				}
			}
		}
	}
	return out
}

// value returns the gauge of family for name ("" for a series without
// labels), or -1 when there is none.
func (s scrape) value(family, name string) float64 {
	mf := s[family]
	if mf == nil {
		return -1
	}
	for _, m := range mf.GetMetric() {
		got := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == "name" {
				got = l.GetValue()
			}
		}
		if got == name {
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[string]bool{}
	for _, x := range a {
		in[x] = true
	}
	for _, x := range b {
		if !in[x] {
			return false
		}
	}
	return true
}
