package scale_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

// placeAt stores a placement made at the given time.
func (f *fakeStore) placeAt(serviceID, instanceID, workerID string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.placements[state.InstanceKey(serviceID, instanceID)] = state.Placement{
		InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID, PlacedAt: at,
	}
}

// record stores an instance record as its worker would.
func (f *fakeStore) record(serviceID, instanceID, workerID, status string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances[state.InstanceKey(serviceID, instanceID)] = state.Instance{
		ID: instanceID, ServiceID: serviceID, WorkerID: workerID, Status: status, StartedAt: at, UpdatedAt: at,
	}
}

func (f *fakeStore) hasRecord(serviceID, instanceID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.instances[state.InstanceKey(serviceID, instanceID)]
	return ok
}

func (p *fakePublisher) released() []events.InstanceReleasedV1 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []events.InstanceReleasedV1
	for _, ev := range p.events {
		if ev, ok := ev.(events.InstanceReleasedV1); ok {
			out = append(out, ev)
		}
	}
	return out
}

func releasedIDs(evs []events.InstanceReleasedV1) []string {
	var ids []string
	for _, ev := range evs {
		ids = append(ids, ev.InstanceID)
	}
	return ids
}

func placedIDs(ps []state.Placement) []string {
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.InstanceID)
	}
	slices.Sort(ids)
	return ids
}

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

func TestReconcileServiceScalesDown(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 1)
	w1, w2 := worker("w1", 10), worker("w2", 10)
	w1.Instances = []string{"i-a", "i-c"}
	w2.Instances = []string{"i-b", "i-d", "i-o1", "i-o2"}
	st.workers = []state.Worker{w1, w2}
	t0 := time.Now().UTC().Add(-time.Minute)
	// w1: a (ready), c (starting); w2: b (ready), d (ready, newer), and two
	// of another service, so w2 is the most loaded.
	st.placeAt("s1", "i-a", "w1", t0)
	st.placeAt("s1", "i-c", "w1", t0)
	st.placeAt("s1", "i-b", "w2", t0)
	st.placeAt("s1", "i-d", "w2", t0.Add(time.Second))
	st.placeAt("other", "i-o1", "w2", t0)
	st.placeAt("other", "i-o2", "w2", t0)
	st.record("s1", "i-a", "w1", state.InstanceReady, t0)
	st.record("s1", "i-c", "w1", state.InstanceStarting, t0)
	st.record("s1", "i-b", "w2", state.InstanceReady, t0)
	st.record("s1", "i-d", "w2", state.InstanceReady, t0)

	sc := scale.New(st, pub, quiet)
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatalf("ReconcileService: %v", err)
	}
	evs := pub.released()
	// Not ready first; then the most loaded worker, newest first.
	if got, want := releasedIDs(evs), []string{"i-c", "i-d", "i-b"}; !slices.Equal(got, want) {
		t.Errorf("released %v, want %v", got, want)
	}
	for _, ev := range evs {
		p := map[string]string{"i-c": "w1", "i-d": "w2", "i-b": "w2"}[ev.InstanceID]
		want := events.InstanceReleasedV1{Meta: ev.Meta, InstanceID: ev.InstanceID, ServiceID: "s1", WorkerID: p, Reason: "scaled down to 1"}
		if ev != want || ev.ID == "" {
			t.Errorf("event %+v, want %+v", ev, want)
		}
		if got, want := ev.Subject(), "scale.instance.released.v1."+p; got != want {
			t.Errorf("subject %q, want %q", got, want)
		}
	}
	if got, want := placedIDs(st.placed("s1")), []string{"i-a"}; !slices.Equal(got, want) {
		t.Errorf("left placed %v, want %v", got, want)
	}
	if got := len(st.placed("other")); got != 2 {
		t.Errorf("other service has %d placements, want 2", got)
	}
	if got := pub.placed(); len(got) != 0 {
		t.Errorf("placed %v while scaling down", got)
	}
	// Instance records are the worker's to remove once it has drained.
	if !st.hasRecord("s1", "i-b") {
		t.Error("the scaler removed a live worker's instance record")
	}

	// Nothing more to do the second time, while the workers drain them.
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.released()); got != 3 {
		t.Errorf("second reconcile released again: %d events", got)
	}
	// A new scaler (another leader) whose workers still hold them releases
	// them again, as instances without a placement; once the workers have
	// stopped them, nothing.
	if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := releasedIDs(pub.released()[3:]); len(got) != 3 {
		t.Errorf("a new scaler released %v, want the 3 still held", got)
	}
	st.workers[0].Instances, st.workers[1].Instances = []string{"i-a"}, []string{"i-o1", "i-o2"}
	if err := scale.New(st, pub, quiet).ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.released()); got != 6 {
		t.Errorf("released %d in all once the workers stopped them, want 6", got)
	}
}

