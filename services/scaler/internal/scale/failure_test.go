package scale_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

func (p *fakePublisher) placementFailures() []events.PlacementFailedV1 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []events.PlacementFailedV1
	for _, ev := range p.events {
		if ev, ok := ev.(events.PlacementFailedV1); ok {
			out = append(out, ev)
		}
	}
	return out
}

// A service that cannot be placed is announced once per reason, however
// often the scaler retries, and again after it was placed and then could
// not be.
func TestPlacementFailedAnnouncedOnce(t *testing.T) {
	ctx := context.Background()
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 1)}
	s := scale.New(st, pub, quiet)
	for range 3 {
		if err := s.ReconcileService(ctx, "s1"); err == nil {
			t.Fatal("reconcile with no room succeeded")
		}
	}
	got := pub.placementFailures()
	if len(got) != 1 {
		t.Fatalf("announced %d times, want once: %+v", len(got), got)
	}
	if ev := got[0]; ev.ServiceID != "s1" || ev.Wanted != 2 || ev.Placed != 1 || !strings.Contains(ev.Reason, "no worker has room (1 live workers)") {
		t.Fatalf("event %+v", ev)
	}
	// Room appears: placed, and the memory of the failure goes.
	st.workers = []state.Worker{worker("w1", 1), worker("w2", 1)}
	if err := s.ReconcileService(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	st.services["s1"] = service("s1", 3)
	if err := s.ReconcileService(ctx, "s1"); err == nil {
		t.Fatal("reconcile with no room succeeded")
	}
	if got := pub.placementFailures(); len(got) != 2 || got[1].Wanted != 3 || got[1].Placed != 2 {
		t.Fatalf("announcements %+v, want a second one for 2 of 3", got)
	}
}

// An instance its worker gave up on is unplaced, without a release (the
// worker stopped it already), and replaced while the service still has a
// ready instance; a service left with none gets no replacement (the
// deployer fails it by the same rule).
func TestInstanceFailed(t *testing.T) {
	ctx := context.Background()
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 4)}
	st.place("s1", "i-bad", "w1")
	st.place("s1", "i-good", "w1")
	st.instances[state.InstanceKey("s1", "i-good")] = state.Instance{ID: "i-good", ServiceID: "s1", WorkerID: "w1", Status: state.InstanceReady}
	st.instances[state.InstanceKey("s1", "i-bad")] = state.Instance{ID: "i-bad", ServiceID: "s1", WorkerID: "w1", Status: state.InstanceReady}
	s := scale.New(st, pub, quiet)
	ev := events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: "i-bad", ServiceID: "s1", WorkerID: "w1", Reason: "crashed"}
	if err := s.InstanceFailed(ctx, ev); err != nil {
		t.Fatal(err)
	}
	got := st.placed("s1")
	if len(got) != 2 || slices.ContainsFunc(got, func(p state.Placement) bool { return p.InstanceID == "i-bad" }) {
		t.Fatalf("placements %+v, want i-good and a replacement", got)
	}
	for _, e := range pub.events {
		if _, ok := e.(events.InstanceReleasedV1); ok {
			t.Errorf("released the failed instance: %+v", e)
		}
	}

	// The only instance failed: its placement stays, marked failed, and
	// nothing replaces it, the sweep included.
	st.services["s2"] = service("s2", 1)
	st.place("s2", "i-only", "w1")
	ev.ServiceID, ev.InstanceID = "s2", "i-only"
	if err := s.InstanceFailed(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := s.ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	got = st.placed("s2")
	if len(got) != 1 || got[0].InstanceID != "i-only" || got[0].Failed != "crashed" {
		t.Fatalf("placements %+v, want only i-only, failed", got)
	}
	for _, e := range pub.placed() {
		if e.ServiceID == "s2" {
			t.Fatalf("placed %+v for a service whose only instance failed", e)
		}
	}

	// The owner retries it: the failed placement goes, a new one comes.
	retried := service("s2", 1)
	retried.Status, retried.Attempt = state.StatusScaling, 1
	st.services["s2"] = retried
	if err := s.ReconcileService(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	got = st.placed("s2")
	if len(got) != 1 || got[0].InstanceID == "i-only" || got[0].Failed != "" {
		t.Fatalf("placements %+v after the retry, want a new one", got)
	}
}

// A failed placement stops standing in once another instance of its
// service is ready (it came back), and when the service is deleted.
func TestFailedPlacementReplacedWhenServing(t *testing.T) {
	ctx := context.Background()
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 4)}
	st.placements[state.InstanceKey("s1", "i-failed")] = state.Placement{InstanceID: "i-failed", ServiceID: "s1", WorkerID: "w1", Failed: "crashed"}
	st.place("s1", "i-back", "w1")
	sc := scale.New(st, pub, quiet)
	if err := sc.ReconcileService(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.placed()); got != 0 {
		t.Fatalf("placed %d while nothing serves", got)
	}
	st.record("s1", "i-back", "w1", state.InstanceReady, time.Now())
	if err := sc.ReconcileService(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if got := placedIDs(st.placed("s1")); len(got) != 2 || slices.Contains(got, "i-failed") {
		t.Fatalf("placements %v, want i-back and a replacement of i-failed", got)
	}
	deleting := service("s1", 2)
	deleting.Status = state.StatusDeleting
	st.services["s1"] = deleting
	st.placements[state.InstanceKey("s1", "i-failed2")] = state.Placement{InstanceID: "i-failed2", ServiceID: "s1", WorkerID: "w1", Failed: "crashed"}
	if err := sc.ReconcileService(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if got := st.placed("s1"); len(got) != 0 {
		t.Fatalf("placements %+v of a deleting service", got)
	}
	for _, ev := range pub.released() {
		if ev.InstanceID == "i-failed2" {
			t.Errorf("released the failed placement %s: nothing runs it", ev.InstanceID)
		}
	}
}
