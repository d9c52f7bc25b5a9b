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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

var quietLog = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))

// Edge's span continues the caller's trace and the handler runs inside
// it; its status follows the answer's.
func TestEdgeSpan(t *testing.T) {
	spans := telemetrytest.Spans(t)
	var inside trace.SpanContext
	h := httpx.Edge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside = trace.SpanContextFromContext(r.Context())
		w.WriteHeader(http.StatusBadGateway)
	}), "router", quietLog)
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader("{}"))
	r.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.ServeHTTP(httptest.NewRecorder(), r)

	got := spans.GetSpans()
	if len(got) != 1 {
		t.Fatalf("%d spans; want one", len(got))
	}
	s := got[0]
	if s.Name != "router" || s.SpanKind != trace.SpanKindServer {
		t.Errorf("span %q (%s); want router, server", s.Name, s.SpanKind)
	}
	if s.SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || s.Parent.SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("span in trace %s under %s; want the caller's trace and span", s.SpanContext.TraceID(), s.Parent.SpanID())
	}
	if inside.SpanID() != s.SpanContext.SpanID() {
		t.Errorf("the handler ran in span %s; want Edge's %s", inside.SpanID(), s.SpanContext.SpanID())
	}
	want := []attribute.KeyValue{attribute.String("http.request.method", "POST"), attribute.String("url.path", "/v1/chat/completions"), attribute.Int("http.response.status_code", 502)}
	for _, a := range want {
		found := false
		for _, b := range s.Attributes {
			found = found || a == b
		}
		if !found {
			t.Errorf("span attributes %v lack %v", s.Attributes, a)
		}
	}
	if s.Status.Code != codes.Error {
		t.Errorf("span status %v for a 502; want error", s.Status.Code)
	}
}

// Edge counts requests in http_server_request_duration_seconds by method
// and status alone: a method HTTP does not define is _OTHER, and the Host
// header a client sends makes no label.
func TestEdgeMetric(t *testing.T) {
	scrape := func() string {
		w := httptest.NewRecorder()
		telemetry.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		return w.Body.String()
	}
	scrape()
	h := httpx.Edge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Statuses no other test of the package answers, so the counts
		// are this test's alone.
		if r.Method == "POST" {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusIMUsed)
	}), "test", quietLog)
	for i, m := range []string{"POST", "POST", "BREW", "GET"} {
		r := httptest.NewRequest(m, "/v1/x", nil)
		r.Host = "attacker-chosen-" + string(rune('a'+i)) + ".example"
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	out := scrape()
	for _, line := range []string{
		`http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="429"} 2`,
		`http_server_request_duration_seconds_count{http_request_method="_OTHER",http_response_status_code="226"} 1`,
		`http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="226"} 1`,
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
	if strings.Contains(out, "attacker-chosen") || strings.Contains(out, "BREW") {
		t.Error("a client-chosen Host or method became a metric label")
	}
}

// A handler that aborts its response on purpose (http.ErrAbortHandler)
// is not answered 500: the panic goes on to net/http, which drops the
// connection, once the request is logged.
func TestEdgePassesOnAnAbort(t *testing.T) {
	var logs strings.Builder
	h := httpx.Edge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		panic(http.ErrAbortHandler)
	}), "test", slog.New(slog.NewJSONHandler(&logs, nil)))
	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if p := recover(); p != http.ErrAbortHandler {
				t.Errorf("Edge let %v through; want http.ErrAbortHandler", p)
			}
		}()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/x", nil))
	}()
	if strings.Contains(logs.String(), `"msg":"panic"`) || !strings.Contains(logs.String(), `"msg":"http"`) {
		t.Errorf("logs %s: want the request's line and no panic", logs.String())
	}
}
