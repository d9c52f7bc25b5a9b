package clickhouse

import (
	"context"
	"fmt"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Closings implements billing.PeriodStore: the first closing of each
// period, by period.
func (s *Store) Closings(ctx context.Context) ([]billing.Closing, error) {
	rows, err := s.conn.Query(ctx, `SELECT period, argMin(close_id, (closed_at, close_id)), min(closed_at),
	argMin(closed_by, (closed_at, close_id)), argMin(price_revision, (closed_at, close_id))
FROM `+s.db+`.closings
GROUP BY period
ORDER BY period`)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read closings")
	}
	defer rows.Close()
	var out []billing.Closing
	for rows.Next() {
		var c billing.Closing
		var period time.Time
		if err := rows.Scan(&period, &c.CloseID, &c.ClosedAt, &c.ClosedBy, &c.PriceRevision); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "read closings")
		}
		c.Period, c.ClosedAt = dateToPeriod(period), c.ClosedAt.UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read closings")
	}
	return out, nil
}

// SaveStatement implements billing.PeriodStore: the lines in one INSERT,
// then the closing in another.
func (s *Store) SaveStatement(ctx context.Context, c billing.Closing, lines []billing.StatementLine) error {
	if len(lines) > 0 {
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+`.statement_lines (close_id, period, kind, for_period, service_id,
	owner_id, service_name, billing_method, part, api_key_id, base_model, requests, prompt_tokens, completion_tokens,
	total_tokens, instance_seconds, cost_micros)`)
		if err != nil {
			return errs.Wrap(errs.Unavailable, err, "prepare statement")
		}
		for _, l := range lines {
			if err := b.Append(c.CloseID, l.Period.Start(), l.Kind, l.ForPeriod.Start(), l.ServiceID, l.OwnerID, l.ServiceName,
				l.BillingMethod, l.Part, l.APIKeyID, l.BaseModel, l.Requests, l.PromptTokens, l.CompletionTokens,
				l.TotalTokens, l.InstanceSeconds, l.CostMicros); err != nil {
				_ = b.Abort()
				return fmt.Errorf("append statement line of %s: %w", l.ServiceID, err)
			}
		}
		if err := send(ctx, b, "statement_lines", len(lines)); err != nil {
			return errs.Wrap(errs.Unavailable, err, "insert %d statement lines", len(lines))
		}
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".closings (period, close_id, closed_at, closed_by, price_revision)")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare closing")
	}
	if err := b.Append(c.Period.Start(), c.CloseID, c.ClosedAt.UTC().Truncate(time.Second), c.ClosedBy, c.PriceRevision); err != nil {
		_ = b.Abort()
		return fmt.Errorf("append closing: %w", err)
	}
	if err := send(ctx, b, "closings", 1); err != nil {
		return errs.Wrap(errs.Unavailable, err, "close %s", c.Period)
	}
	return nil
}

// StatementLines implements billing.PeriodStore: each line of the given
// closings once, however often it was written.
func (s *Store) StatementLines(ctx context.Context, closeIDs []string) ([]billing.StatementLine, error) {
	if len(closeIDs) == 0 {
		return nil, nil
	}
	ids := make([]any, len(closeIDs))
	for i, id := range closeIDs {
		ids[i] = id
	}
	rows, err := s.conn.Query(ctx, `SELECT period, kind, for_period, service_id, part, api_key_id, base_model,
	any(owner_id), any(service_name), any(billing_method), any(requests), any(prompt_tokens), any(completion_tokens),
	any(total_tokens), any(instance_seconds), any(cost_micros)
FROM `+s.db+`.statement_lines
WHERE close_id IN ?
GROUP BY close_id, period, kind, for_period, service_id, part, api_key_id, base_model
ORDER BY period, service_id, kind, for_period, part, api_key_id, base_model`, ch.GroupSet{Value: ids})
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read statements")
	}
	defer rows.Close()
	var out []billing.StatementLine
	for rows.Next() {
		var l billing.StatementLine
		var period, forPeriod time.Time
		if err := rows.Scan(&period, &l.Kind, &forPeriod, &l.ServiceID, &l.Part, &l.APIKeyID, &l.BaseModel, &l.OwnerID,
			&l.ServiceName, &l.BillingMethod, &l.Requests, &l.PromptTokens, &l.CompletionTokens, &l.TotalTokens,
			&l.InstanceSeconds, &l.CostMicros); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "read statements")
		}
		l.Period, l.ForPeriod = dateToPeriod(period), dateToPeriod(forPeriod)
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read statements")
	}
	return out, nil
}

// dateToPeriod reads a ClickHouse Date (the month's first day) as a
// period, whatever time zone the driver put it in.
func dateToPeriod(d time.Time) billing.Period {
	return billing.PeriodOf(time.Date(d.Year(), d.Month(), 1, 0, 0, 0, 0, time.UTC))
}
