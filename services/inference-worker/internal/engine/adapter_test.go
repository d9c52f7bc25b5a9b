package engine_test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/engine"
)

const (
	host = "0.0.0.0"
	prt  = 9101
)

// base is a chat model on one GPU, as a catalog entry and a placement give it.
func base(mod ...func(*engine.Spec)) engine.Spec {
	s := engine.Spec{
		InstanceID: "i-1", ServedName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct",
		Task: "text-generation", Source: "Qwen/Qwen2.5-7B-Instruct", ContextLength: 32768, GPUs: 1, Devices: []int{2},
	}
	for _, m := range mod {
		m(&s)
	}
	return s
}

func withLoRA(s *engine.Spec)   { s.Adapter = engine.LoRA{Name: "sql", Path: "/loras/sql"} }
func onCPU(s *engine.Spec)      { s.GPUs, s.Devices = 0, nil }
func twoGPUs(s *engine.Spec)    { s.GPUs, s.TensorParallel, s.Devices = 2, 2, []int{0, 1} }
func unassigned(s *engine.Spec) { s.Devices = nil }

type adapterCase struct {
	name       string
	spec       engine.Spec
	host       string // default host
	wantArgs   []string
	wantEnv    map[string]string
	wantHealth string
	wantSetup  []engine.Request
	wantErr    string
}

func runAdapterCases(t *testing.T, a engine.Adapter, tests []adapterCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.host
			if h == "" {
				h = host
			}
			before := reflectCopy(tc.spec)
			cmd, err := a.Command(tc.spec, h, prt)
			if !reflect.DeepEqual(tc.spec, before) {
				t.Errorf("Command changed its spec: %+v, was %+v", tc.spec, before)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Command: %v", err)
			}
			if got, want := cmd.Program, programs[a.Name()]; got != want {
				t.Errorf("program = %q, want %q", got, want)
			}
			if !slices.Equal(cmd.Args, tc.wantArgs) {
				t.Errorf("args\n got %q\nwant %q", cmd.Args, tc.wantArgs)
			}
			if !maps.Equal(cmd.Env, tc.wantEnv) {
				t.Errorf("env\n got %v\nwant %v", cmd.Env, tc.wantEnv)
			}
			wantHealth := tc.wantHealth
			if wantHealth == "" {
				wantHealth = "/health"
			}
			if cmd.Health != wantHealth {
				t.Errorf("health = %q, want %q", cmd.Health, wantHealth)
			}
			if !reflect.DeepEqual(cmd.Setup, tc.wantSetup) {
				t.Errorf("setup\n got %+v\nwant %+v", cmd.Setup, tc.wantSetup)
			}
		})
	}
}

// reflectCopy deep-copies a spec, to check that Command leaves it alone.
func reflectCopy(s engine.Spec) engine.Spec {
	c := s
	c.Env = maps.Clone(s.Env)
	c.Devices = slices.Clone(s.Devices)
	return c
}

var programs = map[string]string{"vllm": "vllm", "llama.cpp": "llama-server", "sglang": "python3", "ollama": "ollama"}

// commonErrors are specs no adapter runs.
func commonErrors() []adapterCase {
	return []adapterCase{
		{name: "no source", spec: base(func(s *engine.Spec) { s.Source = "" }), wantErr: "no model source"},
		{name: "no served name", spec: base(func(s *engine.Spec) { s.ServedName = "" }), wantErr: "no served name"},
		{name: "LoRA without a path", spec: base(func(s *engine.Spec) { s.Adapter = engine.LoRA{Name: "sql"} }), wantErr: `LoRA adapter "sql" has no path`},
		{name: "fewer devices than GPUs", spec: base(func(s *engine.Spec) { s.GPUs = 2 }), wantErr: "needs 2 GPUs, was given 1"},
		{name: "negative context", spec: base(func(s *engine.Spec) { s.ContextLength = -1 }), wantErr: "negative"},
		{name: "negative threads", spec: base(func(s *engine.Spec) { s.Threads = -1 }), wantErr: "negative"},
	}
}

