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
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// Store is a deploy.Store.
type Store struct {
	services   jetstream.KeyValue
	names      jetstream.KeyValue
	instances  jetstream.KeyValue
	placements jetstream.KeyValue
	// settleFor bounds how long a failed create keeps trying to find out
	// whether its service was stored, to keep or free its name.
	settleFor time.Duration
}

var _ deploy.Store = (*Store)(nil)

// New returns a Store on the services, names, instances and placements
// buckets.
func New(services, names, instances, placements jetstream.KeyValue) *Store {
	return &Store{services: services, names: names, instances: instances, placements: placements, settleFor: 30 * time.Second}
}

// Create claims the owner's name first, so two concurrent creates of one
// name cannot both succeed, then stores the service. A name claimed by an
// earlier try of the same service (same ID) is its own, and a service
// stored already by one is no error.
//
// When storing the service fails, the claim is compensated on a context
// that outlives the request, retried for a while: if the service turns
// out to be stored after all (the write landed, its answer was lost), the
// create succeeded and the name stays; if it is not, the name is freed,
// if it still points at this service. What this cannot settle (NATS gone
// for longer) the deployer's sweep does: it frees names whose service
// does not exist.
func (s *Store) Create(ctx context.Context, svc state.Service) error {
	nameKey := svc.OwnerID + "." + svc.Name
	if _, err := s.names.Create(ctx, nameKey, []byte(svc.ID)); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return errs.Wrap(errs.Unavailable, err, "claim name %s", svc.Name)
		}
		if e, gerr := s.names.Get(ctx, nameKey); gerr != nil || string(e.Value()) != svc.ID {
			return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "a service named " + svc.Name + " already exists"}
		}
	}
	b, err := json.Marshal(svc)
	if err != nil {
		return err
	}
	_, err = s.services.Create(ctx, svc.ID, b)
	if err == nil || errors.Is(err, jetstream.ErrKeyExists) {
		return nil
	}
	if stored := s.compensate(context.WithoutCancel(ctx), svc, nameKey); stored {
		return nil
	}
	return errs.Wrap(errs.Unavailable, err, "store service %s", svc.ID)
}

// compensate settles a failed create: it reports whether the service is
// stored after all, and frees its name claim when it is not.
func (s *Store) compensate(ctx context.Context, svc state.Service, nameKey string) (stored bool) {
	ctx, cancel := context.WithTimeout(ctx, s.settleFor)
	defer cancel()
	wait := 100 * time.Millisecond
	for {
		_, err := s.services.Get(ctx, svc.ID)
		if err == nil {
			return true
		}
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if err := s.releaseClaim(ctx, nameKey, svc.ID); err == nil {
				return false
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// releaseClaim deletes a name claim if it still points at serviceID.
func (s *Store) releaseClaim(ctx context.Context, nameKey, serviceID string) error {
	e, err := s.names.Get(ctx, nameKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "read name %s", nameKey)
	}
	if string(e.Value()) != serviceID {
		return nil
	}
	err = s.names.Delete(ctx, nameKey, jetstream.LastRevision(e.Revision()))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return errs.Wrap(errs.Unavailable, err, "release name %s", nameKey)
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

// Remove implements deploy.Store with the bucket's revision check.
func (s *Store) Remove(ctx context.Context, svc state.Service, rev uint64) error {
	if err := s.services.Delete(ctx, svc.ID, jetstream.LastRevision(rev)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return errs.Wrap(errs.Conflict, err, "service %s changed meanwhile", svc.ID)
		}
		return errs.Wrap(errs.Unavailable, err, "remove service %s", svc.ID)
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

// Placements implements deploy.Store: the keys under the service's prefix.
func (s *Store) Placements(ctx context.Context, serviceID string) ([]state.Placement, error) {
	return state.List[state.Placement](ctx, s.placements, serviceID+".*")
}

// AllInstances implements deploy.Store.
func (s *Store) AllInstances(ctx context.Context) ([]state.Instance, error) {
	return state.List[state.Instance](ctx, s.instances, ">")
}

// AllPlacements implements deploy.Store.
func (s *Store) AllPlacements(ctx context.Context) ([]state.Placement, error) {
	return state.List[state.Placement](ctx, s.placements, ">")
}

// ReleaseName implements deploy.Store: it deletes the owner's name only
// while it still points at s, so a name already reused stays claimed.
func (s *Store) ReleaseName(ctx context.Context, svc state.Service) error {
	return s.releaseClaim(ctx, svc.OwnerID+"."+svc.Name, svc.ID)
}

// TidyNames frees the names claimed for services that do not exist, or
// are deleted, once the claim is older than minAge (a create in progress
// claims its name before it stores its service), and claims again the
// names of services that lost theirs, so names stay unique.
func (s *Store) TidyNames(ctx context.Context, minAge time.Duration) error {
	w, err := s.names.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "list names")
	}
	type claim struct {
		serviceID string
		created   time.Time
	}
	claims := map[string]claim{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		claims[e.Key()] = claim{serviceID: string(e.Value()), created: e.Created()}
	}
	_ = w.Stop()
	services, err := s.List(ctx)
	if err != nil {
		return err
	}
	byID := map[string]state.Service{}
	for _, svc := range services {
		byID[svc.ID] = svc
	}
	var seen []error
	for key, c := range claims {
		svc, ok := byID[c.serviceID]
		if (!ok || svc.Status == state.StatusDeleted) && time.Since(c.created) > minAge {
			seen = append(seen, s.releaseClaim(ctx, key, c.serviceID))
		}
	}
	for _, svc := range services {
		key := svc.OwnerID + "." + svc.Name
		if _, ok := claims[key]; ok || svc.Status == state.StatusDeleted {
			continue
		}
		if _, err := s.names.Create(ctx, key, []byte(svc.ID)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			seen = append(seen, errs.Wrap(errs.Unavailable, err, "claim name %s again", key))
		}
	}
	return errors.Join(seen...)
}

// PurgeMarkers removes the delete markers older than olderThan from the
// services and names buckets.
func (s *Store) PurgeMarkers(ctx context.Context, olderThan time.Duration) error {
	for _, kv := range []jetstream.KeyValue{s.services, s.names} {
		if err := state.PurgeMarkers(ctx, kv, olderThan); err != nil {
			return err
		}
	}
	return nil
}
