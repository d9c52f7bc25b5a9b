package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Latency buckets, in seconds, for request and time-to-first-token
// histograms: from a millisecond to ten minutes.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// metrics is the process's meter provider and the Prometheus registry it
// exports to. One per process: the all-in-one binary's services share it.
var metrics struct {
	once     sync.Once
	registry *prometheus.Registry
	provider *sdkmetric.MeterProvider
	err      error
}

// setupMetrics installs the global meter provider, exporting to a
// Prometheus registry that MetricsHandler serves. It is idempotent.
func setupMetrics(res *resource.Resource) error {
	metrics.once.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
		if err != nil {
			metrics.err = fmt.Errorf("prometheus exporter: %w", err)
			return
		}
		view := sdkmetric.NewView(
			sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram, Unit: "s"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: latencyBuckets}},
		)
		metrics.registry = reg
		metrics.provider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res), sdkmetric.WithView(view))
		otel.SetMeterProvider(metrics.provider)
	})
	return metrics.err
}

// MetricsHandler serves the process's metrics in the Prometheus text
// format: the OpenTelemetry instruments of every service in the process,
// and the Go runtime's.
func MetricsHandler() http.Handler {
	if err := setupMetrics(resource.Empty()); err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		})
	}
	return promhttp.HandlerFor(metrics.registry, promhttp.HandlerOpts{})
}

// otlpConfigured reports whether the standard OpenTelemetry environment
// names an OTLP endpoint for traces.
func otlpConfigured(getenv func(string) string) bool {
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// otlpExporter returns a batching span processor sending spans over
// OTLP/HTTP to the endpoint the standard OTEL_EXPORTER_OTLP_* variables
// name, or nil when none is set.
func otlpExporter(ctx context.Context) (sdktrace.TracerProviderOption, error) {
	if !otlpConfigured(os.Getenv) {
		return nil, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	return sdktrace.WithBatcher(exp), nil
}
