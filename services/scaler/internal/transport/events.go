// Package transport feeds the scaler: service events from JetStream and a
// periodic sweep.
package transport

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/scaler/internal/scale"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeServiceEvents reconciles a service each time it is created,
// scaled or deleted, or one of its instances failed: the scaler places or releases instances until the
// service has the count its record asks for.
func ConsumeServiceEvents(ctx context.Context, js jetstream.JetStream, s *scale.Scaler, log *slog.Logger) error {
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamDeploy, Durable: "scaler-service-created", Filter: events.SubjectServiceCreatedV1,
	}, log, func(ctx context.Context, ev events.ServiceCreatedV1) error {
		return s.ReconcileService(ctx, ev.ServiceID)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamDeploy, Durable: "scaler-service-scaled", Filter: events.SubjectServiceScaledV1,
	}, log, func(ctx context.Context, ev events.ServiceScaledV1) error {
		return s.ReconcileService(ctx, ev.ServiceID)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamWorker, Durable: "scaler-instance-failed", Filter: events.SubjectInstanceFailedV1,
	}, log, func(ctx context.Context, ev events.InstanceFailedV1) error {
		return s.InstanceFailed(ctx, ev)
	}); err != nil {
		return err
	}
	return natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamDeploy, Durable: "scaler-service-deleted", Filter: events.SubjectServiceDeletedV1,
	}, log, func(ctx context.Context, ev events.ServiceDeletedV1) error {
		return s.ReconcileService(ctx, ev.ServiceID)
	})
}

// Sweep reconciles every service each interval until ctx ends.
func Sweep(ctx context.Context, s *scale.Scaler, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.ReconcileAll(ctx); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "reconcile sweep", "err", err)
			}
		}
	}
}

// Purger removes old delete markers; kvstore.Store implements it.
type Purger interface {
	PurgeMarkers(ctx context.Context, olderThan time.Duration) error
}

// Tidy purges the delete markers older than retention each interval until
// ctx ends.
func Tidy(ctx context.Context, p Purger, every, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.PurgeMarkers(ctx, retention); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "purge delete markers", "err", err)
			}
		}
	}
}

// Retry calls f until it succeeds or ctx ends, waiting a little longer
// after each failure: setting up consumers while NATS restarts.
func Retry(ctx context.Context, what string, log *slog.Logger, f func() error) error {
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		log.WarnContext(ctx, what, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}
