package clickhouse

import (
	"context"
	"fmt"
	"strings"
)

// migration is one schema change: steps run in order, each safe to run
// again, so a migration interrupted halfway is simply run again.
type migration struct {
	version int
	name    string
	steps   []step
}

// step is one statement ({db} is the database), or Go code where a
// statement alone cannot be made safe to run again.
type step struct {
	sql string
	run func(ctx context.Context, s *Store) error
	// supersededBy is a later migration that redoes this step's work
	// from scratch: while it is still to run, the step is skipped.
	supersededBy int
}

// sqls returns steps that are statements.
func sqls(statements ...string) []step {
	out := make([]step, len(statements))
	for i, q := range statements {
		out[i] = step{sql: q}
	}
	return out
}

// migrations run in order, once each; schema_migrations records them.
// Append only: never edit one that has shipped. {db} is the database.
//
// Times are DateTime (seconds); hours and days are taken in UTC
// explicitly, so the server's time zone does not matter.
var migrations = []migration{
	{1, "usage_events", sqls(`
CREATE TABLE IF NOT EXISTS {db}.usage_events (
	event_id          String,
	request_id        String,
	service_id        String,
	owner_id          String,
	access_name       String,
	base_model        String,
	api_key_id        String,
	instance_id       String,
	endpoint          String,
	status            UInt16,
	prompt_tokens     UInt32,
	completion_tokens UInt32,
	total_tokens      UInt32,
	started_at        DateTime,
	finished_at       DateTime,
	occurred_at       DateTime,
	inserted_at       DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (service_id, occurred_at, event_id)`)},

	// The hourly rollup per service, API key and model. The view adds
	// each inserted block to it; InsertUsage never stores an event ID
	// twice, so it is exact. The last two steps rebuild it from the
	// deduplicated raw events, which makes the migration safe to rerun
	// and fills it from the events stored before it existed.
	{2, "usage_hourly", append(sqls(`
CREATE TABLE IF NOT EXISTS {db}.usage_hourly (
	service_id        String,
	hour              DateTime,
	api_key_id        String,
	base_model        String,
	requests          UInt64,
	prompt_tokens     UInt64,
	completion_tokens UInt64,
	total_tokens      UInt64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (service_id, hour, api_key_id, base_model)`, `
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_hourly_mv TO {db}.usage_hourly AS
SELECT
	service_id,
	toStartOfHour(occurred_at, 'UTC') AS hour,
	api_key_id,
	base_model,
	count() AS requests,
	sum(prompt_tokens) AS prompt_tokens,
	sum(completion_tokens) AS completion_tokens,
	sum(total_tokens) AS total_tokens
FROM {db}.usage_events
GROUP BY service_id, hour, api_key_id, base_model`),
		step{sql: `TRUNCATE TABLE {db}.usage_hourly`, supersededBy: 9},
		step{sql: rebuildUsageHourly, supersededBy: 9})},

	// Instance lifecycle, for instance-time: one row per ready or stopped
	// event.
	{3, "instance_events", sqls(`
CREATE TABLE IF NOT EXISTS {db}.instance_events (
	event_id    String,
	kind        String,
	instance_id String,
	service_id  String,
	worker_id   String,
	reason      String,
	occurred_at DateTime,
	inserted_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (service_id, instance_id, occurred_at, event_id)`,
		// instance_intervals pairs each ready with the first stopped after
		// it, per instance, the way billing.Intervals does: a ready while
		// the instance runs and a stopped while it does not change nothing.
		// stopped_at is 0 (1970-01-01 00:00:00) while the instance runs.
		`
CREATE VIEW IF NOT EXISTS {db}.instance_intervals AS
SELECT service_id, instance_id, iv.1 AS ready_at, iv.2 AS stopped_at
FROM (
	SELECT
		service_id,
		instance_id,
		arraySort(e -> (e.1, e.3), groupArray((at, k, event_id))) AS evs,
		arrayFilter(x -> x.1 != toDateTime(0), arrayMap(i -> if(evs[i].2 = 'ready' AND (i = 1 OR evs[i - 1].2 != 'ready'),
			(evs[i].1, arrayFirst(e -> e.2 = 'stopped', arraySlice(evs, i + 1)).1),
			(toDateTime(0), toDateTime(0))), arrayEnumerate(evs))) AS ivs
	FROM (
		SELECT service_id, instance_id, event_id, any(kind) AS k, any(occurred_at) AS at
		FROM {db}.instance_events
		GROUP BY service_id, instance_id, event_id
	)
	GROUP BY service_id, instance_id
)
ARRAY JOIN ivs AS iv`)},

	// Services as created and deleted, for joins: billing method, model,
	// owner, and the time billing stops.
	{4, "services", sqls(`
CREATE TABLE IF NOT EXISTS {db}.services (
	event_id       String,
	service_id     String,
	owner_id       String,
	name           String,
	access_name    String,
	base_model     String,
	task           String,
	billing_method String,
	created_at     DateTime,
	inserted_at    DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (service_id, event_id)`, `
CREATE TABLE IF NOT EXISTS {db}.service_deletions (
	event_id    String,
	service_id  String,
	owner_id    String,
	deleted_at  DateTime,
	inserted_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (service_id, event_id)`,
		// instance_hourly is instance time per service and UTC hour: each
		// interval runs to its stop, the service's deletion or now,
		// whichever comes first, and is split at hour boundaries.
		`
CREATE VIEW IF NOT EXISTS {db}.instance_hourly AS
SELECT service_id, toDateTime(h) AS hour, sum(toUInt64(least(e, h + 3600) - greatest(s, h))) AS instance_seconds
FROM (
	SELECT service_id, s, e,
		arrayJoin(arrayMap(i -> intDiv(s, 3600) * 3600 + i * 3600,
			range(toUInt32(if(e > s, intDiv(e - 1, 3600) - intDiv(s, 3600) + 1, 0))))) AS h
	FROM (
		SELECT
			service_id,
			toUInt32(ready_at) AS s,
			toUInt32(least(least(if(stopped_at = toDateTime(0), now(), stopped_at), if(deleted_at = toDateTime(0), now(), deleted_at)), now())) AS e
		FROM {db}.instance_intervals
		ANY LEFT JOIN (
			SELECT service_id, min(deleted_at) AS deleted_at FROM {db}.service_deletions GROUP BY service_id
		) USING (service_id)
	)
)
GROUP BY service_id, hour`)},

	// The price list billing runs with, for joins. Rows are versioned by
	// updated_at; current_prices is the latest version of each.
	{5, "prices", sqls(`
CREATE TABLE IF NOT EXISTS {db}.prices (
	base_model             String,
	billing_method         String,
	input_micros_per_mtok  UInt64,
	output_micros_per_mtok UInt64,
	instance_hour_micros   UInt64,
	updated_at             DateTime
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (base_model, billing_method)`, `
CREATE VIEW IF NOT EXISTS {db}.current_prices AS
SELECT
	base_model,
	billing_method,
	argMax(input_micros_per_mtok, updated_at) AS input_micros_per_mtok,
	argMax(output_micros_per_mtok, updated_at) AS output_micros_per_mtok,
	argMax(instance_hour_micros, updated_at) AS instance_hour_micros
FROM {db}.prices
GROUP BY base_model, billing_method`)},

	// What is billed, line by line, the way the usage API bills it: each
	// event ID once, nothing after the second of a service's deletion, prices from
	// current_prices (a model without its own price takes the '*' one),
	// each line's cost rounded half up to a micro-USD.
	{6, "cost_views", sqls(`
CREATE VIEW IF NOT EXISTS {db}.token_lines AS
SELECT
	service_id, hour, api_key_id, base_model, billing_method,
	requests, prompt_tokens, completion_tokens, total_tokens,
	if(billing_method = 'per-token',
		intDiv(prompt_tokens * input_micros_per_mtok + completion_tokens * output_micros_per_mtok + 500000, 1000000),
		toUInt64(0)) AS cost_micros
FROM (
	SELECT
		service_id, hour, api_key_id, base_model, billing_method,
		requests, prompt_tokens, completion_tokens, total_tokens,
		if((base_model, 'per-token') IN (SELECT base_model, billing_method FROM {db}.current_prices), base_model, '*') AS price_model
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
	ANY LEFT JOIN (
		SELECT service_id, any(billing_method) AS billing_method FROM {db}.services GROUP BY service_id
	) USING (service_id)
)
ANY LEFT JOIN (
	SELECT base_model AS price_model, input_micros_per_mtok, output_micros_per_mtok
	FROM {db}.current_prices WHERE billing_method = 'per-token'
) USING (price_model)`, `
CREATE VIEW IF NOT EXISTS {db}.instance_lines AS
SELECT
	service_id, hour, base_model, billing_method, instance_seconds,
	if(billing_method = 'per-instance-hour',
		intDiv(instance_seconds * instance_hour_micros + 1800, 3600),
		toUInt64(0)) AS cost_micros
FROM (
	SELECT
		service_id, hour, base_model, billing_method, instance_seconds,
		if((base_model, 'per-instance-hour') IN (SELECT base_model, billing_method FROM {db}.current_prices), base_model, '*') AS price_model
	FROM {db}.instance_hourly
	ANY LEFT JOIN (
		SELECT service_id, any(base_model) AS base_model, any(billing_method) AS billing_method
		FROM {db}.services GROUP BY service_id
	) USING (service_id)
)
ANY LEFT JOIN (
	SELECT base_model AS price_model, instance_hour_micros
	FROM {db}.current_prices WHERE billing_method = 'per-instance-hour'
) USING (price_model)`)},

	// An instance whose worker died never stops by itself: the scaler's
	// release with worker_gone is stored as a 'gone' event, and
	// instance_intervals now ends an interval at the first stopped or gone
	// event after its ready, as billing.Intervals does. Gone is final:
	// nothing after an instance's first gone event runs again. The views
	// built on it (instance_hourly, instance_lines) read it by name, so
	// they follow. Dropping and creating the view again is safe to rerun.
	{7, "instance_intervals_gone", sqls(
		`DROP TABLE IF EXISTS {db}.instance_intervals`, `
CREATE VIEW IF NOT EXISTS {db}.instance_intervals AS
SELECT service_id, instance_id, iv.1 AS ready_at, iv.2 AS stopped_at
FROM (
	SELECT
		service_id,
		instance_id,
		arraySort(e -> (e.1, e.3), groupArray((at, k, event_id))) AS evs,
		arrayFirstIndex(e -> e.2 = 'gone', evs) AS gone,
		arrayFilter(x -> x.1 != toDateTime(0), arrayMap(i -> if(evs[i].2 = 'ready' AND (i = 1 OR evs[i - 1].2 != 'ready') AND (gone = 0 OR i < gone),
			(evs[i].1, arrayFirst(e -> e.2 = 'stopped' OR e.2 = 'gone', arraySlice(evs, i + 1)).1),
			(toDateTime(0), toDateTime(0))), arrayEnumerate(evs))) AS ivs
	FROM (
		SELECT service_id, instance_id, event_id, any(kind) AS k, any(occurred_at) AS at
		FROM {db}.instance_events
		GROUP BY service_id, instance_id, event_id
	)
	GROUP BY service_id, instance_id
)
ARRAY JOIN ivs AS iv`)},

	// Prices with effective dates, never overwritten: each entry is in
	// force from valid_from (a whole UTC hour) until the next entry of
	// its model and billing method; a dropped entry sends the model back
	// to the '*' price. Each list billing stores adds its new entries as
	// the next revision. The last price list billing ran with before this
	// (current_prices over the old prices table) becomes revision 1, in
	// force from 1970, so upgrading changes no past bill.
	{8, "price_schedule", []step{{sql: `
CREATE TABLE IF NOT EXISTS {db}.price_schedule (
	revision               UInt64,
	base_model             String,
	billing_method         String,
	valid_from             DateTime,
	dropped                UInt8,
	input_micros_per_mtok  UInt64,
	output_micros_per_mtok UInt64,
	instance_hour_micros   UInt64,
	written_at             DateTime DEFAULT now()
) ENGINE = MergeTree()
ORDER BY (base_model, billing_method, valid_from, revision)`}, {run: seedPriceSchedule}}},

	// The hourly rollup, exact: filled only from deduplicated raw events,
	// one whole closed hour at a time, by one process (see FillRollup).
	// Filling an hour again writes a new version of its rows, which
	// replaces the old (read it with FINAL). The materialized view that
	// added every inserted block goes: a retried insert could reach it
	// twice. The old rollup is kept as usage_hourly_v1 when it holds
	// anything; the new one fills from the raw events, oldest day first.
	{9, "usage_hourly_exact", []step{
		{sql: `DROP TABLE IF EXISTS {db}.usage_hourly_mv`},
		{run: setAsideSummingRollup},
		{sql: `
CREATE TABLE IF NOT EXISTS {db}.usage_hourly (
	service_id        String,
	hour              DateTime,
	api_key_id        String,
	base_model        String,
	requests          UInt64,
	prompt_tokens     UInt64,
	completion_tokens UInt64,
	total_tokens      UInt64,
	version           UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (service_id, hour, api_key_id, base_model)`},
		// The hours each stored batch of usage touched, written after
		// the batch is stored: what the rollup must fill again.
		{sql: `
CREATE TABLE IF NOT EXISTS {db}.usage_hours_touched (
	hour      DateTime,
	marked_at DateTime DEFAULT now()
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(marked_at)
ORDER BY (marked_at, hour)`},
		{sql: `
CREATE TABLE IF NOT EXISTS {db}.rollup_state (
	version        UInt64,
	filled_through DateTime,
	marks_through  DateTime,
	updated_at     DateTime DEFAULT now()
) ENGINE = MergeTree()
ORDER BY version`}}},

	// Closed periods and their statements. A period is closed once a
	// closings row names it; its statement is the statement_lines of that
	// close_id (rows written again under one close_id count once).
	{10, "statements", sqls(`
CREATE TABLE IF NOT EXISTS {db}.closings (
	period         Date,
	close_id       String,
	closed_at      DateTime,
	closed_by      String,
	price_revision UInt64
) ENGINE = MergeTree()
ORDER BY (period, closed_at, close_id)`, `
CREATE TABLE IF NOT EXISTS {db}.statement_lines (
	close_id          String,
	period            Date,
	kind              String,
	for_period        Date,
	service_id        String,
	owner_id          String,
	service_name      String,
	billing_method    String,
	part              String,
	api_key_id        String,
	base_model        String,
	requests          Int64,
	prompt_tokens     Int64,
	completion_tokens Int64,
	total_tokens      Int64,
	instance_seconds  Int64,
	cost_micros       Int64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(period)
ORDER BY (period, close_id, service_id, kind, for_period, part, api_key_id, base_model)`)},

	// When worker heartbeats last showed each running instance: the
	// evidence an instance whose stop was lost is ended at.
	{11, "instance_sightings", sqls(`
CREATE TABLE IF NOT EXISTS {db}.instance_sightings (
	service_id  String,
	instance_id String,
	worker_id   String,
	seen_at     DateTime
) ENGINE = ReplacingMergeTree(seen_at)
ORDER BY (service_id, instance_id)`)},

	// The views, again: instance time also ends at a failed or lost
	// event; each line is priced with the entry in force at its hour; a
	// service without a services row shows billing_method 'unknown'
	// rather than a silent 0; statements lists the closed statements.
	// Each view is swapped in whole (see replaceView), so a query never
	// finds it missing.
	{12, "effective_dated_views", []step{
		{run: replaceView("instance_intervals", instanceIntervalsV2)},
		{run: replaceView("price_entries", priceEntriesView)},
		{run: replaceView("price_timelines", priceTimelinesView)},
		{run: replaceView("current_prices", currentPricesV2)},
		{run: replaceView("token_lines", tokenLinesV2)},
		{run: replaceView("instance_lines", instanceLinesV2)},
		{run: replaceView("statements", statementsView)},
	}},

	// The prompt tokens each request found in the engine's prefix cache,
	// for cache hit rates per service: 0 for events stored before, and
	// for engines that do not say.
	{13, "usage_cached_tokens", []step{{run: addColumn("usage_events", "cached_tokens", "UInt32 DEFAULT 0 AFTER total_tokens")}}},
}

