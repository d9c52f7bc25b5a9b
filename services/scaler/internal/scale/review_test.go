package scale_test

// Reproductions of the control-plane review's scaler findings.

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

// Finding 1: an instance a worker runs without a placement (a release
// handled before its placement) is released.
func TestReviewOrphanReleased(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	w := worker("w1", 4)
	w.Instances = []string{"i-kept", "i-orphan"}
	st.workers = []state.Worker{w}
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	clk.advance(time.Minute)
	st.placeAt("s1", "i-kept", "w1", clk.now().Add(-time.Minute))
	st.record("s1", "i-kept", "w1", state.InstanceReady, clk.now())
	st.record("s1", "i-orphan", "w1", state.InstanceReady, clk.now())

	for range 2 {
		if err := sc.ReconcileAll(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.advance(time.Minute)
	}
	if got := releasedIDs(pub.released()); !slices.Contains(got, "i-orphan") || slices.Contains(got, "i-kept") {
		t.Fatalf("released %v, want the orphan i-orphan released and i-kept kept", got)
	}
}

// Finding 1(c): a placement whose announcement failed may have been stored
// all the same; taking the placement back leaves the instance an orphan.
func TestReviewAmbiguousPlacementKept(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{failOn: []int{1}}
	st.services["s1"] = service("s1", 1)
	st.workers = []state.Worker{worker("w1", 4)}
	_ = scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1")
	if got := st.placed("s1"); len(got) != 1 {
		t.Fatalf("placements %+v, want the one whose announcement may have been stored kept", got)
	}
}

// Finding 2: placing by slot count alone puts an instance that needs a GPU
// on a worker without a free one.
func TestReviewPlacesByFreeGPUs(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 3) // qwen2.5-7b-instruct on vllm: one GPU each
	w1, w2 := worker("w1", 4), worker("w2", 4)
	for _, w := range []*state.Worker{&w1, &w2} {
		w.GPUs, w.FreeGPUs, w.Engines = 1, 1, []string{"vllm"}
	}
	st.workers = []state.Worker{w1, w2}
	_ = scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1")
	if got := st.perWorker(); got["w1"] > 1 || got["w2"] > 1 {
		t.Fatalf("placements by worker %v; each worker has one GPU", got)
	}
	if len(pub.placementFailures()) != 1 {
		t.Fatalf("placement failures %+v, want one saying a GPU is missing", pub.placementFailures())
	}
}

// Finding 2: a placement its live worker does not run (refused, or its
// event lost) is never counted as placed for long: it is placed again.
func TestReviewPhantomReplaced(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	w1, w2 := worker("w1", 4), worker("w2", 4)
	w1.Instances, w2.Instances = []string{}, []string{}
	st.workers = []state.Worker{w1, w2}
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	clk.advance(time.Minute)
	st.placeAt("s1", "i-phantom", "w1", clk.now())
	for range 5 {
		clk.advance(30 * time.Second)
		if err := sc.ReconcileAll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := placedIDs(st.placed("s1")); slices.Contains(got, "i-phantom") || len(got) != 1 {
		t.Fatalf("placements %v, want the phantom replaced", got)
	}
}

// Finding 8: between the scaler forgetting a failed instance and the
// deployer marking its service failed, the sweep places a replacement.
func TestReviewCrashLoopNotReplacedBySweep(t *testing.T) {
	ctx := context.Background()
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	st.workers = []state.Worker{worker("w1", 4)}
	st.place("s1", "i-only", "w1")
	sc := scale.New(st, pub, quiet)
	ev := events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: "i-only", ServiceID: "s1", WorkerID: "w1", Reason: "crashed"}
	if err := sc.InstanceFailed(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := sc.ReconcileAll(ctx); err != nil { // the deployer has not marked s1 failed yet
		t.Fatal(err)
	}
	if got := pub.placed(); len(got) != 0 {
		t.Fatalf("placed %+v for a service whose only instance failed", got)
	}
}

// Finding 12: the sweep stops at the first service it cannot place, so the
// others never learn why they are not placed.
func TestReviewEveryUnplaceableServiceAnnounced(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	st.services["s2"] = service("s2", 1)
	_ = scale.New(st, pub, quiet).ReconcileAll(context.Background())
	got := map[string]bool{}
	for _, ev := range pub.placementFailures() {
		got[ev.ServiceID] = true
	}
	if !got["s1"] || !got["s2"] {
		t.Fatalf("placement failures for %v, want both s1 and s2", got)
	}
}

// countingStore counts the reads of whole buckets.
type countingStore struct {
	*fakeStore
	wholeReads int
}

func (c *countingStore) Placements(ctx context.Context) ([]state.Placement, error) {
	c.wholeReads++
	return c.fakeStore.Placements(ctx)
}

func (c *countingStore) Instances(ctx context.Context) ([]state.Instance, error) {
	c.wholeReads++
	return c.fakeStore.Instances(ctx)
}

// Finding 7: reconciling one service reads every placement and instance.
func TestReviewReconcileServiceReadsItsOwnRecords(t *testing.T) {
	st := &countingStore{fakeStore: newFakeStore()}
	st.services["s1"] = service("s1", 1)
	st.workers = []state.Worker{worker("w1", 4)}
	if err := scale.New(st, &fakePublisher{}, quiet).ReconcileService(context.Background(), "s1"); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if st.wholeReads != 0 {
		t.Fatalf("reconciling one service read whole buckets %d times", st.wholeReads)
	}
}

// A scaler that takes the lead again (after a NATS outage cost it the
// lease) judges no worker dead before the workers have had a TTL to beat:
// their heartbeats may all have expired during the outage.
func TestNewTermJudgesNoWorkerDeadAtOnce(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	clk.advance(time.Hour)
	st.placeAt("s1", "i-1", "w1", clk.now().Add(-time.Hour))
	sc.Forget() // a new term, right after the outage: no heartbeat yet
	if err := sc.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(pub.released()) != 0 || len(st.placed("s1")) != 1 {
		t.Fatalf("released %+v: a worker unseen since the new term began was judged dead", pub.released())
	}
	clk.advance(time.Minute)
	if err := sc.ReconcileAll(context.Background()); err == nil {
		t.Fatal("placed with no live worker")
	}
	if got := pub.released(); len(got) != 1 || !got[0].WorkerGone {
		t.Fatalf("released %+v a minute later, want i-1 gone with its worker", got)
	}
}
