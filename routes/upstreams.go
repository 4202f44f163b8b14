package routes

import (
	"time"
)

// Health-check defaults. A check every 10 s costs an upstream one tiny
// request per gatehouse; with the two-failure rule (see proxy/upstream_health.go)
// a dead upstream is out of rotation within about 20 s by active checks
// alone, and much sooner by passive ones when it carries traffic. 2 s is
// long enough for a loaded upstream to answer a health path and short
// enough that a hung one is noticed within an interval.
const (
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
)

// MaxUpstreams bounds a route's upstream list (the balancer tracks the
// upstreams a request already tried in one 64-bit mask).
const MaxUpstreams = 64

// HealthChecked reports whether the route's active health checks are on: an
// http route with a health_path, or a tcp/passthrough route with a
// health_interval (its check is a TCP connect).
func (r *Route) HealthChecked() bool {
	if r.ModeOrDefault() == ModeHTTP {
		return r.HealthPath != ""
	}
	return r.HealthInterval != 0
}

// HealthTimings returns the check interval and timeout with defaults
// applied; the default timeout is shortened to the interval when the
// interval is shorter.
func (r *Route) HealthTimings() (interval, timeout time.Duration) {
	interval = r.HealthInterval.Or(DefaultHealthInterval)
	timeout = r.HealthTimeout.Or(min(DefaultHealthTimeout, interval))
	return interval, timeout
}

// validateUpstreams checks the keys of several upstreams, balancing,
// health checks, PROXY protocol and upstream TLS.
func (r *Route) validateUpstreams(bad func(string, string, ...any), key func(string) string, where string) {
	ups := r.AllUpstreams()
	if len(ups) > MaxUpstreams {
		bad(key("upstreams"), "%s has %d upstreams; at most %d are allowed", where, len(ups), MaxUpstreams)
	}
	seen := map[string]bool{}
	scheme, mixed, https := "", false, false
	for _, raw := range ups {
		u, err := ParseUpstream(r.ModeOrDefault(), raw)
		if err != nil {
			continue // reported by the caller
		}
		if seen[u.Host] {
			bad(key("upstreams"), "%s: upstream %q is listed twice", where, raw)
		}
		seen[u.Host] = true
		if scheme == "" {
			scheme = u.Scheme
		} else if u.Scheme != scheme && !mixed {
			mixed = true
			bad(key("upstreams"), "%s: upstreams mix %s:// and %s://; one route speaks one protocol to all its upstreams", where, scheme, u.Scheme)
		}
		https = https || u.Scheme == "https"
	}
	if r.UpstreamCA != "" && !https {
		bad(key("upstream_ca"), "%s: upstream_ca is used only to verify https:// upstreams, and this route has none", where)
	}
	if r.Mode == ModeHTTP {
		if r.HealthPath == "" && (r.HealthInterval != 0 || r.HealthTimeout != 0) {
			k := key("health_interval")
			if r.HealthInterval == 0 {
				k = key("health_timeout")
			}
			bad(k, "%s: health_interval/health_timeout need health_path = \"/healthz\" (the path gatehouse asks each upstream)", where)
		}
	} else if r.HealthPath != "" {
		bad(key("health_path"), "%s: health_path is for http routes; a %s route's health check is a TCP connect, enabled by health_interval", where, r.Mode)
	} else if r.HealthTimeout != 0 && r.HealthInterval == 0 {
		bad(key("health_timeout"), "%s: health_timeout needs health_interval (it enables the TCP-connect check)", where)
	}
	if r.HealthInterval < 0 || r.HealthTimeout < 0 {
		bad(key("health_interval"), "%s: health durations must be positive", where)
	}
	if r.HealthChecked() {
		iv, to := r.HealthTimings()
		if iv < 100*time.Millisecond {
			bad(key("health_interval"), "%s: health_interval = %s is below the 100ms minimum", where, iv)
		}
		if to > iv {
			bad(key("health_timeout"), "%s: health_timeout (%s) must not exceed health_interval (%s)", where, to, iv)
		}
	}
}
