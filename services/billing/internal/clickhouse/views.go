package clickhouse

import (
	"context"
	"fmt"
	"strings"
)

// replaceView returns a migration step that puts view name in place with
// body (the SELECT, {db} for the database) without a moment where name
// is missing: it creates the new view under a temporary name, swaps the
// two names in one RENAME (atomic in ClickHouse), then drops the old one.
// Every statement is safe to run again after an interruption.
func replaceView(name, body string) func(ctx context.Context, s *Store) error {
	return func(ctx context.Context, s *Store) error {
		next, old := s.db+"."+name+"_next", s.db+"."+name+"_old"
		for _, q := range []string{"DROP TABLE IF EXISTS " + next, "DROP TABLE IF EXISTS " + old,
			"CREATE VIEW " + next + " AS " + expand(body, s.db)} {
			if err := s.conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("view %s: %w", name, err)
			}
		}
		exists, err := s.tableExists(ctx, name)
		if err != nil {
			return err
		}
		swap := "RENAME TABLE " + next + " TO " + s.db + "." + name
		if exists {
			swap = "RENAME TABLE " + s.db + "." + name + " TO " + old + ", " + next + " TO " + s.db + "." + name
		}
		if err := s.conn.Exec(ctx, swap); err != nil {
			return fmt.Errorf("view %s: %w", name, err)
		}
		if err := s.conn.Exec(ctx, "DROP TABLE IF EXISTS "+old); err != nil {
			return fmt.Errorf("view %s: %w", name, err)
		}
		return nil
	}
}

// tableExists reports whether the database has a table or view called
// name.
func (s *Store) tableExists(ctx context.Context, name string) (bool, error) {
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", s.db, name).Scan(&n); err != nil {
		return false, fmt.Errorf("look up table %s: %w", name, err)
	}
	return n > 0, nil
}

// engineOf returns the engine of table name, "" when there is none.
func (s *Store) engineOf(ctx context.Context, name string) (string, error) {
	rows, err := s.conn.Query(ctx, "SELECT engine FROM system.tables WHERE database = ? AND name = ?", s.db, name)
	if err != nil {
		return "", fmt.Errorf("look up table %s: %w", name, err)
	}
	defer rows.Close()
	engine := ""
	for rows.Next() {
		if err := rows.Scan(&engine); err != nil {
			return "", err
		}
	}
	return engine, rows.Err()
}

// seedPriceSchedule makes the price list billing ran with before effective
// dates (current_prices over the old prices table) revision 1 of the
// schedule, in force from 1970, unless the schedule has entries already.
func seedPriceSchedule(ctx context.Context, s *Store) error {
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.db+".price_schedule").Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if engine, err := s.engineOf(ctx, "prices"); err != nil || engine == "" {
		return err
	}
	return s.conn.Exec(ctx, expand(`
INSERT INTO {db}.price_schedule (revision, base_model, billing_method, valid_from, dropped, input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros)
SELECT toUInt64(1), base_model, billing_method, toDateTime(0), toUInt8(0),
	argMax(input_micros_per_mtok, updated_at), argMax(output_micros_per_mtok, updated_at), argMax(instance_hour_micros, updated_at)
FROM {db}.prices
GROUP BY base_model, billing_method`, s.db))
}

// setAsideSummingRollup moves the rollup the materialized view fed out of
// the way: renamed usage_hourly_v1 when it holds rows, dropped when empty.
func setAsideSummingRollup(ctx context.Context, s *Store) error {
	engine, err := s.engineOf(ctx, "usage_hourly")
	if err != nil || engine != "SummingMergeTree" {
		return err
	}
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.db+".usage_hourly").Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return s.conn.Exec(ctx, "DROP TABLE "+s.db+".usage_hourly")
	}
	if err := s.conn.Exec(ctx, "DROP TABLE IF EXISTS "+s.db+".usage_hourly_v1"); err != nil {
		return err
	}
	return s.conn.Exec(ctx, "RENAME TABLE "+s.db+".usage_hourly TO "+s.db+".usage_hourly_v1")
}

// endKinds are the instance event kinds that end an instance's time, as
// billing.Intervals has them.
const endKinds = `['stopped', 'gone', 'failed', 'lost']`

