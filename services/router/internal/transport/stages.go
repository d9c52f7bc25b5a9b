package transport

import (
	"context"
	"net/http"

	"github.com/modelport/modelport/services/router/internal/gateway"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// StageMetrics records where the router's time on each relayed request
// goes, stage by stage (gateway.Stage): modelport.router.stage.duration,
// by stage and by whether the answer was streamed. Its sum over count is
// the mean time a request spends in a stage.
type StageMetrics struct {
	hist metric.Float64Histogram
	// attrs holds each stage's attributes, built once: [stage][streamed].
	attrs [][2]metric.RecordOption
}

// NewStageMetrics creates the instrument with mp (nil: the global meter
// provider, served on /metrics).
func NewStageMetrics(mp metric.MeterProvider) (*StageMetrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter("github.com/modelport/modelport/services/router")
	hist, err := meter.Float64Histogram("modelport.router.stage.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a relayed request spent in each stage of the router (auth, read, parse, route, engine, answer, rewrite, metrics, publish, write, first_content), by whether it was streamed; the engine stage includes the engine's own time."),
		metric.WithExplicitBucketBoundaries(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1, 10))
	if err != nil {
		return nil, err
	}
	m := &StageMetrics{hist: hist}
	for _, s := range gateway.Stages() {
		var a [2]metric.RecordOption
		for i, streamed := range []string{"false", "true"} {
			a[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("stage", s.String()), attribute.String("stream", streamed)))
		}
		m.attrs = append(m.attrs, a)
	}
	return m, nil
}

// Record records the stages of one request; a nil m records nothing.
func (m *StageMetrics) Record(t *gateway.Timing, streamed bool) {
	if m == nil || t == nil {
		return
	}
	i := 0
	if streamed {
		i = 1
	}
	ctx := context.Background()
	for _, s := range gateway.Stages() {
		if d := t.Of(s); d > 0 {
			m.hist.Record(ctx, d.Seconds(), m.attrs[s][i])
		}
	}
}

// timed starts timing each request as it reaches the router's API.
func timed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(gateway.WithTiming(r.Context(), gateway.NewTiming())))
	})
}
