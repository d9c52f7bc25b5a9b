package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestTracingAndMetrics follows one request through the platform by the
// trace context its client sends: the router's server span, the queue and
// engine spans, the engine's own server span, the usage event's publish
// span and billing's batch span linked to it all carry the client's trace
// ID. Then /metrics shows the request in the router's, the consumers' and
// ClickHouse's instruments.
func TestTracingAndMetrics(t *testing.T) {
	log := testLogger() // sets up telemetry; the provider below replaces its tracer
	spans := tracetest.NewInMemoryExporter()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })

	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	svc := deployRunning(t, p.BaseURL, "traced", "qwen2.5-7b-instruct", "text-generation")

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	body, _ := json.Marshal(map[string]any{"model": svc.AccessName, "stream": true,
		"messages": []map[string]string{{"role": "user", "content": "trace me"}}})
	req, _ := http.NewRequest("POST", p.BaseURL+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(answer), "[DONE]") {
		t.Fatalf("chat: status %d: %s", resp.StatusCode, answer)
	}

	// Spans of the trace, by name; billing's batch span is linked to it.
	want := map[string]bool{
		"the router's server span, child of the client's": false,
		"the router's client span to the engine":          false,
		"the engine's server span, child of that":         false,
		"publish usage.request.completed.v1":              false,
		"billing's batch span, linked to the trace":       false,
	}
	eventually(t, 30*time.Second, "every span of the request", func() error {
		all := spans.GetSpans()
		engineCalls := map[trace.SpanID]bool{}
		for _, s := range all {
			if s.SpanContext.TraceID().String() == traceID && s.SpanKind == trace.SpanKindClient && strings.HasPrefix(s.Name, "HTTP POST") {
				engineCalls[s.SpanContext.SpanID()] = true
				want["the router's client span to the engine"] = true
			}
		}
		for _, s := range all {
			inTrace := s.SpanContext.TraceID().String() == traceID
			switch {
			case inTrace && s.SpanKind == trace.SpanKindServer && s.Parent.SpanID().String() == "00f067aa0ba902b7":
				want["the router's server span, child of the client's"] = true
			case inTrace && s.SpanKind == trace.SpanKindServer && engineCalls[s.Parent.SpanID()]:
				want["the engine's server span, child of that"] = true
			case inTrace && s.Name == "publish usage.request.completed.v1":
				want["publish usage.request.completed.v1"] = true
			case s.Name == "process billing-usage batch":
				for _, l := range s.Links {
					if l.SpanContext.TraceID().String() == traceID {
						want["billing's batch span, linked to the trace"] = true
					}
				}
			}
		}
		var missing []string
		for name, seen := range want {
			if !seen {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			var names []string
			for _, s := range spans.GetSpans() {
				if s.SpanContext.TraceID().String() == traceID {
					names = append(names, fmt.Sprintf("%s(%s, %s)", s.Name, s.SpanKind, s.InstrumentationScope.Name))
				}
			}
			return fmt.Errorf("missing %v; the trace has %v", missing, names)
		}
		return nil
	})

	resp, err = http.Get(p.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`modelport_router_request_duration_seconds_count{endpoint="/v1/chat/completions",model="` + svc.AccessName + `",status="200"}`,
		`modelport_router_time_to_first_token_seconds_bucket{model="` + svc.AccessName + `",le="+Inf"}`,
		`modelport_router_tokens_total{model="` + svc.AccessName + `",type="completion"}`,
		`modelport_router_instance_in_flight{instance_id=`,
		`modelport_events_processed_total{consumer="deployer-instance-ready",outcome="acked"}`,
		`modelport_consumer_pending{consumer="billing-usage",stream="USAGE"}`,
		`modelport_clickhouse_insert_duration_seconds_count{outcome="ok",table="usage_events"}`,
		`modelport_events_published_total{outcome="stored",subject="usage.request.completed.v1"}`,
		`http_server_request_duration_seconds_bucket{`,
	} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", metrics)
	}
}
