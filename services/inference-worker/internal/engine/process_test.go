package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/modelport/modelport/services/inference-worker/internal/fakeengine"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
)

// fast supervises fake engines with short waits.
var fast = supervisor.Policy{
	StartTimeout: 20 * time.Second,
	Backoff:      20 * time.Millisecond,
	MaxBackoff:   100 * time.Millisecond,
	MaxCrashes:   1000,
	CrashWindow:  time.Minute,
	StopGrace:    10 * time.Second,
	PollInterval: 50 * time.Millisecond,
}

// fakeProcess is a Process engine that finds the simulator under the real
// engine's command name, with vars on top of a bare environment.
type fakeProcess struct {
	*engine.Process
	record string // where the fake engine records its command line
}

func newFakeProcess(t *testing.T, a engine.Adapter, p supervisor.Policy, vars ...string) fakeProcess {
	t.Helper()
	dir := fakeengine.Dir(t)
	record := filepath.Join(t.TempDir(), "record.json")
	environ := append([]string{"PATH=" + dir, "MODELPORT_SIM_RECORD=" + record}, vars...)
	return fakeProcess{
		Process: &engine.Process{
			Adapter: a, Ports: engine.Ports{Host: "127.0.0.1"}, Environ: environ, Policy: p,
		},
		record: record,
	}
}

// recorded is what the fake engine wrote about how it was started.
type recorded struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env"`
}

func (f fakeProcess) recorded(t *testing.T) recorded {
	t.Helper()
	b, err := os.ReadFile(f.record)
	if err != nil {
		t.Fatalf("the fake engine recorded nothing: %v", err)
	}
	var r recorded
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// starter is an Engine or a Registry.
type starter interface {
	Start(ctx context.Context, spec engine.Spec) (engine.Instance, error)
}

// start starts spec and stops the instance when the test ends.
func start(t *testing.T, e starter, spec engine.Spec) engine.Instance {
	t.Helper()
	inst, err := e.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = inst.Stop(ctx)
	})
	return inst
}

// await reads events until one satisfies ok, failing on a deadline or a
// closed channel.
func await(t *testing.T, inst engine.Instance, what string, ok func(engine.Event) bool) engine.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev, open := <-inst.Events():
			if !open {
				t.Fatalf("events closed while waiting until %s", what)
			}
			if ok(ev) {
				return ev
			}
			if ev.State == engine.Failed {
				t.Fatalf("failed while waiting until %s: %+v", what, ev.Failure)
			}
		case <-deadline:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func isReady(ev engine.Event) bool  { return ev.State == engine.Ready }
func isFailed(ev engine.Event) bool { return ev.State == engine.Failed }

func portOf(t *testing.T, inst engine.Instance) int {
	t.Helper()
	u, err := url.Parse(inst.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("endpoint %q has no port", inst.Endpoint())
	}
	return p
}

func pgid(t *testing.T, inst engine.Instance) int {
	t.Helper()
	p, ok := inst.(interface{ Pgid() int })
	if !ok {
		t.Fatalf("%T does not report its process group", inst)
	}
	return p.Pgid()
}

// groupGone reports whether no process of the group is left.
func groupGone(pgid int) bool { return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// chat sends one chat completion for model to the instance and returns the
// model the answer names.
func chat(t *testing.T, inst engine.Instance, model string) string {
	t.Helper()
	body := `{"model":` + strconv.Quote(model) + `,"messages":[{"role":"user","content":"Say hello"}],"max_tokens":8}`
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(inst.Endpoint()+"/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("chat completion: %v", err)
	}
	defer resp.Body.Close()
	var cc struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct{ Content string }
		}
	}
	var raw bytes.Buffer
	if err := json.NewDecoder(io.TeeReader(resp.Body, &raw)).Decode(&cc); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("chat completion: status %d, err %v: %s", resp.StatusCode, err, raw.String())
	}
	if len(cc.Choices) != 1 || cc.Choices[0].Message.Content == "" {
		t.Fatalf("chat completion without an answer: %s", raw.String())
	}
	return cc.Model
}

