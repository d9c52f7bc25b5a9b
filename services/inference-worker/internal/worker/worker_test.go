package worker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeInstance is an engine instance served by an httptest server whose
// /health answers the engine's current health status.
type fakeInstance struct {
	srv     *httptest.Server
	stopped atomic.Bool
}

func (i *fakeInstance) Endpoint() string  { return i.srv.URL + "/v1" }
func (i *fakeInstance) HealthURL() string { return i.srv.URL + "/health" }
func (i *fakeInstance) Stop(context.Context) error {
	i.stopped.Store(true)
	i.srv.Close()
	return nil
}

// fakeEngine starts fakeInstances and records the specs it was given.
type fakeEngine struct {
	health atomic.Int32 // the status /health answers; 200 unless set
	err    error        // Start fails with it when set

	mu        sync.Mutex
	specs     []engine.Spec
	instances []*fakeInstance
}

func newFakeEngine() *fakeEngine {
	e := &fakeEngine{}
	e.health.Store(http.StatusOK)
	return e
}

func (e *fakeEngine) Name() string { return "fake" }

func (e *fakeEngine) Start(_ context.Context, spec engine.Spec) (engine.Instance, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.specs = append(e.specs, spec)
	if e.err != nil {
		return nil, e.err
	}
	inst := &fakeInstance{}
	inst.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(e.health.Load()))
	}))
	e.instances = append(e.instances, inst)
	return inst, nil
}

func (e *fakeEngine) started() []*fakeInstance {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.instances)
}

func (e *fakeEngine) closeAll() {
	for _, inst := range e.started() {
		inst.srv.Close()
	}
}

// fakeStore records instances and heartbeats.
type fakeStore struct {
	mu        sync.Mutex
	instances map[string]state.Instance // by instance key
	puts      int
	deleted   []string
	beats     []state.Worker
}

func newFakeStore() *fakeStore { return &fakeStore{instances: map[string]state.Instance{}} }

func (f *fakeStore) PutInstance(_ context.Context, in state.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts++
	f.instances[state.InstanceKey(in.ServiceID, in.ID)] = in
	return nil
}

func (f *fakeStore) DeleteInstance(_ context.Context, serviceID, instanceID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := state.InstanceKey(serviceID, instanceID)
	delete(f.instances, key)
	f.deleted = append(f.deleted, key)
	return nil
}

func (f *fakeStore) Beat(_ context.Context, w state.Worker) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beats = append(f.beats, w)
	return nil
}

func (f *fakeStore) records() map[string]state.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.instances)
}

// fakePublisher records events.
type fakePublisher struct {
	mu     sync.Mutex
	events []events.Event
}

func (p *fakePublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return nil
}

func (p *fakePublisher) published() []events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.events)
}

const workerID = "w1"

func placement(id string) events.InstancePlacedV1 {
	return events.InstancePlacedV1{
		Meta: events.NewMeta(), InstanceID: id, ServiceID: "s1", WorkerID: workerID,
		AccessName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "fake",
	}
}

type fixture struct {
	w   *worker.Worker
	eng *fakeEngine
	st  *fakeStore
	pub *fakePublisher
}

func newFixture(t *testing.T, capacity int) fixture {
	f := fixture{eng: newFakeEngine(), st: newFakeStore(), pub: &fakePublisher{}}
	f.w = worker.New(workerID, capacity, f.eng, f.st, f.pub, quiet)
	t.Cleanup(f.eng.closeAll)
	return f
}

