package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Streams are the JetStream streams that hold the events, one per domain.
// Each is created, at start, by the service that owns it (the one that
// publishes to it; libs/access says which); the others wait for it, so
// services start in any order.
var Streams = []jetstream.StreamConfig{
	// Billing reads lifecycle events from DEPLOY, SCALE and WORKER too (for
	// instance-hours and deletion times), so they wait as long as USAGE
	// does through a ClickHouse outage.
	{Name: "DEPLOY", Subjects: []string{"deploy.>"}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute, MaxAge: 90 * 24 * time.Hour},
	{Name: "SCALE", Subjects: []string{"scale.>"}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute, MaxAge: 90 * 24 * time.Hour},
	{Name: "WORKER", Subjects: []string{"worker.>"}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute, MaxAge: 90 * 24 * time.Hour},
	// USAGE keeps events long enough to rebuild ClickHouse after an outage.
	{Name: "USAGE", Subjects: []string{"usage.>"}, Storage: jetstream.FileStorage, Duplicates: 30 * time.Minute, MaxAge: 90 * 24 * time.Hour},
	// DEADLETTER keeps the messages consumers rejected, for as long as USAGE.
	{Name: "DEADLETTER", Subjects: []string{"deadletter.>"}, Storage: jetstream.FileStorage, Duplicates: 30 * time.Minute, MaxAge: 90 * 24 * time.Hour},
}

// Stream names, for consumers.
const (
	StreamDeploy = "DEPLOY"
	StreamScale  = "SCALE"
	StreamWorker = "WORKER"
	StreamUsage  = "USAGE"
	// StreamDeadLetter holds EventRejectedV1 dead letters.
	StreamDeadLetter = "DEADLETTER"
)

// EnsureStreams creates or updates every stream with the given number of
// replicas (1 on a single server, 3 on a cluster). It is idempotent.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range Streams {
		cfg.Replicas = max(replicas, 1)
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
