package transport

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumePlacements feeds the placements addressed to w into it, through a
// durable consumer named after the worker, until ctx ends.
func ConsumePlacements(ctx context.Context, js jetstream.JetStream, w *worker.Worker, log *slog.Logger) error {
	return natsx.Consume(ctx, js, natsx.Subscription{
		Stream:  events.StreamScale,
		Durable: "inference-worker-" + w.ID(),
		Filter:  events.PlacementSubject(w.ID()),
		// A worker replaced under a new ID leaves its consumer behind.
		InactiveThreshold: 24 * time.Hour,
	}, log, w.StartInstance)
}

// ConsumeReleases feeds the releases addressed to w into it, through a
// durable consumer named after the worker, until ctx ends.
func ConsumeReleases(ctx context.Context, js jetstream.JetStream, w *worker.Worker, log *slog.Logger) error {
	return natsx.Consume(ctx, js, natsx.Subscription{
		Stream:  events.StreamScale,
		Durable: "inference-worker-release-" + w.ID(),
		Filter:  events.ReleaseSubject(w.ID()),
		// A worker replaced under a new ID leaves its consumer behind.
		InactiveThreshold: 24 * time.Hour,
	}, log, w.StopInstance)
}
