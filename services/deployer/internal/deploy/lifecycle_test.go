package deploy_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

func TestScale(t *testing.T) {
	tests := []struct {
		name       string
		caller     auth.Key
		status     string
		desired    int
		ready      int
		n          int
		wantKind   errs.Kind // Internal means success
		wantParam  string
		wantStatus string
		wantEvent  bool
	}{
		{name: "up", caller: alice, status: state.StatusRunning, desired: 1, ready: 1, n: 3, wantStatus: state.StatusScaling, wantEvent: true},
		{name: "down", caller: alice, status: state.StatusRunning, desired: 3, ready: 3, n: 1, wantStatus: state.StatusScaling, wantEvent: true},
		{name: "to zero", caller: alice, status: state.StatusRunning, desired: 2, ready: 2, n: 0, wantStatus: state.StatusScaling, wantEvent: true},
		{name: "to zero with nothing ready", caller: alice, status: state.StatusDeploying, desired: 2, n: 0, wantStatus: state.StatusIdle, wantEvent: true},
		{name: "up from idle", caller: alice, status: state.StatusIdle, n: 2, wantStatus: state.StatusScaling, wantEvent: true},
		{name: "to what is ready", caller: alice, status: state.StatusDeploying, desired: 3, ready: 2, n: 2, wantStatus: state.StatusRunning, wantEvent: true},
		{name: "unchanged: no write, no event", caller: alice, status: state.StatusRunning, desired: 2, ready: 2, n: 2, wantStatus: state.StatusRunning},
		{name: "admin", caller: admin, status: state.StatusRunning, desired: 1, ready: 1, n: 2, wantStatus: state.StatusScaling, wantEvent: true},
		{name: "another owner", caller: bob, status: state.StatusRunning, desired: 1, n: 2, wantKind: errs.NotFound},
		{name: "deleting", caller: alice, status: state.StatusDeleting, desired: 1, n: 2, wantKind: errs.Conflict},
		{name: "deleted", caller: alice, status: state.StatusDeleted, desired: 1, n: 2, wantKind: errs.Conflict},
		{name: "negative", caller: alice, status: state.StatusRunning, desired: 1, n: -1, wantKind: errs.Invalid, wantParam: "instances"},
		{name: "too many", caller: alice, status: state.StatusRunning, desired: 1, n: deploy.MaxInstances + 1, wantKind: errs.Invalid, wantParam: "instances"},
		{name: "the most", caller: alice, status: state.StatusRunning, desired: 1, ready: 1, n: deploy.MaxInstances, wantStatus: state.StatusScaling, wantEvent: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, pub := newManager()
			st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: tc.desired, ReadyInstances: tc.ready, Status: tc.status})
			s, err := m.Scale(context.Background(), tc.caller, "s1", tc.n)
			if tc.wantKind != errs.Internal {
				if got, want := errs.KindOf(err), tc.wantKind; got != want {
					t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
				}
				e, _ := errs.As(err)
				if got, want := e.Param, tc.wantParam; got != want {
					t.Errorf("param = %q, want %q", got, want)
				}
				if st.updates != 0 || len(pub.events) != 0 {
					t.Errorf("updates %d, events %d; want none", st.updates, len(pub.events))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := st.service(t, "s1"), s; !reflect.DeepEqual(got, want) {
				t.Errorf("stored %+v, returned %+v", got, want)
			}
			if got, want := s.Instances, tc.n; got != want {
				t.Errorf("instances = %d, want %d", got, want)
			}
			if got, want := s.Status, tc.wantStatus; got != want {
				t.Errorf("status = %q, want %q", got, want)
			}
			if !tc.wantEvent {
				if len(pub.events) != 0 || st.updates != 0 {
					t.Errorf("events %d, updates %d; want none", len(pub.events), st.updates)
				}
				return
			}
			if len(pub.events) != 1 {
				t.Fatalf("published %d events, want 1", len(pub.events))
			}
			ev := pub.events[0].(events.ServiceScaledV1)
			want := events.ServiceScaledV1{Meta: ev.Meta, ServiceID: "s1", OwnerID: alice.OwnerID, From: tc.desired, To: tc.n, Reason: "requested by the owner"}
			if ev != want || ev.ID == "" {
				t.Errorf("event %+v, want %+v", ev, want)
			}
		})
	}
}

