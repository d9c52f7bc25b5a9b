// Package worker runs the engine instances the scaler places on this
// worker: it starts them, records and announces them as they become ready,
// follows them through engine restarts and failures, and reports its own
// liveness with heartbeats.
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
)

// Engine starts instances. *engine.Registry implements it, picking the
// engine each spec names; so do *engine.Simulator and *engine.Process,
// which run every spec on one engine.
type Engine interface {
	Start(ctx context.Context, spec engine.Spec) (engine.Instance, error)
}

// Store records instances and heartbeats where the router and scaler see them.
type Store interface {
	PutInstance(ctx context.Context, inst state.Instance) error
	DeleteInstance(ctx context.Context, serviceID, instanceID string) error
	Beat(ctx context.Context, w state.Worker) error
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// SpecFunc completes the spec of a placed instance. The worker fills in
// InstanceID, ServedName, BaseModel, Task and Engine from the placement;
// the function adds what the catalog knows about the base model (Source,
// ContextLength, GPUs, TensorParallel, Adapter, Env). Its error rejects the
// placement: an errs.Invalid one for good.
type SpecFunc func(spec engine.Spec) (engine.Spec, error)

// ModelFunc completes the spec of a placement that carries its model
// (events.ModelSpec), such as a model its owner registered, which no
// catalog lists. Its error rejects the placement as SpecFunc's does.
type ModelFunc func(spec engine.Spec, model events.ModelSpec) (engine.Spec, error)

// Option configures a Worker.
type Option func(*Worker)

// WithSpecs completes every placement's spec with f.
func WithSpecs(f SpecFunc) Option { return func(w *Worker) { w.specs = f } }

// WithModels completes the specs of placements that carry their model
// with f; the others still go through WithSpecs.
func WithModels(f ModelFunc) Option { return func(w *Worker) { w.models = f } }

// WithMemory has the worker advertise the memory its instances may use in
// all, and the memory of each of its GPUs, in its heartbeats, so that the
// scaler places only what fits; 0: not advertised.
func WithMemory(memory, gpuMemory int64) Option {
	return func(w *Worker) { w.memory, w.gpuMemory = max(memory, 0), max(gpuMemory, 0) }
}

// WithGPUs has the worker hand out n GPUs, numbered 0 to n-1 as CUDA
// numbers them, to the instances that need them. Without it the worker
// assigns none and every engine sees the GPUs the worker sees.
func WithGPUs(n int) Option { return func(w *Worker) { w.gpus = make([]bool, max(n, 0)) } }

// WithReadyTimeout bounds how long an instance may take to become ready
// before the worker gives up on it; default 30 minutes. Engines bound
// their own start too; this catches one that never reports.
func WithReadyTimeout(d time.Duration) Option { return func(w *Worker) { w.readyTimeout = d } }

// WithDrain sets how long a released instance keeps serving the requests
// it already has, after its record is removed so the router sends it no
// new ones; default 2 seconds.
func WithDrain(d time.Duration) Option { return func(w *Worker) { w.drain = max(d, 0) } }

// Worker is one inference-worker. Its methods are safe for concurrent use.
type Worker struct {
	id           string
	capacity     int
	engine       Engine
	store        Store
	pub          Publisher
	log          *slog.Logger
	specs        SpecFunc
	models       ModelFunc
	memory       int64 // advertised; 0: not
	gpuMemory    int64 // per GPU, advertised; 0: not
	readyTimeout time.Duration
	drain        time.Duration

	mu        sync.Mutex
	instances map[string]*running
	gpus      []bool // taken GPUs by index; nil: GPUs not assigned
}

// running is an instance of this worker. Its mutex orders the writes of
// its record and its announcements, so a late one never overwrites the
// removal of the record.
type running struct {
	devices []int

	mu       sync.Mutex
	inst     engine.Instance // nil while the engine starts
	record   state.Instance
	ready    bool // announced ready at least once
	gone     bool // stopped, failed or shut down: write nothing more
	restarts int
}

// New returns a worker with the given ID that holds up to capacity instances.
func New(id string, capacity int, eng Engine, store Store, pub Publisher, log *slog.Logger, opts ...Option) *Worker {
	w := &Worker{
		id: id, capacity: capacity, engine: eng, store: store, pub: pub, log: log,
		specs:        func(s engine.Spec) (engine.Spec, error) { return s, nil },
		readyTimeout: 30 * time.Minute,
		drain:        2 * time.Second,
		instances:    map[string]*running{},
	}
	for _, o := range opts {
		o(w)
	}
	return w
}

// ID returns the worker's ID.
func (w *Worker) ID() string { return w.id }

// StartInstance starts the placed instance and records it as starting; it
// returns once the engine is started, not once it is ready. From then on
// the worker follows the instance: when it is ready, its record says so and
// InstanceReadyV1 is published; while a crashed engine restarts, its record
// says starting, so the router leaves it alone; when the engine fails for
// good, InstanceFailedV1 is published, the record removed and the slot
// freed. A repeated placement (a redelivered event) starts nothing: it
// re-announces a ready instance and leaves a starting one to announce
// itself.
func (w *Worker) StartInstance(ctx context.Context, p events.InstancePlacedV1) error {
	if p.WorkerID != w.id {
		return errs.E(errs.Invalid, "placement %s is for worker %s, not %s", p.InstanceID, p.WorkerID, w.id)
	}
	w.mu.Lock()
	r, known := w.instances[p.InstanceID]
	w.mu.Unlock()
	if known {
		return w.reannounce(ctx, r)
	}
	spec := engine.Spec{InstanceID: p.InstanceID, ServedName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine}
	var err error
	if p.Model != nil && w.models != nil {
		spec, err = w.models(spec, *p.Model)
	} else {
		spec, err = w.specs(spec)
	}
	if err != nil {
		return fmt.Errorf("instance %s: %w", p.InstanceID, err)
	}

	w.mu.Lock()
	if r, known := w.instances[p.InstanceID]; known { // placed twice at once
		w.mu.Unlock()
		return w.reannounce(ctx, r)
	}
	if len(w.instances) >= w.capacity {
		w.mu.Unlock()
		return errs.E(errs.Unavailable, "instance %s: worker %s is full (%d instances)", p.InstanceID, w.id, w.capacity)
	}
	devices, err := w.takeGPUs(spec.GPUs)
	if err != nil {
		w.mu.Unlock()
		return fmt.Errorf("instance %s: %w", p.InstanceID, err)
	}
	spec.Devices = devices
	// Reserve the slot, so a concurrent delivery of the same placement
	// neither starts a second instance nor overfills the worker.
	r = &running{devices: devices}
	w.instances[p.InstanceID] = r
	w.mu.Unlock()

	inst, err := w.engine.Start(ctx, spec)
	if err != nil {
		w.remove(p.InstanceID, r)
		return fmt.Errorf("start instance %s: %w", p.InstanceID, err)
	}
	now := time.Now().UTC()
	r.mu.Lock()
	if r.gone {
		// Shutdown ran while it started: it must not outlive the worker.
		r.mu.Unlock()
		_ = inst.Stop(context.WithoutCancel(ctx))
		return errs.E(errs.Unavailable, "worker %s stopped while instance %s started", w.id, p.InstanceID)
	}
	r.inst = inst
	r.record = state.Instance{
		ID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: w.id, Engine: inst.Engine(),
		Endpoint: inst.Endpoint(), Status: state.InstanceStarting, StartedAt: now, UpdatedAt: now,
	}
	err = w.store.PutInstance(ctx, r.record)
	if err != nil {
		r.gone = true
	}
	r.mu.Unlock()
	if err != nil {
		_ = inst.Stop(context.WithoutCancel(ctx))
		w.remove(p.InstanceID, r)
		return err
	}
	w.log.InfoContext(ctx, "instance starting", "instance_id", p.InstanceID, "service_id", p.ServiceID,
		"engine", inst.Engine(), "endpoint", inst.Endpoint(), "gpus", devices)
	go w.follow(context.WithoutCancel(ctx), r)
	return nil
}

// StopInstance stops an instance the scaler released. It first removes the
// instance's record, so the router sends it no new requests, waits the
// drain period for the requests in flight, then stops the engine, frees
// the slot and its GPUs and publishes InstanceStoppedV1 with the release's
// reason. Releasing an instance this worker does not run is a no-op: it was
// released, failed or shut down already. An instance whose engine is still
// starting is an errs.Unavailable error, so the release is retried once
// there is an engine to stop.
func (w *Worker) StopInstance(ctx context.Context, ev events.InstanceReleasedV1) error {
	if ev.WorkerID != w.id {
		return errs.E(errs.Invalid, "release of %s is for worker %s, not %s", ev.InstanceID, ev.WorkerID, w.id)
	}
	w.mu.Lock()
	r, known := w.instances[ev.InstanceID]
	w.mu.Unlock()
	if !known {
		return nil
	}
	r.mu.Lock()
	if r.gone {
		r.mu.Unlock()
		return nil
	}
	if r.inst == nil {
		r.mu.Unlock()
		return errs.E(errs.Unavailable, "instance %s is still starting", ev.InstanceID)
	}
	// Under r.mu, so no ready announcement can write the record back.
	if err := w.store.DeleteInstance(ctx, r.record.ServiceID, ev.InstanceID); err != nil {
		r.mu.Unlock()
		return err
	}
	r.gone = true
	inst, rec := r.inst, r.record
	r.mu.Unlock()
	w.log.InfoContext(ctx, "instance draining", "instance_id", rec.ID, "service_id", rec.ServiceID, "reason", ev.Reason, "drain", w.drain)

	// The instance is committed to stopping: a cancelled ctx shortens the
	// drain but does not leave the engine running.
	stopCtx := context.WithoutCancel(ctx)
	t := time.NewTimer(w.drain)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}
	if err := inst.Stop(stopCtx); err != nil {
		w.log.WarnContext(ctx, "stop released instance", "instance_id", rec.ID, "err", err)
	}
	w.remove(rec.ID, r)
	if err := w.pub.Publish(stopCtx, events.InstanceStoppedV1{
		Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Reason: ev.Reason,
	}); err != nil {
		return fmt.Errorf("announce stopped instance %s: %w", rec.ID, err)
	}
	w.log.InfoContext(ctx, "instance stopped", "instance_id", rec.ID, "service_id", rec.ServiceID, "reason", ev.Reason)
	return nil
}

