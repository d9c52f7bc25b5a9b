package worker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeInstance is an engine instance whose events the test sends.
type fakeInstance struct {
	spec     engine.Spec
	endpoint string
	events   chan engine.Event
	stopped  atomic.Bool
	mu       sync.Mutex // orders send and Stop
}

func (i *fakeInstance) Engine() string              { return "fake" }
func (i *fakeInstance) Endpoint() string            { return i.endpoint }
func (i *fakeInstance) Events() <-chan engine.Event { return i.events }
func (i *fakeInstance) Stop(context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.stopped.Swap(true) {
		close(i.events)
	}
	return nil
}

// send reports ev unless the instance was stopped.
func (i *fakeInstance) send(ev engine.Event) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.stopped.Load() {
		i.events <- ev
	}
}

// fakeEngine starts fakeInstances and records the specs it was given.
type fakeEngine struct {
	readyAtOnce bool          // new instances report ready at once
	err         error         // Start fails with it when set
	gate        chan struct{} // Start waits for it when set

	mu        sync.Mutex
	specs     []engine.Spec
	instances []*fakeInstance
}

func (e *fakeEngine) Start(_ context.Context, spec engine.Spec) (engine.Instance, error) {
	if e.gate != nil {
		<-e.gate
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.specs = append(e.specs, spec)
	if e.err != nil {
		return nil, e.err
	}
	inst := &fakeInstance{spec: spec, endpoint: fmt.Sprintf("http://10.0.3.7:%d/v1", 9100+len(e.instances)), events: make(chan engine.Event, 16)}
	if e.readyAtOnce {
		inst.events <- engine.Event{State: engine.Ready}
	}
	e.instances = append(e.instances, inst)
	return inst, nil
}

func (e *fakeEngine) started() []*fakeInstance {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.instances)
}

func (e *fakeEngine) startedSpecs() []engine.Spec {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.specs)
}

// fakeStore records instances and heartbeats.
type fakeStore struct {
	mu        sync.Mutex
	instances map[string]state.Instance // by instance key
	history   []state.Instance          // every put, in order
	deleted   []string
	beats     []state.Worker
	putErr    error
	onDelete  func(key string) // called before a record is deleted, when set
	unplaced  map[string]bool  // instance IDs whose placement is gone
}

func newFakeStore() *fakeStore { return &fakeStore{instances: map[string]state.Instance{}} }

func (f *fakeStore) PutInstance(_ context.Context, in state.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.putErr != nil {
		return f.putErr
	}
	f.history = append(f.history, in)
	f.instances[state.InstanceKey(in.ServiceID, in.ID)] = in
	return nil
}

func (f *fakeStore) DeleteInstance(_ context.Context, serviceID, instanceID string) error {
	if f.onDelete != nil {
		f.onDelete(state.InstanceKey(serviceID, instanceID))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := state.InstanceKey(serviceID, instanceID)
	delete(f.instances, key)
	f.deleted = append(f.deleted, key)
	return nil
}

func (f *fakeStore) Placed(_ context.Context, _, instanceID, _ string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.unplaced[instanceID], nil
}

// unplace removes an instance's placement, as the scaler would.
func (f *fakeStore) unplace(instanceID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unplaced == nil {
		f.unplaced = map[string]bool{}
	}
	f.unplaced[instanceID] = true
}

// lastBeat returns the latest heartbeat.
func (f *fakeStore) lastBeat(t *testing.T) state.Worker {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.beats) == 0 {
		t.Fatal("no heartbeat")
	}
	return f.beats[len(f.beats)-1]
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

func (f *fakeStore) puts() []state.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.history)
}

func (f *fakeStore) status(serviceID, instanceID string) string {
	return f.records()[state.InstanceKey(serviceID, instanceID)].Status
}

// fakePublisher records events; fail, when set, can refuse one.
type fakePublisher struct {
	mu     sync.Mutex
	events []events.Event
	fail   func(events.Event) error
}

func (p *fakePublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		if err := p.fail(ev); err != nil {
			return err
		}
	}
	p.events = append(p.events, ev)
	return nil
}

// failing sets the hook that refuses events.
func (p *fakePublisher) failing(f func(events.Event) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = f
}

func (p *fakePublisher) published() []events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.events)
}

// of returns the published events of type T.
func of[T events.Event](p *fakePublisher) []T {
	var out []T
	for _, ev := range p.published() {
		if e, ok := ev.(T); ok {
			out = append(out, e)
		}
	}
	return out
}

