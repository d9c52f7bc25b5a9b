package worker_test

import (
	"context"
	"github.com/modelport/modelport/services/inference-worker/internal/fakeengine"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

// TestWorkerRunsEngineProcesses runs a worker on the engine registry with
// the simulator standing in for vLLM: an instance that gets ready, one
// whose engine crashes and restarts, and one whose engine never starts.
func TestWorkerRunsEngineProcesses(t *testing.T) {
	dir := fakeengine.Dir(t)
	reg := &engine.Registry{
		Ports:   engine.Ports{Host: "127.0.0.1"},
		Environ: []string{"PATH=" + dir},
		Policy: supervisor.Policy{
			Backoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxCrashes: 2, CrashWindow: time.Minute,
			StopGrace: 10 * time.Second, PollInterval: 50 * time.Millisecond,
		},
	}
	// Each instance gets the fake engine's failure hooks through the
	// catalog's environment variables.
	hooks := map[string]map[string]string{
		"i-ok":    nil,
		"i-crash": {"MODELPORT_SIM_CRASH_AFTER": "1s"},
		"i-fail":  {"MODELPORT_SIM_EXIT_AT_START": "5"},
	}
	st, pub := newFakeStore(), &fakePublisher{}
	w := worker.New(workerID, 4, reg, st, pub, quiet, worker.WithGPUs(4), worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) {
		s.Source, s.ContextLength, s.GPUs, s.Env = "Qwen/Qwen2.5-7B-Instruct", 32768, 1, hooks[s.InstanceID]
		return s, nil
	}))
	t.Cleanup(func() { w.Shutdown(context.Background(), "test over") })

	for _, id := range []string{"i-ok", "i-crash", "i-fail"} {
		p := placement(id)
		p.AccessName = "u-a11ce0000001/" + strings.TrimPrefix(id, "i-")
		if err := w.StartInstance(context.Background(), p); err != nil {
			t.Fatalf("StartInstance %s: %v", id, err)
		}
	}

	// The failing engine: announced failed with its exit code and output,
	// its record removed, its slot freed.
	eventually(t, "i-fail is announced failed", func() bool { return len(of[events.InstanceFailedV1](pub)) == 1 })
	failed := of[events.InstanceFailedV1](pub)[0]
	if failed.InstanceID != "i-fail" || failed.Engine != "vllm" || failed.ExitCode != 5 || failed.Restarts != 1 {
		t.Errorf("failed event %+v, want i-fail on vllm with exit code 5 after 1 restart", failed)
	}
	if !strings.Contains(failed.LogTail, "simulated start failure") || !strings.Contains(failed.Reason, "exit status 5") {
		t.Errorf("failed event: reason %q, log tail %q", failed.Reason, failed.LogTail)
	}
	eventually(t, "i-fail's record is removed", func() bool {
		_, ok := st.records()[state.InstanceKey("s1", "i-fail")]
		return !ok
	})
	eventually(t, "i-fail's slot is free", func() bool {
		if err := w.Heartbeat(context.Background()); err != nil {
			t.Fatal(err)
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.beats[len(st.beats)-1].Running < 3
	})

	// The healthy engine: ready, recorded, answering for the access name.
	eventually(t, "i-ok is ready", func() bool { return st.status("s1", "i-ok") == state.InstanceReady })
	rec := st.records()[state.InstanceKey("s1", "i-ok")]
	if rec.Engine != "vllm" || !strings.HasPrefix(rec.Endpoint, "http://127.0.0.1:") {
		t.Errorf("record %+v, want vllm at 127.0.0.1", rec)
	}
	body := `{"model":"u-a11ce0000001/ok","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
	resp, err := http.Post(rec.Endpoint+"/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("chat completion: %d %s", resp.StatusCode, b)
	}

	// The crashing engine: starting while it restarts, then ready again.
	eventually(t, "i-crash is ready again after a restart", func() bool {
		var statuses []string
		for _, r := range st.puts() {
			if r.ID == "i-crash" {
				statuses = append(statuses, r.Status)
			}
		}
		i := slices.Index(statuses, state.InstanceReady)
		return i >= 0 && slices.Contains(statuses[i:], state.InstanceStarting) &&
			statuses[len(statuses)-1] == state.InstanceReady && len(statuses) >= 4
	})

}