// takeGPUs reserves n free GPUs; w.mu is held.
func (w *Worker) takeGPUs(n int) ([]int, error) {
	if w.gpus == nil || n <= 0 {
		return nil, nil
	}
	if n > len(w.gpus) {
		return nil, errs.E(errs.Invalid, "needs %d GPUs; worker %s has %d", n, w.id, len(w.gpus))
	}
	var free []int
	for i, taken := range w.gpus {
		if !taken {
			free = append(free, i)
		}
	}
	if len(free) < n {
		return nil, errs.E(errs.Unavailable, "needs %d GPUs; worker %s has %d free", n, w.id, len(free))
	}
	for _, i := range free[:n] {
		w.gpus[i] = true
	}
	return free[:n], nil
}

// remove frees the instance's slot and GPUs, if r still holds them.
func (w *Worker) remove(id string, r *running) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.instances[id] != r {
		return
	}
	delete(w.instances, id)
	for _, i := range r.devices {
		w.gpus[i] = false
	}
}

// reannounce records and announces a ready instance again.
func (w *Worker) reannounce(ctx context.Context, r *running) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone || r.inst == nil || r.record.Status != state.InstanceReady {
		return nil // it announces itself once ready
	}
	return w.announce(ctx, r.record)
}

func (w *Worker) announce(ctx context.Context, rec state.Instance) error {
	if err := w.store.PutInstance(ctx, rec); err != nil {
		return err
	}
	return w.pub.Publish(ctx, events.InstanceReadyV1{
		Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID,
		WorkerID: w.id, Engine: rec.Engine, Endpoint: rec.Endpoint,
	})
}

