// Package catalog lists the base models Modelport can deploy: their tasks,
// the engine that serves them, and their resources. The default list is
// embedded; an operator can replace it with a file of the same shape.
package catalog

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"slices"
)

//go:embed models.json
var defaultModels []byte

// Model is one deployable model: a base model, or a fine-tuned one that
// names its base and a LoRA adapter and takes everything else from it.
type Model struct {
	Name           string   `json:"name"`
	DisplayName    string   `json:"display_name"`
	Tasks          []string `json:"tasks"`
	Engine         string   `json:"engine"` // vllm, llama.cpp, sglang, ollama or simulator, where the hardware allows
	Source         string   `json:"source"` // repository ID or path of the weights
	ContextLength  int      `json:"context_length"`
	GPUs           int      `json:"gpus"`                      // per instance; 0 runs on CPU
	TensorParallel int      `json:"tensor_parallel,omitempty"` // default: GPUs
	MemoryGiB      int      `json:"memory_gib,omitempty"`      // per instance, for placement
	Base           string   `json:"base,omitempty"`            // fine-tuned: the base model's name
	Adapter        string   `json:"adapter,omitempty"`         // fine-tuned: the LoRA adapter's path or repository ID
	// Dimensions is the length of an embedding model's vectors.
	Dimensions int `json:"dimensions,omitempty"`
}

// FineTuned reports whether the model is a LoRA adapter on a base model.
func (m Model) FineTuned() bool { return m.Base != "" }

// Supports reports whether the model can serve task.
func (m Model) Supports(task string) bool { return slices.Contains(m.Tasks, task) }

// Catalog is an immutable list of models, safe for concurrent use.
type Catalog struct {
	models []Model
}

// Default returns the embedded catalog.
func Default() *Catalog {
	c, err := Parse(defaultModels)
	if err != nil {
		panic(err) // the embedded file is checked by tests
	}
	return c
}

// Load returns the catalog in path, or the embedded one when path is empty.
func Load(path string) (*Catalog, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	return Parse(b)
}

// Parse decodes and checks a catalog file.
func Parse(b []byte) (*Catalog, error) {
	var models []Model
	if err := json.Unmarshal(b, &models); err != nil {
		return nil, fmt.Errorf("parse catalog: %w", err)
	}
	byName := map[string]Model{}
	for _, m := range models {
		if m.Name == "" {
			return nil, fmt.Errorf("catalog entry without a name")
		}
		if _, ok := byName[m.Name]; ok {
			return nil, fmt.Errorf("catalog entry %q appears twice", m.Name)
		}
		byName[m.Name] = m
	}
	for i, m := range models {
		if m.FineTuned() {
			base, ok := byName[m.Base]
			switch {
			case !ok:
				return nil, fmt.Errorf("catalog entry %q: base model %q is not in the catalog", m.Name, m.Base)
			case base.FineTuned():
				return nil, fmt.Errorf("catalog entry %q: base model %q is itself fine-tuned", m.Name, m.Base)
			case m.Adapter == "":
				return nil, fmt.Errorf("catalog entry %q: a fine-tuned model needs an adapter", m.Name)
			}
			models[i] = inherit(m, base)
			m = models[i]
		}
		if len(m.Tasks) == 0 || m.Engine == "" || m.Source == "" {
			return nil, fmt.Errorf("catalog entry %q: tasks, engine and source are required", m.Name)
		}
		for _, t := range m.Tasks {
			if !slices.Contains(Tasks, t) {
				return nil, fmt.Errorf("catalog entry %q: unknown task %q", m.Name, t)
			}
		}
		if !slices.Contains(Engines, m.Engine) {
			return nil, fmt.Errorf("catalog entry %q: unknown engine %q", m.Name, m.Engine)
		}
		if m.GPUs < 0 || m.TensorParallel < 0 || m.ContextLength < 0 || m.Dimensions < 0 {
			return nil, fmt.Errorf("catalog entry %q: gpus, tensor_parallel, context_length and dimensions cannot be negative", m.Name)
		}
	}
	return &Catalog{models: models}, nil
}

// Tasks are the tasks a model can serve.
var Tasks = []string{"text-generation", "image-understanding", "image-generation", "embedding"}

// Engines are the engines the inference-worker can run.
var Engines = []string{"vllm", "llama.cpp", "sglang", "ollama", "simulator"}

// inherit fills what a fine-tuned entry leaves out from its base: the
// weights are always the base's; the adapter is the entry's own.
func inherit(m, base Model) Model {
	m.Source = base.Source
	if m.DisplayName == "" {
		m.DisplayName = base.DisplayName + " (" + m.Name + ")"
	}
	if len(m.Tasks) == 0 {
		m.Tasks = base.Tasks
	}
	if m.Engine == "" {
		m.Engine = base.Engine
	}
	if m.ContextLength == 0 {
		m.ContextLength = base.ContextLength
	}
	if m.GPUs == 0 {
		m.GPUs = base.GPUs
	}
	if m.TensorParallel == 0 {
		m.TensorParallel = base.TensorParallel
	}
	if m.MemoryGiB == 0 {
		m.MemoryGiB = base.MemoryGiB
	}
	if m.Dimensions == 0 {
		m.Dimensions = base.Dimensions
	}
	return m
}

// Models returns a copy of the list.
func (c *Catalog) Models() []Model { return slices.Clone(c.models) }

// Lookup returns the model named name.
func (c *Catalog) Lookup(name string) (Model, bool) {
	for _, m := range c.models {
		if m.Name == name {
			return m, true
		}
	}
	return Model{}, false
}
