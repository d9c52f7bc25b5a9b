package deploy

import (
	"context"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// KeyStore keeps API keys. Implemented by *auth.Keyring.
type KeyStore interface {
	Put(ctx context.Context, k auth.Key) error
	// OwnerKeys returns the keys of one owner, oldest first.
	OwnerKeys(ctx context.Context, ownerID string) ([]auth.Key, error)
	// Revoke deletes one of ownerID's keys; any other is errs.NotFound.
	Revoke(ctx context.Context, ownerID, id string) error
}

var _ KeyStore = (*auth.Keyring)(nil)

// MaxKeyServices bounds how many services one restricted key may name.
const MaxKeyServices = 100

// KeyRequest is what an owner asks for: a label and, optionally, the only
// services the key may call.
type KeyRequest struct {
	Name     string   `json:"name"`
	Services []string `json:"services"`
}

// KeyView is an API key as its owner sees it. Secret is set only in the
// answer to its creation: only the hash is stored.
type KeyView struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Prefix    string    `json:"prefix"`
	Secret    string    `json:"key,omitempty"`
	Services  []string  `json:"services"`
	CreatedAt time.Time `json:"created_at"`
}

func viewOf(k auth.Key) KeyView {
	return KeyView{ID: k.ID, Name: k.Name, Prefix: k.Prefix, Services: append([]string{}, k.Services...), CreatedAt: k.CreatedAt}
}

// Keys lets owners manage their API keys. A key belongs to its creator's
// owner ID and is never an admin key. It is safe for concurrent use.
type Keys struct {
	store    KeyStore
	services *Manager
}

// NewKeys returns Keys; services checks that a restricted key names only
// the caller's own services.
func NewKeys(store KeyStore, services *Manager) *Keys {
	return &Keys{store: store, services: services}
}

// manage refuses restricted keys: a key limited to some services must not
// mint an unrestricted one.
func manage(caller auth.Key) error {
	if len(caller.Services) > 0 {
		return errs.E(errs.Forbidden, "a key restricted to some services cannot manage API keys")
	}
	return nil
}

// Create makes a key for the caller's owner and returns it with its
// secret, shown this once. Each named service must be the caller's own
// and not deleted, else NotFound (param services).
func (ks *Keys) Create(ctx context.Context, caller auth.Key, req KeyRequest) (KeyView, error) {
	if err := manage(caller); err != nil {
		return KeyView{}, err
	}
	req.Name = strings.TrimSpace(req.Name)
	if req.Name == "" || len(req.Name) > 64 || strings.ContainsFunc(req.Name, unicode.IsControl) {
		return KeyView{}, errs.InvalidParam("name", "name must be 1-64 printable characters")
	}
	if len(req.Services) > MaxKeyServices {
		return KeyView{}, errs.InvalidParam("services", "a key may name at most %d services", MaxKeyServices)
	}
	var services []string
	for _, id := range req.Services {
		if slices.Contains(services, id) {
			continue
		}
		s, _, err := ks.services.store.Get(ctx, id)
		if err != nil && errs.KindOf(err) != errs.NotFound {
			return KeyView{}, err
		}
		if err != nil || s.OwnerID != caller.OwnerID || s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			return KeyView{}, &errs.Error{Kind: errs.NotFound, Param: "services", Msg: "service " + id + " not found"}
		}
		services = append(services, id)
	}
	secret := auth.NewSecret()
	k := auth.NewKey(secret, caller.OwnerID, false)
	k.Name, k.Services = req.Name, services
	if err := ks.store.Put(ctx, k); err != nil {
		return KeyView{}, err
	}
	v := viewOf(k)
	v.Secret = secret
	return v, nil
}

// List returns the caller's owner's keys, without secrets, oldest first.
func (ks *Keys) List(ctx context.Context, caller auth.Key) ([]KeyView, error) {
	if err := manage(caller); err != nil {
		return nil, err
	}
	keys, err := ks.store.OwnerKeys(ctx, caller.OwnerID)
	if err != nil {
		return nil, err
	}
	out := make([]KeyView, 0, len(keys))
	for _, k := range keys {
		out = append(out, viewOf(k))
	}
	return out, nil
}

// Revoke deletes one of the caller's owner's keys. Routers drop it as
// the deletion reaches their copy of the bucket, within moments.
func (ks *Keys) Revoke(ctx context.Context, caller auth.Key, id string) error {
	if err := manage(caller); err != nil {
		return err
	}
	return ks.store.Revoke(ctx, caller.OwnerID, id)
}