// start calls StartInstance with a deadline that bounds the readiness wait.
func (f fixture) start(p events.InstancePlacedV1, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return f.w.StartInstance(ctx, p)
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartInstance(t *testing.T) {
	f := newFixture(t, 2)
	p := placement("i-1")
	before := time.Now().UTC()
	if err := f.start(p, 5*time.Second); err != nil {
		t.Fatalf("StartInstance: %v", err)
	}

	if got, want := f.eng.specs, []engine.Spec{{InstanceID: "i-1", ServedName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task}}; !slices.Equal(got, want) {
		t.Errorf("engine started %+v, want %+v", got, want)
	}
	inst := f.eng.started()[0]
	recs := f.st.records()
	rec, ok := recs[state.InstanceKey("s1", "i-1")]
	if !ok || len(recs) != 1 {
		t.Fatalf("records %+v, want one for i-1", recs)
	}
	want := state.Instance{
		ID: "i-1", ServiceID: "s1", WorkerID: workerID, Engine: "fake", Endpoint: inst.Endpoint(),
		Status: state.InstanceReady, StartedAt: rec.StartedAt, UpdatedAt: rec.UpdatedAt,
	}
	if rec != want {
		t.Errorf("record\n %+v, want\n %+v", rec, want)
	}
	if !strings.HasSuffix(rec.Endpoint, "/v1") {
		t.Errorf("endpoint %q does not end in /v1", rec.Endpoint)
	}
	if rec.StartedAt.Before(before) || rec.StartedAt.Location() != time.UTC || rec.UpdatedAt.Before(rec.StartedAt) {
		t.Errorf("started_at %v updated_at %v, want now in UTC", rec.StartedAt, rec.UpdatedAt)
	}

	evs := f.pub.published()
	if len(evs) != 1 {
		t.Fatalf("published %d events, want 1", len(evs))
	}
	ev, ok := evs[0].(events.InstanceReadyV1)
	if !ok {
		t.Fatalf("published %T, want events.InstanceReadyV1", evs[0])
	}
	if ev.ID == "" {
		t.Error("event has no ID")
	}
	wantEv := events.InstanceReadyV1{Meta: ev.Meta, InstanceID: "i-1", ServiceID: "s1", WorkerID: workerID, Engine: "fake", Endpoint: inst.Endpoint()}
	if ev != wantEv {
		t.Errorf("event\n %+v, want\n %+v", ev, wantEv)
	}
	if inst.stopped.Load() {
		t.Error("a ready instance was stopped")
	}
}

func TestStartInstanceAgain(t *testing.T) {
	f := newFixture(t, 1)
	p := placement("i-1")
	if err := f.start(p, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A redelivered placement, even on a full worker, re-announces.
	if err := f.start(p, 5*time.Second); err != nil {
		t.Fatalf("repeated placement: %v", err)
	}
	if got, want := len(f.eng.specs), 1; got != want {
		t.Errorf("engine started %d instances, want %d", got, want)
	}
	if got, want := f.st.puts, 2; got != want {
		t.Errorf("recorded %d times, want %d", got, want)
	}
	evs := f.pub.published()
	if len(evs) != 2 {
		t.Fatalf("published %d events, want 2", len(evs))
	}
	first, second := evs[0].(events.InstanceReadyV1), evs[1].(events.InstanceReadyV1)
	if first.ID == second.ID {
		t.Error("the re-announcement repeats the event ID")
	}
	second.Meta = first.Meta
	if first != second {
		t.Errorf("re-announced\n %+v, want as first\n %+v", second, first)
	}
}

func TestStartInstanceRejects(t *testing.T) {
	tests := []struct {
		name     string
		prepare  func(t *testing.T, f fixture)
		p        events.InstancePlacedV1
		wantKind errs.Kind
		starts   int // engine starts expected in all
	}{
		{
			name:     "another worker's placement",
			prepare:  func(*testing.T, fixture) {},
			p:        func() events.InstancePlacedV1 { p := placement("i-1"); p.WorkerID = "w2"; return p }(),
			wantKind: errs.Invalid,
		},
		{
			name: "capacity reached",
			prepare: func(t *testing.T, f fixture) {
				if err := f.start(placement("i-1"), 5*time.Second); err != nil {
					t.Fatal(err)
				}
			},
			p:        placement("i-2"),
			wantKind: errs.Unavailable,
			starts:   1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 1)
			tc.prepare(t, f)
			evsBefore := len(f.pub.published())
			err := f.start(tc.p, 5*time.Second)
			if got, want := errs.KindOf(err), tc.wantKind; err == nil || got != want {
				t.Fatalf("err = %v (kind %v), want %v", err, got, want)
			}
			if got, want := len(f.eng.specs), tc.starts; got != want {
				t.Errorf("engine started %d instances, want %d", got, want)
			}
			if _, ok := f.st.records()[state.InstanceKey(tc.p.ServiceID, tc.p.InstanceID)]; ok {
				t.Error("the rejected instance was recorded")
			}
			if got := len(f.pub.published()); got != evsBefore {
				t.Errorf("published %d more events, want none", got-evsBefore)
			}
		})
	}
}