// follow turns the instance's events into its record and announcements
// until it stops or fails.
func (w *Worker) follow(ctx context.Context, r *running) {
	notReady := time.NewTimer(w.readyTimeout)
	defer notReady.Stop()
	for {
		select {
		case ev, ok := <-r.inst.Events():
			if !ok {
				return
			}
			switch ev.State {
			case engine.Ready:
				notReady.Stop()
				w.ready(ctx, r, ev.Restarts)
			case engine.Starting:
				w.restarting(ctx, r, ev.Restarts)
			case engine.Failed:
				f := ev.Failure
				if f == nil {
					f = &engine.Failure{Reason: "failed", ExitCode: -1}
				}
				w.fail(ctx, r, f, ev.Restarts)
				return
			}
		case <-notReady.C:
			w.fail(ctx, r, &engine.Failure{Reason: fmt.Sprintf("not ready within %s", w.readyTimeout), ExitCode: -1}, r.restartCount())
			return
		}
	}
}

func (r *running) restartCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restarts
}

// ready records the instance as ready and announces it, the first time
// and after each restart.
func (w *Worker) ready(ctx context.Context, r *running, restarts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return
	}
	r.restarts = restarts
	r.record.Status, r.record.UpdatedAt = state.InstanceReady, time.Now().UTC()
	r.ready = true
	if err := w.announce(ctx, r.record); err != nil {
		w.log.WarnContext(ctx, "announce ready instance", "instance_id", r.record.ID, "err", err)
		return
	}
	w.log.InfoContext(ctx, "instance ready", "instance_id", r.record.ID, "service_id", r.record.ServiceID,
		"endpoint", r.record.Endpoint, "restarts", restarts)
}

