// Package kvstore implements scale.Store and autoscale.Store on the
// services, workers, placements, instances and load buckets.
package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/autoscale"
	"github.com/modelport/modelport/services/scaler/internal/scale"
	"github.com/nats-io/nats.go/jetstream"
)

// Store is a scale.Store.
type Store struct {
	services   jetstream.KeyValue
	workers    jetstream.KeyValue
	placements jetstream.KeyValue
	instances  jetstream.KeyValue
	loads      jetstream.KeyValue
}

var (
	_ scale.Store     = (*Store)(nil)
	_ autoscale.Store = (*Store)(nil)
)

// New returns a Store. The scaler only reads the services and workers
// buckets; it writes placements, and deletes from instances only the
// records of workers that died.
func New(services, workers, placements, instances, loads jetstream.KeyValue) *Store {
	return &Store{services: services, workers: workers, placements: placements, instances: instances, loads: loads}
}

// Loads implements autoscale.Store: the routers' demand reports, each
// with ReportedAt taken from the NATS server's time of the write rather
// than the router's clock, so a router whose clock is off cannot make its
// reports look stale or fresh.
func (s *Store) Loads(ctx context.Context) ([]state.Load, error) {
	w, err := s.loads.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "list load reports")
	}
	defer func() { _ = w.Stop() }()
	var out []state.Load
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return out, nil
			}
			var l state.Load
			if err := json.Unmarshal(e.Value(), &l); err != nil {
				continue // a report that does not decode counts as none
			}
			l.ReportedAt = e.Created()
			out = append(out, l)
		}
	}
}

// Service implements scale.Store.
func (s *Store) Service(ctx context.Context, id string) (state.Service, error) {
	if err := checkID(id); err != nil {
		return state.Service{}, err
	}
	svc, _, err := state.Get[state.Service](ctx, s.services, id)
	return svc, err
}

// Services implements scale.Store.
func (s *Store) Services(ctx context.Context) ([]state.Service, error) {
	return state.List[state.Service](ctx, s.services, ">")
}

// LiveWorkers implements scale.Store: the bucket's TTL drops workers that
// stopped beating.
func (s *Store) LiveWorkers(ctx context.Context) ([]state.Worker, error) {
	return state.List[state.Worker](ctx, s.workers, ">")
}

// Placements implements scale.Store.
func (s *Store) Placements(ctx context.Context) ([]state.Placement, error) {
	return state.List[state.Placement](ctx, s.placements, ">")
}

// ServicePlacements implements scale.Store: the keys under the service's
// prefix only.
func (s *Store) ServicePlacements(ctx context.Context, serviceID string) ([]state.Placement, error) {
	if err := checkID(serviceID); err != nil {
		return nil, err
	}
	return state.List[state.Placement](ctx, s.placements, serviceID+".*")
}

// ServiceInstances implements scale.Store: the keys under the service's
// prefix only.
func (s *Store) ServiceInstances(ctx context.Context, serviceID string) ([]state.Instance, error) {
	if err := checkID(serviceID); err != nil {
		return nil, err
	}
	return state.List[state.Instance](ctx, s.instances, serviceID+".*")
}

func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, ".*> ") {
		return errs.E(errs.Invalid, "service id %q is malformed", id)
	}
	return nil
}

// PurgeMarkers removes the delete markers older than olderThan from the
// placements and instances buckets (the scaler's, and the records of
// instances it removes for dead workers).
func (s *Store) PurgeMarkers(ctx context.Context, olderThan time.Duration) error {
	for _, kv := range []jetstream.KeyValue{s.placements, s.instances} {
		if err := state.PurgeMarkers(ctx, kv, olderThan); err != nil {
			return err
		}
	}
	return nil
}

// Place implements scale.Store.
func (s *Store) Place(ctx context.Context, p state.Placement) error {
	return state.Put(ctx, s.placements, state.InstanceKey(p.ServiceID, p.InstanceID), p)
}

// Unplace implements scale.Store.
func (s *Store) Unplace(ctx context.Context, p state.Placement) error {
	if err := s.placements.Delete(ctx, state.InstanceKey(p.ServiceID, p.InstanceID)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "remove placement %s", p.InstanceID)
	}
	return nil
}

// Instances implements scale.Store.
func (s *Store) Instances(ctx context.Context) ([]state.Instance, error) {
	return state.List[state.Instance](ctx, s.instances, ">")
}

// DeleteInstance implements scale.Store; a record already gone is no error.
func (s *Store) DeleteInstance(ctx context.Context, serviceID, instanceID string) error {
	err := s.instances.Delete(ctx, state.InstanceKey(serviceID, instanceID))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return errs.Wrap(errs.Unavailable, err, "delete instance %s", instanceID)
	}
	return nil
}