const workerID = "w1"

func placement(id string) events.InstancePlacedV1 {
	return events.InstancePlacedV1{
		Meta: events.NewMeta(), InstanceID: id, ServiceID: "s1", WorkerID: workerID,
		AccessName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "vllm",
	}
}

type fixture struct {
	w   *worker.Worker
	eng *fakeEngine
	st  *fakeStore
	pub *fakePublisher
}

func newFixture(t *testing.T, capacity int, opts ...worker.Option) fixture {
	f := fixture{eng: &fakeEngine{readyAtOnce: true}, st: newFakeStore(), pub: &fakePublisher{}}
	f.w = worker.New(workerID, capacity, f.eng, f.st, f.pub, quiet, opts...)
	t.Cleanup(func() { f.w.Shutdown(context.Background(), "test over") })
	return f
}

func (f fixture) start(p events.InstancePlacedV1) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return f.w.StartInstance(ctx, p)
}

func (f fixture) running(t *testing.T) int {
	t.Helper()
	if err := f.w.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	return f.st.beats[len(f.st.beats)-1].Running
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartInstance(t *testing.T) {
	f := newFixture(t, 2, worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) {
		s.Source, s.ContextLength = "Qwen/Qwen2.5-7B-Instruct", 32768
		return s, nil
	}))
	f.eng.readyAtOnce = false
	p := placement("i-1")
	before := time.Now().UTC()
	if err := f.start(p); err != nil {
		t.Fatalf("StartInstance: %v", err)
	}

	wantSpec := engine.Spec{
		InstanceID: "i-1", ServedName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: "vllm",
		Source: "Qwen/Qwen2.5-7B-Instruct", ContextLength: 32768,
	}
	if got := f.eng.startedSpecs(); len(got) != 1 || !equalSpecs(got[0], wantSpec) {
		t.Errorf("engine started %+v, want %+v", got, wantSpec)
	}
	inst := f.eng.started()[0]

	// Started, not ready yet: recorded as starting, nothing announced.
	recs := f.st.records()
	rec, ok := recs[state.InstanceKey("s1", "i-1")]
	if !ok || len(recs) != 1 {
		t.Fatalf("records %+v, want one for i-1", recs)
	}
	want := state.Instance{
		ID: "i-1", ServiceID: "s1", WorkerID: workerID, Engine: "fake", Endpoint: inst.Endpoint(),
		Status: state.InstanceStarting, StartedAt: rec.StartedAt, UpdatedAt: rec.UpdatedAt,
	}
	if rec != want {
		t.Errorf("record\n %+v, want\n %+v", rec, want)
	}
	if rec.StartedAt.Before(before) || rec.StartedAt.Location() != time.UTC || rec.UpdatedAt.Before(rec.StartedAt) {
		t.Errorf("started_at %v updated_at %v, want now in UTC", rec.StartedAt, rec.UpdatedAt)
	}
	if got := f.pub.published(); len(got) != 0 {
		t.Errorf("published %+v before the instance was ready", got)
	}
	if got, want := f.running(t), 1; got != want {
		t.Errorf("running = %d while one starts, want %d", got, want)
	}

	inst.send(engine.Event{State: engine.Ready})
	eventually(t, "the instance is announced", func() bool { return len(f.pub.published()) == 1 })
	ev, ok := f.pub.published()[0].(events.InstanceReadyV1)
	if !ok {
		t.Fatalf("published %T, want events.InstanceReadyV1", f.pub.published()[0])
	}
	wantEv := events.InstanceReadyV1{Meta: ev.Meta, InstanceID: "i-1", ServiceID: "s1", WorkerID: workerID, Engine: "fake", Endpoint: inst.Endpoint()}
	if ev != wantEv || ev.ID == "" {
		t.Errorf("event\n %+v, want\n %+v", ev, wantEv)
	}
	rec = f.st.records()[state.InstanceKey("s1", "i-1")]
	if rec.Status != state.InstanceReady || rec.UpdatedAt.Before(rec.StartedAt) {
		t.Errorf("record %+v, want ready", rec)
	}
	if inst.stopped.Load() {
		t.Error("a ready instance was stopped")
	}
}

