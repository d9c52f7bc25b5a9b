package clickhouse

import (
	"context"
	"fmt"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
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

// Lifecycle implements billing.Reader: what one service's instance time
// in [from, to) depends on, each event ID once.
func (s *Store) Lifecycle(ctx context.Context, serviceID string, from, to time.Time) (billing.Lifecycle, error) {
	lcs, err := s.lifecycles(ch.Context(ctx, ch.WithSettings(apiLimits)), serviceID, from, to)
	if err != nil {
		return billing.Lifecycle{}, err
	}
	return lcs[serviceID], nil
}

// Lifecycles implements billing.PeriodStore.
func (s *Store) Lifecycles(ctx context.Context, from, to time.Time) (map[string]billing.Lifecycle, error) {
	return s.lifecycles(ch.Context(ctx, ch.WithSettings(bulkLimits)), "", from, to)
}

// lifecycles reads the lifecycles of one service, or of every service
// when serviceID is empty. Events before from are not returned: for each
// instance they leave running (or gone) at from, a ready (or gone) event
// at from with an empty event ID stands for them, which sorts before any
// real event at that second.
func (s *Store) lifecycles(ctx context.Context, serviceID string, from, to time.Time) (map[string]billing.Lifecycle, error) {
	filter := ""
	var args []any
	if serviceID != "" {
		filter = "service_id = ? AND "
		args = append(args, serviceID)
	}
	out := map[string]billing.Lifecycle{}
	add := func(e billing.InstanceEvent) {
		lc := out[e.ServiceID]
		lc.Instances = append(lc.Instances, e)
		out[e.ServiceID] = lc
	}
	rows, err := s.conn.Query(ctx, `SELECT service_id, instance_id, argMax(w, (at, event_id)), countIf(k = 'gone') > 0 AS gone
FROM (
	SELECT service_id, instance_id, event_id, any(kind) AS k, any(worker_id) AS w, any(occurred_at) AS at
	FROM `+s.db+`.instance_events
	WHERE `+filter+`occurred_at < toDateTime(?)
	GROUP BY service_id, instance_id, event_id
)
GROUP BY service_id, instance_id
HAVING gone OR argMax(k, (at, event_id)) = 'ready'
ORDER BY service_id, instance_id`, append(args, from.Unix())...)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "instance state at %s", from.Format(time.RFC3339))
	}
	for rows.Next() {
		e := billing.InstanceEvent{Kind: billing.InstanceReady, At: from.UTC()}
		var gone bool
		if err := rows.Scan(&e.ServiceID, &e.InstanceID, &e.WorkerID, &gone); err != nil {
			rows.Close()
			return nil, errs.Wrap(errs.Unavailable, err, "instance state")
		}
		if gone {
			e.Kind = billing.InstanceGone
		}
		add(e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "instance state")
	}
	rows, err = s.conn.Query(ctx, `SELECT service_id, event_id, any(kind), any(instance_id), any(worker_id), any(reason), any(occurred_at) AS at
FROM `+s.db+`.instance_events
WHERE `+filter+`occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
GROUP BY service_id, event_id
ORDER BY service_id, at, event_id`, append(args, from.Unix(), to.Unix())...)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "instance events")
	}
	for rows.Next() {
		var e billing.InstanceEvent
		var kind string
		if err := rows.Scan(&e.ServiceID, &e.EventID, &kind, &e.InstanceID, &e.WorkerID, &e.Reason, &e.At); err != nil {
			rows.Close()
			return nil, errs.Wrap(errs.Unavailable, err, "instance events")
		}
		e.Kind, e.At = billing.InstanceKind(kind), e.At.UTC()
		add(e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "instance events")
	}
	delArgs := []any{}
	delFilter := ""
	if serviceID != "" {
		delFilter, delArgs = "WHERE service_id = ? ", []any{serviceID}
	}
	rows, err = s.conn.Query(ctx, "SELECT service_id, min(deleted_at) FROM "+s.db+".service_deletions "+delFilter+"GROUP BY service_id", delArgs...)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "service deletions")
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var deleted time.Time
		if err := rows.Scan(&id, &deleted); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "service deletions")
		}
		if lc, ok := out[id]; ok || id == serviceID {
			lc.DeletedAt = deleted.UTC()
			out[id] = lc
		}
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "service deletions")
	}
	return out, nil
}

// OpenInstances implements billing.InstanceStore.
func (s *Store) OpenInstances(ctx context.Context) ([]billing.OpenInstance, error) {
	rows, err := s.conn.Query(ctx, `SELECT service_id, instance_id, worker, last_at, seen
FROM (
	SELECT service_id, instance_id, argMax(w, (at, event_id)) AS worker, max(at) AS last_at
	FROM (
		SELECT service_id, instance_id, event_id, any(kind) AS k, any(worker_id) AS w, any(occurred_at) AS at
		FROM `+s.db+`.instance_events
		GROUP BY service_id, instance_id, event_id
	)
	GROUP BY service_id, instance_id
	HAVING argMax(k, (at, event_id)) = 'ready' AND countIf(k = 'gone') = 0
)
ANY LEFT JOIN (
	SELECT service_id, instance_id, max(seen_at) AS seen FROM `+s.db+`.instance_sightings GROUP BY service_id, instance_id
) USING (service_id, instance_id)
ORDER BY service_id, instance_id`)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "open instances")
	}
	defer rows.Close()
	var out []billing.OpenInstance
	for rows.Next() {
		var o billing.OpenInstance
		if err := rows.Scan(&o.ServiceID, &o.InstanceID, &o.WorkerID, &o.LastEventAt, &o.LastSeenAt); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "open instances")
		}
		o.LastEventAt = o.LastEventAt.UTC()
		if o.LastSeenAt.Unix() <= 0 {
			o.LastSeenAt = time.Time{}
		} else {
			o.LastSeenAt = o.LastSeenAt.UTC()
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// RecordSightings implements billing.InstanceStore: one INSERT.
func (s *Store) RecordSightings(ctx context.Context, sightings []billing.Sighting) error {
	if len(sightings) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".instance_sightings (service_id, instance_id, worker_id, seen_at)")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare sightings")
	}
	for _, sg := range sightings {
		if err := b.Append(sg.ServiceID, sg.InstanceID, sg.WorkerID, sg.At.UTC().Truncate(time.Second)); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append sighting of %s: %w", sg.InstanceID, err)
		}
	}
	if err := send(ctx, b, "instance_sightings", len(sightings)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d sightings", len(sightings))
	}
	return nil
}

// BackfillServices stores a services row for each of svcs that has none:
// services created before billing first read DEPLOY (which keeps 90
// days), so that the SQL views know how they are billed. The row's
// event_id is "backfill:" and the service ID, so running it again adds
// nothing a merge would not remove. It returns how many it stored.
func (s *Store) BackfillServices(ctx context.Context, svcs []billing.ServiceEvent) (int, error) {
	known := map[string]bool{}
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT service_id FROM "+s.db+".services")
	if err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "read services")
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, errs.Wrap(errs.Unavailable, err, "read services")
		}
		known[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "read services")
	}
	var missing []billing.ServiceEvent
	for _, e := range svcs {
		if !known[e.ServiceID] && e.Kind == billing.ServiceCreated {
			e.EventID = "backfill:" + e.ServiceID
			missing = append(missing, e)
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	return len(missing), s.InsertServiceEvents(ctx, missing)
}
