package deploy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// fakeStore is an in-memory deploy.Store with revisions, like the bucket.
type fakeStore struct {
	mu        sync.Mutex
	services  map[string]state.Service
	revs      map[string]uint64
	order     []string // creation order
	instances map[string][]state.Instance
	rev       uint64

	creates  int
	updates  int
	released []string // IDs of services whose names were released
	// conflicts is how many of the next Update calls fail with a Conflict;
	// before failing, each bumps the stored revision as a concurrent
	// writer would.
	conflicts int
}

func newFakeStore() *fakeStore {
	return &fakeStore{services: map[string]state.Service{}, revs: map[string]uint64{}, instances: map[string][]state.Instance{}}
}

func (f *fakeStore) Create(_ context.Context, s state.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	for _, old := range f.services {
		if old.OwnerID == s.OwnerID && old.Name == s.Name {
			return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "a service named " + s.Name + " already exists"}
		}
	}
	f.rev++
	f.services[s.ID], f.revs[s.ID] = s, f.rev
	f.order = append(f.order, s.ID)
	return nil
}

func (f *fakeStore) Get(_ context.Context, id string) (state.Service, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[id]
	if !ok {
		return state.Service{}, 0, errs.E(errs.NotFound, "service %s not found", id)
	}
	return s, f.revs[id], nil
}

func (f *fakeStore) Update(_ context.Context, s state.Service, rev uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates++
	if f.conflicts > 0 {
		f.conflicts--
		f.rev++
		f.revs[s.ID] = f.rev
		return errs.E(errs.Conflict, "service %s changed meanwhile", s.ID)
	}
	if f.revs[s.ID] != rev {
		return errs.E(errs.Conflict, "service %s: revision %d, not %d", s.ID, f.revs[s.ID], rev)
	}
	f.rev++
	f.services[s.ID], f.revs[s.ID] = s, f.rev
	return nil
}

func (f *fakeStore) List(context.Context) ([]state.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]state.Service, 0, len(f.order))
	for _, id := range f.order {
		out = append(out, f.services[id])
	}
	return out, nil
}

func (f *fakeStore) Instances(_ context.Context, serviceID string) ([]state.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]state.Instance{}, f.instances[serviceID]...), nil
}

func (f *fakeStore) ReleaseName(_ context.Context, s state.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, s.ID)
	return nil
}

// put stores s directly, as if created earlier.
func (f *fakeStore) put(s state.Service) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.services[s.ID], f.revs[s.ID] = s, f.rev
	f.order = append(f.order, s.ID)
}

