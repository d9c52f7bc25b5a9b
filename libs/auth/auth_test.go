package auth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go/jetstream"
)

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s := auth.NewSecret()
		rest, ok := strings.CutPrefix(s, auth.SecretPrefix)
		if !ok {
			t.Fatalf("secret %q lacks the prefix %q", s, auth.SecretPrefix)
		}
		b, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil {
			t.Fatalf("secret %q is not URL-safe base64 after the prefix: %v", s, err)
		}
		if got, want := len(b), 32; got != want {
			t.Fatalf("secret %q carries %d random bytes, want %d", s, got, want)
		}
		if seen[s] {
			t.Fatalf("secret %q generated twice", s)
		}
		seen[s] = true
	}
}

func TestHash(t *testing.T) {
	tests := []struct {
		secret string
		want   string
	}{
		// sha256 of the empty string and of "abc", the standard test vectors.
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, tc := range tests {
		if got := auth.Hash(tc.secret); got != tc.want {
			t.Errorf("Hash(%q) = %s, want %s", tc.secret, got, tc.want)
		}
	}
	s := auth.NewSecret()
	if auth.Hash(s) != auth.Hash(s) {
		t.Error("Hash is not stable")
	}
	if auth.Hash(s) == auth.Hash(s+"x") {
		t.Error("different secrets hash alike")
	}
}

func TestNewOwnerID(t *testing.T) {
	pattern := regexp.MustCompile(`^[0-9a-f]{12}$`)
	a, b := auth.NewOwnerID(), auth.NewOwnerID()
	for _, id := range []string{a, b} {
		if !pattern.MatchString(id) {
			t.Errorf("owner ID %q is not 12 lowercase hex digits", id)
		}
	}
	if a == b {
		t.Errorf("two owner IDs are both %q", a)
	}
}

func TestNewKey(t *testing.T) {
	secret := auth.NewSecret()
	k := auth.NewKey(secret, "8105f7322477", true)
	if got, want := k.Hash, auth.Hash(secret); got != want {
		t.Errorf("Hash = %s, want %s", got, want)
	}
	if got, want := k.Prefix, secret[:len(auth.SecretPrefix)+6]; got != want {
		t.Errorf("Prefix = %q, want %q", got, want)
	}
	if strings.Contains(k.Prefix+k.Hash+k.ID, secret) {
		t.Error("the record holds the secret")
	}
	if k.ID == "" || k.OwnerID != "8105f7322477" || !k.Admin || k.CreatedAt.IsZero() {
		t.Errorf("NewKey = %+v", k)
	}
}

func TestContext(t *testing.T) {
	if _, ok := auth.FromContext(context.Background()); ok {
		t.Error("FromContext of an empty context reports a key")
	}
	k := auth.Key{ID: "k1", OwnerID: "o1"}
	got, ok := auth.FromContext(auth.NewContext(context.Background(), k))
	if !ok || !reflect.DeepEqual(got, k) {
		t.Errorf("FromContext = %+v, %v; want %+v", got, ok, k)
	}
}

// bucket returns the apikeys bucket on a fresh JetStream server.
func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	nc := natstest.New(t).Connect(t, natstest.Admin)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := state.EnsureBuckets(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return kvs[state.BucketAPIKeys]
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	r := auth.NewKeyring(bucket(t))
	secret := auth.NewSecret()
	stored := auth.NewKey(secret, "8105f7322477", false)
	if err := r.Put(ctx, stored); err != nil {
		t.Fatal(err)
	}

	t.Run("stored key", func(t *testing.T) {
		got, err := r.Verify(ctx, secret)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if got.ID != stored.ID || got.OwnerID != stored.OwnerID || got.Hash != stored.Hash || got.Admin {
			t.Errorf("Verify = %+v, want %+v", got, stored)
		}
	})
	bad := []struct {
		name   string
		secret string
	}{
		{name: "wrong secret", secret: auth.NewSecret()},
		{name: "secret with a character more", secret: secret + "x"},
		{name: "unprefixed secret", secret: strings.TrimPrefix(secret, auth.SecretPrefix)},
		{name: "the hash itself", secret: stored.Hash},
		{name: "prefixed hash", secret: auth.SecretPrefix + stored.Hash},
		{name: "empty", secret: ""},
		{name: "prefix only", secret: auth.SecretPrefix},
		{name: "admin record name", secret: "admin"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			k, err := r.Verify(ctx, tc.secret)
			if got, want := errs.KindOf(err), errs.Unauthorized; got != want {
				t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
			}
			if !reflect.DeepEqual(k, auth.Key{}) {
				t.Errorf("Verify returned %+v with the error", k)
			}
		})
	}
}

