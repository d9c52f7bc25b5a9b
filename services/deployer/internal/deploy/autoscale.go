package deploy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Autoscale policy bounds.
const (
	MaxTargetInFlight = 1000
	// DefaultScaleToZeroAfter is the idle time, in seconds, before a
	// service with min_instances 0 is scaled to zero, when not given.
	DefaultScaleToZeroAfter = 300
	maxScaleToZeroAfter     = 7 * 24 * 3600
)

// ValidateAutoscale checks a policy and fills its defaults: a target of
// one request in flight per instance, and DefaultScaleToZeroAfter for a
// policy that may scale to zero.
func ValidateAutoscale(p *state.Autoscale) error {
	if p.MinInstances < 0 || p.MinInstances > MaxInstances {
		return errs.InvalidParam("autoscale.min_instances", "min_instances must be between 0 and %d", MaxInstances)
	}
	if p.MaxInstances < max(p.MinInstances, 1) || p.MaxInstances > MaxInstances {
		return errs.InvalidParam("autoscale.max_instances", "max_instances must be between max(min_instances, 1) and %d", MaxInstances)
	}
	if p.TargetInFlight == 0 {
		p.TargetInFlight = 1
	}
	if p.TargetInFlight < 1 || p.TargetInFlight > MaxTargetInFlight {
		return errs.InvalidParam("autoscale.target_in_flight", "target_in_flight must be between 1 and %d", MaxTargetInFlight)
	}
	if p.ScaleToZeroAfter < 0 || p.ScaleToZeroAfter > maxScaleToZeroAfter {
		return errs.InvalidParam("autoscale.scale_to_zero_after_seconds", "scale_to_zero_after_seconds must be between 0 (the default, %d) and %d", DefaultScaleToZeroAfter, maxScaleToZeroAfter)
	}
	if p.MinInstances > 0 {
		p.ScaleToZeroAfter = 0 // never scales to zero
	} else if p.ScaleToZeroAfter == 0 {
		p.ScaleToZeroAfter = DefaultScaleToZeroAfter
	}
	return nil
}

// SetAutoscale sets (p not nil) or removes (p nil) a service's autoscaling
// policy. Setting one moves the desired count into its bounds at once;
// removing one keeps the current count, fixed from then on.
func (m *Manager) SetAutoscale(ctx context.Context, caller auth.Key, id string, p *state.Autoscale) (state.Service, error) {
	if p != nil {
		if err := ValidateAutoscale(p); err != nil {
			return state.Service{}, err
		}
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pause(ctx, attempt)
		s, rev, err := m.owned(ctx, caller, id)
		if err != nil {
			return state.Service{}, err
		}
		if s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			return state.Service{}, errs.E(errs.Conflict, "service %s is %s and cannot be changed", id, s.Status)
		}
		from := s.Instances
		to := from
		if p != nil {
			to = min(max(from, p.MinInstances), p.MaxInstances)
		}
		retry := s.Status == state.StatusFailed && p != nil
		s.Autoscale, s.UpdatedAt = p, m.now()
		if to != from || retry {
			// Setting a policy on a failed service also retries it.
			s.Instances, s.Status = to, scaledStatus(to, s.ReadyInstances)
			reason := fmt.Sprintf("autoscale policy allows %d to %d instances", p.MinInstances, p.MaxInstances)
			ev := events.ServiceScaledV1{Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: s.OwnerID, From: from, To: to, Reason: reason}
			if err := stage(&s, ev); err != nil {
				return state.Service{}, err
			}
		}
		if retry {
			s.StatusReason = ""
			s.Attempt++
		}
		err = m.store.Update(ctx, s, rev)
		if errs.KindOf(err) == errs.Conflict {
			continue
		}
		if err != nil {
			return state.Service{}, err
		}
		return m.announced(ctx, s)
	}
	return state.Service{}, errs.E(errs.Unavailable, "service %s is changing too often; retry", id)
}

// ApplyAutoscale stores an autoscaling decision and announces it as
// ServiceScaledV1, if it still holds: the service exists, is autoscaled,
// is not being deleted, and still has the count the decision was made
// from. A decision that no longer holds is dropped; the autoscaler decides
// again from the current state. Either way what the service's outbox
// holds is announced, so a decision stored by an earlier delivery whose
// announcement failed is announced by its redelivery.
func (m *Manager) ApplyAutoscale(ctx context.Context, ev events.ServiceAutoscaledV1, log *slog.Logger) error {
	err := m.amend(ctx, ev.ServiceID, func(s *state.Service) bool {
		p := s.Autoscale
		switch {
		case p == nil, s.Status == state.StatusDeleting, s.Status == state.StatusDeleted, s.Status == state.StatusFailed:
			log.InfoContext(ctx, "autoscaling decision dropped: service not autoscaled now", "service_id", s.ID, "status", s.Status)
			return false
		case s.Instances != ev.From:
			log.InfoContext(ctx, "autoscaling decision dropped: made from another count", "service_id", s.ID, "from", ev.From, "now", s.Instances)
			return false
		}
		to := min(max(ev.To, p.MinInstances), p.MaxInstances, MaxInstances)
		if to == s.Instances {
			return false
		}
		scaled := events.ServiceScaledV1{Meta: events.NewMeta(), ServiceID: ev.ServiceID, OwnerID: s.OwnerID, From: ev.From, To: to, Reason: "autoscaler: " + ev.Reason}
		if err := stage(s, scaled); err != nil {
			return false
		}
		s.Instances, s.Status = to, scaledStatus(to, s.ReadyInstances)
		return true
	})
	if err != nil {
		return err
	}
	return m.announce(ctx, ev.ServiceID)
}

// scaledStatus is the status of a service whose desired count became n
// while ready instances are ready.
func scaledStatus(n, ready int) string {
	switch {
	case n == 0 && ready == 0:
		return state.StatusIdle
	case n == ready:
		return state.StatusRunning
	}
	return state.StatusScaling
}
