package transport_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/nats-io/nats.go/jetstream"
)

// Two deployer replicas (each its own connection, store and manager) scale
// one service at once, with no lock between them: every request lands,
// and the DEPLOY stream holds one ServiceScaledV1 per stored change, each
// from the previous one's count.
func TestReplicasAnnounceInOrder(t *testing.T) {
	ctx := context.Background()
	ns := natstest.New(t)
	var managers []*deploy.Manager
	for range 2 {
		bus := ns.Bus(t, access.Deployer)
		store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
		managers = append(managers, deploy.NewManager(store, catalog.Default(), bus.Publisher))
	}
	owner := auth.Key{ID: "k1", OwnerID: "a11ce0000001"}
	s, err := managers[0].Create(ctx, owner, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if _, err := managers[i%2].Scale(ctx, owner, s.ID, 2+i); err != nil {
				t.Errorf("scale to %d: %v", 2+i, err)
			}
		})
	}
	wg.Wait()

	js := ns.Bus(t, natstest.Admin).JS
	cons, err := js.OrderedConsumer(ctx, events.StreamDeploy, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectServiceScaledV1}})
	if err != nil {
		t.Fatal(err)
	}
	prev, n := 1, 0
	for n < 16 {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d events: %v", n, err)
		}
		var ev events.ServiceScaledV1
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.From != prev {
			t.Errorf("event %d: from %d, want the previous to, %d", n, ev.From, prev)
		}
		prev = ev.To
		n++
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
		t.Error("more ServiceScaledV1 events than changes: one was stored twice")
	}
	got, err := managers[1].Get(ctx, owner, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Instances != prev {
		t.Errorf("stored %d instances, want the last event's %d", got.Instances, prev)
	}
}
