package transport

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeInstanceEvents keeps services' ready counts and statuses current
// from the workers' instance events and the scaler's placements and
// releases (a dead worker's instances), and applies the autoscaler's
// decisions. The consumers run until ctx ends.
func ConsumeInstanceEvents(ctx context.Context, js jetstream.JetStream, m *deploy.Manager, log *slog.Logger) error {
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamWorker, Durable: "deployer-instance-ready", Filter: events.SubjectInstanceReadyV1,
	}, log, func(ctx context.Context, ev events.InstanceReadyV1) error {
		return m.RefreshReady(ctx, ev.ServiceID)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamWorker, Durable: "deployer-instance-stopped", Filter: events.SubjectInstanceStoppedV1,
	}, log, func(ctx context.Context, ev events.InstanceStoppedV1) error {
		return m.RefreshReady(ctx, ev.ServiceID)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamScale, Durable: "deployer-instance-gone", Filter: events.SubjectInstanceReleasedV1 + ".>",
	}, log, func(ctx context.Context, ev events.InstanceReleasedV1) error {
		return m.InstanceGone(ctx, ev)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamWorker, Durable: "deployer-instance-failed", Filter: events.SubjectInstanceFailedV1,
	}, log, func(ctx context.Context, ev events.InstanceFailedV1) error {
		return m.InstanceFailed(ctx, ev)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamScale, Durable: "deployer-instance-placed", Filter: events.PlacementSubject("*"),
	}, log, func(ctx context.Context, ev events.InstancePlacedV1) error {
		return m.Placed(ctx, ev.ServiceID)
	}); err != nil {
		return err
	}
	if err := natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamScale, Durable: "deployer-placement-failed", Filter: events.SubjectPlacementFailedV1,
	}, log, func(ctx context.Context, ev events.PlacementFailedV1) error {
		return m.PlacementFailed(ctx, ev)
	}); err != nil {
		return err
	}
	return natsx.Consume(ctx, js, natsx.Subscription{
		Stream: events.StreamScale, Durable: "deployer-service-autoscaled", Filter: events.SubjectServiceAutoscaledV1,
	}, log, func(ctx context.Context, ev events.ServiceAutoscaledV1) error {
		return m.ApplyAutoscale(ctx, ev, log)
	})
}

// Reconcile runs the manager's sweep each interval until ctx ends, the
// first time at once.
func Reconcile(ctx context.Context, m *deploy.Manager, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "reconcile sweep", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// NameTidier frees names claimed for services that are gone;
// kvstore.Store implements it.
type NameTidier interface {
	TidyNames(ctx context.Context, minAge time.Duration) error
}

// Purger removes old delete markers; kvstore.Store and kvstore.Claims
// implement it.
type Purger interface {
	PurgeMarkers(ctx context.Context, olderThan time.Duration) error
}

// Tidy frees stray names and purges the delete markers older than
// state.MarkerRetention each interval until ctx ends.
func Tidy(ctx context.Context, names NameTidier, purgers []Purger, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := names.TidyNames(ctx, time.Minute); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "tidy names", "err", err)
		}
		for _, p := range purgers {
			if err := p.PurgeMarkers(ctx, state.MarkerRetention); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "purge delete markers", "err", err)
			}
		}
	}
}
