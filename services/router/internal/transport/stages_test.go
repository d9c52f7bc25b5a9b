package transport

import (
	"context"
	"net/http"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestStagesAddUpToTheRouterTime: every relayed request records the
// stages it passed, each once, the engine's time in the engine stage, and
// no more in all than the client waited.
func TestStagesAddUpToTheRouterTime(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	stages, err := NewStageMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	const engineTime = 40 * time.Millisecond
	r := newRig(t, rigOptions{handler: Options{Stages: stages}})
	eng := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		time.Sleep(engineTime)
		healthy(w, req)
	})
	r.instance(chatService, "i1", eng.URL)
	seen := map[string]stageSum{} // the cumulative histogram as last collected

	for _, stream := range []bool{false, true} {
		body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}]}`
		if stream {
			body = `{"model":"` + chatService.AccessName + `","stream":true,"messages":[{"role":"user","content":"hi"}]}`
		}
		start := time.Now()
		resp, b, err := r.do(context.Background(), "/v1/chat/completions", body)
		waited := time.Since(start)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("stream %v: %v %v %s", stream, err, resp, b)
		}
		got := stageSums(t, reader, stream, seen)
		want := []string{"auth", "read", "parse", "route", "engine", "answer", "rewrite", "metrics", "publish", "write"}
		if stream {
			want = []string{"auth", "read", "parse", "route", "engine", "first_content", "metrics", "publish"}
		}
		var total time.Duration
		for _, s := range want {
			st, ok := got[s]
			if !ok || st.count != 1 {
				t.Errorf("stream %v: stage %s recorded %d times, want once (all: %v)", stream, s, st.count, got)
			}
			total += st.sum
		}
		if len(got) != len(want) {
			t.Errorf("stream %v: stages %v, want only %v", stream, got, want)
		}
		if got["engine"].sum < engineTime {
			t.Errorf("stream %v: engine stage %s, want at least the engine's %s", stream, got["engine"].sum, engineTime)
		}
		if total > waited {
			t.Errorf("stream %v: stages add up to %s, more than the client waited (%s)", stream, total, waited)
		}
	}
}

type stageSum struct {
	count uint64
	sum   time.Duration
}

// stageSums returns what the reader's stage histogram gained, per stage,
// for requests streamed or not, since seen (which it updates).
func stageSums(t *testing.T, reader *sdkmetric.ManualReader, stream bool, seen map[string]stageSum) map[string]stageSum {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]stageSum{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "modelport.router.stage.duration" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				s, _ := dp.Attributes.Value("stream")
				if s.AsString() != map[bool]string{false: "false", true: "true"}[stream] {
					continue
				}
				name, _ := dp.Attributes.Value("stage")
				prev := seen[name.AsString()+s.AsString()]
				cur := stageSum{count: dp.Count, sum: time.Duration(dp.Sum * float64(time.Second))}
				seen[name.AsString()+s.AsString()] = cur
				if d := (stageSum{count: cur.count - prev.count, sum: cur.sum - prev.sum}); d.count > 0 {
					out[name.AsString()] = d
				}
			}
		}
	}
	return out
}
