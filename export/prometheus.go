package export

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// NewPrometheus serves the same instruments as NewMetrics for scraping:
// the returned handler answers in the Prometheus text format (names as
// the OpenTelemetry Prometheus exporter translates them, e.g.
// grain_rule_packets_total). cfg.Interval and the OTLP settings are not
// used; values are read at each scrape.
func NewPrometheus(ctx context.Context, cfg MetricsConfig) (*Metrics, http.Handler, error) {
	registry := prometheus.NewRegistry()
	reader, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	res, err := newResource(ctx, cfg.Config)
	if err != nil {
		return nil, nil, err
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader))
	m := &Metrics{provider: provider}
	if err := m.register(cfg); err != nil {
		provider.Shutdown(ctx)
		return nil, nil, err
	}
	return m, promhttp.HandlerFor(registry, promhttp.HandlerOpts{}), nil
}
