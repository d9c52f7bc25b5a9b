package deploy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// ScaleReason is the reason ServiceScaledV1 gives for an owner's request.
const ScaleReason = "requested by the owner"

// maxAttempts bounds the read-modify-write retries on a revision conflict.
const maxAttempts = 30

// pause waits before a retry after a revision conflict: a random time of up
// to two milliseconds per attempt so far, so that writers contending for
// one service (replicas, requests, event handlers) spread out.
func pause(ctx context.Context, attempt int) {
	if attempt == 0 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(rand.N(time.Duration(attempt) * 2 * time.Millisecond)):
	}
}

// Scale sets a service's desired instance count to n (0 to MaxInstances;
// 0 scales to zero) and publishes ServiceScaledV1 when it changed, or when
// the service had failed (scaling a failed service retries it). The
// status becomes scaling while the ready count differs from n, running
// when it already matches, and idle for zero with nothing left. Another
// owner's service is NotFound; a deleting or deleted one is Conflict. If
// the publish fails the new count is stored all the same and the error
// says so; a retried request publishes it then, as the sweep does.
func (m *Manager) Scale(ctx context.Context, caller auth.Key, id string, n int) (state.Service, error) {
	if n < 0 || n > MaxInstances {
		return state.Service{}, errs.InvalidParam("instances", "instances must be between 0 and %d", MaxInstances)
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pause(ctx, attempt)
		s, rev, err := m.owned(ctx, caller, id)
		if err != nil {
			return state.Service{}, err
		}
		if s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			return state.Service{}, errs.E(errs.Conflict, "service %s is %s and cannot be scaled", id, s.Status)
		}
		if p := s.Autoscale; p != nil {
			return state.Service{}, &errs.Error{Kind: errs.Conflict, Param: "instances", Msg: fmt.Sprintf(
				"service %s is autoscaled between %d and %d instances; change or remove its autoscale policy instead",
				id, p.MinInstances, p.MaxInstances)}
		}
		from := s.Instances
		retry := s.Status == state.StatusFailed
		if from == n && !retry {
			// Stored already, by this request's first try perhaps:
			// announce what is still unannounced.
			return m.announced(ctx, s)
		}
		// A failed service scaled again, even to the same count, is
		// placed again: that is how its owner retries it.
		s.Instances, s.Status, s.UpdatedAt = n, scaledStatus(n, s.ReadyInstances), m.now()
		if retry {
			s.StatusReason = ""
			s.Attempt++
		}
		ev := events.ServiceScaledV1{Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: s.OwnerID, From: from, To: n, Reason: ScaleReason}
		if err := stage(&s, ev); err != nil {
			return state.Service{}, err
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

// announced publishes what s's outbox holds and returns s as the API
// shows it; a failed publish is the error, the change being stored.
func (m *Manager) announced(ctx context.Context, s state.Service) (state.Service, error) {
	if len(s.Outbox) == 0 {
		return public(s), nil
	}
	if err := m.announce(ctx, s.ID); err != nil {
		return public(s), fmt.Errorf("service %s changed, announce it: %w", s.ID, err)
	}
	return public(s), nil
}

// Delete starts deleting a service whose name the caller confirms: it
// stores status deleting and publishes ServiceDeletedV1, after which the
// router answers 404 for it and the scaler releases its instances. The
// deletion finishes once no instance record and no placement remains:
// RefreshReady, run here, on every instance event and by the sweep, sees
// to it. A wrong or missing confirmation is Invalid (param confirm_name)
// and changes nothing. Deleting a service that is already deleting or
// deleted returns it, after announcing the deletion if that is still
// pending and recounting.
func (m *Manager) Delete(ctx context.Context, caller auth.Key, id, confirmName string) (state.Service, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pause(ctx, attempt)
		s, rev, err := m.owned(ctx, caller, id)
		if err != nil {
			return state.Service{}, err
		}
		if confirmName != s.Name {
			return state.Service{}, errs.InvalidParam("confirm_name", "confirm_name must be the service's name, %q", s.Name)
		}
		if s.Status != state.StatusDeleting && s.Status != state.StatusDeleted {
			s.Status, s.UpdatedAt = state.StatusDeleting, m.now()
			ev := events.ServiceDeletedV1{Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: s.OwnerID, Name: s.Name, AccessName: s.AccessName}
			if err := stage(&s, ev); err != nil {
				return state.Service{}, err
			}
			err = m.store.Update(ctx, s, rev)
			if errs.KindOf(err) == errs.Conflict {
				continue
			}
			if err != nil {
				return state.Service{}, err
			}
		}
		if _, err := m.announced(ctx, s); err != nil {
			return public(s), err
		}
		// No instance event may ever come for a service without
		// instances, so look now; if this fails, the sweep finishes it.
		if err := m.RefreshReady(ctx, s.ID); err == nil {
			if done, _, err := m.store.Get(ctx, s.ID); err == nil {
				s = done
			}
		}
		return public(s), nil
	}
	return state.Service{}, errs.E(errs.Unavailable, "service %s is changing too often; retry", id)
}

// owned returns a service the caller may change, with its revision.
// Another owner's service is NotFound, as in Get; a restricted key may
// change none (Forbidden).
func (m *Manager) owned(ctx context.Context, caller auth.Key, id string) (state.Service, uint64, error) {
	s, rev, err := m.store.Get(ctx, id)
	if err != nil {
		return state.Service{}, 0, err
	}
	if !caller.Reaches(s.OwnerID, s.ID) {
		return state.Service{}, 0, errs.E(errs.NotFound, "service %s not found", id)
	}
	if err := changes(caller); err != nil {
		return state.Service{}, 0, err
	}
	return s, rev, nil
}

// Page bounds.
const (
	DefaultLimit = 100
	MaxLimit     = 500
)

// ListOptions filter and page a listing. Zero values mean no filter, the
// default limit, and the first page.
type ListOptions struct {
	Status string // only services with this status; deleted ones only when asked for
	Task   string // only services of this task
	Limit  int    // at most this many, 1 to MaxLimit
	After  string // the ID of the last service of the previous page
}

var statuses = []string{
	state.StatusPending, state.StatusDeploying, state.StatusRunning, state.StatusScaling, state.StatusIdle,
	state.StatusFailed, state.StatusDeleting, state.StatusDeleted,
}

var tasks = []string{state.TaskTextGeneration, state.TaskImageUnderstanding, state.TaskImageGeneration, state.TaskEmbedding}

// List returns a page of the services the caller may see, oldest first,
// and whether more follow. Deleted services are left out unless
// opts.Status asks for them. The cursor is a service ID, so a page stays
// put while services are created after it.
func (m *Manager) List(ctx context.Context, caller auth.Key, opts ListOptions) (page []state.Service, more bool, err error) {
	if opts.Status != "" && !slices.Contains(statuses, opts.Status) {
		return nil, false, errs.InvalidParam("status", "status must be one of %v", statuses)
	}
	if opts.Task != "" && !slices.Contains(tasks, opts.Task) {
		return nil, false, errs.InvalidParam("task", "task must be one of %v", tasks)
	}
	if opts.Limit == 0 {
		opts.Limit = DefaultLimit
	}
	if opts.Limit < 1 || opts.Limit > MaxLimit {
		return nil, false, errs.InvalidParam("limit", "limit must be between 1 and %d", MaxLimit)
	}
	all, err := m.store.List(ctx)
	if err != nil {
		return nil, false, err
	}
	visible := all[:0:0]
	for _, s := range all {
		if caller.Reaches(s.OwnerID, s.ID) {
			visible = append(visible, s)
		}
	}
	if opts.After != "" {
		// The cursor is looked up among all the caller's services, so it
		// still works when its service changed status or was deleted.
		i := slices.IndexFunc(visible, func(s state.Service) bool { return s.ID == opts.After })
		if i < 0 {
			return nil, false, errs.InvalidParam("after", "after: no service %q", opts.After)
		}
		visible = visible[i+1:]
	}
	page = []state.Service{}
	for _, s := range visible {
		switch {
		case opts.Status == "" && s.Status == state.StatusDeleted:
		case opts.Status != "" && s.Status != opts.Status:
		case opts.Task != "" && s.Task != opts.Task:
		default:
			if len(page) == opts.Limit {
				return page, true, nil
			}
			page = append(page, public(s))
		}
	}
	return page, false, nil
}
