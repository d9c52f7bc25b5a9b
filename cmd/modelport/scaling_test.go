package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/state"
)

// TestScaling scales a running service up and down through the control
// API and checks the scaler places and releases instances, the workers
// start and drain them, and chat completions keep succeeding throughout.
func TestScaling(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	svc := deployRunning(t, p.BaseURL, "scaled", "qwen2.5-7b-instruct", "text-generation")
	readyInstances := func() (int, error) {
		var list []state.Instance
		if s := call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &list); s != 200 {
			return 0, fmt.Errorf("list instances: status %d", s)
		}
		n := 0
		for _, in := range list {
			if in.Status == state.InstanceReady {
				n++
			}
		}
		if n != len(list) {
			return n, fmt.Errorf("%d instances, %d ready", len(list), n)
		}
		return n, nil
	}
	if n, err := readyInstances(); err != nil || n != 1 {
		t.Fatalf("after deploy: %d ready instances (%v), want 1", n, err)
	}
	chatUntilOK(t, p.BaseURL, svc.AccessName)

	for _, want := range []int{3, 1} {
		var got service
		if s := call(t, "POST", p.BaseURL+"/api/v1/services/"+svc.ID+"/scale", testAdminKey, map[string]any{"instances": want}, &got); s != 200 {
			t.Fatalf("scale to %d: status %d", want, s)
		}
		eventually(t, 30*time.Second, fmt.Sprintf("%d ready instances", want), func() error {
			n, err := readyInstances()
			if err != nil {
				return err
			}
			if n != want {
				return fmt.Errorf("%d ready instances", n)
			}
			return nil
		})
		// The placements agree: released ones are gone, not just unready.
		placements, err := state.List[state.Placement](context.Background(), p.buses[access.Scaler].KV(state.BucketPlacements), svc.ID+".*")
		if err != nil {
			t.Fatal(err)
		}
		if len(placements) != want {
			t.Errorf("after scaling to %d: %d placements", want, len(placements))
		}
		// Every request succeeds: the router sends none to a released instance.
		for i := range 5 {
			if s := call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
				"model": svc.AccessName, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
			}, nil); s != 200 {
				t.Errorf("after scaling to %d, chat %d: status %d", want, i, s)
			}
		}
	}
}

// TestConcurrentScale sends several scale requests at once: the control
// plane applies them one after another, and the service converges on the
// last one applied, with exactly that many placements and ready instances.
func TestConcurrentScale(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	svc := deployRunning(t, p.BaseURL, "contended", "qwen2.5-7b-instruct", "text-generation")

	type result struct {
		want int
		got  struct {
			Instances int       `json:"instances"`
			UpdatedAt time.Time `json:"updated_at"`
		}
		status int
	}
	results := make([]result, 6)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.want = []int{3, 1, 4, 2, 0, 3}[i]
			r.status = call(t, "POST", p.BaseURL+"/api/v1/services/"+svc.ID+"/scale", testAdminKey, map[string]any{"instances": r.want}, &r.got)
		}()
	}
	wg.Wait()
	last := results[0]
	for _, r := range results {
		if r.status != 200 || r.got.Instances != r.want {
			t.Fatalf("scale to %d: status %d, answered %d instances", r.want, r.status, r.got.Instances)
		}
		if r.got.UpdatedAt.After(last.got.UpdatedAt) {
			last = r
		}
	}
	var final service
	call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &final)
	if final.Instances != last.want {
		t.Fatalf("stored %d instances, but the last scale applied asked for %d", final.Instances, last.want)
	}
	eventually(t, 30*time.Second, fmt.Sprintf("converged on %d instances", last.want), func() error {
		var got service
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
		placements, err := state.List[state.Placement](context.Background(), p.buses[access.Scaler].KV(state.BucketPlacements), svc.ID+".*")
		if err != nil {
			return err
		}
		var list []state.Instance
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &list)
		if got.ReadyInstances != last.want || len(placements) != last.want || len(list) != last.want {
			return fmt.Errorf("%d ready, %d placements, %d instance records; status %s", got.ReadyInstances, len(placements), len(list), got.Status)
		}
		return nil
	})
}
