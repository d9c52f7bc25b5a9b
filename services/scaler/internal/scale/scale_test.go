package scale_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeStore is an in-memory scale.Store.
type fakeStore struct {
	mu         sync.Mutex
	services   map[string]state.Service
	workers    []state.Worker
	placements map[string]state.Placement // by instance key
	instances  map[string]state.Instance  // by instance key
	unplaced   []state.Placement
	// listing counts Placements calls in progress, to catch reconciles
	// that overlap.
	listing, overlaps int
}

func newFakeStore() *fakeStore {
	return &fakeStore{services: map[string]state.Service{}, placements: map[string]state.Placement{}, instances: map[string]state.Instance{}}
}

func (f *fakeStore) ServiceInstances(_ context.Context, serviceID string) ([]state.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []state.Instance
	for _, in := range f.instances {
		if in.ServiceID == serviceID {
			out = append(out, in)
		}
	}
	return out, nil
}

func (f *fakeStore) ServicePlacements(_ context.Context, serviceID string) ([]state.Placement, error) {
	f.mu.Lock()
	f.listing++
	if f.listing > 1 {
		f.overlaps++
	}
	var out []state.Placement
	for _, p := range f.placements {
		if p.ServiceID == serviceID {
			out = append(out, p)
		}
	}
	f.mu.Unlock()
	// Give a concurrent reconcile the chance to read the same list.
	time.Sleep(time.Millisecond)
	f.mu.Lock()
	f.listing--
	f.mu.Unlock()
	return out, nil
}

func (f *fakeStore) Instances(context.Context) ([]state.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.instances)), nil
}

func (f *fakeStore) DeleteInstance(_ context.Context, serviceID, instanceID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.instances, state.InstanceKey(serviceID, instanceID))
	return nil
}

func (f *fakeStore) Service(_ context.Context, id string) (state.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[id]
	if !ok {
		return state.Service{}, errs.E(errs.NotFound, "service %s not found", id)
	}
	return s, nil
}

func (f *fakeStore) Services(context.Context) ([]state.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.services)), nil
}

func (f *fakeStore) LiveWorkers(context.Context) ([]state.Worker, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.workers), nil
}

func (f *fakeStore) Placements(context.Context) ([]state.Placement, error) {
	f.mu.Lock()
	f.listing++
	if f.listing > 1 {
		f.overlaps++
	}
	out := slices.Collect(maps.Values(f.placements))
	f.mu.Unlock()
	// Give a concurrent reconcile the chance to read the same list.
	time.Sleep(time.Millisecond)
	f.mu.Lock()
	f.listing--
	f.mu.Unlock()
	return out, nil
}

func (f *fakeStore) Place(_ context.Context, p state.Placement) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.placements[state.InstanceKey(p.ServiceID, p.InstanceID)] = p
	return nil
}

func (f *fakeStore) Unplace(_ context.Context, p state.Placement) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.placements, state.InstanceKey(p.ServiceID, p.InstanceID))
	f.unplaced = append(f.unplaced, p)
	return nil
}

// place stores a placement directly, as if made earlier.
func (f *fakeStore) place(serviceID, instanceID, workerID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.placements[state.InstanceKey(serviceID, instanceID)] = state.Placement{InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID}
}

// placed returns the placements of a service.
func (f *fakeStore) placed(serviceID string) []state.Placement {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []state.Placement
	for _, p := range f.placements {
		if p.ServiceID == serviceID {
			out = append(out, p)
		}
	}
	return out
}

// perWorker counts placements by worker.
func (f *fakeStore) perWorker() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for _, p := range f.placements {
		out[p.WorkerID]++
	}
	return out
}

// fakePublisher records events; it fails the calls whose 1-based number
// is in failOn.
type fakePublisher struct {
	mu     sync.Mutex
	n      int
	failOn []int
	events []events.Event
}

var errPublish = errors.New("nats: no responders")

func (p *fakePublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if slices.Contains(p.failOn, p.n) {
		return errPublish
	}
	p.events = append(p.events, ev)
	return nil
}

