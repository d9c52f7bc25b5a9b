package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

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

// CreateOwner implements deploy.OwnerStore.
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
	if _, err := s.kv.Create(ctx, o.ID, b); err != nil {
		_ = s.kv.Delete(ctx, claim)
		return errs.Wrap(errs.Unavailable, err, "store owner %s", o.Name)
	}
	return nil
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
