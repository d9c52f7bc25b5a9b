// Package autoscale is the scaler's autoscaling: from the demand routers
// report, it decides how many instances each autoscaled service should
// have, and announces each decision with its reason. The deployer stores
// the decision in the service record; the scaler's reconcile then places
// or releases instances as for any other scale.
package autoscale

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Store reads services and the routers' load reports. Implemented by
// internal/kvstore.
type Store interface {
	Services(ctx context.Context) ([]state.Service, error)
	Loads(ctx context.Context) ([]state.Load, error)
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Config tunes the autoscaler for every service.
type Config struct {
	// DownDelay is how long fewer instances must suffice before a
	// service is scaled down (scale-ups are immediate).
	DownDelay time.Duration
	// Stale is the age after which a router's report of requests in
	// flight no longer counts: that router stopped reporting.
	Stale time.Duration
	// Resend is how long a decision the deployer has not applied yet
	// waits before it is announced again.
	Resend time.Duration
}

// Observation is a service's demand summed over the routers.
type Observation struct {
	InFlight int // requests in flight, those waiting included
	Waiting  int // requests held for a ready instance
}

// Decide returns the instance count a service with current desired
// instances should have under policy p, and why. idleFor is the time since
// its last request; belowFor how long fewer instances than current have
// sufficed (zero when they do not). It returns current when nothing should
// change yet.
func Decide(p state.Autoscale, current int, o Observation, idleFor, belowFor, downDelay time.Duration) (int, string) {
	target := max(p.TargetInFlight, 1)
	need := (o.InFlight + target - 1) / target
	lo, hi := p.MinInstances, max(p.MaxInstances, p.MinInstances)
	idle := time.Duration(p.ScaleToZeroAfter) * time.Second
	if lo == 0 && current > 0 && (o.InFlight > 0 || idleFor < idle) {
		lo = 1 // one instance stays until the service has been idle long enough
	}
	want := min(max(need, lo), hi)
	switch {
	case current < p.MinInstances || current > hi:
		return want, fmt.Sprintf("policy allows %d to %d instances", p.MinInstances, hi)
	case want > current && current == 0 && o.Waiting > 0:
		return want, fmt.Sprintf("%d %s waiting for an instance", o.Waiting, plural(o.Waiting, "request"))
	case want > current:
		return want, fmt.Sprintf("%d %s in flight, target %d per instance", o.InFlight, plural(o.InFlight, "request"), target)
	case want == 0 && current > 0:
		return 0, fmt.Sprintf("no request for %s", idleFor.Round(time.Second))
	case want < current && belowFor >= downDelay:
		return want, fmt.Sprintf("%d %s in flight, target %d per instance, for %s", o.InFlight, plural(o.InFlight, "request"), target, belowFor.Round(time.Second))
	}
	return current, ""
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// memo is what the autoscaler remembers of one service between ticks.
type memo struct {
	lastActive time.Time // the last request, or when the service was first seen
	belowSince time.Time // since when fewer instances suffice; zero if not
	sentFrom   int       // the last decision announced
	sentTo     int
	sentAt     time.Time
}

// Autoscaler decides for every autoscaled service at each Tick. It
// remembers only timings; everything else it reads afresh, so a restarted
// scaler carries on (conservatively: it waits a whole idle period before
// scaling to zero). It is safe for concurrent use.
type Autoscaler struct {
	store Store
	pub   Publisher
	cfg   Config
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex
	memos map[string]*memo
}

// Option configures an Autoscaler.
type Option func(*Autoscaler)

// WithClock has the autoscaler read the time from now; tests move it.
func WithClock(now func() time.Time) Option { return func(a *Autoscaler) { a.now = now } }

// New returns an Autoscaler.
func New(store Store, pub Publisher, cfg Config, log *slog.Logger, opts ...Option) *Autoscaler {
	a := &Autoscaler{store: store, pub: pub, cfg: cfg, log: log, now: time.Now, memos: map[string]*memo{}}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Tick decides for every autoscaled service and announces the changes.
func (a *Autoscaler) Tick(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	services, err := a.store.Services(ctx)
	if err != nil {
		return err
	}
	loads, err := a.store.Loads(ctx)
	if err != nil {
		return err
	}
	now := a.now()
	obs := map[string]Observation{}
	last := map[string]time.Time{}
	for _, l := range loads {
		if l.LastRequestAt.After(last[l.ServiceID]) {
			last[l.ServiceID] = l.LastRequestAt
		}
		if now.Sub(l.ReportedAt) > a.cfg.Stale {
			continue
		}
		o := obs[l.ServiceID]
		o.InFlight += max(l.InFlight, 0)
		o.Waiting += max(l.Waiting, 0)
		obs[l.ServiceID] = o
	}
	seen := map[string]bool{}
	var firstErr error
	for _, svc := range services {
		if svc.Autoscale == nil || svc.Status == state.StatusDeleting || svc.Status == state.StatusDeleted || svc.Status == state.StatusFailed {
			continue
		}
		seen[svc.ID] = true
		m, ok := a.memos[svc.ID]
		if !ok {
			m = &memo{lastActive: now, sentFrom: -1}
			a.memos[svc.ID] = m
		}
		o := obs[svc.ID]
		if last[svc.ID].After(m.lastActive) {
			m.lastActive = last[svc.ID]
		}
		if o.InFlight > 0 {
			m.lastActive = now
		}
		// A scale-down waits until fewer instances have sufficed for
		// DownDelay: track since when they have.
		idleFor := now.Sub(m.lastActive)
		if fewer, _ := Decide(*svc.Autoscale, svc.Instances, o, idleFor, a.cfg.DownDelay, a.cfg.DownDelay); fewer > 0 && fewer < svc.Instances {
			if m.belowSince.IsZero() {
				m.belowSince = now
			}
		} else {
			m.belowSince = time.Time{}
		}
		belowFor := time.Duration(0)
		if !m.belowSince.IsZero() {
			belowFor = now.Sub(m.belowSince)
		}
		to, reason := Decide(*svc.Autoscale, svc.Instances, o, idleFor, belowFor, a.cfg.DownDelay)
		if to == svc.Instances {
			continue
		}
		if m.sentFrom == svc.Instances && m.sentTo == to && now.Sub(m.sentAt) < a.cfg.Resend {
			continue // announced; the deployer has not applied it yet
		}
		ev := events.ServiceAutoscaledV1{
			Meta: events.NewMeta(), ServiceID: svc.ID, OwnerID: svc.OwnerID, From: svc.Instances, To: to,
			Reason: reason, InFlight: o.InFlight, TargetInFlight: max(svc.Autoscale.TargetInFlight, 1),
		}
		if err := a.pub.Publish(ctx, ev); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("announce autoscaling of %s: %w", svc.ID, err)
			}
			continue
		}
		m.sentFrom, m.sentTo, m.sentAt = svc.Instances, to, now
		m.belowSince = time.Time{}
		a.log.InfoContext(ctx, "autoscaling", "service_id", svc.ID, "from", svc.Instances, "to", to, "reason", reason)
	}
	for id := range a.memos {
		if !seen[id] {
			delete(a.memos, id)
		}
	}
	return firstErr
}
