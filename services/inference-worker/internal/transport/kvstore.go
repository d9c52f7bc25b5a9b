// Package transport connects the worker to JetStream: the placements it
// consumes and the buckets where it records instances and heartbeats.
package transport

import (
	"context"
	"errors"
	"slices"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
	"github.com/nats-io/nats.go/jetstream"
)

// Store implements worker.Store on the instances and workers buckets, and
// reads the placements bucket on start.
type Store struct {
	Instances  jetstream.KeyValue
	Workers    jetstream.KeyValue
	Placements jetstream.KeyValue
}

var _ worker.Store = (*Store)(nil)

// PutInstance implements worker.Store.
func (s *Store) PutInstance(ctx context.Context, inst state.Instance) error {
	return state.Put(ctx, s.Instances, state.InstanceKey(inst.ServiceID, inst.ID), inst)
}

// DeleteInstance implements worker.Store.
func (s *Store) DeleteInstance(ctx context.Context, serviceID, instanceID string) error {
	err := s.Instances.Delete(ctx, state.InstanceKey(serviceID, instanceID))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return errs.Wrap(errs.Unavailable, err, "delete instance %s", instanceID)
	}
	return nil
}

// Beat implements worker.Store.
func (s *Store) Beat(ctx context.Context, w state.Worker) error {
	return state.Put(ctx, s.Workers, w.ID, w)
}

// Placed implements worker.Store: the placement is in the bucket, for
// workerID, and has not failed.
func (s *Store) Placed(ctx context.Context, serviceID, instanceID, workerID string) (bool, error) {
	p, _, err := state.Get[state.Placement](ctx, s.Placements, state.InstanceKey(serviceID, instanceID))
	switch {
	case errs.KindOf(err) == errs.NotFound:
		return false, nil
	case err != nil:
		return false, err
	}
	return p.WorkerID == workerID && p.Failed == "", nil
}

// LastBeat returns the heartbeat workerID left in the bucket, if it has not
// expired: what an earlier run under the same ID held.
func (s *Store) LastBeat(ctx context.Context, workerID string) (state.Worker, bool, error) {
	w, _, err := state.Get[state.Worker](ctx, s.Workers, workerID)
	switch {
	case errs.KindOf(err) == errs.NotFound:
		return state.Worker{}, false, nil
	case err != nil:
		return state.Worker{}, false, err
	}
	return w, true, nil
}

// StaleInstances lists instance records left by an earlier run of workerID.
func (s *Store) StaleInstances(ctx context.Context, workerID string) ([]state.Instance, error) {
	all, err := state.List[state.Instance](ctx, s.Instances, ">")
	return filterWorker(all, err, workerID, func(in state.Instance) string { return in.WorkerID })
}

// PlacedOn lists the instances the scaler placed on workerID, failed
// placements left out.
func (s *Store) PlacedOn(ctx context.Context, workerID string) ([]state.Placement, error) {
	all, err := state.List[state.Placement](ctx, s.Placements, ">")
	mine, err := filterWorker(all, err, workerID, func(p state.Placement) string { return p.WorkerID })
	return slices.DeleteFunc(mine, func(p state.Placement) bool { return p.Failed != "" }), err
}

func filterWorker[T any](all []T, err error, workerID string, worker func(T) string) ([]T, error) {
	if err != nil {
		return nil, err
	}
	var mine []T
	for _, v := range all {
		if worker(v) == workerID {
			mine = append(mine, v)
		}
	}
	return mine, nil
}
