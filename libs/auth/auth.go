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
	"log/slog"
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
	// live is set while the watch that keeps cache current runs; seen is
	// the last bucket revision it applied, and caught is closed and
	// replaced whenever seen moves; down says why the watch is not live.
	live   bool
	seen   uint64
	caught chan struct{}
	down   error
	// misses are hashes recently found in no key, until when.
	misses map[string]time.Time

	pmu   sync.Mutex
	probe *probe // the latest look at the bucket's last revision
	log   *slog.Logger
}

// probe is one look at the bucket's last revision, shared by the
// requests that arrived before it started.
type probe struct {
	start time.Time
	done  chan struct{}
	seq   uint64
	err   error
}

// Timings of the key cache.
const (
	// missTTL is how long a hash found in no key is refused without
	// another look: short, since a key may be created with it (by chance
	// alone, given 256 random bits) and, more to the point, so the
	// memory stays small.
	missTTL = 2 * time.Second
	// maxMisses bounds the remembered misses.
	maxMisses = 10_000
	// probeEvery is the least time between two looks at the bucket's last
	// revision: however many unknown keys arrive, the bucket is asked at
	// most this often.
	probeEvery = 50 * time.Millisecond
	// catchUpWait bounds the wait for the watch to apply a revision the
	// bucket has; past it, the bucket is asked for the key itself.
	catchUpWait = 2 * time.Second
)

// NewKeyring returns a Keyring on the apikeys bucket.
func NewKeyring(kv jetstream.KeyValue) *Keyring {
	return &Keyring{kv: kv, caught: make(chan struct{}), misses: map[string]time.Time{}, log: slog.New(slog.DiscardHandler)}
}

