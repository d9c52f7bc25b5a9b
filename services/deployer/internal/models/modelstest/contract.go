// Package modelstest is the contract every models.Store keeps, as a test
// suite: the registry's in-memory fake and the key-value bucket run the
// same one.
package modelstest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// StoreContract checks a fresh, empty store.
func StoreContract(t *testing.T, s models.Store) {
	ctx := context.Background()
	const alice, bob = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
	tiny := models.Model{
		Name: "tiny", DisplayName: "Tiny", Owner: alice, Source: "file:///models/tiny.gguf", Format: "gguf", Engine: "ollama",
		Tasks: []string{"text-generation"}, ContextLength: 2048, MemoryBytes: 22 << 20,
		Inspection: &models.Inspection{Format: "gguf", Architecture: "llama", Parameters: 164160, TensorBytes: 328960, FileBytes: 334048},
		CreatedAt:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	if err := s.Create(ctx, tiny); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, alice, "tiny")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != tiny.Name || got.Source != tiny.Source || got.Inspection == nil || *got.Inspection != *tiny.Inspection || !got.CreatedAt.Equal(tiny.CreatedAt) {
		t.Errorf("Get = %+v, want %+v", got, tiny)
	}
	again := tiny
	again.Source = "file:///models/other.gguf"
	if err := s.Create(ctx, again); errs.KindOf(err) != errs.Conflict {
		t.Errorf("second Create of one name: %v, want a conflict", err)
	}
	if got, _ := s.Get(ctx, alice, "tiny"); got.Source != tiny.Source {
		t.Errorf("a refused Create changed the model: %+v", got)
	}
	for _, m := range []models.Model{
		{Name: "tiny", Owner: bob, Source: "ollama://x:1"},
		{Name: "shared", Owner: models.OwnerPublic, Source: "ollama://y:1"},
		{Name: "second", Owner: alice, Source: "ollama://z:1"},
	} {
		if err := s.Create(ctx, m); err != nil {
			t.Fatalf("create %s of %s: %v", m.Name, m.Owner, err)
		}
	}
	for _, tc := range []struct{ owner, name string }{{bob, "second"}, {alice, "shared"}, {"", "tiny"}, {alice, ""}, {alice + ".x", "tiny"}, {"*", "tiny"}} {
		if _, err := s.Get(ctx, tc.owner, tc.name); errs.KindOf(err) != errs.NotFound {
			t.Errorf("Get(%q, %q) = %v, want not found", tc.owner, tc.name, err)
		}
	}
	names := func(list []models.Model, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range list {
			out = append(out, m.Owner+"."+m.Name)
		}
		slices.Sort(out)
		return out
	}
	if got, want := names(s.List(ctx, alice)), []string{alice + ".second", alice + ".tiny"}; !slices.Equal(got, want) {
		t.Errorf("List(alice) = %v, want %v", got, want)
	}
	if got, want := names(s.List(ctx, models.OwnerPublic)), []string{"public.shared"}; !slices.Equal(got, want) {
		t.Errorf("List(public) = %v, want %v", got, want)
	}
	if got := names(s.List(ctx, "cccccccccccc")); len(got) != 0 {
		t.Errorf("List of an owner without models = %v", got)
	}
	if got, want := names(s.All(ctx)), []string{alice + ".second", alice + ".tiny", bob + ".tiny", "public.shared"}; !slices.Equal(got, want) {
		t.Errorf("All = %v, want %v", got, want)
	}
	if err := s.Delete(ctx, alice, "tiny"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, alice, "tiny"); err != nil {
		t.Errorf("deleting a missing model: %v", err)
	}
	if _, err := s.Get(ctx, alice, "tiny"); errs.KindOf(err) != errs.NotFound {
		t.Errorf("Get after Delete: %v", err)
	}
	if _, err := s.Get(ctx, bob, "tiny"); err != nil {
		t.Errorf("deleting alice's tiny touched bob's: %v", err)
	}
	// A deleted name can be registered again; of concurrent registrations
	// of one name exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Go(func() {
			m := tiny
			m.Source = "ollama://n:" + string(rune('a'+i))
			if err := s.Create(ctx, m); err == nil {
				mu.Lock()
				won++
				mu.Unlock()
			} else if errs.KindOf(err) != errs.Conflict {
				t.Errorf("concurrent Create: %v", err)
			}
		})
	}
	wg.Wait()
	if won != 1 {
		t.Errorf("%d of 8 concurrent registrations of one name won, want 1", won)
	}
}
