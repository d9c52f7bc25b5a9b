package transport_test

// Reproductions of the control-plane review's deployer findings that need
// real JetStream.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/transport"
)

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Finding 4(a): the scaler removes a dead worker's instance records and
// announces only InstanceReleasedV1 with worker_gone, which the deployer
// does not consume: a deleting service never becomes deleted.
func TestReviewWorkerGoneFinishesDeletion(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Deployer)
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	m := deploy.NewManager(store, catalog.Default(), bus.Publisher)
	if err := transport.ConsumeInstanceEvents(ctx, bus.JS, m, quiet); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	svc := state.Service{ID: uuid.NewString(), OwnerID: "a11ce0000001", Name: "chat", AccessName: "u-a11ce0000001/chat",
		Instances: 1, ReadyInstances: 1, Status: state.StatusDeleting, CreatedAt: now, UpdatedAt: now}
	if err := store.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	// The worker died; the scaler removed its record and announced the loss.
	if err := ns.Bus(t, natstest.Admin).Publisher.Publish(ctx, events.InstanceReleasedV1{Meta: events.NewMeta(), InstanceID: "i1", ServiceID: svc.ID,
		WorkerID: "w-dead", Reason: "worker w-dead stopped beating", WorkerGone: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "service deleted", func() error {
		got, _, err := store.Get(ctx, svc.ID)
		if err != nil {
			return err
		}
		if got.Status != state.StatusDeleted {
			return fmt.Errorf("status %s", got.Status)
		}
		return nil
	})
}
