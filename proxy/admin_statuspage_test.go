package proxy

import (
	"context"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

const hostile = `<script>alert(1)</script>"'><img src=x onerror=alert(2)>`

func hostileData(context.Context) StatusData {
	now := time.Now()
	return StatusData{
		Version: "test " + hostile,
		Started: now.Add(-time.Hour),
		Routes: []RouteStatus{{Index: 1, Hosts: []string{"a.test", hostile}, Mode: "http", Issuer: "acme",
			Upstreams: []UpstreamStatus{{Address: "http://" + hostile, Healthy: false, Fails: 3}}}},
		Overview: tlsconfig.Overview{
			Generated: now,
			Storage:   tlsconfig.StorageHealth{Backend: "file", Up: false, Error: "store " + hostile},
			Certificates: []tlsconfig.CertView{{CertInfo: tlsconfig.CertInfo{
				Name: hostile, Source: "acme", State: "missing", Issuer: "issuer" + hostile, Profile: hostile,
				NotBefore: now.Add(-60 * 24 * time.Hour), NotAfter: now.Add(30 * 24 * time.Hour), RenewAt: now.Add(0),
				LastError: "order failed: " + hostile, NextRetry: now.Add(time.Minute),
				Staple: &tlsconfig.Staple{Status: "invalid", Error: hostile},
			}}},
			Failures: []tlsconfig.NameStatus{{Name: hostile, State: "waiting", LastError: hostile, FailedAt: now}},
		},
	}
}

func adminServer(t *testing.T, o AdminOptions) *httptest.Server {
	t.Helper()
	if o.Ready == nil {
		o.Ready = func() (bool, any) { return true, nil }
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Status == nil {
		o.Status = hostileData
	}
	s := httptest.NewServer(NewAdminHandler(o))
	t.Cleanup(s.Close)
	return s
}

func adminGet(t *testing.T, method, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// Names, errors, addresses and versions are hostile input: every one
// is escaped, and the page is sent with a CSP that runs no script.
func TestStatusPageEscapes(t *testing.T) {
	s := adminServer(t, AdminOptions{})
	res, body := adminGet(t, "GET", s.URL+"/")
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if strings.Contains(body, "<script") || strings.Contains(body, "<img") {
		t.Fatalf("hostile markup reached the page unescaped:\n%s", body)
	}
	if n := strings.Count(body, "&lt;script&gt;alert(1)&lt;/script&gt;"); n < 8 {
		t.Errorf("escaped name shown %d times, want it in every field (version, host, upstream, store error, name, issuer, profile, error, staple, failure)", n)
	}
	if got := res.Header.Get("Content-Security-Policy"); got != StatusPageCSP || !strings.Contains(got, "default-src 'none'") {
		t.Errorf("CSP = %q", got)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	for _, want := range []string{`<meta http-equiv="refresh" content="10">`, `class="bar"`, `style="width: 66%"`, `store down`, `upstreams down`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// nothing is loaded from elsewhere and nothing runs (the hostile
	// text itself, escaped, aside)
	page := strings.ReplaceAll(body, template.HTMLEscapeString(hostile), "")
	for _, bad := range []string{"<script", "src=", "<link", "@import", "url(", "javascript:"} {
		if strings.Contains(strings.ToLower(page), bad) {
			t.Errorf("page contains %q", bad)
		}
	}
}

// Nothing on the admin listener changes state: any other method is 405.
func TestAdminReadOnly(t *testing.T) {
	s := adminServer(t, AdminOptions{})
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
		for _, p := range []string{"/", "/metrics", "/healthz", "/readyz", "/nothing"} {
			res, _ := adminGet(t, m, s.URL+p)
			if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d (Allow %q), want 405", m, p, res.StatusCode, res.Header.Get("Allow"))
			}
		}
	}
	if res, _ := adminGet(t, "HEAD", s.URL+"/"); res.StatusCode != 200 {
		t.Errorf("HEAD /: %d", res.StatusCode)
	}
	if res, _ := adminGet(t, "GET", s.URL+"/nothing"); res.StatusCode != 404 {
		t.Errorf("GET /nothing: %d", res.StatusCode)
	}
}

// admin_auth guards the page and /metrics; /healthz and /readyz stay
// open for probes.
func TestAdminAuth(t *testing.T) {
	const token = "0123456789abcdef0123"
	bearer, err := routes.ParseAdminAuth("bearer:" + token)
	if err != nil {
		t.Fatal(err)
	}
	s := adminServer(t, AdminOptions{Auth: bearer})
	for _, p := range []string{"/", "/metrics"} {
		res, _ := adminGet(t, "GET", s.URL+p)
		if res.StatusCode != 401 || !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("GET %s without a token: %d %q, want 401 with a Bearer challenge", p, res.StatusCode, res.Header.Get("WWW-Authenticate"))
		}
		if res, _ := adminGet(t, "GET", s.URL+p, "Authorization", "Bearer "+token+"x"); res.StatusCode != 401 {
			t.Errorf("GET %s with a wrong token: %d", p, res.StatusCode)
		}
		if res, _ := adminGet(t, "GET", s.URL+p, "Authorization", "Bearer "+token); res.StatusCode != 200 {
			t.Errorf("GET %s with the token: %d", p, res.StatusCode)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if res, _ := adminGet(t, "GET", s.URL+p); res.StatusCode != 200 {
			t.Errorf("GET %s (open for probes): %d", p, res.StatusCode)
		}
	}
}
