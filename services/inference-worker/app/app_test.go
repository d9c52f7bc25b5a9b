package app

import (
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
)

func TestSpecsChooseTheEngine(t *testing.T) {
	cat := catalog.Default()
	tests := []struct {
		name       string
		cfg        Config
		model      string
		wantEngine string
		wantGPUs   int
		wantLoRA   string
	}{
		{"no real engines allowed", Config{GPUs: 8}, "qwen2.5-7b-instruct", "simulator", 0, ""},
		{"allowed with GPUs", Config{GPUs: 1, Engines: []string{"vllm"}}, "qwen2.5-7b-instruct", "vllm", 1, ""},
		{"allowed but no GPU", Config{GPUs: 0, Engines: []string{"vllm"}}, "qwen2.5-7b-instruct", "simulator", 0, ""},
		{"CPU model on llama.cpp", Config{GPUs: 0, Engines: []string{"llama.cpp"}}, "qwen2.5-0.5b-instruct-gguf", "llama.cpp", 0, ""},
		{"CPU model on a worker with GPUs", Config{GPUs: 2, Engines: []string{"llama.cpp"}}, "qwen2.5-0.5b-instruct-gguf", "llama.cpp", 0, ""},
		{"another engine allowed only", Config{GPUs: 4, Engines: []string{"sglang"}}, "qwen2.5-7b-instruct", "simulator", 0, ""},
		{"fine-tuned gets its adapter", Config{GPUs: 1, Engines: []string{"vllm"}}, "qwen2.5-7b-support-lora", "vllm", 1, "/models/adapters/qwen2.5-7b-support"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := specs(cat, tc.cfg)(engine.Spec{InstanceID: "i1", ServedName: "u-0123456789ab/x", BaseModel: tc.model})
			if err != nil {
				t.Fatal(err)
			}
			if got.Engine != tc.wantEngine || got.GPUs != tc.wantGPUs || got.Adapter.Path != tc.wantLoRA {
				t.Errorf("engine %q gpus %d adapter %q, want %q %d %q", got.Engine, got.GPUs, got.Adapter.Path, tc.wantEngine, tc.wantGPUs, tc.wantLoRA)
			}
			if m, _ := cat.Lookup(tc.model); got.Source != m.Source || got.ContextLength != m.ContextLength {
				t.Errorf("source %q context %d, want the catalog's %q %d", got.Source, got.ContextLength, m.Source, m.ContextLength)
			}
		})
	}
	if _, err := specs(cat, Config{})(engine.Spec{BaseModel: "not-in-catalog"}); err == nil {
		t.Error("unknown base model accepted")
	}
}

func TestConfigRejectsUnknownEngines(t *testing.T) {
	_, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_ENGINES": "vllm,tgi", "MODELPORT_WORKER_GPUS": "0"}))
	if err == nil {
		t.Fatal("tgi accepted")
	}
	c, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_ENGINES": " vllm , llama.cpp", "MODELPORT_WORKER_GPUS": "2"}))
	if err != nil || len(c.Engines) != 2 || c.GPUs != 2 {
		t.Errorf("config %+v, %v", c, err)
	}
}

