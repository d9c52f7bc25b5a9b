// Package natsx is how Modelport services talk over NATS JetStream:
// connecting, publishing events with their dedupe ID and trace context, and
// consuming them with typed handlers whose errors map to Ack, Nak or Term.
package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

const tracerName = "github.com/modelport/modelport/libs/natsx"

// PublishRetryWindow is how long Publish keeps retrying: longer than a
// JetStream stream takes to elect a new leader after its leader's server
// dies (up to about 9s), and than a NATS restart.
const PublishRetryWindow = 15 * time.Second

// publishAttemptTimeout bounds one publish attempt's wait for its ack.
const publishAttemptTimeout = 2 * time.Second

// Publisher publishes events to JetStream. It is safe for concurrent use.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// Publish sends ev and waits for JetStream to store it, retrying for up to
// PublishRetryWindow (or until ctx ends) while NATS reconnects or a stream
// elects a leader. The message ID is the event ID, so a retried publish is
// stored once. The trace context of ctx travels in the headers.
func (p *Publisher) Publish(ctx context.Context, ev events.Event) error {
	ctx, span := producerSpan(ctx, "publish", ev)
	defer span.End()

	msg, err := message(ctx, ev)
	if err != nil {
		return err
	}

	var lastErr error
	deadline := time.Now().Add(PublishRetryWindow)
	rec := recorderOf(p.js.Conn())
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("publish %s %s: %w", ev.Subject(), ev.EventID(), ctx.Err())
			case <-time.After(min(time.Duration(attempt)*100*time.Millisecond, time.Second)):
			}
		}
		// An attempt waits at most publishAttemptTimeout for its ack: during
		// a leader election a publish may get no answer at all, and the
		// next attempt reaches the new leader. The last one ends with the
		// window, so the window bounds the whole.
		actx, cancel := context.WithTimeout(ctx, min(publishAttemptTimeout, max(time.Until(deadline), 0)+time.Second))
		sent := time.Now()
		_, lastErr = p.js.PublishMsg(actx, msg)
		cancel()
		if lastErr == nil {
			instruments().published.Add(ctx, 1, outcomeStored, subjectAttr(ev.Subject()))
			return nil
		}
		// The server refuses this identity the subject: no retry can
		// succeed, and the refusal is already logged and counted.
		if rec.deniedSince(ev.Subject(), sent) {
			instruments().published.Add(ctx, 1, outcomeDenied, subjectAttr(ev.Subject()))
			span.RecordError(lastErr)
			return errs.Wrap(errs.Forbidden, lastErr, "publish %s %s: %s", ev.Subject(), ev.EventID(), describeDenied(rec.name, ev.Subject()))
		}
	}
	instruments().published.Add(ctx, 1, outcomeFailed, subjectAttr(ev.Subject()))
	span.RecordError(lastErr)
	return fmt.Errorf("publish %s %s: %w", ev.Subject(), ev.EventID(), lastErr)
}

// message is ev as JetStream stores it: the event ID as message ID, the
// trace context of ctx in the headers.
func message(ctx context.Context, ev events.Event) (*nats.Msg, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", ev.Subject(), err)
	}
	msg := nats.NewMsg(ev.Subject())
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, ev.EventID())
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(msg.Header))
	return msg, nil
}

// producerSpan starts the span of an event on its way to JetStream,
// named for what is done with it ("publish", "spool") and its subject.
func producerSpan(ctx context.Context, verb string, ev events.Event) (context.Context, trace.Span) {
	return otel.Tracer(tracerName).Start(ctx, verb+" "+ev.Subject(),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", ev.Subject()),
			attribute.String("messaging.message.id", ev.EventID()),
		))
}