func TestReconcileReleasesDeleted(t *testing.T) {
	tests := []struct {
		name   string
		status string // of the service record; "" for no record at all
		all    bool   // reconcile through ReconcileAll
	}{
		{name: "deleting", status: state.StatusDeleting},
		{name: "deleted", status: state.StatusDeleted},
		{name: "record gone", status: ""},
		{name: "deleting, sweep", status: state.StatusDeleting, all: true},
		{name: "record gone, sweep", status: "", all: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, pub := newFakeStore(), &fakePublisher{}
			if tc.status != "" {
				svc := service("s1", 3)
				svc.Status = tc.status
				st.services["s1"] = svc
			}
			st.services["s2"] = service("s2", 1)
			st.workers = []state.Worker{worker("w1", 10), worker("w2", 10)}
			for _, id := range []string{"i-1", "i-2", "i-3"} {
				st.place("s1", id, "w1")
			}
			st.place("s2", "i-keep", "w2")
			sc := scale.New(st, pub, quiet)
			var err error
			if tc.all {
				err = sc.ReconcileAll(context.Background())
			} else {
				err = sc.ReconcileService(context.Background(), "s1")
			}
			if err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			evs := pub.released()
			got := releasedIDs(evs)
			slices.Sort(got)
			if want := []string{"i-1", "i-2", "i-3"}; !slices.Equal(got, want) {
				t.Errorf("released %v, want %v", got, want)
			}
			for _, ev := range evs {
				if ev.Reason != "service deleted" {
					t.Errorf("reason %q, want %q", ev.Reason, "service deleted")
				}
			}
			if got := st.placed("s1"); len(got) != 0 {
				t.Errorf("left placed %v", got)
			}
			if got := placedIDs(st.placed("s2")); !slices.Equal(got, []string{"i-keep"}) {
				t.Errorf("other service placed %v, want [i-keep]", got)
			}
			if got := pub.placed(); len(got) != 0 {
				t.Errorf("placed %v", got)
			}
		})
	}
}

func TestReconcileReplacesDeadWorker(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 10)} // w-dead stopped beating
	sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
	clk.advance(time.Minute) // the scaler has run long enough to judge
	old := clk.now().Add(-time.Minute)
	st.placeAt("s1", "i-dead", "w-dead", old)
	st.record("s1", "i-dead", "w-dead", state.InstanceReady, old)
	st.placeAt("s1", "i-live", "w1", old)
	st.record("s1", "i-live", "w1", state.InstanceReady, old)
	// A record of the dead worker whose placement was released already.
	st.record("s1", "i-stray", "w-dead", state.InstanceReady, old)

	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatalf("ReconcileService: %v", err)
	}
	if st.hasRecord("s1", "i-dead") || st.hasRecord("s1", "i-stray") {
		t.Error("the dead worker's instance records remain; the router would still route to them")
	}
	if !st.hasRecord("s1", "i-live") {
		t.Error("the live worker's record was removed")
	}
	// Each lost instance is announced once, so billing ends its time: the
	// dead worker will never announce a stop.
	evs := pub.released()
	got := releasedIDs(evs)
	slices.Sort(got)
	if want := []string{"i-dead", "i-stray"}; !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
	for _, ev := range evs {
		want := events.InstanceReleasedV1{Meta: events.Meta{ID: ev.ID, OccurredAt: clk.now()}, InstanceID: ev.InstanceID, ServiceID: "s1",
			WorkerID: "w-dead", Reason: "worker w-dead stopped beating", WorkerGone: true}
		if ev != want || ev.ID == "" {
			t.Errorf("event %+v, want %+v", ev, want)
		}
		if got, want := ev.Subject(), "scale.instance.released.v1.w-dead"; got != want {
			t.Errorf("subject %q, want %q", got, want)
		}
	}
	placed := st.placed("s1")
	if len(placed) != 2 {
		t.Fatalf("service has %d placements, want 2", len(placed))
	}
	for _, p := range placed {
		if p.WorkerID != "w1" || p.InstanceID == "i-dead" {
			t.Errorf("placement %+v; want all on w1, the dead one replaced", p)
		}
	}
	if got := pub.placed(); len(got) != 1 || got[0].WorkerID != "w1" {
		t.Errorf("placed events %+v, want one on w1", got)
	}

	// The loss is announced once: the next reconcile has nothing to do.
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.released()); got != 2 {
		t.Errorf("%d releases after a second reconcile, want 2", got)
	}
}

