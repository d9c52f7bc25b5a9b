package deploy

import (
	"context"
	"errors"
	"fmt"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// Reconcile is the deployer's sweep, run periodically by the leading
// replica: whatever events were lost or handled out of order, it brings
// every service back in step with the records. It
//   - publishes what each service's outbox still holds;
//   - recounts every service that is not deleted (deleting ones
//     included) from its instance and placement records, where they
//     disagree with its record, and so finishes deletions;
//   - removes the records of services deleted longer ago than the
//     retention (their usage stays in ClickHouse).
//
// It reads the services, instances and placements buckets once each, and
// then only the services it changes. It goes on past a service it cannot
// change, and returns the errors it met.
func (m *Manager) Reconcile(ctx context.Context) error {
	services, err := m.store.List(ctx)
	if err != nil {
		return err
	}
	insts, err := m.store.AllInstances(ctx)
	if err != nil {
		return err
	}
	ps, err := m.store.AllPlacements(ctx)
	if err != nil {
		return err
	}
	instsOf := map[string][]state.Instance{}
	for _, in := range insts {
		instsOf[in.ServiceID] = append(instsOf[in.ServiceID], in)
	}
	placedOf := map[string][]state.Placement{}
	for _, p := range ps {
		placedOf[p.ServiceID] = append(placedOf[p.ServiceID], p)
	}
	now := m.now()
	var seen []error
	note := func(err error) {
		if err != nil {
			seen = append(seen, err)
		}
	}
	for _, s := range services {
		if ctx.Err() != nil {
			break
		}
		if len(s.Outbox) > 0 {
			note(m.announce(ctx, s.ID))
		}
		if s.Status == state.StatusDeleted {
			if m.retention > 0 && now.Sub(s.UpdatedAt) > m.retention {
				note(m.remove(ctx, s.ID))
			}
			continue
		}
		if recount(s, instsOf[s.ID], placedOf[s.ID]).changes(s) {
			note(m.RefreshReady(ctx, s.ID))
		}
	}
	return errors.Join(seen...)
}

// remove deletes a deleted service's record once it is older than the
// retention, if it has not changed meanwhile.
func (m *Manager) remove(ctx context.Context, id string) error {
	s, rev, err := m.store.Get(ctx, id)
	if errs.KindOf(err) == errs.NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if s.Status != state.StatusDeleted || m.now().Sub(s.UpdatedAt) <= m.retention {
		return nil
	}
	if err := m.store.ReleaseName(ctx, s); err != nil {
		return err
	}
	if err := m.store.Remove(ctx, s, rev); err != nil && errs.KindOf(err) != errs.Conflict {
		return fmt.Errorf("remove deleted service %s: %w", id, err)
	}
	return nil
}
