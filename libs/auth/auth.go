// Package auth is Modelport's API keys: generating them, storing only their
// SHA-256 hash in the apikeys bucket, and verifying a bearer secret.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
	"github.com/nats-io/nats.go/jetstream"
)

// SecretPrefix starts every API key, so leaked keys are easy to scan for.
const SecretPrefix = "mp-"

// Key is a stored API key. The secret itself is never stored.
type Key struct {
	ID        string    `json:"id"`
	OwnerID   string    `json:"owner_id"`
	Prefix    string    `json:"prefix"` // the first characters of the secret, for display
	Hash      string    `json:"hash"`   // hex SHA-256 of the secret
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
	// Name is the owner's label for the key, such as "ci".
	Name string `json:"name,omitempty"`
	// Services, when not empty, are the IDs of the only services the key
	// may call; empty means every service of its owner.
	Services []string `json:"services,omitempty"`
}

// Restricted reports whether the key may call only some services.
func (k Key) Restricted() bool { return len(k.Services) > 0 }

// Reaches reports whether the key may see and call a service of ownerID
// with ID serviceID: an admin key reaches every service; another key its
// owner's, or, when restricted, only those it names.
func (k Key) Reaches(ownerID, serviceID string) bool {
	if k.Admin {
		return true
	}
	return k.OwnerID == ownerID && (!k.Restricted() || slices.Contains(k.Services, serviceID))
}

// NewSecret returns a fresh secret: the prefix and 256 random bits.
func NewSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// NewOwnerID returns a fresh owner ID: 12 lowercase hex digits, as in the
// access name u-8105f7322477/test.
func NewOwnerID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Hash returns the hex SHA-256 of a secret.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewKey returns the record for secret, owned by ownerID.
func NewKey(secret, ownerID string, admin bool) Key {
	return Key{
		ID:        uuid.NewString(),
		OwnerID:   ownerID,
		Prefix:    secret[:min(len(secret), len(SecretPrefix)+6)],
		Hash:      Hash(secret),
		Admin:     admin,
		CreatedAt: time.Now().UTC(),
	}
}

// Keyring stores keys in a JetStream key-value bucket, keyed by hash.
// It is safe for concurrent use.
type Keyring struct {
	kv jetstream.KeyValue

	mu    sync.RWMutex
	cache map[string]Key // by hash; nil until Follow
}

// NewKeyring returns a Keyring on the apikeys bucket.
func NewKeyring(kv jetstream.KeyValue) *Keyring { return &Keyring{kv: kv} }

// adminKey holds the record of the installation's first admin key.
const adminKey = "admin"

// Put stores k.
func (r *Keyring) Put(ctx context.Context, k Key) error {
	b, err := json.Marshal(k)
	if err != nil {
		return err
	}
	if _, err := r.kv.Put(ctx, k.Hash, b); err != nil {
		return fmt.Errorf("store api key %s: %w", k.ID, err)
	}
	return nil
}

// Verify returns the key whose secret is given, or an errs.Unauthorized error.
//
// The lookup is by the secret's SHA-256, never by the secret: how long a
// map or bucket lookup takes can depend on how much of the presented hash
// matches a stored one, but learning that about the hash of a guess gives
// nothing towards a secret whose hash matches (that needs a SHA-256
// preimage), and the secrets are 256 random bits, so there is no
// dictionary to try either. An unsalted fast hash is enough for the same
// reason. Where a stored record is compared with the presented hash, the
// comparison is in constant time all the same.
func (r *Keyring) Verify(ctx context.Context, secret string) (Key, error) {
	if !strings.HasPrefix(secret, SecretPrefix) {
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	h := Hash(secret)
	r.mu.RLock()
	k, ok := r.cache[h]
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	// Not cached, or no cache: a key created a moment ago may not have
	// come through the watch yet, so the bucket has the last word.
	e, err := r.kv.Get(ctx, h)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	if err != nil {
		return Key{}, errs.Wrap(errs.Unavailable, err, "verify API key")
	}
	if err := json.Unmarshal(e.Value(), &k); err != nil {
		return Key{}, fmt.Errorf("decode api key: %w", err)
	}
	// The lookup was by hash already; compare again in constant time so a
	// corrupted record can never match a different secret.
	if subtle.ConstantTimeCompare([]byte(k.Hash), []byte(h)) != 1 {
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	return k, nil
}

// Follow keeps an in-memory copy of the bucket, so Verify needs no round
// trip to NATS for known keys. It returns once the copy is loaded; updates
// (new and revoked keys) follow until ctx ends.
func (r *Keyring) Follow(ctx context.Context) error {
	w, err := r.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch api keys: %w", err)
	}
	r.mu.Lock()
	r.cache = map[string]Key{}
	r.mu.Unlock()
	apply := func(e jetstream.KeyValueEntry) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.Operation() != jetstream.KeyValuePut {
			delete(r.cache, e.Key())
			return
		}
		var k Key
		if err := json.Unmarshal(e.Value(), &k); err == nil && k.Hash == e.Key() {
			r.cache[e.Key()] = k
		}
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		apply(e)
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					apply(e)
				}
			}
		}
	}()
	return nil
}

