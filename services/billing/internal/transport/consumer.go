// Package transport feeds billing: usage and lifecycle events from
// JetStream in batches, dead letters, and the usage API over HTTP.
package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Durable names of billing's consumers; renaming one replays its stream.
const (
	Durable          = "billing-usage"     // usage.request.completed.v1 from USAGE
	DurableInstances = "billing-instances" // worker.instance.ready.v1 and stopped.v1 from WORKER
	DurableServices  = "billing-services"  // deploy.service.created.v1 and deleted.v1 from DEPLOY
	DurableReleases  = "billing-releases"  // scale.instance.released.v1.* from SCALE, kept when worker_gone
	// DurableFailures reads worker.instance.failed.v1 from WORKER. It is a
	// consumer of its own, added after the others, so that it starts from
	// the beginning of the stream and ends the time of instances that
	// failed before billing read failures.
	DurableFailures = "billing-failures"
)

// Durables lists billing's consumers, whose dead letters the report counts.
var Durables = []string{Durable, DurableInstances, DurableServices, DurableReleases, DurableFailures}

// Lifecycle lists the consumers (stream and durable) that instance time
// depends on: an instance may be taken for lost only once they have
// stored everything.
var Lifecycle = [][2]string{{events.StreamWorker, DurableInstances}, {events.StreamWorker, DurableFailures}, {events.StreamScale, DurableReleases}}

// errSkip is what a decoder returns for a valid event billing has no use
// for: it is acked and not stored.
var errSkip = errors.New("not billed")

// BatchConfig bounds a batch by size and by how long the first event
// waits, and says how many batches are stored at once.
type BatchConfig struct {
	Size    int
	MaxWait time.Duration
	// Inserters is how many batches are decoded and stored at once while
	// the next is received; 0 is one.
	Inserters int
}

// batchConsumer reads one durable pull consumer in batches. JetStream
// delivers messages continuously to one goroutine, which cuts them into
// batches (full, or once the first has waited cfg.MaxWait); each of
// cfg.Inserters goroutines takes one at a time,
// decodes each message (an Invalid error dead-letters it, errSkip acks it
// unstored), stores the batch, then acks it. So a message is acked only
// once the insert that holds it succeeded, whatever order batches finish
// in. A batch the store refuses is nakked whole and retried with backoff.
type batchConsumer[T any] struct {
	durable string
	stream  string
	filters []string
	decode  func(subject string, data []byte) (T, error)
	store   func(ctx context.Context, batch []T) error
	// storeAgain, when set, stores instead of store the events JetStream
	// delivered before, which an earlier attempt may have stored.
	storeAgain func(ctx context.Context, batch []T) error
	dead       *DeadLetters
	cfg        BatchConfig
	log        *slog.Logger
}

// start creates or updates the consumer and reads it until ctx ends, then
// closes the returned channel once the batches in hand are stored and
// acked, so a clean stop leaves nothing waiting for redelivery.
func (c *batchConsumer[T]) start(ctx context.Context, js jetstream.JetStream) (<-chan struct{}, error) {
	size := max(c.cfg.Size, 1)
	inserters := max(c.cfg.Inserters, 1)
	cfg := jetstream.ConsumerConfig{
		Durable:       c.durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: (inserters + 3) * size, // being stored, being cut, and received ahead in two buffers
	}
	if len(c.filters) == 1 {
		cfg.FilterSubject = c.filters[0]
	} else {
		cfg.FilterSubjects = c.filters
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, c.stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", c.durable, c.stream, err)
	}
	natsx.WatchLag(c.stream, c.durable, cons)
	log := c.log.With("consumer", c.durable)
	fetched := make(chan []jetstream.Msg)
	var inserting sync.WaitGroup
	for range inserters {
		inserting.Add(1)
		go func() {
			defer inserting.Done()
			c.insert(ctx, fetched, log)
		}()
	}
	// JetStream pushes messages to a Consume callback, up to size of them
	// ahead of the batches; batch cuts them into batches.
	delivered := make(chan jetstream.Msg, size)
	go c.receive(ctx, cons, size, delivered, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer inserting.Wait()
		defer close(fetched)
		// Batches are handed over even after ctx has ended: the
		// inserters store what was received before they stop.
		c.batch(delivered, size, fetched)
	}()
	return done, nil
}

