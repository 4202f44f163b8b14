package proxy

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Readiness reports whether gatehouse is ready to serve, and why not.
type Readiness func() (ready bool, detail any)

// AdminHandler serves /healthz (the process is up), /readyz (listeners
// are up and every configured name has a certificate or a stated reason
// it is waiting) and /metrics (Prometheus).
func AdminHandler(ready Readiness, reg *prometheus.Registry) http.Handler {
	return NewAdminHandler(AdminOptions{Ready: ready, Registry: reg})
}

// AdminOptions configure the admin listener's handler.
type AdminOptions struct {
	Ready    Readiness
	Registry *prometheus.Registry
	// Status feeds the status page (GET /); nil: no page.
	Status func(ctx context.Context) StatusData
	// Auth, when set, is required for the status page and /metrics.
	// /healthz and /readyz stay open: probes (kubelet, load balancers)
	// reach them without credentials.
	Auth *routes.AdminAuth
}

// NewAdminHandler serves /healthz, /readyz, /metrics and the status page
// (/). Nothing on it changes state: any method but GET and HEAD is 405.
func NewAdminHandler(o AdminOptions) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, detail := o.Ready()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"ready": ok, "detail": detail})
	})
	mux.Handle("GET /metrics", guard(o.Auth, promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{})))
	if o.Status != nil {
		mux.Handle("GET /{$}", guard(o.Auth, &statusPage{data: o.Status}))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the admin listener is read-only: GET or HEAD", http.StatusMethodNotAllowed)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// guard requires auth (when set) before h.
func guard(auth *routes.AdminAuth, h http.Handler) http.Handler {
	if auth == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !auth.Allow(r) {
			w.Header().Set("WWW-Authenticate", auth.Challenge())
			http.Error(w, "authorization required ([listen] admin_auth)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
