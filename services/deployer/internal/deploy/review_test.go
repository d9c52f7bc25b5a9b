package deploy_test

// Reproductions of the control-plane review's deployer findings.

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

var errOutage = errors.New("nats: timeout")

// Finding 4(b): the last instance of a deleting service fails before it
// was ever ready; nothing recounts and the service stays deleting.
func TestReviewFailureWhileDeletingFinishesDeletion(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, Status: state.StatusDeleting})
	ev := events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: "i1", ServiceID: "s1", WorkerID: "w1", Reason: "crashed"}
	if err := m.InstanceFailed(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := st.service(t, "s1").Status; got != state.StatusDeleted {
		t.Fatalf("status %s, want deleted: no instance is left", got)
	}
}

// failingInstances is a fakeStore whose Instances fails while fail is set.
type failingInstances struct {
	*fakeStore
	fail bool
}

func (f *failingInstances) Instances(ctx context.Context, id string) ([]state.Instance, error) {
	if f.fail {
		return nil, errOutage
	}
	return f.fakeStore.Instances(ctx, id)
}

// Finding 4(c): Delete swallows the recount's error, and a retried DELETE
// returns early: a service without instances stays deleting.
func TestReviewRetriedDeleteFinishesDeletion(t *testing.T) {
	st := &failingInstances{fakeStore: newFakeStore(), fail: true}
	m := deploy.NewManager(st, catalog.Default(), &fakePublisher{})
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, Status: state.StatusRunning})
	_, _ = m.Delete(context.Background(), alice, "s1", "chat")
	st.fail = false
	if _, err := m.Delete(context.Background(), alice, "s1", "chat"); err != nil {
		t.Fatal(err)
	}
	if got := st.service(t, "s1").Status; got != state.StatusDeleted {
		t.Fatalf("status %s after a retried DELETE, want deleted", got)
	}
}

// Finding 6: a DELETE whose announcement failed is retried; the retry
// finds the status stored and never announces it.
func TestReviewRetriedDeleteAnnounces(t *testing.T) {
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, Status: state.StatusRunning})
	st.instances["s1"] = []state.Instance{instance("i1", state.InstanceReady, "vllm")}
	pub.err = errOutage
	_, _ = m.Delete(context.Background(), alice, "s1", "chat")
	pub.err = nil
	if _, err := m.Delete(context.Background(), alice, "s1", "chat"); err != nil {
		t.Fatal(err)
	}
	if len(pub.events) != 1 {
		t.Fatalf("events %+v after the retried DELETE, want ServiceDeletedV1", pub.events)
	}
}

// Finding 6: the same for a scale request.
func TestReviewRetriedScaleAnnounces(t *testing.T) {
	m, st, pub := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, ReadyInstances: 1, Status: state.StatusRunning})
	pub.err = errOutage
	_, _ = m.Scale(context.Background(), alice, "s1", 2)
	pub.err = nil
	if _, err := m.Scale(context.Background(), alice, "s1", 2); err != nil {
		t.Fatal(err)
	}
	if len(pub.events) != 1 {
		t.Fatalf("events %+v after the retried scale, want ServiceScaledV1 1→2", pub.events)
	}
}

// Finding 6: a redelivered autoscaling decision whose announcement failed
// is dropped, since the count is already stored.
func TestReviewRedeliveredAutoscaleAnnounces(t *testing.T) {
	m, st, pub := newManager()
	policy := &state.Autoscale{MinInstances: 0, MaxInstances: 3, TargetInFlight: 1, ScaleToZeroAfter: 60}
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 0, Status: state.StatusIdle, Autoscale: policy})
	ev := events.ServiceAutoscaledV1{Meta: events.NewMeta(), ServiceID: "s1", OwnerID: alice.OwnerID, From: 0, To: 1, Reason: "1 request waiting"}
	pub.err = errOutage
	_ = m.ApplyAutoscale(context.Background(), ev, quietLog)
	pub.err = nil
	if err := m.ApplyAutoscale(context.Background(), ev, quietLog); err != nil {
		t.Fatal(err)
	}
	if len(pub.events) != 1 {
		t.Fatalf("events %+v after the redelivered decision, want ServiceScaledV1 0→1", pub.events)
	}
}

// blockingPublisher holds every event of service block until release is
// closed.
type blockingPublisher struct {
	fakePublisher
	block   string
	release chan struct{}
}

func (p *blockingPublisher) Publish(ctx context.Context, ev events.Event) error {
	if s, ok := ev.(events.ServiceScaledV1); ok && s.ServiceID == p.block {
		<-p.release
	}
	return p.fakePublisher.Publish(ctx, ev)
}

// Finding 10: one process-wide mutex holds every owner's changes behind
// one slow publish.
func TestReviewSlowPublishBlocksNoOtherService(t *testing.T) {
	st := newFakeStore()
	pub := &blockingPublisher{block: "s1", release: make(chan struct{})}
	defer close(pub.release)
	m := deploy.NewManager(st, catalog.Default(), pub)
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "one", Instances: 1, Status: state.StatusRunning})
	st.put(state.Service{ID: "s2", OwnerID: bob.OwnerID, Name: "two", Instances: 1, Status: state.StatusRunning})
	go func() { _, _ = m.Scale(context.Background(), alice, "s1", 2) }()
	for st.updateCount() == 0 { // s1's change is stored; its publish hangs
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { _, err := m.Scale(context.Background(), bob, "s2", 2); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bob's scale waited for alice's announcement")
	}
}

