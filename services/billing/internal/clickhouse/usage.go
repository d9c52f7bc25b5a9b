package clickhouse

import (
	"context"
	"fmt"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
)

// lookupChunk bounds the event IDs in one lookup query, well inside
// ClickHouse's default max_query_size.
const lookupChunk = 1000

// InsertUsage implements billing.UsageWriter: one INSERT for the events of
// the batch this Store has not stored lately, then, when the batch holds
// usage of hours already over, one small INSERT noting them for FillRollup
// to fill again. It looks nothing up in ClickHouse: an event delivered
// for the first time is normally new, and a lookup costs a query over the
// service's recent rows before each insert (see InsertRedeliveredUsage
// for events that may be stored already). Duplicates inside the batch, events this Store
// stored among the last recentCapacity, and events another of its
// inserts is storing at the same moment are left out; anything else that
// reaches usage_events twice (a duplicate publish outside JetStream's
// duplicate window, two writers at once, a retry after an insert the
// client saw fail but the server kept) is still counted once by the
// raw table, every query on it and the rollup, which is filled from the
// collapsed raw events. Hours that had ended when the insert succeeded
// are noted after it, so a noted hour's usage is already visible; they
// are noted even when every event was stored already, since the attempt
// that stored them may have failed before noting them. The hour in
// progress needs no note: it is filled first after it ends (and the
// rollup's grace, which also covers clocks that differ by less), when
// this insert is long visible. So a batch of current usage, the usual
// case, costs one round trip. It is safe for concurrent use.
func (s *Store) InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	if len(batch) == 0 {
		return nil
	}
	fresh := s.recent.claim(batch)
	if len(fresh) > 0 {
		if err := s.insertUsage(ctx, fresh); err != nil {
			s.recent.release(fresh)
			return err
		}
		s.recent.stored(fresh)
	}
	return s.markHours(ctx, batch, time.Now().UTC().Truncate(time.Hour))
}

// InsertRedeliveredUsage implements billing.UsageWriter for events
// delivered before, which an earlier attempt may have stored (billing
// stopped between the insert and the acks, or the insert's answer was
// lost): it looks up which of their IDs usage_events holds already and
// stores the others as InsertUsage does.
func (s *Store) InsertRedeliveredUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	if len(batch) == 0 {
		return nil
	}
	claimed := s.recent.claim(batch)
	fresh, err := s.unstoredUsage(ctx, claimed)
	if err != nil {
		s.recent.release(claimed)
		return err
	}
	if len(fresh) > 0 {
		if err := s.insertUsage(ctx, fresh); err != nil {
			s.recent.release(claimed)
			return err
		}
	}
	s.recent.stored(claimed) // inserted now or found stored
	return s.markHours(ctx, batch, time.Now().UTC().Truncate(time.Hour))
}

// insertUsage stores events in usage_events with one INSERT, appended
// column by column (a row at a time boxes each of its 17 values).
func (s *Store) insertUsage(ctx context.Context, fresh []events.RequestCompletedV1) error {
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+`.usage_events (event_id, request_id, service_id, owner_id,
	access_name, base_model, api_key_id, instance_id, endpoint, status, prompt_tokens, completion_tokens, total_tokens,
	cached_tokens, started_at, finished_at, occurred_at)`)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare usage batch")
	}
	n := len(fresh)
	strs := func(f func(e *events.RequestCompletedV1) string) []string {
		out := make([]string, n)
		for i := range fresh {
			out[i] = f(&fresh[i])
		}
		return out
	}
	u32 := func(f func(e *events.RequestCompletedV1) int) []uint32 {
		out := make([]uint32, n)
		for i := range fresh {
			out[i] = uint32(f(&fresh[i]))
		}
		return out
	}
	times := func(f func(e *events.RequestCompletedV1) time.Time) []time.Time {
		out := make([]time.Time, n)
		for i := range fresh {
			out[i] = f(&fresh[i])
		}
		return out
	}
	status := make([]uint16, n)
	for i := range fresh {
		status[i] = uint16(fresh[i].Status)
	}
	columns := []any{
		strs(func(e *events.RequestCompletedV1) string { return e.ID }),
		strs(func(e *events.RequestCompletedV1) string { return e.RequestID }),
		strs(func(e *events.RequestCompletedV1) string { return e.ServiceID }),
		strs(func(e *events.RequestCompletedV1) string { return e.OwnerID }),
		strs(func(e *events.RequestCompletedV1) string { return e.AccessName }),
		strs(func(e *events.RequestCompletedV1) string { return e.BaseModel }),
		strs(func(e *events.RequestCompletedV1) string { return e.APIKeyID }),
		strs(func(e *events.RequestCompletedV1) string { return e.InstanceID }),
		strs(func(e *events.RequestCompletedV1) string { return e.Endpoint }),
		status,
		u32(func(e *events.RequestCompletedV1) int { return e.PromptTokens }),
		u32(func(e *events.RequestCompletedV1) int { return e.CompletionTokens }),
		u32(func(e *events.RequestCompletedV1) int { return e.TotalTokens }),
		u32(func(e *events.RequestCompletedV1) int { return e.CachedTokens }),
		times(func(e *events.RequestCompletedV1) time.Time { return e.StartedAt }),
		times(func(e *events.RequestCompletedV1) time.Time { return e.FinishedAt }),
		times(func(e *events.RequestCompletedV1) time.Time { return e.OccurredAt }),
	}
	for i, col := range columns {
		if err := b.Column(i).Append(col); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append usage column %d: %w", i, err)
		}
	}
	if err := send(ctx, b, "usage_events", n); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d usage events", n)
	}
	return nil
}

// unstoredUsage returns the events of batch (each ID once) whose IDs are
// not in usage_events yet. The lookup is narrowed by the sorting key
// (service, time) so it reads few granules.
func (s *Store) unstoredUsage(ctx context.Context, batch []events.RequestCompletedV1) ([]events.RequestCompletedV1, error) {
	unique := batch
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
	fresh := make([]events.RequestCompletedV1, 0, len(unique)-len(stored))
	for _, e := range unique {
		if !stored[e.ID] {
			fresh = append(fresh, e)
		}
	}
	return fresh, nil
}
