package scale_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

// gpuWorker is a live worker running vLLM with the given GPUs free.
func gpuWorker(id string, capacity, gpus, free int) state.Worker {
	w := worker(id, capacity)
	w.GPUs, w.FreeGPUs, w.Engines, w.Instances = gpus, free, []string{"vllm"}, []string{}
	return w
}

// A placement its worker refused does not count: it is removed at once and
// placed on another worker, and the refusing worker gets none of the
// service's instances while another can take them.
func TestRefusedPlacementMoved(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	w1, w2 := gpuWorker("w1", 4, 1, 1), gpuWorker("w2", 4, 1, 1)
	w1.Refused = []state.Refusal{{InstanceID: "i-refused", ServiceID: "s1", Reason: "needs 1 GPUs; worker w1 has 0 free", At: clk.now()}}
	st.workers = []state.Worker{w1, w2}
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	st.placeAt("s1", "i-refused", "w1", clk.now())
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	got := st.placed("s1")
	if len(got) != 1 || got[0].InstanceID == "i-refused" || got[0].WorkerID != "w2" {
		t.Fatalf("placements %+v, want the refused one moved to w2", got)
	}
	if len(pub.released()) != 0 {
		t.Errorf("released %+v: a refused placement runs nowhere", pub.released())
	}
}

// With nowhere else to go, a refused instance waits and the service says
// why at once; it is tried again on the refusing worker later.
func TestRefusedEverywhere(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	w1 := gpuWorker("w1", 4, 1, 1)
	w1.Refused = []state.Refusal{{InstanceID: "i-refused", ServiceID: "s1", Reason: "worker w1 is full (4 instances)", At: clk.now()}}
	st.workers = []state.Worker{w1}
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	st.placeAt("s1", "i-refused", "w1", clk.now())
	if err := sc.ReconcileService(context.Background(), "s1"); err == nil {
		t.Fatal("placed on the worker that just refused")
	}
	pf := pub.placementFailures()
	if len(pf) != 1 || !strings.Contains(pf[0].Reason, "refused") || pf[0].Placed != 0 {
		t.Fatalf("placement failures %+v, want one saying it was refused", pf)
	}
	clk.advance(2 * time.Minute)
	st.workers[0].Refused = nil
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := st.placed("s1"); len(got) != 1 {
		t.Fatalf("placements %+v, want one once the refusal is old", got)
	}
}

// GPUs are reckoned from the heartbeats less what was placed since: two
// workers with one free GPU each take one instance each, and the third
// waits, with the reason shown.
func TestPlacementByGPUs(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 3)
	st.workers = []state.Worker{gpuWorker("w1", 4, 1, 1), gpuWorker("w2", 4, 2, 1)}
	err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1")
	if err == nil {
		t.Fatal("placed three one-GPU instances on two free GPUs")
	}
	if got := st.perWorker(); got["w1"] != 1 || got["w2"] != 1 {
		t.Fatalf("placements by worker %v, want one each", got)
	}
	pf := pub.placementFailures()
	if len(pf) != 1 || pf[0].Reason != "no worker has 1 free GPU for an instance (2 live workers)" || pf[0].Placed != 2 || pf[0].Wanted != 3 {
		t.Fatalf("placement failures %+v", pf)
	}
	// A worker without vLLM runs the model on the simulator, without GPUs.
	sim := worker("w3", 4)
	st.workers = append(st.workers, sim)
	if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := st.perWorker(); got["w3"] != 1 {
		t.Fatalf("placements by worker %v, want the third on w3", got)
	}
}

// The release of an instance that runs without a placement is announced
// again while its worker holds it, but not at every reconcile.
func TestOrphanReleasedAgainWhileHeld(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	w := worker("w1", 4)
	w.Instances = []string{"i-orphan"}
	w.Held = []state.Held{{InstanceID: "i-orphan", ServiceID: "s-gone"}}
	st.workers = []state.Worker{w}
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	for range 3 {
		if err := sc.ReconcileAll(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.advance(time.Second)
	}
	if got := releasedIDs(pub.released()); !slices.Equal(got, []string{"i-orphan"}) {
		t.Fatalf("released %v within 3s, want i-orphan once", got)
	}
	clk.advance(time.Minute)
	if err := sc.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	rel := pub.released()
	if len(rel) != 2 || rel[1].ServiceID != "s-gone" || rel[1].WorkerID != "w1" {
		t.Fatalf("released %+v, want i-orphan again a minute later", rel)
	}
}

// A placement the sweep finds unlisted takes room at once, so a service
// reconciled alone after the sweep does not overfill the worker.
func TestUnlistedPlacementsTakeRoom(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 0)
	st.services["s2"] = service("s2", 1)
	st.workers = []state.Worker{gpuWorker("w1", 2, 0, 0)}
	st.placeAt("s1", "i-new-1", "w1", time.Now().UTC()) // placed by another leader, not listed yet
	st.placeAt("s1", "i-new-2", "w1", time.Now().UTC())
	s1 := service("s1", 2)
	st.services["s1"] = s1
	sc := scale.New(st, pub, quiet)
	if err := sc.ReconcileAll(context.Background()); err == nil {
		t.Fatal("placed on a worker whose two slots are taken")
	}
	if got := st.perWorker()["w1"]; got != 2 {
		t.Fatalf("w1 has %d placements, want 2", got)
	}
	if err := sc.ReconcileService(context.Background(), "s2"); err == nil {
		t.Fatal("placed on a worker whose two slots are taken")
	}
}
