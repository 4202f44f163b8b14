package proxy

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// The status page: GET / on the admin listener. One HTML document
// rendered here (html/template escapes every name, error and address: they
// come from configs, clients, CAs and upstreams), its CSS inline, no
// script and nothing fetched from anywhere, so it works offline and under
// the Content-Security-Policy it is sent with. It reloads itself every
// 10 s (a meta refresh, no JavaScript).

// StatusData is what the page shows.
type StatusData struct {
	Version  string
	Started  time.Time
	Ready    bool
	Routes   []RouteStatus
	Overview tlsconfig.Overview
}

// StatusPageCSP is the page's Content-Security-Policy: nothing may load,
// no script runs; only the inline styles apply.
const StatusPageCSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// statusRefresh is how often the page reloads itself, and statusReuse
// how long one computation of its data is reused (each reads storage:
// several open tabs or a reload storm cost one read per statusReuse).
const (
	statusRefresh = 10
	statusReuse   = 2 * time.Second
	// StatusLimit bounds the certificate rows and the failures listed;
	// `gatehouse certs` lists everything.
	StatusLimit    = 500
	statusDeadline = 5 * time.Second
)

//go:embed statuspage.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"when": func(t time.Time, now time.Time) string { return whenText(t, now) },
	"utc": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
}).Parse(statusHTML))

// statusView is StatusData prepared for the template.
type statusView struct {
	StatusData
	Now       time.Time
	Refresh   int
	Unhealthy int
	Certs     []certRow
}

type certRow struct {
	tlsconfig.CertView
	Class    string // ok, warn, bad, none
	Elapsed  int    // % of the lifetime gone
	RenewPct int    // % of the lifetime at which it renews
	HasBar   bool
	Staple   string
	StapleOK string // ok, warn, bad, none
}

func buildView(d StatusData, now time.Time) statusView {
	v := statusView{StatusData: d, Now: now, Refresh: statusRefresh}
	for _, r := range d.Routes {
		for _, u := range r.Upstreams {
			if !u.Healthy {
				v.Unhealthy++
			}
		}
	}
	for _, c := range d.Overview.Certificates {
		row := certRow{CertView: c, Class: "ok", StapleOK: "none", Staple: "-"}
		switch {
		case c.State == "expired" || c.Live == "expired" || c.State == "missing" && c.LastError != "":
			row.Class = "bad"
		case c.State == "missing" || c.State == "unknown" || c.Live == "waiting":
			row.Class = "warn"
		case c.State == "renewal_due" || c.LastError != "":
			row.Class = "warn"
		case c.State == "pattern":
			row.Class = "none"
		}
		if life := c.NotAfter.Sub(c.NotBefore); life > 0 {
			row.HasBar = true
			row.Elapsed = pct(now.Sub(c.NotBefore), life)
			if !c.RenewAt.IsZero() {
				row.RenewPct = pct(c.RenewAt.Sub(c.NotBefore), life)
			}
		}
		if s := c.Staple; s != nil {
			row.Staple = s.Status
			switch {
			case s.Stale:
				row.Staple += ", stale since " + whenText(s.NextUpdate, now)
				row.StapleOK = "bad"
			case s.Status == "good":
				row.Staple += ", next update " + whenText(s.NextUpdate, now)
				row.StapleOK = "ok"
			case s.Status == "none":
				row.Staple = "none yet"
				row.StapleOK = "warn"
			default:
				row.StapleOK = "bad"
			}
			if s.Error != "" {
				row.Staple += ": " + s.Error
			}
		}
		v.Certs = append(v.Certs, row)
	}
	return v
}

func pct(part, whole time.Duration) int {
	p := int(float64(part) / float64(whole) * 100)
	return max(0, min(100, p))
}

// whenText is "in 3d" or "5h ago".
func whenText(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	if d < 0 {
		return shortDur(-d) + " ago"
	}
	return "in " + shortDur(d)
}

func shortDur(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}

// statusPage serves the page; its data is computed at most once per
// statusReuse, one computation at a time.
type statusPage struct {
	data func(ctx context.Context) StatusData

	mu   sync.Mutex
	at   time.Time
	last StatusData
}

func (p *statusPage) get(ctx context.Context) StatusData {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < statusReuse {
		return p.last
	}
	ctx, cancel := context.WithTimeout(ctx, statusDeadline)
	defer cancel()
	p.last = p.data(ctx)
	p.at = time.Now()
	return p.last
}

func (p *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, buildView(p.get(r.Context()), time.Now())); err != nil {
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", StatusPageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}
