package worker_test

import (
	"context"
	"testing"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

// TestPlacementWithModel: a placement that carries its model is completed
// by the model function, with the model it carries; one without goes
// through the catalog's spec function as before.
func TestPlacementWithModel(t *testing.T) {
	var gotModel events.ModelSpec
	f := newFixture(t, 2,
		worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) { s.Source = "from the catalog"; return s, nil }),
		worker.WithModels(func(s engine.Spec, m events.ModelSpec) (engine.Spec, error) {
			gotModel = m
			s.Source, s.ContextLength = "/models/tiny.gguf", m.ContextLength
			return s, nil
		}))
	tiny := events.ModelSpec{Name: "tiny", Owner: "a11ce0000001", Source: "file:///models/tiny.gguf", Engine: "ollama", ContextLength: 2048, MemoryBytes: 1 << 20}
	p := placement("i-1")
	p.BaseModel, p.Engine, p.Model = "tiny", "ollama", &tiny
	if err := f.start(p); err != nil {
		t.Fatal(err)
	}
	if err := f.start(placement("i-2")); err != nil {
		t.Fatal(err)
	}
	specs := f.eng.startedSpecs()
	if len(specs) != 2 {
		t.Fatalf("%d instances started, want 2", len(specs))
	}
	if gotModel != tiny {
		t.Errorf("model function got %+v, want %+v", gotModel, tiny)
	}
	if specs[0].Source != "/models/tiny.gguf" || specs[0].ContextLength != 2048 || specs[0].BaseModel != "tiny" || specs[0].ServedName != p.AccessName {
		t.Errorf("registered model's spec %+v", specs[0])
	}
	if specs[1].Source != "from the catalog" {
		t.Errorf("catalog model's spec %+v", specs[1])
	}
}

// TestHeartbeatAdvertisesMemory: the scaler places by the memory a worker
// advertises.
func TestHeartbeatAdvertisesMemory(t *testing.T) {
	f := newFixture(t, 2, worker.WithMemory(24<<30, 80<<30))
	if err := f.w.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := f.st.beats[len(f.st.beats)-1]
	if b.MemoryBytes != 24<<30 || b.GPUMemoryBytes != 80<<30 {
		t.Errorf("beat %+v, want 24 GiB of memory and 80 GiB per GPU", b)
	}
}
