package app

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
	"github.com/modelport/modelport/services/billing/internal/transport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// gauges are the latest readings of the scheduled jobs, served on
// /metrics by the process that runs them (-1: not measured here).
var gauges = struct {
	openIntervals, openOverDay, mismatchedHours, rollupLag atomic.Int64
}{}

var (
	meter         = otel.Meter("github.com/modelport/modelport/services/billing")
	intervalsLost = func() metric.Int64Counter {
		c, _ := meter.Int64Counter("modelport.billing.intervals.lost",
			metric.WithDescription("Instance intervals billing ended itself because no event or heartbeat showed the instance running for longer than the instance lease."))
		return c
	}()
)

func init() {
	observe := func(name, unit, desc string, g *atomic.Int64) {
		g.Store(-1)
		_, _ = meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc),
			metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
				if v := g.Load(); v >= 0 {
					o.Observe(v)
				}
				return nil
			}))
	}
	observe("modelport.billing.intervals.open", "", "Instances billed as running.", &gauges.openIntervals)
	observe("modelport.billing.intervals.open_over_day", "",
		"Instances billed as running with no evidence (event or heartbeat) for more than a day: should always be 0.", &gauges.openOverDay)
	observe("modelport.billing.rollup.mismatched_hours", "",
		"Hours in the last 7 days where usage_hourly disagrees with the raw events, at the last rollup check: should always be 0.", &gauges.mismatchedHours)
	observe("modelport.billing.rollup.lag", "s", "How far the filled part of usage_hourly ends behind now.", &gauges.rollupLag)
}

// rollupBudget bounds one rollup run; a backfill goes on at the next.
const rollupBudget = 30 * time.Second

// jobs returns billing's scheduled jobs.
func jobs(cfg Config, svc *billing.Service, store *clickhouse.Store, bus *natsx.Bus, log *slog.Logger) []transport.Job {
	return []transport.Job{
		{Name: "rollup", Every: cfg.RollupEvery, Run: func(ctx context.Context) error {
			now := svc.Now()
			r, err := store.FillRollup(ctx, now.Add(-cfg.RollupGrace), cfg.RollupSettle, rollupBudget)
			if !r.State.FilledThrough.IsZero() {
				gauges.rollupLag.Store(int64(now.Sub(r.State.FilledThrough) / time.Second))
			}
			if len(r.Refilled) > 0 {
				log.InfoContext(ctx, "hours filled again in the rollup: usage for them arrived late", "hours", len(r.Refilled))
			}
			return err
		}},
		{Name: "rollup_check", Every: cfg.RollupCheckEvery, Run: func(ctx context.Context) error {
			now := svc.Now()
			bad, err := store.CheckRollup(ctx, now.Add(-RollupCheckWindow), now)
			if err != nil {
				return err
			}
			gauges.mismatchedHours.Store(int64(len(bad)))
			if len(bad) > 0 {
				log.WarnContext(ctx, "usage_hourly disagrees with the raw events; those hours will be filled again", "hours", len(bad), "first", bad[0])
			}
			return nil
		}},
		{Name: "reconcile", Every: cfg.ReconcileEvery, Run: func(ctx context.Context) error {
			defer func() {
				if open, stale, err := svc.OpenIntervals(ctx); err == nil {
					gauges.openIntervals.Store(int64(open))
					gauges.openOverDay.Store(int64(stale))
				}
			}()
			// An instance whose stop is still on its way must not be
			// taken for lost: wait until the lifecycle consumers have
			// stored everything.
			ok, err := transport.CaughtUp(ctx, bus.JS, transport.Lifecycle)
			if err != nil || !ok {
				return err
			}
			seen, err := transport.Sightings(ctx, bus.KV(state.BucketWorkers))
			if err != nil {
				return err
			}
			r, err := svc.Reconcile(ctx, seen, cfg.InstanceLease)
			if len(r.Ended) > 0 {
				intervalsLost.Add(ctx, int64(len(r.Ended)))
				for _, e := range r.Ended {
					log.WarnContext(ctx, "instance billed as running with no evidence it runs: its time ends at the last evidence",
						"service_id", e.ServiceID, "instance_id", e.InstanceID, "worker_id", e.WorkerID, "ended_at", e.At)
				}
			}
			return err
		}},
	}
}
