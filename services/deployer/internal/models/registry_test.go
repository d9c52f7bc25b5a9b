package models_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/models"
	"github.com/modelport/modelport/services/deployer/internal/models/modelstest"
)

// fakeStore is an in-memory models.Store.
type fakeStore struct {
	mu     sync.Mutex
	models map[string]models.Model
}

func (f *fakeStore) Create(_ context.Context, m models.Model) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.models[m.Owner+"."+m.Name]; ok {
		return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "exists"}
	}
	f.models[m.Owner+"."+m.Name] = m
	return nil
}

func (f *fakeStore) Get(_ context.Context, owner, name string) (models.Model, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.models[owner+"."+name]
	if !ok {
		return models.Model{}, errs.E(errs.NotFound, "model %s not found", name)
	}
	return m, nil
}

func (f *fakeStore) List(_ context.Context, owner string) ([]models.Model, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []models.Model
	for _, m := range f.models {
		if m.Owner == owner {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *fakeStore) All(_ context.Context) ([]models.Model, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []models.Model
	for _, m := range f.models {
		out = append(out, m)
	}
	return out, nil
}

func (f *fakeStore) Delete(_ context.Context, owner, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.models, owner+"."+name)
	return nil
}

// fakeInspector answers for the paths it knows; every other path is
// missing from the model store. It records the context lengths asked for.
type fakeInspector struct {
	files    map[string]models.Inspection
	adapters map[string]models.Inspection
	trained  map[string]int
	asked    []int
}

func (f *fakeInspector) Inspect(_ context.Context, path string, contextLength func(int) int) (models.Inspection, error) {
	insp, ok := f.files[path]
	if !ok {
		return models.Inspection{}, errs.E(errs.Invalid, "%s does not exist on the model store", path)
	}
	n := contextLength(f.trained[path])
	f.asked = append(f.asked, n)
	insp.ContextLength, insp.EstimatedContext = f.trained[path], n
	return insp, nil
}

func (f *fakeInspector) InspectAdapter(_ context.Context, path string) (models.Inspection, error) {
	insp, ok := f.adapters[path]
	if !ok {
		return models.Inspection{}, errs.E(errs.Invalid, "%s does not exist on the model store", path)
	}
	return insp, nil
}

type fakeServices []state.Service

func (f *fakeServices) List(context.Context) ([]state.Service, error) { return *f, nil }

var (
	alice = auth.Key{ID: "ka", OwnerID: "aaaaaaaaaaaa"}
	bob   = auth.Key{ID: "kb", OwnerID: "bbbbbbbbbbbb"}
	admin = auth.Key{ID: "kadmin", OwnerID: "cccccccccccc", Admin: true}
	// aliceCI may call one service only.
	aliceCI = auth.Key{ID: "kci", OwnerID: "aaaaaaaaaaaa", Services: []string{"s1"}}
)

const gib = 1 << 30

type env struct {
	reg      *models.Registry
	store    *fakeStore
	inspect  *fakeInspector
	services *fakeServices
}

func newEnv() *env {
	e := &env{
		store: &fakeStore{models: map[string]models.Model{}},
		inspect: &fakeInspector{
			files: map[string]models.Inspection{
				"/models/tiny.gguf": {Format: "gguf", Architecture: "llama", ModelName: "Tiny Llama", Parameters: 164160, Quantization: "F16",
					Layers: 2, TensorBytes: 328960, FileBytes: 334048, MemoryBytes: 22 << 20, GPUMemoryBytes: 44 << 20},
				"/models/llama-8b": {Format: "safetensors", Architecture: "LlamaForCausalLM", Parameters: 8e9, Quantization: "BF16",
					Layers: 32, TensorBytes: 16 * gib, FileBytes: 16 * gib, MemoryBytes: 19 * gib, GPUMemoryBytes: 19 * gib},
			},
			adapters: map[string]models.Inspection{"/models/lora.gguf": {Format: "gguf", TensorBytes: 16 << 20}},
			trained:  map[string]int{"/models/tiny.gguf": 2048, "/models/llama-8b": 131072},
		},
		services: &fakeServices{},
	}
	e.reg = models.NewRegistry(e.store, catalog.Default(), e.inspect, e.services)
	return e
}

func gpus(n int) *int { return &n }

func TestRegister(t *testing.T) {
	tests := []struct {
		name string
		req  models.Request
		want models.Model // compared on the fields set
	}{
		{"a GGUF file runs on ollama, on CPUs, at its trained context", models.Request{Name: "tiny", Source: "file:///models/tiny.gguf"},
			models.Model{DisplayName: "Tiny Llama", Format: "gguf", Engine: "ollama", Tasks: []string{"text-generation"}, GPUs: 0, ContextLength: 2048, MemoryBytes: 22 << 20}},
		{"or on llama.cpp when asked", models.Request{Name: "tiny", Source: "file:///models/tiny.gguf", Engine: "llama.cpp", DisplayName: " My tiny "},
			models.Model{DisplayName: "My tiny", Format: "gguf", Engine: "llama.cpp", GPUs: 0, MemoryBytes: 22 << 20}},
		{"with GPUs it needs GPU memory", models.Request{Name: "tiny", Source: "file:///models/tiny.gguf", GPUs: gpus(1)},
			models.Model{Engine: "ollama", GPUs: 1, GPUMemoryBytes: 44 << 20}},
		{"safetensors run on vllm with a GPU, at most 8K of context by default", models.Request{Name: "llama", Source: "file:///models/llama-8b/"},
			models.Model{Source: "file:///models/llama-8b", Format: "safetensors", Engine: "vllm", GPUs: 1, ContextLength: 8192, GPUMemoryBytes: 19 * gib}},
		{"a context length asked for is estimated for", models.Request{Name: "llama", Source: "file:///models/llama-8b", ContextLength: 32768},
			models.Model{GPUs: 1, ContextLength: 32768}},
		{"memory_gib overrides the estimate", models.Request{Name: "llama", Source: "file:///models/llama-8b", MemoryGiB: 40},
			models.Model{GPUs: 1, MemoryGiB: 40, GPUMemoryBytes: 40 * gib}},
		{"a Hugging Face repository is safetensors for vllm, not inspected", models.Request{Name: "qwen", Source: "hf://Qwen/Qwen2.5-7B-Instruct", Tasks: []string{"text-generation", "image-understanding"}},
			models.Model{Format: "safetensors", Engine: "vllm", GPUs: 1, Tasks: []string{"text-generation", "image-understanding"}}},
		{"a GGUF repository", models.Request{Name: "qwen-q4", Source: "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF", Engine: "llama.cpp"},
			models.Model{Format: "gguf", Engine: "llama.cpp", GPUs: 0}},
		{"a GGUF file in a repository, on the simulator", models.Request{Name: "qwen-q4", Source: "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF@main/qwen2.5-0.5b-instruct-q4_k_m.gguf", Engine: "simulator"},
			models.Model{Source: "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF@main/qwen2.5-0.5b-instruct-q4_k_m.gguf", Format: "gguf", Engine: "simulator", GPUs: 0}},
		{"an Ollama model", models.Request{Name: "llama32", Source: "ollama://llama3.2:1b"},
			models.Model{Source: "ollama://llama3.2:1b", Format: "ollama", Engine: "ollama", GPUs: 0}},
		{"safetensors on S3", models.Request{Name: "s3-llama", Source: "s3://weights/llama-8b/", Engine: "sglang", GPUs: gpus(2)},
			models.Model{Format: "safetensors", Engine: "sglang", GPUs: 2}},
		{"the simulator serves any task", models.Request{Name: "sim", Source: "file:///models/tiny.gguf", Engine: "simulator", Tasks: []string{"image-generation"}},
			models.Model{Engine: "simulator", Tasks: []string{"image-generation"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			got, err := e.reg.Register(context.Background(), alice, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tc.req.Name || got.Owner != alice.OwnerID || got.CreatedAt.IsZero() {
				t.Errorf("name %q, owner %q, created %v", got.Name, got.Owner, got.CreatedAt)
			}
			w := tc.want
			check := func(field string, ok bool, g, want any) {
				if !ok {
					t.Errorf("%s = %v, want %v", field, g, want)
				}
			}
			if w.DisplayName != "" {
				check("display_name", got.DisplayName == w.DisplayName, got.DisplayName, w.DisplayName)
			}
			if w.Source != "" {
				check("source", got.Source == w.Source, got.Source, w.Source)
			}
			if w.Format != "" {
				check("format", got.Format == w.Format, got.Format, w.Format)
			}
			if w.Engine != "" {
				check("engine", got.Engine == w.Engine, got.Engine, w.Engine)
			}
			if w.Tasks != nil {
				check("tasks", slices.Equal(got.Tasks, w.Tasks), got.Tasks, w.Tasks)
			}
			check("gpus", got.GPUs == w.GPUs, got.GPUs, w.GPUs)
			if w.ContextLength != 0 {
				check("context_length", got.ContextLength == w.ContextLength, got.ContextLength, w.ContextLength)
			}
			if w.MemoryGiB != 0 {
				check("memory_gib", got.MemoryGiB == w.MemoryGiB, got.MemoryGiB, w.MemoryGiB)
			}
			if w.MemoryBytes != 0 || w.GPUMemoryBytes != 0 {
				check("memory_bytes", got.MemoryBytes == w.MemoryBytes, got.MemoryBytes, w.MemoryBytes)
				check("gpu_memory_bytes", got.GPUMemoryBytes == w.GPUMemoryBytes, got.GPUMemoryBytes, w.GPUMemoryBytes)
			}
			if strings.HasPrefix(tc.req.Source, "file://") != (got.Inspection != nil) {
				t.Errorf("inspection %+v for %s", got.Inspection, tc.req.Source)
			}
			stored, err := e.store.Get(context.Background(), alice.OwnerID, tc.req.Name)
			if err != nil || stored.Source != got.Source {
				t.Errorf("stored %+v, %v", stored, err)
			}
		})
	}
}

// TestRegisterRejects: bad input is a clear invalid error naming the
// parameter, and nothing is stored.
func TestRegisterRejects(t *testing.T) {
	tests := []struct {
		name  string
		req   models.Request
		param string
		want  string
	}{
		{"bad name", models.Request{Name: "Tiny", Source: "file:///models/tiny.gguf"}, "name", "lowercase"},
		{"unknown scheme", models.Request{Name: "m", Source: "ftp://host/tiny.gguf"}, "source", `unknown source scheme "ftp"`},
		{"no scheme", models.Request{Name: "m", Source: "/models/tiny.gguf"}, "source", "write file:///models/tiny.gguf"},
		{"relative path", models.Request{Name: "m", Source: "file://models/tiny.gguf"}, "source", "not an absolute path"},
		{"missing file", models.Request{Name: "m", Source: "file:///models/nope.gguf"}, "source", "does not exist"},
		{"no source", models.Request{Name: "m"}, "source", "source is required"},
		{"unknown engine", models.Request{Name: "m", Source: "file:///models/tiny.gguf", Engine: "tgi"}, "engine", `unknown engine "tgi"`},
		{"GGUF on vllm", models.Request{Name: "m", Source: "file:///models/tiny.gguf", Engine: "vllm"}, "engine", "engine vllm cannot load gguf weights"},
		{"safetensors on ollama", models.Request{Name: "m", Source: "hf://org/repo", Engine: "ollama"}, "engine", "cannot load safetensors"},
		{"GGUF on S3", models.Request{Name: "m", Source: "s3://weights/tiny.gguf"}, "engine", "no engine reads gguf weights from s3://"},
		{"a task the engine cannot serve", models.Request{Name: "m", Source: "file:///models/tiny.gguf", Engine: "llama.cpp", Tasks: []string{"image-understanding"}}, "tasks", "engine llama.cpp cannot serve image-understanding"},
		{"image generation on a real engine", models.Request{Name: "m", Source: "hf://org/repo", Tasks: []string{"image-generation"}}, "tasks", "engine vllm cannot serve image-generation"},
		{"unknown task", models.Request{Name: "m", Source: "hf://org/repo", Tasks: []string{"poetry"}}, "tasks", `unknown task "poetry"`},
		{"a revision no engine takes yet", models.Request{Name: "m", Source: "hf://org/repo@v2"}, "source", "take a Hugging Face repository by name only"},
		{"a file in a repository no engine takes yet", models.Request{Name: "m", Source: "hf://org/repo-GGUF/m-Q4_K_M.gguf"}, "source", "(engine ollama)"},
		{"an adapter revision", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "hf://org/lora@v1"}, "adapter", "by name only"},
		{"adapter without a base", models.Request{Name: "m", Adapter: "file:///models/lora.gguf"}, "base", "a LoRA adapter needs the model it was trained on"},
		{"base without an adapter", models.Request{Name: "m", Base: "qwen2.5-7b-instruct"}, "adapter", "needs its LoRA adapter"},
		{"fine-tune with its own source", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "hf://org/lora", Source: "hf://org/repo"}, "source", "leave source out"},
		{"unknown base", models.Request{Name: "m", Base: "nope", Adapter: "hf://org/lora"}, "base", `unknown base model "nope"`},
		{"fine-tuned base", models.Request{Name: "m", Base: "qwen2.5-7b-support-lora", Adapter: "hf://org/lora"}, "base", "itself fine-tuned"},
		{"bad adapter", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "lora.gguf"}, "adapter", "has no scheme"},
		{"missing adapter file", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "file:///models/nope.gguf"}, "adapter", "does not exist"},
		{"fine-tune on another engine", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "hf://org/lora", Engine: "sglang"}, "engine", "base's engine, vllm"},
		{"a task its base does not serve", models.Request{Name: "m", Base: "qwen2.5-7b-instruct", Adapter: "hf://org/lora", Tasks: []string{"image-understanding"}}, "tasks", "does not serve image-understanding"},
		{"negative gpus", models.Request{Name: "m", Source: "hf://org/repo", GPUs: gpus(-1)}, "gpus", "between 0"},
		{"too many gpus", models.Request{Name: "m", Source: "hf://org/repo", GPUs: gpus(17)}, "gpus", "between 0"},
		{"negative context", models.Request{Name: "m", Source: "hf://org/repo", ContextLength: -1}, "context_length", "between 0"},
		{"negative memory", models.Request{Name: "m", Source: "hf://org/repo", MemoryGiB: -2}, "memory_gib", "between 0"},
		{"long display name", models.Request{Name: "m", Source: "hf://org/repo", DisplayName: strings.Repeat("x", 129)}, "display_name", "at most 128"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			_, err := e.reg.Register(context.Background(), alice, tc.req)
			ee, ok := errs.As(err)
			if !ok || ee.Kind != errs.Invalid || ee.Param != tc.param || !strings.Contains(ee.Msg, tc.want) {
				t.Fatalf("Register = %v, want an invalid %s error containing %q", err, tc.param, tc.want)
			}
			if all, _ := e.store.All(context.Background()); len(all) != 0 {
				t.Errorf("stored %+v after a refusal", all)
			}
		})
	}
}