func (p *fakePublisher) placed() []events.InstancePlacedV1 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []events.InstancePlacedV1
	for _, ev := range p.events {
		if ev, ok := ev.(events.InstancePlacedV1); ok {
			out = append(out, ev)
		}
	}
	return out
}

func service(id string, instances int) state.Service {
	return state.Service{
		ID: id, OwnerID: "a11ce0000001", Name: id, AccessName: "u-a11ce0000001/" + id,
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "vllm",
		Instances: instances, Status: state.StatusDeploying,
	}
}

func worker(id string, capacity int) state.Worker {
	return state.Worker{ID: id, Capacity: capacity, BeatAt: time.Now().UTC()}
}

func TestReconcileServicePlacesMissing(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	svc := service("s1", 3)
	st.services[svc.ID] = svc
	st.workers = []state.Worker{worker("w1", 4), worker("w2", 4)}
	st.place(svc.ID, "i-old", "w1")
	before := time.Now().UTC()

	if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), svc.ID); err != nil {
		t.Fatalf("ReconcileService: %v", err)
	}

	if got, want := len(st.placed(svc.ID)), 3; got != want {
		t.Fatalf("service has %d placements, want %d", got, want)
	}
	evs := pub.placed()
	if got, want := len(evs), 2; got != want {
		t.Fatalf("published %d events, want %d", got, want)
	}
	seen := map[string]bool{}
	for _, ev := range evs {
		p, ok := st.placements[state.InstanceKey(svc.ID, ev.InstanceID)]
		if !ok {
			t.Fatalf("event for instance %q, which is not placed", ev.InstanceID)
		}
		if ev.InstanceID == "" || ev.InstanceID == "i-old" || seen[ev.InstanceID] {
			t.Errorf("instance ID %q is empty, old or repeated", ev.InstanceID)
		}
		seen[ev.InstanceID] = true
		if ev.ID == "" || ev.OccurredAt.IsZero() {
			t.Errorf("event meta not set: %+v", ev.Meta)
		}
		want := events.InstancePlacedV1{
			Meta: ev.Meta, InstanceID: ev.InstanceID, ServiceID: svc.ID, WorkerID: p.WorkerID,
			AccessName: svc.AccessName, BaseModel: svc.BaseModel, Task: svc.Task, Engine: svc.Engine,
		}
		if ev != want {
			t.Errorf("event\n %+v, want\n %+v", ev, want)
		}
		if got, want := ev.Subject(), "scale.instance.placed.v1."+p.WorkerID; got != want {
			t.Errorf("subject = %q, want %q", got, want)
		}
		wantP := state.Placement{
			InstanceID: ev.InstanceID, ServiceID: svc.ID, WorkerID: p.WorkerID, AccessName: svc.AccessName,
			BaseModel: svc.BaseModel, Task: svc.Task, Engine: svc.Engine, PlacedAt: p.PlacedAt,
		}
		if p != wantP {
			t.Errorf("placement\n %+v, want\n %+v", p, wantP)
		}
		if p.PlacedAt.Before(before) || p.PlacedAt.Location() != time.UTC {
			t.Errorf("placed_at = %v, want now in UTC", p.PlacedAt)
		}
	}
	if evs[0].ID == evs[1].ID {
		t.Error("two events share an event ID")
	}

	// A second reconcile finds nothing missing.
	if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), svc.ID); err != nil {
		t.Fatal(err)
	}
	if got, want := len(pub.placed()), 2; got != want {
		t.Errorf("second reconcile published; %d events, want %d", got, want)
	}
}

// holding places instances of another service on workers, and has each
// worker's heartbeat list them, as it would once they run.
func holding(st *fakeStore, perWorker map[string]int) {
	for w, n := range perWorker {
		for i := range n {
			id := fmt.Sprintf("i-%s-%d", w, i)
			st.place("other", id, w)
			for j := range st.workers {
				if st.workers[j].ID == w {
					st.workers[j].Instances = append(st.workers[j].Instances, id)
					st.workers[j].Held = append(st.workers[j].Held, state.Held{InstanceID: id, ServiceID: "other"})
				}
			}
		}
	}
}

