package deploy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// OwnerStore keeps users and organisations. Implemented by
// internal/kvstore.
type OwnerStore interface {
	// CreateOwner stores a new owner; a handle already taken is errs.Conflict.
	CreateOwner(ctx context.Context, o state.Owner) error
	// Owner returns one owner, or errs.NotFound.
	Owner(ctx context.Context, id string) (state.Owner, error)
	// Owners returns every owner.
	Owners(ctx context.Context) ([]state.Owner, error)
}

// OwnerRequest is what an admin asks for: a user or an organisation with
// a unique handle.
type OwnerRequest struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// NewOwner is a created owner with its first API key, shown once.
type NewOwner struct {
	state.Owner
	Key KeyView `json:"api_key"`
}

// Owners lets admins create users and organisations, each with a first
// API key; from then on the owner's keys create services and more keys.
// It is safe for concurrent use.
type Owners struct {
	store OwnerStore
	keys  KeyStore
	now   func() time.Time
}

// NewOwners returns Owners.
func NewOwners(store OwnerStore, keys KeyStore) *Owners {
	return &Owners{store: store, keys: keys, now: func() time.Time { return time.Now().UTC() }}
}

func adminOnly(caller auth.Key) error {
	if !caller.Admin {
		return errs.E(errs.Forbidden, "only admins manage users and organisations")
	}
	return nil
}

// Create makes an owner and its first API key.
func (o *Owners) Create(ctx context.Context, caller auth.Key, req OwnerRequest) (NewOwner, error) {
	if err := adminOnly(caller); err != nil {
		return NewOwner{}, err
	}
	if req.Kind == "" {
		req.Kind = state.OwnerUser
	}
	if req.Kind != state.OwnerUser && req.Kind != state.OwnerOrganization {
		return NewOwner{}, errs.InvalidParam("kind", "kind must be user or organization")
	}
	req.Name = strings.TrimSpace(req.Name)
	if !namePattern.MatchString(req.Name) {
		return NewOwner{}, errs.InvalidParam("name", "name must be 1-63 lowercase letters, digits or hyphens, starting and ending with a letter or digit")
	}
	owner := state.Owner{ID: auth.NewOwnerID(), Kind: req.Kind, Name: req.Name, CreatedAt: o.now()}
	if err := o.store.CreateOwner(ctx, owner); err != nil {
		return NewOwner{}, err
	}
	v, err := o.newKey(ctx, owner.ID, "first key")
	if err != nil {
		return NewOwner{}, fmt.Errorf("owner %s created, but its first key was not stored (create one with POST /api/v1/owners/%s/keys): %w", owner.ID, owner.ID, err)
	}
	return NewOwner{Owner: owner, Key: v}, nil
}

// CreateKey makes a new unrestricted key for an existing owner, as when an
// organisation has revoked or lost all of its keys. Admins only.
func (o *Owners) CreateKey(ctx context.Context, caller auth.Key, ownerID, name string) (KeyView, error) {
	if err := adminOnly(caller); err != nil {
		return KeyView{}, err
	}
	name = strings.TrimSpace(name)
	if name == "" {
		name = "issued by an admin"
	}
	if len(name) > 64 {
		return KeyView{}, errs.InvalidParam("name", "name must be 1-64 printable characters")
	}
	if _, err := o.store.Owner(ctx, ownerID); err != nil {
		return KeyView{}, err
	}
	return o.newKey(ctx, ownerID, name)
}

// newKey stores a new key for ownerID and returns it with its secret.
func (o *Owners) newKey(ctx context.Context, ownerID, name string) (KeyView, error) {
	secret := auth.NewSecret()
	k := auth.NewKey(secret, ownerID, false)
	k.Name = name
	if err := o.keys.Put(ctx, k); err != nil {
		return KeyView{}, err
	}
	v := viewOf(k)
	v.Secret = secret
	return v, nil
}

// List returns every owner, oldest first.
func (o *Owners) List(ctx context.Context, caller auth.Key) ([]state.Owner, error) {
	if err := adminOnly(caller); err != nil {
		return nil, err
	}
	list, err := o.store.Owners(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(list, func(a, b state.Owner) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return list, nil
}

// Me describes the caller: its key (never the secret) and its owner.
type Me struct {
	Key   KeyView      `json:"api_key"`
	Admin bool         `json:"admin"`
	Owner *state.Owner `json:"owner,omitempty"` // absent for the installation's admin
	// OwnerID is the ID in the caller's access names, u-<owner_id>/<name>.
	OwnerID string `json:"owner_id"`
}

// Me returns what the caller's key is and whom it acts for.
func (o *Owners) Me(ctx context.Context, caller auth.Key) (Me, error) {
	me := Me{Key: viewOf(caller), Admin: caller.Admin, OwnerID: caller.OwnerID}
	owner, err := o.store.Owner(ctx, caller.OwnerID)
	switch {
	case err == nil:
		me.Owner = &owner
	case errs.KindOf(err) != errs.NotFound:
		return Me{}, err
	}
	return me, nil
}
