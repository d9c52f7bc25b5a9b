// Package telemetrytest sets up tracing for a test: a tracer provider of
// the OpenTelemetry SDK and the W3C trace-context propagator, installed
// globally as the services find them, and put back as they were when the
// test ends.
package telemetrytest

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// Traces installs, until tb ends, a tracer provider that records every
// span, as a service's does, and keeps none.
func Traces(tb testing.TB) {
	install(tb, sdktrace.NewTracerProvider())
}

// Spans installs, until tb ends, a tracer provider that records every
// span and keeps the ended ones in the exporter it returns.
func Spans(tb testing.TB) *tracetest.InMemoryExporter {
	spans := tracetest.NewInMemoryExporter()
	install(tb, sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans)))
	return spans
}

func install(tb testing.TB, tp *sdktrace.TracerProvider) {
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	tb.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
		_ = tp.Shutdown(context.Background())
	})
}
