// Package kvstore implements deploy.Store on JetStream key-value buckets:
// services by ID, names by owner for uniqueness, instances as workers
// report them.
package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// Store is a deploy.Store.
type Store struct {
	services  jetstream.KeyValue
	names     jetstream.KeyValue
	instances jetstream.KeyValue
}

var _ deploy.Store = (*Store)(nil)

// New returns a Store on the services, names and instances buckets.
func New(services, names, instances jetstream.KeyValue) *Store {
	return &Store{services: services, names: names, instances: instances}
}

// Create claims the owner's name first, so two concurrent creates of one
// name cannot both succeed, then stores the service.
func (s *Store) Create(ctx context.Context, svc state.Service) error {
	nameKey := svc.OwnerID + "." + svc.Name
	if _, err := s.names.Create(ctx, nameKey, []byte(svc.ID)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "a service named " + svc.Name + " already exists"}
		}
		return errs.Wrap(errs.Unavailable, err, "claim name %s", svc.Name)
	}
	b, err := json.Marshal(svc)
	if err != nil {
		return err
	}
	if _, err := s.services.Create(ctx, svc.ID, b); err != nil {
		_ = s.names.Delete(ctx, nameKey)
		return errs.Wrap(errs.Unavailable, err, "store service %s", svc.ID)
	}
	return nil
}

// Get implements deploy.Store.
func (s *Store) Get(ctx context.Context, id string) (state.Service, uint64, error) {
	if id == "" || strings.ContainsAny(id, ".*> ") {
		return state.Service{}, 0, errs.E(errs.NotFound, "service %q not found", id)
	}
	svc, rev, err := state.Get[state.Service](ctx, s.services, id)
	if errs.KindOf(err) == errs.NotFound {
		return svc, 0, errs.E(errs.NotFound, "service %s not found", id)
	}
	svc.RoutingPolicy = svc.Routing() // a record from before services had one
	return svc, rev, err
}

// Update implements deploy.Store with the bucket's revision check.
func (s *Store) Update(ctx context.Context, svc state.Service, rev uint64) error {
	b, err := json.Marshal(svc)
	if err != nil {
		return err
	}
	if _, err := s.services.Update(ctx, svc.ID, b, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return errs.Wrap(errs.Conflict, err, "service %s changed meanwhile", svc.ID)
		}
		return errs.Wrap(errs.Unavailable, err, "update service %s", svc.ID)
	}
	return nil
}

// List implements deploy.Store, oldest first.
func (s *Store) List(ctx context.Context) ([]state.Service, error) {
	all, err := state.List[state.Service](ctx, s.services, ">")
	if err != nil {
		return nil, err
	}
	for i := range all {
		all[i].RoutingPolicy = all[i].Routing()
	}
	slices.SortFunc(all, func(a, b state.Service) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return all, nil
}

// Instances implements deploy.Store.
func (s *Store) Instances(ctx context.Context, serviceID string) ([]state.Instance, error) {
	insts, err := state.List[state.Instance](ctx, s.instances, serviceID+".*")
	if err != nil {
		return nil, err
	}
	if insts == nil {
		insts = []state.Instance{}
	}
	return insts, nil
}

// ReleaseName implements deploy.Store: it deletes the owner's name only
// while it still points at s, so a name already reused stays claimed.
func (s *Store) ReleaseName(ctx context.Context, svc state.Service) error {
	nameKey := svc.OwnerID + "." + svc.Name
	e, err := s.names.Get(ctx, nameKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "read name %s", svc.Name)
	}
	if string(e.Value()) != svc.ID {
		return nil
	}
	err = s.names.Delete(ctx, nameKey, jetstream.LastRevision(e.Revision()))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return errs.Wrap(errs.Unavailable, err, "release name %s", svc.Name)
	}
	return nil
}