// failingDelete is a fakeStore whose first DeleteInstance calls fail.
type failingDelete struct {
	*fakeStore
	failures int
}

var errDelete = errors.New("nats: timeout")

func (f *failingDelete) DeleteInstance(ctx context.Context, serviceID, instanceID string) error {
	if f.failures > 0 {
		f.failures--
		return errDelete
	}
	return f.fakeStore.DeleteInstance(ctx, serviceID, instanceID)
}

func TestDeadWorkerLossAnnouncedAtLeastOnce(t *testing.T) {
	setup := func(t *testing.T, pub *fakePublisher) (*failingDelete, *scale.Scaler) {
		t.Helper()
		clk := &clock{t: time.Now().UTC()}
		st := &failingDelete{fakeStore: newFakeStore()}
		st.services["s1"] = service("s1", 1)
		st.workers = []state.Worker{worker("w1", 10)}
		sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
		clk.advance(time.Minute)
		old := clk.now().Add(-time.Minute)
		st.placeAt("s1", "i-dead", "w-dead", old)
		st.record("s1", "i-dead", "w-dead", state.InstanceReady, old)
		return st, sc
	}
	t.Run("announcement fails: nothing removed, announced on retry", func(t *testing.T) {
		pub := &fakePublisher{failOn: []int{1}}
		st, sc := setup(t, pub)
		if err := sc.ReconcileService(context.Background(), "s1"); !errors.Is(err, errPublish) {
			t.Fatalf("err = %v, want the publish error", err)
		}
		if got := placedIDs(st.placed("s1")); !slices.Equal(got, []string{"i-dead"}) || !st.hasRecord("s1", "i-dead") {
			t.Errorf("placed %v, record kept %v: want both kept until the loss is announced", got, st.hasRecord("s1", "i-dead"))
		}
		if len(pub.events) != 0 {
			t.Errorf("published %v", pub.events)
		}
		if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
			t.Fatal(err)
		}
		if got := releasedIDs(pub.released()); !slices.Equal(got, []string{"i-dead"}) || !pub.released()[0].WorkerGone {
			t.Errorf("released %+v, want i-dead with worker_gone", pub.released())
		}
		if st.hasRecord("s1", "i-dead") || slices.Contains(placedIDs(st.placed("s1")), "i-dead") {
			t.Error("the dead instance is still recorded or placed")
		}
		if got := pub.placed(); len(got) != 1 {
			t.Errorf("placed %+v, want one replacement", got)
		}
	})
	t.Run("removal fails after the announcement: announced again", func(t *testing.T) {
		pub := &fakePublisher{}
		st, sc := setup(t, pub)
		st.failures = 1
		if err := sc.ReconcileService(context.Background(), "s1"); !errors.Is(err, errDelete) {
			t.Fatalf("err = %v, want the delete error", err)
		}
		if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
			t.Fatal(err)
		}
		evs := pub.released()
		if got := releasedIDs(evs); !slices.Equal(got, []string{"i-dead", "i-dead"}) {
			t.Fatalf("released %v, want i-dead twice (the record outlived the first announcement)", got)
		}
		if evs[0].ID == evs[1].ID || !evs[0].WorkerGone || !evs[1].WorkerGone {
			t.Errorf("announcements %+v", evs)
		}
		if st.hasRecord("s1", "i-dead") {
			t.Error("the dead worker's record remains")
		}
	})
}

