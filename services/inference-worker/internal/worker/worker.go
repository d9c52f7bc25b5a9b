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

// Store records instances and heartbeats where the router and scaler see
// them, and reads the scaler's placements.
type Store interface {
	PutInstance(ctx context.Context, inst state.Instance) error
	DeleteInstance(ctx context.Context, serviceID, instanceID string) error
	Beat(ctx context.Context, w state.Worker) error
	// Placed reports whether the scaler's placement of the instance on
	// workerID still stands (a failed placement does not).
	Placed(ctx context.Context, serviceID, instanceID, workerID string) (bool, error)
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

// WithEngines lists the real engines the worker may run, for its
// heartbeat: the scaler reckons what a model needs on this worker from it.
func WithEngines(names []string) Option {
	return func(w *Worker) { w.engines = slices.Clone(names) }
}

// WithAnnounceRetry sets how long the worker waits before it publishes
// again an announcement JetStream did not acknowledge; default 1 second,
// doubling up to 10 times that.
func WithAnnounceRetry(d time.Duration) Option {
	return func(w *Worker) { w.retry = max(d, time.Millisecond) }
}

// WithOnRefuse calls f, without blocking, each time the worker refuses a
// placement, so its heartbeat can tell the scaler at once.
func WithOnRefuse(f func()) Option { return func(w *Worker) { w.onRefuse = f } }

// ReleasedTTL is how long a worker remembers the instances released to it,
// so that their placements, arriving late or again, start nothing.
const ReleasedTTL = 24 * time.Hour

// RefusalTTL is how long a refused placement stays in the heartbeat.
const RefusalTTL = time.Minute

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
	engines      []string
	retry        time.Duration
	onRefuse     func()
	done         chan struct{} // closed by Shutdown
	shutOnce     sync.Once

	mu        sync.Mutex
	instances map[string]*running
	gpus      []bool               // taken GPUs by index; nil: GPUs not assigned
	released  map[string]time.Time // instance IDs released to this worker, and when
	refusals  []state.Refusal      // placements refused within RefusalTTL
}

// running is an instance of this worker. Its mutex orders the writes of
// its record and its announcements, so a late one never overwrites the
// removal of the record.
type running struct {
	serviceID string
	devices   []int
	memory    int64 // of the worker's advertised memory, held while it runs

	mu       sync.Mutex
	inst     engine.Instance // nil while the engine starts
	record   state.Instance
	ready    bool // announced ready at least once
	gone     bool // stopped, failed or shut down: write nothing more
	released bool // released while its engine started: stop it once started
	restarts int
	// unannounced is set while the record says ready and InstanceReadyV1
	// was not acknowledged yet.
	unannounced bool
	// stopping is set once a release committed the instance to stopping;
	// stopped holds its InstanceStoppedV1 once the engine stopped, until
	// it is acknowledged and the slot freed.
	stopping bool
	stopped  *events.InstanceStoppedV1
}

