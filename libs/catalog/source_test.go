package catalog

import (
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	tests := []struct {
		in        string
		want      Source
		canonical string
		format    string
		engine    string // EngineSource; "!" when it is an error
	}{
		{"file:///models/tiny.gguf", Source{Scheme: "file", Path: "/models/tiny.gguf"}, "", "gguf", "/models/tiny.gguf"},
		{"file:///models/Qwen2.5-0.5B/", Source{Scheme: "file", Path: "/models/Qwen2.5-0.5B"}, "file:///models/Qwen2.5-0.5B", "", "/models/Qwen2.5-0.5B"},
		{"FILE:///m/x.GGUF", Source{Scheme: "file", Path: "/m/x.GGUF"}, "file:///m/x.GGUF", "gguf", "/m/x.GGUF"},
		{"hf://Qwen/Qwen2.5-7B-Instruct", Source{Scheme: "hf", Repo: "Qwen/Qwen2.5-7B-Instruct"}, "", "safetensors", "Qwen/Qwen2.5-7B-Instruct"},
		{"hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF", Source{Scheme: "hf", Repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF"}, "", "gguf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF"},
		{"hf://org/repo@v1.0", Source{Scheme: "hf", Repo: "org/repo", Revision: "v1.0"}, "", "safetensors", "!"},
		{"hf://org/repo@main/q4/model-Q4_K_M.gguf", Source{Scheme: "hf", Repo: "org/repo", Revision: "main", File: "q4/model-Q4_K_M.gguf"}, "", "gguf", "!"},
		{"hf://org/repo/model.gguf", Source{Scheme: "hf", Repo: "org/repo", File: "model.gguf"}, "", "gguf", "!"},
		{"ollama://llama3.2:1b", Source{Scheme: "ollama", Model: "llama3.2:1b"}, "", "ollama", "llama3.2:1b"},
		{"ollama://qwen2.5", Source{Scheme: "ollama", Model: "qwen2.5:latest"}, "ollama://qwen2.5:latest", "ollama", "qwen2.5:latest"},
		{"ollama://hf.co/org/repo:Q4_K_M", Source{Scheme: "ollama", Model: "hf.co/org/repo:Q4_K_M"}, "", "ollama", "hf.co/org/repo:Q4_K_M"},
		{"s3://weights/llama/8b/", Source{Scheme: "s3", Bucket: "weights", Key: "llama/8b/"}, "", "safetensors", "s3://weights/llama/8b/"},
		{"s3://weights/tiny.gguf", Source{Scheme: "s3", Bucket: "weights", Key: "tiny.gguf"}, "", "gguf", "s3://weights/tiny.gguf"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSource(tc.in)
			if err != nil {
				t.Fatalf("ParseSource: %v", err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			canonical := tc.canonical
			if canonical == "" {
				canonical = tc.in
			}
			if got.String() != canonical {
				t.Errorf("String() = %q, want %q", got.String(), canonical)
			}
			if again, err := ParseSource(got.String()); err != nil || again != got {
				t.Errorf("the canonical form parses to %+v, %v", again, err)
			}
			if got.Format() != tc.format {
				t.Errorf("Format() = %q, want %q", got.Format(), tc.format)
			}
			es, err := got.EngineSource()
			switch {
			case tc.engine == "!" && err == nil:
				t.Errorf("EngineSource() = %q, want an error", es)
			case tc.engine != "!" && (err != nil || es != tc.engine):
				t.Errorf("EngineSource() = %q, %v, want %q", es, err, tc.engine)
			}
		})
	}
}

func TestParseSourceRejects(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "source is required"},
		{"/models/tiny.gguf", "write file:///models/tiny.gguf"},
		{"Qwen/Qwen2.5-7B", "write hf://Qwen/Qwen2.5-7B"},
		{"tiny.gguf", "has no scheme"},
		{"http://example.com/x.gguf", `unknown source scheme "http"`},
		{"gs://bucket/key", `unknown source scheme "gs"`},
		{"file:models/x.gguf", "write file://"},
		{"file://models/x.gguf", "not an absolute path"},
		{"file:///models/../etc/passwd", "not clean"},
		{"file:///models//x.gguf", "not clean"},
		{"file:///", "root folder"},
		{"file:///models/x\x00.gguf", "control characters"},
		{"hf://just-a-repo", "want hf://org/repo"},
		{"hf://org/re po", "letters, digits"},
		{"hf://org/repo@", "revision"},
		{"hf://org/repo/weights.bin", "must be a .gguf file"},
		{"hf://org/repo/../x.gguf", "not a clean path"},
		{"ollama://", "want ollama://name:tag"},
		{"ollama://a/b/c/d:1", "want ollama://name:tag"},
		{"ollama://llama:", "want ollama://name:tag"},
		{"s3://B/key", "bucket"},
		{"s3://bucket", "clean key"},
		{"s3://bucket/a/../b", "clean key"},
		{"file:///" + strings.Repeat("a", 1100), "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSource(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseSource = %+v, %v; want an error containing %q", got, err, tc.want)
			}
		})
	}
}
