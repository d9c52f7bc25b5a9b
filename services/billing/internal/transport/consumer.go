// Package transport feeds billing: usage events from JetStream in batches,
// and the usage API over HTTP.
package transport

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go/jetstream"
)

// Durable is the usage consumer's name; renaming it replays the stream.
const Durable = "billing-usage"

// BatchConfig bounds a batch by size and by how long the first event waits.
type BatchConfig struct {
	Size    int
	MaxWait time.Duration
}

// ConsumeUsage stores usage events in batches until ctx ends, then closes
// the returned channel once the batch in hand is stored and acked, so a
// clean stop leaves nothing waiting for redelivery. Events are acked only
// after their batch is in the store; when the store fails, the batch is
// redelivered after a backoff, so nothing is lost, and the store's dedupe
// by event ID keeps redeliveries from counting twice.
func ConsumeUsage(ctx context.Context, js jetstream.JetStream, svc *billing.Service, cfg BatchConfig, log *slog.Logger) (<-chan struct{}, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamUsage, jetstream.ConsumerConfig{
		Durable:       Durable,
		FilterSubject: events.SubjectRequestCompletedV1,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 4 * cfg.Size,
	})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		failures := uint64(0)
		for ctx.Err() == nil {
			err := consumeBatch(ctx, cons, svc, cfg, log)
			if err == nil {
				failures = 0
				continue
			}
			if ctx.Err() != nil {
				return
			}
			failures++
			wait := natsx.Backoff(failures)
			log.WarnContext(ctx, "usage batch not stored; events stay in JetStream and will be retried", "err", err, "retry_in", wait)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}()
	return done, nil
}

func consumeBatch(ctx context.Context, cons jetstream.Consumer, svc *billing.Service, cfg BatchConfig, log *slog.Logger) error {
	msgs, err := cons.Fetch(cfg.Size, jetstream.FetchMaxWait(cfg.MaxWait))
	if err != nil {
		return err
	}
	var batch []events.RequestCompletedV1
	var held []jetstream.Msg
	for msg := range msgs.Messages() {
		var ev events.RequestCompletedV1
		err := natsx.Decode(msg.Data(), &ev)
		if err == nil {
			err = billing.Check(ev)
		}
		if err != nil {
			log.ErrorContext(ctx, "usage event rejected", "subject", msg.Subject(), "err", err)
			_ = msg.TermWithReason(err.Error())
			continue
		}
		batch = append(batch, ev)
		held = append(held, msg)
	}
	if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		log.DebugContext(ctx, "fetch", "err", err)
	}
	if len(batch) == 0 {
		return nil
	}
	// The batch in hand is finished even when ctx ends meanwhile.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := svc.Record(storeCtx, batch); err != nil {
		for _, m := range held {
			_ = m.Nak()
		}
		return err
	}
	for _, m := range held {
		if err := m.Ack(); err != nil {
			// The batch is stored; a redelivery is deduplicated by event ID.
			log.WarnContext(ctx, "ack usage event", "err", err)
		}
	}
	return nil
}
