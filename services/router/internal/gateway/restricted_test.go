package gateway_test

import (
	"context"
	"testing"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
)

// TestRestrictedKey: a key limited to some services calls those, gets
// Forbidden for its owner's other services, and NotFound for another
// owner's, so names still do not leak.
func TestRestrictedKey(t *testing.T) {
	chatOnly := auth.Key{ID: "k-alice-ci", OwnerID: alice.OwnerID, Services: []string{aliceChat.ID}}
	bobsToo := auth.Key{ID: "k-alice-odd", OwnerID: alice.OwnerID, Services: []string{aliceChat.ID, bobChat.ID}}
	tests := []struct {
		name     string
		caller   auth.Key
		model    string
		wantKind errs.Kind // Internal means success
	}{
		{name: "a listed service", caller: chatOnly, model: aliceChat.AccessName},
		{name: "an unrestricted key", caller: alice, model: aliceChat.AccessName},
		{name: "own service not listed", caller: chatOnly, model: aliceImage.AccessName, wantKind: errs.Forbidden},
		{name: "own service not listed, not ready", caller: chatOnly, model: aliceIdle.AccessName, wantKind: errs.Forbidden},
		{name: "another owner's service", caller: chatOnly, model: bobChat.AccessName, wantKind: errs.NotFound},
		{name: "another owner's service listed anyway", caller: bobsToo, model: bobChat.AccessName, wantKind: errs.NotFound},
		{name: "unknown service", caller: chatOnly, model: "u-" + alice.OwnerID + "/nope", wantKind: errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			out, err := complete(f.g, context.Background(), tc.caller, "req-1", chatBody(tc.model))
			if tc.wantKind == errs.Internal {
				if err != nil {
					t.Fatalf("got %v, want an answer", err)
				}
				return
			}
			checkErr(t, err, tc.wantKind, "model")
			if out != nil {
				t.Errorf("got answer %s with the error", out)
			}
			if got := f.eng.endpoints(); len(got) != 0 {
				t.Errorf("engine called at %v, want no call", got)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events, want none", len(got))
			}
			_, err = f.g.Model(tc.caller, tc.model)
			checkErr(t, err, tc.wantKind, "model")
		})
	}
}

// TestRestrictedKeyModels: /v1/models lists only what a restricted key
// may call.
func TestRestrictedKeyModels(t *testing.T) {
	f := newFixture()
	chatOnly := auth.Key{ID: "k-alice-ci", OwnerID: alice.OwnerID, Services: []string{aliceChat.ID}}
	got := f.g.Models(chatOnly)
	if len(got) != 1 || got[0].ID != aliceChat.AccessName {
		t.Fatalf("models %+v, want only %s", got, aliceChat.AccessName)
	}
	if got := f.g.Models(alice); len(got) != 3 {
		t.Fatalf("unrestricted key sees %d models, want alice's 3", len(got))
	}
}
