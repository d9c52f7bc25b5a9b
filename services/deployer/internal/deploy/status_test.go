package deploy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

func TestPendingUntilPlaced(t *testing.T) {
	ctx := context.Background()
	m, st, _ := newManager()
	s, err := m.Create(ctx, alice, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != state.StatusPending || s.StatusReason == "" {
		t.Fatalf("created %s (%q), want pending with a reason", s.Status, s.StatusReason)
	}
	// No room: the reason says so; the status stays.
	nf := events.PlacementFailedV1{Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: alice.OwnerID, Wanted: 1, Reason: "no worker has room (0 live workers)"}
	if err := m.PlacementFailed(ctx, nf); err != nil {
		t.Fatal(err)
	}
	got := st.service(t, s.ID)
	if got.Status != state.StatusPending || !strings.Contains(got.StatusReason, "0 of 1 instances placed: no worker has room") {
		t.Fatalf("after a failed placement: %s (%q)", got.Status, got.StatusReason)
	}
	if err := m.Placed(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	got = st.service(t, s.ID)
	if got.Status != state.StatusDeploying || !strings.Contains(got.StatusReason, "no worker has room") {
		t.Fatalf("after placement: %s (%q), want deploying, still saying why the rest is not placed", got.Status, got.StatusReason)
	}
	// A service placed at once loses the pending reason.
	other, err := m.Create(ctx, alice, deploy.CreateRequest{Name: "other", BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Placed(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	if got := st.service(t, other.ID); got.Status != state.StatusDeploying || got.StatusReason != "" {
		t.Fatalf("placed at once: %s (%q), want deploying without a reason", got.Status, got.StatusReason)
	}
	// A redelivered placement changes nothing more.
	updates := st.updates
	if err := m.Placed(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if st.updates != updates {
		t.Errorf("redelivered placement wrote the service again")
	}
}

func TestInstanceFailed(t *testing.T) {
	failure := events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: "i1", ServiceID: "s1", WorkerID: "w1",
		Engine: "vllm", Reason: "crashed 5 times within 10m0s", ExitCode: 1, Restarts: 4, LogTail: "CUDA out of memory"}
	tests := []struct {
		name       string
		svc        state.Service
		others     []state.Instance
		wantStatus string
		wantReason bool
	}{
		{"the only instance: failed", state.Service{Instances: 1, Status: state.StatusDeploying}, nil, state.StatusFailed, true},
		{"another still serves: status stays", state.Service{Instances: 2, ReadyInstances: 2, Status: state.StatusRunning},
			[]state.Instance{{ID: "i2", ServiceID: "s1", Status: state.InstanceReady}}, state.StatusRunning, true},
		{"being deleted: left alone", state.Service{Instances: 1, Status: state.StatusDeleting}, nil, state.StatusDeleting, false},
		{"scaled to zero meanwhile: left alone", state.Service{Instances: 0, Status: state.StatusScaling}, nil, state.StatusScaling, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, _ := newManager()
			tc.svc.ID, tc.svc.OwnerID, tc.svc.Name = "s1", alice.OwnerID, "chat"
			st.put(tc.svc)
			st.mu.Lock()
			st.instances["s1"] = append(tc.others, state.Instance{ID: "i1", ServiceID: "s1", Status: state.InstanceReady})
			st.mu.Unlock()
			if err := m.InstanceFailed(context.Background(), failure); err != nil {
				t.Fatal(err)
			}
			got := st.service(t, "s1")
			if got.Status != tc.wantStatus {
				t.Errorf("status %s, want %s", got.Status, tc.wantStatus)
			}
			if has := strings.Contains(got.StatusReason, "crashed 5 times"); has != tc.wantReason {
				t.Errorf("reason %q; want the worker's reason: %v", got.StatusReason, tc.wantReason)
			}
		})
	}
}

// Scaling a failed service, even to the count it has, retries it; so does
// setting an autoscale policy.
func TestRetryFailed(t *testing.T) {
	ctx := context.Background()
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, Status: state.StatusFailed, StatusReason: "crashed"})
	s, err := m.Scale(ctx, alice, "s1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != state.StatusScaling || s.StatusReason != "" || len(pub.events) != 1 {
		t.Fatalf("after a retry: %s (%q), %d events; want scaling, no reason, one event", s.Status, s.StatusReason, len(pub.events))
	}
	st.put(state.Service{ID: "s2", OwnerID: alice.OwnerID, Name: "auto", Instances: 1, Status: state.StatusFailed, StatusReason: "crashed"})
	s, err = m.SetAutoscale(ctx, alice, "s2", &state.Autoscale{MaxInstances: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != state.StatusScaling || len(pub.events) != 2 {
		t.Fatalf("after a policy on a failed service: %s, %d events; want scaling, a second event", s.Status, len(pub.events))
	}
}

// TestInstanceGone: the scaler announces a dead worker's instance gone
// before it removes the instance's record, and the dead worker announces
// no stop. The service recounts without that instance, so a service
// scaled to zero meanwhile becomes idle instead of staying "scaling" with
// a ready instance that no longer exists.
func TestInstanceGone(t *testing.T) {
	tests := []struct {
		name       string
		gone       bool // the release says the worker is gone
		desired    int
		status     string
		wantStatus string
		wantReady  int
	}{
		{name: "scaled to zero", gone: true, desired: 0, status: state.StatusScaling, wantStatus: state.StatusIdle, wantReady: 0},
		{name: "still serving on the other", gone: true, desired: 2, status: state.StatusRunning, wantStatus: state.StatusDeploying, wantReady: 1},
		{name: "an ordinary release waits for the worker's stop", gone: false, desired: 0, status: state.StatusScaling, wantStatus: state.StatusScaling, wantReady: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, _ := newManager()
			st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Engine: "ollama", Instances: tc.desired, Status: tc.status, ReadyInstances: 2})
			st.instances["s1"] = []state.Instance{instance("on-dead-worker", state.InstanceReady, "ollama")}
			if tc.desired > 0 || !tc.gone {
				st.instances["s1"] = append(st.instances["s1"], instance("alive", state.InstanceReady, "ollama"))
			}
			ev := events.InstanceReleasedV1{Meta: events.NewMeta(), InstanceID: "on-dead-worker", ServiceID: "s1", WorkerID: "w2", WorkerGone: tc.gone}
			if err := m.InstanceGone(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			got := st.service(t, "s1")
			if got.Status != tc.wantStatus || got.ReadyInstances != tc.wantReady {
				t.Errorf("status %q with %d ready, want %q with %d", got.Status, got.ReadyInstances, tc.wantStatus, tc.wantReady)
			}
		})
	}
}
