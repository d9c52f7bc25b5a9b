package deploy_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// The sweep repairs what no event told: a deleting service whose last
// instance went without a word, a stale ready count, an announcement left
// in an outbox; and removes services deleted longer ago than the
// retention.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	st, pub := newFakeStore(), &fakePublisher{}
	m := deploy.NewManager(st, catalog.Default(), pub, deploy.WithClock(clk.now), deploy.WithRetention(24*time.Hour))
	st.put(state.Service{ID: "s-deleting", OwnerID: alice.OwnerID, Name: "a", Instances: 1, Status: state.StatusDeleting, UpdatedAt: clk.now()})
	st.put(state.Service{ID: "s-placed", OwnerID: alice.OwnerID, Name: "b", Instances: 1, Status: state.StatusDeleting, UpdatedAt: clk.now()})
	st.placed["s-placed"] = []state.Placement{{InstanceID: "i9", ServiceID: "s-placed", WorkerID: "w1"}}
	st.put(state.Service{ID: "s-stale", OwnerID: alice.OwnerID, Name: "c", Instances: 2, ReadyInstances: 2, Status: state.StatusRunning, UpdatedAt: clk.now()})
	st.instances["s-stale"] = []state.Instance{instance("i1", state.InstanceReady, "vllm")}
	old := state.Service{ID: "s-old", OwnerID: alice.OwnerID, Name: "d", Status: state.StatusDeleted, UpdatedAt: clk.now().Add(-48 * time.Hour)}
	st.put(old)
	recent := state.Service{ID: "s-recent", OwnerID: alice.OwnerID, Name: "e", Status: state.StatusDeleted, UpdatedAt: clk.now().Add(-time.Hour)}
	st.put(recent)
	pending := state.Service{ID: "s-pending", OwnerID: alice.OwnerID, Name: "f", Instances: 1, Status: state.StatusScaling}
	scaled := events.ServiceScaledV1{Meta: events.NewMeta(), ServiceID: "s-pending", OwnerID: alice.OwnerID, From: 2, To: 1, Reason: deploy.ScaleReason}
	st.put(withOutbox(t, pending, scaled))

	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.service(t, "s-deleting").Status; got != state.StatusDeleted {
		t.Errorf("s-deleting is %s, want deleted: nothing is left of it", got)
	}
	if got := st.service(t, "s-placed").Status; got != state.StatusDeleting {
		t.Errorf("s-placed is %s, want deleting while it is placed", got)
	}
	if got := st.service(t, "s-stale"); got.ReadyInstances != 1 || got.Status != state.StatusDeploying {
		t.Errorf("s-stale: %d ready, %s; want 1, deploying", got.ReadyInstances, got.Status)
	}
	if _, _, err := st.Get(ctx, "s-old"); err == nil {
		t.Error("a service deleted two days ago with a day's retention is still there")
	}
	if _, _, err := st.Get(ctx, "s-recent"); err != nil {
		t.Errorf("a service deleted an hour ago was removed: %v", err)
	}
	if len(pub.events) != 1 || pub.events[0].EventID() != scaled.ID {
		t.Errorf("published %+v, want the pending announcement, with its event ID", pub.events)
	}
	if got := st.service(t, "s-pending").Outbox; len(got) != 0 {
		t.Errorf("outbox %+v after the sweep published it", got)
	}
}

func withOutbox(t *testing.T, s state.Service, evs ...events.Event) state.Service {
	t.Helper()
	for _, ev := range evs {
		s.Outbox = append(s.Outbox, announcementOf(t, ev))
	}
	return s
}
