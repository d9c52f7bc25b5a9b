package clickhouse

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Query limits. A usage API call reads one service over a bounded window;
// a statement reads every service over a month.
var (
	apiLimits  = ch.Settings{"max_execution_time": 30, "max_memory_usage": 2 << 30}
	bulkLimits = ch.Settings{"max_execution_time": 600}
)

// TokenUsage implements billing.Reader. ClickHouse does all the work:
// it collapses the events by ID, cuts each service at the second of its
// deletion, sums them into lines (service, UTC hour, API key, base model),
// prices each line with the rate in force at its hour, rounds it, and sums
// the lines into the rows asked for. The rates travel in the query as
// literals: a timeline per model.
func (s *Store) TokenUsage(ctx context.Context, q billing.TokenQuery) ([]billing.TokenRow, error) {
	filter, delFilter := "", ""
	var args []any
	if q.ServiceID != "" {
		filter, delFilter = "service_id = ? AND ", " WHERE service_id = ?"
		args = append(args, q.ServiceID)
	}
	args = append(args, q.From.Unix(), q.To.Unix())
	if q.ServiceID != "" {
		args = append(args, q.ServiceID)
	}
	sid, period, key, model := "''", "toUInt32(0)", "''", "''"
	if q.By.Service {
		sid = "service_id"
	}
	if secs := int64(q.By.Period / time.Second); secs > 0 {
		period = fmt.Sprintf("toUInt32(intDiv(toUInt32(h), %d) * %d)", secs, secs)
	}
	if q.By.APIKey {
		key = "k"
	}
	if q.By.BaseModel {
		model = "m"
	}
	query := `SELECT ` + sid + ` AS g_service, ` + period + ` AS g_period, ` + key + ` AS g_key, ` + model + ` AS g_model,
	sum(requests), sum(prompt), sum(completion), sum(cost)
FROM (
	SELECT service_id, h, k, m, requests, prompt, completion,
		` + timelineOf("m", q.Rates) + ` AS tl,
		arrayFilter((e, x) -> e.1 <= x, tl, replicate(h, tl))[-1] AS r,
		intDiv(prompt * r.2 + completion * r.3 + 500000, 1000000) AS cost
	FROM (
		SELECT service_id, toStartOfHour(at, 'UTC') AS h, k, m, count() AS requests, sum(p) AS prompt, sum(c) AS completion
		FROM (
			SELECT service_id, event_id, any(occurred_at) AS at, any(api_key_id) AS k, any(base_model) AS m,
				any(prompt_tokens) AS p, any(completion_tokens) AS c
			FROM ` + s.db + `.usage_events
			WHERE ` + filter + `occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)
			GROUP BY service_id, event_id
		)
		ANY LEFT JOIN (
			SELECT service_id, min(deleted_at) AS deleted_at FROM ` + s.db + `.service_deletions` + delFilter + ` GROUP BY service_id
		) USING (service_id)
		WHERE deleted_at = toDateTime(0) OR at <= deleted_at
		GROUP BY service_id, h, k, m
	)
)
GROUP BY g_service, g_period, g_key, g_model
ORDER BY g_service, g_period, g_key, g_model`
	limits := apiLimits
	if q.ServiceID == "" {
		limits = bulkLimits
	}
	rows, err := s.conn.Query(ch.Context(ctx, ch.WithSettings(limits)), query, args...)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "token usage")
	}
	defer rows.Close()
	var out []billing.TokenRow
	for rows.Next() {
		var r billing.TokenRow
		var start uint32
		if err := rows.Scan(&r.ServiceID, &start, &r.APIKeyID, &r.BaseModel, &r.Requests, &r.PromptTokens, &r.CompletionTokens, &r.CostMicros); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "token usage")
		}
		if q.By.Period > 0 {
			r.PeriodStart = time.Unix(int64(start), 0).UTC()
		}
		if r.Requests > 0 {
			out = append(out, r)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "token usage")
	}
	return out, nil
}

// timelineOf is an expression for the rate timeline of the model in
// column col: Array(Tuple(DateTime, UInt64, UInt64)), (from, input,
// output) by from.
func timelineOf(col string, r billing.Rates) string {
	def := ratesLiteral(r.Default)
	if len(r.ByModel) == 0 {
		return def
	}
	models := slices.Sorted(maps.Keys(r.ByModel))
	names, lines := make([]string, len(models)), make([]string, len(models))
	for i, m := range models {
		names[i], lines[i] = quote(m), ratesLiteral(r.ByModel[m])
	}
	idx := "indexOf([" + strings.Join(names, ", ") + "], " + col + ")"
	return "if(" + idx + " = 0, " + def + ", arrayElement([" + strings.Join(lines, ", ") + "], " + idx + "))"
}

func ratesLiteral(rs []billing.Rate) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("(toDateTime(%d), toUInt64(%d), toUInt64(%d))", r.From.Unix(), r.InputMicrosPerMTok, r.OutputMicrosPerMTok)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