func (f *fakeStore) service(t *testing.T, id string) state.Service {
	t.Helper()
	s, _, err := f.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakePublisher records what is published.
type fakePublisher struct {
	mu     sync.Mutex
	events []events.Event
	err    error
}

func (p *fakePublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.events = append(p.events, ev)
	return nil
}

var (
	alice = auth.Key{ID: "k-alice", OwnerID: "a11ce0000001"}
	bob   = auth.Key{ID: "k-bob", OwnerID: "b0b000000002"}
	admin = auth.Key{ID: "k-admin", OwnerID: "ad0000000003", Admin: true}
)

func newManager() (*deploy.Manager, *fakeStore, *fakePublisher) {
	st, pub := newFakeStore(), &fakePublisher{}
	return deploy.NewManager(st, catalog.Default(), pub), st, pub
}

func TestValidate(t *testing.T) {
	type req = deploy.CreateRequest
	tests := []struct {
		name string
		// edit changes a valid request.
		edit func(r *req)
		// wantParam is the parameter an Invalid error names; "" means valid.
		wantParam string
		// filled applies the defaults Validate is expected to fill in.
		filled func(r *req)
	}{
		{name: "valid", edit: func(r *req) {}},
		{name: "one character name", edit: func(r *req) { r.Name = "a" }},
		{name: "digits and hyphens", edit: func(r *req) { r.Name = "my-model-2" }},
		{name: "63 characters", edit: func(r *req) { r.Name = strings.Repeat("a", 63) }},
		{name: "empty name", edit: func(r *req) { r.Name = "" }, wantParam: "name"},
		{name: "uppercase", edit: func(r *req) { r.Name = "Chat" }, wantParam: "name"},
		{name: "leading hyphen", edit: func(r *req) { r.Name = "-chat" }, wantParam: "name"},
		{name: "trailing hyphen", edit: func(r *req) { r.Name = "chat-" }, wantParam: "name"},
		{name: "64 characters", edit: func(r *req) { r.Name = strings.Repeat("a", 64) }, wantParam: "name"},
		{name: "dot", edit: func(r *req) { r.Name = "a.b" }, wantParam: "name"},
		{name: "slash", edit: func(r *req) { r.Name = "a/b" }, wantParam: "name"},
		{name: "underscore", edit: func(r *req) { r.Name = "a_b" }, wantParam: "name"},
		{name: "unknown base model", edit: func(r *req) { r.BaseModel = "gpt-5" }, wantParam: "base_model"},
		{name: "empty base model", edit: func(r *req) { r.BaseModel = "" }, wantParam: "base_model"},
		{name: "unknown task", edit: func(r *req) { r.Task = "speech" }, wantParam: "task"},
		{name: "task the model does not support", edit: func(r *req) { r.Task = state.TaskImageGeneration }, wantParam: "task"},
		{
			name:   "default task for a single-task model",
			edit:   func(r *req) { r.BaseModel, r.Task = "stable-diffusion-xl", "" },
			filled: func(r *req) { r.Task = state.TaskImageGeneration },
		},
		{
			name:   "default task for a text model",
			edit:   func(r *req) { r.Task = "" },
			filled: func(r *req) { r.Task = state.TaskTextGeneration },
		},
		{
			name:      "no default task for a multi-task model",
			edit:      func(r *req) { r.BaseModel, r.Task = "qwen2-vl-7b-instruct", "" },
			wantParam: "task",
		},
		{
			name: "second task of a multi-task model",
			edit: func(r *req) { r.BaseModel, r.Task = "qwen2-vl-7b-instruct", state.TaskImageUnderstanding },
		},
		{name: "zero instances means one", edit: func(r *req) { r.Instances = 0 }, filled: func(r *req) { r.Instances = 1 }},
		{name: "the most instances", edit: func(r *req) { r.Instances = deploy.MaxInstances }},
		{name: "negative instances", edit: func(r *req) { r.Instances = -1 }, wantParam: "instances"},
		{name: "too many instances", edit: func(r *req) { r.Instances = deploy.MaxInstances + 1 }, wantParam: "instances"},
		{
			name:   "billing defaults to per-token",
			edit:   func(r *req) { r.BillingMethod = "" },
			filled: func(r *req) { r.BillingMethod = state.BillingPerToken },
		},
		{name: "per-instance-hour billing", edit: func(r *req) { r.BillingMethod = state.BillingPerInstanceHour }},
		{name: "unknown billing", edit: func(r *req) { r.BillingMethod = "free" }, wantParam: "billing_method"},
		{
			name:   "text generation is routed by prefix affinity by default",
			edit:   func(r *req) { r.RoutingPolicy = "" },
			filled: func(r *req) { r.RoutingPolicy = state.RoutingPrefixAffinity },
		},
		{
			name:   "image generation is routed by load by default",
			edit:   func(r *req) { r.BaseModel, r.Task, r.RoutingPolicy = "stable-diffusion-xl", "", "" },
			filled: func(r *req) { r.Task, r.RoutingPolicy = state.TaskImageGeneration, state.RoutingLeastOutstanding },
		},
		{name: "round-robin routing", edit: func(r *req) { r.RoutingPolicy = state.RoutingRoundRobin }},
		{name: "prefix-affinity routing", edit: func(r *req) { r.RoutingPolicy = state.RoutingPrefixAffinity }},
		{name: "unknown routing", edit: func(r *req) { r.RoutingPolicy = "fastest" }, wantParam: "routing_policy"},
	}
	m, _, _ := newManager()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := req{Name: "chat", BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Instances: 2, BillingMethod: state.BillingPerToken,
				RoutingPolicy: state.RoutingLeastOutstanding}
			tc.edit(&r)
			want := r
			if tc.filled != nil {
				tc.filled(&want)
			}
			_, err := m.Validate(context.Background(), alice, &r)
			if tc.wantParam == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if got := r; got != want {
					t.Errorf("after Validate got %+v, want %+v", got, want)
				}
				return
			}
			if got, want := errs.KindOf(err), errs.Invalid; got != want {
				t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
			}
			e, _ := errs.As(err)
			if got, want := e.Param, tc.wantParam; got != want {
				t.Errorf("param = %q, want %q (err %v)", got, want, err)
			}
		})
	}
}