func TestRegisterWithoutModelStore(t *testing.T) {
	e := newEnv()
	reg := models.NewRegistry(e.store, catalog.Default(), nil, e.services)
	_, err := reg.Register(context.Background(), alice, models.Request{Name: "tiny", Source: "file:///models/tiny.gguf"})
	if e, ok := errs.As(err); !ok || e.Param != "source" || !strings.Contains(e.Msg, "MODELPORT_MODEL_DIRS") {
		t.Errorf("a file source without a model store: %v", err)
	}
	if _, err := reg.Register(context.Background(), alice, models.Request{Name: "qwen", Source: "hf://Qwen/Qwen2.5-7B-Instruct"}); err != nil {
		t.Errorf("other sources need no model store: %v", err)
	}
}

func TestFineTune(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	if _, err := e.reg.Register(ctx, alice, models.Request{Name: "tiny", Source: "file:///models/tiny.gguf", ContextLength: 1024}); err != nil {
		t.Fatal(err)
	}
	ft, err := e.reg.Register(ctx, alice, models.Request{Name: "tiny-support", Base: "tiny", Adapter: "file:///models/lora.gguf"})
	if err != nil {
		t.Fatal(err)
	}
	if ft.Base != "tiny" || ft.Adapter != "file:///models/lora.gguf" || ft.Source != "file:///models/tiny.gguf" || ft.Engine != "ollama" ||
		ft.ContextLength != 1024 || !ft.FineTuned() || !slices.Equal(ft.Tasks, []string{"text-generation"}) {
		t.Errorf("fine-tuned: %+v", ft)
	}
	// The base's memory and the adapter's weights.
	if ft.MemoryBytes != 22<<20+16<<20 || ft.Inspection == nil || ft.Inspection.Adapter == nil || ft.Inspection.Adapter.TensorBytes != 16<<20 {
		t.Errorf("fine-tuned memory %d, inspection %+v", ft.MemoryBytes, ft.Inspection)
	}
	spec := ft.Spec()
	if spec != (events.ModelSpec{Name: "tiny-support", Owner: alice.OwnerID, Source: "file:///models/tiny.gguf", Engine: "ollama", Format: "gguf",
		ContextLength: 1024, GPUs: 0, MemoryBytes: 38 << 20, Adapter: "file:///models/lora.gguf"}) {
		t.Errorf("spec %+v", spec)
	}
	// The base's files are read again for the fine-tune's own context.
	if got := e.inspect.asked[len(e.inspect.asked)-1]; got != 1024 {
		t.Errorf("fine-tune estimated at %d tokens, want its base's 1024", got)
	}
	if _, err := e.reg.Register(ctx, alice, models.Request{Name: "tiny-long", Base: "tiny", Adapter: "file:///models/lora.gguf", ContextLength: 2048}); err != nil {
		t.Fatal(err)
	}
	if got := e.inspect.asked[len(e.inspect.asked)-1]; got != 2048 {
		t.Errorf("fine-tune estimated at %d tokens, want its own 2048", got)
	}
	// On a catalog model, with an adapter that is not inspected.
	cat, err := e.reg.Register(ctx, alice, models.Request{Name: "qwen-legal", Base: "qwen2.5-7b-instruct", Adapter: "hf://acme/qwen-legal-lora"})
	if err != nil {
		t.Fatal(err)
	}
	if cat.Source != "Qwen/Qwen2.5-7B-Instruct" || cat.Engine != "vllm" || cat.GPUs != 1 || cat.ContextLength != 32768 || cat.Inspection != nil {
		t.Errorf("fine-tuned catalog model: %+v", cat)
	}
	// Bob cannot build on Alice's model: he cannot see it.
	if _, err := e.reg.Register(ctx, bob, models.Request{Name: "mine", Base: "tiny", Adapter: "file:///models/lora.gguf"}); !strings.Contains(err.Error(), "unknown base model") {
		t.Errorf("bob on alice's model: %v", err)
	}
}

