package clickhouse

import (
	"context"
	"fmt"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// lookupChunk bounds the event IDs in one lookup query, well inside
// ClickHouse's default max_query_size.
const lookupChunk = 1000

// InsertUsage implements billing.UsageWriter: one INSERT for the events of
// the batch that are not stored yet. Duplicates inside the batch and events
// already in usage_events (a redelivery after the insert succeeded but the
// acks did not reach JetStream, a duplicate publish outside JetStream's
// duplicate window) are left out, so the materialized hourly rollup sees
// each event once. The lookup and the insert are not one atomic step: two
// writers inserting the same event at the same moment would both store
// it. The raw table and every query on it still count each event ID once;
// only the rollup would count it twice.
func (s *Store) InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	fresh, err := s.unstoredUsage(ctx, batch)
	if err != nil {
		return err
	}
	if len(fresh) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+`.usage_events (event_id, request_id, service_id, owner_id,
	access_name, base_model, api_key_id, instance_id, endpoint, status, prompt_tokens, completion_tokens, total_tokens,
	cached_tokens, started_at, finished_at, occurred_at)`)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare usage batch")
	}
	for _, e := range fresh {
		if err := b.Append(e.ID, e.RequestID, e.ServiceID, e.OwnerID, e.AccessName, e.BaseModel, e.APIKeyID,
			e.InstanceID, e.Endpoint, uint16(e.Status), uint32(e.PromptTokens), uint32(e.CompletionTokens),
			uint32(e.TotalTokens), uint32(e.CachedTokens), e.StartedAt, e.FinishedAt, e.OccurredAt); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append usage event %s: %w", e.ID, err)
		}
	}
	if err := send(ctx, b, "usage_events", len(fresh)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d usage events", len(fresh))
	}
	return nil
}

// unstoredUsage returns the events of batch, each ID once, whose IDs are
// not in usage_events yet. The lookup is narrowed by the sorting key
// (service, time) so it reads few granules.
func (s *Store) unstoredUsage(ctx context.Context, batch []events.RequestCompletedV1) ([]events.RequestCompletedV1, error) {
	seen := make(map[string]bool, len(batch))
	unique := make([]events.RequestCompletedV1, 0, len(batch))
	for _, e := range batch {
		if !seen[e.ID] {
			seen[e.ID] = true
			unique = append(unique, e)
		}
	}
	stored := map[string]bool{}
	for start := 0; start < len(unique); start += lookupChunk {
		chunk := unique[start:min(start+lookupChunk, len(unique))]
		var ids, services []any
		svcSeen := map[string]bool{}
		lo, hi := chunk[0].OccurredAt.Unix(), chunk[0].OccurredAt.Unix()
		for _, e := range chunk {
			ids = append(ids, e.ID)
			if !svcSeen[e.ServiceID] {
				svcSeen[e.ServiceID] = true
				services = append(services, e.ServiceID)
			}
			lo, hi = min(lo, e.OccurredAt.Unix()), max(hi, e.OccurredAt.Unix())
		}
		rows, err := s.conn.Query(ctx, "SELECT DISTINCT event_id FROM "+s.db+`.usage_events
	WHERE service_id IN ? AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?) AND event_id IN ?`,
			ch.GroupSet{Value: services}, lo, hi, ch.GroupSet{Value: ids})
		if err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "look up stored usage events")
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, errs.Wrap(errs.Unavailable, err, "look up stored usage events")
			}
			stored[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "look up stored usage events")
		}
	}
	if len(stored) == 0 {
		return unique, nil
	}
	fresh := unique[:0]
	for _, e := range unique {
		if !stored[e.ID] {
			fresh = append(fresh, e)
		}
	}
	return fresh, nil
}

// UsageLines implements billing.Reader from the raw events, each event ID
// once, so it is exact whatever has been merged.
func (s *Store) UsageLines(ctx context.Context, serviceID string, from, to time.Time) ([]billing.Line, error) {
	rows, err := s.conn.Query(ctx, `SELECT toStartOfHour(at, 'UTC') AS h, k, m, count(), sum(p), sum(c)
FROM (
	SELECT event_id, any(occurred_at) AS at, any(api_key_id) AS k, any(base_model) AS m,
		any(prompt_tokens) AS p, any(completion_tokens) AS c
	FROM `+s.db+`.usage_events
	WHERE service_id = ? AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
	GROUP BY event_id
)
GROUP BY h, k, m
ORDER BY h, k, m`, serviceID, from.Unix(), to.Unix())
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "usage of %s", serviceID)
	}
	defer rows.Close()
	var out []billing.Line
	for rows.Next() {
		var l billing.Line
		if err := rows.Scan(&l.Hour, &l.APIKeyID, &l.BaseModel, &l.Requests, &l.PromptTokens, &l.CompletionTokens); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "usage of %s", serviceID)
		}
		l.Hour = l.Hour.UTC()
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "usage of %s", serviceID)
	}
	return out, nil
}