// restarting records a ready instance whose engine crashed as starting, so
// the router stops sending it requests until it is ready again.
func (w *Worker) restarting(ctx context.Context, r *running, restarts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone || r.record.Status != state.InstanceReady {
		return
	}
	r.restarts = restarts
	r.record.Status, r.record.UpdatedAt = state.InstanceStarting, time.Now().UTC()
	w.log.WarnContext(ctx, "engine crashed; restarting", "instance_id", r.record.ID, "restarts", restarts)
	if err := w.store.PutInstance(ctx, r.record); err != nil {
		w.log.WarnContext(ctx, "record restarting instance", "instance_id", r.record.ID, "err", err)
	}
}

// fail publishes InstanceFailedV1, removes the record, stops what is left
// of the instance and frees its slot. An instance that had been ready is
// also announced stopped, so consumers that count ready instances recount.
func (w *Worker) fail(ctx context.Context, r *running, f *engine.Failure, restarts int) {
	r.mu.Lock()
	if r.gone {
		r.mu.Unlock()
		return
	}
	r.gone = true
	rec, wasReady := r.record, r.ready
	r.mu.Unlock()

	w.log.ErrorContext(ctx, "instance failed", "instance_id", rec.ID, "service_id", rec.ServiceID, "engine", rec.Engine,
		"reason", f.Reason, "exit_code", f.ExitCode, "restarts", restarts)
	if err := w.pub.Publish(ctx, events.InstanceFailedV1{
		Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Engine: rec.Engine,
		Reason: f.Reason, ExitCode: f.ExitCode, Restarts: restarts, LogTail: logTail(f.LogTail, events.MaxLogTail),
	}); err != nil {
		w.log.WarnContext(ctx, "announce failed instance", "instance_id", rec.ID, "err", err)
	}
	if err := w.store.DeleteInstance(ctx, rec.ServiceID, rec.ID); err != nil {
		w.log.WarnContext(ctx, "remove instance record", "instance_id", rec.ID, "err", err)
	}
	if err := r.inst.Stop(ctx); err != nil {
		w.log.WarnContext(ctx, "stop failed instance", "instance_id", rec.ID, "err", err)
	}
	w.remove(rec.ID, r)
	if wasReady {
		if err := w.pub.Publish(ctx, events.InstanceStoppedV1{
			Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Reason: "failed: " + f.Reason,
		}); err != nil {
			w.log.WarnContext(ctx, "announce stopped instance", "instance_id", rec.ID, "err", err)
		}
	}
}

// logTail returns the end of s in at most n bytes of valid UTF-8, from the
// start of a line where one begins in that end.
func logTail(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		return s[i+1:]
	}
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}

// Heartbeat records that the worker is alive and how full it is.
func (w *Worker) Heartbeat(ctx context.Context) error {
	w.mu.Lock()
	beat := state.Worker{ID: w.id, Capacity: w.capacity, Running: len(w.instances), GPUs: len(w.gpus), Instances: []string{}, BeatAt: time.Now().UTC(),
		MemoryBytes: w.memory, GPUMemoryBytes: w.gpuMemory}
	for id := range w.instances {
		beat.Instances = append(beat.Instances, id)
	}
	for _, taken := range w.gpus {
		if !taken {
			beat.FreeGPUs++
		}
	}
	w.mu.Unlock()
	slices.Sort(beat.Instances)
	return w.store.Beat(ctx, beat)
}

// Shutdown stops every instance, removes its record and announces it, all
// instances at once: an engine may take its grace period to stop.
func (w *Worker) Shutdown(ctx context.Context, reason string) {
	w.mu.Lock()
	all := w.instances
	w.instances = map[string]*running{}
	for i := range w.gpus {
		w.gpus[i] = false
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	for id, r := range all {
		r.mu.Lock()
		wasGone := r.gone
		r.gone = true
		inst, rec := r.inst, r.record
		r.mu.Unlock()
		if wasGone || inst == nil {
			continue // failed already, or still starting: its start stops it
		}
		wg.Go(func() {
			if err := w.store.DeleteInstance(ctx, rec.ServiceID, id); err != nil {
				w.log.WarnContext(ctx, "remove instance record", "instance_id", id, "err", err)
			}
			if err := inst.Stop(ctx); err != nil {
				w.log.WarnContext(ctx, "stop instance", "instance_id", id, "err", err)
			}
			if err := w.pub.Publish(ctx, events.InstanceStoppedV1{
				Meta: events.NewMeta(), InstanceID: id, ServiceID: rec.ServiceID, WorkerID: w.id, Reason: reason,
			}); err != nil {
				w.log.WarnContext(ctx, "announce stopped instance", "instance_id", id, "err", err)
			}
		})
	}
	wg.Wait()
}