// TestProcessEngines runs each adapter's command line against the fake
// engine: the exact arguments and environment it gets, readiness, a chat
// completion for the access name, and a clean stop.
func TestProcessEngines(t *testing.T) {
	const served = "u-a11ce0000001/chat"
	tests := []struct {
		name       string
		adapter    engine.Adapter
		cpuThreads int // the Process's CPUThreads
		spec       engine.Spec
		wantArgv   func(port string) []string
		wantEnv    func(port string) map[string]string
	}{
		{
			name:       "vllm",
			adapter:    engine.VLLM{},
			cpuThreads: 3, // not for an instance with GPUs
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-7b-instruct", Source: "Qwen/Qwen2.5-7B-Instruct",
				ContextLength: 32768, GPUs: 2, TensorParallel: 2, Devices: []int{1, 3}, Env: map[string]string{"HF_HOME": "/models/hf"}},
			wantArgv: func(port string) []string {
				return []string{"vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", served,
					"--host", "127.0.0.1", "--port", port, "--max-model-len", "32768", "--tensor-parallel-size", "2"}
			},
			wantEnv: func(string) map[string]string {
				return map[string]string{"CUDA_VISIBLE_DEVICES": "1,3", "HF_HOME": "/models/hf"}
			},
		},
		{
			name:    "vllm with a LoRA",
			adapter: engine.VLLM{},
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "llama-3.1-8b-instruct", Source: "meta-llama/Llama-3.1-8B-Instruct",
				ContextLength: 8192, GPUs: 1, Devices: []int{0}, Adapter: engine.LoRA{Name: "sql", Path: "/loras/sql"}},
			wantArgv: func(port string) []string {
				return []string{"vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama-3.1-8b-instruct",
					"--host", "127.0.0.1", "--port", port, "--max-model-len", "8192", "--tensor-parallel-size", "1",
					"--enable-lora", "--lora-modules", served + "=/loras/sql"}
			},
			wantEnv: func(string) map[string]string { return map[string]string{"CUDA_VISIBLE_DEVICES": "0"} },
		},
		{
			name:    "llama.cpp",
			adapter: engine.LlamaCpp{},
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-0.5b-instruct-gguf",
				Source: "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", ContextLength: 4096},
			wantArgv: func(port string) []string {
				return []string{"llama-server", "-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", served,
					"--host", "127.0.0.1", "--port", port, "-c", "4096", "-ngl", "0"}
			},
			wantEnv: func(string) map[string]string { return map[string]string{"CUDA_VISIBLE_DEVICES": "-1"} },
		},
		{
			name:       "llama.cpp with CPU threads",
			adapter:    engine.LlamaCpp{},
			cpuThreads: 3,
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-0.5b-instruct-gguf",
				Source: "file:///models/qwen2.5-0.5b-instruct-q4_k_m.gguf"},
			wantArgv: func(port string) []string {
				return []string{"llama-server", "-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", served,
					"--host", "127.0.0.1", "--port", port, "-ngl", "0", "--threads", "3"}
			},
			wantEnv: func(string) map[string]string { return map[string]string{"CUDA_VISIBLE_DEVICES": "-1"} },
		},
		{
			name:    "sglang",
			adapter: engine.SGLang{},
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-7b-instruct", Source: "Qwen/Qwen2.5-7B-Instruct",
				ContextLength: 32768, GPUs: 1, Devices: []int{2}},
			wantArgv: func(port string) []string {
				return []string{"python3", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
					"--served-model-name", served, "--host", "127.0.0.1", "--port", port, "--context-length", "32768", "--tp", "1"}
			},
			wantEnv: func(string) map[string]string { return map[string]string{"CUDA_VISIBLE_DEVICES": "2"} },
		},
		{
			name:    "ollama",
			adapter: engine.Ollama{},
			spec: engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-0.5b-instruct", Source: "qwen2.5:0.5b",
				ContextLength: 8192, GPUs: 1, Devices: []int{0}},
			wantArgv: func(string) []string { return []string{"ollama", "serve"} },
			wantEnv: func(port string) map[string]string {
				return map[string]string{"OLLAMA_HOST": "127.0.0.1:" + port, "OLLAMA_CONTEXT_LENGTH": "8192", "CUDA_VISIBLE_DEVICES": "0"}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeProcess(t, tc.adapter, fast)
			f.CPUThreads = tc.cpuThreads
			inst := start(t, f, tc.spec)
			if got, want := inst.Engine(), tc.adapter.Name(); got != want {
				t.Errorf("engine = %q, want %q", got, want)
			}
			if ep := inst.Endpoint(); !strings.HasPrefix(ep, "http://127.0.0.1:") || !strings.HasSuffix(ep, "/v1") {
				t.Errorf("endpoint = %q, want http://127.0.0.1:<port>/v1", ep)
			}
			await(t, inst, "ready", isReady)

			port := strconv.Itoa(portOf(t, inst))
			rec := f.recorded(t)
			if got, want := rec.Argv, tc.wantArgv(port); !slices.Equal(got, want) {
				t.Errorf("argv\n got %q\nwant %q", got, want)
			}
			wantEnv := tc.wantEnv(port)
			wantEnv["MODELPORT_SIM_RECORD"] = f.record
			if got := rec.Env; !maps.Equal(got, wantEnv) {
				t.Errorf("env\n got %v\nwant %v", got, wantEnv)
			}

			if got := chat(t, inst, served); got != served {
				t.Errorf("the answer names model %q, want %q", got, served)
			}

			group := pgid(t, inst)
			if err := inst.Stop(context.Background()); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if !groupGone(group) {
				t.Error("a process of the engine's group outlived Stop")
			}
			if ev, ok := <-inst.Events(); ok {
				t.Errorf("event %+v after Stop, want the channel closed", ev)
			}
		})
	}
}

