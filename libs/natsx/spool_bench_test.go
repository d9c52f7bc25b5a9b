package natsx_test

import (
	"context"
	"testing"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/telemetrytest"
	"go.opentelemetry.io/otel"
)

// BenchmarkSpoolPublish is the router's cost of recording a usage event
// before an answer completes: its span, its encoding and the spool write.
func BenchmarkSpoolPublish(b *testing.B) {
	s := natstest.New(b)
	bus := s.Bus(b, access.Router)
	telemetrytest.Traces(b)
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

// BenchmarkSpoolWrite is Publish alone: with JetStream away, the forwarder
// takes no share of the machine while events are written (they wait in
// the spool). Run it with a fixed -benchtime (30000x): every event stays
// in memory and on disk until the benchmark ends.
func BenchmarkSpoolWrite(b *testing.B) {
	s := natstest.New(b)
	cut := s.Bus(b, access.Router)
	cut.Conn.Close()
	spool, err := natsx.OpenSpool(b.TempDir(), cut.JS, 1<<40, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer natsx.KillSpool(spool)
	ev := usageEvent(1)
	b.ReportAllocs()
	for b.Loop() {
		if err := spool.Publish(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}
