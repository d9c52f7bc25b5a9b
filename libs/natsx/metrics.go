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
	denied    metric.Int64Counter
}) {
	meter := otel.Meter(tracerName)
	m.published, _ = meter.Int64Counter("modelport.events.published",
		metric.WithDescription("Events published to JetStream, by subject and outcome (stored, failed, or denied: the NATS server refused this identity the subject)."))
	m.processed, _ = meter.Int64Counter("modelport.events.processed",
		metric.WithDescription("Events a consumer handled, by consumer and outcome: acked, retried (handler error, redelivered later), rejected (invalid, terminated with the reason) or dead_lettered (invalid, kept in the DEADLETTER stream with the reason)."))
	m.denied, _ = meter.Int64Counter("modelport.nats.permission_denied",
		metric.WithDescription("Operations the NATS server refused this process's identity, by identity, operation (publish or subscribe) and subject (the stream or bucket, without keys or IDs). Any is a bug or an intrusion: the permission table is docs/security.md."))
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
	// All consumers at once, under one deadline, so a slow NATS cannot
	// make a scrape take longer than a scraper waits.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	type sample struct {
		key     [2]string
		pending int64
	}
	samples := make(chan sample, len(list))
	var wg sync.WaitGroup
	for k, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if info, err := c.Info(ctx); err == nil {
				samples <- sample{k, int64(info.NumPending) + int64(info.NumAckPending)}
			} // not reachable now: no sample rather than a wrong one
		}()
	}
	wg.Wait()
	close(samples)
	for s := range samples {
		o.Observe(s.pending, metric.WithAttributes(attribute.String("stream", s.key[0]), attribute.String("consumer", s.key[1])))
	}
	return nil
}

// outcome attribute values.
var (
	outcomeStored   = metric.WithAttributes(attribute.String("outcome", "stored"))
	outcomeFailed   = metric.WithAttributes(attribute.String("outcome", "failed"))
	outcomeDenied   = metric.WithAttributes(attribute.String("outcome", "denied"))
	outcomeAcked    = attribute.String("outcome", Acked)
	outcomeRetried  = attribute.String("outcome", Retried)
	outcomeRejected = attribute.String("outcome", Rejected)
)

// subjectAttr labels a metric with a subject, without the worker suffix of
// per-worker subjects, so the label has few values.
func subjectAttr(subject string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("subject", eventSubject(subject)))
}

// eventSubject is subject without the worker or consumer suffix of the
// subjects that have one.
func eventSubject(subject string) string {
	for _, base := range []string{"scale.instance.placed.v1", "scale.instance.released.v1", "deadletter.event.rejected.v1"} {
		if len(subject) > len(base) && subject[:len(base)] == base && subject[len(base)] == '.' {
			return base
		}
	}
	return subject
}

// Outcomes a consumer counts with CountProcessed.
const (
	Acked        = "acked"
	Retried      = "retried"
	Rejected     = "rejected"
	DeadLettered = "dead_lettered"
)

// CountProcessed adds n events a consumer of its own handled to
// modelport.events.processed, as Consume does for its consumers.
func CountProcessed(ctx context.Context, consumer, outcome string, n int) {
	if n > 0 {
		instruments().processed.Add(ctx, int64(n), metric.WithAttributes(attribute.String("consumer", consumer), attribute.String("outcome", outcome)))
	}
}
