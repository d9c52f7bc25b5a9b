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
