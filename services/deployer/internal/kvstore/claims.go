package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// Claims is a deploy.Claims on the idempotency bucket, whose TTL expires
// the keys.
type Claims struct{ kv jetstream.KeyValue }

var _ deploy.Claims = (*Claims)(nil)

// NewClaims returns Claims on the idempotency bucket.
func NewClaims(kv jetstream.KeyValue) *Claims { return &Claims{kv: kv} }

// Claim implements deploy.Claims with the bucket's create-if-absent, so of
// two concurrent claims exactly one wins.
func (c *Claims) Claim(ctx context.Context, key string, cl deploy.Claim) (bool, error) {
	b, err := json.Marshal(cl)
	if err != nil {
		return false, err
	}
	if _, err := c.kv.Create(ctx, key, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil
		}
		return false, errs.Wrap(errs.Unavailable, err, "claim idempotency key")
	}
	return true, nil
}

// Get implements deploy.Claims.
func (c *Claims) Get(ctx context.Context, key string) (deploy.Claim, uint64, error) {
	return state.Get[deploy.Claim](ctx, c.kv, key)
}

// Replace implements deploy.Claims with the bucket's revision check.
func (c *Claims) Replace(ctx context.Context, key string, cl deploy.Claim, rev uint64) error {
	b, err := json.Marshal(cl)
	if err != nil {
		return err
	}
	if _, err := c.kv.Update(ctx, key, b, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return errs.Wrap(errs.Conflict, err, "idempotency key changed meanwhile")
		}
		return errs.Wrap(errs.Unavailable, err, "take over idempotency key")
	}
	return nil
}

// PurgeMarkers removes the delete markers of released claims older than
// olderThan.
func (c *Claims) PurgeMarkers(ctx context.Context, olderThan time.Duration) error {
	return state.PurgeMarkers(ctx, c.kv, olderThan)
}

// Put implements deploy.Claims.
func (c *Claims) Put(ctx context.Context, key string, cl deploy.Claim) error {
	return state.Put(ctx, c.kv, key, cl)
}

// Release implements deploy.Claims.
func (c *Claims) Release(ctx context.Context, key string) error {
	if err := c.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return errs.Wrap(errs.Unavailable, err, "release idempotency key")
	}
	return nil
}