// EnsureAdmin makes sure the installation has an admin key and returns its
// record. With a configured secret, that secret becomes (or stays) the
// admin key, and every other admin key is revoked: setting a new
// MODELPORT_ADMIN_KEY rotates the key, and a leaked one stops working as
// soon as a deployer starts with the new one. A revoked admin key is
// remembered and refused for good (errs.Forbidden), so a replica still
// configured with it cannot bring it back. Without one, a first start
// generates a secret and returns it in secret; later starts return the
// current admin key with an empty secret, since only the hash is kept.
// Concurrent first starts agree on one admin owner: the first to claim
// the admin record wins and the others adopt it.
func (r *Keyring) EnsureAdmin(ctx context.Context, configured string) (k Key, secret string, err error) {
	if configured != "" && (!strings.HasPrefix(configured, SecretPrefix) || len(configured) < len(SecretPrefix)+16) {
		return Key{}, "", errs.E(errs.Invalid, "admin key must start with %q and have at least 16 more characters", SecretPrefix)
	}
	first, err := r.adminRecord(ctx)
	if err != nil {
		return Key{}, "", err
	}
	if configured == "" {
		if first != nil {
			return r.currentAdmin(ctx, *first)
		}
		// The key is stored before it is claimed, so a crash in between
		// can never leave an admin record whose key does not exist.
		secret = NewSecret()
		k = NewKey(secret, NewOwnerID(), true)
		if err := r.Put(ctx, k); err != nil {
			return Key{}, "", err
		}
		winner, won, err := r.claimAdmin(ctx, k)
		if err != nil {
			return Key{}, "", err
		}
		if !won {
			_ = r.kv.Delete(ctx, k.Hash)
			return winner, "", nil
		}
		return k, secret, nil
	}

	if revoked, err := r.revoked(ctx, Hash(configured)); err != nil {
		return Key{}, "", err
	} else if revoked {
		return Key{}, "", errs.E(errs.Forbidden, "the configured admin key was rotated out and revoked; configure the current one")
	}
	if existing, err := r.Verify(ctx, configured); err == nil && existing.Admin {
		return existing, "", r.revokeOtherAdmins(ctx, existing)
	}
	k = NewKey(configured, NewOwnerID(), true)
	if first != nil {
		k.OwnerID = first.OwnerID
	} else {
		winner, won, err := r.claimAdmin(ctx, k)
		if err != nil {
			return Key{}, "", err
		}
		if !won {
			k.OwnerID = winner.OwnerID
		}
	}
	if err := r.Put(ctx, k); err != nil {
		return Key{}, "", err
	}
	return k, "", r.revokeOtherAdmins(ctx, k)
}

// currentAdmin returns the newest admin key of the admin record's owner,
// or the record itself if none is found.
func (r *Keyring) currentAdmin(ctx context.Context, first Key) (Key, string, error) {
	keys, err := r.OwnerKeys(ctx, first.OwnerID)
	if err != nil {
		return Key{}, "", err
	}
	cur := first
	for _, k := range keys {
		if k.Admin && !k.CreatedAt.Before(cur.CreatedAt) {
			cur = k
		}
	}
	return cur, "", nil
}

// revokedPrefix starts the keys of the records that remember revoked admin
// keys by hash.
const revokedPrefix = "revoked."

