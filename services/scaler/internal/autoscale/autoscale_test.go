package autoscale_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/autoscale"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestDecide(t *testing.T) {
	toZero := state.Autoscale{MinInstances: 0, MaxInstances: 4, TargetInFlight: 2, ScaleToZeroAfter: 60}
	floor := state.Autoscale{MinInstances: 2, MaxInstances: 5, TargetInFlight: 4}
	const delay = 30 * time.Second
	tests := []struct {
		name             string
		p                state.Autoscale
		current          int
		o                autoscale.Observation
		idleFor, belowFo time.Duration
		want             int
		reason           string // a part of the reason; "" when nothing changes
	}{
		{"cold start", toZero, 0, autoscale.Observation{InFlight: 1, Waiting: 1}, 0, 0, 1, "1 request waiting for an instance"},
		{"cold start with a crowd", toZero, 0, autoscale.Observation{InFlight: 7, Waiting: 7}, 0, 0, 4, "7 requests waiting"},
		{"idle at zero stays", toZero, 0, autoscale.Observation{}, time.Hour, 0, 0, ""},
		{"busy scales up at once", toZero, 1, autoscale.Observation{InFlight: 5}, 0, 0, 3, "5 requests in flight, target 2 per instance"},
		{"capped at max", toZero, 2, autoscale.Observation{InFlight: 100}, 0, 0, 4, "100 requests in flight"},
		{"quiet but not idle long enough keeps one", toZero, 1, autoscale.Observation{}, 59 * time.Second, 0, 1, ""},
		{"idle long enough scales to zero", toZero, 1, autoscale.Observation{}, 61 * time.Second, 0, 0, "no request for 1m1s"},
		{"idle from several scales to zero", toZero, 3, autoscale.Observation{}, 2 * time.Minute, 0, 0, "no request for"},
		{"in flight never scales to zero", toZero, 1, autoscale.Observation{InFlight: 1}, time.Hour, 0, 1, ""},
		{"scale down waits for the delay", toZero, 3, autoscale.Observation{InFlight: 1}, 0, 10 * time.Second, 3, ""},
		{"scale down after the delay", toZero, 3, autoscale.Observation{InFlight: 1}, 0, delay, 1, "1 request in flight, target 2 per instance, for 30s"},
		{"never below min", floor, 3, autoscale.Observation{}, time.Hour, time.Hour, 2, "0 requests in flight"},
		{"min without demand stays", floor, 2, autoscale.Observation{}, time.Hour, time.Hour, 2, ""},
		{"below a raised min moves at once", floor, 1, autoscale.Observation{}, 0, 0, 2, "policy allows 2 to 5 instances"},
		{"above a lowered max moves at once", floor, 9, autoscale.Observation{InFlight: 100}, 0, 0, 5, "policy allows 2 to 5 instances"},
		{"exact fit stays", floor, 3, autoscale.Observation{InFlight: 12}, 0, time.Hour, 3, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := autoscale.Decide(tc.p, tc.current, tc.o, tc.idleFor, tc.belowFo, delay)
			if got != tc.want {
				t.Fatalf("Decide = %d (%q), want %d", got, reason, tc.want)
			}
			if tc.reason == "" && reason != "" || !strings.Contains(reason, tc.reason) {
				t.Errorf("reason %q, want it to contain %q", reason, tc.reason)
			}
		})
	}
}

type fakeStore struct {
	mu       sync.Mutex
	services []state.Service
	loads    []state.Load
	err      error
}

func (f *fakeStore) Services(context.Context) ([]state.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]state.Service(nil), f.services...), f.err
}

func (f *fakeStore) Loads(context.Context) ([]state.Load, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]state.Load(nil), f.loads...), nil
}

func (f *fakeStore) set(services []state.Service, loads []state.Load) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services, f.loads = services, loads
}

type fakePub struct {
	mu   sync.Mutex
	sent []events.ServiceAutoscaledV1
	err  error
}

