package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestValidateAutoscale(t *testing.T) {
	tests := []struct {
		name      string
		p         state.Autoscale
		wantParam string
		want      state.Autoscale
	}{
		{"to zero gets the default idle time and target", state.Autoscale{MaxInstances: 3},
			"", state.Autoscale{MaxInstances: 3, TargetInFlight: 1, ScaleToZeroAfter: deploy.DefaultScaleToZeroAfter}},
		{"a floor never idles to zero", state.Autoscale{MinInstances: 1, MaxInstances: 3, TargetInFlight: 4, ScaleToZeroAfter: 60},
			"", state.Autoscale{MinInstances: 1, MaxInstances: 3, TargetInFlight: 4}},
		{"negative min", state.Autoscale{MinInstances: -1, MaxInstances: 3}, "autoscale.min_instances", state.Autoscale{}},
		{"max below min", state.Autoscale{MinInstances: 3, MaxInstances: 2}, "autoscale.max_instances", state.Autoscale{}},
		{"max zero", state.Autoscale{}, "autoscale.max_instances", state.Autoscale{}},
		{"max too high", state.Autoscale{MaxInstances: deploy.MaxInstances + 1}, "autoscale.max_instances", state.Autoscale{}},
		{"target too high", state.Autoscale{MaxInstances: 2, TargetInFlight: deploy.MaxTargetInFlight + 1}, "autoscale.target_in_flight", state.Autoscale{}},
		{"negative idle time", state.Autoscale{MaxInstances: 2, ScaleToZeroAfter: -5}, "autoscale.scale_to_zero_after_seconds", state.Autoscale{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			err := deploy.ValidateAutoscale(&p)
			if tc.wantParam != "" {
				e, ok := errs.As(err)
				if !ok || e.Kind != errs.Invalid || e.Param != tc.wantParam {
					t.Fatalf("err = %v, want Invalid on %s", err, tc.wantParam)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p != tc.want {
				t.Errorf("policy %+v, want %+v", p, tc.want)
			}
		})
	}
}

func TestCreateAutoscaled(t *testing.T) {
	m, _, _ := newManager()
	req := deploy.CreateRequest{Name: "auto", BaseModel: "qwen2.5-7b-instruct", Autoscale: &state.Autoscale{MinInstances: 2, MaxInstances: 4}}
	s, err := m.Create(context.Background(), alice, req)
	if err != nil {
		t.Fatal(err)
	}
	if s.Instances != 2 || s.Autoscale == nil || s.Autoscale.TargetInFlight != 1 {
		t.Fatalf("created %+v (policy %+v), want 2 instances and the policy with defaults", s, s.Autoscale)
	}
	req.Name, req.Instances = "outside", 5
	if _, err := m.Create(context.Background(), alice, req); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("instances outside the policy: err = %v, want Invalid", err)
	}
}

func TestScaleRefusesAutoscaled(t *testing.T) {
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, ReadyInstances: 1, Status: state.StatusRunning,
		Autoscale: &state.Autoscale{MaxInstances: 3, TargetInFlight: 1, ScaleToZeroAfter: 60}})
	_, err := m.Scale(context.Background(), alice, "s1", 2)
	if e, ok := errs.As(err); !ok || e.Kind != errs.Conflict || !strings.Contains(e.Msg, "autoscale") {
		t.Fatalf("err = %v, want Conflict naming the autoscale policy", err)
	}
	if st.updates != 0 || len(pub.events) != 0 {
		t.Fatalf("updates %d, events %d; want none", st.updates, len(pub.events))
	}
}