// instanceIntervalsV2 pairs each ready with the first event after it that
// ends it, per instance, as billing.Intervals does; gone is final.
var instanceIntervalsV2 = `
SELECT service_id, instance_id, iv.1 AS ready_at, iv.2 AS stopped_at
FROM (
	SELECT
		service_id,
		instance_id,
		arraySort(e -> (e.1, e.3), groupArray((at, k, event_id))) AS evs,
		arrayFirstIndex(e -> e.2 = 'gone', evs) AS gone,
		arrayFilter(x -> x.1 != toDateTime(0), arrayMap(i -> if(evs[i].2 = 'ready' AND (i = 1 OR evs[i - 1].2 != 'ready') AND (gone = 0 OR i < gone),
			(evs[i].1, arrayFirst(e -> has(` + endKinds + `, e.2), arraySlice(evs, i + 1)).1),
			(toDateTime(0), toDateTime(0))), arrayEnumerate(evs))) AS ivs
	FROM (
		SELECT service_id, instance_id, event_id, any(kind) AS k, any(occurred_at) AS at
		FROM {db}.instance_events
		GROUP BY service_id, instance_id, event_id
	)
	GROUP BY service_id, instance_id
)
ARRAY JOIN ivs AS iv`

// priceEntriesView is each price entry once: the first revision that
// added it (should two rows of one revision ever disagree, the lowest
// prices).
const priceEntriesView = `
SELECT base_model, billing_method, valid_from,
	e.1 AS revision, e.2 AS dropped, e.3 AS input_micros_per_mtok, e.4 AS output_micros_per_mtok, e.5 AS instance_hour_micros
FROM (
	SELECT base_model, billing_method, valid_from,
		min((revision, dropped, input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros)) AS e
	FROM {db}.price_schedule
	GROUP BY base_model, billing_method, valid_from
)`

// priceTimelinesView is each model's entries per billing method, by
// valid_from: (valid_from, dropped, input, output, instance hour).
const priceTimelinesView = `
SELECT base_model, billing_method,
	arraySort(groupArray((valid_from, dropped, input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros))) AS entries
FROM {db}.price_entries
GROUP BY base_model, billing_method`

// currentPricesV2 is the price of each model in force now, its own
// entries only (a dropped one is left out: the model takes '*').
const currentPricesV2 = `
SELECT base_model, billing_method, e.3 AS input_micros_per_mtok, e.4 AS output_micros_per_mtok, e.5 AS instance_hour_micros
FROM (
	SELECT base_model, billing_method, arrayFilter(x -> x.1 <= now(), entries) AS f, f[-1] AS e
	FROM {db}.price_timelines
)
WHERE notEmpty(f) AND e.2 = 0`

// priceAt is the price of a line's model at its hour, as
// billing.Schedule.At resolves it: the model's own entry in force at the
// hour unless there is none or it is dropped, then the '*' entry in force.
// It needs columns hour, base_model, own (the model's timeline) and star
// ('*”s), and yields p (the entry), price_model and price_valid_from.
const priceAt = `
		arrayFilter((e, h) -> e.1 <= h, own, replicate(hour, own)) AS own_now,
		arrayFilter((e, h) -> e.1 <= h, star, replicate(hour, star)) AS star_now,
		notEmpty(own_now) AND own_now[-1].2 = 0 AS own_applies,
		if(own_applies, own_now[-1], star_now[-1]) AS p,
		if(own_applies, base_model, '*') AS price_model,
		p.1 AS price_valid_from`

// serviceMethods is each service's billing method and model from the
// services table; known is 0 for a service without a row.
const serviceMethods = `(
	SELECT service_id, any(billing_method) AS method, any(base_model) AS service_model, toUInt8(1) AS known
	FROM {db}.services GROUP BY service_id
)`

