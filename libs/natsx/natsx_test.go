package natsx_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/telemetrytest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

const durable = "natsx-test"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// open starts a JetStream server for t and returns a bus on it and a
// context that ends when the test does.
func open(t *testing.T) (*natsx.Bus, context.Context) {
	t.Helper()
	s := natstest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	bus, err := natsx.Open(ctx, s.ClientURL(), natstest.Admin, 1, quiet, s.As(natstest.Admin)...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		bus.Close()
	})
	return bus, ctx
}

func created() events.ServiceCreatedV1 {
	return events.ServiceCreatedV1{
		Meta:      events.NewMeta(),
		ServiceID: "0f5a7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b", OwnerID: "8105f7322477", Name: "test",
		AccessName: "u-8105f7322477/test", BaseModel: "qwen2.5-7b-instruct", Task: "text-generation",
		Engine: "vllm", Instances: 1, BillingMethod: "per-token",
	}
}

func subscription() natsx.Subscription {
	return natsx.Subscription{Stream: events.StreamDeploy, Durable: durable, Filter: events.SubjectServiceCreatedV1}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func consumerInfo(t *testing.T, ctx context.Context, js jetstream.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(ctx, events.StreamDeploy, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func streamMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(ctx, events.StreamDeploy)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPublishConsume(t *testing.T) {
	bus, ctx := open(t)
	want := created()
	if err := bus.Publisher.Publish(ctx, want); err != nil {
		t.Fatal(err)
	}

	got := make(chan events.ServiceCreatedV1, 10)
	var calls atomic.Int32
	err := natsx.Consume(ctx, bus.JS, subscription(), quiet, func(_ context.Context, ev events.ServiceCreatedV1) error {
		calls.Add(1)
		got <- ev
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	select {
	case ev := <-got:
		if !ev.OccurredAt.Equal(want.OccurredAt) {
			t.Errorf("occurred_at = %v, want %v", ev.OccurredAt, want.OccurredAt)
		}
		ev.OccurredAt = want.OccurredAt
		if ev != want {
			t.Errorf("consumed\n %+v, want\n %+v", ev, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("event not consumed within 5s")
	}

	// Acked: nothing pending, delivered exactly once.
	eventually(t, 5*time.Second, "the event is still pending an ack", func() bool {
		return consumerInfo(t, ctx, bus.JS).NumAckPending == 0
	})
	info := consumerInfo(t, ctx, bus.JS)
	if got, want := info.Delivered.Consumer, uint64(1); got != want {
		t.Errorf("deliveries = %d, want %d", got, want)
	}
	if got, want := info.AckFloor.Stream, uint64(1); got != want {
		t.Errorf("ack floor = %d, want %d", got, want)
	}
	if got, want := calls.Load(), int32(1); got != want {
		t.Errorf("handler calls = %d, want %d", got, want)
	}
}

func TestPublishStoresMsgID(t *testing.T) {
	bus, ctx := open(t)
	ev := created()
	if err := bus.Publisher.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	st, err := bus.JS.Stream(ctx, events.StreamDeploy)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := msg.Header.Get(jetstream.MsgIDHeader), ev.ID; got != want {
		t.Errorf("%s = %q, want the event ID %q", jetstream.MsgIDHeader, got, want)
	}
	if got, want := msg.Subject, events.SubjectServiceCreatedV1; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}
	var decoded events.ServiceCreatedV1
	if err := json.Unmarshal(msg.Data, &decoded); err != nil {
		t.Fatal(err)
	}
	if decoded.ID != ev.ID || decoded.ServiceID != ev.ServiceID {
		t.Errorf("stored %+v, want %+v", decoded, ev)
	}
}

func TestPublishDeduplicates(t *testing.T) {
	bus, ctx := open(t)
	ev := created()
	for range 2 {
		if err := bus.Publisher.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := streamMsgs(t, ctx, bus.JS), uint64(1); got != want {
		t.Errorf("stream holds %d messages after publishing one event twice, want %d", got, want)
	}
	if err := bus.Publisher.Publish(ctx, created()); err != nil {
		t.Fatal(err)
	}
	if got, want := streamMsgs(t, ctx, bus.JS), uint64(2); got != want {
		t.Errorf("stream holds %d messages after a second event, want %d", got, want)
	}
}

// terminated subscribes to the server's advisories for messages the test
// consumer terminates.
func terminated(t *testing.T, nc *nats.Conn) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED." + events.StreamDeploy + "." + durable)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

type termAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
	Reason     string `json:"reason"`
}

func nextTerm(t *testing.T, sub *nats.Subscription) termAdvisory {
	t.Helper()
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no termination advisory: %v", err)
	}
	var a termAdvisory
	if err := json.Unmarshal(m.Data, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestHandlerErrors(t *testing.T) {
	tests := []struct {
		name string
		// fail is the error the handler returns on its first failures calls.
		fail      error
		failures  int32
		wantTerm  bool
		wantCalls int32
	}{
		{name: "invalid terminates", fail: errs.E(errs.Invalid, "service id is malformed"), failures: 1000, wantTerm: true, wantCalls: 1},
		{
			name: "wrapped invalid terminates", fail: fmt.Errorf("handle: %w", errs.E(errs.Invalid, "service id is malformed")),
			failures: 1000, wantTerm: true, wantCalls: 1,
		},
		{name: "plain error is retried until it succeeds", fail: errors.New("disk full"), failures: 2, wantCalls: 3},
		{name: "unavailable is retried", fail: errs.E(errs.Unavailable, "store down"), failures: 1, wantCalls: 2},
		{name: "conflict is retried", fail: errs.E(errs.Conflict, "changed meanwhile"), failures: 1, wantCalls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case has its own server
			bus, ctx := open(t)
			terms := terminated(t, bus.Conn)
			var calls atomic.Int32
			err := natsx.Consume(ctx, bus.JS, subscription(), quiet, func(context.Context, events.ServiceCreatedV1) error {
				if calls.Add(1) <= tc.failures {
					return tc.fail
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := bus.Publisher.Publish(ctx, created()); err != nil {
				t.Fatal(err)
			}

			// Retries come after Backoff(1) + Backoff(2) = 600ms; allow plenty.
			eventually(t, 5*time.Second, fmt.Sprintf("handler called %d times, want %d", calls.Load(), tc.wantCalls), func() bool {
				return calls.Load() >= tc.wantCalls
			})
			// Settled: terminated or acked, either way no longer pending.
			eventually(t, 5*time.Second, "the event is still pending", func() bool {
				return consumerInfo(t, ctx, bus.JS).NumAckPending == 0
			})
			if tc.wantTerm {
				a := nextTerm(t, terms)
				if got, want := a.StreamSeq, uint64(1); got != want {
					t.Errorf("terminated stream seq %d, want %d", got, want)
				}
				if !strings.Contains(a.Reason, "service id is malformed") {
					t.Errorf("termination reason %q does not carry the error", a.Reason)
				}
			} else {
				if m, err := terms.NextMsg(50 * time.Millisecond); err == nil {
					t.Errorf("a retried event was terminated: %s", m.Data)
				}
			}
			// Longer than the first backoff: a redelivery would show by now.
			time.Sleep(2 * natsx.Backoff(1))
			if got, want := calls.Load(), tc.wantCalls; got != want {
				t.Errorf("handler calls = %d, want %d", got, want)
			}
			if got, want := consumerInfo(t, ctx, bus.JS).Delivered.Consumer, uint64(tc.wantCalls); got != want {
				t.Errorf("deliveries = %d, want %d", got, want)
			}
		})
	}
}

func TestMalformedEventTerminates(t *testing.T) {
	bus, ctx := open(t)
	terms := terminated(t, bus.Conn)
	var calls atomic.Int32
	err := natsx.Consume(ctx, bus.JS, subscription(), quiet, func(context.Context, events.ServiceCreatedV1) error {
		calls.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.JS.Publish(ctx, events.SubjectServiceCreatedV1, []byte(`{"event_id": 42`)); err != nil {
		t.Fatal(err)
	}
	a := nextTerm(t, terms)
	if got, want := a.Deliveries, uint64(1); got != want {
		t.Errorf("deliveries before termination = %d, want %d", got, want)
	}
	if got := calls.Load(); got != 0 {
		t.Errorf("handler called %d times for a malformed event, want 0", got)
	}
}

func TestTraceContextTravels(t *testing.T) {
	telemetrytest.Traces(t)

	bus, ctx := open(t)
	seen := make(chan trace.SpanContext, 10)
	err := natsx.Consume(ctx, bus.JS, subscription(), quiet, func(ctx context.Context, _ events.ServiceCreatedV1) error {
		seen <- trace.SpanContextFromContext(ctx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	pctx, span := otel.Tracer("natsx-test").Start(ctx, "request")
	if err := bus.Publisher.Publish(pctx, created()); err != nil {
		t.Fatal(err)
	}
	span.End()
	want := span.SpanContext()

	select {
	case got := <-seen:
		if !got.IsValid() {
			t.Fatal("handler context carries no span")
		}
		if got.TraceID() != want.TraceID() {
			t.Errorf("handler trace ID = %s, want %s", got.TraceID(), want.TraceID())
		}
		if got.SpanID() == want.SpanID() {
			t.Error("handler runs in the publisher's span, want its own consumer span")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("event not consumed within 5s")
	}

	// The header is stored lower-case, as W3C and other NATS clients expect.
	st, err := bus.JS.Stream(ctx, events.StreamDeploy)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	tp1 := msg.Header["traceparent"]
	if len(tp1) != 1 || !strings.Contains(tp1[0], want.TraceID().String()) {
		t.Errorf("traceparent header = %v (headers %v), want one value with trace %s", tp1, msg.Header, want.TraceID())
	}
}

func TestHeaderCarrierKeepsCase(t *testing.T) {
	h := nats.Header{}
	c := natsx.HeaderCarrier(h)
	c.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	c.Set("tracestate", "a=1")
	c.Set("tracestate", "a=2") // replaces

	if got, want := h["traceparent"], []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("header traceparent = %v, want %v", got, want)
	}
	if _, ok := h["Traceparent"]; ok {
		t.Error("key was canonicalized to Traceparent")
	}
	if got, want := c.Get("tracestate"), "a=2"; got != want {
		t.Errorf("Get(tracestate) = %q, want %q", got, want)
	}
	if got := c.Get("missing"); got != "" {
		t.Errorf("Get(missing) = %q, want empty", got)
	}
	keys := c.Keys()
	if len(keys) != 2 {
		t.Errorf("Keys = %v, want 2 keys", keys)
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		attempt uint64
		want    time.Duration
	}{
		{0, 100 * time.Millisecond},
		{1, 200 * time.Millisecond},
		{2, 400 * time.Millisecond},
		{6, 6400 * time.Millisecond},
		{7, 10 * time.Second},
		{64, 10 * time.Second},
		{1 << 40, 10 * time.Second},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.attempt), func(t *testing.T) {
			if got := natsx.Backoff(tc.attempt); got != tc.want {
				t.Errorf("Backoff(%d) = %v, want %v", tc.attempt, got, tc.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	var ev events.ServiceCreatedV1
	if err := natsx.Decode([]byte(`{"event_id":"x","name":"n","future_field":true}`), &ev); err != nil {
		t.Errorf("Decode with an unknown field: %v", err)
	}
	if ev.ID != "x" || ev.Name != "n" {
		t.Errorf("decoded %+v", ev)
	}
	err := natsx.Decode([]byte(`{"instances":"many"}`), &ev)
	if got, want := errs.KindOf(err), errs.Invalid; got != want {
		t.Errorf("Decode of a wrong type: kind %v, want %v", got, want)
	}
	err = natsx.Decode([]byte(`not json`), &ev)
	if got, want := errs.KindOf(err), errs.Invalid; got != want {
		t.Errorf("Decode of malformed JSON: kind %v, want %v", got, want)
	}
}

func TestBusKV(t *testing.T) {
	bus, _ := open(t)
	if got, want := bus.KV("services").Bucket(), "services"; got != want {
		t.Errorf("KV(services).Bucket() = %q, want %q", got, want)
	}
	defer func() {
		if recover() == nil {
			t.Error("KV of an unknown bucket did not panic")
		}
	}()
	bus.KV("nope")
}

// TestStreamReader reads a stream without a consumer: from a time (the
// first message stored at or after it, found by bisection), and from now
// (nothing until a new message), as the events reader and the console do.
func TestStreamReader(t *testing.T) {
	bus, ctx := open(t)
	var evs []events.ServiceCreatedV1
	var marks []time.Time
	for range 5 {
		marks = append(marks, time.Now())
		ev := created()
		if err := bus.Publisher.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
		time.Sleep(5 * time.Millisecond)
	}
	st, err := bus.JS.Stream(ctx, events.StreamDeploy)
	if err != nil {
		t.Fatal(err)
	}
	readAll := func(r *natsx.StreamReader) []string {
		var ids []string
		for {
			m, err := r.Next(ctx)
			if errors.Is(err, natsx.ErrCaughtUp) {
				return ids
			}
			if err != nil {
				t.Fatal(err)
			}
			var ev events.ServiceCreatedV1
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, ev.ID)
		}
	}
	for i, since := range marks {
		r, err := natsx.NewStreamReader(ctx, st, since)
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(r)
		if len(got) != len(evs)-i || got[0] != evs[i].ID {
			t.Errorf("since event %d's time: read %v, want the events from %s on", i, got, evs[i].ID)
		}
	}
	r, err := natsx.NewStreamReader(ctx, st, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(r); len(got) != 0 {
		t.Errorf("from now: read %v before anything new", got)
	}
	ev := created()
	if err := bus.Publisher.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if got := readAll(r); len(got) != 1 || got[0] != ev.ID {
		t.Errorf("from now, after one more: read %v, want %s", got, ev.ID)
	}
}