func TestCreate(t *testing.T) {
	m, st, pub := newManager()
	before := time.Now().UTC().Add(-time.Second)
	s, err := m.Create(context.Background(), alice, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct", Instances: 2})
	if err != nil {
		t.Fatal(err)
	}

	want := state.Service{
		ID: s.ID, OwnerID: alice.OwnerID, Name: "chat", AccessName: "u-" + alice.OwnerID + "/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "vllm", Instances: 2,
		Status: state.StatusPending, StatusReason: deploy.PendingReason, BillingMethod: state.BillingPerToken, CreatedAt: s.CreatedAt, UpdatedAt: s.CreatedAt,
		RoutingPolicy: state.RoutingPrefixAffinity,
	}
	// The service carries the model as it was resolved, for its workers
	// and the scaler.
	wantModel := events.ModelSpec{Name: "qwen2.5-7b-instruct", Owner: "catalog", Source: "Qwen/Qwen2.5-7B-Instruct", Engine: "vllm", ContextLength: 32768, GPUs: 1}
	if s.Model == nil || *s.Model != wantModel {
		t.Errorf("model %+v, want %+v", s.Model, wantModel)
	}
	if stored := st.service(t, s.ID); stored.Model == nil || *stored.Model != wantModel {
		t.Errorf("stored model %+v, want %+v", stored.Model, wantModel)
	}
	s.Model = nil
	if got := s; got != want {
		t.Errorf("Create returned\n %+v, want\n %+v", got, want)
	}
	if s.ID == "" {
		t.Error("service has no ID")
	}
	if s.CreatedAt.Before(before) || s.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at = %v, want now in UTC", s.CreatedAt)
	}
	stored := st.service(t, s.ID)
	stored.Model = nil
	if got := stored; got != want {
		t.Errorf("stored\n %+v, want\n %+v", got, want)
	}

	if got, want := len(pub.events), 1; got != want {
		t.Fatalf("published %d events, want %d", got, want)
	}
	ev, ok := pub.events[0].(events.ServiceCreatedV1)
	if !ok {
		t.Fatalf("published %T, want events.ServiceCreatedV1", pub.events[0])
	}
	if ev.ID == "" || ev.OccurredAt.IsZero() {
		t.Errorf("event meta not set: %+v", ev.Meta)
	}
	wantEv := events.ServiceCreatedV1{
		Meta: ev.Meta, ServiceID: s.ID, OwnerID: alice.OwnerID, Name: "chat", AccessName: "u-" + alice.OwnerID + "/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "vllm", Instances: 2,
		BillingMethod: state.BillingPerToken,
	}
	if ev != wantEv {
		t.Errorf("event\n %+v, want\n %+v", ev, wantEv)
	}
	if got, want := ev.Subject(), events.SubjectServiceCreatedV1; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}
}

