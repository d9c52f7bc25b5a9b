package transport

import (
	"context"
	"errors"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go/jetstream"
)

// Sightings reads the workers' latest heartbeats (the workers bucket,
// whose entries expire with their worker) and returns, by instance ID,
// the heartbeat that lists each running instance: evidence that it runs.
func Sightings(ctx context.Context, workers jetstream.KeyValue) (map[string]billing.Sighting, error) {
	workersNow, err := state.List[state.Worker](ctx, workers, ">")
	if err != nil {
		return nil, err
	}
	out := map[string]billing.Sighting{}
	for _, w := range workersNow {
		for _, inst := range w.Instances {
			if prev, ok := out[inst]; !ok || w.BeatAt.After(prev.At) {
				out[inst] = billing.Sighting{InstanceID: inst, WorkerID: w.ID, At: w.BeatAt.UTC()}
			}
		}
	}
	return out, nil
}

// CaughtUp reports whether every one of consumers (stream and durable)
// exists and has nothing waiting or in flight: all it was given is
// stored.
func CaughtUp(ctx context.Context, js jetstream.JetStream, consumers [][2]string) (bool, error) {
	for _, c := range consumers {
		cons, err := js.Consumer(ctx, c[0], c[1])
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false, nil
		}
		if err != nil {
			return false, errs.Wrap(errs.Unavailable, err, "consumer %s", c[1])
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, errs.Wrap(errs.Unavailable, err, "consumer %s", c[1])
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return false, nil
		}
	}
	return true, nil
}
