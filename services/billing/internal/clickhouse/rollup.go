package clickhouse

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
)

// markHours notes the UTC hours before current that a stored batch of
// usage touched, for FillRollup: one small INSERT, none when there are
// no such hours.
func (s *Store) markHours(ctx context.Context, batch []events.RequestCompletedV1, current time.Time) error {
	seen := map[int64]bool{}
	var hours []time.Time
	for _, e := range batch {
		h := e.OccurredAt.UTC().Truncate(time.Hour)
		if !h.Before(current) || seen[h.Unix()] {
			continue
		}
		seen[h.Unix()] = true
		hours = append(hours, h)
	}
	if len(hours) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".usage_hours_touched (hour)")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare touched hours")
	}
	for _, h := range hours {
		if err := b.Append(h); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append touched hour: %w", err)
		}
	}
	if err := send(ctx, b, "usage_hours_touched", len(hours)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "note %d touched hours", len(hours))
	}
	return nil
}

// RollupState is how far the hourly rollup is filled.
type RollupState struct {
	// Version is the version of the latest rows written.
	Version uint64
	// FilledThrough is the end of the hours filled in order: every hour
	// before it has been filled at least once.
	FilledThrough time.Time
	// MarksThrough is the server time up to which touched hours have
	// been filled again.
	MarksThrough time.Time
}

// RollupReport says what one FillRollup did.
type RollupReport struct {
	State RollupState
	// Hours counts the hours filled, in order or again.
	Hours int
	// Refilled are the hours filled again because usage of them arrived
	// after they were first filled.
	Refilled []time.Time
	// CaughtUp is false when the time budget ran out first.
	CaughtUp bool
}

// MarkSettle is how old a touched-hour note should be before FillRollup
// takes it: notes are written after their batch is stored, so this only
// has to cover the note's own insert becoming visible.
const MarkSettle = time.Minute

// fillChunk is the most hours one fill statement covers.
const fillChunk = 24

// keepMarks is how long touched-hour notes are kept after they are
// taken, in days.
const keepMarks = 7