func TestCreateTwoAreDistinct(t *testing.T) {
	m, _, pub := newManager()
	ctx := context.Background()
	a, err := m.Create(ctx, alice, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Create(ctx, bob, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatalf("another owner's same name: %v", err)
	}
	if a.ID == b.ID || a.AccessName == b.AccessName {
		t.Errorf("two owners' services share an ID or access name: %+v, %+v", a, b)
	}
	if got, want := b.AccessName, "u-"+bob.OwnerID+"/chat"; got != want {
		t.Errorf("access name = %q, want %q", got, want)
	}
	if pub.events[0].EventID() == pub.events[1].EventID() {
		t.Error("two creations published the same event ID")
	}
}

func TestCreateFailures(t *testing.T) {
	t.Run("invalid request stores and publishes nothing", func(t *testing.T) {
		m, st, pub := newManager()
		_, err := m.Create(context.Background(), alice, deploy.CreateRequest{Name: "Bad", BaseModel: "qwen2.5-7b-instruct"})
		if got, want := errs.KindOf(err), errs.Invalid; got != want {
			t.Fatalf("kind = %v, want %v", got, want)
		}
		if st.creates != 0 || len(pub.events) != 0 {
			t.Errorf("creates %d, events %d, want none", st.creates, len(pub.events))
		}
	})
	t.Run("name taken is a conflict and publishes once", func(t *testing.T) {
		m, _, pub := newManager()
		req := deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"}
		if _, err := m.Create(context.Background(), alice, req); err != nil {
			t.Fatal(err)
		}
		_, err := m.Create(context.Background(), alice, req)
		if got, want := errs.KindOf(err), errs.Conflict; got != want {
			t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
		}
		if got, want := len(pub.events), 1; got != want {
			t.Errorf("published %d events, want %d", got, want)
		}
	})
	t.Run("publish failure keeps the service", func(t *testing.T) {
		m, st, pub := newManager()
		pub.err = errs.E(errs.Unavailable, "nats down")
		s, err := m.Create(context.Background(), alice, deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"})
		if err == nil {
			t.Fatal("Create succeeded though the publish failed")
		}
		if !errors.Is(err, pub.err) {
			t.Errorf("error %v does not wrap the publish error", err)
		}
		if s.ID == "" {
			t.Fatal("Create returned no service")
		}
		if got := st.service(t, s.ID); got.Name != "chat" {
			t.Errorf("stored %+v, want the service", got)
		}
	})
}

func TestGet(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s-alice", OwnerID: alice.OwnerID, Name: "chat"})
	tests := []struct {
		name     string
		caller   auth.Key
		id       string
		wantKind errs.Kind // Internal means success here
	}{
		{name: "owner", caller: alice, id: "s-alice"},
		{name: "another owner", caller: bob, id: "s-alice", wantKind: errs.NotFound},
		{name: "admin", caller: admin, id: "s-alice"},
		{name: "missing", caller: alice, id: "s-none", wantKind: errs.NotFound},
		{name: "missing for admin", caller: admin, id: "s-none", wantKind: errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := m.Get(context.Background(), tc.caller, tc.id)
			if tc.wantKind == errs.Internal {
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if got, want := s.ID, tc.id; got != want {
					t.Errorf("ID = %q, want %q", got, want)
				}
				return
			}
			if got, want := errs.KindOf(err), tc.wantKind; got != want {
				t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
			}
			if s != (state.Service{}) {
				t.Errorf("Get returned %+v with the error", s)
			}
		})
	}
}

func TestList(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID})
	st.put(state.Service{ID: "s2", OwnerID: bob.OwnerID})
	st.put(state.Service{ID: "s3", OwnerID: alice.OwnerID})
	tests := []struct {
		name   string
		caller auth.Key
		want   []string
	}{
		{name: "alice", caller: alice, want: []string{"s1", "s3"}},
		{name: "bob", caller: bob, want: []string{"s2"}},
		{name: "admin", caller: admin, want: []string{"s1", "s2", "s3"}},
		{name: "nobody's", caller: auth.Key{OwnerID: "0000000000ff"}, want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list, _, err := m.List(context.Background(), tc.caller, deploy.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if list == nil {
				t.Fatal("List returned nil, want an empty list (it encodes as [])")
			}
			got := []string{}
			for _, s := range list {
				got = append(got, s.ID)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("List = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestInstances(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID})
	st.instances["s1"] = []state.Instance{{ID: "i1", ServiceID: "s1", Status: state.InstanceReady}}

	t.Run("owner who is not admin is forbidden", func(t *testing.T) {
		_, err := m.Instances(context.Background(), alice, "s1")
		if got, want := errs.KindOf(err), errs.Forbidden; got != want {
			t.Errorf("kind = %v, want %v (err %v)", got, want, err)
		}
	})
	t.Run("another non-admin is forbidden", func(t *testing.T) {
		_, err := m.Instances(context.Background(), bob, "s1")
		if got, want := errs.KindOf(err), errs.Forbidden; got != want {
			t.Errorf("kind = %v, want %v (err %v)", got, want, err)
		}
	})
	t.Run("admin sees them", func(t *testing.T) {
		insts, err := m.Instances(context.Background(), admin, "s1")
		if err != nil {
			t.Fatal(err)
		}
		if len(insts) != 1 || insts[0].ID != "i1" {
			t.Errorf("Instances = %+v, want [i1]", insts)
		}
	})
	t.Run("admin, unknown service", func(t *testing.T) {
		_, err := m.Instances(context.Background(), admin, "s-none")
		if got, want := errs.KindOf(err), errs.NotFound; got != want {
			t.Errorf("kind = %v, want %v (err %v)", got, want, err)
		}
	})
}

func instance(id, status, engine string) state.Instance {
	return state.Instance{ID: id, ServiceID: "s1", Status: status, Engine: engine, Endpoint: "http://10.0.0.1:8000/v1"}
}

func TestRefreshReady(t *testing.T) {
	tests := []struct {
		name        string
		desired     int
		status      string
		ready       int // stored ready count before
		instances   []state.Instance
		wantReady   int
		wantStatus  string
		wantEngine  string
		wantUpdates int
	}{
		{
			name: "first ready of two", desired: 2, status: state.StatusDeploying,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceStarting, "vllm")},
			wantReady:  1,
			wantStatus: state.StatusDeploying, wantEngine: "vllm", wantUpdates: 1,
		},
		{
			name: "all ready: running", desired: 2, status: state.StatusDeploying, ready: 1,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceReady, "vllm")},
			wantReady:  2,
			wantStatus: state.StatusRunning, wantEngine: "vllm", wantUpdates: 1,
		},
		{
			name: "more ready than desired: running", desired: 1, status: state.StatusDeploying,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceReady, "vllm")},
			wantReady:  2,
			wantStatus: state.StatusRunning, wantEngine: "vllm", wantUpdates: 1,
		},
		{
			name: "one stopped: back to deploying", desired: 2, status: state.StatusRunning, ready: 2,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceStopped, "vllm")},
			wantReady:  1,
			wantStatus: state.StatusDeploying, wantEngine: "vllm", wantUpdates: 1,
		},
		{
			name: "none left: deploying", desired: 1, status: state.StatusRunning, ready: 1,
			wantReady: 0, wantStatus: state.StatusDeploying, wantEngine: "vllm", wantUpdates: 1,
		},
		{
			name: "engine from the instances", desired: 1, status: state.StatusDeploying,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "simulator")},
			wantReady:  1,
			wantStatus: state.StatusRunning, wantEngine: "simulator", wantUpdates: 1,
		},
		{
			name: "engine not taken from an instance that is not ready", desired: 1, status: state.StatusDeploying,
			instances:  []state.Instance{instance("i1", state.InstanceStarting, "simulator")},
			wantReady:  0,
			wantStatus: state.StatusDeploying, wantEngine: "vllm", wantUpdates: 0,
		},
		{
			name: "nothing changed: no write", desired: 2, status: state.StatusRunning, ready: 2,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm"), instance("i2", state.InstanceReady, "vllm")},
			wantReady:  2,
			wantStatus: state.StatusRunning, wantEngine: "vllm", wantUpdates: 0,
		},
		{
			name: "failed serving again scales to the rest", desired: 2, status: state.StatusFailed,
			instances:  []state.Instance{instance("i1", state.InstanceReady, "vllm")},
			wantReady:  1,
			wantStatus: state.StatusScaling, wantEngine: "vllm", wantUpdates: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, _ := newManager()
			created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
			st.put(state.Service{
				ID: "s1", OwnerID: alice.OwnerID, Engine: "vllm", Instances: tc.desired, ReadyInstances: tc.ready,
				Status: tc.status, CreatedAt: created, UpdatedAt: created,
			})
			st.instances["s1"] = tc.instances
			if err := m.RefreshReady(context.Background(), "s1"); err != nil {
				t.Fatal(err)
			}
			s := st.service(t, "s1")
			if got, want := s.ReadyInstances, tc.wantReady; got != want {
				t.Errorf("ready = %d, want %d", got, want)
			}
			if got, want := s.Status, tc.wantStatus; got != want {
				t.Errorf("status = %q, want %q", got, want)
			}
			if got, want := s.Engine, tc.wantEngine; got != want {
				t.Errorf("engine = %q, want %q", got, want)
			}
			if got, want := st.updates, tc.wantUpdates; got != want {
				t.Errorf("updates = %d, want %d", got, want)
			}
			if tc.wantUpdates > 0 && !s.UpdatedAt.After(created) {
				t.Errorf("updated_at = %v, not moved on from %v", s.UpdatedAt, created)
			}
			if !s.CreatedAt.Equal(created) {
				t.Errorf("created_at changed to %v", s.CreatedAt)
			}

			// Recounting is idempotent: a redelivered event writes nothing.
			if err := m.RefreshReady(context.Background(), "s1"); err != nil {
				t.Fatal(err)
			}
			if got, want := st.updates, tc.wantUpdates; got != want {
				t.Errorf("updates after a second refresh = %d, want %d", got, want)
			}
		})
	}
}

