package clickhouse

import (
	"context"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// SyncPrices writes the prices that differ from current_prices (or are not
// there), versioned by the current time, so the prices table analysts
// join with is the list billing runs with. A model dropped from the list
// keeps its last row. It returns how many rows it wrote.
func (s *Store) SyncPrices(ctx context.Context, prices []billing.Price) (int, error) {
	current := map[[2]string]billing.Price{}
	rows, err := s.conn.Query(ctx, "SELECT base_model, billing_method, input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros FROM "+s.db+".current_prices")
	if err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "read prices")
	}
	for rows.Next() {
		var p billing.Price
		if err := rows.Scan(&p.BaseModel, &p.BillingMethod, &p.InputMicrosPerMTok, &p.OutputMicrosPerMTok, &p.InstanceHourMicros); err != nil {
			rows.Close()
			return 0, errs.Wrap(errs.Unavailable, err, "read prices")
		}
		current[[2]string{p.BaseModel, p.BillingMethod}] = p
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "read prices")
	}
	var changed []billing.Price
	for _, p := range prices {
		if cur, ok := current[[2]string{p.BaseModel, p.BillingMethod}]; !ok || cur != p {
			changed = append(changed, p)
		}
	}
	if len(changed) == 0 {
		return 0, nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".prices (base_model, billing_method, input_micros_per_mtok, output_micros_per_mtok, instance_hour_micros, updated_at)")
	if err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "prepare prices")
	}
	// The new version must sort after the current one, even within the
	// same second.
	var latest time.Time
	if err := s.conn.QueryRow(ctx, "SELECT max(updated_at) FROM "+s.db+".prices").Scan(&latest); err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "read prices")
	}
	now := time.Now().UTC().Truncate(time.Second)
	if !now.After(latest) {
		now = latest.UTC().Add(time.Second)
	}
	for _, p := range changed {
		if err := b.Append(p.BaseModel, p.BillingMethod, p.InputMicrosPerMTok, p.OutputMicrosPerMTok, p.InstanceHourMicros, now); err != nil {
			_ = b.Abort()
			return 0, errs.Wrap(errs.Internal, err, "append price %s %s", p.BaseModel, p.BillingMethod)
		}
	}
	if err := b.Send(); err != nil {
		return 0, errs.Wrap(errs.Unavailable, err, "insert %d prices", len(changed))
	}
	return len(changed), nil
}