// New returns a worker with the given ID that holds up to capacity instances.
func New(id string, capacity int, eng Engine, store Store, pub Publisher, log *slog.Logger, opts ...Option) *Worker {
	w := &Worker{
		id: id, capacity: capacity, engine: eng, store: store, pub: pub, log: log,
		specs:        func(s engine.Spec) (engine.Spec, error) { return s, nil },
		readyTimeout: 30 * time.Minute,
		drain:        2 * time.Second,
		retry:        time.Second,
		instances:    map[string]*running{},
		released:     map[string]time.Time{},
		done:         make(chan struct{}),
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
//
// A placement that no longer stands starts nothing and is acknowledged: one
// released to this worker before or while it arrived, and one no longer in
// the placements bucket (released, or failed). So is one the worker has no
// room for (no free slot, too few free GPUs): it is refused, and the
// refusal is listed in the heartbeat, for the scaler to place it elsewhere.
func (w *Worker) StartInstance(ctx context.Context, p events.InstancePlacedV1) error {
	if p.WorkerID != w.id {
		return errs.E(errs.Invalid, "placement %s is for worker %s, not %s", p.InstanceID, p.WorkerID, w.id)
	}
	w.mu.Lock()
	r, known := w.instances[p.InstanceID]
	_, released := w.released[p.InstanceID]
	w.mu.Unlock()
	if known {
		return w.reannounce(ctx, r)
	}
	if released {
		w.log.InfoContext(ctx, "placement of a released instance ignored", "instance_id", p.InstanceID, "service_id", p.ServiceID)
		return nil
	}
	placed, err := w.store.Placed(ctx, p.ServiceID, p.InstanceID, w.id)
	if err != nil {
		return fmt.Errorf("instance %s: check its placement: %w", p.InstanceID, err)
	}
	if !placed {
		w.forget(p.InstanceID)
		w.log.InfoContext(ctx, "placement no longer stands; ignored", "instance_id", p.InstanceID, "service_id", p.ServiceID)
		return nil
	}
	spec := engine.Spec{InstanceID: p.InstanceID, ServedName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine}
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
	if _, released := w.released[p.InstanceID]; released { // released meanwhile
		w.mu.Unlock()
		return nil
	}
	if len(w.instances) >= w.capacity {
		reason := fmt.Sprintf("worker %s is full (%d instances)", w.id, w.capacity)
		w.refuse(p, reason)
		w.mu.Unlock()
		w.tellRefused(ctx, p, reason)
		return nil
	}
	memory := memoryOf(p, spec)
	if reason := w.lacksMemory(memory); reason != "" {
		w.refuse(p, reason)
		w.mu.Unlock()
		w.tellRefused(ctx, p, reason)
		return nil
	}
	devices, reason := w.takeGPUs(spec.GPUs)
	if reason != "" {
		w.refuse(p, reason)
		w.mu.Unlock()
		w.tellRefused(ctx, p, reason)
		return nil
	}
	spec.Devices = devices
	// Reserve the slot, so a concurrent delivery of the same placement
	// neither starts a second instance nor overfills the worker.
	r = &running{serviceID: p.ServiceID, devices: devices, memory: memory}
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
		// Released, or shut down, while it started: it must not run.
		released := r.released
		r.mu.Unlock()
		_ = inst.Stop(context.WithoutCancel(ctx))
		w.remove(p.InstanceID, r)
		if released {
			w.log.InfoContext(ctx, "instance released while it started; stopped", "instance_id", p.InstanceID, "service_id", p.ServiceID)
			return nil
		}
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

// refuse lists a refused placement for the heartbeat; w.mu is held.
func (w *Worker) refuse(p events.InstancePlacedV1, reason string) {
	w.refusals = append(w.refusals, state.Refusal{InstanceID: p.InstanceID, ServiceID: p.ServiceID, Reason: reason, At: time.Now().UTC()})
}

// tellRefused logs a refusal and lets the heartbeat tell the scaler.
func (w *Worker) tellRefused(ctx context.Context, p events.InstancePlacedV1, reason string) {
	w.log.WarnContext(ctx, "placement refused", "instance_id", p.InstanceID, "service_id", p.ServiceID, "reason", reason)
	if w.onRefuse != nil {
		w.onRefuse()
	}
}

// forget remembers an instance ID as released, so its placement starts
// nothing, however late or often it arrives.
func (w *Worker) forget(instanceID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.released[instanceID] = time.Now()
}

// StopInstance stops an instance the scaler released. It first removes the
// instance's record, so the router sends it no new requests, waits the
// drain period for the requests in flight, stops the engine, publishes
// InstanceStoppedV1 with the release's reason, and only then frees the
// slot and its GPUs: until the stop is announced, the instance is held
// (and listed in the heartbeat), and a redelivered release announces it
// again. The instance ID is remembered, so its placement, arriving late or
// again, starts nothing; releasing an instance this worker does not run is
// otherwise a no-op. An instance whose engine is still starting is stopped
// as soon as it has started, and announces nothing.
func (w *Worker) StopInstance(ctx context.Context, ev events.InstanceReleasedV1) error {
	if ev.WorkerID != w.id {
		return errs.E(errs.Invalid, "release of %s is for worker %s, not %s", ev.InstanceID, ev.WorkerID, w.id)
	}
	w.mu.Lock()
	w.released[ev.InstanceID] = time.Now()
	r, known := w.instances[ev.InstanceID]
	w.mu.Unlock()
	if !known {
		return nil
	}
	r.mu.Lock()
	switch {
	case r.stopped != nil: // stopped; its announcement failed before
		stopped := *r.stopped
		r.mu.Unlock()
		return w.announceStopped(ctx, r, stopped)
	case r.stopping:
		r.mu.Unlock()
		return errs.E(errs.Unavailable, "instance %s is stopping", ev.InstanceID)
	case r.gone: // failed or shut down: that path announces it
		r.mu.Unlock()
		return nil
	case r.inst == nil:
		r.gone, r.released = true, true
		r.mu.Unlock()
		return nil
	}
	// Under r.mu, so no ready announcement can write the record back.
	if err := w.store.DeleteInstance(ctx, r.record.ServiceID, ev.InstanceID); err != nil {
		r.mu.Unlock()
		return err
	}
	r.gone, r.stopping = true, true
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
	stopped := events.InstanceStoppedV1{
		Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Reason: ev.Reason,
	}
	r.mu.Lock()
	r.stopped = &stopped
	r.mu.Unlock()
	return w.announceStopped(stopCtx, r, stopped)
}

// announceStopped publishes a released instance's InstanceStoppedV1 (the
// same event each time, so JetStream stores it once) and frees its slot
// once it is stored.
func (w *Worker) announceStopped(ctx context.Context, r *running, ev events.InstanceStoppedV1) error {
	if err := w.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce stopped instance %s: %w", ev.InstanceID, err)
	}
	w.remove(ev.InstanceID, r)
	w.log.InfoContext(ctx, "instance stopped", "instance_id", ev.InstanceID, "service_id", ev.ServiceID, "reason", ev.Reason)
	return nil
}

// memoryOf is the worker memory an instance of placement p takes, once
// its spec is complete: what its model needs on CPUs when it runs on its
// engine. The simulator, and a model that runs on GPUs, take none of it;
// a model whose needs are not known is not counted.
func memoryOf(p events.InstancePlacedV1, spec engine.Spec) int64 {
	if p.Model == nil || spec.Engine == "simulator" || spec.GPUs > 0 {
		return 0
	}
	return max(p.Model.MemoryBytes, 0)
}

// lacksMemory says why the worker cannot give an instance n bytes of its
// advertised memory, or "" when it can (or advertises none); w.mu is
// held.
func (w *Worker) lacksMemory(n int64) string {
	if w.memory == 0 || n == 0 {
		return ""
	}
	free := w.memory
	for _, r := range w.instances {
		free -= r.memory
	}
	if n > free {
		return fmt.Sprintf("needs %s of memory; worker %s has %s free of %s", gib(n), w.id, gib(max(free, 0)), gib(w.memory))
	}
	return ""
}

// gib formats bytes in GiB with one decimal, for people.
func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// takeGPUs reserves n free GPUs, or says why it cannot; w.mu is held.
func (w *Worker) takeGPUs(n int) ([]int, string) {
	if w.gpus == nil || n <= 0 {
		return nil, ""
	}
	if n > len(w.gpus) {
		return nil, fmt.Sprintf("needs %d GPUs; worker %s has %d", n, w.id, len(w.gpus))
	}
	var free []int
	for i, taken := range w.gpus {
		if !taken {
			free = append(free, i)
		}
	}
	if len(free) < n {
		return nil, fmt.Sprintf("needs %d GPUs; worker %s has %d free", n, w.id, len(free))
	}
	for _, i := range free[:n] {
		w.gpus[i] = true
	}
	return free[:n], ""
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
	if err := w.announce(ctx, r.record); err != nil {
		return err
	}
	r.unannounced = false
	return nil
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
// until it stops or fails. A ready announcement JetStream did not take is
// tried again, with backoff, until it is taken or the instance changes.
func (w *Worker) follow(ctx context.Context, r *running) {
	notReady := time.NewTimer(w.readyTimeout)
	defer notReady.Stop()
	var retry <-chan time.Time
	backoff := w.retry
	for {
		select {
		case ev, ok := <-r.inst.Events():
			if !ok {
				return
			}
			switch ev.State {
			case engine.Ready:
				notReady.Stop()
				backoff = w.retry
				if !w.ready(ctx, r, ev.Restarts) {
					retry = time.After(backoff)
				}
			case engine.Starting:
				retry = nil
				w.restarting(ctx, r, ev.Restarts)
			case engine.Failed:
				f := ev.Failure
				if f == nil {
					f = &engine.Failure{Reason: "failed", ExitCode: -1}
				}
				w.fail(ctx, r, f, ev.Restarts)
				return
			}
		case <-retry:
			retry = nil
			if !w.announceAgain(ctx, r) {
				backoff = min(2*backoff, 10*w.retry)
				retry = time.After(backoff)
			}
		case <-notReady.C:
			w.fail(ctx, r, &engine.Failure{Reason: fmt.Sprintf("not ready within %s", w.readyTimeout), ExitCode: -1}, r.restartCount())
			return
		case <-w.done:
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
// and after each restart. It reports false when the announcement is to be
// tried again.
func (w *Worker) ready(ctx context.Context, r *running, restarts int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return true
	}
	r.restarts = restarts
	r.record.Status, r.record.UpdatedAt = state.InstanceReady, time.Now().UTC()
	r.ready = true
	if err := w.announce(ctx, r.record); err != nil {
		r.unannounced = true
		w.log.WarnContext(ctx, "announce ready instance; will retry", "instance_id", r.record.ID, "err", err)
		return false
	}
	r.unannounced = false
	w.log.InfoContext(ctx, "instance ready", "instance_id", r.record.ID, "service_id", r.record.ServiceID,
		"endpoint", r.record.Endpoint, "restarts", restarts)
	return true
}

// announceAgain retries a ready announcement that was not taken; it
// reports false when it is to be tried again.
func (w *Worker) announceAgain(ctx context.Context, r *running) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone || !r.unannounced || r.record.Status != state.InstanceReady {
		return true
	}
	if err := w.announce(ctx, r.record); err != nil {
		w.log.WarnContext(ctx, "announce ready instance; will retry", "instance_id", r.record.ID, "err", err)
		return false
	}
	r.unannounced = false
	w.log.InfoContext(ctx, "instance ready", "instance_id", r.record.ID, "service_id", r.record.ServiceID, "endpoint", r.record.Endpoint)
	return true
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
	r.unannounced = false
	r.record.Status, r.record.UpdatedAt = state.InstanceStarting, time.Now().UTC()
	w.log.WarnContext(ctx, "engine crashed; restarting", "instance_id", r.record.ID, "restarts", restarts)
	if err := w.store.PutInstance(ctx, r.record); err != nil {
		w.log.WarnContext(ctx, "record restarting instance", "instance_id", r.record.ID, "err", err)
	}
}

// fail removes the record of an instance that failed for good, stops what
// is left of it, publishes InstanceFailedV1 and, for an instance that had
// been ready, InstanceStoppedV1 (so consumers that count ready instances
// recount, and billing ends its time), and only then frees its slot. Each
// step is tried again until it succeeds, or until the worker shuts down,
// whose own stop announcements then stand in.
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
	if !w.until(ctx, "remove instance record", rec.ID, func() error { return w.store.DeleteInstance(ctx, rec.ServiceID, rec.ID) }) {
		return
	}
	if err := r.inst.Stop(ctx); err != nil {
		w.log.WarnContext(ctx, "stop failed instance", "instance_id", rec.ID, "err", err)
	}
	failed := events.InstanceFailedV1{
		Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Engine: rec.Engine,
		Reason: f.Reason, ExitCode: f.ExitCode, Restarts: restarts, LogTail: logTail(f.LogTail, events.MaxLogTail),
	}
	if !w.until(ctx, "announce failed instance", rec.ID, func() error { return w.pub.Publish(ctx, failed) }) {
		return
	}
	if wasReady {
		stopped := events.InstanceStoppedV1{
			Meta: events.NewMeta(), InstanceID: rec.ID, ServiceID: rec.ServiceID, WorkerID: w.id, Reason: "failed: " + f.Reason,
		}
		if !w.until(ctx, "announce stopped instance", rec.ID, func() error { return w.pub.Publish(ctx, stopped) }) {
			return
		}
	}
	w.remove(rec.ID, r)
}

// until runs step until it succeeds, waiting longer after each failure; it
// reports false when the worker shut down first.
func (w *Worker) until(ctx context.Context, what, instanceID string, step func() error) bool {
	backoff := w.retry
	for {
		err := step()
		if err == nil {
			return true
		}
		w.log.WarnContext(ctx, what+"; will retry", "instance_id", instanceID, "err", err)
		select {
		case <-w.done:
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*w.retry)
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

// Heartbeat records that the worker is alive, how full it is, which
// instances it holds and which placements it recently refused.
func (w *Worker) Heartbeat(ctx context.Context) error {
	now := time.Now()
	w.mu.Lock()
	beat := state.Worker{ID: w.id, Capacity: w.capacity, Running: len(w.instances), GPUs: len(w.gpus), Instances: []string{},
		BeatAt: now.UTC(), Engines: w.engines, MemoryBytes: w.memory, GPUMemoryBytes: w.gpuMemory}
	for id, r := range w.instances {
		beat.Instances = append(beat.Instances, id)
		beat.Held = append(beat.Held, state.Held{InstanceID: id, ServiceID: r.serviceID, GPUs: len(r.devices), MemoryBytes: r.memory})
	}
	for _, taken := range w.gpus {
		if !taken {
			beat.FreeGPUs++
		}
	}
	w.refusals = slices.DeleteFunc(w.refusals, func(r state.Refusal) bool { return now.Sub(r.At) > RefusalTTL })
	beat.Refused = slices.Clone(w.refusals)
	for id, at := range w.released {
		if now.Sub(at) > ReleasedTTL {
			delete(w.released, id)
		}
	}
	w.mu.Unlock()
	slices.Sort(beat.Instances)
	slices.SortFunc(beat.Held, func(a, b state.Held) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	return w.store.Beat(ctx, beat)
}

// Shutdown stops every instance, removes its record and announces it, all
// instances at once: an engine may take its grace period to stop. An
// instance stopped already whose announcement is pending is announced now.
func (w *Worker) Shutdown(ctx context.Context, reason string) {
	w.shutOnce.Do(func() { close(w.done) })
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
		inst, rec, pending, wasReady := r.inst, r.record, r.stopped, r.ready
		r.mu.Unlock()
		if pending != nil {
			wg.Go(func() {
				if err := w.pub.Publish(ctx, *pending); err != nil {
					w.log.WarnContext(ctx, "announce stopped instance", "instance_id", id, "err", err)
				}
			})
			continue
		}
		if wasGone || inst == nil {
			// Failed (its announcements were still being tried: make the
			// stop known), or still starting (its start stops it).
			if wasGone && inst != nil && wasReady {
				wg.Go(func() { w.publishStopped(ctx, id, rec.ServiceID, reason) })
			}
			continue
		}
		wg.Go(func() {
			if err := w.store.DeleteInstance(ctx, rec.ServiceID, id); err != nil {
				w.log.WarnContext(ctx, "remove instance record", "instance_id", id, "err", err)
			}
			if err := inst.Stop(ctx); err != nil {
				w.log.WarnContext(ctx, "stop instance", "instance_id", id, "err", err)
			}
			w.publishStopped(ctx, id, rec.ServiceID, reason)
		})
	}
	wg.Wait()
}

func (w *Worker) publishStopped(ctx context.Context, id, serviceID, reason string) {
	if err := w.pub.Publish(ctx, events.InstanceStoppedV1{
		Meta: events.NewMeta(), InstanceID: id, ServiceID: serviceID, WorkerID: w.id, Reason: reason,
	}); err != nil {
		w.log.WarnContext(ctx, "announce stopped instance", "instance_id", id, "err", err)
	}
}
