package billing

import (
	"context"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
)

// Prices returns the stored price schedule.
func (s *Service) Prices(ctx context.Context) (*Schedule, error) { return s.store.PriceSchedule(ctx) }

// AddPrices adds the entries of list that the stored schedule lacks, all
// as its next revision, and returns how many it added. The rules are
// Schedule.Added's: a stored entry never changes, and a new one starts
// after now (except in the first list ever stored). Processes add prices
// one at a time, under the "prices" lease.
func (s *Service) AddPrices(ctx context.Context, list []PriceEntry) (int, error) {
	n := 0
	err := s.locks.Hold(ctx, "prices", func(ctx context.Context) error {
		sch, err := s.store.PriceSchedule(ctx)
		if err != nil {
			return err
		}
		added, err := sch.Added(list, s.Now())
		if err != nil || len(added) == 0 {
			return err
		}
		rev := sch.Revision() + 1
		if _, err := sch.With(rev, added); err != nil {
			return err
		}
		if err := s.store.AddPrices(ctx, rev, added); err != nil {
			return err
		}
		n = len(added)
		return nil
	})
	return n, err
}

// ChangePrices is AddPrices for an API caller: admins only.
func (s *Service) ChangePrices(ctx context.Context, caller auth.Key, list []PriceEntry) (*Schedule, error) {
	if !caller.Admin {
		return nil, errs.E(errs.Forbidden, "only admins may change prices")
	}
	if len(list) == 0 {
		return nil, errs.InvalidParam("prices", "prices must list at least one entry")
	}
	if _, err := s.AddPrices(ctx, list); err != nil {
		return nil, err
	}
	return s.store.PriceSchedule(ctx)
}
