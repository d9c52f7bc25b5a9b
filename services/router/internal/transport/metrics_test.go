package transport

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/libs/telemetry"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// scrape returns the process's metrics as Prometheus reads them.
func scrape(t testing.TB) string {
	t.Helper()
	w := httptest.NewRecorder()
	telemetry.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(w.Result().Body)
	return string(b)
}

func newTestMetrics(t testing.TB) *Metrics {
	t.Helper()
	scrape(t) // installs the meter provider the instruments are made with
	m, err := NewMetrics(routing.NewTable(), routing.NewDemand(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestMetricsLabels: every request is recorded under its service's access
// name, endpoint and status, tokens by type, time to first token and
// output rate by service, as /metrics shows them; a renamed service's
// requests are recorded under its new name.
func TestMetricsLabels(t *testing.T) {
	m := newTestMetrics(t)
	svc := state.Service{ID: "s-labels", AccessName: "u-labels/chat"}
	u := gateway.Usage{PromptTokens: 3, CompletionTokens: 5, TotalTokens: 8}
	u.PromptTokensDetails.CachedTokens = 2
	for range 2 {
		m.Answered(svc, "/v1/chat/completions", 200, 100*time.Millisecond, u)
	}
	m.Answered(svc, "/v1/completions", 413, 0, gateway.Usage{PromptTokens: 1})
	m.Failed(svc, "/v1/chat/completions", errs.E(errs.Upstream, "the engine failed"), 50*time.Millisecond)
	m.Failed(svc, "/v1/chat/completions", fmt.Errorf("read: %w", context.Canceled), time.Millisecond)
	m.FirstToken(svc, 10*time.Millisecond)
	renamed := svc
	renamed.AccessName = "u-labels/renamed"
	m.Answered(renamed, "/v1/chat/completions", 200, time.Second, u)

	got := scrape(t)
	for _, want := range []string{
		`modelport_router_request_duration_seconds_count{endpoint="/v1/chat/completions",model="u-labels/chat",status="200"} 2`,
		`modelport_router_request_duration_seconds_sum{endpoint="/v1/chat/completions",model="u-labels/chat",status="200"} 0.2`,
		`modelport_router_request_duration_seconds_count{endpoint="/v1/completions",model="u-labels/chat",status="413"} 1`,
		`modelport_router_request_duration_seconds_count{endpoint="/v1/chat/completions",model="u-labels/chat",status="502"} 1`,
		`modelport_router_request_duration_seconds_count{endpoint="/v1/chat/completions",model="u-labels/chat",status="499"} 1`,
		`modelport_router_request_duration_seconds_count{endpoint="/v1/chat/completions",model="u-labels/renamed",status="200"} 1`,
		`modelport_router_tokens_total{model="u-labels/chat",type="prompt"} 7`,
		`modelport_router_tokens_total{model="u-labels/chat",type="completion"} 10`,
		`modelport_router_tokens_total{model="u-labels/chat",type="cached_prompt"} 4`,
		`modelport_router_tokens_total{model="u-labels/renamed",type="completion"} 5`,
		`modelport_router_output_tokens_per_second_count{model="u-labels/chat"} 2`,
		`modelport_router_output_tokens_per_second_sum{model="u-labels/chat"} 100`,
		`modelport_router_time_to_first_token_seconds_count{model="u-labels/chat"} 1`,
		`modelport_router_time_to_first_token_seconds_sum{model="u-labels/chat"} 0.01`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("/metrics lacks\n %s\nin\n%s", want, grepLines(got, "u-labels"))
		}
	}
}

// grepLines returns the lines of s that hold sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestMetricsAttrCacheBounded: the attribute sets kept stay within their
// bounds however many services (as when they are renamed or deleted and
// created again) and statuses pass, and a set is rebuilt once dropped.
func TestMetricsAttrCacheBounded(t *testing.T) {
	var c attrCache
	for i := range maxCachedServices + 100 {
		c.service("u-o/s"+strconv.Itoa(i)).status("/v1/chat/completions", 200)
		if n := len(c.services); n > maxCachedServices {
			t.Fatalf("%d services cached, want at most %d", n, maxCachedServices)
		}
	}
	a := c.service("u-o/one")
	for i := range 3 * maxCachedStatuses {
		a.status("/v1/chat/completions", i)
		if n := len(a.statuses); n > maxCachedStatuses {
			t.Fatalf("%d statuses cached, want at most %d", n, maxCachedStatuses)
		}
	}
	set := metric.NewRecordConfig(a.status("/v1/embeddings", 200)).Attributes()
	want := attribute.NewSet(attribute.String("model", "u-o/one"), attribute.String("endpoint", "/v1/embeddings"), attribute.String("status", "200"))
	if !set.Equals(&want) {
		t.Errorf("attributes %v, want %v", set.ToSlice(), want.ToSlice())
	}
}

// BenchmarkAnswered measures recording an answered request, against
// recording it with attributes built for each record (as the router
// once did), in the same run.
func BenchmarkAnswered(b *testing.B) {
	m := newTestMetrics(b)
	svc := state.Service{ID: "s-bench", AccessName: "u-bench/chat"}
	u := gateway.Usage{PromptTokens: 12, CompletionTokens: 5, TotalTokens: 17}
	b.Run("cached sets", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Answered(svc, "/v1/chat/completions", 200, time.Millisecond, u)
		}
	})
	b.Run("sets built per record", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		model := attribute.String("model", svc.AccessName)
		for b.Loop() {
			m.duration.Record(ctx, 0.001, metric.WithAttributes(model,
				attribute.String("endpoint", "/v1/chat/completions"), attribute.String("status", strconv.Itoa(200))))
			m.tokens.Add(ctx, 12, metric.WithAttributes(model, attribute.String("type", "prompt")))
			m.tokens.Add(ctx, 5, metric.WithAttributes(model, attribute.String("type", "completion")))
			m.tokens.Add(ctx, 0, metric.WithAttributes(model, attribute.String("type", "cached_prompt")))
			m.tokenRate.Record(ctx, 5000, metric.WithAttributes(model))
		}
	})
}
