package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// monitoringDir holds the alert rules, their promtool tests and the
// Grafana dashboard that ship with gatehouse.
const monitoringDir = "../../deploy/monitoring"

var metricRef = regexp.MustCompile(`\bgatehouse_[a-z0-9_]*[a-z0-9]`)

// referencedMetrics returns every gatehouse_* metric name the files in
// deploy/monitoring name, with the files naming each.
func referencedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(monitoringDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string][]string{}
	for _, f := range files {
		if !strings.HasSuffix(f, ".yml") && !strings.HasSuffix(f, ".json") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricRef.FindAllString(string(b), -1) {
			if !strings.Contains(strings.Join(refs[m], ","), filepath.Base(f)) {
				refs[m] = append(refs[m], filepath.Base(f))
			}
		}
	}
	return refs
}

// exposedMetrics scrapes /metrics and returns every sample name in it
// (histograms as their _bucket, _sum and _count series).
func exposedMetrics(t *testing.T, admin string) map[string]bool {
	t.Helper()
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// Every metric the alert rules, their tests and the dashboard name is in
// a real scrape of a running gatehouse (Pebble certificates with OCSP
// staples, a failing name, a down upstream, a refused handshake): a
// renamed or removed metric breaks this test, not an alert in production.
func TestMonitoringMetricsExist(t *testing.T) {
	refs := referencedMetrics(t)
	if len(refs) < 15 {
		t.Fatalf("only %d metric names found in %s: %v", len(refs), monitoringDir, refs)
	}
	w := startStatusWorld(t)
	// a request through the route with the down upstream, for the
	// request counters and the latency histogram
	res, err := client(w.e.httpsAddr(), w.e.roots, false).Get("https://ok.test/")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	got := exposedMetrics(t, w.admin)
	var missing []string
	for name, files := range refs {
		if !got[name] {
			missing = append(missing, fmt.Sprintf("%s (in %s)", name, strings.Join(files, ", ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("named in deploy/monitoring but not in the scrape:\n  %s", strings.Join(missing, "\n  "))
	}
	if got["gatehouse_no_such_metric"] {
		t.Fatal("the scrape parser accepts anything")
	}
	t.Logf("%d metric names checked", len(refs))
}

// Every query of the dashboard is valid PromQL: promtool checks them as
// recording rules (Grafana's $variables replaced by values).
func TestMonitoringDashboardQueries(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian prometheus; .ci/monitoring-check.sh installs it)")
	}
	b, err := os.ReadFile(filepath.Join(monitoringDir, "gatehouse-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
				continue
			}
			expr := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(tg.Expr)
			q, _ := json.Marshal(expr)
			fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", n, q)
			n++
		}
	}
	if n < 15 {
		t.Fatalf("only %d queries in the dashboard", n)
	}
	f := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
	t.Logf("%d dashboard queries parse", n)
}
