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

// Model is one deployable base model.
type Model struct {
	Name          string   `json:"name"`
	DisplayName   string   `json:"display_name"`
	Tasks         []string `json:"tasks"`
	Engine        string   `json:"engine"` // the engine it runs on where the hardware allows
	Source        string   `json:"source"` // repository ID or path of the weights
	ContextLength int      `json:"context_length"`
	GPUs          int      `json:"gpus"`
}

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
	seen := map[string]bool{}
	for _, m := range models {
		if m.Name == "" || len(m.Tasks) == 0 || m.Engine == "" {
			return nil, fmt.Errorf("catalog entry %q: name, tasks and engine are required", m.Name)
		}
		if seen[m.Name] {
			return nil, fmt.Errorf("catalog entry %q appears twice", m.Name)
		}
		seen[m.Name] = true
	}
	return &Catalog{models: models}, nil
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