// FillRollup brings usage_hourly up to date: every whole hour that ended
// before closedBefore is filled from the raw events, each event ID once,
// oldest first (after an upgrade, that is the backfill, a day at a time,
// resumable); then every hour touched again since (late usage, a redelivery)
// is filled again. Filling an hour writes all of its rows under a new
// version, so filling it twice or concurrently never counts twice: the
// newer version replaces the older (read usage_hourly with FINAL). Only
// FillRollup writes usage_hourly; one process should run it at a time.
// Notes younger than settle (at least a second) wait for the next call
// (billing passes MarkSettle). It stops once budget is spent (after one
// chunk at least), to resume on the next call.
func (s *Store) FillRollup(ctx context.Context, closedBefore time.Time, settle, budget time.Duration) (RollupReport, error) {
	deadline := time.Now().Add(budget)
	closedBefore = closedBefore.UTC().Truncate(time.Hour)
	st, err := s.RollupState(ctx)
	if err != nil {
		return RollupReport{}, err
	}
	if st.Version == 0 {
		// The first run: start at the day of the oldest event, and take
		// notes from now on (older hours are filled in order anyway).
		var oldest, now time.Time
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count(), min(occurred_at), now() FROM "+s.db+".usage_events").Scan(&n, &oldest, &now); err != nil {
			return RollupReport{}, errs.Wrap(errs.Unavailable, err, "oldest usage")
		}
		st.FilledThrough = closedBefore
		if n > 0 && oldest.Before(closedBefore) {
			st.FilledThrough = oldest.UTC().Truncate(24 * time.Hour)
		}
		// Notes from before now are of usage stored before now, which the
		// fill in order reads; notes from now on are taken after it.
		st.MarksThrough, st.Version = now.UTC().Add(-max(settle, time.Second)-time.Second), 1
		if err := s.saveRollupState(ctx, st); err != nil {
			return RollupReport{}, err
		}
	}
	r := RollupReport{State: st, CaughtUp: true}
	for chunks := 0; r.State.FilledThrough.Before(closedBefore); chunks++ {
		if chunks > 0 && time.Now().After(deadline) {
			r.CaughtUp = false
			return r, nil
		}
		// Skip to the next hour with usage: hours without any have no
		// rows (and should usage of them arrive later, it notes them).
		var next time.Time
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count(), min(occurred_at) FROM "+s.db+".usage_events WHERE occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)",
			r.State.FilledThrough.Unix(), closedBefore.Unix()).Scan(&n, &next); err != nil {
			return r, errs.Wrap(errs.Unavailable, err, "next usage to roll up")
		}
		from := r.State.FilledThrough
		if n == 0 {
			from = closedBefore
		} else if h := next.UTC().Truncate(time.Hour); h.After(from) {
			from = h
		}
		to := from.Add(fillChunk * time.Hour)
		if to.After(closedBefore) {
			to = closedBefore
		}
		r.State.Version++
		if from.Before(to) {
			if err := s.fillHours(ctx, from, to, nil, r.State.Version); err != nil {
				return r, err
			}
			r.Hours += int(to.Sub(from) / time.Hour)
		}
		r.State.FilledThrough = to
		if err := s.saveRollupState(ctx, r.State); err != nil {
			return r, err
		}
	}

	// Hours touched again since they were filled.
	var upTo time.Time
	if err := s.conn.QueryRow(ctx, "SELECT now() - ?", int64(max(settle, time.Second)/time.Second)).Scan(&upTo); err != nil {
		return r, errs.Wrap(errs.Unavailable, err, "server time")
	}
	if !upTo.After(r.State.MarksThrough) {
		return r, nil
	}
	rows, err := s.conn.Query(ctx, `SELECT DISTINCT hour FROM `+s.db+`.usage_hours_touched
WHERE marked_at > toDateTime(?) AND marked_at <= toDateTime(?) AND hour < toDateTime(?)
ORDER BY hour`, r.State.MarksThrough.Unix(), upTo.Unix(), r.State.FilledThrough.Unix())
	if err != nil {
		return r, errs.Wrap(errs.Unavailable, err, "touched hours")
	}
	var hours []time.Time
	for rows.Next() {
		var h time.Time
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return r, errs.Wrap(errs.Unavailable, err, "touched hours")
		}
		hours = append(hours, h.UTC())
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, errs.Wrap(errs.Unavailable, err, "touched hours")
	}
	for chunk := range slices.Chunk(hours, fillChunk) {
		r.State.Version++
		if err := s.fillHours(ctx, chunk[0], chunk[len(chunk)-1].Add(time.Hour), chunk, r.State.Version); err != nil {
			return r, err
		}
		r.Hours += len(chunk)
		r.Refilled = append(r.Refilled, chunk...)
	}
	r.State.MarksThrough = upTo.UTC()
	if err := s.saveRollupState(ctx, r.State); err != nil {
		return r, err
	}
	return r, s.dropOldMarks(ctx, upTo)
}

// fillHours writes the rollup rows of the hours in [from, to) (only those
// in hours, when given) from the collapsed raw events, under version.
func (s *Store) fillHours(ctx context.Context, from, to time.Time, hours []time.Time, version uint64) error {
	only := ""
	if len(hours) > 0 {
		parts := make([]string, len(hours))
		for i, h := range hours {
			parts[i] = fmt.Sprintf("toDateTime(%d)", h.Unix())
		}
		only = " AND toStartOfHour(occurred_at, 'UTC') IN (" + strings.Join(parts, ", ") + ")"
	}
	q := `INSERT INTO ` + s.db + `.usage_hourly (service_id, hour, api_key_id, base_model, requests, prompt_tokens, completion_tokens, total_tokens, version)
SELECT service_id, toStartOfHour(at, 'UTC') AS h, k, m, count(), sum(p), sum(c), sum(t), toUInt64(?)
FROM (
	SELECT service_id, event_id, any(occurred_at) AS at, any(api_key_id) AS k, any(base_model) AS m,
		any(prompt_tokens) AS p, any(completion_tokens) AS c, any(total_tokens) AS t
	FROM ` + s.db + `.usage_events
	WHERE occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)` + only + `
	GROUP BY service_id, event_id
)
GROUP BY service_id, h, k, m`
	if err := s.conn.Exec(ctx, q, version, from.Unix(), to.Unix()); err != nil {
		return errs.Wrap(errs.Unavailable, err, "fill the rollup from %s to %s", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	return nil
}

// RollupState returns how far the rollup is filled; the zero state before
// the first FillRollup.
func (s *Store) RollupState(ctx context.Context) (RollupState, error) {
	var st RollupState
	var n uint64
	if err := s.conn.QueryRow(ctx, `SELECT count(), max(version), argMax(filled_through, version), argMax(marks_through, version)
FROM `+s.db+`.rollup_state`).Scan(&n, &st.Version, &st.FilledThrough, &st.MarksThrough); err != nil {
		return st, errs.Wrap(errs.Unavailable, err, "rollup state")
	}
	if n == 0 {
		return RollupState{}, nil
	}
	st.FilledThrough, st.MarksThrough = st.FilledThrough.UTC(), st.MarksThrough.UTC()
	return st, nil
}

func (s *Store) saveRollupState(ctx context.Context, st RollupState) error {
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".rollup_state (version, filled_through, marks_through)")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare rollup state")
	}
	if err := b.Append(st.Version, st.FilledThrough, st.MarksThrough); err != nil {
		_ = b.Abort()
		return fmt.Errorf("append rollup state: %w", err)
	}
	if err := b.Send(); err != nil {
		return errs.Wrap(errs.Unavailable, err, "save rollup state")
	}
	return nil
}

