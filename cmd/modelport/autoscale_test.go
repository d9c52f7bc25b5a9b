package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/nats-io/nats.go/jetstream"
)

// TestAutoscaling runs a service with an autoscaling policy through its
// whole range: concurrent requests scale it up, quiet scales it down and
// then to zero, and a request to the service at zero is held until an
// instance has started again, then answered. Every decision is an event
// with its reason.
func TestAutoscaling(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	env := config.Chain(config.Map(map[string]string{
		"MODELPORT_AUTOSCALE_INTERVAL":   "200ms",
		"MODELPORT_AUTOSCALE_DOWN_DELAY": "1s",
		"MODELPORT_LOAD_REPORT_INTERVAL": "200ms",
		"MODELPORT_SIM_ITL":              "40ms",
	}), testEnv(t, chAddr, chDB))
	p, err := startPlatform(context.Background(), env, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	var svc service
	if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{
		"name": "elastic", "base_model": "qwen2.5-7b-instruct",
		"autoscale": map[string]any{"min_instances": 0, "max_instances": 3, "target_in_flight": 1, "scale_to_zero_after_seconds": 2},
	}, &svc); s != 201 {
		t.Fatalf("create: status %d", s)
	}
	get := func() service {
		var got service
		if s := call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got); s != 200 {
			t.Fatalf("get: status %d", s)
		}
		return got
	}
	waitFor := func(within time.Duration, what string, ok func(service) bool) {
		t.Helper()
		eventually(t, within, what, func() error {
			if got := get(); !ok(got) {
				return fmt.Errorf("status %s, %d of %d ready", got.Status, got.ReadyInstances, got.Instances)
			}
			return nil
		})
	}
	waitFor(30*time.Second, "running on one instance", func(s service) bool { return s.Status == "running" && s.ReadyInstances == 1 })

	// A manual scale is refused while the policy decides.
	if s := call(t, "POST", p.BaseURL+"/api/v1/services/"+svc.ID+"/scale", testAdminKey, map[string]any{"instances": 2}, nil); s != 409 {
		t.Errorf("manual scale of an autoscaled service: status %d, want 409", s)
	}

	// Three slow requests at once: one instance each.
	chat := func(tokens int) (int, error) {
		var out struct {
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		s := call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
			"model": svc.AccessName, "max_tokens": tokens,
			"messages": []map[string]string{{"role": "user", "content": "Tell me a long story about elastic capacity."}},
		}, &out)
		if s != 200 {
			return s, fmt.Errorf("status %d", s)
		}
		return s, nil
	}
	var wg sync.WaitGroup
	failures := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := chat(100); err != nil {
				failures <- err
			}
		}()
	}
	waitFor(20*time.Second, "scaled up to 3 by demand", func(s service) bool { return s.Instances == 3 })
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("request during scale-up: %v", err)
	}

	// Quiet: down, then to zero after 2s without a request.
	waitFor(30*time.Second, "scaled to zero when idle", func(s service) bool {
		return s.Status == "idle" && s.Instances == 0 && s.ReadyInstances == 0
	})

	// A request to the idle service waits for a cold start, then succeeds.
	start := time.Now()
	if _, err := chat(5); err != nil {
		t.Fatalf("request to a service scaled to zero: %v", err)
	}
	t.Logf("cold start answered in %v", time.Since(start).Round(time.Millisecond))
	if got := get(); got.Instances != 1 || got.Status != "running" {
		t.Errorf("after the cold start: %d desired, status %s; want 1, running", got.Instances, got.Status)
	}

	// Every decision is an event with its reason; the deployer applied each.
	decisions := subjectEvents[events.ServiceAutoscaledV1](t, p.busAs(t, access.EventsReader).JS, events.StreamScale, events.SubjectServiceAutoscaledV1)
	scaled := subjectEvents[events.ServiceScaledV1](t, p.busAs(t, access.EventsReader).JS, events.StreamDeploy, events.SubjectServiceScaledV1)
	var path []string
	for _, ev := range scaled {
		if ev.ServiceID == svc.ID {
			if !strings.HasPrefix(ev.Reason, "autoscaler: ") {
				t.Errorf("scaled event without the autoscaler's reason: %+v", ev)
			}
			path = append(path, fmt.Sprintf("%d→%d (%s)", ev.From, ev.To, ev.Reason))
		}
	}
	t.Logf("scaling path: %s", strings.Join(path, "; "))
	want := map[string]bool{"waiting for an instance": false, "in flight, target 1 per instance": false, "no request for": false}
	for _, d := range decisions {
		for w := range want {
			if d.ServiceID == svc.ID && strings.Contains(d.Reason, w) {
				want[w] = true
			}
		}
	}
	for w, seen := range want {
		if !seen {
			t.Errorf("no autoscaling decision saying %q among %d decisions", w, len(decisions))
		}
	}
	if len(path) < 3 {
		t.Errorf("scaling path %v, want at least up, down to zero, and back", path)
	}
}

// subjectEvents returns every event stored on a subject so far.
func subjectEvents[T any](t *testing.T, js jetstream.JetStream, stream, subject string) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	r, err := natsx.NewStreamReader(ctx, st, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	for {
		msg, err := r.Next(ctx)
		if errors.Is(err, natsx.ErrCaughtUp) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", subject, err)
		}
		if msg.Subject != subject {
			continue
		}
		var ev T
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}