// The simulator caches prefixes by default, as engines do; the settings
// change its cache and prefill time, and negative ones are refused.
func TestSimulatorPrefixSettings(t *testing.T) {
	c, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_GPUS": "0"}))
	if err != nil || c.PrefixCacheTokens != DefaultPrefixCacheTokens || c.PrefillPerToken != 0 {
		t.Errorf("defaults: cache %d prefill %v (%v), want %d and 0", c.PrefixCacheTokens, c.PrefillPerToken, err, DefaultPrefixCacheTokens)
	}
	c, err = ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_GPUS": "0", "MODELPORT_SIM_PREFIX_CACHE": "0", "MODELPORT_SIM_PREFILL": "20us"}))
	if err != nil || c.PrefixCacheTokens != 0 || c.PrefillPerToken != 20*time.Microsecond {
		t.Errorf("set: cache %d prefill %v (%v), want 0 and 20µs", c.PrefixCacheTokens, c.PrefillPerToken, err)
	}
	for _, env := range []map[string]string{{"MODELPORT_SIM_PREFIX_CACHE": "-1"}, {"MODELPORT_SIM_PREFILL": "-1ms"}} {
		env["MODELPORT_WORKER_GPUS"] = "0"
		if _, err := ConfigFromEnv(config.Map(env)); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
}

// TestModelSpecs: a placement that carries a registered model runs it
// without any catalog entry, its source URI turned into what the engine
// takes; a catalog model still comes from this worker's catalog.
func TestModelSpecs(t *testing.T) {
	cat := catalog.Default()
	base := engine.Spec{InstanceID: "i1", ServedName: "u-0123456789ab/tiny-chat", BaseModel: "tiny"}
	tiny := events.ModelSpec{Name: "tiny", Owner: "0123456789ab", Source: "file:///models/tiny.gguf", Engine: "ollama", Format: "gguf", ContextLength: 2048,
		Adapter: "file:///models/tiny-lora.gguf"}
	tests := []struct {
		name       string
		cfg        Config
		model      events.ModelSpec
		wantEngine string
		wantSource string
		wantLoRA   string
		wantGPUs   int
	}{
		{"a registered GGUF on ollama", Config{Engines: []string{"ollama"}}, tiny, "ollama", "/models/tiny.gguf", "/models/tiny-lora.gguf", 0},
		{"on the simulator where ollama is not allowed", Config{Engines: []string{"llama.cpp"}}, tiny, "simulator", "/models/tiny.gguf", "/models/tiny-lora.gguf", 0},
		{"an Ollama library model", Config{Engines: []string{"ollama"}},
			events.ModelSpec{Name: "l", Owner: "public", Source: "ollama://llama3.2:1b", Engine: "ollama"}, "ollama", "llama3.2:1b", "", 0},
		{"a repository on vllm with a GPU", Config{GPUs: 1, Engines: []string{"vllm"}},
			events.ModelSpec{Name: "q", Owner: "0123456789ab", Source: "hf://Qwen/Qwen2.5-7B-Instruct", Engine: "vllm", GPUs: 1}, "vllm", "Qwen/Qwen2.5-7B-Instruct", "", 1},
		{"a catalog model comes from the catalog", Config{Engines: []string{"llama.cpp"}},
			events.ModelSpec{Name: "qwen2.5-0.5b-instruct-gguf", Owner: "catalog", Source: "elsewhere", Engine: "llama.cpp"}, "llama.cpp", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := base
			spec.BaseModel = tc.model.Name
			got, err := modelSpecs(cat, tc.cfg)(spec, tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if got.Engine != tc.wantEngine || got.Source != tc.wantSource || got.Adapter.Path != tc.wantLoRA || got.GPUs != tc.wantGPUs {
				t.Errorf("engine %q source %q adapter %q gpus %d, want %q %q %q %d", got.Engine, got.Source, got.Adapter.Path, got.GPUs,
					tc.wantEngine, tc.wantSource, tc.wantLoRA, tc.wantGPUs)
			}
			if tc.model.Adapter != "" && got.Adapter.Name != base.ServedName {
				t.Errorf("adapter served as %q, want the access name", got.Adapter.Name)
			}
		})
	}
	for _, bad := range []events.ModelSpec{
		{Name: "x", Owner: "0123456789ab", Source: "ftp://x/y", Engine: "ollama"},
		{Name: "x", Owner: "0123456789ab", Source: "hf://org/repo@v1", Engine: "vllm"},
		{Name: "x", Owner: "0123456789ab", Source: "hf://org/repo", Adapter: "lora", Engine: "vllm"},
	} {
		if _, err := modelSpecs(cat, Config{})(base, bad); errs.KindOf(err) != errs.Invalid {
			t.Errorf("%+v: %v, want an invalid error", bad, err)
		}
	}
}

func TestMemorySettings(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{{"68719476736", 64 << 30}, {"64GiB", 64 << 30}, {"1.5 GiB", 3 << 29}, {"512MiB", 512 << 20}, {"16GB", 16e9}, {"100B", 100}} {
		if got, err := parseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"lots", "-1GiB", "GiB", "12 parsecs"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
	c, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_MEMORY": "24GiB", "MODELPORT_WORKER_GPU_MEMORY": "80GiB", "MODELPORT_WORKER_GPUS": "2"}))
	if err != nil || c.Memory != 24<<30 || c.GPUMemory != 80<<30 {
		t.Errorf("config %+v, %v", c, err)
	}
	c, err = ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_GPU_MEMORY": "80GiB", "MODELPORT_WORKER_GPUS": "0"}))
	if err != nil || c.GPUMemory != 0 || (c.Memory == 0) != (machineMemory() == 0) {
		t.Errorf("without GPUs: %+v, %v; machine memory %d", c, err, machineMemory())
	}
	if _, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_MEMORY": "plenty"})); err == nil || !strings.Contains(err.Error(), "MODELPORT_WORKER_MEMORY") {
		t.Errorf("a bad size: %v", err)
	}
}

func TestEnginePath(t *testing.T) {
	tests := []struct{ configured, path, exe, want string }{
		{"", "/usr/bin:/bin", "/opt/modelport/bin/inference-worker", "/usr/bin:/bin:/opt/modelport/bin"},
		{"", "", "/opt/modelport/bin/modelport", "/opt/modelport/bin"},
		{"", "/usr/bin", "", "/usr/bin"},
		{"/engines:/more", "/usr/bin", "/opt/modelport/bin/modelport", "/engines:/more"},
	}
	for _, tc := range tests {
		if got := enginePath(tc.configured, tc.path, tc.exe); got != tc.want {
			t.Errorf("enginePath(%q, %q, %q) = %q, want %q", tc.configured, tc.path, tc.exe, got, tc.want)
		}
	}
	c, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_ENGINE_PATH": "/engines", "MODELPORT_WORKER_GPUS": "0", "MODELPORT_WORKER_CPU_THREADS": "2"}))
	if err != nil || c.EnginePath != "/engines" || c.CPUThreads != 2 {
		t.Errorf("config %+v, %v", c, err)
	}
	if _, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_CPU_THREADS": "-1", "MODELPORT_WORKER_GPUS": "0"})); err == nil {
		t.Error("negative CPU threads accepted")
	}
}