// addColumn is a step that adds a column to a table unless it is there
// already: ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS, and the step
// must be safe to run again. spec is the column's type and what follows
// it in ADD COLUMN.
func addColumn(table, column, spec string) func(ctx context.Context, s *Store) error {
	return func(ctx context.Context, s *Store) error {
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?", s.db, table, column).Scan(&n); err != nil {
			return fmt.Errorf("look up column %s.%s: %w", table, column, err)
		}
		if n > 0 {
			return nil
		}
		return s.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s", s.db, table, column, spec))
	}
}

// rebuildUsageHourly fills usage_hourly from usage_events, each event ID
// once. It assumes usage_hourly is empty and no usage is being inserted.
const rebuildUsageHourly = `
INSERT INTO {db}.usage_hourly (service_id, hour, api_key_id, base_model, requests, prompt_tokens, completion_tokens, total_tokens)
SELECT service_id, toStartOfHour(at, 'UTC') AS h, k, m, count(), sum(p), sum(c), sum(t)
FROM (
	SELECT service_id, event_id, any(occurred_at) AS at, any(api_key_id) AS k, any(base_model) AS m,
		any(prompt_tokens) AS p, any(completion_tokens) AS c, any(total_tokens) AS t
	FROM {db}.usage_events
	GROUP BY service_id, event_id
)
GROUP BY service_id, h, k, m`

func expand(sql, db string) string { return strings.ReplaceAll(sql, "{db}", db) }