func (p *fakePub) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.sent = append(p.sent, ev.(events.ServiceAutoscaledV1))
	return nil
}

func (p *fakePub) take() []events.ServiceAutoscaledV1 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.sent
	p.sent = nil
	return out
}

// clock is a time tests move by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration)           { c.t = c.t.Add(d) }
func (c *clock) ago(d time.Duration) time.Time { return c.t.Add(-d) }

func TestTickFollowsDemand(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	store, pub := &fakeStore{}, &fakePub{}
	a := autoscale.New(store, pub, autoscale.Config{DownDelay: 30 * time.Second, Stale: 10 * time.Second, Resend: 10 * time.Second}, quiet, autoscale.WithClock(clk.now))
	policy := &state.Autoscale{MinInstances: 0, MaxInstances: 3, TargetInFlight: 2, ScaleToZeroAfter: 120}
	svc := state.Service{ID: "s1", OwnerID: "8105f7322477", Instances: 1, Status: state.StatusRunning, Autoscale: policy}
	fixed := state.Service{ID: "s2", OwnerID: "8105f7322477", Instances: 1, Status: state.StatusRunning}
	load := func(router string, inFlight, waiting int, last time.Time) state.Load {
		return state.Load{ServiceID: "s1", RouterID: router, InFlight: inFlight, Waiting: waiting, LastRequestAt: last, ReportedAt: clk.now()}
	}

	// Two routers' demand adds up: 5 in flight at 2 per instance is 3.
	store.set([]state.Service{svc, fixed}, []state.Load{load("r1", 3, 0, clk.now()), load("r2", 2, 0, clk.now()),
		{ServiceID: "s2", RouterID: "r1", InFlight: 50, ReportedAt: clk.now()}})
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	sent := pub.take()
	if len(sent) != 1 || sent[0].ServiceID != "s1" || sent[0].From != 1 || sent[0].To != 3 || sent[0].InFlight != 5 || sent[0].TargetInFlight != 2 {
		t.Fatalf("decisions %+v, want s1 1→3 with 5 in flight (the fixed service is left alone)", sent)
	}
	// Not applied yet: not announced again until Resend has passed.
	clk.add(time.Second)
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 0 {
		t.Fatalf("decision repeated at once: %+v", sent)
	}
	clk.add(10 * time.Second)
	store.set([]state.Service{svc}, []state.Load{load("r1", 3, 0, clk.now()), load("r2", 2, 0, clk.now())})
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 1 || sent[0].To != 3 {
		t.Fatalf("decision not announced again after Resend: %+v", sent)
	}

	// Applied: 3 instances. A router that stopped reporting no longer
	// counts; the other's 1 request needs 1 instance, after DownDelay.
	svc.Instances = 3
	stale := load("r2", 2, 0, clk.now())
	stale.ReportedAt = clk.ago(11 * time.Second)
	store.set([]state.Service{svc}, []state.Load{load("r1", 1, 0, clk.now()), stale})
	for range 3 {
		if err := a.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if sent := pub.take(); len(sent) != 0 {
			t.Fatalf("scaled down before DownDelay: %+v", sent)
		}
		clk.add(10 * time.Second)
		store.set([]state.Service{svc}, []state.Load{load("r1", 1, 0, clk.now())})
	}
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 1 || sent[0].To != 1 {
		t.Fatalf("decisions %+v, want 3→1 after DownDelay", sent)
	}
	svc.Instances = 1

	// Quiet: the last request was at lastReq; after ScaleToZeroAfter of
	// it, the service goes to zero.
	lastReq := clk.now()
	store.set([]state.Service{svc}, []state.Load{load("r1", 0, 0, lastReq)})
	clk.add(119 * time.Second)
	store.set([]state.Service{svc}, []state.Load{load("r1", 0, 0, lastReq)})
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 0 {
		t.Fatalf("scaled to zero before the idle time: %+v", sent)
	}
	clk.add(2 * time.Second)
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	sent = pub.take()
	if len(sent) != 1 || sent[0].To != 0 || !strings.Contains(sent[0].Reason, "no request for 2m") {
		t.Fatalf("decisions %+v, want 1→0 after 2m idle", sent)
	}
	svc.Instances, svc.Status = 0, state.StatusIdle

	// A request waits: back to one.
	store.set([]state.Service{svc}, []state.Load{load("r1", 1, 1, clk.now())})
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	sent = pub.take()
	if len(sent) != 1 || sent[0].From != 0 || sent[0].To != 1 || !strings.Contains(sent[0].Reason, "waiting") {
		t.Fatalf("decisions %+v, want 0→1 for the waiting request", sent)
	}
}