func TestVLLMCommand(t *testing.T) {
	tests := []adapterCase{
		{
			name: "one GPU",
			spec: base(),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "1"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "tensor parallel over two GPUs",
			spec: base(twoGPUs),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "2"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "0,1"},
		},
		{
			name: "LoRA served under the access name",
			spec: base(withLoRA),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "qwen2.5-7b-instruct",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "1",
				"--enable-lora", "--lora-modules", "u-a11ce0000001/chat=/loras/sql"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "LoRA without a base model name",
			spec: base(withLoRA, func(s *engine.Spec) { s.BaseModel = "" }),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "Qwen/Qwen2.5-7B-Instruct",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "1",
				"--enable-lora", "--lora-modules", "u-a11ce0000001/chat=/loras/sql"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "no context length, GPUs not assigned, extra environment",
			spec: base(unassigned, func(s *engine.Spec) {
				s.ContextLength = 0
				s.Env = map[string]string{"HF_HOME": "/models/hf", "VLLM_LOGGING_LEVEL": "DEBUG"}
			}),
			host: "127.0.0.1",
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "u-a11ce0000001/chat",
				"--host", "127.0.0.1", "--port", "9101", "--tensor-parallel-size", "1"},
			wantEnv: map[string]string{"HF_HOME": "/models/hf", "VLLM_LOGGING_LEVEL": "DEBUG"},
		},
		{
			name: "the assigned GPUs win over the spec's environment",
			spec: base(func(s *engine.Spec) { s.Env = map[string]string{"CUDA_VISIBLE_DEVICES": "0,1,2,3"} }),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "1"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "no GPU hides them all",
			spec: base(onCPU),
			wantArgs: []string{"serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "--max-model-len", "32768", "--tensor-parallel-size", "1"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "-1"},
		},
	}
	runAdapterCases(t, engine.VLLM{}, append(tests, commonErrors()...))
}

