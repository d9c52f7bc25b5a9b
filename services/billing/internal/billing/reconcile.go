package billing

import (
	"context"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/events"
)

// InstanceStore is what ending lost instances needs. Implemented by
// internal/clickhouse.
type InstanceStore interface {
	// OpenInstances returns every instance whose time is still running:
	// its latest event is a ready, and it was never gone.
	OpenInstances(ctx context.Context) ([]OpenInstance, error)
	// RecordSightings stores when instances were last seen running, so
	// that the evidence outlives this process.
	RecordSightings(ctx context.Context, s []Sighting) error
}

// OpenInstance is an instance billed as running.
type OpenInstance struct {
	ServiceID  string
	InstanceID string
	WorkerID   string
	// LastEventAt is the time of its latest event (the ready that
	// started its time, or one announcing it again).
	LastEventAt time.Time
	// LastSeenAt is the latest stored sighting, zero when none.
	LastSeenAt time.Time
}

// evidence is the last time anything showed the instance running.
func (o OpenInstance) evidence() time.Time {
	if o.LastSeenAt.After(o.LastEventAt) {
		return o.LastSeenAt
	}
	return o.LastEventAt
}

// Sighting is a worker heartbeat listing an instance among those it runs.
type Sighting struct {
	ServiceID  string
	InstanceID string
	WorkerID   string
	At         time.Time
}

// SightingEvery is how often an instance's sighting is stored at most
// while it keeps being seen: the evidence a billing process that starts
// later has.
const SightingEvery = 5 * time.Minute

// ReconcileReport says what one reconciliation found and did.
type ReconcileReport struct {
	// Open counts instances billed as running before it.
	Open int
	// Ended are the lost events it stored.
	Ended []InstanceEvent
}

// Reconcile ends the time of instances that nothing has shown running for
// longer than lease: no event, and no worker heartbeat listing them
// (seen, by instance ID, from the workers' latest heartbeats). Such an
// instance ends at the last evidence it ran, with a lost event; its stop
// was lost (a failed publish) or never sent. Instances seen in a
// heartbeat get a stored sighting, at most every SightingEvery.
//
// Only one process should reconcile at a time, and only when the
// lifecycle consumers have stored every event: an instance whose stop is
// still on its way must not be ended early.
func (s *Service) Reconcile(ctx context.Context, seen map[string]Sighting, lease time.Duration) (ReconcileReport, error) {
	open, err := s.store.OpenInstances(ctx)
	if err != nil {
		return ReconcileReport{}, err
	}
	now := s.Now()
	r := ReconcileReport{Open: len(open)}
	var sightings []Sighting
	// The latest sighting of each open instance seen by this process,
	// finer than the stored ones.
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	lastSeen := make(map[string]time.Time, len(open))
	for _, o := range open {
		if t, ok := s.lastSeen[o.InstanceID]; ok && t.After(o.LastSeenAt) {
			o.LastSeenAt = t
		}
		if sg, ok := seen[o.InstanceID]; ok {
			if sg.At.After(o.LastSeenAt) {
				lastSeen[o.InstanceID] = sg.At
			} else {
				lastSeen[o.InstanceID] = o.LastSeenAt
			}
			if sg.At.Sub(o.LastSeenAt) >= SightingEvery && sg.At.After(o.LastEventAt) {
				sg.ServiceID = o.ServiceID
				sightings = append(sightings, sg)
			}
			continue
		}
		if !o.LastSeenAt.IsZero() {
			lastSeen[o.InstanceID] = o.LastSeenAt
		}
		last := o.evidence()
		if now.Sub(last) <= lease {
			continue
		}
		m := events.NewMeta()
		r.Ended = append(r.Ended, InstanceEvent{EventID: m.ID, Kind: InstanceLost, InstanceID: o.InstanceID, ServiceID: o.ServiceID,
			WorkerID: o.WorkerID, At: last,
			Reason: fmt.Sprintf("no event or heartbeat showed it running for %s: ended at the last evidence", lease)})
	}
	if len(sightings) > 0 {
		if err := s.store.RecordSightings(ctx, sightings); err != nil {
			return r, err
		}
	}
	if len(r.Ended) > 0 {
		if err := s.store.InsertInstanceEvents(ctx, r.Ended); err != nil {
			return r, err
		}
	}
	s.lastSeen = lastSeen
	return r, nil
}

// OpenIntervals counts the instances billed as running, and of them the
// ones with no evidence for more than a day: what the alert on open
// intervals watches.
func (s *Service) OpenIntervals(ctx context.Context) (open, staleOverDay int, err error) {
	instances, err := s.store.OpenInstances(ctx)
	if err != nil {
		return 0, 0, err
	}
	now := s.Now()
	for _, o := range instances {
		if now.Sub(o.evidence()) > 24*time.Hour {
			staleOverDay++
		}
	}
	return len(instances), staleOverDay, nil
}
