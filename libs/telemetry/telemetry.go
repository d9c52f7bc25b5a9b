// Package telemetry sets up tracing and logging for a Modelport service:
// an OpenTelemetry tracer provider with the W3C trace-context propagator,
// and a log/slog JSON logger that stamps trace_id and span_id from the
// context on every record.
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

// Setup installs the global tracer provider and propagator for service and
// returns a logger writing JSON to w, plus a shutdown function that flushes
// spans. Spans get real trace IDs, which logs and NATS headers carry; an
// exporter is added with sdktrace options by the caller that wants one.
func Setup(ctx context.Context, service string, w io.Writer, level slog.Level, opts ...sdktrace.TracerProviderOption) (*slog.Logger, func(context.Context) error) {
	res := resource.NewSchemaless(semconv.ServiceName(service))
	tp := sdktrace.NewTracerProvider(append([]sdktrace.TracerProviderOption{sdktrace.WithResource(res)}, opts...)...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	log := slog.New(NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))).With("service", service)
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