// SetLogger sets where the keyring logs its watch's troubles.
func (r *Keyring) SetLogger(log *slog.Logger) { r.log = log }

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
//
// A Keyring that follows its bucket (Follow) answers from memory while its
// watch is live: a key it does not hold is refused once the watch has
// applied everything the bucket held when the request arrived, which one
// look at the bucket's last revision, shared by every request that
// arrived before it and taken at most every probeEvery, tells. So unknown
// keys, however many, cost the bus a few small requests a second, and a
// key created a moment ago still verifies. While the watch is down, the
// bucket has the last word on every key (a revoked key must not live on
// in a stale copy), and hashes it has no key for are remembered for
// missTTL.
func (r *Keyring) Verify(ctx context.Context, secret string) (Key, error) {
	if !strings.HasPrefix(secret, SecretPrefix) {
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	arrived := time.Now()
	h := Hash(secret)
	r.mu.RLock()
	k, ok := r.cache[h]
	following, live := r.cache != nil, r.live
	missed := r.missed(h, arrived)
	r.mu.RUnlock()
	switch {
	case ok && live:
		return k, nil
	case missed:
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	case live:
		if r.caughtUp(ctx, arrived) {
			r.mu.RLock()
			k, ok = r.cache[h]
			r.mu.RUnlock()
			if ok {
				return k, nil
			}
			r.miss(h)
			return Key{}, errs.E(errs.Unauthorized, "invalid API key")
		}
		// The watch is not keeping up: ask the bucket.
	}
	k, err := r.get(ctx, h)
	if following && errs.KindOf(err) == errs.Unauthorized {
		r.miss(h)
	}
	return k, err
}

// get reads the key with hash h from the bucket.
func (r *Keyring) get(ctx context.Context, h string) (Key, error) {
	e, err := r.kv.Get(ctx, h)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Key{}, errs.E(errs.Unauthorized, "invalid API key")
	}
	if err != nil {
		return Key{}, errs.Wrap(errs.Unavailable, err, "verify API key")
	}
	var k Key
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

// missed reports whether h was found in no key less than missTTL ago.
// r.mu is held.
func (r *Keyring) missed(h string, now time.Time) bool {
	until, ok := r.misses[h]
	return ok && now.Before(until)
}

// miss remembers that h is no key's.
func (r *Keyring) miss(h string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.misses == nil {
		r.misses = map[string]time.Time{}
	}
	if len(r.misses) >= maxMisses {
		for m, until := range r.misses {
			if now.After(until) || len(r.misses) >= maxMisses {
				delete(r.misses, m)
			}
		}
	}
	r.misses[h] = now.Add(missTTL)
}

// caughtUp reports whether the cache holds everything the bucket held at
// arrived: it waits for a look at the bucket's last revision taken after
// then, and for the watch to apply it (at most catchUpWait).
func (r *Keyring) caughtUp(ctx context.Context, arrived time.Time) bool {
	seq, err := r.lastRevision(ctx, arrived)
	if err != nil {
		return false
	}
	deadline := time.NewTimer(catchUpWait)
	defer deadline.Stop()
	for {
		r.mu.RLock()
		seen, live, caught := r.seen, r.live, r.caught
		r.mu.RUnlock()
		switch {
		case seen >= seq:
			return true
		case !live:
			return false
		}
		select {
		case <-caught:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// lastRevision returns the bucket's last revision as seen by a look taken
// at or after arrived. Looks are shared and at least probeEvery apart.
func (r *Keyring) lastRevision(ctx context.Context, arrived time.Time) (uint64, error) {
	for {
		r.pmu.Lock()
		p := r.probe
		if p != nil && !p.start.Before(arrived) {
			r.pmu.Unlock()
			select {
			case <-p.done:
				return p.seq, p.err
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if p != nil {
			select {
			case <-p.done:
			default: // one under way, started too early for this request
				r.pmu.Unlock()
				select {
				case <-p.done:
					continue
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
		}
		start := time.Now()
		if p != nil {
			start = later(start, p.start.Add(probeEvery))
		}
		np := &probe{start: start, done: make(chan struct{})}
		r.probe = np
		r.pmu.Unlock()
		// The look is shared: it does not end with this request.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		time.Sleep(time.Until(start))
		np.seq, np.err = r.bucketRevision(pctx)
		cancel()
		close(np.done)
		return np.seq, np.err
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// bucketRevision asks the bucket for its last revision.
func (r *Keyring) bucketRevision(ctx context.Context) (uint64, error) {
	st, err := r.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return 0, errors.New("the key bucket's status has no stream information")
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// Ready returns nil while the keyring's watch is live, else why it is not.
// Only a keyring that follows its bucket has a watch.
func (r *Keyring) Ready() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.cache != nil && !r.live {
		if r.down != nil {
			return r.down
		}
		return errors.New("the API key watch is down")
	}
	return nil
}

// Follow keeps an in-memory copy of the bucket, so Verify needs no round
// trip to NATS. It returns once the copy is loaded; updates (new and
// revoked keys) follow until ctx ends. A watch that ends is started again,
// with backoff, from a fresh copy; meanwhile Verify asks the bucket and
// Ready fails.
func (r *Keyring) Follow(ctx context.Context) error {
	w, err := r.load(ctx)
	if err != nil {
		return err
	}
	go r.follow(ctx, w)
	return nil
}

// load watches the bucket and replaces the cache with its contents.
func (r *Keyring) load(ctx context.Context) (jetstream.KeyWatcher, error) {
	w, err := r.kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch api keys: %w", err)
	}
	cache := map[string]Key{}
	var seen uint64
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			_ = w.Stop()
			return nil, ctx.Err()
		case e, ok = <-w.Updates():
		}
		if !ok {
			_ = w.Stop()
			return nil, errors.New("watch api keys: the watch ended while loading")
		}
		if e == nil {
			break
		}
		seen = max(seen, e.Revision())
		if k, ok := keyOf(e); ok {
			cache[e.Key()] = k
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache, r.live, r.down = cache, true, nil
	r.advance(seen)
	return w, nil
}

// keyOf returns the key an entry puts.
func keyOf(e jetstream.KeyValueEntry) (Key, bool) {
	if e.Operation() != jetstream.KeyValuePut {
		return Key{}, false
	}
	var k Key
	if err := json.Unmarshal(e.Value(), &k); err != nil || k.Hash != e.Key() {
		return Key{}, false
	}
	return k, true
}

// advance records that the cache holds revision seq. r.mu is held.
func (r *Keyring) advance(seq uint64) {
	if seq > r.seen {
		r.seen = seq
	}
	if r.caught != nil {
		close(r.caught)
	}
	r.caught = make(chan struct{})
}

// follow applies updates until ctx ends, starting the watch again whenever
// it ends.
func (r *Keyring) follow(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		r.apply(ctx, w)
		_ = w.Stop()
		if ctx.Err() != nil {
			return
		}
		r.setDown(errors.New("the API key watch ended; starting it again"))
		r.log.ErrorContext(ctx, "API key watch ended; starting it again: keys are checked against the bucket until it is back")
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			var err error
			if w, err = r.load(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			r.setDown(fmt.Errorf("the API key watch is down: %w", err))
			r.log.ErrorContext(ctx, "API key watch not started again; retrying", "err", err)
		}
		r.log.InfoContext(ctx, "API key watch started again")
	}
}

// apply applies a watch's updates until it or ctx ends.
func (r *Keyring) apply(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			r.mu.Lock()
			if k, ok := keyOf(e); ok {
				r.cache[e.Key()] = k
				delete(r.misses, e.Key())
			} else {
				delete(r.cache, e.Key())
			}
			r.advance(e.Revision())
			r.mu.Unlock()
		}
	}
}

func (r *Keyring) setDown(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.live, r.down = false, err
	r.advance(0) // wake waiters: the watch is no longer live
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