func TestRefreshReadyRetriesOnConflict(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Engine: "vllm", Instances: 1, Status: state.StatusDeploying})
	st.instances["s1"] = []state.Instance{instance("i1", state.InstanceReady, "vllm")}
	st.conflicts = 1

	if err := m.RefreshReady(context.Background(), "s1"); err != nil {
		t.Fatalf("RefreshReady: %v", err)
	}
	if got, want := st.updates, 2; got != want {
		t.Errorf("updates = %d, want %d (one conflict, one success)", got, want)
	}
	s := st.service(t, "s1")
	if s.ReadyInstances != 1 || s.Status != state.StatusRunning {
		t.Errorf("after retry: ready %d status %q, want 1 running", s.ReadyInstances, s.Status)
	}
}

func TestRefreshReadyGivesUp(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Instances: 1, Status: state.StatusDeploying})
	st.instances["s1"] = []state.Instance{instance("i1", state.InstanceReady, "vllm")}
	st.conflicts = 1000

	err := m.RefreshReady(context.Background(), "s1")
	if err == nil {
		t.Fatal("RefreshReady succeeded though every update conflicted")
	}
	if st.updates < 2 || st.updates > 100 {
		t.Errorf("updates = %d, want a bounded number of retries", st.updates)
	}
}

func TestRefreshReadyMissingService(t *testing.T) {
	m, st, _ := newManager()
	if err := m.RefreshReady(context.Background(), "s-gone"); err != nil {
		t.Errorf("RefreshReady of a deleted service = %v, want nil", err)
	}
	if st.updates != 0 {
		t.Errorf("updates = %d, want 0", st.updates)
	}
}