// receive hands each message the consumer delivers to delivered until ctx
// ends, then stops asking for more, hands over those already received,
// and closes delivered. Should consuming stop by itself (the consumer
// deleted, the connection closed), it starts again with backoff.
func (c *batchConsumer[T]) receive(ctx context.Context, cons jetstream.Consumer, size int, delivered chan<- jetstream.Msg, log *slog.Logger) {
	defer close(delivered)
	failures := uint64(0)
	for ctx.Err() == nil {
		cc, err := cons.Consume(func(msg jetstream.Msg) { delivered <- msg },
			jetstream.PullMaxMessages(size),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				log.DebugContext(ctx, "consume", "err", err)
			}))
		if err == nil {
			select {
			case <-ctx.Done():
				cc.Drain()
				<-cc.Closed()
				return
			case <-cc.Closed():
				err = errors.New("consuming stopped")
			}
		}
		failures++
		wait := natsx.Backoff(failures)
		log.WarnContext(ctx, "consume failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// batch cuts the messages from delivered into batches of at most size,
// each handed to fetched once full or once its first message has waited
// cfg.MaxWait, until delivered closes.
func (c *batchConsumer[T]) batch(delivered <-chan jetstream.Msg, size int, fetched chan<- []jetstream.Msg) {
	timer := time.NewTimer(c.cfg.MaxWait)
	timer.Stop()
	for {
		first, ok := <-delivered
		if !ok {
			return
		}
		msgs := make([]jetstream.Msg, 1, size)
		msgs[0] = first
		timer.Reset(c.cfg.MaxWait)
	fill:
		for len(msgs) < size {
			select {
			case msg, ok := <-delivered:
				if !ok {
					break fill
				}
				msgs = append(msgs, msg)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		fetched <- msgs
	}
}

// insert stores the batches it takes from fetched until fetched closes,
// backing off after a batch that was not stored.
func (c *batchConsumer[T]) insert(ctx context.Context, fetched <-chan []jetstream.Msg, log *slog.Logger) {
	failures := uint64(0)
	for msgs := range fetched {
		err := c.process(ctx, msgs, log)
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			// Nakked; the next start reads it again.
			continue
		}
		failures++
		wait := natsx.Backoff(failures)
		log.WarnContext(ctx, "batch not stored; its events stay in JetStream and will be retried", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// process decodes, stores and acks one fetched batch.
func (c *batchConsumer[T]) process(ctx context.Context, msgs []jetstream.Msg, log *slog.Logger) error {
	batch := make([]T, 0, len(msgs))
	held := make([]jetstream.Msg, 0, len(msgs))
	var again []T
	var heldAgain []jetstream.Msg
	for _, msg := range msgs {
		ev, err := c.decode(msg.Subject(), msg.Data())
		if errors.Is(err, errSkip) {
			if err := msg.Ack(); err != nil {
				// Redelivered, it is skipped again.
				log.WarnContext(ctx, "ack", "err", err)
			}
			continue
		}
		if err != nil {
			c.reject(ctx, msg, err, log)
			continue
		}
		if c.storeAgain != nil && redelivered(msg) {
			again = append(again, ev)
			heldAgain = append(heldAgain, msg)
			continue
		}
		batch = append(batch, ev)
		held = append(held, msg)
	}
	held = append(held, heldAgain...)
	if len(held) == 0 {
		return nil
	}
	// The batch's span links to each publisher's span.
	var links []trace.Link
	for _, m := range held[:min(len(held), maxLinks)] {
		pc := trace.SpanContextFromContext(otel.GetTextMapPropagator().Extract(ctx, natsx.HeaderCarrier(m.Headers())))
		if pc.IsValid() {
			links = append(links, trace.Link{SpanContext: pc})
		}
	}
	ctx, span := otel.Tracer(tracerName).Start(ctx, "process "+c.durable+" batch",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.consumer.group.name", c.durable),
			attribute.Int("messaging.batch.message_count", len(held)),
		))
	defer span.End()
	// The batch in hand is finished even when ctx ends meanwhile.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := error(nil)
	if len(batch) > 0 {
		err = c.store(storeCtx, batch)
	}
	if err == nil && len(again) > 0 {
		err = c.storeAgain(storeCtx, again)
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		for _, m := range held {
			_ = m.Nak()
		}
		natsx.CountProcessed(ctx, c.durable, natsx.Retried, len(held))
		return err
	}
	natsx.CountProcessed(ctx, c.durable, natsx.Acked, len(held))
	for _, m := range held {
		if err := m.Ack(); err != nil {
			// The batch is stored; a redelivery is deduplicated by event ID.
			log.WarnContext(ctx, "ack", "err", err)
		}
	}
	return nil
}

// redelivered reports whether JetStream delivered msg before.
func redelivered(msg jetstream.Msg) bool {
	md, err := msg.Metadata()
	return err != nil || md.NumDelivered > 1
}

// reject dead-letters an invalid message. When the dead letter cannot be
// stored, the message is nakked with backoff and rejected again later.
func (c *batchConsumer[T]) reject(ctx context.Context, msg jetstream.Msg, reason error, log *slog.Logger) {
	log.ErrorContext(ctx, "event rejected to the dead-letter stream", "subject", msg.Subject(),
		"msg_id", msg.Headers().Get(jetstream.MsgIDHeader), "err", reason)
	if err := c.dead.Reject(ctx, c.durable, msg, reason); err != nil {
		natsx.CountProcessed(ctx, c.durable, natsx.Retried, 1)
		log.WarnContext(ctx, "dead letter not stored; the event will be retried", "err", err)
		attempt := uint64(1)
		if md, mdErr := msg.Metadata(); mdErr == nil {
			attempt = md.NumDelivered
		}
		_ = msg.NakWithDelay(natsx.Backoff(attempt))
		return
	}
	natsx.CountProcessed(ctx, c.durable, natsx.DeadLettered, 1)
}

// maxLinks bounds the span links of one batch.
const maxLinks = 128

const tracerName = "github.com/modelport/modelport/services/billing/internal/transport"

// Consume starts billing's consumers: usage, instance lifecycle (the
// workers' ready, stopped and failed events, and the scaler's releases of
// instances whose worker died), and service lifecycle. The returned
// channel closes once all have stopped after ctx ends.
func Consume(ctx context.Context, js jetstream.JetStream, svc *billing.Service, dead *DeadLetters, cfg BatchConfig, log *slog.Logger) (<-chan struct{}, error) {
	small := BatchConfig{Size: min(cfg.Size, 100), MaxWait: cfg.MaxWait, Inserters: 1}
	consumers := []interface {
		start(context.Context, jetstream.JetStream) (<-chan struct{}, error)
	}{
		&batchConsumer[events.RequestCompletedV1]{
			durable: Durable, stream: events.StreamUsage, filters: []string{events.SubjectRequestCompletedV1},
			decode: decodeUsage, store: svc.Record, storeAgain: svc.RecordRedelivered, dead: dead, cfg: cfg, log: log,
		},
		&batchConsumer[billing.InstanceEvent]{
			durable: DurableInstances, stream: events.StreamWorker,
			filters: []string{events.SubjectInstanceReadyV1, events.SubjectInstanceStoppedV1},
			decode:  decodeInstance, store: svc.RecordInstances, dead: dead, cfg: small, log: log,
		},
		&batchConsumer[billing.InstanceEvent]{
			durable: DurableFailures, stream: events.StreamWorker,
			filters: []string{events.SubjectInstanceFailedV1},
			decode:  decodeInstance, store: svc.RecordInstances, dead: dead, cfg: small, log: log,
		},
		&batchConsumer[billing.InstanceEvent]{
			durable: DurableReleases, stream: events.StreamScale,
			filters: []string{events.SubjectInstanceReleasedV1 + ".>"},
			decode:  decodeRelease, store: svc.RecordInstances, dead: dead, cfg: small, log: log,
		},
		&batchConsumer[billing.ServiceEvent]{
			durable: DurableServices, stream: events.StreamDeploy,
			filters: []string{events.SubjectServiceCreatedV1, events.SubjectServiceDeletedV1},
			decode:  decodeService, store: svc.RecordServices, dead: dead, cfg: small, log: log,
		},
	}
	// All or none: when one cannot start, those already started are
	// stopped (finishing the batch in hand) before the error returns, so
	// the caller can simply try again.
	ctx, cancel := context.WithCancel(ctx)
	var dones []<-chan struct{}
	for _, c := range consumers {
		d, err := c.start(ctx, js)
		if err != nil {
			cancel()
			for _, d := range dones {
				<-d
			}
			return nil, err
		}
		dones = append(dones, d)
	}
	all := make(chan struct{})
	go func() {
		defer close(all)
		defer cancel()
		for _, d := range dones {
			<-d
		}
	}()
	return all, nil
}

// decodeUsage decodes and checks a usage event: the plain form
// publishers write without reflection, anything else with
// encoding/json, which decides what is malformed.
func decodeUsage(_ string, data []byte) (events.RequestCompletedV1, error) {
	ev, ok := decodeUsagePlain(data)
	if !ok {
		var err error
		if ev, err = decodeUsageJSON(data); err != nil {
			return ev, err
		}
	}
	return ev, billing.Check(ev)
}

// decodeUsageJSON decodes with encoding/json. It is a function of its own
// so that only its event, handed to Decode, is allocated on the heap.
func decodeUsageJSON(data []byte) (events.RequestCompletedV1, error) {
	var ev events.RequestCompletedV1
	err := natsx.Decode(data, &ev)
	return ev, err
}

func decodeInstance(subject string, data []byte) (billing.InstanceEvent, error) {
	var out billing.InstanceEvent
	switch subject {
	case events.SubjectInstanceReadyV1:
		var ev events.InstanceReadyV1
		if err := natsx.Decode(data, &ev); err != nil {
			return out, err
		}
		out = billing.InstanceFromReady(ev)
	case events.SubjectInstanceStoppedV1:
		var ev events.InstanceStoppedV1
		if err := natsx.Decode(data, &ev); err != nil {
			return out, err
		}
		out = billing.InstanceFromStopped(ev)
	case events.SubjectInstanceFailedV1:
		var ev events.InstanceFailedV1
		if err := natsx.Decode(data, &ev); err != nil {
			return out, err
		}
		out = billing.InstanceFromFailed(ev)
	default:
		return out, errs.E(errs.Invalid, "unexpected subject %s", subject)
	}
	return out, billing.CheckInstanceEvent(out)
}

// decodeRelease keeps the releases of instances whose worker died, which
// end their time; any other release is skipped, since its worker drains
// the instance and announces the stop itself.
func decodeRelease(_ string, data []byte) (billing.InstanceEvent, error) {
	var ev events.InstanceReleasedV1
	if err := natsx.Decode(data, &ev); err != nil {
		return billing.InstanceEvent{}, err
	}
	out, ok := billing.InstanceFromReleased(ev)
	if !ok {
		return out, errSkip
	}
	return out, billing.CheckInstanceEvent(out)
}

func decodeService(subject string, data []byte) (billing.ServiceEvent, error) {
	var out billing.ServiceEvent
	switch subject {
	case events.SubjectServiceCreatedV1:
		var ev events.ServiceCreatedV1
		if err := natsx.Decode(data, &ev); err != nil {
			return out, err
		}
		out = billing.ServiceFromCreated(ev)
	case events.SubjectServiceDeletedV1:
		var ev events.ServiceDeletedV1
		if err := natsx.Decode(data, &ev); err != nil {
			return out, err
		}
		out = billing.ServiceFromDeleted(ev)
	default:
		return out, errs.E(errs.Invalid, "unexpected subject %s", subject)
	}
	return out, billing.CheckServiceEvent(out)
}
