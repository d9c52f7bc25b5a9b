package gateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// sample returns the demand snapshot of one service, or a zero sample.
func sample(d *routing.Demand, serviceID string) routing.DemandSample {
	for _, s := range d.Snapshot() {
		if s.ServiceID == serviceID {
			return s
		}
	}
	return routing.DemandSample{}
}

func TestColdStartHoldsTheRequest(t *testing.T) {
	asleep := state.Service{
		ID: "s-alice-asleep", OwnerID: alice.OwnerID, Name: "asleep", AccessName: "u-" + alice.OwnerID + "/asleep",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 0,
		Status: state.StatusIdle, Autoscale: &state.Autoscale{MaxInstances: 2, TargetInFlight: 1, ScaleToZeroAfter: 60},
	}
	tb := routing.NewTable()
	tb.PutService(asleep)
	demand := routing.NewDemand()
	g := gateway.New(tb, demand, newFakeEngine(), &fakePublisher{}, quiet)
	g.ReadyWait, g.ColdStartWait = 50*time.Millisecond, 10*time.Second

	done := make(chan error, 1)
	go func() {
		_, err := g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "r1", Body: chatBody(asleep.AccessName)})
		done <- err
	}()
	select {
	case <-demand.Waiting():
	case err := <-done:
		t.Fatalf("request ended without waiting: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the request never signalled that it waits")
	}
	if s := sample(demand, asleep.ID); s.InFlight != 1 || s.Waiting != 1 || s.Requests != 1 {
		t.Fatalf("demand while held %+v, want 1 in flight, 1 waiting", s)
	}
	// Held well past ReadyWait: an autoscaled service may be starting.
	time.Sleep(200 * time.Millisecond)
	tb.PutInstance(instance(asleep, "i-new"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("held request: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held request not served once an instance was ready")
	}
	if s := sample(demand, asleep.ID); s.InFlight != 0 || s.Waiting != 0 {
		t.Fatalf("demand after %+v, want nothing in flight", s)
	}
	if s := demand.Snapshot(); len(s) != 0 {
		t.Fatalf("a quiet service is still reported: %+v", s)
	}
}

func TestDemandCountsUntilTheAnswerIsRead(t *testing.T) {
	f := newFixture()
	demand := routing.NewDemand()
	f.g = gateway.New(f.table, demand, f.eng, f.pub, quiet)
	f.g.ReadyWait = 50 * time.Millisecond
	if _, err := f.g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "r1", Body: chatBody(aliceChat.AccessName)}); err != nil {
		t.Fatal(err)
	}
	s := sample(demand, aliceChat.ID)
	if s.InFlight != 0 || s.Requests != 1 || s.LastRequestAt.IsZero() {
		t.Fatalf("after one answered request %+v, want 0 in flight, 1 request, a time", s)
	}
	// A service with no ready instance and no autoscaling fails after
	// ReadyWait, and stops counting.
	_, err := f.g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "r2", Body: chatBody(aliceIdle.AccessName)})
	checkErr(t, err, errs.Unavailable, "")
	if s := sample(demand, aliceIdle.ID); s.InFlight != 0 || s.Waiting != 0 || s.Requests != 1 {
		t.Fatalf("after a failed request %+v, want nothing in flight", s)
	}
}
