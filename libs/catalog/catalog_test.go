package catalog

import (
	"strings"
	"testing"
)

func TestDefaultCatalog(t *testing.T) {
	c := Default()
	if len(c.Models()) < 5 {
		t.Fatalf("default catalog has %d models", len(c.Models()))
	}
	ft, ok := c.Lookup("qwen2.5-7b-support-lora")
	if !ok {
		t.Fatal("fine-tuned entry missing")
	}
	base, _ := c.Lookup("qwen2.5-7b-instruct")
	if !ft.FineTuned() || ft.Source != base.Source || ft.Engine != base.Engine || ft.GPUs != base.GPUs || ft.ContextLength != base.ContextLength {
		t.Errorf("fine-tuned entry does not inherit from its base: %+v vs %+v", ft, base)
	}
	if got, want := ft.Adapter, "/models/adapters/qwen2.5-7b-support"; got != want {
		t.Errorf("adapter = %q, want %q", got, want)
	}
	if !ft.Supports("text-generation") || ft.Supports("image-generation") {
		t.Errorf("fine-tuned tasks = %v", ft.Tasks)
	}
}

func TestParseRejects(t *testing.T) {
	const base = `{"name":"b","tasks":["text-generation"],"engine":"vllm","source":"org/b"}`
	tests := []struct {
		name, json, want string
	}{
		{"not JSON", `{`, "parse catalog"},
		{"no name", `[{"tasks":["text-generation"],"engine":"vllm","source":"x"}]`, "without a name"},
		{"twice", `[` + base + `,` + base + `]`, "appears twice"},
		{"no tasks", `[{"name":"a","engine":"vllm","source":"x"}]`, "required"},
		{"no source", `[{"name":"a","tasks":["text-generation"],"engine":"vllm"}]`, "required"},
		{"unknown task", `[{"name":"a","tasks":["poetry"],"engine":"vllm","source":"x"}]`, "unknown task"},
		{"unknown engine", `[{"name":"a","tasks":["text-generation"],"engine":"tgi","source":"x"}]`, "unknown engine"},
		{"negative gpus", `[{"name":"a","tasks":["text-generation"],"engine":"vllm","source":"x","gpus":-1}]`, "negative"},
		{"unknown base", `[{"name":"ft","base":"nope","adapter":"/a"}]`, "not in the catalog"},
		{"no adapter", `[` + base + `,{"name":"ft","base":"b"}]`, "needs an adapter"},
		{"fine-tuned base", `[` + base + `,{"name":"ft","base":"b","adapter":"/a"},{"name":"ft2","base":"ft","adapter":"/b"}]`, "itself fine-tuned"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFineTunedKeepsItsOwnSettings(t *testing.T) {
	c, err := Parse([]byte(`[{"name":"b","tasks":["text-generation","image-understanding"],"engine":"vllm","source":"org/b","gpus":2,"context_length":8192},
		{"name":"ft","base":"b","adapter":"org/ft-lora","tasks":["text-generation"],"context_length":4096}]`))
	if err != nil {
		t.Fatal(err)
	}
	ft, _ := c.Lookup("ft")
	if ft.ContextLength != 4096 || ft.GPUs != 2 || ft.Source != "org/b" || len(ft.Tasks) != 1 || ft.Adapter != "org/ft-lora" {
		t.Errorf("ft = %+v", ft)
	}
}
