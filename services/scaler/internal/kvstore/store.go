// Package kvstore implements scale.Store on the services, workers and
// placements buckets.
package kvstore

import (
	"context"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
	"github.com/nats-io/nats.go/jetstream"
)

// Store is a scale.Store.
type Store struct {
	services   jetstream.KeyValue
	workers    jetstream.KeyValue
	placements jetstream.KeyValue
}

var _ scale.Store = (*Store)(nil)

// New returns a Store.
func New(services, workers, placements jetstream.KeyValue) *Store {
	return &Store{services: services, workers: workers, placements: placements}
}

// Service implements scale.Store.
func (s *Store) Service(ctx context.Context, id string) (state.Service, error) {
	if id == "" || strings.ContainsAny(id, ".*> ") {
		return state.Service{}, errs.E(errs.Invalid, "service id %q is malformed", id)
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
