package proxy

import "time"

// RouteStatus is a route as the status page shows it: the routes the
// server serves now, with each upstream's health at this moment (the
// same values gatehouse_upstream_healthy reports).
type RouteStatus struct {
	Index     int // 1-based [[route]]
	Hosts     []string
	Mode      string
	Issuer    string // acme, internal, manual, "" (passthrough)
	Checked   bool   // active health checks configured
	Upstreams []UpstreamStatus
}

// UpstreamStatus is one upstream's health.
type UpstreamStatus struct {
	Address   string
	Healthy   bool
	CheckDown bool      // the active checker says down
	DownUntil time.Time // passive cooldown end (zero: none)
	Fails     int       // consecutive failures
	Active    int64     // requests and streams in flight
}

// Routes returns the routes in force, in config order.
func (s *Server) Routes() []RouteStatus {
	snap := s.state.Load()
	if snap == nil {
		return nil
	}
	now := time.Now().UnixNano()
	out := make([]RouteStatus, 0, len(snap.routes))
	for _, rs := range snap.routes {
		r := RouteStatus{Index: rs.entry.Index + 1, Hosts: rs.entry.Hosts, Mode: rs.mode, Issuer: rs.entry.Issuer,
			Checked: rs.entry.Route.HealthChecked()}
		for _, u := range rs.bal.ups {
			us := UpstreamStatus{Address: u.Raw, Healthy: u.usable(now), CheckDown: u.checkDown.Load(),
				Fails: int(u.fails.Load()), Active: u.active.Load()}
			if d := u.downUntil.Load(); d > now {
				us.DownUntil = time.Unix(0, d)
			}
			r.Upstreams = append(r.Upstreams, us)
		}
		out = append(out, r)
	}
	return out
}
