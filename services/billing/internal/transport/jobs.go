package transport

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Job is work billing does on a schedule, in one process at a time.
type Job struct {
	Name  string
	Every time.Duration
	Run   func(ctx context.Context) error
}

// jobRuns counts job runs by job and outcome.
var jobRuns = func() metric.Int64Counter {
	c, _ := otel.Meter("github.com/modelport/modelport/services/billing").Int64Counter("modelport.billing.job.runs",
		metric.WithDescription("Runs of billing's scheduled jobs (rollup, rollup_check, reconcile), by job and outcome (ok or failed)."))
	return c
}()

// Leader runs work in one process at a time: it campaigns for the lease
// name and calls lead, with a context that ends when the lease is lost,
// each time it wins it, until ctx ends. *lease.Leases implements it.
type Leader interface {
	Lead(ctx context.Context, name string, lead func(ctx context.Context))
}

// RunJobs runs jobs, each every Every, in whichever billing process holds
// the "jobs" lease; the others wait to take it over. It returns when ctx
// ends. A failed run is logged and counted, and the job runs again at its
// next turn.
func RunJobs(ctx context.Context, leases Leader, jobs []Job, log *slog.Logger) {
	leases.Lead(ctx, "jobs", func(ctx context.Context) {
		log.InfoContext(ctx, "this billing process runs the scheduled jobs")
		runAll(ctx, jobs, log)
	})
}

// runAll runs each job at once, then every Every, until ctx ends.
func runAll(ctx context.Context, jobs []Job, log *slog.Logger) {
	next := make([]time.Time, len(jobs))
	for ctx.Err() == nil {
		now := time.Now()
		wait := time.Hour
		for i, j := range jobs {
			if !now.Before(next[i]) {
				run(ctx, j, log)
				next[i] = time.Now().Add(j.Every)
			}
			wait = min(wait, time.Until(next[i]))
		}
		select {
		case <-ctx.Done():
		case <-time.After(max(wait, 10*time.Millisecond)):
		}
	}
}

func run(ctx context.Context, j Job, log *slog.Logger) {
	start := time.Now()
	err := j.Run(ctx)
	outcome := "ok"
	if err != nil {
		outcome = "failed"
		if ctx.Err() == nil {
			log.ErrorContext(ctx, "scheduled job failed", "job", j.Name, "err", err)
		}
	} else {
		log.DebugContext(ctx, "scheduled job done", "job", j.Name, "took", time.Since(start))
	}
	jobRuns.Add(ctx, 1, metric.WithAttributes(attribute.String("job", j.Name), attribute.String("outcome", outcome)))
}
