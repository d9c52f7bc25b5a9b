// Package models is the deployer's model registry: the models owners
// register beside the operator's catalog ("bring your own model"), their
// sources checked and, where the files are on the model store, inspected
// before anything is placed; and the rules for who sees, deploys and
// deletes which. It reads and writes nothing itself: a Store keeps the
// models, an Inspector reads model files, and Services lists the services
// that use them.
package models

import (
	"regexp"
	"slices"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
)

// Owners that are not an owner ID.
const (
	// OwnerPublic owns the models an admin registered for everyone.
	OwnerPublic = "public"
	// OwnerCatalog owns the operator's catalog, which the API only reads.
	OwnerCatalog = "catalog"
)

// GiB is a gibibyte, the unit of memory_gib.
const GiB = 1 << 30

// NamePattern is the rule for model names, the same as for service names
// and owner handles: 1-63 lowercase letters, digits or hyphens, starting
// and ending with a letter or digit.
var NamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Model is a deployable model as the API shows it: one of the operator's
// catalog, one an admin registered for everyone, or one an owner
// registered for its own services.
type Model struct {
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	// Owner is the owner ID of an owner's model, OwnerPublic or OwnerCatalog.
	Owner string `json:"owner"`
	// Source is where the weights are: a source URI for a registered
	// model (catalog.ParseSource), a repository ID or path for a catalog
	// one. A fine-tuned model's is its base's.
	Source         string   `json:"source"`
	Format         string   `json:"format,omitempty"` // gguf, safetensors or ollama, where known
	Engine         string   `json:"engine"`
	Tasks          []string `json:"tasks"`
	GPUs           int      `json:"gpus"`
	TensorParallel int      `json:"tensor_parallel,omitempty"`
	// ContextLength is the longest sequence an instance takes, in tokens;
	// 0: the engine's default.
	ContextLength int `json:"context_length"`
	// MemoryGiB is the memory an instance needs as its registrant or the
	// catalog gave it; it overrides the inspection's estimate.
	MemoryGiB int    `json:"memory_gib,omitempty"`
	Base      string `json:"base,omitempty"`    // fine-tuned: the base model's name
	Adapter   string `json:"adapter,omitempty"` // fine-tuned: the LoRA adapter's source
	// MemoryBytes is what the scaler reserves on a worker for an instance
	// of a model that runs on CPUs, and GPUMemoryBytes what it needs over
	// all its GPUs otherwise: MemoryGiB where given, else the
	// inspection's estimate; 0 when neither is known.
	MemoryBytes    int64 `json:"memory_bytes,omitempty"`
	GPUMemoryBytes int64 `json:"gpu_memory_bytes,omitempty"`
	// Inspection is what reading the files found, for a model on the
	// model store.
	Inspection *Inspection `json:"inspection,omitempty"`
	// CreatedAt is when it was registered; zero for catalog models.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// FineTuned reports whether the model is a LoRA adapter on a base model.
func (m Model) FineTuned() bool { return m.Base != "" }

// Supports reports whether the model can serve task.
func (m Model) Supports(task string) bool { return slices.Contains(m.Tasks, task) }

// Spec is what travels with a service of the model to its workers and
// what the scaler places it by.
func (m Model) Spec() events.ModelSpec {
	return events.ModelSpec{
		Name: m.Name, Owner: m.Owner, Source: m.Source, Engine: m.Engine, Format: m.Format,
		ContextLength: m.ContextLength, GPUs: m.GPUs,
		MemoryBytes: m.MemoryBytes, GPUMemoryBytes: m.GPUMemoryBytes, Adapter: m.Adapter,
	}
}

// Inspection is what a model's files say, read before anything runs.
type Inspection struct {
	// Format is gguf or safetensors; empty when only a fine-tuned model's
	// adapter was read.
	Format string `json:"format,omitempty"`
	// Architecture is the model's architecture as its files name it, such
	// as llama (GGUF) or LlamaForCausalLM (config.json).
	Architecture string `json:"architecture,omitempty"`
	// ModelName is the name the files give the model, if any.
	ModelName string `json:"model_name,omitempty"`
	// Parameters counts the weights.
	Parameters int64 `json:"parameters,omitempty"`
	// Quantization is the type most weights have, such as Q4_K_M, F16 or BF16.
	Quantization string `json:"quantization,omitempty"`
	// ContextLength is the context the model was trained for, in tokens.
	ContextLength int `json:"context_length,omitempty"`
	// Layers is the number of transformer blocks.
	Layers int `json:"layers,omitempty"`
	// TensorBytes is the size of the weights; FileBytes that of the files.
	TensorBytes int64 `json:"tensor_bytes"`
	FileBytes   int64 `json:"file_bytes"`
	// EstimatedContext is the context length the estimates are for.
	EstimatedContext int `json:"estimated_context,omitempty"`
	// MemoryBytes estimates the memory an instance needs on CPUs, and
	// GPUMemoryBytes the GPU memory with every layer on GPUs, weights, KV
	// cache at EstimatedContext and compute buffers included.
	MemoryBytes    int64 `json:"memory_bytes"`
	GPUMemoryBytes int64 `json:"gpu_memory_bytes"`
	// Adapter is what a fine-tuned model's LoRA adapter's files say, when
	// they are on the model store too.
	Adapter *Inspection `json:"adapter,omitempty"`
}

// Request is what an owner asks to register. Base and Adapter make a
// fine-tuned model; Public (admins only) registers it for everyone.
type Request struct {
	Name          string   `json:"name"`
	DisplayName   string   `json:"display_name,omitempty"`
	Source        string   `json:"source,omitempty"`
	Engine        string   `json:"engine,omitempty"`
	Tasks         []string `json:"tasks,omitempty"`
	GPUs          *int     `json:"gpus,omitempty"`
	ContextLength int      `json:"context_length,omitempty"`
	MemoryGiB     int      `json:"memory_gib,omitempty"`
	Base          string   `json:"base,omitempty"`
	Adapter       string   `json:"adapter,omitempty"`
	Public        bool     `json:"public,omitempty"`
}

// FromCatalog is a catalog model as the registry shows it.
func FromCatalog(c catalog.Model) Model {
	m := Model{
		Name: c.Name, DisplayName: c.DisplayName, Owner: OwnerCatalog, Source: c.Source, Engine: c.Engine,
		Tasks: slices.Clone(c.Tasks), GPUs: c.GPUs, TensorParallel: c.TensorParallel, ContextLength: c.ContextLength,
		MemoryGiB: c.MemoryGiB, Base: c.Base, Adapter: c.Adapter,
	}
	if src, err := catalog.ParseSource(c.Source); err == nil {
		m.Format = src.Format()
	}
	m.MemoryBytes, m.GPUMemoryBytes = need(m.GPUs, int64(c.MemoryGiB)*GiB)
	return m
}

// need splits what an instance needs by where it runs: memory on the
// worker for a CPU model, GPU memory for a GPU model.
func need(gpus int, bytes int64) (memory, gpuMemory int64) {
	if gpus > 0 {
		return 0, bytes
	}
	return bytes, 0
}