// revokeOtherAdmins revokes every admin key but keep, and remembers each.
func (r *Keyring) revokeOtherAdmins(ctx context.Context, keep Key) error {
	all, err := r.all(ctx)
	if err != nil {
		return err
	}
	for _, k := range all {
		if !k.Admin || k.Hash == keep.Hash {
			continue
		}
		tomb, err := json.Marshal(struct {
			Prefix    string    `json:"prefix"`
			RevokedAt time.Time `json:"revoked_at"`
		}{k.Prefix, time.Now().UTC()})
		if err != nil {
			return err
		}
		if _, err := r.kv.Put(ctx, revokedPrefix+k.Hash, tomb); err != nil {
			return errs.Wrap(errs.Unavailable, err, "remember revoked admin key %s", k.ID)
		}
		if err := r.kv.Delete(ctx, k.Hash); err != nil {
			return errs.Wrap(errs.Unavailable, err, "revoke admin key %s", k.ID)
		}
	}
	return nil
}

// revoked reports whether the admin key with this hash was revoked.
func (r *Keyring) revoked(ctx context.Context, hash string) (bool, error) {
	_, err := r.kv.Get(ctx, revokedPrefix+hash)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, errs.Wrap(errs.Unavailable, err, "read revoked admin keys")
	}
	return true, nil
}

// adminRecord returns the installation's first admin key, or nil.
func (r *Keyring) adminRecord(ctx context.Context) (*Key, error) {
	e, err := r.kv.Get(ctx, adminKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read admin record: %w", err)
	}
	var rec Key
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("decode admin record: %w", err)
	}
	return &rec, nil
}

// claimAdmin makes k the installation's admin record unless another start
// did first, in which case it returns that one's record and won false.
func (r *Keyring) claimAdmin(ctx context.Context, k Key) (winner Key, won bool, err error) {
	b, err := json.Marshal(k)
	if err != nil {
		return Key{}, false, err
	}
	_, err = r.kv.Create(ctx, adminKey, b)
	if err == nil {
		return k, true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return Key{}, false, fmt.Errorf("store admin record: %w", err)
	}
	rec, err := r.adminRecord(ctx)
	if err != nil {
		return Key{}, false, err
	}
	if rec == nil {
		return Key{}, false, errors.New("admin record vanished while claiming it")
	}
	return *rec, false, nil
}

// OwnerKeys returns the keys owned by ownerID, oldest first. It reads the
// whole bucket, which is fine for the few keys an installation holds.
func (r *Keyring) OwnerKeys(ctx context.Context, ownerID string) ([]Key, error) {
	all, err := r.all(ctx)
	if err != nil {
		return nil, err
	}
	out := []Key{}
	for _, k := range all {
		if k.OwnerID == ownerID {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b Key) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Revoke deletes the key with the given ID if ownerID owns it; any other
// key, someone else's included, is errs.NotFound. An admin key cannot be
// revoked (errs.Forbidden): the installation would lose its admin. Readers
// following the bucket drop the key as the deletion reaches them.
func (r *Keyring) Revoke(ctx context.Context, ownerID, id string) error {
	keys, err := r.OwnerKeys(ctx, ownerID)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.ID != id {
			continue
		}
		if k.Admin {
			return errs.E(errs.Forbidden, "the admin key cannot be revoked")
		}
		if err := r.kv.Delete(ctx, k.Hash); err != nil {
			return errs.Wrap(errs.Unavailable, err, "revoke api key %s", id)
		}
		return nil
	}
	return errs.E(errs.NotFound, "API key %s not found", id)
}

// all returns every stored key, without the admin record.
func (r *Keyring) all(ctx context.Context) ([]Key, error) {
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "list api keys")
	}
	defer w.Stop()
	var out []Key
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return out, nil
			}
			var k Key
			if err := json.Unmarshal(e.Value(), &k); err != nil || k.Hash != e.Key() {
				continue // the admin record, or not a key
			}
			out = append(out, k)
		}
	}
}

type ctxKey struct{}

// NewContext returns ctx carrying the caller's key.
func NewContext(ctx context.Context, k Key) context.Context {
	return context.WithValue(ctx, ctxKey{}, k)
}

// FromContext returns the caller's key, if ctx has one.
func FromContext(ctx context.Context) (Key, bool) {
	k, ok := ctx.Value(ctxKey{}).(Key)
	return k, ok
}
