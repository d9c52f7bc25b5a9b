// Package worker runs the engine instances the scaler places on this
// worker: it starts them, waits until they are ready, records and announces
// them, and reports its own liveness with heartbeats.
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
)

// Engine starts instances. *engine.Simulator implements it.
type Engine interface {
	Name() string
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

// Worker is one inference-worker. Its methods are safe for concurrent use.
type Worker struct {
	id           string
	capacity     int
	engine       Engine
	store        Store
	pub          Publisher
	log          *slog.Logger
	readyTimeout time.Duration

	mu        sync.Mutex
	instances map[string]*running
}

// running is an instance of this worker; inst is nil while it starts.
type running struct {
	inst   engine.Instance
	record state.Instance
}

// New returns a worker with the given ID that holds up to capacity instances.
func New(id string, capacity int, eng Engine, store Store, pub Publisher, log *slog.Logger) *Worker {
	return &Worker{
		id: id, capacity: capacity, engine: eng, store: store, pub: pub, log: log,
		readyTimeout: 2 * time.Minute,
		instances:    map[string]*running{},
	}
}

// ID returns the worker's ID.
func (w *Worker) ID() string { return w.id }

// StartInstance starts the placed instance, waits for it to be ready, then
// records it and publishes InstanceReadyV1. A repeated placement (a
// redelivered event) re-announces the running instance instead of starting
// a second one.
func (w *Worker) StartInstance(ctx context.Context, p events.InstancePlacedV1) error {
	if p.WorkerID != w.id {
		return errs.E(errs.Invalid, "placement %s is for worker %s, not %s", p.InstanceID, p.WorkerID, w.id)
	}
	w.mu.Lock()
	r, ok := w.instances[p.InstanceID]
	switch {
	case ok && r.inst == nil:
		w.mu.Unlock()
		return errs.E(errs.Unavailable, "instance %s is still starting", p.InstanceID)
	case ok:
		w.mu.Unlock()
		return w.announce(ctx, r.record)
	case len(w.instances) >= w.capacity:
		w.mu.Unlock()
		return errs.E(errs.Unavailable, "worker %s is full (%d instances)", w.id, w.capacity)
	}
	// Reserve the slot, so a concurrent delivery of the same placement
	// neither starts a second instance nor overfills the worker.
	w.instances[p.InstanceID] = &running{}
	w.mu.Unlock()

	inst, err := w.startReady(ctx, p)
	if err != nil {
		w.mu.Lock()
		delete(w.instances, p.InstanceID)
		w.mu.Unlock()
		return err
	}
	now := time.Now().UTC()
	rec := state.Instance{
		ID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: w.id, Engine: w.engine.Name(),
		Endpoint: inst.Endpoint(), Status: state.InstanceReady, StartedAt: now, UpdatedAt: now,
	}
	w.mu.Lock()
	if _, reserved := w.instances[p.InstanceID]; !reserved {
		// Shutdown ran while it started: it must not outlive the worker.
		w.mu.Unlock()
		_ = inst.Stop(context.WithoutCancel(ctx))
		return errs.E(errs.Unavailable, "worker %s stopped while instance %s started", w.id, p.InstanceID)
	}
	w.instances[p.InstanceID] = &running{inst: inst, record: rec}
	w.mu.Unlock()
	w.log.InfoContext(ctx, "instance ready", "instance_id", rec.ID, "service_id", rec.ServiceID, "endpoint", rec.Endpoint)
	return w.announce(ctx, rec)
}

// startReady starts the engine instance and waits until it answers its
// health check; an instance that never does is stopped.
func (w *Worker) startReady(ctx context.Context, p events.InstancePlacedV1) (engine.Instance, error) {
	inst, err := w.engine.Start(ctx, engine.Spec{
		InstanceID: p.InstanceID, ServedName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task,
	})
	if err != nil {
		return nil, fmt.Errorf("start instance %s: %w", p.InstanceID, err)
	}
	readyCtx, cancel := context.WithTimeout(ctx, w.readyTimeout)
	defer cancel()
	if err := engine.WaitReady(readyCtx, inst); err != nil {
		_ = inst.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return inst, nil
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

// Heartbeat records that the worker is alive and how full it is.
func (w *Worker) Heartbeat(ctx context.Context) error {
	w.mu.Lock()
	n := len(w.instances)
	w.mu.Unlock()
	return w.store.Beat(ctx, state.Worker{ID: w.id, Capacity: w.capacity, Running: n, BeatAt: time.Now().UTC()})
}

// Shutdown stops every instance, removes its record and announces it.
func (w *Worker) Shutdown(ctx context.Context, reason string) {
	w.mu.Lock()
	all := w.instances
	w.instances = map[string]*running{}
	w.mu.Unlock()
	for id, r := range all {
		if r.inst == nil {
			continue // still starting: its start fails with the closed context
		}
		if err := w.store.DeleteInstance(ctx, r.record.ServiceID, id); err != nil {
			w.log.WarnContext(ctx, "remove instance record", "instance_id", id, "err", err)
		}
		if err := r.inst.Stop(ctx); err != nil {
			w.log.WarnContext(ctx, "stop instance", "instance_id", id, "err", err)
		}
		if err := w.pub.Publish(ctx, events.InstanceStoppedV1{
			Meta: events.NewMeta(), InstanceID: id, ServiceID: r.record.ServiceID, WorkerID: w.id, Reason: reason,
		}); err != nil {
			w.log.WarnContext(ctx, "announce stopped instance", "instance_id", id, "err", err)
		}
	}
}