func TestAccessName(t *testing.T) {
	if got, want := deploy.AccessName("8105f7322477", "test"), "u-8105f7322477/test"; got != want {
		t.Errorf("AccessName = %q, want %q", got, want)
	}
}

// ownModels is a deploy.Models with one model of alice's beside the catalog.
type ownModels struct{ catalog deploy.Models }

func (o ownModels) Get(ctx context.Context, caller auth.Key, name string) (models.Model, error) {
	if name == "tiny" && caller.OwnerID == alice.OwnerID {
		return models.Model{Name: "tiny", Owner: alice.OwnerID, Source: "file:///models/tiny.gguf", Format: "gguf", Engine: "ollama",
			Tasks: []string{state.TaskTextGeneration}, ContextLength: 2048, MemoryBytes: 22 << 20}, nil
	}
	return o.catalog.Get(ctx, caller, name)
}

// TestCreateWithRegisteredModel: a service of an owner's own model
// carries that model's spec; another owner cannot deploy it, and is told
// so as for any unknown model.
func TestCreateWithRegisteredModel(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	plain := deploy.NewManager(st, catalog.Default(), pub)
	m := deploy.NewManager(st, catalog.Default(), pub, deploy.WithModels(ownModels{catalog: modelsOf(plain)}))
	s, err := m.Create(context.Background(), alice, deploy.CreateRequest{Name: "mine", BaseModel: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	want := events.ModelSpec{Name: "tiny", Owner: alice.OwnerID, Source: "file:///models/tiny.gguf", Format: "gguf", Engine: "ollama", ContextLength: 2048, MemoryBytes: 22 << 20}
	if s.BaseModel != "tiny" || s.Engine != "ollama" || s.Task != state.TaskTextGeneration || s.Model == nil || *s.Model != want {
		t.Errorf("service %+v with model %+v, want model %+v", s, s.Model, want)
	}
	_, err = m.Create(context.Background(), bob, deploy.CreateRequest{Name: "theirs", BaseModel: "tiny"})
	if e, ok := errs.As(err); !ok || e.Kind != errs.Invalid || e.Param != "base_model" || !strings.Contains(e.Msg, `unknown base model "tiny"`) {
		t.Errorf("bob deploys alice's model: %v", err)
	}
	if _, err := plain.Create(context.Background(), alice, deploy.CreateRequest{Name: "other", BaseModel: "tiny"}); errs.KindOf(err) != errs.Invalid {
		t.Errorf("without the registry, registered models are unknown: %v", err)
	}
}

// modelsOf is a Manager's own model lookup: the catalog alone.
func modelsOf(m *deploy.Manager) deploy.Models {
	return catalogModels{m.Catalog()}
}

type catalogModels struct{ list []catalog.Model }

func (c catalogModels) Get(_ context.Context, _ auth.Key, name string) (models.Model, error) {
	for _, m := range c.list {
		if m.Name == name {
			return models.FromCatalog(m), nil
		}
	}
	return models.Model{}, errs.E(errs.NotFound, "model %s not found", name)
}
