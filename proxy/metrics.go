package proxy

import (
	"crypto/tls"

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
	metricHandshakeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_tls_handshake_failures_total",
		Help: "Failed or refused TLS handshakes by reason (unknown_sni, no_sni, bad_hello, protocol, alpn, timeout, ...).",
	}, []string{"reason"})
	metricActiveStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gatehouse_active_streams",
		Help: "Open tcp and passthrough streams.",
	})
)

// Collectors returns the metrics this package maintains.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricConnsAccepted, metricHandshakes, metricHandshakeFailures, metricActiveStreams}
}

func metricHandshakeFail(reason string) { metricHandshakeFailures.WithLabelValues(reason).Inc() }

func metricHandshakeOK(version uint16) {
	metricHandshakes.WithLabelValues(tls.VersionName(version)).Inc()
}
