package clickhouse

import (
	"context"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// PriceSchedule implements billing.PriceStore from the price_entries view,
// the same entries the SQL views price with.
func (s *Store) PriceSchedule(ctx context.Context) (*billing.Schedule, error) {
	rows, err := s.conn.Query(ctx, `SELECT revision, base_model, billing_method, valid_from, dropped,
	input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros
FROM `+s.db+`.price_entries`)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read prices")
	}
	defer rows.Close()
	var entries []billing.PriceEntry
	var revision uint64
	for rows.Next() {
		var e billing.PriceEntry
		var dropped uint8
		if err := rows.Scan(&e.Revision, &e.BaseModel, &e.BillingMethod, &e.ValidFrom, &dropped,
			&e.InputMicrosPerMTok, &e.OutputMicrosPerMTok, &e.InstanceHourMicros); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "read prices")
		}
		e.ValidFrom, e.Dropped = e.ValidFrom.UTC(), dropped == 1
		revision = max(revision, e.Revision)
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read prices")
	}
	if len(entries) == 0 {
		return billing.EmptySchedule(), nil
	}
	sch, err := billing.NewSchedule(revision, entries)
	if err != nil {
		return nil, errs.Wrap(errs.Internal, err, "stored prices")
	}
	return sch, nil
}

// AddPrices implements billing.PriceStore: one INSERT into price_schedule.
func (s *Store) AddPrices(ctx context.Context, revision uint64, entries []billing.PriceEntry) error {
	if len(entries) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+`.price_schedule (revision, base_model, billing_method, valid_from, dropped,
	input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros)`)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare prices")
	}
	for _, e := range entries {
		var dropped uint8
		if e.Dropped {
			dropped = 1
		}
		if err := b.Append(revision, e.BaseModel, e.BillingMethod, e.ValidFrom.UTC().Truncate(time.Second), dropped,
			e.InputMicrosPerMTok, e.OutputMicrosPerMTok, e.InstanceHourMicros); err != nil {
			_ = b.Abort()
			return errs.Wrap(errs.Internal, err, "append price %s %s", e.BaseModel, e.BillingMethod)
		}
	}
	if err := send(ctx, b, "price_schedule", len(entries)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d prices", len(entries))
	}
	return nil
}