func TestSetAutoscale(t *testing.T) {
	ctx := context.Background()
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, ReadyInstances: 1, Status: state.StatusRunning})

	if _, err := m.SetAutoscale(ctx, bob, "s1", &state.Autoscale{MaxInstances: 2}); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("another owner: err = %v, want NotFound", err)
	}
	// A floor above the current count scales up at once.
	s, err := m.SetAutoscale(ctx, alice, "s1", &state.Autoscale{MinInstances: 2, MaxInstances: 4, TargetInFlight: 8})
	if err != nil {
		t.Fatal(err)
	}
	if s.Instances != 2 || s.Status != state.StatusScaling || s.Autoscale.TargetInFlight != 8 {
		t.Fatalf("service %+v, want 2 instances, scaling, with the policy", s)
	}
	if len(pub.events) != 1 {
		t.Fatalf("events %d, want 1", len(pub.events))
	}
	if ev := pub.events[0].(events.ServiceScaledV1); ev.From != 1 || ev.To != 2 || !strings.Contains(ev.Reason, "2 to 4") {
		t.Fatalf("event %+v, want 1→2 for the policy's bounds", ev)
	}
	// Removing the policy keeps the count.
	s, err = m.SetAutoscale(ctx, alice, "s1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Autoscale != nil || s.Instances != 2 || len(pub.events) != 1 {
		t.Fatalf("service %+v, events %d; want no policy, 2 instances, no new event", s, len(pub.events))
	}
	if _, err := m.SetAutoscale(ctx, alice, "s1", &state.Autoscale{MaxInstances: 0}); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("bad policy: err = %v, want Invalid", err)
	}
}

func TestApplyAutoscale(t *testing.T) {
	policy := &state.Autoscale{MinInstances: 0, MaxInstances: 3, TargetInFlight: 1, ScaleToZeroAfter: 60}
	decision := func(from, to int) events.ServiceAutoscaledV1 {
		return events.ServiceAutoscaledV1{Meta: events.NewMeta(), ServiceID: "s1", OwnerID: alice.OwnerID, From: from, To: to,
			Reason: "1 request waiting for an instance", InFlight: 1, TargetInFlight: 1}
	}
	tests := []struct {
		name       string
		svc        state.Service
		ev         events.ServiceAutoscaledV1
		want       int    // instances after
		wantStatus string // "" when unchanged
	}{
		{"cold start", state.Service{Instances: 0, Status: state.StatusIdle, Autoscale: policy}, decision(0, 1), 1, state.StatusScaling},
		{"to zero", state.Service{Instances: 1, ReadyInstances: 1, Status: state.StatusRunning, Autoscale: policy}, decision(1, 0), 0, state.StatusScaling},
		{"clamped to max", state.Service{Instances: 1, ReadyInstances: 1, Status: state.StatusRunning, Autoscale: policy}, decision(1, 9), 3, state.StatusScaling},
		{"made from another count", state.Service{Instances: 2, Status: state.StatusRunning, Autoscale: policy}, decision(1, 3), 2, ""},
		{"policy removed", state.Service{Instances: 1, Status: state.StatusRunning}, decision(1, 3), 1, ""},
		{"deleting", state.Service{Instances: 1, Status: state.StatusDeleting, Autoscale: policy}, decision(1, 3), 1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, pub := newManager()
			tc.svc.ID, tc.svc.OwnerID, tc.svc.Name = "s1", alice.OwnerID, "chat"
			st.put(tc.svc)
			if err := m.ApplyAutoscale(context.Background(), tc.ev, quietLog); err != nil {
				t.Fatal(err)
			}
			s := st.service(t, "s1")
			if s.Instances != tc.want {
				t.Fatalf("instances %d, want %d", s.Instances, tc.want)
			}
			if tc.wantStatus == "" {
				if st.updates != 0 || len(pub.events) != 0 {
					t.Fatalf("updates %d, events %d; want the decision dropped", st.updates, len(pub.events))
				}
				return
			}
			if s.Status != tc.wantStatus {
				t.Errorf("status %q, want %q", s.Status, tc.wantStatus)
			}
			if len(pub.events) != 1 {
				t.Fatalf("events %d, want 1", len(pub.events))
			}
			ev := pub.events[0].(events.ServiceScaledV1)
			if ev.From != tc.ev.From || ev.To != tc.want || ev.Reason != "autoscaler: "+tc.ev.Reason {
				t.Errorf("event %+v, want %d→%d with the autoscaler's reason", ev, tc.ev.From, tc.want)
			}
		})
	}
	// A missing service is no error: the decision is simply moot.
	m, _, _ := newManager()
	if err := m.ApplyAutoscale(context.Background(), decision(0, 1), quietLog); err != nil {
		t.Fatalf("missing service: %v", err)
	}
}