func TestScaleRetriesOnConflict(t *testing.T) {
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Instances: 1, ReadyInstances: 1, Status: state.StatusRunning})
	st.conflicts = 2
	s, err := m.Scale(context.Background(), alice, "s1", 4)
	if err != nil {
		t.Fatal(err)
	}
	// Two conflicts, the change with its announcement, and the
	// announcement's removal from the outbox once published.
	if got, want := st.updates, 4; got != want {
		t.Errorf("updates = %d, want %d", got, want)
	}
	if len(st.service(t, "s1").Outbox) != 0 {
		t.Error("the published announcement is still in the outbox")
	}
	if got, want := s.Instances, 4; got != want {
		t.Errorf("instances = %d, want %d", got, want)
	}
	if got, want := len(pub.events), 1; got != want {
		t.Errorf("events = %d, want %d", got, want)
	}
}

func TestRefreshReadyAfterScale(t *testing.T) {
	tests := []struct {
		name       string
		desired    int
		status     string
		ready      int
		wantStatus string
	}{
		{name: "scaling up, short", desired: 3, status: state.StatusScaling, ready: 2, wantStatus: state.StatusScaling},
		{name: "scaling up, there", desired: 3, status: state.StatusScaling, ready: 3, wantStatus: state.StatusRunning},
		{name: "scaling down, extra still ready", desired: 1, status: state.StatusScaling, ready: 2, wantStatus: state.StatusScaling},
		{name: "scaling down, there", desired: 1, status: state.StatusScaling, ready: 1, wantStatus: state.StatusRunning},
		{name: "to zero, draining", desired: 0, status: state.StatusScaling, ready: 1, wantStatus: state.StatusScaling},
		{name: "to zero, drained", desired: 0, status: state.StatusScaling, ready: 0, wantStatus: state.StatusIdle},
		{name: "idle stays idle", desired: 0, status: state.StatusIdle, ready: 0, wantStatus: state.StatusIdle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, _ := newManager()
			st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Engine: "vllm", Instances: tc.desired, Status: tc.status})
			for i := range tc.ready {
				st.instances["s1"] = append(st.instances["s1"], instance(string(rune('a'+i)), state.InstanceReady, "vllm"))
			}
			if err := m.RefreshReady(context.Background(), "s1"); err != nil {
				t.Fatal(err)
			}
			if got, want := st.service(t, "s1").Status, tc.wantStatus; got != want {
				t.Errorf("status = %q, want %q", got, want)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	tests := []struct {
		name       string
		caller     auth.Key
		confirm    string
		status     string
		instances  int
		wantKind   errs.Kind
		wantParam  string
		wantStatus string
		wantEvents int
	}{
		{name: "wrong name", caller: alice, confirm: "chat2", status: state.StatusRunning, wantKind: errs.Invalid, wantParam: "confirm_name"},
		{name: "missing name", caller: alice, status: state.StatusRunning, wantKind: errs.Invalid, wantParam: "confirm_name"},
		{name: "another owner", caller: bob, confirm: "chat", status: state.StatusRunning, wantKind: errs.NotFound},
		{name: "with instances: deleting", caller: alice, confirm: "chat", status: state.StatusRunning, instances: 2, wantStatus: state.StatusDeleting, wantEvents: 1},
		{name: "without instances: deleted at once", caller: alice, confirm: "chat", status: state.StatusIdle, wantStatus: state.StatusDeleted, wantEvents: 1},
		{name: "already deleting: unchanged", caller: alice, confirm: "chat", status: state.StatusDeleting, instances: 1, wantStatus: state.StatusDeleting},
		{name: "admin", caller: admin, confirm: "chat", status: state.StatusRunning, instances: 1, wantStatus: state.StatusDeleting, wantEvents: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, pub := newManager()
			before := state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", AccessName: "u-" + alice.OwnerID + "/chat", Instances: 2, Status: tc.status}
			st.put(before)
			for i := range tc.instances {
				st.instances["s1"] = append(st.instances["s1"], instance(string(rune('a'+i)), state.InstanceReady, "vllm"))
			}
			s, err := m.Delete(context.Background(), tc.caller, "s1", tc.confirm)
			if tc.wantKind != errs.Internal {
				if got, want := errs.KindOf(err), tc.wantKind; got != want {
					t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
				}
				e, _ := errs.As(err)
				if got, want := e.Param, tc.wantParam; got != want {
					t.Errorf("param = %q, want %q", got, want)
				}
				if got := st.service(t, "s1"); !reflect.DeepEqual(got, before) || len(pub.events) != 0 {
					t.Errorf("stored %+v with %d events, want it unchanged and none", got, len(pub.events))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := s.Status, tc.wantStatus; got != want {
				t.Errorf("returned status = %q, want %q", got, want)
			}
			if got, want := st.service(t, "s1").Status, tc.wantStatus; got != want {
				t.Errorf("stored status = %q, want %q", got, want)
			}
			if got, want := len(pub.events), tc.wantEvents; got != want {
				t.Fatalf("events = %d, want %d", got, want)
			}
			if tc.wantEvents == 1 {
				ev := pub.events[0].(events.ServiceDeletedV1)
				want := events.ServiceDeletedV1{Meta: ev.Meta, ServiceID: "s1", OwnerID: alice.OwnerID, Name: "chat", AccessName: before.AccessName}
				if ev != want {
					t.Errorf("event %+v, want %+v", ev, want)
				}
			}
			if got, want := slices.Contains(st.released, "s1"), tc.wantStatus == state.StatusDeleted; got != want {
				t.Errorf("name released = %v, want %v", got, want)
			}
		})
	}
}

func TestDeletionCompletesWhenInstancesAreGone(t *testing.T) {
	m, st, _ := newManager()
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 2, ReadyInstances: 2, Status: state.StatusRunning, CreatedAt: created, UpdatedAt: created})
	st.instances["s1"] = []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceReady, "vllm")}
	ctx := context.Background()
	if _, err := m.Delete(ctx, alice, "s1", "chat"); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name       string
		instances  []state.Instance
		wantStatus string
		wantReady  int
	}{
		{name: "one stopped, one ready", instances: []state.Instance{instance("i1", state.InstanceStopped, "vllm"), instance("i2", state.InstanceReady, "vllm")}, wantStatus: state.StatusDeleting, wantReady: 1},
		{name: "one stopped record left", instances: []state.Instance{instance("i1", state.InstanceStopped, "vllm")}, wantStatus: state.StatusDeleting, wantReady: 0},
		{name: "none left", wantStatus: state.StatusDeleted},
		{name: "an instance reappears: stays deleted", instances: []state.Instance{instance("i3", state.InstanceReady, "vllm")}, wantStatus: state.StatusDeleted},
	}
	for _, step := range steps {
		st.mu.Lock()
		st.instances["s1"] = step.instances
		st.mu.Unlock()
		if err := m.RefreshReady(ctx, "s1"); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		s := st.service(t, "s1")
		if got, want := s.Status, step.wantStatus; got != want {
			t.Errorf("%s: status = %q, want %q", step.name, got, want)
		}
		if got, want := s.ReadyInstances, step.wantReady; got != want {
			t.Errorf("%s: ready = %d, want %d", step.name, got, want)
		}
	}
	s := st.service(t, "s1")
	if !s.UpdatedAt.After(created) || !s.CreatedAt.Equal(created) {
		t.Errorf("deleted record created %v updated %v, want the creation kept and the deletion time set", s.CreatedAt, s.UpdatedAt)
	}
	if !slices.Contains(st.released, "s1") {
		t.Error("name not released")
	}
	if got, err := m.Get(ctx, alice, "s1"); err != nil || got.Status != state.StatusDeleted {
		t.Errorf("Get after deletion = %+v, %v; want the deleted record", got, err)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	m, st, _ := newManager()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(id, owner, status, task string) {
		st.put(state.Service{ID: id, OwnerID: owner, Status: status, Task: task, CreatedAt: t0.Add(time.Duration(len(st.order)) * time.Minute)})
	}
	add("s1", alice.OwnerID, state.StatusRunning, state.TaskTextGeneration)
	add("s2", alice.OwnerID, state.StatusDeleted, state.TaskTextGeneration)
	add("s3", bob.OwnerID, state.StatusRunning, state.TaskTextGeneration)
	add("s4", alice.OwnerID, state.StatusDeploying, state.TaskImageGeneration)
	add("s5", alice.OwnerID, state.StatusRunning, state.TaskImageGeneration)
	add("s6", alice.OwnerID, state.StatusRunning, state.TaskTextGeneration)

	tests := []struct {
		name      string
		caller    auth.Key
		opts      deploy.ListOptions
		want      string // IDs, comma-separated
		wantMore  bool
		wantParam string
	}{
		{name: "all but deleted", caller: alice, want: "s1,s4,s5,s6"},
		{name: "deleted when asked", caller: alice, opts: deploy.ListOptions{Status: state.StatusDeleted}, want: "s2"},
		{name: "running", caller: alice, opts: deploy.ListOptions{Status: state.StatusRunning}, want: "s1,s5,s6"},
		{name: "task", caller: alice, opts: deploy.ListOptions{Task: state.TaskImageGeneration}, want: "s4,s5"},
		{name: "status and task", caller: alice, opts: deploy.ListOptions{Status: state.StatusRunning, Task: state.TaskTextGeneration}, want: "s1,s6"},
		{name: "first page", caller: alice, opts: deploy.ListOptions{Limit: 2}, want: "s1,s4", wantMore: true},
		{name: "second page", caller: alice, opts: deploy.ListOptions{Limit: 2, After: "s4"}, want: "s5,s6"},
		{name: "exact fit has no more", caller: alice, opts: deploy.ListOptions{Limit: 4}, want: "s1,s4,s5,s6"},
		{name: "after a deleted service", caller: alice, opts: deploy.ListOptions{After: "s2"}, want: "s4,s5,s6"},
		{name: "filtered pages", caller: alice, opts: deploy.ListOptions{Status: state.StatusRunning, Limit: 1, After: "s1"}, want: "s5", wantMore: true},
		{name: "admin sees all", caller: admin, opts: deploy.ListOptions{Limit: 3}, want: "s1,s3,s4", wantMore: true},
		{name: "another owner's cursor", caller: alice, opts: deploy.ListOptions{After: "s3"}, wantParam: "after"},
		{name: "unknown cursor", caller: alice, opts: deploy.ListOptions{After: "nope"}, wantParam: "after"},
		{name: "unknown status", caller: alice, opts: deploy.ListOptions{Status: "asleep"}, wantParam: "status"},
		{name: "unknown task", caller: alice, opts: deploy.ListOptions{Task: "speech"}, wantParam: "task"},
		{name: "limit too big", caller: alice, opts: deploy.ListOptions{Limit: deploy.MaxLimit + 1}, wantParam: "limit"},
		{name: "limit negative", caller: alice, opts: deploy.ListOptions{Limit: -1}, wantParam: "limit"},
		{name: "the largest limit", caller: alice, opts: deploy.ListOptions{Limit: deploy.MaxLimit}, want: "s1,s4,s5,s6"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			page, more, err := m.List(context.Background(), tc.caller, tc.opts)
			if tc.wantParam != "" {
				e, ok := errs.As(err)
				if !ok || e.Kind != errs.Invalid || e.Param != tc.wantParam {
					t.Fatalf("err = %v, want Invalid with param %q", err, tc.wantParam)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range page {
				ids = append(ids, s.ID)
			}
			if got, want := strings.Join(ids, ","), tc.want; got != want {
				t.Errorf("page = %s, want %s", got, want)
			}
			if got, want := more, tc.wantMore; got != want {
				t.Errorf("more = %v, want %v", got, want)
			}
		})
	}
}
