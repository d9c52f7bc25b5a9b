package worker_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

func release(id, reason string) events.InstanceReleasedV1 {
	return events.InstanceReleasedV1{Meta: events.NewMeta(), InstanceID: id, ServiceID: "s1", WorkerID: workerID, Reason: reason}
}

func TestStopInstance(t *testing.T) {
	const drain = 50 * time.Millisecond
	oneGPU := worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) { s.GPUs = 1; return s, nil })
	f := newFixture(t, 1, worker.WithDrain(drain), worker.WithGPUs(1), oneGPU)
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "i-1 is ready", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 1 })
	inst := f.eng.started()[0]
	var stoppedAtDelete atomic.Value
	f.st.onDelete = func(string) { stoppedAtDelete.Store(inst.stopped.Load()) }

	begin := time.Now()
	if err := f.w.StopInstance(context.Background(), release("i-1", "scaled down to 0")); err != nil {
		t.Fatalf("StopInstance: %v", err)
	}
	if took := time.Since(begin); took < drain {
		t.Errorf("StopInstance returned after %s, before the %s drain", took, drain)
	}
	if got, ok := stoppedAtDelete.Load().(bool); !ok || got {
		t.Errorf("record deleted: %v, engine stopped before it: %v; want the record deleted first", ok, got)
	}
	if !inst.stopped.Load() {
		t.Error("engine not stopped")
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("records left: %+v", got)
	}
	stopped := of[events.InstanceStoppedV1](f.pub)
	if len(stopped) != 1 {
		t.Fatalf("stopped events %+v, want one", stopped)
	}
	want := events.InstanceStoppedV1{Meta: stopped[0].Meta, InstanceID: "i-1", ServiceID: "s1", WorkerID: workerID, Reason: "scaled down to 0"}
	if stopped[0] != want || stopped[0].ID == "" {
		t.Errorf("event\n %+v, want\n %+v", stopped[0], want)
	}
	if got, want := f.running(t), 0; got != want {
		t.Errorf("running = %d, want %d", got, want)
	}

	// The slot and the GPU are free again: a new placement fits.
	f.st.onDelete = nil
	if err := f.start(placement("i-2")); err != nil {
		t.Fatalf("a placement after the release: %v", err)
	}
	specs := f.eng.startedSpecs()
	if got := specs[len(specs)-1].Devices; !slices.Equal(got, []int{0}) {
		t.Errorf("i-2 got GPUs %v, want [0]", got)
	}

	// A second release of the same instance is a no-op.
	if err := f.w.StopInstance(context.Background(), release("i-1", "again")); err != nil {
		t.Errorf("second release: %v", err)
	}
	if got := len(of[events.InstanceStoppedV1](f.pub)); got != 1 {
		t.Errorf("%d stopped events after a repeated release, want 1", got)
	}
}

func TestStopInstanceUnknown(t *testing.T) {
	f := newFixture(t, 1, worker.WithDrain(0))
	if err := f.w.StopInstance(context.Background(), release("i-none", "service deleted")); err != nil {
		t.Errorf("StopInstance of an unknown instance: %v, want nil", err)
	}
	if got := f.pub.published(); len(got) != 0 {
		t.Errorf("published %v", got)
	}
}

func TestStopInstanceRejects(t *testing.T) {
	f := newFixture(t, 1, worker.WithDrain(0))
	ev := release("i-1", "scaled down to 0")
	ev.WorkerID = "w-other"
	if err := f.w.StopInstance(context.Background(), ev); errs.KindOf(err) != errs.Invalid {
		t.Errorf("release for another worker: err = %v, want kind Invalid", err)
	}
}

// A release while the engine starts stops it as soon as it has started,
// announcing nothing (it was never ready), and frees the slot.
func TestStopInstanceWhileStarting(t *testing.T) {
	f := newFixture(t, 1, worker.WithDrain(0))
	f.eng.gate = make(chan struct{})
	started := make(chan error, 1)
	go func() { started <- f.start(placement("i-1")) }()
	eventually(t, "the slot is reserved", func() bool { return f.running(t) == 1 })

	if err := f.w.StopInstance(context.Background(), release("i-1", "service deleted")); err != nil {
		t.Errorf("release while starting: %v", err)
	}
	close(f.eng.gate)
	if err := <-started; err != nil {
		t.Fatalf("start of an instance released meanwhile: %v, want it acknowledged", err)
	}
	if !f.eng.started()[0].stopped.Load() {
		t.Error("the released instance runs")
	}
	if got := f.running(t); got != 0 {
		t.Errorf("running = %d, want 0", got)
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("recorded %+v", got)
	}
	if got := f.pub.published(); len(got) != 0 {
		t.Errorf("published %+v, want nothing: it was never ready", got)
	}
	// Its placement, delivered again, starts nothing.
	if err := f.start(placement("i-1")); err != nil || len(f.eng.started()) != 1 {
		t.Fatalf("redelivered placement: %v, %d started", err, len(f.eng.started()))
	}
}
