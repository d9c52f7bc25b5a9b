package auth_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
)

// Finding 9: configuring a new admin key leaves the previous one valid, and
// no API call revokes an admin key: a leaked admin key can never be cut off.
func TestReviewAdminRotationRevokesTheOldKey(t *testing.T) {
	ctx := context.Background()
	r := auth.NewKeyring(bucket(t))
	const leaked, rotated = "mp-leaked-admin-key-0123456789abcdef", "mp-rotated-admin-key-0123456789abcdef"
	if _, _, err := r.EnsureAdmin(ctx, leaked); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.EnsureAdmin(ctx, rotated); err != nil {
		t.Fatal(err)
	}
	if k, err := r.Verify(ctx, leaked); err == nil {
		t.Fatalf("the rotated-out admin key still verifies: %+v", k)
	}
}

// A rotated-out admin key is refused for good: a replica still configured
// with it cannot bring it back (and revoke the new one); a start without a
// configured key keeps the current one.
func TestRotatedAdminKeyStaysRevoked(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv := bucket(t)
	r := auth.NewKeyring(kv)
	const old, current = "mp-old-admin-key-0123456789abcdef", "mp-current-admin-key-0123456789abcdef"
	if _, _, err := r.EnsureAdmin(ctx, old); err != nil {
		t.Fatal(err)
	}
	// A router following the keys drops the old one as it is revoked.
	router := auth.NewKeyring(kv)
	if err := router.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := router.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	cur, _, err := r.EnsureAdmin(ctx, current)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := router.Verify(ctx, old); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a router following the keys still takes the revoked admin key")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := r.EnsureAdmin(ctx, old); errs.KindOf(err) != errs.Forbidden {
		t.Fatalf("configuring the revoked key again: %v, want forbidden", err)
	}
	if _, err := r.Verify(ctx, current); err != nil {
		t.Fatalf("the current key stopped verifying: %v", err)
	}
	again, secret, err := r.EnsureAdmin(ctx, "")
	if err != nil || secret != "" || again.Hash != cur.Hash {
		t.Fatalf("start without a configured key: %+v, %q, %v; want the current admin key", again, secret, err)
	}
	// The admin key cannot be revoked through the API.
	if err := r.Revoke(ctx, cur.OwnerID, cur.ID); errs.KindOf(err) != errs.Forbidden {
		t.Fatalf("revoke the admin key: %v, want forbidden", err)
	}
}
