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
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/telemetrytest"
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
	spans := telemetrytest.Spans(t)

	chAddr, chDB := chtest.New(t)
	const metricsToken = "scraper-secret-for-the-test"
	env := config.Chain(config.Map(map[string]string{"MODELPORT_METRICS_TOKEN": metricsToken}), testEnv(t, chAddr, chDB))
	p, err := startPlatform(context.Background(), env, log)
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
		"the usage event's span":                          false,
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
			case inTrace && s.Name == "spool usage.request.completed.v1":
				// The all-in-one's router spools usage (MODELPORT_USAGE_SPOOL).
				want["the usage event's span"] = true
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

	// Metrics name every tenant's services: only admins and the scraper's
	// token read them.
	scrape := func(secret string) (int, []byte) {
		req, _ := http.NewRequest("GET", p.BaseURL+"/metrics", nil)
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	var user struct {
		APIKey struct {
			Key string `json:"key"`
		} `json:"api_key"`
	}
	if s := call(t, "POST", p.BaseURL+"/api/v1/owners", testAdminKey, map[string]string{"name": "tenant"}, &user); s != 201 {
		t.Fatalf("create a user: status %d", s)
	}
	for secret, want := range map[string]int{"": 401, "mp-not-a-key": 401, user.APIKey.Key: 403, testAdminKey: 200} {
		if got, _ := scrape(secret); got != want {
			t.Errorf("/metrics with %q: status %d, want %d", secret, got, want)
		}
	}
	status, metrics := scrape(metricsToken)
	if status != 200 {
		t.Fatalf("/metrics with the metrics token: status %d", status)
	}
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
		// billing's scheduled jobs: the rollup, the lost-instance check
		`modelport_billing_job_runs_total{job="rollup",outcome="ok"}`,
		`modelport_billing_job_runs_total{job="reconcile",outcome="ok"}`,
		`modelport_billing_rollup_lag_seconds `,
		`modelport_billing_intervals_open_over_day `,
		`modelport_billing_intervals_open `,
	} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", metrics)
	}
}
