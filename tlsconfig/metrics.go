package tlsconfig

import (
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ocsp"
)

var (
	metricObtains = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_cert_obtain_total",
		Help: "Certificate orders by issuer, kind (obtain or renew) and result (success or failure).",
	}, []string{"issuer", "kind", "result"})
	metricRevoked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_cert_revoked_total",
		Help: "Certificates found revoked, by source of the certificate (acme or manual).",
	}, []string{"source"})
	metricOrderHeld = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_cert_order_held_total",
		Help: "Orders gatehouse did not place, by reason: self_check (the name does not lead here), backoff (a recent order failed), storage (the attempt could not be recorded).",
	}, []string{"reason"})
	metricStapleNextUpdate = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gatehouse_ocsp_staple_next_update_seconds",
		Help: "Unix time of the NextUpdate of the latest OCSP response, by status.",
	}, []string{"status"})
	metricStorageUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gatehouse_storage_up",
		Help: "1 when the last storage probe ([storage] health_interval) reached the store, 0 when not.",
	})
	metricStoreReloads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_storage_certificate_reloads_total",
		Help: "Certificates loaded from storage because another instance obtained or renewed them.",
	})
)

// Collectors returns the metrics this package maintains.
func Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{metricObtains, metricRevoked, metricOrderHeld, metricStapleNextUpdate, metricStorageUp, metricStorageWritable, metricStoreReloads}, certopsCollectors...)
}

func metricObtain(issuer string, renewal bool, err error) {
	kind, result := "obtain", "success"
	if renewal {
		kind = "renew"
	}
	if err != nil {
		result = "failure"
	}
	metricObtains.WithLabelValues(issuer, kind, result).Inc()
}

func metricStapleUpdate(resp *ocsp.Response) {
	metricStapleNextUpdate.WithLabelValues(statusName(resp.Status)).Set(float64(resp.NextUpdate.Unix()))
}
