package scale_test

import (
	"context"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

const gib = 1 << 30

// modelService is a service of a registered model that needs memory GiB
// per instance on CPUs, or over gpus GPUs.
func modelService(id string, instances int, gpus int, memory int64) state.Service {
	s := service(id, instances)
	s.BaseModel, s.Engine = "tiny", "ollama"
	s.Model = &events.ModelSpec{Name: "tiny", Owner: "a11ce0000001", Source: "file:///models/tiny.gguf", Engine: "ollama", GPUs: gpus}
	if gpus == 0 {
		s.Model.MemoryBytes = memory * gib
	} else {
		s.Model.GPUMemoryBytes = memory * gib
	}
	return s
}

// memWorker is a worker that runs Ollama on CPUs with memory GiB for its
// instances.
func memWorker(id string, capacity int, memory int64) state.Worker {
	w := worker(id, capacity)
	w.MemoryBytes, w.Engines = memory*gib, []string{"ollama"}
	return w
}

// TestPlacementFitsMemory: an instance is placed only where its memory
// fits, counting what the worker's placements already hold; the
// placement carries the model to the worker.
func TestPlacementFitsMemory(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	small, big := memWorker("small", 8, 3), memWorker("big", 8, 24)
	st.workers = []state.Worker{small, big}
	svc := modelService("s1", 3, 0, 10)
	st.services[svc.ID] = svc
	s := scale.New(st, pub, quiet)

	err := s.ReconcileService(context.Background(), svc.ID)
	// Two 10 GiB instances fit on the 24 GiB worker, none on the 3 GiB one.
	if errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("ReconcileService = %v, want unavailable for the third instance", err)
	}
	if got := st.perWorker(); got["big"] != 2 || got["small"] != 0 {
		t.Errorf("placements per worker %v, want 2 on big and none on small", got)
	}
	for _, p := range pub.placed() {
		if p.Model == nil || *p.Model != *svc.Model {
			t.Errorf("placement event carries model %+v, want %+v", p.Model, svc.Model)
		}
	}
	for _, p := range st.placed(svc.ID) {
		if p.Model == nil || p.Model.MemoryBytes != 10*gib {
			t.Errorf("placement record carries model %+v", p.Model)
		}
	}
	failed := pub.placementFailures()
	if len(failed) != 1 {
		t.Fatalf("placement failures %+v, want one", failed)
	}
	for _, want := range []string{"no worker has the memory", "an instance needs 10.0 GiB of memory", "small: 3.0 GiB free of 3.0 GiB", "big: 4.0 GiB free of 24.0 GiB"} {
		if !strings.Contains(failed[0].Reason, want) {
			t.Errorf("reason %q lacks %q", failed[0].Reason, want)
		}
	}
	if failed[0].Wanted != 3 || failed[0].Placed != 2 {
		t.Errorf("failure says %d of %d placed, want 2 of 3", failed[0].Placed, failed[0].Wanted)
	}

	// A service that needs less still goes where it fits: 4 GiB left on big.
	other := modelService("s2", 1, 0, 4)
	st.services[other.ID] = other
	if err := s.ReconcileService(context.Background(), other.ID); err != nil {
		t.Fatal(err)
	}
	if ps := st.placed(other.ID); len(ps) != 1 || ps[0].WorkerID != "big" {
		t.Errorf("s2 placed %+v, want on big", ps)
	}
}

// TestPlacementFitsUnknownsAnywhere: what the scaler cannot know it does
// not check: a service without a model spec, a model without an estimate,
// a worker that does not advertise its memory (nor, here, run Ollama: it
// would run the model on the simulator).
func TestPlacementFitsUnknownsAnywhere(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.workers = []state.Worker{memWorker("w1", 8, 1), worker("old", 8)}
	for _, svc := range []state.Service{service("catalog", 2), modelService("unknown", 2, 0, 0)} {
		st.services[svc.ID] = svc
	}
	huge := modelService("huge", 2, 0, 100)
	st.services[huge.ID] = huge
	if err := scale.New(st, pub, quiet).ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"catalog", "unknown"} {
		if got := len(st.placed(id)); got != 2 {
			t.Errorf("%s: %d placed, want 2", id, got)
		}
	}
	for _, p := range st.placed(huge.ID) {
		if p.WorkerID != "old" {
			t.Errorf("a 100 GiB instance went to %s, which advertises 1 GiB", p.WorkerID)
		}
	}
}

