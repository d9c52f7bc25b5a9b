package natsx_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func usageEvent(i int) events.RequestCompletedV1 {
	now := time.Now().UTC()
	return events.RequestCompletedV1{Meta: events.NewMeta(), RequestID: fmt.Sprintf("req-%d", i),
		ServiceID: "0b7b1f0e-1f6a-4c1e-9d1a-3f2b1c0d9e8f", OwnerID: "acme", AccessName: "u-acme/chat", BaseModel: "m",
		APIKeyID: "key", InstanceID: "inst", Endpoint: "/v1/chat/completions", Status: 200,
		PromptTokens: 10, CompletionTokens: i, TotalTokens: 10 + i, StartedAt: now, FinishedAt: now}
}

// usageIDs returns the trace context of every message in the USAGE
// stream by message ID, and how many messages it holds.
func usageIDs(t *testing.T, s *natstest.Server) (map[string]string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus, err := natsx.Open(ctx, s.ClientURL(), natstest.Admin, 1, quiet, s.As(natstest.Admin)...)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	stream, err := bus.JS.Stream(ctx, "USAGE")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	if info.State.Msgs == 0 {
		return ids, 0
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range info.State.Msgs {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ids[m.Headers().Get(jetstream.MsgIDHeader)] = m.Headers().Get("traceparent")
	}
	return ids, int(info.State.Msgs)
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestSpoolStoresEveryEventOnce: events written to the spool from many
// goroutines are each stored in JetStream once, under their event ID and
// with the trace context of their request; closing waits for them, and
// leaves no segment behind.
func TestSpoolStoresEveryEventOnce(t *testing.T) {
	s := natstest.New(t)
	bus := s.Bus(t, access.Router)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	tp := sdktrace.NewTracerProvider()
	dir := t.TempDir()
	spool, err := natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	want := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				ctx, span := tp.Tracer("test").Start(context.Background(), "request")
				ev := usageEvent(i)
				if err := spool.Publish(ctx, ev); err != nil {
					t.Error(err)
				}
				span.End()
				mu.Lock()
				want[ev.EventID()] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := spool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ids, msgs := usageIDs(t, s)
	if msgs != n || len(ids) != n {
		t.Fatalf("USAGE holds %d messages with %d IDs, want %d", msgs, len(ids), n)
	}
	for id, traceparent := range ids {
		if !want[id] {
			t.Fatalf("message ID %q was never published", id)
		}
		if traceparent == "" {
			t.Fatalf("event %s lost its trace context", id)
		}
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Fatalf("segments left after every event was stored: %v", left)
	}
	if err := spool.Publish(context.Background(), usageEvent(0)); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("publish after close: %v, want Unavailable", err)
	}
}

// TestSpoolSurvivesTheEndOfItsProcess: events written while JetStream
// could not be reached, by a spool whose process then ended without
// closing it (its last write cut short), are stored once by the next
// spool on the directory, even those the first one managed to store.
func TestSpoolSurvivesTheEndOfItsProcess(t *testing.T) {
	s := natstest.New(t)
	bus := s.Bus(t, access.Router)
	dir := t.TempDir()

	cut := s.Bus(t, access.Router) // a connection that will be closed
	first, err := natsx.OpenSpool(dir, cut.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	const stored = 5
	var evs []events.RequestCompletedV1
	for i := range stored {
		ev := usageEvent(i)
		evs = append(evs, ev)
		if err := first.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the first events stored", func() bool { return first.Pending() == 0 })
	cut.Conn.Close()
	const n = 200
	for i := stored; i < n; i++ {
		ev := usageEvent(i)
		evs = append(evs, ev)
		if err := first.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := natsx.OpenSpool(dir, bus.JS, 0, quiet); err == nil {
		t.Fatal("a second spool opened a directory in use")
	}
	natsx.KillSpool(first)
	// The last write cut short: part of a record at the end.
	segs := segments(t, dir)
	if len(segs) == 0 {
		t.Fatal("no segment left by the ended spool")
	}
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The first events again, as a spool that stored them and ended
	// before it knew would send them.
	for _, ev := range evs[:stored] {
		if err := bus.Publisher.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}

	second, err := natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := second.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ids, msgs := usageIDs(t, s)
	if msgs != n || len(ids) != n {
		t.Fatalf("USAGE holds %d messages with %d IDs, want %d", msgs, len(ids), n)
	}
	for _, ev := range evs {
		if _, ok := ids[ev.EventID()]; !ok {
			t.Fatalf("event %s lost", ev.EventID())
		}
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Fatalf("segments left after every event was stored: %v", left)
	}
}

// TestSpoolRefusesWhenFull: while JetStream stores nothing, the spool
// takes events up to its bound, then refuses them as Unavailable.
func TestSpoolRefusesWhenFull(t *testing.T) {
	s := natstest.New(t)
	cut := s.Bus(t, access.Router)
	cut.Conn.Close()
	spool, err := natsx.OpenSpool(t.TempDir(), cut.JS, 4096, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsx.KillSpool(spool) })
	taken := 0
	for i := range 100 {
		err := spool.Publish(context.Background(), usageEvent(i))
		if err != nil {
			if errs.KindOf(err) != errs.Unavailable {
				t.Fatalf("refusal %v, want Unavailable", err)
			}
			break
		}
		taken++
	}
	if taken == 0 || taken == 100 {
		t.Fatalf("took %d events of about 600 bytes within 4096 bytes", taken)
	}
}

// TestSpoolGathersEventsWrittenApart: events written one at a time, apart
// (an answer each), while the forwarder is idle reach JetStream in one
// batch, not one batch an event; Close does not wait out the linger.
func TestSpoolGathersEventsWrittenApart(t *testing.T) {
	defer natsx.SetSpoolLinger(2 * time.Second)()
	s := natstest.New(t)
	bus := s.Bus(t, access.Router)
	spool, err := natsx.OpenSpool(t.TempDir(), bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// A previous spool's events (none here) are forwarded at once: give
	// the forwarder the moment it takes to find none and wait.
	time.Sleep(50 * time.Millisecond)
	const n = 5
	for i := range n {
		if err := spool.Publish(context.Background(), usageEvent(i)); err != nil {
			t.Fatal(err)
		}
		// Long enough for a forwarder that sends at once to have sent.
		time.Sleep(30 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := spool.Close(ctx); err != nil {
		t.Fatalf("close within a second, the linger being 2s: %v", err)
	}
	if _, msgs := usageIDs(t, s); msgs != n {
		t.Fatalf("USAGE holds %d messages, want %d", msgs, n)
	}
	// One batch; two should the forwarder's first pass, over what a
	// previous spool left, have come late enough to take the first event.
	if b := natsx.SpoolBatches(spool); b > 2 {
		t.Fatalf("%d events written 30ms apart went to JetStream in %d batches, want 1", n, b)
	}
}
