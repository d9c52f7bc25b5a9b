package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// Owners is a deploy.OwnerStore on the owners bucket: each owner under
// its ID, and a "name.<handle>" claim that keeps handles unique.
type Owners struct{ kv jetstream.KeyValue }

var _ deploy.OwnerStore = Owners{}

// NewOwners returns Owners on the owners bucket.
func NewOwners(kv jetstream.KeyValue) Owners { return Owners{kv: kv} }

// CreateOwner implements deploy.OwnerStore: it claims the handle, then
// stores the owner. When storing the owner fails, the claim is
// compensated as a service's name is (see Store.Create): on a context
// that outlives the request, retried, keeping the handle if the owner was
// stored after all and freeing it, if it still points at this owner, when
// it was not.
func (s Owners) CreateOwner(ctx context.Context, o state.Owner) error {
	claim := "name." + o.Name
	if _, err := s.kv.Create(ctx, claim, []byte(o.ID)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "the name " + o.Name + " is taken"}
		}
		return errs.Wrap(errs.Unavailable, err, "claim owner name %s", o.Name)
	}
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	_, err = s.kv.Create(ctx, o.ID, b)
	if err == nil {
		return nil
	}
	if s.compensate(context.WithoutCancel(ctx), o, claim) {
		return nil
	}
	return errs.Wrap(errs.Unavailable, err, "store owner %s", o.Name)
}

// compensate settles a failed CreateOwner: it reports whether the owner
// is stored after all, and frees the handle when it is not.
func (s Owners) compensate(ctx context.Context, o state.Owner, claim string) (stored bool) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	wait := 100 * time.Millisecond
	for {
		_, err := s.kv.Get(ctx, o.ID)
		if err == nil {
			return true
		}
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			e, gerr := s.kv.Get(ctx, claim)
			switch {
			case errors.Is(gerr, jetstream.ErrKeyNotFound):
				return false
			case gerr == nil && string(e.Value()) != o.ID:
				return false
			case gerr == nil:
				derr := s.kv.Delete(ctx, claim, jetstream.LastRevision(e.Revision()))
				if derr == nil || errors.Is(derr, jetstream.ErrKeyExists) {
					return false
				}
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

// Owner implements deploy.OwnerStore.
func (s Owners) Owner(ctx context.Context, id string) (state.Owner, error) {
	if id == "" || strings.ContainsAny(id, ".*> ") {
		return state.Owner{}, errs.E(errs.NotFound, "owner %q not found", id)
	}
	o, _, err := state.Get[state.Owner](ctx, s.kv, id)
	return o, err
}

// Owners implements deploy.OwnerStore: the single-token keys, which are
// owner IDs, not the "name.<handle>" claims.
func (s Owners) Owners(ctx context.Context) ([]state.Owner, error) {
	return state.List[state.Owner](ctx, s.kv, "*")
}
