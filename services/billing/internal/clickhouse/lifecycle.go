package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// InsertInstanceEvents implements billing.LifecycleWriter: one INSERT.
// Queries collapse repeated event IDs.
func (s *Store) InsertInstanceEvents(ctx context.Context, batch []billing.InstanceEvent) error {
	if len(batch) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".instance_events (event_id, kind, instance_id, service_id, worker_id, reason, occurred_at)")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare instance events")
	}
	for _, e := range batch {
		if err := b.Append(e.EventID, string(e.Kind), e.InstanceID, e.ServiceID, e.WorkerID, e.Reason, e.At); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append instance event %s: %w", e.EventID, err)
		}
	}
	if err := send(ctx, b, "instance_events", len(batch)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d instance events", len(batch))
	}
	return nil
}

// InsertServiceEvents implements billing.LifecycleWriter: creations into
// services, deletions into service_deletions, one INSERT each.
func (s *Store) InsertServiceEvents(ctx context.Context, batch []billing.ServiceEvent) error {
	var created, deleted []billing.ServiceEvent
	for _, e := range batch {
		if e.Kind == billing.ServiceDeleted {
			deleted = append(deleted, e)
		} else {
			created = append(created, e)
		}
	}
	if len(created) > 0 {
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".services (event_id, service_id, owner_id, name, access_name, base_model, task, billing_method, created_at)")
		if err != nil {
			return errs.Wrap(errs.Unavailable, err, "prepare services")
		}
		for _, e := range created {
			if err := b.Append(e.EventID, e.ServiceID, e.OwnerID, e.Name, e.AccessName, e.BaseModel, e.Task, e.BillingMethod, e.At); err != nil {
				_ = b.Abort()
				return fmt.Errorf("append service %s: %w", e.ServiceID, err)
			}
		}
		if err := send(ctx, b, "services", len(created)); err != nil {
			return errs.Wrap(errs.Unavailable, err, "insert %d services", len(created))
		}
	}
	if len(deleted) > 0 {
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".service_deletions (event_id, service_id, owner_id, deleted_at)")
		if err != nil {
			return errs.Wrap(errs.Unavailable, err, "prepare service deletions")
		}
		for _, e := range deleted {
			if err := b.Append(e.EventID, e.ServiceID, e.OwnerID, e.At); err != nil {
				_ = b.Abort()
				return fmt.Errorf("append deletion of %s: %w", e.ServiceID, err)
			}
		}
		if err := send(ctx, b, "service_deletions", len(deleted)); err != nil {
			return errs.Wrap(errs.Unavailable, err, "insert %d service deletions", len(deleted))
		}
	}
	return nil
}

// Lifecycle implements billing.Reader: the service's instance events
// before to, each event ID once, and its earliest recorded deletion.
func (s *Store) Lifecycle(ctx context.Context, serviceID string, to time.Time) (billing.Lifecycle, error) {
	var lc billing.Lifecycle
	rows, err := s.conn.Query(ctx, `SELECT event_id, any(kind), any(instance_id), any(worker_id), any(reason), any(occurred_at) AS at
FROM `+s.db+`.instance_events
WHERE service_id = ? AND occurred_at < toDateTime(?)
GROUP BY event_id
ORDER BY at, event_id`, serviceID, to.Unix())
	if err != nil {
		return lc, errs.Wrap(errs.Unavailable, err, "instance events of %s", serviceID)
	}
	defer rows.Close()
	for rows.Next() {
		e := billing.InstanceEvent{ServiceID: serviceID}
		var kind string
		if err := rows.Scan(&e.EventID, &kind, &e.InstanceID, &e.WorkerID, &e.Reason, &e.At); err != nil {
			return lc, errs.Wrap(errs.Unavailable, err, "instance events of %s", serviceID)
		}
		e.Kind, e.At = billing.InstanceKind(kind), e.At.UTC()
		lc.Instances = append(lc.Instances, e)
	}
	if err := rows.Err(); err != nil {
		return lc, errs.Wrap(errs.Unavailable, err, "instance events of %s", serviceID)
	}
	var n uint64
	var deleted time.Time
	if err := s.conn.QueryRow(ctx, "SELECT count(), min(deleted_at) FROM "+s.db+".service_deletions WHERE service_id = ?", serviceID).
		Scan(&n, &deleted); err != nil {
		return lc, errs.Wrap(errs.Unavailable, err, "deletion of %s", serviceID)
	}
	if n > 0 {
		lc.DeletedAt = deleted.UTC()
	}
	return lc, nil
}