// dropOldMarks drops the daily partitions of touched-hour notes taken
// more than keepMarks days before upTo.
func (s *Store) dropOldMarks(ctx context.Context, upTo time.Time) error {
	cutoff := upTo.UTC().AddDate(0, 0, -keepMarks).Format("20060102")
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'usage_hours_touched' AND active", s.db)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "touched-hour partitions")
	}
	var old []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return errs.Wrap(errs.Unavailable, err, "touched-hour partitions")
		}
		if len(p) == 8 && p < cutoff {
			old = append(old, p)
		}
	}
	rows.Close()
	for _, p := range old {
		if err := s.conn.Exec(ctx, "ALTER TABLE "+s.db+".usage_hours_touched DROP PARTITION "+p); err != nil {
			return errs.Wrap(errs.Unavailable, err, "drop touched-hour partition %s", p)
		}
	}
	return rows.Err()
}

// CheckRollup compares the filled hours of usage_hourly in [from, to)
// with the collapsed raw events, hour by hour, and returns the hours that
// disagree (requests, prompt or completion tokens). It notes them as
// touched, so the next FillRollup fills them again.
func (s *Store) CheckRollup(ctx context.Context, from, to time.Time) ([]time.Time, error) {
	st, err := s.RollupState(ctx)
	if err != nil {
		return nil, err
	}
	if st.FilledThrough.Before(to) {
		to = st.FilledThrough
	}
	if !to.After(from) {
		return nil, nil
	}
	// Raw counts minus rolled-up counts, per hour: any hour left with a
	// difference disagrees.
	rows, err := s.conn.Query(ctx, `SELECT hour FROM (
	SELECT hour, sum(r) AS dr, sum(p) AS dp, sum(c) AS dc
	FROM (
		SELECT toStartOfHour(at, 'UTC') AS hour, toInt64(count()) AS r, toInt64(sum(pt)) AS p, toInt64(sum(ct)) AS c
		FROM (
			SELECT service_id, event_id, any(occurred_at) AS at, any(prompt_tokens) AS pt, any(completion_tokens) AS ct
			FROM `+s.db+`.usage_events
			WHERE occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
			GROUP BY service_id, event_id
		)
		GROUP BY hour
		UNION ALL
		SELECT hour, -toInt64(sum(requests)) AS r, -toInt64(sum(prompt_tokens)) AS p, -toInt64(sum(completion_tokens)) AS c
		FROM `+s.db+`.usage_hourly FINAL
		WHERE hour >= toDateTime(?) AND hour < toDateTime(?)
		GROUP BY hour
	)
	GROUP BY hour
)
WHERE dr != 0 OR dp != 0 OR dc != 0
ORDER BY hour`, from.Unix(), to.Unix(), from.Unix(), to.Unix())
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "check the rollup")
	}
	var bad []time.Time
	for rows.Next() {
		var h time.Time
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return nil, errs.Wrap(errs.Unavailable, err, "check the rollup")
		}
		bad = append(bad, h.UTC())
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "check the rollup")
	}
	if len(bad) > 0 {
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".usage_hours_touched (hour)")
		if err != nil {
			return bad, errs.Wrap(errs.Unavailable, err, "note hours to fill again")
		}
		for _, h := range bad {
			if err := b.Append(h); err != nil {
				_ = b.Abort()
				return bad, err
			}
		}
		if err := b.Send(); err != nil {
			return bad, errs.Wrap(errs.Unavailable, err, "note hours to fill again")
		}
	}
	return bad, nil
}
