package auth_test

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
)

func TestKeyJSONCompatible(t *testing.T) {
	// A record written before keys had names and services still decodes,
	// and a key without them encodes as before.
	old := `{"id":"k1","owner_id":"o1","prefix":"mp-abcdef","hash":"h","admin":false,"created_at":"2025-01-02T03:04:05Z"}`
	var k auth.Key
	if err := json.Unmarshal([]byte(old), &k); err != nil {
		t.Fatal(err)
	}
	if k.Name != "" || k.Services != nil {
		t.Errorf("decoded %+v, want no name and no services", k)
	}
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), old; got != want {
		t.Errorf("encoded\n %s, want\n %s", got, want)
	}
}

func TestOwnerKeysAndRevoke(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := auth.NewKeyring(bucket(t))
	admin, _, err := r.EnsureAdmin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	put := func(owner, name string, services ...string) (auth.Key, string) {
		t.Helper()
		secret := auth.NewSecret()
		k := auth.NewKey(secret, owner, false)
		k.Name, k.Services = name, services
		if err := r.Put(ctx, k); err != nil {
			t.Fatal(err)
		}
		return k, secret
	}
	ci, ciSecret := put("a11ce0000001", "ci", "s1", "s2")
	time.Sleep(time.Millisecond) // distinct creation times keep the order certain
	dev, _ := put("a11ce0000001", "dev")
	bobs, bobSecret := put("b0b000000002", "bob")

	t.Run("each owner sees only their keys, oldest first", func(t *testing.T) {
		tests := []struct {
			owner string
			want  []auth.Key
		}{
			{owner: "a11ce0000001", want: []auth.Key{ci, dev}},
			{owner: "b0b000000002", want: []auth.Key{bobs}},
			{owner: admin.OwnerID, want: []auth.Key{admin}},
			{owner: "0000000000ff", want: []auth.Key{}},
		}
		for _, tc := range tests {
			got, err := r.OwnerKeys(ctx, tc.owner)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("OwnerKeys(%s) =\n %+v, want\n %+v", tc.owner, got, tc.want)
			}
		}
	})

	t.Run("services survive the round trip", func(t *testing.T) {
		k, err := r.Verify(ctx, ciSecret)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := k.Services, []string{"s1", "s2"}; !reflect.DeepEqual(got, want) {
			t.Errorf("services = %v, want %v", got, want)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		tests := []struct {
			name     string
			owner    string
			id       string
			wantKind errs.Kind // Internal means success
		}{
			{name: "another owner's key", owner: "a11ce0000001", id: bobs.ID, wantKind: errs.NotFound},
			{name: "unknown key", owner: "a11ce0000001", id: "nope", wantKind: errs.NotFound},
			{name: "the admin key", owner: admin.OwnerID, id: admin.ID, wantKind: errs.Forbidden},
			{name: "own key", owner: "b0b000000002", id: bobs.ID},
			{name: "own key again", owner: "b0b000000002", id: bobs.ID, wantKind: errs.NotFound},
		}
		for _, tc := range tests {
			err := r.Revoke(ctx, tc.owner, tc.id)
			if tc.wantKind == errs.Internal {
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
				}
				continue
			}
			if got, want := errs.KindOf(err), tc.wantKind; got != want {
				t.Errorf("%s: kind = %v, want %v (err %v)", tc.name, got, want, err)
			}
		}
		// The revoked key stops verifying once the watch has the deletion.
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := r.Verify(ctx, bobSecret)
			if errs.KindOf(err) == errs.Unauthorized {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("revoked key still verifies after 5s (err %v)", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := r.Verify(ctx, ciSecret); err != nil {
			t.Errorf("another owner's key stopped verifying: %v", err)
		}
		if got, err := r.OwnerKeys(ctx, "a11ce0000001"); err != nil || len(got) != 2 {
			t.Errorf("alice's keys after bob's revocation = %d (err %v), want 2", len(got), err)
		}
	})
}