func TestLlamaCppCommand(t *testing.T) {
	gguf := func(s *engine.Spec) {
		s.Source = "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
		s.ServedName = "u-a11ce0000001/tiny"
	}
	tests := []adapterCase{
		{
			name: "GGUF file on a GPU",
			spec: base(gguf),
			wantArgs: []string{"-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "u-a11ce0000001/tiny",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "999"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "on CPU",
			spec: base(gguf, onCPU),
			wantArgs: []string{"-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "u-a11ce0000001/tiny",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "0"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "-1"},
		},
		{
			name: "relative GGUF path and a LoRA",
			spec: base(withLoRA, func(s *engine.Spec) { s.Source = "models/tiny.GGUF"; s.ContextLength = 0 }),
			wantArgs: []string{"-m", "models/tiny.GGUF", "--alias", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "-ngl", "999", "--lora", "/loras/sql"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "Hugging Face repository",
			spec: base(onCPU, func(s *engine.Spec) { s.Source = "Qwen/Qwen2.5-0.5B-Instruct-GGUF" }),
			wantArgs: []string{"-hf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "--alias", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "0"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "-1"},
		},
		{
			name: "file URL and a LoRA file URL",
			spec: base(onCPU, func(s *engine.Spec) {
				s.Source = "file:///models/tiny.gguf"
				s.Adapter = engine.LoRA{Name: "sql", Path: "file:///loras/sql.gguf"}
			}),
			wantArgs: []string{"-m", "/models/tiny.gguf", "--alias", "u-a11ce0000001/chat",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "0", "--lora", "/loras/sql.gguf"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "-1"},
		},
		{
			name: "CPU threads",
			spec: base(gguf, onCPU, func(s *engine.Spec) { s.Threads = 2 }),
			wantArgs: []string{"-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "u-a11ce0000001/tiny",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "0", "--threads", "2"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "-1"},
		},
		{
			name: "two GPUs split by llama.cpp itself",
			spec: base(gguf, twoGPUs, func(s *engine.Spec) { s.Env = map[string]string{"LLAMA_ARG_THREADS": "8"} }),
			wantArgs: []string{"-m", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "--alias", "u-a11ce0000001/tiny",
				"--host", "0.0.0.0", "--port", "9101", "-c", "32768", "-ngl", "999"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "0,1", "LLAMA_ARG_THREADS": "8"},
		},
	}
	runAdapterCases(t, engine.LlamaCpp{}, append(tests, commonErrors()...))
}

func TestSGLangCommand(t *testing.T) {
	tests := []adapterCase{
		{
			name: "one GPU",
			spec: base(),
			wantArgs: []string{"-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
				"--served-model-name", "u-a11ce0000001/chat", "--host", "0.0.0.0", "--port", "9101",
				"--context-length", "32768", "--tp", "1"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "2"},
		},
		{
			name: "tensor parallel and a LoRA",
			spec: base(twoGPUs, withLoRA),
			wantArgs: []string{"-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
				"--served-model-name", "u-a11ce0000001/chat", "--host", "0.0.0.0", "--port", "9101",
				"--context-length", "32768", "--tp", "2", "--lora-paths", "u-a11ce0000001/chat=/loras/sql"},
			wantEnv: map[string]string{"CUDA_VISIBLE_DEVICES": "0,1"},
		},
		{
			name: "no context length",
			spec: base(unassigned, func(s *engine.Spec) { s.ContextLength = 0; s.Env = map[string]string{"SGLANG_LOG_LEVEL": "info"} }),
			wantArgs: []string{"-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
				"--served-model-name", "u-a11ce0000001/chat", "--host", "0.0.0.0", "--port", "9101", "--tp", "1"},
			wantEnv: map[string]string{"SGLANG_LOG_LEVEL": "info"},
		},
	}
	runAdapterCases(t, engine.SGLang{}, append(tests, commonErrors()...))
}

func TestOllamaCommand(t *testing.T) {
	tag := func(s *engine.Spec) { s.Source = "qwen2.5:0.5b" }
	gguf := func(s *engine.Spec) { s.Source = "/models/tiny.gguf" }
	lora := func(s *engine.Spec) { s.Adapter = engine.LoRA{Name: "sql", Path: "file:///loras/sql.gguf"} }
	pull := []engine.Request{
		{Method: "POST", Path: "/api/pull", Body: `{"model":"qwen2.5:0.5b","stream":false}`},
		{Method: "POST", Path: "/api/copy", Body: `{"destination":"u-a11ce0000001/chat","source":"qwen2.5:0.5b"}`},
	}
	upload := func(n int, files ...string) engine.Request {
		return engine.Request{Method: "POST", Path: fmt.Sprintf("/api/blobs/{digest %d}", n), File: files[n], Digests: files, SkipIfFound: true}
	}
	imported := []engine.Request{
		upload(0, "/models/tiny.gguf"),
		{Method: "POST", Path: "/api/create", Body: `{"files":{"model.gguf":"{digest 0}"},"model":"u-a11ce0000001/chat","stream":false}`,
			Digests: []string{"/models/tiny.gguf"}},
	}
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	relative := filepath.Join(cwd, "models", "tiny.gguf")
	tests := []adapterCase{
		{
			name:       "pulled, one GPU",
			spec:       base(tag),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "2"},
			wantHealth: "/",
			wantSetup:  pull,
		},
		{
			name:       "pulled by an ollama:// source",
			spec:       base(func(s *engine.Spec) { s.Source = "ollama://qwen2.5:0.5b" }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "2"},
			wantHealth: "/",
			wantSetup:  pull,
		},
		{
			name:       "on CPU, IPv6, no context length",
			spec:       base(tag, onCPU, func(s *engine.Spec) { s.ContextLength = 0 }),
			host:       "::1",
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "[::1]:9101", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup:  pull,
		},
		{
			name: "the address wins over the spec's environment",
			spec: base(tag, unassigned, func(s *engine.Spec) {
				s.Env = map[string]string{"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_KEEP_ALIVE": "-1"}
			}),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "OLLAMA_KEEP_ALIVE": "-1"},
			wantHealth: "/",
			wantSetup:  pull,
		},
		{
			name:       "a local GGUF file is imported",
			spec:       base(gguf, onCPU),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup:  imported,
		},
		{
			name:       "a file URL is imported",
			spec:       base(onCPU, func(s *engine.Spec) { s.Source = "file:///models/tiny.gguf" }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup:  imported,
		},
		{
			name:       "a relative path is the worker's",
			spec:       base(onCPU, func(s *engine.Spec) { s.Source = "models/tiny.gguf"; s.ContextLength = 0 }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				upload(0, relative),
				{Method: "POST", Path: "/api/create", Body: `{"files":{"model.gguf":"{digest 0}"},"model":"u-a11ce0000001/chat","stream":false}`,
					Digests: []string{relative}},
			},
		},
		{
			name:       "an imported model with a LoRA adapter",
			spec:       base(gguf, onCPU, lora),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				upload(0, "/models/tiny.gguf"),
				upload(1, "/models/tiny.gguf", "/loras/sql.gguf"),
				{Method: "POST", Path: "/api/create",
					Body:    `{"adapters":{"adapter.gguf":"{digest 1}"},"files":{"model.gguf":"{digest 0}"},"model":"u-a11ce0000001/chat","stream":false}`,
					Digests: []string{"/models/tiny.gguf", "/loras/sql.gguf"}},
			},
		},
		{
			name:       "a pulled model with a LoRA adapter",
			spec:       base(tag, lora),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "2"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				pull[0],
				upload(0, "/loras/sql.gguf"),
				{Method: "POST", Path: "/api/create",
					Body:    `{"adapters":{"adapter.gguf":"{digest 0}"},"from":"qwen2.5:0.5b","model":"u-a11ce0000001/chat","stream":false}`,
					Digests: []string{"/loras/sql.gguf"}},
			},
		},
		{
			name:       "an imported model on one CPU thread",
			spec:       base(gguf, onCPU, func(s *engine.Spec) { s.Threads = 1 }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				imported[0],
				{Method: "POST", Path: "/api/create", Body: `{"files":{"model.gguf":"{digest 0}"},"model":"u-a11ce0000001/chat","parameters":{"num_thread":1},"stream":false}`,
					Digests: []string{"/models/tiny.gguf"}},
			},
		},
		{
			name:       "a pulled model on four CPU threads is created from the pulled one",
			spec:       base(tag, onCPU, func(s *engine.Spec) { s.Threads = 4 }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				pull[0],
				{Method: "POST", Path: "/api/create", Body: `{"from":"qwen2.5:0.5b","model":"u-a11ce0000001/chat","parameters":{"num_thread":4},"stream":false}`},
			},
		},
		{name: "a LoRA that is not a local file", spec: base(tag, withLoRA, func(s *engine.Spec) { s.Adapter.Path = "org/sql-lora" }),
			wantErr: "the LoRA adapter must be a local GGUF file"},
		{name: "a source Ollama cannot read", spec: base(func(s *engine.Spec) { s.Source = "s3://bucket/tiny.gguf" }),
			wantErr: "Ollama takes a local GGUF file"},
		{name: "a file on another host", spec: base(func(s *engine.Spec) { s.Source = "file://models.example/tiny.gguf" }),
			wantErr: "Ollama takes a local GGUF file"},
		{
			name:       "an escaped file URL",
			spec:       base(onCPU, func(s *engine.Spec) { s.Source = "file:///my%20models/tiny.gguf" }),
			wantArgs:   []string{"serve"},
			wantEnv:    map[string]string{"OLLAMA_HOST": "0.0.0.0:9101", "OLLAMA_CONTEXT_LENGTH": "32768", "CUDA_VISIBLE_DEVICES": "-1"},
			wantHealth: "/",
			wantSetup: []engine.Request{
				upload(0, "/my models/tiny.gguf"),
				{Method: "POST", Path: "/api/create", Body: `{"files":{"model.gguf":"{digest 0}"},"model":"u-a11ce0000001/chat","stream":false}`,
					Digests: []string{"/my models/tiny.gguf"}},
			},
		},
	}
	runAdapterCases(t, engine.Ollama{}, append(tests, commonErrors()...))
}

func TestAdapters(t *testing.T) {
	if got, want := slices.Sorted(maps.Keys(engine.Adapters)), []string{"llama.cpp", "ollama", "sglang", "vllm"}; !slices.Equal(got, want) {
		t.Errorf("adapters %v, want %v", got, want)
	}
	for name, a := range engine.Adapters {
		if a.Name() != name {
			t.Errorf("adapter %q is named %q", name, a.Name())
		}
	}
}
