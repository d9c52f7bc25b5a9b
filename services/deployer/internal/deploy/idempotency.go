package deploy

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// MaxIdempotencyKey bounds an Idempotency-Key's length.
const MaxIdempotencyKey = 255

// Claim is what an idempotency key remembers: the request it was first used
// with, the ID of the service that request creates, and, once created,
// that service.
type Claim struct {
	RequestHash string `json:"request_hash"`
	ServiceID   string `json:"service_id,omitempty"` // set once the service is created
	// Creating is the ID of the service the request creates, chosen when
	// the key is claimed: a retry that takes the claim over creates the
	// same service, so a create that landed unseen is found, not doubled.
	Creating string `json:"creating,omitempty"`
	// ClaimedAt is when the request claimed the key; zero once it gave up
	// without knowing whether it created the service.
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
}

// Claims stores idempotency claims, which expire on their own.
// Implemented by internal/kvstore.
type Claims interface {
	// Claim stores c under key if the key is free and reports whether it did.
	Claim(ctx context.Context, key string, c Claim) (bool, error)
	// Get returns the claim under key and its revision, or errs.NotFound.
	Get(ctx context.Context, key string) (Claim, uint64, error)
	// Replace replaces the claim under key if its revision is still rev,
	// else errs.Conflict.
	Replace(ctx context.Context, key string, c Claim, rev uint64) error
	// Put replaces the claim under key.
	Put(ctx context.Context, key string, c Claim) error
	// Release frees key.
	Release(ctx context.Context, key string) error
}

// DefaultClaimTimeout is how long a claim whose request neither created
// its service nor gave up is taken to be in progress: longer than a create
// takes, announcement retries included. After it, a retry takes it over.
const DefaultClaimTimeout = time.Minute

// Idempotent makes service creation safe to retry: a create sent again
// with the same Idempotency-Key by the same owner returns the first
// result instead of creating a second service. It is safe for concurrent
// use, across processes too, since the claim is taken in the store. A
// claim always finishes (with its service) or is released or taken over:
// a deployer that dies in the middle leaves a claim that a retry takes
// over after the claim timeout, creating the same service.
type Idempotent struct {
	m      *Manager
	claims Claims
	// wait is how long a retry waits for a concurrent first request to
	// finish, polling every poll.
	wait, poll time.Duration
	timeout    time.Duration
	now        func() time.Time
}

// IdempotentOption configures an Idempotent.
type IdempotentOption func(*Idempotent)

// WithClaimTimeout sets how long an unfinished claim is taken to be in
// progress; default DefaultClaimTimeout.
func WithClaimTimeout(d time.Duration) IdempotentOption { return func(i *Idempotent) { i.timeout = d } }

// NewIdempotent returns an Idempotent creating services through m.
func NewIdempotent(m *Manager, claims Claims, opts ...IdempotentOption) *Idempotent {
	i := &Idempotent{m: m, claims: claims, wait: 5 * time.Second, poll: 50 * time.Millisecond, timeout: DefaultClaimTimeout, now: time.Now}
	for _, o := range opts {
		o(i)
	}
	return i
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
	requestHash := hex.EncodeToString(hash[:])
	keyHash := sha256.Sum256([]byte(key))
	storeKey := caller.OwnerID + "." + hex.EncodeToString(keyHash[:])

	deadline := time.Now().Add(id.wait)
	for {
		claim := Claim{RequestHash: requestHash, Creating: uuid.NewString(), ClaimedAt: id.now().UTC()}
		won, err := id.claims.Claim(ctx, storeKey, claim)
		if err != nil {
			return state.Service{}, false, err
		}
		if won {
			return id.create(ctx, caller, storeKey, claim, req)
		}
		prev, rev, err := id.claims.Get(ctx, storeKey)
		switch {
		case errs.KindOf(err) == errs.NotFound:
			continue // the first request failed and released the key: claim it again
		case err != nil:
			return state.Service{}, false, err
		case prev.RequestHash != requestHash:
			return state.Service{}, false, &errs.Error{Kind: errs.Conflict, Param: "Idempotency-Key", Msg: "Idempotency-Key was used with a different request"}
		case prev.ServiceID != "":
			s, err := id.m.Get(ctx, caller, prev.ServiceID)
			return s, err == nil, err
		}
		if prev.Creating != "" {
			// Created, though the claim does not say so yet (or never
			// will: its deployer died, or could not record it).
			s, err := id.m.Get(ctx, caller, prev.Creating)
			if err == nil {
				prev.ServiceID = s.ID
				id.finish(ctx, storeKey, prev)
				return s, true, nil
			}
			if errs.KindOf(err) != errs.NotFound {
				return state.Service{}, false, err
			}
		}
		if prev.ClaimedAt.IsZero() || id.now().Sub(prev.ClaimedAt) > id.timeout {
			// Given up on, or its deployer died: take it over, creating
			// the same service.
			take := Claim{RequestHash: requestHash, Creating: cmp.Or(prev.Creating, claim.Creating), ClaimedAt: id.now().UTC()}
			err := id.claims.Replace(ctx, storeKey, take, rev)
			if errs.KindOf(err) == errs.Conflict {
				continue
			}
			if err != nil {
				return state.Service{}, false, err
			}
			return id.create(ctx, caller, storeKey, take, req)
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

// create runs the request that holds the claim and records its service.
// When nothing was stored for certain (the request was refused), it
// releases the claim, so a retry can try again; when it cannot tell, it
// marks the claim given up, so a retry takes it over at once and creates
// the same service.
func (id *Idempotent) create(ctx context.Context, caller auth.Key, storeKey string, claim Claim, req CreateRequest) (state.Service, bool, error) {
	s, err := id.m.create(ctx, caller, req, claim.Creating)
	// Finish the claim even if the caller went away meanwhile.
	ctx = context.WithoutCancel(ctx)
	if s.ID == "" {
		switch errs.KindOf(err) {
		case errs.Invalid, errs.Conflict, errs.Forbidden, errs.NotFound, errs.Unauthorized:
			if rerr := retry(ctx, func() error { return id.claims.Release(ctx, storeKey) }); rerr != nil {
				return s, false, fmt.Errorf("%w (and release idempotency key: %v)", err, rerr)
			}
		default:
			claim.ClaimedAt = time.Time{}
			_ = retry(ctx, func() error { return id.claims.Put(ctx, storeKey, claim) })
		}
		return s, false, err
	}
	// The service is stored even when announcing it failed: a retry must
	// find it, not create another. Failing to record it is not the
	// caller's failure: the claim names the service it was creating, and
	// a retry finds it there.
	claim.ServiceID = s.ID
	id.finish(ctx, storeKey, claim)
	return s, false, err
}

// finish records a claim's service, trying a few times.
func (id *Idempotent) finish(ctx context.Context, storeKey string, claim Claim) {
	ctx = context.WithoutCancel(ctx)
	_ = retry(ctx, func() error { return id.claims.Put(ctx, storeKey, claim) })
}

// retry calls f up to five times, over about three seconds, until it
// succeeds.
func retry(ctx context.Context, f func() error) error {
	var err error
	wait := 100 * time.Millisecond
	for range 5 {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
	return err
}