func TestVerifyCorruptRecord(t *testing.T) {
	ctx := context.Background()
	kv := bucket(t)
	r := auth.NewKeyring(kv)
	secret := auth.NewSecret()
	k := auth.NewKey(secret, "8105f7322477", true)
	k.Hash = auth.Hash("something else") // stored under the right key, but its hash is wrong
	if _, err := kv.Put(ctx, auth.Hash(secret), mustJSON(t, k)); err != nil {
		t.Fatal(err)
	}
	_, err := r.Verify(ctx, secret)
	if got, want := errs.KindOf(err), errs.Unauthorized; got != want {
		t.Errorf("kind = %v, want %v (err %v)", got, want, err)
	}
}

func TestFollow(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv := bucket(t)
	r := auth.NewKeyring(kv)
	before := auth.NewSecret()
	kb := auth.NewKey(before, "8105f7322477", false)
	if err := r.Put(ctx, kb); err != nil {
		t.Fatal(err)
	}
	if err := r.Follow(ctx); err != nil {
		t.Fatal(err)
	}

	if _, err := r.Verify(ctx, before); err != nil {
		t.Errorf("key stored before Follow: %v", err)
	}
	after := auth.NewSecret()
	if err := r.Put(ctx, auth.NewKey(after, "8105f7322477", false)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Verify(ctx, after); err != nil {
		t.Errorf("key stored a moment ago: %v", err)
	}

	// A revoked key stops verifying once the watch has seen the delete.
	if err := kv.Delete(ctx, kb.Hash); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := r.Verify(ctx, before)
		if errs.KindOf(err) == errs.Unauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked key still verifies after 5s (err %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEnsureAdminGenerated(t *testing.T) {
	ctx := context.Background()
	r := auth.NewKeyring(bucket(t))

	first, secret, err := r.EnsureAdmin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, auth.SecretPrefix) {
		t.Fatalf("first start returned secret %q, want a fresh one", secret)
	}
	if !first.Admin || first.OwnerID == "" || first.Hash != auth.Hash(secret) {
		t.Errorf("first admin key = %+v", first)
	}
	got, err := r.Verify(ctx, secret)
	if err != nil {
		t.Fatalf("generated admin secret does not verify: %v", err)
	}
	if !got.Admin || got.OwnerID != first.OwnerID {
		t.Errorf("Verify = %+v, want admin of %s", got, first.OwnerID)
	}

	again, secret2, err := r.EnsureAdmin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if secret2 != "" {
		t.Errorf("second start returned a secret %q, want none", secret2)
	}
	if again.ID != first.ID || again.OwnerID != first.OwnerID {
		t.Errorf("second start = %+v, want the first admin %+v", again, first)
	}
	if _, err := r.Verify(ctx, secret); err != nil {
		t.Errorf("first secret stopped verifying: %v", err)
	}
}

func TestEnsureAdminConfigured(t *testing.T) {
	const configured = "mp-test-admin-key-0123456789abcdef"

	t.Run("configured on a fresh install", func(t *testing.T) {
		ctx := context.Background()
		r := auth.NewKeyring(bucket(t))
		k, secret, err := r.EnsureAdmin(ctx, configured)
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" {
			t.Errorf("returned secret %q for a configured key, want none", secret)
		}
		got, err := r.Verify(ctx, configured)
		if err != nil {
			t.Fatalf("configured key does not verify: %v", err)
		}
		if !got.Admin || got.OwnerID != k.OwnerID {
			t.Errorf("Verify = %+v, want admin of %s", got, k.OwnerID)
		}
		// It becomes the installation's admin: a later start without a
		// configured key keeps it and generates nothing.
		again, secret, err := r.EnsureAdmin(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" || again.OwnerID != k.OwnerID {
			t.Errorf("later start = %+v, secret %q; want owner %s and no secret", again, secret, k.OwnerID)
		}
		// Configuring it again is a no-op.
		same, _, err := r.EnsureAdmin(ctx, configured)
		if err != nil {
			t.Fatal(err)
		}
		if same.ID != k.ID {
			t.Errorf("configuring the key again made a new record %s, want %s", same.ID, k.ID)
		}
	})

	t.Run("configured after a generated admin keeps its owner and revokes the generated key", func(t *testing.T) {
		ctx := context.Background()
		r := auth.NewKeyring(bucket(t))
		first, generated, err := r.EnsureAdmin(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		k, secret, err := r.EnsureAdmin(ctx, configured)
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" {
			t.Errorf("returned secret %q, want none", secret)
		}
		if got, want := k.OwnerID, first.OwnerID; got != want {
			t.Errorf("configured admin owner = %s, want the first admin's %s", got, want)
		}
		got, err := r.Verify(ctx, configured)
		if err != nil {
			t.Fatalf("configured key does not verify: %v", err)
		}
		if !got.Admin || got.OwnerID != first.OwnerID {
			t.Errorf("Verify = %+v, want admin of %s", got, first.OwnerID)
		}
		if _, err := r.Verify(ctx, generated); err == nil {
			t.Errorf("the generated key still verifies after the configured one replaced it")
		}
	})

	t.Run("a stored non-admin key is promoted", func(t *testing.T) {
		ctx := context.Background()
		r := auth.NewKeyring(bucket(t))
		if err := r.Put(ctx, auth.NewKey(configured, "0000000000aa", false)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.EnsureAdmin(ctx, configured); err != nil {
			t.Fatal(err)
		}
		got, err := r.Verify(ctx, configured)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Admin {
			t.Errorf("configured key is not admin: %+v", got)
		}
	})
}

func TestEnsureAdminRejectsWeakKeys(t *testing.T) {
	r := auth.NewKeyring(bucket(t))
	for _, key := range []string{
		"mp-short",
		"mp-0123456789abcde", // 15 characters after the prefix
		"0123456789abcdef0123456789abcdef",
		"MP-0123456789abcdef0123",
	} {
		t.Run(key, func(t *testing.T) {
			_, _, err := r.EnsureAdmin(context.Background(), key)
			if got, want := errs.KindOf(err), errs.Invalid; got != want {
				t.Errorf("kind = %v, want %v (err %v)", got, want, err)
			}
		})
	}
	// Sixteen characters after the prefix is enough.
	if _, _, err := r.EnsureAdmin(context.Background(), "mp-0123456789abcdef"); err != nil {
		t.Errorf("16 characters after the prefix: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Two deployers starting at once on a fresh installation must agree on one
// admin owner, and neither may fail: the Keyring is documented as safe for
// concurrent use.
func TestEnsureAdminConcurrentFirstStart(t *testing.T) {
	for _, configured := range []string{"", "mp-test-admin-key-0123456789abcdef"} {
		t.Run("configured="+configured, func(t *testing.T) {
			for round := range 5 {
				r := auth.NewKeyring(bucket(t))
				type result struct {
					k   auth.Key
					err error
				}
				results := make(chan result, 2)
				var wg sync.WaitGroup
				for range 2 {
					wg.Go(func() {
						k, _, err := r.EnsureAdmin(context.Background(), configured)
						results <- result{k, err}
					})
				}
				wg.Wait()
				close(results)
				var owners []string
				for res := range results {
					if res.err != nil {
						t.Fatalf("round %d: concurrent EnsureAdmin: %v", round, res.err)
					}
					owners = append(owners, res.k.OwnerID)
				}
				if owners[0] != owners[1] {
					t.Fatalf("round %d: concurrent starts made two admin owners %v", round, owners)
				}
			}
		})
	}
}
