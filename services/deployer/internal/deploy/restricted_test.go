package deploy_test

import (
	"context"
	"testing"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// A key restricted to some of its owner's services sees only those, and
// changes nothing.
func TestRestrictedKey(t *testing.T) {
	ctx := context.Background()
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "one", Instances: 1, Status: state.StatusRunning})
	st.put(state.Service{ID: "s2", OwnerID: alice.OwnerID, Name: "two", Instances: 1, Status: state.StatusRunning})
	onlyOne := auth.Key{ID: "k-ci", OwnerID: alice.OwnerID, Services: []string{"s1"}}

	if _, err := m.Get(ctx, onlyOne, "s1"); err != nil {
		t.Fatalf("get its service: %v", err)
	}
	if _, err := m.Get(ctx, onlyOne, "s2"); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("get another service of its owner: err = %v, want NotFound", err)
	}
	page, _, err := m.List(ctx, onlyOne, deploy.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 1 || page[0].ID != "s1" {
		t.Fatalf("list = %+v, want only s1", page)
	}
	if _, err := m.Scale(ctx, onlyOne, "s1", 2); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("scale: err = %v, want Forbidden", err)
	}
	if _, err := m.Scale(ctx, onlyOne, "s2", 2); errs.KindOf(err) != errs.NotFound {
		t.Errorf("scale a service it does not reach: err = %v, want NotFound", err)
	}
	if _, err := m.Delete(ctx, onlyOne, "s1", "one"); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("delete: err = %v, want Forbidden", err)
	}
	if _, err := m.SetAutoscale(ctx, onlyOne, "s1", nil); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("autoscale: err = %v, want Forbidden", err)
	}
	if _, err := m.Create(ctx, onlyOne, deploy.CreateRequest{Name: "three", BaseModel: "qwen2.5-7b-instruct"}); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("create: err = %v, want Forbidden", err)
	}
	if st.updates != 0 || len(pub.events) != 0 {
		t.Errorf("updates %d, events %d; want none", st.updates, len(pub.events))
	}
}