func TestTickNewServiceGetsAWholeIdlePeriod(t *testing.T) {
	// A scaler that first sees a service (after its own restart, say)
	// with no load report gives it a whole idle period before zero.
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	store, pub := &fakeStore{}, &fakePub{}
	a := autoscale.New(store, pub, autoscale.Config{Stale: 10 * time.Second, Resend: 10 * time.Second}, quiet, autoscale.WithClock(clk.now))
	svc := state.Service{ID: "s1", OwnerID: "8105f7322477", Instances: 1, Status: state.StatusRunning,
		Autoscale: &state.Autoscale{MaxInstances: 2, TargetInFlight: 1, ScaleToZeroAfter: 60}}
	store.set([]state.Service{svc}, nil)
	for _, step := range []time.Duration{0, 30 * time.Second, 29 * time.Second} {
		clk.add(step)
		if err := a.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if sent := pub.take(); len(sent) != 0 {
			t.Fatalf("after %v: %+v, want nothing yet", step, sent)
		}
	}
	clk.add(2 * time.Second)
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 1 || sent[0].To != 0 {
		t.Fatalf("decisions %+v, want 1→0", sent)
	}
}

func TestTickSkipsServicesNotToScale(t *testing.T) {
	ctx := context.Background()
	store, pub := &fakeStore{}, &fakePub{}
	a := autoscale.New(store, pub, autoscale.Config{Stale: time.Minute, Resend: time.Minute}, quiet)
	p := &state.Autoscale{MaxInstances: 4, TargetInFlight: 1, ScaleToZeroAfter: 60}
	var services []state.Service
	var loads []state.Load
	for i, st := range []string{state.StatusDeleting, state.StatusDeleted, state.StatusFailed} {
		id := "s" + string(rune('a'+i))
		services = append(services, state.Service{ID: id, Instances: 1, Status: st, Autoscale: p})
		loads = append(loads, state.Load{ServiceID: id, RouterID: "r", InFlight: 4, ReportedAt: time.Now()})
	}
	store.set(services, loads)
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 0 {
		t.Fatalf("decisions for deleting, deleted or failed services: %+v", sent)
	}
}

func TestTickPublishFailureIsRetried(t *testing.T) {
	ctx := context.Background()
	store, pub := &fakeStore{}, &fakePub{err: errors.New("nats down")}
	a := autoscale.New(store, pub, autoscale.Config{Stale: time.Minute, Resend: time.Hour}, quiet)
	store.set([]state.Service{{ID: "s1", Instances: 0, Status: state.StatusIdle,
		Autoscale: &state.Autoscale{MaxInstances: 2, TargetInFlight: 1, ScaleToZeroAfter: 60}}},
		[]state.Load{{ServiceID: "s1", RouterID: "r", InFlight: 1, Waiting: 1, ReportedAt: time.Now()}})
	if err := a.Tick(ctx); err == nil || !strings.Contains(err.Error(), "nats down") {
		t.Fatalf("Tick = %v, want the publish error", err)
	}
	pub.err = nil
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if sent := pub.take(); len(sent) != 1 || sent[0].To != 1 {
		t.Fatalf("decisions %+v, want the failed one announced on the next tick", sent)
	}
}
