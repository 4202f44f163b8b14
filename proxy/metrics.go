package proxy

import (
	"crypto/tls"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	metricConnsAccepted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_tls_connections_accepted_total",
		Help: "TCP connections accepted on the https listener.",
	})
	metricHandshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_tls_handshakes_total",
		Help: "Completed TLS handshakes by protocol version.",
	}, []string{"version"})
	metricECHHandshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_ech_handshakes_total",
		Help: "Completed TLS handshakes whose ClientHello offered Encrypted Client Hello, by result: accepted (the inner hello was decrypted and served) or rejected (it could not be: stale keys, answered with retry configs, or a client's GREASE extension); retried counts the accepted ones that came from an address rejected within the minute before (a client that got retry configs and came back with them).",
	}, []string{"result"})
	metricHandshakeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_tls_handshake_failures_total",
		Help: "Failed or refused TLS handshakes by reason (unknown_sni, no_sni, bad_hello, proxy_header, protocol, alpn, timeout, ...).",
	}, []string{"reason"})
	metricActiveConns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gatehouse_active_connections",
		Help: "Open client connections by mode (http, tcp, passthrough), counted from the routed handshake to close.",
	}, []string{"mode"})
	activeConns = map[string]prometheus.Gauge{
		"http":        metricActiveConns.WithLabelValues("http"),
		"tcp":         metricActiveConns.WithLabelValues("tcp"),
		"passthrough": metricActiveConns.WithLabelValues("passthrough"),
	}
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_http_requests_total",
		Help: "HTTP requests by route, status class (1xx..5xx, or canceled by the client) and upstream " +
			"(empty when gatehouse answered itself: 421, or 502 with every upstream down).",
	}, []string{"route", "code_class", "upstream"})
	metricByProto = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_http_requests_by_protocol_total",
		Help: "HTTP requests served on a route (proxied, or answered by gatehouse for it: 421, 502...), by the client's protocol: h1, h2, h3.",
	}, []string{"proto"})
	metricDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gatehouse_http_request_duration_seconds",
		Help:    "Time from a request's headers to the end of its response, by route.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	healthDesc = prometheus.NewDesc("gatehouse_upstream_healthy",
		"1 when the upstream is in rotation (active and passive health), 0 when it is skipped.",
		[]string{"route", "upstream"}, nil)
)

// Collectors returns the metrics this package maintains.
func Collectors() []prometheus.Collector {
	metricECHHandshakes.WithLabelValues("accepted") // every series exists from the start
	metricECHHandshakes.WithLabelValues("rejected")
	metricECHHandshakes.WithLabelValues("retried")
	return []prometheus.Collector{metricConnsAccepted, metricHandshakes, metricECHHandshakes, metricHandshakeFailures, metricActiveConns,
		metricRequests, metricByProto, metricDuration, healthCollector{}, metricConnUpstreamLimit, metricSourceLimited, metricAcceptTurns}
}

func metricHandshakeFail(reason string) { metricHandshakeFailures.WithLabelValues(reason).Inc() }

// metricECH counts a completed handshake that offered ECH, from the
// client at remote.
func metricECH(accepted bool, remote net.Addr) {
	now := time.Now()
	if !accepted {
		metricECHHandshakes.WithLabelValues("rejected").Inc()
		echRetry.rejected(remote, now)
		return
	}
	metricECHHandshakes.WithLabelValues("accepted").Inc()
	if echRetry.accepted(remote, now) {
		metricECHHandshakes.WithLabelValues("retried").Inc()
	}
}

func metricHandshakeOK(version uint16) {
	metricHandshakes.WithLabelValues(tls.VersionName(version)).Inc()
}

type counter = prometheus.Counter

// Status classes, the code_class label.
const (
	classCanceled = 5
	numClasses    = 6
)

var classNames = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx", "canceled"}

func classOf(code int) int {
	if c := code/100 - 1; c >= 0 && c < 5 {
		return c
	}
	return 4
}

// routeMetrics are a route's metric children, looked up once when the
// route is built, so a request costs a few atomic adds and no label
// lookups or allocations. Each upstream holds its own counters.
type routeMetrics struct {
	none     [numClasses]counter // answered by gatehouse itself
	duration prometheus.Observer
}

func newRouteMetrics(route string, ups []*upstream) routeMetrics {
	var m routeMetrics
	for i, c := range classNames {
		m.none[i] = metricRequests.WithLabelValues(route, c, "")
		for _, u := range ups {
			u.reqs[i] = metricRequests.WithLabelValues(route, c, u.Raw)
		}
	}
	m.duration = metricDuration.WithLabelValues(route)
	return m
}

// Client protocols, for metricByProto.
const (
	protoH1 = iota
	protoH2
	protoH3
)

var byProto = [...]counter{
	protoH1: metricByProto.WithLabelValues("h1"),
	protoH2: metricByProto.WithLabelValues("h2"),
	protoH3: metricByProto.WithLabelValues("h3"),
}

// protoOf is the client protocol of a request served through net/http's
// handler interface (quic-go's http3 server).
func protoOf(r *http.Request) int {
	switch r.ProtoMajor {
	case 3:
		return protoH3
	case 2:
		return protoH2
	}
	return protoH1
}

func (m *routeMetrics) observe(began time.Time, proto int) {
	m.duration.Observe(time.Since(began).Seconds())
	byProto[proto].Inc()
}

// live holds the routes installed in a proxy (not yet retired), for the
// upstream health gauge: it is computed at scrape time, so it shows a
// passive cooldown's end and drops a removed route's upstreams.
var live struct {
	sync.Mutex
	seq    uint64
	routes map[*routeState]uint64
}

func trackRoute(rs *routeState) {
	live.Lock()
	defer live.Unlock()
	if live.routes == nil {
		live.routes = map[*routeState]uint64{}
	}
	live.seq++
	live.routes[rs] = live.seq
}

func untrackRoute(rs *routeState) {
	live.Lock()
	delete(live.routes, rs)
	live.Unlock()
}

type healthCollector struct{}

func (healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- healthDesc }

func (healthCollector) Collect(ch chan<- prometheus.Metric) {
	type entry struct {
		rs  *routeState
		seq uint64
	}
	live.Lock()
	rss := make([]entry, 0, len(live.routes))
	for rs, seq := range live.routes {
		rss = append(rss, entry{rs, seq})
	}
	live.Unlock()
	// newest first: while a reload overlaps an old and a new state of
	// the same route, the new one is reported (labels must be unique)
	sort.Slice(rss, func(i, j int) bool { return rss[i].seq > rss[j].seq })
	seen := map[[2]string]bool{}
	for _, e := range rss {
		rs := e.rs
		for _, u := range rs.bal.ups {
			k := [2]string{rs.name, u.Raw}
			if seen[k] {
				continue
			}
			seen[k] = true
			v := 0.0
			if u.healthy() {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(healthDesc, prometheus.GaugeValue, v, rs.name, u.Raw)
		}
	}
}