// TestProcessOllamaImports runs the import of a local GGUF model and its
// LoRA adapter against the simulated Ollama, which checks each blob's
// digest against its content: the instance is ready only once the model
// is created under the served name. A restarted engine gets the same
// setup again, and blobs it has are not sent twice.
func TestProcessOllamaImports(t *testing.T) {
	dir := t.TempDir()
	model, adapter := filepath.Join(dir, "tiny.gguf"), filepath.Join(dir, "lora.gguf")
	for path, content := range map[string]string{model: "GGUF weights", adapter: "GGUF adapter"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const served = "u-a11ce0000001/tuned"
	f := newFakeProcess(t, engine.Ollama{}, fast)
	f.CPUThreads = 1
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "tiny", Source: "file://" + model,
		Adapter: engine.LoRA{Name: "tuned", Path: adapter}})
	await(t, inst, "ready", isReady)
	if got := chat(t, inst, served); got != served {
		t.Errorf("the answer names model %q, want %q", got, served)
	}
	// A crash: the restarted engine knows nothing, and is set up again.
	// (The simulated Ollama answers a create that sets num_thread as it
	// does any other.)
	if err := syscall.Kill(-pgid(t, inst), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	await(t, inst, "ready again after a restart", func(ev engine.Event) bool { return ev.State == engine.Ready && ev.Restarts >= 1 })
	chat(t, inst, served)

	// A model file that is gone fails the setup, and so the instance.
	f2 := newFakeProcess(t, engine.Ollama{}, fast)
	f2.Policy.StartTimeout = 2 * time.Second
	inst2 := start(t, f2, engine.Spec{InstanceID: "i-2", ServedName: served, Source: filepath.Join(dir, "missing.gguf")})
	ev := await(t, inst2, "failed", isFailed)
	if !strings.Contains(ev.Failure.Reason+ev.Failure.LogTail, "missing.gguf") {
		t.Errorf("failure %+v does not name the missing file", ev.Failure)
	}
}

func TestProcessSlowStart(t *testing.T) {
	const slow = 600 * time.Millisecond
	f := newFakeProcess(t, engine.LlamaCpp{}, fast, "MODELPORT_SIM_SLOW_START="+slow.String())
	begin := time.Now()
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "/models/m.gguf"})
	await(t, inst, "ready", isReady)
	// Health answers 503 for the slow start, counted from when the engine
	// began, after Start was called.
	if elapsed := time.Since(begin); elapsed < slow {
		t.Errorf("ready after %v, before the slow start of %v ended", elapsed, slow)
	}
	chat(t, inst, "m")
}

func TestProcessRestartsAfterCrash(t *testing.T) {
	f := newFakeProcess(t, engine.VLLM{}, fast, "MODELPORT_SIM_CRASH_AFTER=1s")
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
	first := await(t, inst, "ready", isReady)
	if first.Restarts != 0 {
		t.Errorf("first ready after %d restarts, want 0", first.Restarts)
	}
	port := portOf(t, inst)
	await(t, inst, "ready again after a restart", func(ev engine.Event) bool {
		return ev.State == engine.Ready && ev.Restarts >= 1
	})
	if got := portOf(t, inst); got != port {
		t.Errorf("restarted on port %d, want the same port %d", got, port)
	}
	chat(t, inst, "m")
}

