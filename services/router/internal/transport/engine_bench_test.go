package transport

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/telemetrytest"
	"go.opentelemetry.io/otel"
)

// BenchmarkEngineOpen measures one engine call through the engine client
// (its span, trace context and the tracking of what was sent included)
// against the same call through a bare http.Client, in the same run, with
// spans recorded as the router records them.
func BenchmarkEngineOpen(b *testing.B) {
	telemetrytest.Traces(b)
	answer := []byte(`{"id":"x","choices":[{"message":{"content":"hi"}}]}`)
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	}))
	b.Cleanup(engine.Close)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":32}`)
	ctx, span := otel.Tracer("bench").Start(context.Background(), "request")
	defer span.End()
	b.Run("engine client", func(b *testing.B) {
		c := NewEngineClient(10*time.Second, 0)
		b.ReportAllocs()
		for b.Loop() {
			_, rc, err := c.Open(ctx, engine.URL, "/v1/chat/completions", body, func() {})
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, rc)
			rc.Close()
		}
	})
	b.Run("bare http.Client", func(b *testing.B) {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 256
		c := &http.Client{Transport: tr}
		b.ReportAllocs()
		for b.Loop() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, engine.URL+"/v1/chat/completions", bytes.NewReader(body))
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