// Instances are spread by the room the workers' heartbeats report, less
// what was placed since that they do not list yet.
func TestReconcileServiceSpreads(t *testing.T) {
	tests := []struct {
		name      string
		workers   []state.Worker
		existing  map[string]int // placements of another service, by worker
		instances int
		want      map[string]int // all placements by worker, afterwards
	}{
		{
			name:      "equal workers share",
			workers:   []state.Worker{worker("w1", 4), worker("w2", 4)},
			instances: 4,
			want:      map[string]int{"w1": 2, "w2": 2},
		},
		{
			name:      "more free room first, ties to the first listed",
			workers:   []state.Worker{worker("w1", 2), worker("w2", 6)},
			instances: 5,
			want:      map[string]int{"w1": 1, "w2": 4},
		},
		{
			name:      "free capacity, not capacity",
			workers:   []state.Worker{worker("w1", 4), worker("w2", 4)},
			existing:  map[string]int{"w1": 3},
			instances: 3,
			want:      map[string]int{"w1": 3, "w2": 3},
		},
		{
			name:      "full worker skipped",
			workers:   []state.Worker{worker("w1", 2), worker("w2", 3)},
			existing:  map[string]int{"w1": 2},
			instances: 3,
			want:      map[string]int{"w1": 2, "w2": 3},
		},
		{
			name:      "zero-capacity worker skipped",
			workers:   []state.Worker{worker("w0", 0), worker("w1", 1)},
			instances: 1,
			want:      map[string]int{"w1": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, pub := newFakeStore(), &fakePublisher{}
			st.services["s1"] = service("s1", tc.instances)
			st.workers = tc.workers
			holding(st, tc.existing)
			if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1"); err != nil {
				t.Fatalf("ReconcileService: %v", err)
			}
			if got := st.perWorker(); !maps.Equal(got, tc.want) {
				t.Errorf("placements by worker = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReconcileServiceNoRoom(t *testing.T) {
	tests := []struct {
		name     string
		workers  []state.Worker
		existing map[string]int
	}{
		{name: "no live workers"},
		{name: "all full", workers: []state.Worker{worker("w1", 1), worker("w2", 2)}, existing: map[string]int{"w1": 1, "w2": 2}},
		{name: "no capacity", workers: []state.Worker{worker("w1", 0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, pub := newFakeStore(), &fakePublisher{}
			st.services["s1"] = service("s1", 2)
			st.workers = tc.workers
			holding(st, tc.existing)
			err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1")
			if got, want := errs.KindOf(err), errs.Unavailable; err == nil || got != want {
				t.Fatalf("err = %v (kind %v), want %v", err, got, want)
			}
			if got := st.placed("s1"); len(got) != 0 {
				t.Errorf("placed %v, want nothing", got)
			}
			if got := pub.placed(); len(got) != 0 {
				t.Errorf("published %v, want nothing", got)
			}
		})
	}
}

func TestReconcileServicePartlyFull(t *testing.T) {
	// Room for one of two: that one is placed and announced, and the
	// error says the rest waits.
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 1)}
	err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1")
	if got, want := errs.KindOf(err), errs.Unavailable; err == nil || got != want {
		t.Fatalf("err = %v (kind %v), want %v", err, got, want)
	}
	if got, want := len(st.placed("s1")), 1; got != want {
		t.Errorf("placed %d, want %d", got, want)
	}
	if got, want := len(pub.placed()), 1; got != want {
		t.Errorf("published %d, want %d", got, want)
	}
}

// A placement whose announcement failed stays placed (JetStream may have
// stored the event all the same) and the reconcile stops there; the next
// fills the rest.
func TestReconcileServicePublishFailure(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{failOn: []int{2}}
	st.services["s1"] = service("s1", 3)
	st.workers = []state.Worker{worker("w1", 10)}
	sc := scale.New(st, pub, quiet)
	err := sc.ReconcileService(context.Background(), "s1")
	if !errors.Is(err, errPublish) {
		t.Fatalf("err = %v, want the publish error", err)
	}
	if got := len(pub.placed()); got != 1 {
		t.Fatalf("published %d events, want 1", got)
	}
	if got := len(st.placed("s1")); got != 2 {
		t.Fatalf("%d placements, want 2: the announced one and the one whose announcement failed", got)
	}
	if len(st.unplaced) != 0 {
		t.Errorf("unplaced %+v, want nothing taken back", st.unplaced)
	}
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got, want := len(st.placed("s1")), 3; got != want {
		t.Errorf("after a second reconcile %d placements, want %d", got, want)
	}
}

func TestReconcileServiceSkipsAndFails(t *testing.T) {
	tests := []struct {
		name     string
		svc      state.Service
		id       string
		wantKind errs.Kind
		wantErr  bool
	}{
		{name: "failed service", svc: func() state.Service { s := service("s1", 2); s.Status = state.StatusFailed; return s }(), id: "s1"},
		{name: "running with all placed", svc: func() state.Service { s := service("s1", 0); s.Status = state.StatusRunning; return s }(), id: "s1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, pub := newFakeStore(), &fakePublisher{}
			st.services[tc.svc.ID] = tc.svc
			st.workers = []state.Worker{worker("w1", 10)}
			err := scale.New(st, pub, quiet).ReconcileService(context.Background(), tc.id)
			if tc.wantErr {
				if got, want := errs.KindOf(err), tc.wantKind; err == nil || got != want {
					t.Fatalf("err = %v (kind %v), want %v", err, got, want)
				}
			} else if err != nil {
				t.Fatalf("ReconcileService: %v", err)
			}
			if got := st.placed(tc.svc.ID); len(got) != 0 {
				t.Errorf("placed %v, want nothing", got)
			}
			if got := pub.placed(); len(got) != 0 {
				t.Errorf("published %v, want nothing", got)
			}
		})
	}
}

func TestReconcileAll(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	failed := service("s-failed", 2)
	failed.Status = state.StatusFailed
	for _, s := range []state.Service{service("s1", 2), service("s2", 1), service("s3", 3), failed} {
		st.services[s.ID] = s
	}
	st.place("s3", "i-old", "w1")
	st.workers = []state.Worker{worker("w1", 3), worker("w2", 3)}

	if err := scale.New(st, pub, quiet).ReconcileAll(context.Background()); err != nil {
		t.Fatalf("ReconcileAll: %v", err)
	}
	want := map[string]int{"s1": 2, "s2": 1, "s3": 3, "s-failed": 0}
	for id, n := range want {
		if got := len(st.placed(id)); got != n {
			t.Errorf("service %s has %d placements, want %d", id, got, n)
		}
	}
	if got, want := len(pub.placed()), 5; got != want {
		t.Errorf("published %d events, want %d", got, want)
	}
	if got, want := st.perWorker(), map[string]int{"w1": 3, "w2": 3}; !maps.Equal(got, want) {
		t.Errorf("placements by worker = %v, want %v", got, want)
	}
	for _, ev := range pub.placed() {
		if got, want := ev.AccessName, st.services[ev.ServiceID].AccessName; got != want {
			t.Errorf("event for %s names %q, want %q", ev.ServiceID, got, want)
		}
	}
}

func TestReconcileServiceConcurrent(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 3)
	st.workers = []state.Worker{worker("w1", 10), worker("w2", 10)}
	sc := scale.New(st, pub, quiet)

	var wg sync.WaitGroup
	errc := make(chan error, 10)
	for range 10 {
		wg.Go(func() { errc <- sc.ReconcileService(context.Background(), "s1") })
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("ReconcileService: %v", err)
		}
	}
	if got, want := len(st.placed("s1")), 3; got != want {
		t.Errorf("placed %d instances, want %d", got, want)
	}
	if got, want := len(pub.placed()), 3; got != want {
		t.Errorf("published %d events, want %d", got, want)
	}
	if st.overlaps != 0 {
		t.Errorf("%d reconciles read the placements while another was placing", st.overlaps)
	}
}
