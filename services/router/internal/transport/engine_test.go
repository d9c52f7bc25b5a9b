package transport

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/telemetrytest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// An engine call's client span runs until its answer is read, carries the
// status, and is the parent the engine is told of.
func TestEngineCallSpan(t *testing.T) {
	spans := telemetrytest.Spans(t)
	var parent string
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parent = r.Header.Get("Traceparent")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":{"message":"busy"}}`)
	}))
	defer engine.Close()
	c := NewEngineClient(10*time.Second, 0)
	status, answer, err := c.Open(context.Background(), engine.URL, "/v1/chat/completions", []byte(`{}`), func() {})
	if err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("Open = %d, %v; want 503", status, err)
	}
	if n := len(spans.GetSpans()); n != 0 {
		t.Fatalf("%d spans ended before the answer was read; want none", n)
	}
	_, _ = io.Copy(io.Discard, answer)
	answer.Close()
	got := spans.GetSpans()
	if len(got) != 1 {
		t.Fatalf("%d spans ended; want the call's one", len(got))
	}
	s := got[0]
	if s.Name != "HTTP POST" || s.SpanKind != trace.SpanKindClient || s.Status.Code != codes.Error {
		t.Errorf("span %q (%s) status %v; want HTTP POST, client, error", s.Name, s.SpanKind, s.Status.Code)
	}
	if !hasAttr(s.Attributes, attribute.Int("http.response.status_code", 503)) || !hasAttr(s.Attributes, attribute.String("url.full", engine.URL+"/v1/chat/completions")) {
		t.Errorf("span attributes %v lack the status code or the URL", s.Attributes)
	}
	if want := "00-" + s.SpanContext.TraceID().String() + "-" + s.SpanContext.SpanID().String() + "-01"; parent != want {
		t.Errorf("the engine was told traceparent %q; want the call's span %q", parent, want)
	}
}

// A call that never reaches an engine ends its span at once, as an error.
func TestEngineCallSpanOfARefusedCall(t *testing.T) {
	spans := telemetrytest.Spans(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := NewEngineClient(10*time.Second, time.Second)
	if _, _, err := c.Open(context.Background(), "http://"+addr, "/v1/chat/completions", []byte(`{}`), func() {}); err == nil {
		t.Fatal("a call to a closed port succeeded")
	}
	got := spans.GetSpans()
	if len(got) != 1 || got[0].Status.Code != codes.Error || len(got[0].Events) == 0 {
		t.Fatalf("spans %+v; want one, an error with the error recorded", got)
	}
}

func hasAttr(attrs []attribute.KeyValue, want attribute.KeyValue) bool {
	for _, a := range attrs {
		if a == want {
			return true
		}
	}
	return false
}
