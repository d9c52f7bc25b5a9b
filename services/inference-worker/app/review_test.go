package app

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
)

// Finding 1: placements and releases reach a worker on two consumers, in
// no set order. A release that arrives first is acknowledged as a no-op;
// the placement, arriving later, starts an instance that has no placement
// and that nothing will ever release.
func TestReviewReleaseBeforePlacementOnRealStreams(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The worker connects as itself; the test stands in for the others.
	ns := natstest.New(t)
	bus, admin := ns.Bus(t, access.InferenceWorker), ns.Bus(t, natstest.Admin)
	cfg, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_ID": "w1", "MODELPORT_WORKER_GPUS": "0"}))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := Start(ctx, cfg, bus, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop(context.Background()) })

	const sid, iid = "0198f0c2-0000-7000-8000-000000000001", "0198f0c2-0000-7000-8000-0000000000aa"
	rel := events.InstanceReleasedV1{Meta: events.NewMeta(), InstanceID: iid, ServiceID: sid, WorkerID: "w1", Reason: "scaled down to 0"}
	if err := admin.Publisher.Publish(ctx, rel); err != nil {
		t.Fatal(err)
	}
	handled(t, admin, "inference-worker-release-w1") // before the placement arrives
	placed := events.InstancePlacedV1{Meta: events.NewMeta(), InstanceID: iid, ServiceID: sid, WorkerID: "w1",
		AccessName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "vllm"}
	if err := admin.Publisher.Publish(ctx, placed); err != nil {
		t.Fatal(err)
	}
	handled(t, admin, "inference-worker-w1")
	// A started instance is recorded before its placement is acknowledged.
	if _, _, err := state.Get[state.Instance](ctx, admin.KV(state.BucketInstances), state.InstanceKey(sid, iid)); err == nil {
		t.Fatalf("the worker runs %s, released before its placement arrived and never placed", iid)
	}
}

// handled waits until the worker's consumer has acknowledged its first
// event.
func handled(t *testing.T, bus *natsx.Bus, durable string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := bus.JS.Consumer(context.Background(), events.StreamScale, durable)
		if err == nil {
			if info, err := c.Info(context.Background()); err == nil && info.AckFloor.Consumer >= 1 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never acknowledged its event", durable)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
