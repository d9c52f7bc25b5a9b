package natsx

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the event metrics every service shares: what it
// published and processed, and how far its consumers lag behind.
var instruments = sync.OnceValue(func() (m struct {
	published metric.Int64Counter
	processed metric.Int64Counter
	duration  metric.Float64Histogram
}) {
	meter := otel.Meter(tracerName)
	m.published, _ = meter.Int64Counter("modelport.events.published",
		metric.WithDescription("Events published to JetStream, by subject and outcome (stored or failed)."))
	m.processed, _ = meter.Int64Counter("modelport.events.processed",
		metric.WithDescription("Events a consumer handled, by consumer and outcome: acked, retried (handler error, redelivered later) or rejected (invalid, never retried)."))
	m.duration, _ = meter.Float64Histogram("modelport.events.process.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a consumer took to handle one event."))
	_, _ = meter.Int64ObservableGauge("modelport.consumer.pending",
		metric.WithDescription("Events a durable consumer has not acked yet: waiting in the stream plus delivered and unacked (JetStream consumer lag)."),
		metric.WithInt64Callback(observeLag))
	return m
})

// lagged are the consumers whose lag is reported, by stream and name.
var lagged struct {
	mu        sync.Mutex
	consumers map[[2]string]jetstream.Consumer
}

// WatchLag reports the lag of a durable consumer in modelport.consumer.pending.
// Consume calls it for its consumers; services with consumers of their own
// call it for theirs.
func WatchLag(stream, durable string, c jetstream.Consumer) {
	instruments()
	lagged.mu.Lock()
	defer lagged.mu.Unlock()
	if lagged.consumers == nil {
		lagged.consumers = map[[2]string]jetstream.Consumer{}
	}
	lagged.consumers[[2]string{stream, durable}] = c
}

func observeLag(ctx context.Context, o metric.Int64Observer) error {
	lagged.mu.Lock()
	list := make(map[[2]string]jetstream.Consumer, len(lagged.consumers))
	for k, c := range lagged.consumers {
		list[k] = c
	}
	lagged.mu.Unlock()
	for k, c := range list {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := c.Info(ictx)
		cancel()
		if err != nil {
			continue // not reachable now: no sample rather than a wrong one
		}
		o.Observe(int64(info.NumPending)+int64(info.NumAckPending),
			metric.WithAttributes(attribute.String("stream", k[0]), attribute.String("consumer", k[1])))
	}
	return nil
}

// outcome attribute values.
var (
	outcomeStored   = metric.WithAttributes(attribute.String("outcome", "stored"))
	outcomeFailed   = metric.WithAttributes(attribute.String("outcome", "failed"))
	outcomeAcked    = attribute.String("outcome", "acked")
	outcomeRetried  = attribute.String("outcome", "retried")
	outcomeRejected = attribute.String("outcome", "rejected")
)

// subjectAttr labels a metric with a subject, without the worker suffix of
// per-worker subjects, so the label has few values.
func subjectAttr(subject string) metric.MeasurementOption {
	for _, base := range []string{"scale.instance.placed.v1", "scale.instance.released.v1", "deadletter.event.rejected.v1"} {
		if len(subject) > len(base) && subject[:len(base)] == base && subject[len(base)] == '.' {
			subject = base
			break
		}
	}
	return metric.WithAttributes(attribute.String("subject", subject))
}