func equalSpecs(a, b engine.Spec) bool {
	return a.InstanceID == b.InstanceID && a.ServedName == b.ServedName && a.BaseModel == b.BaseModel &&
		a.Task == b.Task && a.Engine == b.Engine && a.Source == b.Source && a.ContextLength == b.ContextLength &&
		a.GPUs == b.GPUs && a.TensorParallel == b.TensorParallel && a.Adapter == b.Adapter &&
		maps.Equal(a.Env, b.Env) && slices.Equal(a.Devices, b.Devices)
}

func TestStartInstanceAgain(t *testing.T) {
	t.Run("ready", func(t *testing.T) {
		f := newFixture(t, 1)
		p := placement("i-1")
		if err := f.start(p); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ready", func() bool { return len(f.pub.published()) == 1 })
		// A redelivered placement, even on a full worker, re-announces.
		if err := f.start(p); err != nil {
			t.Fatalf("repeated placement: %v", err)
		}
		if got, want := len(f.eng.startedSpecs()), 1; got != want {
			t.Errorf("engine started %d instances, want %d", got, want)
		}
		readies := of[events.InstanceReadyV1](f.pub)
		if len(readies) != 2 {
			t.Fatalf("published %d ready events, want 2", len(readies))
		}
		first, second := readies[0], readies[1]
		if first.ID == second.ID {
			t.Error("the re-announcement repeats the event ID")
		}
		second.Meta = first.Meta
		if first != second {
			t.Errorf("re-announced\n %+v, want as first\n %+v", second, first)
		}
	})
	t.Run("starting", func(t *testing.T) {
		f := newFixture(t, 1)
		f.eng.readyAtOnce = false
		p := placement("i-1")
		if err := f.start(p); err != nil {
			t.Fatal(err)
		}
		if err := f.start(p); err != nil {
			t.Errorf("repeated placement while starting: %v, want nil: it announces itself", err)
		}
		if got, want := len(f.eng.startedSpecs()), 1; got != want {
			t.Errorf("engine started %d instances, want %d", got, want)
		}
		if got := f.pub.published(); len(got) != 0 {
			t.Errorf("published %+v for a starting instance", got)
		}
	})
}

func TestStartInstanceRejects(t *testing.T) {
	errCatalog := errs.E(errs.Invalid, "base model qwen2.5-7b-instruct is not in the catalog")
	tests := []struct {
		name     string
		opts     []worker.Option
		p        events.InstancePlacedV1
		wantKind errs.Kind
		wantErr  error
	}{
		{
			name:     "another worker's placement",
			p:        func() events.InstancePlacedV1 { p := placement("i-1"); p.WorkerID = "w2"; return p }(),
			wantKind: errs.Invalid,
		},
		{
			name:     "unknown base model",
			opts:     []worker.Option{worker.WithSpecs(func(engine.Spec) (engine.Spec, error) { return engine.Spec{}, errCatalog })},
			p:        placement("i-1"),
			wantKind: errs.Invalid,
			wantErr:  errCatalog,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 2, tc.opts...)
			err := f.start(tc.p)
			if got, want := errs.KindOf(err), tc.wantKind; err == nil || got != want {
				t.Fatalf("err = %v (kind %v), want %v", err, got, want)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want it to wrap %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.p.InstanceID) {
				t.Errorf("error %q does not name the instance", err)
			}
			if got := len(f.eng.startedSpecs()); got != 0 {
				t.Errorf("engine started %d instances, want none", got)
			}
			if _, ok := f.st.records()[state.InstanceKey(tc.p.ServiceID, tc.p.InstanceID)]; ok {
				t.Error("the rejected instance was recorded")
			}
			if got := len(f.pub.published()); got != 0 {
				t.Errorf("published %d events, want none", got)
			}
		})
	}
}

