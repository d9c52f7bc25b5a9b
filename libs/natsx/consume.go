package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Handler processes one decoded event. Returning nil acks it; an error of
// kind errs.Invalid terminates it (it will never succeed); any other error
// naks it for redelivery with backoff.
type Handler[T any] func(ctx context.Context, ev T) error

// Subscription names a durable consumer: the stream it reads, the subject
// filter, and its durable name, which is the handler's name (renaming it
// replays the stream).
type Subscription struct {
	Stream  string
	Durable string
	Filter  string
	// DeliverNew starts a new consumer at the end of the stream instead of
	// the beginning.
	DeliverNew bool
	// InactiveThreshold removes the consumer after this long without a
	// reader; zero keeps it forever. Per-instance consumers set it, so
	// those of replaced instances do not pile up.
	InactiveThreshold time.Duration
}

// Backoff is the redelivery delay after a failed attempt.
func Backoff(attempt uint64) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 7) // 200ms .. 12.8s
	return min(d, 10*time.Second)
}

// Consume starts a durable pull consumer that feeds h one event at a time
// until ctx is done. It returns once the consumer is set up.
func Consume[T any](ctx context.Context, js jetstream.JetStream, sub Subscription, log *slog.Logger, h Handler[T]) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       sub.Durable,
		FilterSubject: sub.Filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 256,
	}
	cfg.InactiveThreshold = sub.InactiveThreshold
	if sub.DeliverNew {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, sub.Stream, cfg)
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", sub.Durable, sub.Stream, err)
	}
	WatchLag(sub.Stream, sub.Durable, cons)
	log = log.With("consumer", sub.Durable)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		handle(ctx, msg, sub.Durable, log, h)
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		log.Debug("consume", "err", err)
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", sub.Durable, err)
	}
	go func() {
		<-ctx.Done()
		cc.Drain()
	}()
	return nil
}

func handle[T any](ctx context.Context, msg jetstream.Msg, consumer string, log *slog.Logger, h Handler[T]) {
	start := time.Now()
	outcome := outcomeAcked
	defer func() {
		m := instruments()
		m.processed.Add(ctx, 1, metric.WithAttributes(attribute.String("consumer", consumer), outcome))
		m.duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(attribute.String("consumer", consumer)))
	}()
	ctx = otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(msg.Headers()))
	ctx, span := otel.Tracer(tracerName).Start(ctx, "process "+msg.Subject(),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject()),
			attribute.String("messaging.message.id", msg.Headers().Get(jetstream.MsgIDHeader)),
		))
	defer span.End()

	var ev T
	err := Decode(msg.Data(), &ev)
	if err == nil {
		err = h(ctx, ev)
	}
	if err == nil {
		if aerr := msg.Ack(); aerr != nil {
			log.WarnContext(ctx, "ack", "subject", msg.Subject(), "err", aerr)
		}
		return
	}
	span.SetStatus(codes.Error, err.Error())
	if errs.KindOf(err) == errs.Invalid {
		outcome = outcomeRejected
		log.ErrorContext(ctx, "event rejected", "subject", msg.Subject(), "err", err)
		_ = msg.TermWithReason(err.Error())
		return
	}
	var attempt uint64 = 1
	if md, mdErr := msg.Metadata(); mdErr == nil {
		attempt = md.NumDelivered
	}
	outcome = outcomeRetried
	log.WarnContext(ctx, "event will be retried", "subject", msg.Subject(), "attempt", attempt, "err", err)
	_ = msg.NakWithDelay(Backoff(attempt))
}

// Decode decodes an event. Unknown fields are ignored, since adding an
// optional field keeps a contract version; malformed JSON is errs.Invalid.
func Decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return errs.Wrap(errs.Invalid, err, "decode event")
	}
	return nil
}
