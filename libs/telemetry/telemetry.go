// Package telemetry sets up tracing, metrics and logging for a Modelport
// service: an OpenTelemetry tracer provider with the W3C trace-context
// propagator (exporting over OTLP when configured), a meter provider
// served in the Prometheus format, and a log/slog JSON logger that stamps
// trace_id and span_id from the context on every record.
package telemetry

import (
	"context"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Setup installs the global tracer and meter providers and the propagator
// for service, and returns a logger writing JSON to w, plus a shutdown
// function that flushes spans. Spans get real trace IDs, which logs and
// NATS and HTTP headers carry; they are exported over OTLP/HTTP when the
// standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, and
// to whatever exporters opts add. Metrics are served by MetricsHandler.
func Setup(ctx context.Context, service string, w io.Writer, level slog.Level, opts ...sdktrace.TracerProviderOption) (*slog.Logger, func(context.Context) error) {
	res := resource.NewSchemaless(semconv.ServiceName(service))
	log := slog.New(NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))).With("service", service)
	all := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if otlp, err := otlpExporter(ctx); err != nil {
		log.Error("traces will not be exported", "err", err)
	} else if otlp != nil {
		all = append(all, otlp)
	}
	tp := sdktrace.NewTracerProvider(append(all, opts...)...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if err := setupMetrics(res); err != nil {
		log.Error("metrics will not be served", "err", err)
	}
	return log, tp.Shutdown
}

// Handler wraps a slog.Handler and adds trace_id and span_id to records
// whose context carries a valid span.
type Handler struct{ slog.Handler }

// NewHandler returns a Handler around h.
func NewHandler(h slog.Handler) *Handler { return &Handler{Handler: h} }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{Handler: h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{Handler: h.Handler.WithGroup(name)}
}
