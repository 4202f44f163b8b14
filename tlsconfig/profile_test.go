package tlsconfig

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// The directory read that chooses the IP address profile treats the CA's
// answer as hostile: a document over maxDirectorySize, an error status or
// bad JSON is an error (retried), never a choice.
func TestDirectoryProfilesBounded(t *testing.T) {
	var body string
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") == "" {
			http.Error(w, "no user agent", http.StatusBadRequest)
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	cfg := &routes.Config{}
	cfg.ACME.Directory = srv.URL + "/dir"
	ctx := context.Background()

	body = `{"meta":{"profiles":{"classic":"90 days","shortlived":"6 days"}}}`
	if ok, err := offersProfile(ctx, cfg, IPProfile); err != nil || !ok {
		t.Errorf("offered: %v %v, want true", ok, err)
	}
	body = `{"meta":{"profiles":{"classic":"90 days"}}}`
	if ok, err := offersProfile(ctx, cfg, IPProfile); err != nil || ok {
		t.Errorf("not offered: %v %v, want false", ok, err)
	}
	body = `{"newNonce":"x"}`
	if ok, err := offersProfile(ctx, cfg, IPProfile); err != nil || ok {
		t.Errorf("no profiles at all: %v %v, want false", ok, err)
	}
	body = `{"meta":{"profiles":{"shortlived":"` + strings.Repeat("x", maxDirectorySize) + `"}}}`
	if _, err := offersProfile(ctx, cfg, IPProfile); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized directory: %v, want an error", err)
	}
	body = `{"meta":`
	if _, err := offersProfile(ctx, cfg, IPProfile); err == nil {
		t.Error("truncated JSON accepted")
	}
	body, status = `{"meta":{"profiles":{"shortlived":""}}}`, http.StatusServiceUnavailable
	if _, err := offersProfile(ctx, cfg, IPProfile); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("HTTP 503: %v, want an error", err)
	}
}