// A placement the worker has no room for is refused: acknowledged (not
// retried for ever), started nowhere, and listed with its reason in the
// heartbeat, so the scaler places it elsewhere; the heartbeat is asked for
// at once.
func TestStartInstanceRefuses(t *testing.T) {
	oneGPU := func(n int) worker.Option {
		return worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) { s.GPUs = n; return s, nil })
	}
	tests := []struct {
		name       string
		capacity   int
		opts       []worker.Option
		first      bool // start i-1 first
		wantReason string
	}{
		{name: "capacity reached", capacity: 1, first: true, wantReason: "worker w1 is full (1 instances)"},
		{name: "more GPUs than the worker has", capacity: 2, opts: []worker.Option{worker.WithGPUs(1), oneGPU(2)}, wantReason: "needs 2 GPUs; worker w1 has 1"},
		{name: "no free GPU", capacity: 2, opts: []worker.Option{worker.WithGPUs(1), oneGPU(1)}, first: true, wantReason: "needs 1 GPUs; worker w1 has 0 free"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var told atomic.Int64
			f := newFixture(t, tc.capacity, append(tc.opts, worker.WithOnRefuse(func() { told.Add(1) }))...)
			starts := 0
			if tc.first {
				if err := f.start(placement("i-1")); err != nil {
					t.Fatal(err)
				}
				starts = 1
				eventually(t, "i-1 is ready", func() bool { return len(f.pub.published()) == 1 })
			}
			if err := f.start(placement("i-2")); err != nil {
				t.Fatalf("refused placement: %v, want it acknowledged", err)
			}
			if got := len(f.eng.startedSpecs()); got != starts {
				t.Errorf("engine started %d instances, want %d", got, starts)
			}
			if _, ok := f.st.records()[state.InstanceKey("s1", "i-2")]; ok {
				t.Error("the refused instance was recorded")
			}
			if told.Load() != 1 {
				t.Errorf("refusal told %d times, want once", told.Load())
			}
			if err := f.w.Heartbeat(context.Background()); err != nil {
				t.Fatal(err)
			}
			beat := f.st.lastBeat(t)
			if len(beat.Refused) != 1 || beat.Refused[0].InstanceID != "i-2" || beat.Refused[0].ServiceID != "s1" || beat.Refused[0].Reason != tc.wantReason {
				t.Errorf("heartbeat refusals %+v, want i-2 with %q", beat.Refused, tc.wantReason)
			}
			if slices.Contains(beat.Instances, "i-2") {
				t.Errorf("heartbeat lists the refused instance: %v", beat.Instances)
			}
		})
	}
}

// A placement that no longer stands in the placements bucket (released or
// failed meanwhile) starts nothing and is acknowledged.
func TestStartInstanceNoLongerPlaced(t *testing.T) {
	f := newFixture(t, 2)
	f.st.unplace("i-1")
	if err := f.start(placement("i-1")); err != nil {
		t.Fatalf("StartInstance: %v, want the stale placement acknowledged", err)
	}
	if got := len(f.eng.startedSpecs()); got != 0 {
		t.Fatalf("started %d instances for a placement that no longer stands", got)
	}
}

func TestStartInstanceEngineFails(t *testing.T) {
	f := newFixture(t, 1)
	f.eng.err = errors.New("no free port in 9000-9000")
	err := f.start(placement("i-1"))
	if !errors.Is(err, f.eng.err) {
		t.Fatalf("err = %v, want the engine's error", err)
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("recorded %+v, want nothing", got)
	}
	if got, want := f.running(t), 0; got != want {
		t.Errorf("running = %d after a failed start, want %d", got, want)
	}
	f.eng.err = nil
	if err := f.start(placement("i-1")); err != nil {
		t.Fatalf("second try: %v", err)
	}
}

func TestStartInstanceStoreFails(t *testing.T) {
	f := newFixture(t, 1)
	f.st.putErr = errs.E(errs.Unavailable, "write instances s1.i-1")
	if err := f.start(placement("i-1")); !errors.Is(err, f.st.putErr) {
		t.Fatalf("err = %v, want the store's", err)
	}
	if insts := f.eng.started(); len(insts) != 1 || !insts[0].stopped.Load() {
		t.Error("the unrecorded instance was left running")
	}
	if got, want := f.running(t), 0; got != want {
		t.Errorf("running = %d, want %d", got, want)
	}
}

func TestInstanceRestarts(t *testing.T) {
	f := newFixture(t, 1)
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready", func() bool { return f.st.status("s1", "i-1") == state.InstanceReady })
	inst := f.eng.started()[0]

	inst.send(engine.Event{State: engine.Starting})
	eventually(t, "the record says starting", func() bool { return f.st.status("s1", "i-1") == state.InstanceStarting })
	inst.send(engine.Event{State: engine.Ready, Restarts: 1})
	eventually(t, "the record says ready again", func() bool { return f.st.status("s1", "i-1") == state.InstanceReady })
	eventually(t, "ready announced again", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 2 })

	var statuses []string
	for _, rec := range f.st.puts() {
		statuses = append(statuses, rec.Status)
	}
	if want := []string{"starting", "ready", "starting", "ready"}; !slices.Equal(statuses, want) {
		t.Errorf("recorded %v, want %v", statuses, want)
	}
	if got := of[events.InstanceFailedV1](f.pub); len(got) != 0 {
		t.Errorf("published %+v for a restart", got)
	}
	if inst.stopped.Load() {
		t.Error("a restarted instance was stopped")
	}
}