// tokenLinesV2 bills token lines as the usage API does. (ClickHouse 18.16
// takes one JOIN per SELECT, hence the nesting.)
var tokenLinesV2 = `
SELECT
	service_id, hour, api_key_id, base_model, billing_method,
	requests, prompt_tokens, completion_tokens, total_tokens,
	price_model, price_valid_from,
	if(billing_method = 'per-token',
		intDiv(prompt_tokens * p.3 + completion_tokens * p.4 + 500000, 1000000),
		toUInt64(0)) AS cost_micros
FROM (
	SELECT service_id, hour, api_key_id, base_model, billing_method,
		requests, prompt_tokens, completion_tokens, total_tokens,` + priceAt + `
	FROM (
		SELECT service_id, hour, api_key_id, base_model, billing_method,
			requests, prompt_tokens, completion_tokens, total_tokens, own
		FROM (
			SELECT service_id, hour, api_key_id, base_model, if(known = 1, method, 'unknown') AS billing_method,
				requests, prompt_tokens, completion_tokens, total_tokens
			FROM (
				SELECT
					service_id,
					toStartOfHour(at, 'UTC') AS hour,
					k AS api_key_id,
					m AS base_model,
					count() AS requests,
					sum(pt) AS prompt_tokens,
					sum(ct) AS completion_tokens,
					sum(pt + ct) AS total_tokens
				FROM (
					SELECT service_id, event_id, any(occurred_at) AS at, any(api_key_id) AS k, any(base_model) AS m,
						any(prompt_tokens) AS pt, any(completion_tokens) AS ct
					FROM {db}.usage_events
					GROUP BY service_id, event_id
				)
				ANY LEFT JOIN (
					SELECT service_id, min(deleted_at) AS deleted_at FROM {db}.service_deletions GROUP BY service_id
				) USING (service_id)
				WHERE deleted_at = toDateTime(0) OR at <= deleted_at
				GROUP BY service_id, hour, api_key_id, base_model
			)
			ANY LEFT JOIN ` + serviceMethods + ` USING (service_id)
		)
		ANY LEFT JOIN (
			SELECT base_model, entries AS own FROM {db}.price_timelines WHERE billing_method = 'per-token'
		) USING (base_model)
	)
	CROSS JOIN (
		SELECT entries AS star FROM {db}.price_timelines WHERE base_model = '*' AND billing_method = 'per-token'
	)
)`

// instanceLinesV2 bills instance hours as the usage API does.
var instanceLinesV2 = `
SELECT
	service_id, hour, base_model, billing_method, instance_seconds,
	price_model, price_valid_from,
	if(billing_method = 'per-instance-hour',
		intDiv(instance_seconds * p.5 + 1800, 3600),
		toUInt64(0)) AS cost_micros
FROM (
	SELECT service_id, hour, base_model, billing_method, instance_seconds,` + priceAt + `
	FROM (
		SELECT service_id, hour, base_model, billing_method, instance_seconds, own
		FROM (
			SELECT service_id, hour, service_model AS base_model, if(known = 1, method, 'unknown') AS billing_method, instance_seconds
			FROM {db}.instance_hourly
			ANY LEFT JOIN ` + serviceMethods + ` USING (service_id)
		)
		ANY LEFT JOIN (
			SELECT base_model, entries AS own FROM {db}.price_timelines WHERE billing_method = 'per-instance-hour'
		) USING (base_model)
	)
	CROSS JOIN (
		SELECT entries AS star FROM {db}.price_timelines WHERE base_model = '*' AND billing_method = 'per-instance-hour'
	)
)`

// statementsView is the lines of every closed period's statement, each
// once: those of the period's first closing.
const statementsView = `
SELECT period, kind, for_period, service_id, part, api_key_id, base_model,
	any(owner_id) AS owner_id, any(service_name) AS service_name, any(billing_method) AS billing_method,
	any(requests) AS requests, any(prompt_tokens) AS prompt_tokens, any(completion_tokens) AS completion_tokens,
	any(total_tokens) AS total_tokens, any(instance_seconds) AS instance_seconds, any(cost_micros) AS cost_micros
FROM {db}.statement_lines
WHERE close_id IN (SELECT argMin(close_id, (closed_at, close_id)) FROM {db}.closings GROUP BY period)
GROUP BY close_id, period, kind, for_period, service_id, part, api_key_id, base_model`

// quote returns s as a ClickHouse string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
