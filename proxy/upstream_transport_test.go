package proxy

import (
	"log/slog"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Routes in front of the same kind of upstream share one transport (one
// connection pool per upstream address); the last route to go closes it.
func TestRoutesShareTransport(t *testing.T) {
	cfg := &routes.Config{Routes: []routes.Route{
		{Hosts: []string{"a.test"}, Upstream: "http://127.0.0.1:1"},
		{Hosts: []string{"b.test"}, Upstream: "http://127.0.0.1:1"},
		{Hosts: []string{"c.test"}, Upstream: "h2c://127.0.0.1:1"},
	}}
	cfg.ApplyDefaults()
	tm := timeoutsOf(cfg)
	var states []*routeState
	for _, e := range routes.NewTable(cfg).Entries() {
		rs, err := newRouteState(e, tm, nil, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, rs)
	}
	a, b, c := states[0], states[1], states[2]
	if a.transport != b.transport {
		t.Error("two routes to plain http upstreams got separate transports")
	}
	if a.transport == c.transport {
		t.Error("an h2c route shares a plain HTTP/1.1 transport")
	}
	refs := func(k transportKey) int {
		transports.Lock()
		defer transports.Unlock()
		if st, ok := transports.m[k]; ok {
			return st.refs
		}
		return 0
	}
	if n := refs(a.tkey); n != 2 {
		t.Errorf("refs = %d, want 2", n)
	}
	a.retire()
	a.retire() // idempotent
	if n := refs(a.tkey); n != 1 {
		t.Errorf("after one route retired: refs = %d, want 1", n)
	}
	b.retire()
	c.discard()
	if n := refs(a.tkey) + refs(c.tkey); n != 0 {
		t.Errorf("after all retired: refs = %d, want 0", n)
	}
}