func TestReconcileKeepsUnseenWorker(t *testing.T) {
	tests := []struct {
		name     string
		scalerUp time.Duration // how long the scaler has run
		placedAt time.Duration // how long ago the placement was made
	}{
		{name: "young placement", scalerUp: time.Minute, placedAt: time.Second},
		{name: "young scaler", scalerUp: time.Second, placedAt: time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{t: time.Now().UTC()}
			st, pub := newFakeStore(), &fakePublisher{}
			st.services["s1"] = service("s1", 1)
			st.workers = []state.Worker{worker("w1", 10)}
			sc := scale.New(st, pub, quiet, scale.WithClock(clk.now))
			clk.advance(tc.scalerUp)
			at := clk.now().Add(-tc.placedAt)
			st.placeAt("s1", "i-new", "w-unseen", at)
			st.record("s1", "i-new", "w-unseen", state.InstanceStarting, at)

			if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
				t.Fatalf("ReconcileService: %v", err)
			}
			if got := placedIDs(st.placed("s1")); !slices.Equal(got, []string{"i-new"}) {
				t.Errorf("placed %v, want [i-new] kept", got)
			}
			if !st.hasRecord("s1", "i-new") {
				t.Error("record removed")
			}
			if len(pub.placed())+len(pub.released()) != 0 {
				t.Errorf("published %v", pub.events)
			}
		})
	}
}

// A release whose announcement failed leaves the placement removed: its
// worker then holds the instance without a placement, and the next
// reconcile releases it as an orphan.
func TestReleasePublishFailure(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{failOn: []int{1}}
	st.services["s1"] = service("s1", 1)
	w := worker("w1", 10)
	w.Held = []state.Held{{InstanceID: "i-1", ServiceID: "s1"}, {InstanceID: "i-2", ServiceID: "s1"}}
	w.Instances = []string{"i-1", "i-2"}
	st.workers = []state.Worker{w}
	st.place("s1", "i-1", "w1")
	st.place("s1", "i-2", "w1")
	sc := scale.New(st, pub, quiet)

	err := sc.ReconcileService(context.Background(), "s1")
	if !errors.Is(err, errPublish) {
		t.Fatalf("err = %v, want the publish error", err)
	}
	if got := len(st.placed("s1")); got != 1 {
		t.Errorf("placed %d, want 1", got)
	}
	if got := pub.released(); len(got) != 0 {
		t.Errorf("released %v", got)
	}
	if err := sc.ReconcileService(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got, want := len(st.placed("s1")), 1; got != want {
		t.Errorf("after retry %d placements, want %d", got, want)
	}
	rel := pub.released()
	if len(rel) != 1 || rel[0].Reason != "runs without a placement" {
		t.Errorf("after retry released %+v, want the orphan released", rel)
	}
}

func TestReconcileScaleDownConcurrent(t *testing.T) {
	st, pub := newFakeStore(), &fakePublisher{}
	st.services["s1"] = service("s1", 2)
	st.workers = []state.Worker{worker("w1", 10), worker("w2", 10)}
	for _, id := range []string{"i-1", "i-2", "i-3", "i-4", "i-5"} {
		st.place("s1", id, "w1")
	}
	sc := scale.New(st, pub, quiet)

	var wg sync.WaitGroup
	errc := make(chan error, 10)
	for i := range 10 {
		wg.Go(func() {
			if i%2 == 0 {
				errc <- sc.ReconcileAll(context.Background())
			} else {
				errc <- sc.ReconcileService(context.Background(), "s1")
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("reconcile: %v", err)
		}
	}
	if got, want := len(st.placed("s1")), 2; got != want {
		t.Errorf("%d placements, want %d", got, want)
	}
	if got, want := len(pub.released()), 3; got != want {
		t.Errorf("%d releases, want %d", got, want)
	}
	if st.overlaps != 0 {
		t.Errorf("%d reconciles overlapped", st.overlaps)
	}
}
