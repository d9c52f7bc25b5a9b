package telemetry_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/telemetry"
	"go.opentelemetry.io/otel"
)

// TestOTLPAndMetrics: with OTEL_EXPORTER_OTLP_ENDPOINT set, spans reach an
// OTLP/HTTP collector; instruments show up on the metrics endpoint in the
// Prometheus format; logs carry the trace ID.
func TestOTLPAndMetrics(t *testing.T) {
	var mu sync.Mutex
	var got [][]byte
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("collector got %s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		mu.Lock()
		got = append(got, b)
		mu.Unlock()
	}))
	defer collector.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)

	var logs bytes.Buffer
	log, shutdown := telemetry.Setup(context.Background(), "telemetry-test", &logs, slog.LevelInfo)
	ctx, span := otel.Tracer("test").Start(context.Background(), "a-span-to-export")
	log.InfoContext(ctx, "inside the span")
	counter, err := otel.Meter("test").Int64Counter("modelport.test.widgets")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(ctx, 3)
	span.End()
	if err := shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	mu.Lock()
	exported := bytes.Join(got, nil)
	mu.Unlock()
	if !bytes.Contains(exported, []byte("a-span-to-export")) || !bytes.Contains(exported, []byte("telemetry-test")) {
		t.Errorf("the collector did not receive the span with its service name (%d requests)", len(got))
	}
	if tid := span.SpanContext().TraceID().String(); !strings.Contains(logs.String(), `"trace_id":"`+tid+`"`) {
		t.Errorf("log %q lacks trace_id %s", logs.String(), tid)
	}

	rec := httptest.NewRecorder()
	telemetry.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "modelport_test_widgets_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("metrics: status %d, body lacks the counter or the runtime metrics:\n%s", rec.Code, body)
	}
}
