package app

import (
	"testing"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
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