func TestProcessCrashLoop(t *testing.T) {
	p := fast
	p.MaxCrashes = 3
	f := newFakeProcess(t, engine.SGLang{}, p, "MODELPORT_SIM_EXIT_AT_START=42")
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
	ev := await(t, inst, "failed", isFailed)
	if ev.Failure == nil {
		t.Fatal("failed without a failure")
	}
	if got, want := ev.Failure.ExitCode, 42; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if got, want := ev.Restarts, 2; got != want {
		t.Errorf("restarts = %d, want %d", got, want)
	}
	if !strings.Contains(ev.Failure.Reason, "crashed 3 times") || !strings.Contains(ev.Failure.Reason, "exit status 42") {
		t.Errorf("reason %q", ev.Failure.Reason)
	}
	if !strings.Contains(ev.Failure.LogTail, "simulated start failure") {
		t.Errorf("log tail lacks the engine's output:\n%s", ev.Failure.LogTail)
	}
	if _, ok := <-inst.Events(); ok {
		t.Error("events not closed after failed")
	}
}

func TestProcessStop(t *testing.T) {
	t.Run("SIGTERM", func(t *testing.T) {
		f := newFakeProcess(t, engine.VLLM{}, fast)
		inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
		await(t, inst, "ready", isReady)
		group := pgid(t, inst)
		if err := inst.Stop(context.Background()); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if !groupGone(group) {
			t.Error("a process of the group outlived Stop")
		}
	})
	t.Run("SIGKILL after the grace period", func(t *testing.T) {
		p := fast
		p.StopGrace = 300 * time.Millisecond
		f := newFakeProcess(t, engine.VLLM{}, p, "MODELPORT_SIM_IGNORE_SIGTERM=1")
		inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
		await(t, inst, "ready", isReady)
		group := pgid(t, inst)
		begin := time.Now()
		if err := inst.Stop(context.Background()); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if elapsed := time.Since(begin); elapsed < p.StopGrace {
			t.Errorf("stopped after %v, before the grace period of %v", elapsed, p.StopGrace)
		}
		if !groupGone(group) {
			t.Error("a process of the group outlived Stop")
		}
	})
}

func TestProcessNeverReady(t *testing.T) {
	p := fast
	p.StartTimeout = 300 * time.Millisecond
	f := newFakeProcess(t, engine.VLLM{}, p, "MODELPORT_SIM_SLOW_START=1h")
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
	eventually(t, "the engine runs", func() bool { return pgid(t, inst) != 0 })
	group := pgid(t, inst)
	ev := await(t, inst, "failed", isFailed)
	if got, want := ev.Failure.ExitCode, -1; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if !strings.Contains(ev.Failure.Reason, "not healthy within 300ms") {
		t.Errorf("reason %q", ev.Failure.Reason)
	}
	if !strings.Contains(ev.Failure.LogTail, "listening on") {
		t.Errorf("log tail lacks the engine's output:\n%s", ev.Failure.LogTail)
	}
	eventually(t, "the unready engine is gone", func() bool { return groupGone(group) })
}

func TestProcessProgramMissing(t *testing.T) {
	f := newFakeProcess(t, engine.VLLM{}, fast)
	f.SearchPath = t.TempDir()
	inst := start(t, f, engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "org/model", GPUs: 1})
	ev := await(t, inst, "failed", isFailed)
	if got, want := ev.Failure.ExitCode, -1; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if !strings.Contains(ev.Failure.Reason, `"vllm" not found`) {
		t.Errorf("reason %q", ev.Failure.Reason)
	}
}

func TestProcessRejects(t *testing.T) {
	f := newFakeProcess(t, engine.Ollama{}, fast)
	_, err := f.Start(context.Background(), engine.Spec{InstanceID: "i-1", ServedName: "m", Source: "s3://models/m.gguf"})
	if err == nil || !strings.Contains(err.Error(), "Ollama takes a local GGUF file") {
		t.Fatalf("err = %v, want the adapter's", err)
	}
	// The port went back: the only one in the range serves the next start.
	lns := reserve(t, 1)
	only := port(lns[0])
	lns[0].Close()
	f.Ports = engine.Ports{Host: "127.0.0.1", First: only, Last: only}
	for range 2 {
		if _, err := f.Start(context.Background(), engine.Spec{InstanceID: "i-2", ServedName: "m", Source: "s3://q"}); err == nil || strings.Contains(err.Error(), "no free port") {
			t.Fatalf("err = %v, want the adapter's, not a lost port", err)
		}
	}
}