func TestInstanceFails(t *testing.T) {
	failure := &engine.Failure{Reason: "crashed 5 times within 10m0s; last: exit status 1", ExitCode: 1, LogTail: "CUDA out of memory\n"}
	tests := []struct {
		name        string
		readyFirst  bool
		wantStopped bool
	}{
		{name: "before it was ready"},
		{name: "after it was ready", readyFirst: true, wantStopped: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 1)
			f.eng.readyAtOnce = tc.readyFirst
			if err := f.start(placement("i-1")); err != nil {
				t.Fatal(err)
			}
			if tc.readyFirst {
				eventually(t, "ready", func() bool { return f.st.status("s1", "i-1") == state.InstanceReady })
			}
			inst := f.eng.started()[0]
			inst.send(engine.Event{State: engine.Failed, Restarts: 4, Failure: failure})

			eventually(t, "the failure is published", func() bool { return len(of[events.InstanceFailedV1](f.pub)) == 1 })
			ev := of[events.InstanceFailedV1](f.pub)[0]
			want := events.InstanceFailedV1{
				Meta: ev.Meta, InstanceID: "i-1", ServiceID: "s1", WorkerID: workerID, Engine: "fake",
				Reason: failure.Reason, ExitCode: 1, Restarts: 4, LogTail: "CUDA out of memory\n",
			}
			if ev != want || ev.ID == "" {
				t.Errorf("event\n %+v, want\n %+v", ev, want)
			}
			eventually(t, "the slot is free", func() bool { return f.running(t) == 0 })
			if got := f.st.records(); len(got) != 0 {
				t.Errorf("records %+v left", got)
			}
			if !inst.stopped.Load() {
				t.Error("the failed instance was not stopped")
			}
			stopped := of[events.InstanceStoppedV1](f.pub)
			if tc.wantStopped != (len(stopped) == 1) {
				t.Errorf("stopped events %+v, want one: %v", stopped, tc.wantStopped)
			}
			if tc.wantStopped && stopped[0].Reason != "failed: "+failure.Reason {
				t.Errorf("stopped reason %q", stopped[0].Reason)
			}
			// The slot takes another placement.
			f.eng.readyAtOnce = true
			if err := f.start(placement("i-2")); err != nil {
				t.Fatalf("a placement after the failure: %v", err)
			}
		})
	}
}

func TestInstanceFailsLogTail(t *testing.T) {
	f := newFixture(t, 1)
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	var tail strings.Builder
	for i := range 400 {
		tail.WriteString(strings.Repeat("é", i%50) + "line\n")
	}
	tail.WriteString("\xff last line\n")
	f.eng.started()[0].send(engine.Event{State: engine.Failed, Failure: &engine.Failure{Reason: "x", ExitCode: -1, LogTail: tail.String()}})
	eventually(t, "the failure is published", func() bool { return len(of[events.InstanceFailedV1](f.pub)) == 1 })
	got := of[events.InstanceFailedV1](f.pub)[0].LogTail
	if len(got) > events.MaxLogTail || len(got) < events.MaxLogTail-200 {
		t.Errorf("log tail of %d bytes, want up to %d", len(got), events.MaxLogTail)
	}
	if !utf8.ValidString(got) {
		t.Error("log tail is not valid UTF-8")
	}
	if !strings.HasSuffix(got, "\uFFFD last line\n") {
		t.Errorf("log tail does not end with the last line: %q", got[max(0, len(got)-40):])
	}
	if first, _, _ := strings.Cut(got, "\n"); !strings.HasSuffix(first, "line") {
		t.Errorf("log tail starts mid-line: %q", first)
	}
}

func TestReadyTimeout(t *testing.T) {
	f := newFixture(t, 1, worker.WithReadyTimeout(100*time.Millisecond))
	f.eng.readyAtOnce = false
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failure is published", func() bool { return len(of[events.InstanceFailedV1](f.pub)) == 1 })
	ev := of[events.InstanceFailedV1](f.pub)[0]
	if ev.Reason != "not ready within 100ms" || ev.ExitCode != -1 {
		t.Errorf("event %+v", ev)
	}
	if !f.eng.started()[0].stopped.Load() {
		t.Error("the instance that never got ready was not stopped")
	}
	eventually(t, "the slot is free", func() bool { return f.running(t) == 0 })
}

