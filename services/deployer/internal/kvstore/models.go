package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/models"
	"github.com/nats-io/nats.go/jetstream"
)

// Models is a models.Store on the models bucket, each model under
// "<owner>.<name>": the owner is an owner ID or "public", and neither it
// nor a model name holds a dot.
type Models struct{ kv jetstream.KeyValue }

var _ models.Store = Models{}

// NewModels returns Models on the models bucket.
func NewModels(kv jetstream.KeyValue) Models { return Models{kv: kv} }

// validKey reports whether owner and name make a key that addresses one
// model: no dots, wildcards or spaces, nothing empty.
func validKey(owner, name string) bool {
	return owner != "" && name != "" && !strings.ContainsAny(owner+name, ".*> ")
}

// Create implements models.Store with the bucket's create-if-absent, so
// of two concurrent registrations of one name exactly one wins.
func (s Models) Create(ctx context.Context, m models.Model) error {
	if !validKey(m.Owner, m.Name) {
		return errs.E(errs.Invalid, "model %q of %q cannot be stored", m.Name, m.Owner)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := s.kv.Create(ctx, m.Owner+"."+m.Name, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "a model named " + m.Name + " already exists"}
		}
		return errs.Wrap(errs.Unavailable, err, "store model %s", m.Name)
	}
	return nil
}

// Get implements models.Store.
func (s Models) Get(ctx context.Context, owner, name string) (models.Model, error) {
	if !validKey(owner, name) {
		return models.Model{}, errs.E(errs.NotFound, "model %q not found", name)
	}
	m, _, err := state.Get[models.Model](ctx, s.kv, owner+"."+name)
	if errs.KindOf(err) == errs.NotFound {
		return models.Model{}, errs.E(errs.NotFound, "model %s not found", name)
	}
	return m, err
}

// List implements models.Store.
func (s Models) List(ctx context.Context, owner string) ([]models.Model, error) {
	if !validKey(owner, "x") {
		return nil, nil
	}
	return state.List[models.Model](ctx, s.kv, owner+".*")
}

// All implements models.Store.
func (s Models) All(ctx context.Context) ([]models.Model, error) {
	return state.List[models.Model](ctx, s.kv, ">")
}

// Delete implements models.Store.
func (s Models) Delete(ctx context.Context, owner, name string) error {
	if !validKey(owner, name) {
		return nil
	}
	if err := s.kv.Delete(ctx, owner+"."+name); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return errs.Wrap(errs.Unavailable, err, "delete model %s", name)
	}
	return nil
}
