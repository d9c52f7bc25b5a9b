package natsx_test

import (
	"context"
	"testing"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// BenchmarkSpoolPublish is the router's cost of recording a usage event
// before an answer completes: its span, its encoding and the spool write.
func BenchmarkSpoolPublish(b *testing.B) {
	s := natstest.New(b)
	bus := s.Bus(b, access.Router)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	otel.SetTracerProvider(sdktrace.NewTracerProvider())
	spool, err := natsx.OpenSpool(b.TempDir(), bus.JS, 0, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer spool.Close(context.Background())
	ctx, span := otel.Tracer("bench").Start(context.Background(), "request")
	defer span.End()
	ev := usageEvent(1)
	b.ReportAllocs()
	for b.Loop() {
		if err := spool.Publish(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}