func TestStartInstanceFailures(t *testing.T) {
	t.Run("never ready", func(t *testing.T) {
		f := newFixture(t, 1)
		f.eng.health.Store(http.StatusServiceUnavailable)
		start := time.Now()
		err := f.start(placement("i-1"), 150*time.Millisecond)
		if err == nil {
			t.Fatal("StartInstance succeeded for an instance that never got ready")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want the readiness deadline", err)
		}
		if elapsed := time.Since(start); elapsed > 3*time.Second {
			t.Errorf("gave up after %v, long past the deadline", elapsed)
		}
		insts := f.eng.started()
		if len(insts) != 1 || !insts[0].stopped.Load() {
			t.Errorf("started %d instances, want one, stopped", len(insts))
		}
		if got := f.st.records(); len(got) != 0 {
			t.Errorf("recorded %+v, want nothing", got)
		}
		if got := f.pub.published(); len(got) != 0 {
			t.Errorf("published %+v, want nothing", got)
		}
		// The slot is free again: the placement can start once the
		// engine is healthy.
		f.eng.health.Store(http.StatusOK)
		if err := f.start(placement("i-1"), 5*time.Second); err != nil {
			t.Fatalf("second try: %v", err)
		}
	})
	t.Run("engine fails to start", func(t *testing.T) {
		f := newFixture(t, 1)
		f.eng.err = errors.New("no free port in 9000-9000")
		err := f.start(placement("i-1"), 5*time.Second)
		if !errors.Is(err, f.eng.err) {
			t.Fatalf("err = %v, want the engine's error", err)
		}
		if got := f.st.records(); len(got) != 0 {
			t.Errorf("recorded %+v, want nothing", got)
		}
		if err := f.w.Heartbeat(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, want := f.st.beats[0].Running, 0; got != want {
			t.Errorf("running = %d after a failed start, want %d", got, want)
		}
	})
}

func TestStartInstanceWhileStarting(t *testing.T) {
	f := newFixture(t, 2)
	f.eng.health.Store(http.StatusServiceUnavailable)
	done := make(chan error, 1)
	go func() { done <- f.start(placement("i-1"), 5*time.Second) }()
	eventually(t, "the engine starts i-1", func() bool { return len(f.eng.started()) == 1 })

	// The same placement, redelivered meanwhile, does not start another.
	err := f.start(placement("i-1"), 5*time.Second)
	if got, want := errs.KindOf(err), errs.Unavailable; err == nil || got != want {
		t.Errorf("err = %v (kind %v), want %v", err, got, want)
	}
	// A starting instance holds its slot.
	if err := f.w.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := f.st.beats[0].Running, 1; got != want {
		t.Errorf("running = %d while one starts, want %d", got, want)
	}

	f.eng.health.Store(http.StatusOK)
	if err := <-done; err != nil {
		t.Fatalf("first start: %v", err)
	}
	if got, want := len(f.eng.started()), 1; got != want {
		t.Errorf("engine started %d instances, want %d", got, want)
	}
}

func TestShutdownWhileStarting(t *testing.T) {
	f := newFixture(t, 2)
	f.eng.health.Store(http.StatusServiceUnavailable)
	done := make(chan error, 1)
	go func() { done <- f.start(placement("i-1"), 5*time.Second) }()
	eventually(t, "the engine starts i-1", func() bool { return len(f.eng.started()) == 1 })

	f.w.Shutdown(context.Background(), "worker stopped")
	f.eng.health.Store(http.StatusOK)
	if err := <-done; err == nil {
		t.Error("a start that finished after Shutdown succeeded")
	}
	if !f.eng.started()[0].stopped.Load() {
		t.Error("the instance outlived the worker")
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("recorded %+v, want nothing", got)
	}
	for _, ev := range f.pub.published() {
		if _, ok := ev.(events.InstanceReadyV1); ok {
			t.Errorf("announced %+v after Shutdown", ev)
		}
	}
}

func TestHeartbeat(t *testing.T) {
	f := newFixture(t, 3)
	ctx := context.Background()
	for _, id := range []string{"", "i-1", "i-2"} {
		if id != "" {
			if err := f.start(placement(id), 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.w.Heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := len(f.st.beats), 3; got != want {
		t.Fatalf("%d beats, want %d", got, want)
	}
	for i, b := range f.st.beats {
		want := state.Worker{ID: workerID, Capacity: 3, Running: i, BeatAt: b.BeatAt}
		if b != want {
			t.Errorf("beat %d = %+v, want %+v", i, b, want)
		}
		if b.BeatAt.IsZero() || b.BeatAt.Location() != time.UTC {
			t.Errorf("beat %d at %v, want now in UTC", i, b.BeatAt)
		}
	}
	if got, want := f.w.ID(), workerID; got != want {
		t.Errorf("ID = %q, want %q", got, want)
	}
}

func TestShutdown(t *testing.T) {
	f := newFixture(t, 3)
	for _, id := range []string{"i-1", "i-2"} {
		if err := f.start(placement(id), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	readies := len(f.pub.published())

	f.w.Shutdown(context.Background(), "worker stopped")

	for i, inst := range f.eng.started() {
		if !inst.stopped.Load() {
			t.Errorf("instance %d not stopped", i)
		}
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("records left: %+v", got)
	}
	deleted := slices.Sorted(slices.Values(f.st.deleted))
	if got, want := deleted, []string{"s1.i-1", "s1.i-2"}; !slices.Equal(got, want) {
		t.Errorf("deleted %v, want %v", got, want)
	}
	var stopped []string
	for _, ev := range f.pub.published()[readies:] {
		s, ok := ev.(events.InstanceStoppedV1)
		if !ok {
			t.Fatalf("published %T, want events.InstanceStoppedV1", ev)
		}
		want := events.InstanceStoppedV1{Meta: s.Meta, InstanceID: s.InstanceID, ServiceID: "s1", WorkerID: workerID, Reason: "worker stopped"}
		if s != want || s.ID == "" {
			t.Errorf("event\n %+v, want\n %+v", s, want)
		}
		stopped = append(stopped, s.InstanceID)
	}
	slices.Sort(stopped)
	if got, want := stopped, []string{"i-1", "i-2"}; !slices.Equal(got, want) {
		t.Errorf("announced stopped %v, want %v", got, want)
	}

	if err := f.w.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := f.st.beats[len(f.st.beats)-1].Running, 0; got != want {
		t.Errorf("running = %d after Shutdown, want %d", got, want)
	}
	// A second Shutdown has nothing left to stop.
	n := len(f.pub.published())
	f.w.Shutdown(context.Background(), "again")
	if got := len(f.pub.published()); got != n {
		t.Errorf("a second Shutdown published %d events", got-n)
	}
}
