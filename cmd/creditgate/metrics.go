package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/ledger/admin"
)

// metrics implements extproc.Observer with Prometheus. Labels are provider,
// model (only priced models reach them, so the set is bounded by the
// catalog), outcome and reason: never account ids. Dollar values here are
// for dashboards only; the ledger itself never uses floats.
type metrics struct {
	requests  *prometheus.CounterVec
	charged   *prometheus.CounterVec
	held      prometheus.Gauge
	refusals  *prometheus.CounterVec
	estimated prometheus.Counter
	unpriced  *prometheus.CounterVec
	reserveD  prometheus.Histogram
	captureD  prometheus.Histogram
	ledgerErr *prometheus.CounterVec
}

var _ extproc.Observer = (*metrics)(nil)

func newMetrics(reg *prometheus.Registry, cat *liveCatalog) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_requests_total",
			Help: "Metered requests by provider, model and outcome (charged, estimated, released, error)."}, []string{"provider", "model", "outcome"}),
		charged: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_charged_dollars_total",
			Help: "Dollars debited by captures."}, []string{"provider", "model"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "creditgate_held_dollars",
			Help: "Dollars currently held by this sidecar's in-flight requests."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_refusals_total",
			Help: "Requests refused before going upstream, by reason."}, []string{"reason"}),
		estimated: prometheus.NewCounter(prometheus.CounterOpts{Name: "creditgate_estimated_settlements_total",
			Help: "Captures made on an estimate because the provider's usage was not seen (early end)."}),
		unpriced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_unpriced_model_total",
			Help: "Requests for models missing from the price catalog, by provider (the model is logged, not labelled)."}, []string{"provider"}),
		reserveD: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "creditgate_reserve_duration_seconds",
			Help: "Ledger reserve round trip.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		captureD: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "creditgate_capture_duration_seconds",
			Help: "Ledger capture round trip.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)}),
		ledgerErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_ledger_errors_total",
			Help: "Failed ledger (Redis) calls by operation."}, []string{"op"}),
	}
	reg.MustRegister(m.requests, m.charged, m.held, m.refusals, m.estimated, m.unpriced, m.reserveD, m.captureD, m.ledgerErr,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cat != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "creditgate_catalog_age_seconds",
			Help: "Seconds since the price catalog in use was loaded."}, func() float64 { return cat.Age().Seconds() }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "creditgate_catalog_loaded_timestamp_seconds",
			Help: "When the price catalog in use was loaded (version in creditgate_catalog_info)."},
			func() float64 { return float64(cat.loadedAt.Load()) / 1000 }))
		reg.MustRegister(&catalogInfo{cat: cat, desc: prometheus.NewDesc("creditgate_catalog_info",
			"The price catalog version in use (value 1).", []string{"version"}, nil)})
	}
	return m
}

// catalogInfo reports the current catalog version as a label, read at
// scrape time so a reload shows up without bookkeeping.
type catalogInfo struct {
	cat  *liveCatalog
	desc *prometheus.Desc
}

func (c *catalogInfo) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *catalogInfo) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, c.cat.Version())
}

func dollars(micros int64) float64 { return float64(micros) / 1e6 }

func (m *metrics) Request(provider, model, outcome string) {
	m.requests.WithLabelValues(provider, model, outcome).Inc()
	if outcome == "estimated" {
		m.estimated.Inc()
	}
}
func (m *metrics) Charged(provider, model string, micros int64) {
	m.charged.WithLabelValues(provider, model).Add(dollars(micros))
}
func (m *metrics) Holding(micros int64)                   { m.held.Add(dollars(micros)) }
func (m *metrics) Refused(reason string)                  { m.refusals.WithLabelValues(reason).Inc() }
func (m *metrics) Unpriced(provider, _ string)            { m.unpriced.WithLabelValues(provider).Inc() }
func (m *metrics) ReserveLatency(d time.Duration)         { m.reserveD.Observe(d.Seconds()) }
func (m *metrics) CaptureLatency(d time.Duration)         { m.captureD.Observe(d.Seconds()) }
func (m *metrics) LedgerError(op string)                  { m.ledgerErr.WithLabelValues(op).Inc() }
func (m *metrics) wrapLedger(l admin.Ledger) admin.Ledger { return l }

func (m *metrics) handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
