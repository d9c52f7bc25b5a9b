package httpx_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/telemetry"
	"github.com/modelport/modelport/libs/telemetrytest"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// BenchmarkEdge measures Edge around a handler that writes a small JSON
// answer, against the same handler bare and wrapped in otelhttp's
// middleware around a request-ID and an access-log middleware (what Edge
// replaced), in the same run, with spans recorded and metrics on.
func BenchmarkEdge(b *testing.B) {
	telemetrytest.Traces(b)
	telemetry.MetricsHandler().ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/metrics", nil))
	answer := []byte(`{"id":"x","choices":[{"message":{"content":"hi"}}]}`)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	})
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
	// What Edge replaced, without its request ID and log (Edge's
	// cost, less otelhttp's, is the difference of the first two).
	otelOnly := otelhttp.NewHandler(h, "bench")
	body := `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"edge", httpx.Edge(h, "bench", log)}, {"otelhttp alone", otelOnly}, {"bare", h}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
				r.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
				c.h.ServeHTTP(httptest.NewRecorder(), r)
			}
		})
	}
}