func (f *fakeStore) updateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updates
}

// Finding 12: a late PlacementFailedV1 writes its reason onto a running
// service, where it stays.
func TestReviewLatePlacementFailureOnRunningService(t *testing.T) {
	m, st, _ := newManager()
	st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, ReadyInstances: 1, Status: state.StatusRunning})
	ev := events.PlacementFailedV1{Meta: events.NewMeta(), ServiceID: "s1", OwnerID: alice.OwnerID, Wanted: 1, Placed: 0, Reason: "no worker has room"}
	if err := m.PlacementFailed(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := st.service(t, "s1").StatusReason; got != "" {
		t.Fatalf("a running service says %q", got)
	}
}

// memClaims is an in-memory deploy.Claims; putErr fails Put while set.
type memClaims struct {
	mu     sync.Mutex
	claims map[string]deploy.Claim
	revs   map[string]uint64
	putErr error
}

func (c *memClaims) Claim(_ context.Context, key string, cl deploy.Claim) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.claims[key]; ok {
		return false, nil
	}
	c.claims[key] = cl
	if c.revs == nil {
		c.revs = map[string]uint64{}
	}
	c.revs[key]++
	return true, nil
}

func (c *memClaims) Get(_ context.Context, key string) (deploy.Claim, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.claims[key]
	if !ok {
		return cl, 0, errs.E(errs.NotFound, "claim %s", key)
	}
	return cl, c.revs[key], nil
}

func (c *memClaims) Replace(_ context.Context, key string, cl deploy.Claim, rev uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.revs[key] != rev {
		return errs.E(errs.Conflict, "claim %s changed", key)
	}
	c.claims[key] = cl
	c.revs[key]++
	return nil
}

func (c *memClaims) Put(_ context.Context, key string, cl deploy.Claim) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.putErr != nil {
		return c.putErr
	}
	c.claims[key] = cl
	c.revs[key]++
	return nil
}

func (c *memClaims) Release(_ context.Context, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.claims, key)
	return nil
}

// Finding 11: recording the created service in the claim fails; every
// retry with the key is "still in progress" for a day.
func TestReviewIdempotencyClaimFinishes(t *testing.T) {
	m, _, _ := newManager()
	claims := &memClaims{claims: map[string]deploy.Claim{}, putErr: errOutage}
	idem := deploy.NewIdempotent(m, claims)
	req := deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"}
	first, _, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil {
		t.Fatal(err)
	}
	claims.mu.Lock()
	claims.putErr = nil
	claims.mu.Unlock()
	again, replayed, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil || !replayed || again.ID != first.ID {
		t.Fatalf("retry: %+v replayed %v err %v; want the first service replayed", again.ID, replayed, err)
	}
}

// Finding 11: the deployer dies between claiming a key and recording the
// service it created; every retry is "still in progress" for a day.
func TestReviewIdempotencyClaimOfACrashedRequestExpires(t *testing.T) {
	m, _, _ := newManager()
	claims := &memClaims{claims: map[string]deploy.Claim{}}
	idem := deploy.NewIdempotent(m, claims)
	req := deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"}
	first, _, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil {
		t.Fatal(err)
	}
	// As if the deployer had died before recording the service.
	claims.mu.Lock()
	for k, cl := range claims.claims {
		cl.ServiceID = ""
		claims.claims[k] = cl
	}
	claims.mu.Unlock()
	again, _, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil || again.ID != first.ID {
		t.Fatalf("retry of a request whose deployer died: %s, %v; want the service it created", again.ID, err)
	}
}

func announcementOf(t *testing.T, ev events.Event) state.Announcement {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return state.Announcement{Subject: ev.Subject(), EventID: ev.EventID(), Data: b}
}

// A claim whose request gave up (or whose deployer died) before it knew
// whether it stored the service is taken over by a retry, which creates
// the same service: never two.
func TestIdempotencyTakeover(t *testing.T) {
	m, st, _ := newManager()
	claims := &memClaims{claims: map[string]deploy.Claim{}}
	idem := deploy.NewIdempotent(m, claims, deploy.WithClaimTimeout(time.Minute))
	req := deploy.CreateRequest{Name: "chat", BaseModel: "qwen2.5-7b-instruct"}
	first, _, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil {
		t.Fatal(err)
	}
	// As if the first request had not known whether it stored its service,
	// and its claim had been left an hour ago.
	claims.mu.Lock()
	for k, cl := range claims.claims {
		cl.ServiceID, cl.ClaimedAt = "", time.Now().Add(-time.Hour)
		claims.claims[k] = cl
	}
	claims.mu.Unlock()
	again, replayed, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil || !replayed || again.ID != first.ID {
		t.Fatalf("retry: %s replayed %v, %v; want %s replayed", again.ID, replayed, err, first.ID)
	}
	// The service was not stored after all: the takeover creates it, with
	// the ID the claim names.
	st.mu.Lock()
	delete(st.services, first.ID)
	st.mu.Unlock()
	claims.mu.Lock()
	for k, cl := range claims.claims {
		cl.ServiceID, cl.ClaimedAt = "", time.Time{}
		claims.claims[k] = cl
	}
	claims.mu.Unlock()
	third, replayed, err := idem.Create(context.Background(), alice, "k1", req)
	if err != nil || replayed || third.ID != first.ID {
		t.Fatalf("takeover: %s replayed %v, %v; want %s created", third.ID, replayed, err, first.ID)
	}
}