// TestVisibility: an owner sees the catalog, the public models and its
// own; never another owner's, which is not found as with services.
func TestVisibility(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	mustRegister := func(k auth.Key, req models.Request) {
		t.Helper()
		if _, err := e.reg.Register(ctx, k, req); err != nil {
			t.Fatal(err)
		}
	}
	mustRegister(alice, models.Request{Name: "tiny", Source: "file:///models/tiny.gguf"})
	mustRegister(alice, models.Request{Name: "a-qwen", Source: "hf://Qwen/Qwen2.5-7B-Instruct"})
	mustRegister(bob, models.Request{Name: "bobs", Source: "ollama://llama3.2:1b"})
	mustRegister(admin, models.Request{Name: "shared", Source: "ollama://qwen2.5:0.5b", Public: true})

	names := func(k auth.Key) []string {
		list, err := e.reg.List(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range list {
			out = append(out, m.Owner+":"+m.Name)
		}
		return out
	}
	var cat []string
	for _, m := range catalog.Default().Models() {
		cat = append(cat, "catalog:"+m.Name)
	}
	if got, want := names(alice), append(slices.Clone(cat), "public:shared", alice.OwnerID+":a-qwen", alice.OwnerID+":tiny"); !slices.Equal(got, want) {
		t.Errorf("alice sees %v, want %v", got, want)
	}
	if got, want := names(bob), append(slices.Clone(cat), "public:shared", bob.OwnerID+":bobs"); !slices.Equal(got, want) {
		t.Errorf("bob sees %v, want %v", got, want)
	}
	if got, want := names(aliceCI), names(alice); !slices.Equal(got, want) {
		t.Errorf("a restricted key sees %v, want its owner's %v", got, want)
	}
	for _, tc := range []struct {
		key   auth.Key
		name  string
		owner string // "" when not found
	}{
		{alice, "tiny", alice.OwnerID}, {bob, "tiny", ""}, {admin, "tiny", ""},
		{bob, "shared", "public"}, {alice, "qwen2.5-7b-instruct", "catalog"}, {alice, "nope", ""}, {alice, "Bad.Name", ""},
	} {
		m, err := e.reg.Get(ctx, tc.key, tc.name)
		switch {
		case tc.owner == "" && errs.KindOf(err) != errs.NotFound:
			t.Errorf("%s gets %s: %+v, %v; want not found", tc.key.ID, tc.name, m, err)
		case tc.owner != "" && (err != nil || m.Owner != tc.owner):
			t.Errorf("%s gets %s: owner %q, %v; want %q", tc.key.ID, tc.name, m.Owner, err, tc.owner)
		}
	}
	cm, _ := e.reg.Get(ctx, alice, "qwen2.5-0.5b-instruct-gguf")
	if cm.Format != "" || cm.Engine != "llama.cpp" || cm.CreatedAt.IsZero() == false {
		t.Errorf("catalog model as the registry shows it: %+v", cm)
	}
}

// TestNames: a name means one model to whoever may see it.
func TestNames(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	reg := func(k auth.Key, name string, public bool) error {
		_, err := e.reg.Register(ctx, k, models.Request{Name: name, Source: "ollama://qwen2.5:0.5b", Public: public})
		return err
	}
	if err := reg(alice, "mine", false); err != nil {
		t.Fatal(err)
	}
	if err := reg(bob, "mine", false); err != nil {
		t.Errorf("owners' names are their own: %v", err)
	}
	if err := reg(admin, "everyone", true); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key    auth.Key
		name   string
		public bool
		want   string
	}{
		{alice, "mine", false, "you already have a model named mine"},
		{alice, "stable-diffusion-xl", false, "the catalog has a model named"},
		{alice, "qwen2.5-7b-instruct", false, "name must be 1-63 lowercase letters"},
		{alice, "everyone", false, "a public model is named everyone"},
		{admin, "mine", true, "an owner's model is named mine"},
		{admin, "everyone", true, "a public model named everyone already exists"},
		{admin, "stable-diffusion-xl", true, "the catalog has"},
	} {
		err := reg(tc.key, tc.name, tc.public)
		if e, ok := errs.As(err); !ok || (e.Kind != errs.Conflict && e.Kind != errs.Invalid) || e.Param != "name" || !strings.Contains(e.Msg, tc.want) {
			t.Errorf("%s registers %s: %v, want a conflict containing %q", tc.key.ID, tc.name, err, tc.want)
		}
	}
	if err := reg(alice, "x", true); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("an owner registering for everyone: %v, want forbidden", err)
	}
	if err := reg(aliceCI, "y", false); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("a restricted key registering: %v, want forbidden", err)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv()
	ctx := context.Background()
	for _, r := range []struct {
		k   auth.Key
		req models.Request
	}{
		{alice, models.Request{Name: "tiny", Source: "file:///models/tiny.gguf"}},
		{alice, models.Request{Name: "tiny-lora", Base: "tiny", Adapter: "file:///models/lora.gguf"}},
		{alice, models.Request{Name: "spare", Source: "ollama://qwen2.5:0.5b"}},
		{admin, models.Request{Name: "shared", Source: "ollama://qwen2.5:0.5b", Public: true}},
	} {
		if _, err := e.reg.Register(ctx, r.k, r.req); err != nil {
			t.Fatal(err)
		}
	}
	tiny, _ := e.reg.Get(ctx, alice, "tiny")
	shared, _ := e.reg.Get(ctx, bob, "shared")
	spec, sharedSpec := tiny.Spec(), shared.Spec()
	*e.services = []state.Service{
		{ID: "s1", OwnerID: alice.OwnerID, AccessName: "u-aaaaaaaaaaaa/chat", BaseModel: "tiny", Status: state.StatusRunning, Model: &spec},
		{ID: "s2", OwnerID: alice.OwnerID, AccessName: "u-aaaaaaaaaaaa/old", BaseModel: "tiny", Status: state.StatusDeleted, Model: &spec},
		{ID: "s3", OwnerID: bob.OwnerID, AccessName: "u-bbbbbbbbbbbb/bot", BaseModel: "shared", Status: state.StatusDeleting, Model: &sharedSpec},
		// A service from before models were registered used the catalog.
		{ID: "s4", OwnerID: alice.OwnerID, AccessName: "u-aaaaaaaaaaaa/legacy", BaseModel: "spare", Status: state.StatusRunning},
	}

	for _, tc := range []struct {
		key  auth.Key
		name string
		kind errs.Kind
		want string
	}{
		{alice, "tiny", errs.Conflict, "model tiny is in use by fine-tuned model tiny-lora, service u-aaaaaaaaaaaa/chat; delete those first"},
		{admin, "shared", errs.Conflict, "in use by service u-bbbbbbbbbbbb/bot"},
		{bob, "shared", errs.Forbidden, "only admins delete it"},
		{bob, "tiny", errs.NotFound, "not found"},
		{alice, "qwen2.5-7b-instruct", errs.Forbidden, "operator's catalog"},
		{aliceCI, "spare", errs.Forbidden, "restricted"},
	} {
		_, err := e.reg.Delete(ctx, tc.key, tc.name)
		if errs.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s deletes %s: %v, want %s containing %q", tc.key.ID, tc.name, err, tc.kind, tc.want)
		}
	}
	if _, err := e.reg.Delete(ctx, alice, "spare"); err != nil {
		t.Errorf("an unused model: %v", err)
	}
	if _, err := e.reg.Get(ctx, alice, "spare"); errs.KindOf(err) != errs.NotFound {
		t.Errorf("after delete: %v", err)
	}
	if _, err := e.reg.Delete(ctx, alice, "tiny-lora"); err != nil {
		t.Fatal(err)
	}
	(*e.services)[0].Status = state.StatusDeleted
	if _, err := e.reg.Delete(ctx, alice, "tiny"); err != nil {
		t.Errorf("tiny once nothing uses it: %v", err)
	}
}

func TestFakeStoreKeepsTheContract(t *testing.T) {
	modelstest.StoreContract(t, &fakeStore{models: map[string]models.Model{}})
}
