package deploy

import (
	"context"
	"fmt"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// PendingReason is the reason a new service gives until it is placed.
const PendingReason = "waiting for the scaler to place its instances"

// Placed moves a pending service to deploying once the scaler placed one
// of its instances. A reason placements failed stays until the service
// runs: it may still hold for the other instances.
func (m *Manager) Placed(ctx context.Context, serviceID string) error {
	return m.amend(ctx, serviceID, func(s *state.Service) bool {
		if s.Status != state.StatusPending {
			return false
		}
		s.Status = state.StatusDeploying
		if s.StatusReason == PendingReason {
			s.StatusReason = ""
		}
		return true
	})
}

// PlacementFailed shows why the scaler cannot place a service's
// instances; the scaler keeps trying, so the status stays. A service that
// runs with all its instances meanwhile (the event is late) keeps no
// reason.
func (m *Manager) PlacementFailed(ctx context.Context, ev events.PlacementFailedV1) error {
	return m.amend(ctx, ev.ServiceID, func(s *state.Service) bool {
		if isFinal(s.Status) || s.Status == state.StatusFailed || s.Status == state.StatusRunning || s.ReadyInstances >= s.Instances {
			return false
		}
		reason := fmt.Sprintf("%d of %d instances placed: %s", ev.Placed, ev.Wanted, ev.Reason)
		if s.StatusReason == reason {
			return false
		}
		s.StatusReason = reason
		return true
	})
}

// InstanceFailed records that a worker gave up on one of a service's
// instances. A service left with no ready instance fails, with the
// worker's reason, and the scaler stops placing it until its owner scales
// it again; one that still serves keeps its status and says what happened
// while the scaler replaces the instance. A deleting service is
// recounted: this may have been its last instance.
func (m *Manager) InstanceFailed(ctx context.Context, ev events.InstanceFailedV1) error {
	if s, _, err := m.store.Get(ctx, ev.ServiceID); err == nil && isFinal(s.Status) {
		return m.RefreshReady(ctx, ev.ServiceID)
	}
	insts, err := m.store.Instances(ctx, ev.ServiceID)
	if err != nil {
		return err
	}
	ready := 0
	for _, in := range insts {
		if in.Status == state.InstanceReady && in.ID != ev.InstanceID {
			ready++
		}
	}
	why := fmt.Sprintf("instance %s on worker %s failed: %s", ev.InstanceID, ev.WorkerID, ev.Reason)
	return m.amend(ctx, ev.ServiceID, func(s *state.Service) bool {
		if isFinal(s.Status) || s.Status == state.StatusIdle || s.Instances == 0 {
			return false
		}
		if ready == 0 {
			s.Status, s.ReadyInstances = state.StatusFailed, 0
		}
		s.StatusReason = why
		return true
	})
}

// isFinal reports whether a status no event may change any more.
func isFinal(status string) bool {
	return status == state.StatusDeleting || status == state.StatusDeleted
}

// amend applies change to a service and stores it, with a new UpdatedAt,
// if change reports a change, retrying on revision conflicts. A missing
// service is no error.
func (m *Manager) amend(ctx context.Context, serviceID string, change func(*state.Service) bool) error {
	return m.update(ctx, serviceID, true, change)
}

// update is amend, which sets UpdatedAt only when touch is set.
func (m *Manager) update(ctx context.Context, serviceID string, touch bool, change func(*state.Service) bool) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pause(ctx, attempt)
		s, rev, err := m.store.Get(ctx, serviceID)
		if errs.KindOf(err) == errs.NotFound {
			return nil
		}
		if err != nil {
			return err
		}
		if !change(&s) {
			return nil
		}
		if touch {
			s.UpdatedAt = m.now()
		}
		err = m.store.Update(ctx, s, rev)
		if errs.KindOf(err) == errs.Conflict {
			continue
		}
		return err
	}
	return errs.E(errs.Unavailable, "service %s is changing too often", serviceID)
}
