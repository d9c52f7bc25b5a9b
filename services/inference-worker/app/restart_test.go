package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go/jetstream"
)

// A worker started again under the same ID announces stopped every
// instance its earlier run recorded or held, so billing ends their time
// even when that run died between stopping one and announcing it, and
// removes the records.
func TestRestartAnnouncesWhatTheEarlierRunHeld(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The worker connects as itself; the test stands in for the others.
	ns := natstest.New(t)
	bus, admin := ns.Bus(t, access.InferenceWorker), ns.Bus(t, natstest.Admin)
	// The earlier run: one instance recorded, one held whose record it had
	// removed (it was stopping) when it died.
	if err := state.Put(ctx, admin.KV(state.BucketInstances), state.InstanceKey("s1", "i-recorded"),
		state.Instance{ID: "i-recorded", ServiceID: "s1", WorkerID: "w1", Status: state.InstanceReady}); err != nil {
		t.Fatal(err)
	}
	if err := state.Put(ctx, admin.KV(state.BucketWorkers), "w1", state.Worker{ID: "w1", Instances: []string{"i-recorded", "i-stopping"},
		Held: []state.Held{{InstanceID: "i-recorded", ServiceID: "s1"}, {InstanceID: "i-stopping", ServiceID: "s2"}}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := ConfigFromEnv(config.Map(map[string]string{"MODELPORT_WORKER_ID": "w1", "MODELPORT_WORKER_GPUS": "0"}))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := Start(ctx, cfg, bus, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop(context.Background()) })

	cons, err := admin.JS.OrderedConsumer(ctx, events.StreamWorker, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectInstanceStoppedV1}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for len(got) < 2 {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("stopped events %v, then: %v", got, err)
		}
		var ev events.InstanceStoppedV1
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Reason != "worker restarted" || ev.WorkerID != "w1" {
			t.Errorf("event %+v", ev)
		}
		got[ev.InstanceID] = ev.ServiceID
	}
	if got["i-recorded"] != "s1" || got["i-stopping"] != "s2" {
		t.Fatalf("stopped %v, want i-recorded of s1 and i-stopping of s2", got)
	}
	if _, _, err := state.Get[state.Instance](ctx, admin.KV(state.BucketInstances), state.InstanceKey("s1", "i-recorded")); err == nil {
		t.Error("the earlier run's record remains")
	}
}
