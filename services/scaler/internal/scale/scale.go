// Package scale is the scaler's domain: turning a service's desired
// instance count into placements on live workers.
package scale

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Store reads services and workers and records placements. Implemented by
// internal/kvstore.
type Store interface {
	Service(ctx context.Context, id string) (state.Service, error)
	Services(ctx context.Context) ([]state.Service, error)
	LiveWorkers(ctx context.Context) ([]state.Worker, error)
	Placements(ctx context.Context) ([]state.Placement, error)
	Place(ctx context.Context, p state.Placement) error
	Unplace(ctx context.Context, p state.Placement) error
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Scaler places instances. Reconciles are serialized, so the event handler
// and the periodic sweep never place the same slot twice.
type Scaler struct {
	store Store
	pub   Publisher
	log   *slog.Logger
	mu    sync.Mutex
}

// New returns a Scaler.
func New(store Store, pub Publisher, log *slog.Logger) *Scaler {
	return &Scaler{store: store, pub: pub, log: log}
}

// ReconcileService places the missing instances of one service.
func (s *Scaler) ReconcileService(ctx context.Context, serviceID string) error {
	svc, err := s.store.Service(ctx, serviceID)
	if err != nil {
		return err
	}
	return s.reconcile(ctx, []state.Service{svc})
}

// ReconcileAll places the missing instances of every service; it is the
// sweep that repairs anything an event alone did not.
func (s *Scaler) ReconcileAll(ctx context.Context) error {
	all, err := s.store.Services(ctx)
	if err != nil {
		return err
	}
	return s.reconcile(ctx, all)
}

func (s *Scaler) reconcile(ctx context.Context, services []state.Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	placements, err := s.store.Placements(ctx)
	if err != nil {
		return err
	}
	perService := map[string]int{}
	perWorker := map[string]int{}
	for _, p := range placements {
		perService[p.ServiceID]++
		perWorker[p.WorkerID]++
	}
	var workers []state.Worker
	for _, svc := range services {
		missing := svc.Instances - perService[svc.ID]
		if missing <= 0 || svc.Status == state.StatusFailed {
			continue
		}
		if workers == nil {
			if workers, err = s.store.LiveWorkers(ctx); err != nil {
				return err
			}
		}
		for range missing {
			w, ok := leastLoaded(workers, perWorker)
			if !ok {
				return errs.E(errs.Unavailable, "no worker has room for service %s (%d live workers)", svc.ID, len(workers))
			}
			if err := s.place(ctx, svc, w.ID); err != nil {
				return err
			}
			perWorker[w.ID]++
		}
	}
	return nil
}

// leastLoaded returns the live worker with the most free capacity.
func leastLoaded(workers []state.Worker, placed map[string]int) (state.Worker, bool) {
	best, bestFree := state.Worker{}, 0
	for _, w := range workers {
		if free := w.Capacity - placed[w.ID]; free > bestFree {
			best, bestFree = w, free
		}
	}
	return best, bestFree > 0
}

func (s *Scaler) place(ctx context.Context, svc state.Service, workerID string) error {
	p := state.Placement{
		InstanceID: uuid.NewString(), ServiceID: svc.ID, WorkerID: workerID,
		AccessName: svc.AccessName, BaseModel: svc.BaseModel, Task: svc.Task, Engine: svc.Engine,
		PlacedAt: time.Now().UTC(),
	}
	if err := s.store.Place(ctx, p); err != nil {
		return err
	}
	ev := events.InstancePlacedV1{
		Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID,
		AccessName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		// Without the event no worker starts it: take the slot back so the
		// next reconcile tries again.
		if uerr := s.store.Unplace(context.WithoutCancel(ctx), p); uerr != nil {
			s.log.ErrorContext(ctx, "placement left without its event", "instance_id", p.InstanceID, "err", uerr)
		}
		return fmt.Errorf("announce placement %s: %w", p.InstanceID, err)
	}
	s.log.InfoContext(ctx, "instance placed", "service_id", svc.ID, "instance_id", p.InstanceID, "worker_id", workerID)
	return nil
}
