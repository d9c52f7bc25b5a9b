// Package scale is the scaler's domain: turning a service's desired
// instance count into placements on live workers, in both directions.
package scale

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Store reads services, workers and instances, records placements, and
// removes the instance records of workers that died. Implemented by
// internal/kvstore.
type Store interface {
	Service(ctx context.Context, id string) (state.Service, error)
	Services(ctx context.Context) ([]state.Service, error)
	LiveWorkers(ctx context.Context) ([]state.Worker, error)
	Placements(ctx context.Context) ([]state.Placement, error)
	Place(ctx context.Context, p state.Placement) error
	Unplace(ctx context.Context, p state.Placement) error
	Instances(ctx context.Context) ([]state.Instance, error)
	DeleteInstance(ctx context.Context, serviceID, instanceID string) error
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Option configures a Scaler.
type Option func(*Scaler)

// WithClock has the scaler read the time from now; tests move it forward.
func WithClock(now func() time.Time) Option { return func(s *Scaler) { s.now = now } }

// Scaler places and releases instances. Reconciles are serialized, so the
// event handlers and the periodic sweep never place or release the same
// slot twice. Its methods are safe for concurrent use.
type Scaler struct {
	store   Store
	pub     Publisher
	log     *slog.Logger
	now     func() time.Time
	started time.Time
	mu      sync.Mutex
	// unplaceable is the reason last announced, per service, for
	// instances that could not be placed; guarded by mu.
	unplaceable map[string]string
}

// New returns a Scaler.
func New(store Store, pub Publisher, log *slog.Logger, opts ...Option) *Scaler {
	s := &Scaler{store: store, pub: pub, log: log, now: time.Now, unplaceable: map[string]string{}}
	for _, o := range opts {
		o(s)
	}
	s.started = s.now()
	return s
}

// ReconcileService brings one service to its desired instance count:
// desired is its Instances, or zero once it is deleting or deleted. It
// first forgets placements on dead workers, then releases the extra
// instances or places the missing ones. A service whose record no longer
// exists has all its placements released.
func (s *Scaler) ReconcileService(ctx context.Context, serviceID string) error {
	return s.reconcile(ctx, func(ctx context.Context) ([]state.Service, func(string) bool, error) {
		only := func(id string) bool { return id == serviceID }
		svc, err := s.store.Service(ctx, serviceID)
		switch {
		case errs.KindOf(err) == errs.NotFound:
			return nil, only, nil
		case err != nil:
			return nil, nil, err
		}
		return []state.Service{svc}, only, nil
	})
}

// ReconcileAll reconciles every service, and releases the placements of
// services that no longer exist; it is the sweep that repairs anything an
// event alone did not.
func (s *Scaler) ReconcileAll(ctx context.Context) error {
	return s.reconcile(ctx, func(ctx context.Context) ([]state.Service, func(string) bool, error) {
		all, err := s.store.Services(ctx)
		return all, func(string) bool { return true }, err
	})
}

// loadFunc returns the services to reconcile and which service IDs the
// reconcile may touch. It runs under the scaler's lock, so a service it
// lists existed before any placement the reconcile then reads.
type loadFunc func(ctx context.Context) (services []state.Service, inScope func(serviceID string) bool, err error)

func (s *Scaler) reconcile(ctx context.Context, load loadFunc) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	services, inScope, err := load(ctx)
	if err != nil {
		return err
	}
	placements, err := s.store.Placements(ctx)
	if err != nil {
		return err
	}
	workers, err := s.store.LiveWorkers(ctx)
	if err != nil {
		return err
	}
	instances, err := s.store.Instances(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, w := range workers {
		live[w.ID] = true
	}
	ready := map[string]bool{}
	for _, in := range instances {
		ready[state.InstanceKey(in.ServiceID, in.ID)] = in.Status == state.InstanceReady
	}

	// Placements on dead workers are forgotten, and so are their instance
	// records, so the router stops routing to them; their slots are
	// placed again below.
	now := s.now()
	perService := map[string][]state.Placement{}
	perWorker := map[string]int{}
	used := map[string]int64{} // memory the placements hold, by worker
	placed := map[string]bool{}
	forgotten := map[string]bool{}
	for _, p := range placements {
		key := state.InstanceKey(p.ServiceID, p.InstanceID)
		if inScope(p.ServiceID) && s.dead(p.WorkerID, p.PlacedAt, live, now) {
			if err := s.forget(ctx, p); err != nil {
				return err
			}
			forgotten[key] = true
			continue
		}
		perService[p.ServiceID] = append(perService[p.ServiceID], p)
		perWorker[p.WorkerID]++
		used[p.WorkerID] += usedMemory(p)
		placed[key] = true
	}
	// Records of dead workers' instances whose placements are already gone
	// (released while the worker died, so it never drained them) would
	// never be removed otherwise, and their time would never end.
	for _, in := range instances {
		key := state.InstanceKey(in.ServiceID, in.ID)
		if inScope(in.ServiceID) && !placed[key] && !forgotten[key] && s.dead(in.WorkerID, in.UpdatedAt, live, now) {
			if err := s.announceGone(ctx, in.ServiceID, in.ID, in.WorkerID); err != nil {
				return err
			}
			if err := s.store.DeleteInstance(ctx, in.ServiceID, in.ID); err != nil {
				return err
			}
			s.log.WarnContext(ctx, "instance record of a dead worker removed", "service_id", in.ServiceID, "instance_id", in.ID, "worker_id", in.WorkerID)
		}
	}

	// Releases first: they free room that placements may use.
	known := map[string]bool{}
	for _, svc := range services {
		known[svc.ID] = true
		want, reason := desired(svc)
		if err := s.releaseExtra(ctx, perService[svc.ID], want, reason, ready, perWorker); err != nil {
			return err
		}
	}
	for id, ps := range perService {
		if !known[id] && inScope(id) {
			if err := s.releaseExtra(ctx, ps, 0, "service deleted", ready, perWorker); err != nil {
				return err
			}
		}
	}

	for _, svc := range services {
		want, _ := desired(svc)
		missing := want - len(perService[svc.ID])
		if missing <= 0 || svc.Status == state.StatusFailed {
			delete(s.unplaceable, svc.ID)
			continue
		}
		n := needOf(svc.Model)
		for i := range missing {
			candidates, short := fitting(workers, n, used)
			w, ok := leastLoaded(candidates, perWorker)
			if !ok {
				reason := fmt.Sprintf("no worker has room (%d live workers)", len(workers))
				if short != "" {
					reason = short
				}
				s.placementFailed(ctx, svc, want, want-missing+i, reason)
				return errs.E(errs.Unavailable, "%s for service %s", reason, svc.ID)
			}
			if err := s.place(ctx, svc, w.ID); err != nil {
				return err
			}
			perWorker[w.ID]++
			if n.gpus == 0 {
				used[w.ID] += n.memory
			}
		}
		delete(s.unplaceable, svc.ID)
	}
	return nil
}

// placementFailed announces that a service's instances cannot all be
// placed, once per reason and count: the scaler retries at every
// reconcile.
func (s *Scaler) placementFailed(ctx context.Context, svc state.Service, wanted, placed int, reason string) {
	key := fmt.Sprintf("%d/%d %s", placed, wanted, reason)
	if s.unplaceable[svc.ID] == key {
		return
	}
	ev := events.PlacementFailedV1{Meta: events.NewMeta(), ServiceID: svc.ID, OwnerID: svc.OwnerID, Wanted: wanted, Placed: placed, Reason: reason}
	if err := s.pub.Publish(ctx, ev); err != nil {
		s.log.WarnContext(ctx, "announce failed placement", "service_id", svc.ID, "err", err)
		return
	}
	s.unplaceable[svc.ID] = key
	s.log.WarnContext(ctx, "instances not placed", "service_id", svc.ID, "wanted", wanted, "placed", placed, "reason", reason)
}

// InstanceFailed forgets the placement of an instance its worker gave up
// on (the worker has stopped it and freed its slot). If the service still
// has a ready instance it reconciles it, placing a replacement; if not, it
// places nothing: the deployer marks such a service failed by the same
// rule, and its owner retries it by scaling it again. Deciding here from
// the instances, not from the service's status, keeps the two from
// depending on which of them handles the event first.
func (s *Scaler) InstanceFailed(ctx context.Context, ev events.InstanceFailedV1) error {
	s.mu.Lock()
	placements, err := s.store.Placements(ctx)
	if err == nil {
		for _, p := range placements {
			if p.ServiceID == ev.ServiceID && p.InstanceID == ev.InstanceID {
				err = s.store.Unplace(ctx, p)
				break
			}
		}
	}
	var instances []state.Instance
	if err == nil {
		instances, err = s.store.Instances(ctx)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	serving := slices.ContainsFunc(instances, func(in state.Instance) bool {
		return in.ServiceID == ev.ServiceID && in.ID != ev.InstanceID && in.Status == state.InstanceReady
	})
	s.log.WarnContext(ctx, "instance failed; placement forgotten", "service_id", ev.ServiceID, "instance_id", ev.InstanceID,
		"worker_id", ev.WorkerID, "reason", ev.Reason, "replaced", serving)
	if !serving {
		return nil
	}
	return s.ReconcileService(ctx, ev.ServiceID)
}

// desired is how many instances a service should have, and the reason
// given for releasing those above it.
func desired(svc state.Service) (int, string) {
	if svc.Status == state.StatusDeleting || svc.Status == state.StatusDeleted {
		return 0, "service deleted"
	}
	n := max(svc.Instances, 0)
	return n, fmt.Sprintf("scaled down to %d", n)
}

// dead reports whether a worker is gone: absent from the workers bucket,
// whose TTL drops a worker that stopped beating, for longer than a TTL
// since since. A scaler younger than a TTL decides nothing: the workers it
// cannot see yet may simply not have beaten since it started.
func (s *Scaler) dead(workerID string, since time.Time, live map[string]bool, now time.Time) bool {
	return !live[workerID] && now.Sub(since) > state.WorkerTTL && now.Sub(s.started) > state.WorkerTTL
}

// forget announces that a dead worker's instance is gone, then removes its
// placement and its instance record. The announcement comes first so that
// it is made at least once: if it fails, nothing is removed and the next
// reconcile tries again; if a removal fails after it, the next reconcile
// announces the loss again, which its consumers take as the same loss.
func (s *Scaler) forget(ctx context.Context, p state.Placement) error {
	if err := s.announceGone(ctx, p.ServiceID, p.InstanceID, p.WorkerID); err != nil {
		return err
	}
	if err := s.store.Unplace(ctx, p); err != nil {
		return err
	}
	if err := s.store.DeleteInstance(ctx, p.ServiceID, p.InstanceID); err != nil {
		return fmt.Errorf("forget instance %s of dead worker %s: %w", p.InstanceID, p.WorkerID, err)
	}
	s.log.WarnContext(ctx, "worker gone; instance unplaced", "service_id", p.ServiceID, "instance_id", p.InstanceID, "worker_id", p.WorkerID)
	return nil
}

// announceGone publishes the release of an instance whose worker stopped
// beating, with WorkerGone set and the time the scaler judged it dead. A
// dead worker announces no stop, so billing ends the instance's time here;
// should the worker come back, it stops the instance, whose slot has been
// placed again elsewhere.
func (s *Scaler) announceGone(ctx context.Context, serviceID, instanceID, workerID string) error {
	m := events.NewMeta()
	m.OccurredAt = s.now().UTC()
	ev := events.InstanceReleasedV1{
		Meta: m, InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
		Reason: fmt.Sprintf("worker %s stopped beating", workerID), WorkerGone: true,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce loss of instance %s on dead worker %s: %w", instanceID, workerID, err)
	}
	return nil
}

// releaseExtra releases placements of one service until want remain:
// instances not ready yet first (they serve nothing), then those on the
// most loaded worker, then the newest.
func (s *Scaler) releaseExtra(ctx context.Context, ps []state.Placement, want int, reason string, ready map[string]bool, perWorker map[string]int) error {
	left := append([]state.Placement(nil), ps...)
	for len(left) > want {
		best := 0
		for i := 1; i < len(left); i++ {
			if releaseFirst(left[i], left[best], ready, perWorker) {
				best = i
			}
		}
		p := left[best]
		if err := s.release(ctx, p, reason); err != nil {
			return err
		}
		perWorker[p.WorkerID]--
		left = append(left[:best], left[best+1:]...)
	}
	return nil
}

// releaseFirst reports whether a should be released before b.
func releaseFirst(a, b state.Placement, ready map[string]bool, perWorker map[string]int) bool {
	ra, rb := ready[state.InstanceKey(a.ServiceID, a.InstanceID)], ready[state.InstanceKey(b.ServiceID, b.InstanceID)]
	if ra != rb {
		return !ra
	}
	if c := cmp.Compare(perWorker[a.WorkerID], perWorker[b.WorkerID]); c != 0 {
		return c > 0
	}
	if !a.PlacedAt.Equal(b.PlacedAt) {
		return a.PlacedAt.After(b.PlacedAt)
	}
	return a.InstanceID < b.InstanceID
}

// release removes a placement and tells its worker to stop the instance.
func (s *Scaler) release(ctx context.Context, p state.Placement, reason string) error {
	if err := s.store.Unplace(ctx, p); err != nil {
		return err
	}
	ev := events.InstanceReleasedV1{
		Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID, Reason: reason,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		// Without the event the worker keeps running it: put the placement
		// back so the next reconcile releases it again.
		if perr := s.store.Place(context.WithoutCancel(ctx), p); perr != nil {
			s.log.ErrorContext(ctx, "released instance left running without its placement", "instance_id", p.InstanceID, "err", perr)
		}
		return fmt.Errorf("announce release of %s: %w", p.InstanceID, err)
	}
	s.log.InfoContext(ctx, "instance released", "service_id", p.ServiceID, "instance_id", p.InstanceID, "worker_id", p.WorkerID, "reason", reason)
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
		PlacedAt: s.now().UTC(), Model: svc.Model,
	}
	if err := s.store.Place(ctx, p); err != nil {
		return err
	}
	ev := events.InstancePlacedV1{
		Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID,
		AccessName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine, Model: p.Model,
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