func TestRegistry(t *testing.T) {
	dir := fakeengine.Dir(t)
	r := &engine.Registry{Ports: engine.Ports{Host: "127.0.0.1"}, Environ: []string{"PATH=" + dir}, Policy: fast}
	if got, want := r.Names(), []string{"llama.cpp", "ollama", "sglang", "simulator", "vllm"}; !slices.Equal(got, want) {
		t.Errorf("names %v, want %v", got, want)
	}
	for _, name := range r.Names() {
		e, err := r.ForName(name)
		if err != nil || e.Name() != name {
			t.Errorf("ForName(%q) = %v, %v", name, e, err)
		}
	}
	_, err := r.ForName("tgi")
	if got, want := errs.KindOf(err), errs.Invalid; err == nil || got != want {
		t.Errorf("ForName(tgi): err %v kind %v, want %v", err, got, want)
	}

	sim := start(t, r, engine.Spec{InstanceID: "i-1", ServedName: "u-a11ce0000001/img", Engine: "simulator"})
	if got, want := sim.Engine(), "simulator"; got != want {
		t.Errorf("engine = %q, want %q", got, want)
	}
	proc := start(t, r, engine.Spec{InstanceID: "i-2", ServedName: "u-a11ce0000001/chat", Engine: "vllm", Source: "org/model", GPUs: 1})
	if got, want := proc.Engine(), "vllm"; got != want {
		t.Errorf("engine = %q, want %q", got, want)
	}
	await(t, sim, "the simulator is ready", isReady)
	await(t, proc, "vllm is ready", isReady)
	if portOf(t, sim) == portOf(t, proc) {
		t.Error("two instances on one port")
	}
	chat(t, proc, "u-a11ce0000001/chat")

	if _, err := r.Start(context.Background(), engine.Spec{InstanceID: "i-3", Engine: "tgi"}); errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), "i-3") {
		t.Errorf("Start on an unknown engine: %v, want an invalid error naming the instance", err)
	}

	over := &engine.Registry{Ports: engine.Ports{Host: "127.0.0.1"}, Override: "simulator"}
	inst := start(t, over, engine.Spec{InstanceID: "i-4", ServedName: "u-a11ce0000001/chat", Engine: "vllm", Source: "org/model", GPUs: 1})
	if got, want := inst.Engine(), "simulator"; got != want {
		t.Errorf("engine with an override = %q, want %q", got, want)
	}
	await(t, inst, "ready", isReady)
	chat(t, inst, "u-a11ce0000001/chat")
}

func TestRegistrySharesPorts(t *testing.T) {
	dir := fakeengine.Dir(t)
	lns := reserve(t, 2)
	first, last := port(lns[0]), port(lns[1])
	for _, ln := range lns {
		ln.Close()
	}
	r := &engine.Registry{Ports: engine.Ports{Host: "127.0.0.1", First: first, Last: last}, Environ: []string{"PATH=" + dir}, Policy: fast}
	// The engine process has not bound its port when the simulator starts;
	// the simulator must still take the other one.
	a := start(t, r, engine.Spec{InstanceID: "i-1", ServedName: "a", Engine: "vllm", Source: "org/model", GPUs: 1})
	b := start(t, r, engine.Spec{InstanceID: "i-2", ServedName: "b", Engine: "simulator"})
	if portOf(t, a) == portOf(t, b) {
		t.Fatalf("both on port %d", portOf(t, a))
	}
	if _, err := r.Start(context.Background(), engine.Spec{InstanceID: "i-3", ServedName: "c", Engine: "llama.cpp", Source: "/m.gguf"}); err == nil || !strings.Contains(err.Error(), "no free port") {
		t.Errorf("a third instance on two ports: %v, want no free port", err)
	}
	await(t, a, "ready", isReady)
	await(t, b, "ready", isReady)
	// A stopped instance gives its port back.
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := start(t, r, engine.Spec{InstanceID: "i-3", ServedName: "c", Engine: "llama.cpp", Source: "/m.gguf"})
	await(t, c, "ready", isReady)
	chat(t, c, "c")
}
