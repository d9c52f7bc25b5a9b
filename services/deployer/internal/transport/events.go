package transport

import (
	"context"
	"log/slog"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeInstanceEvents keeps services' ready counts and statuses current
// from the workers' instance events and the scaler's placements, and
// applies the autoscaler's decisions.
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