func TestGPUAssignment(t *testing.T) {
	gpus := map[string]int{"i-1": 2, "i-2": 1, "i-3": 1}
	f := newFixture(t, 4, worker.WithGPUs(3), worker.WithSpecs(func(s engine.Spec) (engine.Spec, error) {
		s.GPUs = gpus[s.InstanceID]
		return s, nil
	}))
	for _, id := range []string{"i-1", "i-2"} {
		if err := f.start(placement(id)); err != nil {
			t.Fatal(err)
		}
	}
	specs := f.eng.startedSpecs()
	if got, want := specs[0].Devices, []int{0, 1}; !slices.Equal(got, want) {
		t.Errorf("i-1 got GPUs %v, want %v", got, want)
	}
	if got, want := specs[1].Devices, []int{2}; !slices.Equal(got, want) {
		t.Errorf("i-2 got GPUs %v, want %v", got, want)
	}
	if err := f.start(placement("i-3")); err != nil || len(f.eng.startedSpecs()) != 2 {
		t.Fatalf("a third instance: %v, %d started; want it refused: no free GPU", err, len(f.eng.startedSpecs()))
	}
	// A failed instance gives its GPUs back.
	f.eng.started()[0].send(engine.Event{State: engine.Failed, Failure: &engine.Failure{Reason: "x", ExitCode: 1}})
	eventually(t, "i-1 is gone", func() bool { return f.running(t) == 1 })
	if err := f.start(placement("i-3")); err != nil {
		t.Fatal(err)
	}
	if got, want := f.eng.startedSpecs()[2].Devices, []int{0}; !slices.Equal(got, want) {
		t.Errorf("i-3 got GPUs %v, want %v", got, want)
	}
	// CPU instances take none.
	gpus["i-4"] = 0
	if err := f.start(placement("i-4")); err != nil {
		t.Fatal(err)
	}
	if got := f.eng.startedSpecs()[3].Devices; len(got) != 0 {
		t.Errorf("a CPU instance got GPUs %v", got)
	}
}

func TestShutdownWhileStarting(t *testing.T) {
	f := newFixture(t, 2)
	f.eng.gate = make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- f.start(placement("i-1")) }()
	eventually(t, "i-1 holds a slot", func() bool { return f.running(t) == 1 })

	f.w.Shutdown(context.Background(), "worker stopped")
	close(f.eng.gate)
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
			if err := f.start(placement(id)); err != nil {
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
	wantInstances := [][]string{{}, {"i-1"}, {"i-1", "i-2"}}
	wantHeld := [][]state.Held{nil, {{InstanceID: "i-1", ServiceID: "s1"}}, {{InstanceID: "i-1", ServiceID: "s1"}, {InstanceID: "i-2", ServiceID: "s1"}}}
	for i, b := range f.st.beats {
		want := state.Worker{ID: workerID, Capacity: 3, Running: i, Instances: wantInstances[i], BeatAt: b.BeatAt, Held: wantHeld[i]}
		if !reflect.DeepEqual(b, want) {
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
		if err := f.start(placement(id)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both are ready", func() bool { return len(f.pub.published()) == 2 })

	f.w.Shutdown(context.Background(), "worker stopped")

	for i, inst := range f.eng.started() {
		if !inst.stopped.Load() {
			t.Errorf("instance %d not stopped", i)
		}
	}
	if got := f.st.records(); len(got) != 0 {
		t.Errorf("records left: %+v", got)
	}
	f.st.mu.Lock()
	deleted := slices.Sorted(slices.Values(f.st.deleted))
	f.st.mu.Unlock()
	if got, want := deleted, []string{"s1.i-1", "s1.i-2"}; !slices.Equal(got, want) {
		t.Errorf("deleted %v, want %v", got, want)
	}
	var stopped []string
	for _, s := range of[events.InstanceStoppedV1](f.pub) {
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
	if got, want := f.running(t), 0; got != want {
		t.Errorf("running = %d after Shutdown, want %d", got, want)
	}
	// A second Shutdown has nothing left to stop.
	n := len(f.pub.published())
	f.w.Shutdown(context.Background(), "again")
	if got := len(f.pub.published()); got != n {
		t.Errorf("a second Shutdown published %d events", got-n)
	}
}
