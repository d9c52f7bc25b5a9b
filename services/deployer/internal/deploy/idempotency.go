package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// MaxIdempotencyKey bounds an Idempotency-Key's length.
const MaxIdempotencyKey = 255

// Claim is what an idempotency key remembers: the request it was first used
// with and, once created, the service that request made.
type Claim struct {
	RequestHash string `json:"request_hash"`
	ServiceID   string `json:"service_id,omitempty"` // empty while the first request runs
}

// Claims stores idempotency claims, which expire on their own.
// Implemented by internal/kvstore.
type Claims interface {
	// Claim stores c under key if the key is free and reports whether it did.
	Claim(ctx context.Context, key string, c Claim) (bool, error)
	// Get returns the claim under key, or errs.NotFound.
	Get(ctx context.Context, key string) (Claim, error)
	// Put replaces the claim under key.
	Put(ctx context.Context, key string, c Claim) error
	// Release frees key.
	Release(ctx context.Context, key string) error
}

// Idempotent makes service creation safe to retry: a create sent again
// with the same Idempotency-Key by the same owner returns the first
// result instead of creating a second service. It is safe for concurrent
// use, across processes too, since the claim is taken in the store.
type Idempotent struct {
	m      *Manager
	claims Claims
	// wait is how long a retry waits for a concurrent first request to
	// finish, polling every poll.
	wait, poll time.Duration
}

// NewIdempotent returns an Idempotent creating services through m.
func NewIdempotent(m *Manager, claims Claims) *Idempotent {
	return &Idempotent{m: m, claims: claims, wait: 5 * time.Second, poll: 50 * time.Millisecond}
}

// Create creates the service req asks for, once per owner and key. It
// reports replayed when an earlier request with the same key made the
// service. The same key with a different request is errs.Conflict.
func (id *Idempotent) Create(ctx context.Context, caller auth.Key, key string, req CreateRequest) (s state.Service, replayed bool, err error) {
	if len(key) > MaxIdempotencyKey {
		return state.Service{}, false, errs.InvalidParam("Idempotency-Key", "Idempotency-Key must be at most %d characters", MaxIdempotencyKey)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return state.Service{}, false, err
	}
	hash := sha256.Sum256(b)
	claim := Claim{RequestHash: hex.EncodeToString(hash[:])}
	keyHash := sha256.Sum256([]byte(key))
	storeKey := caller.OwnerID + "." + hex.EncodeToString(keyHash[:])

	deadline := time.Now().Add(id.wait)
	for {
		won, err := id.claims.Claim(ctx, storeKey, claim)
		if err != nil {
			return state.Service{}, false, err
		}
		if won {
			return id.create(ctx, caller, storeKey, claim, req)
		}
		prev, err := id.claims.Get(ctx, storeKey)
		switch {
		case errs.KindOf(err) == errs.NotFound:
			// The first request failed and released the key: claim it again.
		case err != nil:
			return state.Service{}, false, err
		case prev.RequestHash != claim.RequestHash:
			return state.Service{}, false, &errs.Error{Kind: errs.Conflict, Param: "Idempotency-Key", Msg: "Idempotency-Key was used with a different request"}
		case prev.ServiceID != "":
			s, err := id.m.Get(ctx, caller, prev.ServiceID)
			return s, err == nil, err
		}
		if time.Now().After(deadline) {
			return state.Service{}, false, &errs.Error{Kind: errs.Conflict, Param: "Idempotency-Key", Msg: "a request with this Idempotency-Key is still in progress; retry later"}
		}
		select {
		case <-ctx.Done():
			return state.Service{}, false, ctx.Err()
		case <-time.After(id.poll):
		}
	}
}

// create runs the request that won the claim and records its service, or
// releases the claim when nothing was stored, so a retry can try again.
func (id *Idempotent) create(ctx context.Context, caller auth.Key, storeKey string, claim Claim, req CreateRequest) (state.Service, bool, error) {
	s, err := id.m.Create(ctx, caller, req)
	// Finish the claim even if the caller went away meanwhile.
	ctx = context.WithoutCancel(ctx)
	if s.ID == "" {
		if rerr := id.claims.Release(ctx, storeKey); rerr != nil {
			return s, false, fmt.Errorf("%w (and release idempotency key: %v)", err, rerr)
		}
		return s, false, err
	}
	// The service is stored even when announcing it failed: a retry must
	// find it, not create another. Failing to record it is not the
	// caller's failure: the service exists, and the key stays claimed
	// (retries get Conflict) until it expires.
	claim.ServiceID = s.ID
	_ = id.claims.Put(ctx, storeKey, claim)
	return s, false, err
}