// TestPlacementFitsGPUMemory: a GPU model needs GPU memory per GPU on a
// worker with the GPUs; a worker without GPUs takes it, and runs it on
// the simulator, as for any GPU model.
func TestPlacementFitsGPUMemory(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	gpu := worker("gpu", 8)
	gpu.GPUs, gpu.FreeGPUs, gpu.GPUMemoryBytes, gpu.Engines = 2, 2, 24*gib, []string{"ollama"}
	st.workers = []state.Worker{gpu}
	// 60 GiB over 2 GPUs is 30 per GPU: more than 24.
	svc := modelService("s1", 1, 2, 60)
	st.services[svc.ID] = svc
	s := scale.New(st, pub, quiet)
	if err := s.ReconcileService(context.Background(), svc.ID); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("ReconcileService = %v, want unavailable", err)
	}
	failed := pub.placementFailures()
	if len(failed) != 1 || !strings.Contains(failed[0].Reason, "an instance needs 60.0 GiB of GPU memory over 2 GPU(s) (gpu: 24.0 GiB per GPU)") {
		t.Errorf("placement failures %+v", failed)
	}
	fits := modelService("s2", 1, 2, 40)
	st.services[fits.ID] = fits
	if err := s.ReconcileService(context.Background(), fits.ID); err != nil || len(st.placed(fits.ID)) != 1 {
		t.Errorf("20 GiB per GPU: %v, placed %d", err, len(st.placed(fits.ID)))
	}
	st.workers = append(st.workers, worker("cpu", 8))
	if err := s.ReconcileService(context.Background(), svc.ID); err != nil || len(st.placed(svc.ID)) != 1 || st.placed(svc.ID)[0].WorkerID != "cpu" {
		t.Errorf("a worker without GPUs takes it: %v, %+v", err, st.placed(svc.ID))
	}
}

// TestPlacementCountsHeldMemory: the memory a worker's heartbeat says its
// instances hold is not free; a worker that would run the model on the
// simulator (it does not run the model's engine) reserves none of it, but
// must have the model's memory in all; and a GPU model needs the GPUs as
// well as their memory.
func TestPlacementCountsHeldMemory(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	busy := memWorker("busy", 8, 16)
	busy.Instances = []string{"other"}
	busy.Held = []state.Held{{InstanceID: "other", ServiceID: "s0", MemoryBytes: 12 * gib}}
	st.workers = []state.Worker{busy}
	svc := modelService("s1", 1, 0, 8)
	st.services[svc.ID] = svc
	s := scale.New(st, pub, quiet)
	if err := s.ReconcileService(context.Background(), svc.ID); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("ReconcileService = %v, want unavailable: 4 of 16 GiB free", err)
	}
	if failed := pub.placementFailures(); len(failed) != 1 || !strings.Contains(failed[0].Reason, "busy: 4.0 GiB free of 16.0 GiB") {
		t.Errorf("placement failures %+v", failed)
	}

	small := worker("small", 8)
	small.MemoryBytes = gib // runs no Ollama, but could not hold the model
	st.workers = append(st.workers, small)
	if err := s.ReconcileService(context.Background(), svc.ID); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("ReconcileService = %v, want unavailable: 8 GiB fit neither worker", err)
	}
	if failed := pub.placementFailures(); !strings.Contains(failed[len(failed)-1].Reason, "small: 1.0 GiB free of 1.0 GiB") {
		t.Errorf("reason %q, want the small worker's memory", failed[len(failed)-1].Reason)
	}
	// Simulated instances hold none of its memory: it has the 8 GiB.
	sim := worker("sim", 8)
	sim.MemoryBytes, sim.Instances = 8*gib, []string{"simulated"}
	sim.Held = []state.Held{{InstanceID: "simulated", ServiceID: "s0"}}
	st.workers = append(st.workers, sim)
	if err := s.ReconcileService(context.Background(), svc.ID); err != nil {
		t.Fatal(err)
	}
	if ps := st.placed(svc.ID); len(ps) != 1 || ps[0].WorkerID != "sim" {
		t.Errorf("placed %+v, want on sim, which runs it on the simulator", ps)
	}

	gpuSvc := modelService("s2", 1, 2, 16)
	st.services[gpuSvc.ID] = gpuSvc
	few := worker("few", 8)
	few.GPUs, few.FreeGPUs, few.GPUMemoryBytes, few.Engines = 2, 1, 24*gib, []string{"ollama"}
	st.workers = []state.Worker{few}
	if err := s.ReconcileService(context.Background(), gpuSvc.ID); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("ReconcileService = %v, want unavailable: one of two GPUs free", err)
	}
	failed := pub.placementFailures()
	if last := failed[len(failed)-1]; !strings.Contains(last.Reason, "no worker has 2 free GPUs") {
		t.Errorf("reason %q, want the missing GPU", last.Reason)
	}
}
