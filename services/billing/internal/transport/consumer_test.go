package transport_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
	"github.com/modelport/modelport/services/billing/internal/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func usageEvent(svc state.Service, key string, prompt, completion int, at time.Time) events.RequestCompletedV1 {
	m := events.NewMeta()
	m.OccurredAt = at.UTC()
	return events.RequestCompletedV1{
		Meta: m, RequestID: "req-" + m.ID[24:], ServiceID: svc.ID, OwnerID: svc.OwnerID, AccessName: svc.AccessName,
		BaseModel: svc.BaseModel, APIKeyID: key, InstanceID: "0b9d7a52-3c1e-4f6a-9b8c-7d6e5f4a3b2c",
		Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: prompt, CompletionTokens: completion,
		TotalTokens: prompt + completion, StartedAt: m.OccurredAt.Add(-time.Second), FinishedAt: m.OccurredAt,
	}
}

func (e *env) publish(evs ...events.Event) {
	e.t.Helper()
	for _, ev := range evs {
		if err := e.bus.Publisher.Publish(e.ctx, ev); err != nil {
			e.t.Fatal(err)
		}
	}
}

// publishRaw publishes data as is, with the given headers.
func (e *env) publishRaw(subject string, data []byte, headers map[string]string) {
	e.t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = data
	for k, v := range headers {
		msg.Header.Set(k, v)
	}
	if _, err := e.bus.JS.PublishMsg(e.ctx, msg); err != nil {
		e.t.Fatal(err)
	}
}

type sums struct{ requests, prompt, completion uint64 }

func sumOf(evs ...events.RequestCompletedV1) sums {
	var s sums
	for _, ev := range evs {
		s.requests++
		s.prompt += uint64(ev.PromptTokens)
		s.completion += uint64(ev.CompletionTokens)
	}
	return s
}

func (e *env) stored(serviceID string) sums {
	e.t.Helper()
	lines, err := e.store.TokenUsage(e.ctx, billing.TokenQuery{ServiceID: serviceID, From: time.Unix(0, 0), To: time.Now().Add(time.Hour),
		Rates: billing.DefaultSchedule().TokenRates()})
	if err != nil {
		e.t.Fatal(err)
	}
	var s sums
	for _, l := range lines {
		s.requests += l.Requests
		s.prompt += l.PromptTokens
		s.completion += l.CompletionTokens
	}
	return s
}

// drained says whether a consumer has nothing left to deliver or ack.
func (e *env) drained(stream, durable string) error {
	c, err := e.bus.JS.Consumer(e.ctx, stream, durable)
	if err != nil {
		return err
	}
	info, err := c.Info(e.ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
		return fmt.Errorf("%s: %d pending, %d waiting for ack, %d redelivered", durable, info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
	return nil
}

func TestPoisonEventsAreDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.consume(e.billing(e.store))
	svc := e.service(e.alice, state.BillingPerToken, time.Now().Add(-time.Hour))
	now := time.Now()
	valid := []events.RequestCompletedV1{
		usageEvent(svc, "k1", 10, 20, now), usageEvent(svc, "k1", 1, 2, now), usageEvent(svc, "k2", 100, 0, now),
	}
	mismatch := usageEvent(svc, "k1", 14, 41, now)
	mismatch.TotalTokens = 50
	mismatchJSON, _ := json.Marshal(mismatch)
	notUTF8 := []byte{0xff, 0xfe, '{', '}'}
	badReady, _ := json.Marshal(events.InstanceReadyV1{Meta: events.NewMeta(), ServiceID: svc.ID, WorkerID: "w1"}) // no instance_id

	e.publish(valid[0])
	e.publishRaw(events.SubjectRequestCompletedV1, []byte(`{"event_id": "0196`), map[string]string{
		jetstream.MsgIDHeader: "poison-truncated", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "X-Note": "kept"})
	e.publish(valid[1])
	e.publishRaw(events.SubjectRequestCompletedV1, mismatchJSON, map[string]string{jetstream.MsgIDHeader: mismatch.ID})
	e.publishRaw(events.SubjectRequestCompletedV1, notUTF8, nil)
	e.publishRaw(events.SubjectInstanceReadyV1, badReady, nil)
	e.publish(valid[2])

	eventually(t, 20*time.Second, "valid usage stored and every consumer drained", func() error {
		if got, want := e.stored(svc.ID), sumOf(valid...); got != want {
			return fmt.Errorf("stored %+v, want %+v", got, want)
		}
		for _, c := range []struct{ stream, durable string }{
			{events.StreamUsage, transport.Durable}, {events.StreamWorker, transport.DurableInstances},
		} {
			if err := e.drained(c.stream, c.durable); err != nil {
				return err
			}
		}
		return nil
	})

	rep, err := e.dead.Report(e.ctx, transport.Durables, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rep.Count, uint64(4); got != want {
		t.Fatalf("dead letters = %d, want %d: %+v", got, want, rep.Latest)
	}
	byMsgID := map[string]events.EventRejectedV1{}
	for _, l := range rep.Latest {
		byMsgID[l.OriginalMsgID] = l
		if l.Stream == "" || l.StreamSequence == 0 || l.Reason == "" || l.Headers == nil {
			t.Errorf("incomplete dead letter %+v", l)
		}
	}

	truncated, ok := byMsgID["poison-truncated"]
	if !ok {
		t.Fatalf("no dead letter for the truncated event: %+v", rep.Latest)
	}
	if truncated.Consumer != transport.Durable || truncated.Stream != events.StreamUsage || truncated.OriginalSubject != events.SubjectRequestCompletedV1 {
		t.Errorf("truncated: consumer %s, stream %s, subject %s", truncated.Consumer, truncated.Stream, truncated.OriginalSubject)
	}
	if truncated.Payload != `{"event_id": "0196` || truncated.PayloadEncoding != "utf-8" {
		t.Errorf("truncated payload %q (%s)", truncated.Payload, truncated.PayloadEncoding)
	}
	if got := truncated.Headers["X-Note"]; len(got) != 1 || got[0] != "kept" {
		t.Errorf("headers %v: X-Note not kept", truncated.Headers)
	}
	if got := truncated.Headers["traceparent"]; len(got) != 1 {
		t.Errorf("headers %v: traceparent not kept", truncated.Headers)
	}
	if !strings.Contains(truncated.Reason, "decode") {
		t.Errorf("truncated reason %q", truncated.Reason)
	}
	if got := byMsgID[mismatch.ID].Reason; !strings.Contains(got, "total_tokens 50") {
		t.Errorf("mismatch reason %q", got)
	}
	var binary events.EventRejectedV1
	for _, l := range rep.Latest {
		if l.OriginalMsgID == "" && l.OriginalSubject == events.SubjectRequestCompletedV1 {
			binary = l
		}
	}
	if b, err := base64.StdEncoding.DecodeString(binary.Payload); err != nil || string(b) != string(notUTF8) || binary.PayloadEncoding != "base64" {
		t.Errorf("binary payload %q (%s), want base64 of %q", binary.Payload, binary.PayloadEncoding, notUTF8)
	}
	var lifecycle []events.EventRejectedV1
	for _, l := range rep.Latest {
		if l.OriginalSubject == events.SubjectInstanceReadyV1 {
			lifecycle = append(lifecycle, l)
		}
	}
	if len(lifecycle) != 1 || lifecycle[0].Consumer != transport.DurableInstances || !strings.Contains(lifecycle[0].Reason, "instance_id") {
		t.Errorf("lifecycle dead letters %+v, want one from %s about instance_id", lifecycle, transport.DurableInstances)
	}
	for i := 1; i < len(rep.Latest); i++ {
		if rep.Latest[i].StreamSequence == 0 || rep.Latest[i].ID == rep.Latest[i-1].ID {
			t.Errorf("dead letters repeat: %+v", rep.Latest)
		}
	}

}

// ackLost stores batches but reports the first failures of them as
// failed, as when ClickHouse has the batch but the answer is lost: the
// consumer naks and JetStream redelivers what is already stored.
type ackLost struct {
	*clickhouse.Store
	failures atomic.Int32
}

func (a *ackLost) InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	if err := a.Store.InsertUsage(ctx, batch); err != nil {
		return err
	}
	if a.failures.Add(-1) >= 0 {
		return errs.E(errs.Unavailable, "connection reset after the insert")
	}
	return nil
}

func TestRedeliveredAndDuplicatedUsageCountsOnce(t *testing.T) {
	e := newEnv(t)
	flaky := &ackLost{Store: e.store}
	flaky.failures.Store(3)
	e.consume(e.billing(flaky))
	svc := e.service(e.alice, state.BillingPerToken, time.Now().Add(-time.Hour))

	var want []events.RequestCompletedV1
	for i := range 300 {
		ev := usageEvent(svc, fmt.Sprintf("k%d", i%3), i, 2*i+1, time.Now().Add(-2*time.Hour))
		want = append(want, ev)
		e.publish(ev)
		switch i % 10 {
		case 3: // a retried publish: JetStream drops it
			e.publish(ev)
		case 7: // a publish outside the duplicate window: a second message
			data, _ := json.Marshal(ev)
			e.publishRaw(ev.Subject(), data, map[string]string{jetstream.MsgIDHeader: ev.ID + "-again"})
		}
	}

	eventually(t, 30*time.Second, "usage stored once and the consumer drained", func() error {
		if got, want := e.stored(svc.ID), sumOf(want...); got != want {
			return fmt.Errorf("stored %+v, want %+v", got, want)
		}
		c, err := e.bus.JS.Consumer(e.ctx, events.StreamUsage, transport.Durable)
		if err != nil {
			return err
		}
		info, err := c.Info(e.ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("%d pending, %d waiting for ack", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	if got := flaky.failures.Load(); got >= 0 {
		t.Fatalf("%d injected failures left: no batch was redelivered", got+1)
	}
	var raw uint64
	conn := rawConn(t, e)
	if err := conn.QueryRow(e.ctx, "SELECT count() FROM "+e.store.Database()+".usage_events WHERE service_id = ?", svc.ID).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if raw != uint64(len(want)) {
		t.Errorf("usage_events holds %d rows for %d events: redeliveries were stored again", raw, len(want))
	}
	// The rollup job fills the closed hours from the collapsed raw events.
	time.Sleep(1100 * time.Millisecond)
	if _, err := e.store.FillRollup(e.ctx, time.Now(), 0, time.Minute); err != nil {
		t.Fatal(err)
	}
	var rolled sums
	if err := conn.QueryRow(e.ctx, "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM "+e.store.Database()+".usage_hourly FINAL WHERE service_id = ?", svc.ID).
		Scan(&rolled.requests, &rolled.prompt, &rolled.completion); err != nil {
		t.Fatal(err)
	}
	if rolled != sumOf(want...) {
		t.Errorf("usage_hourly = %+v, want %+v", rolled, sumOf(want...))
	}
}

func TestInstanceHoursOverASimulatedClock(t *testing.T) {
	e := newEnv(t)
	t0 := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	m := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	now := t0.Add(48 * time.Hour) // long after the deletion: nothing accrues any more
	svc := e.billing(e.store, billing.WithClock(func() time.Time { return now }))
	e.consume(svc)
	rec := e.service(e.alice, state.BillingPerInstanceHour, t0)
	meta := func(at time.Time) events.Meta { mm := events.NewMeta(); mm.OccurredAt = at; return mm }
	const a, b = "7c9e1b24-3a5f-4d08-b6e2-1f4a8d0c5e93", "b8e2a4c7-61d3-4f90-a5e8-3c0d9b7f1a24"
	readyB := events.InstanceReadyV1{Meta: meta(m(30)), InstanceID: b, ServiceID: rec.ID, WorkerID: "w2", Engine: "vllm", Endpoint: "http://10.0.0.2:8000/v1"}
	e.publish(
		events.ServiceCreatedV1{Meta: meta(t0), ServiceID: rec.ID, OwnerID: rec.OwnerID, Name: rec.Name, AccessName: rec.AccessName,
			BaseModel: rec.BaseModel, Task: rec.Task, Engine: "vllm", Instances: 2, BillingMethod: rec.BillingMethod},
		events.InstanceReadyV1{Meta: meta(m(0)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1", Engine: "vllm", Endpoint: "http://10.0.0.1:8000/v1"},
		readyB,
		events.InstanceReadyV1{Meta: meta(m(45)), InstanceID: b, ServiceID: rec.ID, WorkerID: "w2", Engine: "vllm", Endpoint: "http://10.0.0.2:8000/v1"}, // announced again
		events.InstanceStoppedV1{Meta: meta(m(90)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1", Reason: "scaled down to 1"},
		events.ServiceDeletedV1{Meta: meta(m(150)), ServiceID: rec.ID, OwnerID: rec.OwnerID, Name: rec.Name, AccessName: rec.AccessName},
	)
	data, _ := json.Marshal(readyB) // a duplicate outside the window
	e.publishRaw(events.SubjectInstanceReadyV1, data, map[string]string{jetstream.MsgIDHeader: readyB.ID + "-again"})
	// Billed: before the deletion, and in its second (the router had
	// answered it). Not billed: after it.
	before, during, after := usageEvent(rec, "k1", 100, 50, m(10)), usageEvent(rec, "k1", 3, 3, m(150).Add(400*time.Millisecond)), usageEvent(rec, "k1", 7, 7, m(151))
	e.publish(before, during, after)

	// a: 0 to 90; b: 30 until the deletion at 150. 500 micros a second.
	wantSeconds := uint64((90 + 120) * 60)
	eventually(t, 20*time.Second, "instance time billed up to the deletion", func() error {
		u, err := svc.Usage(e.ctx, e.alice, billing.Query{ServiceID: rec.ID})
		if err != nil {
			return err
		}
		if u.InstanceSeconds != wantSeconds || u.CostMicros != wantSeconds*500 || !u.DeletedAt.Equal(m(150)) || u.Requests != 2 || u.TotalTokens != 156 {
			return fmt.Errorf("usage %+v: want %d s, %d micros, deleted at %v, 2 requests of 156 tokens", u, wantSeconds, wantSeconds*500, m(150))
		}
		return nil
	})
	u, err := svc.Usage(e.ctx, e.alice, billing.Query{ServiceID: rec.ID, GroupBy: billing.GroupHour})
	if err != nil {
		t.Fatal(err)
	}
	wantRows := []billing.Row{
		{PeriodStart: t0, Requests: 1, PromptTokens: 100, CompletionTokens: 50, TotalTokens: 150, InstanceSeconds: 3600 + 1800, CostMicros: 5400 * 500},
		{PeriodStart: t0.Add(time.Hour), InstanceSeconds: 1800 + 3600, CostMicros: 5400 * 500},
		{PeriodStart: t0.Add(2 * time.Hour), Requests: 1, PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6, InstanceSeconds: 1800, CostMicros: 1800 * 500},
	}
	if !reflect.DeepEqual(u.Data, wantRows) {
		t.Errorf("hours =\n%+v\nwant\n%+v", u.Data, wantRows)
	}
}

// goneAckLost stores instance events but reports the first failures of
// the batches holding a worker's loss as failed, so JetStream redelivers
// releases already stored.
type goneAckLost struct {
	*clickhouse.Store
	failures atomic.Int32
}

func (g *goneAckLost) InsertInstanceEvents(ctx context.Context, batch []billing.InstanceEvent) error {
	if err := g.Store.InsertInstanceEvents(ctx, batch); err != nil {
		return err
	}
	for _, ev := range batch {
		if ev.Kind == billing.InstanceGone && g.failures.Add(-1) >= 0 {
			return errs.E(errs.Unavailable, "connection reset after the insert")
		}
	}
	return nil
}

// TestWorkerGoneEndsInstanceTime follows an instance whose worker dies:
// billed from its ready to the scaler's release with worker_gone, however
// often that release arrives, and not a second longer when the worker
// comes back. A release to a live worker ends nothing: the stop does.
func TestWorkerGoneEndsInstanceTime(t *testing.T) {
	e := newEnv(t)
	t0 := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	m := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	now := m(180)
	flaky := &goneAckLost{Store: e.store}
	flaky.failures.Store(2)
	svc := e.billing(flaky, billing.WithClock(func() time.Time { return now }))
	e.consume(svc)
	rec := e.service(e.alice, state.BillingPerInstanceHour, t0)
	meta := func(at time.Time) events.Meta { mm := events.NewMeta(); mm.OccurredAt = at; return mm }
	const a, b = "7c9e1b24-3a5f-4d08-b6e2-1f4a8d0c5e93", "b8e2a4c7-61d3-4f90-a5e8-3c0d9b7f1a24"
	lost := events.InstanceReleasedV1{Meta: meta(m(40)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1",
		Reason: "worker w1 stopped beating", WorkerGone: true}
	again := lost // announced again: the scaler failed to forget it the first time
	again.Meta = meta(m(41))
	e.publish(
		events.ServiceCreatedV1{Meta: meta(t0), ServiceID: rec.ID, OwnerID: rec.OwnerID, Name: rec.Name, AccessName: rec.AccessName,
			BaseModel: rec.BaseModel, Task: rec.Task, Engine: "vllm", Instances: 2, BillingMethod: rec.BillingMethod},
		events.InstanceReadyV1{Meta: meta(m(0)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1", Engine: "vllm", Endpoint: "http://10.0.0.1:8000/v1"},
		events.InstanceReadyV1{Meta: meta(m(0)), InstanceID: b, ServiceID: rec.ID, WorkerID: "w2", Engine: "vllm", Endpoint: "http://10.0.0.2:8000/v1"},
		lost, lost, again,
		// w1 comes back: it announces a once more, then stops it.
		events.InstanceReadyV1{Meta: meta(m(50)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1", Engine: "vllm", Endpoint: "http://10.0.0.1:8000/v1"},
		events.InstanceStoppedV1{Meta: meta(m(60)), InstanceID: a, ServiceID: rec.ID, WorkerID: "w1", Reason: "scaled down to 1"},
		// w2 is alive: it drains b and announces the stop later.
		events.InstanceReleasedV1{Meta: meta(m(90)), InstanceID: b, ServiceID: rec.ID, WorkerID: "w2", Reason: "scaled down to 1"},
	)
	data, _ := json.Marshal(lost) // a duplicate outside the window
	e.publishRaw(lost.Subject(), data, map[string]string{jetstream.MsgIDHeader: lost.ID + "-again"})

	seconds := func() (uint64, error) {
		u, err := svc.Usage(e.ctx, e.alice, billing.Query{ServiceID: rec.ID})
		if err != nil {
			return 0, err
		}
		if u.CostMicros != u.InstanceSeconds*500 {
			return 0, fmt.Errorf("cost %d micros for %d s, want 500 a second", u.CostMicros, u.InstanceSeconds)
		}
		return u.InstanceSeconds, nil
	}
	drained := func() error {
		for _, c := range []struct{ stream, durable string }{
			{events.StreamWorker, transport.DurableInstances}, {events.StreamScale, transport.DurableReleases},
		} {
			if err := e.drained(c.stream, c.durable); err != nil {
				return err
			}
		}
		return nil
	}
	// a: 0 to its worker's loss at 40; b: 0 until now, its release no end.
	eventually(t, 20*time.Second, "a billed up to its worker's loss, b still running", func() error {
		if err := drained(); err != nil {
			return err
		}
		got, err := seconds()
		if err != nil {
			return err
		}
		if want := uint64((40 + 180) * 60); got != want {
			return fmt.Errorf("%d instance seconds, want %d", got, want)
		}
		return nil
	})
	if got := flaky.failures.Load(); got >= 0 {
		t.Fatalf("%d injected failures left: no release was redelivered", got+1)
	}
	conn := rawConn(t, e)
	var goneA, goneB uint64
	if err := conn.QueryRow(e.ctx, "SELECT uniqExactIf(event_id, instance_id = ?), uniqExactIf(event_id, instance_id = ?) FROM "+e.store.Database()+
		".instance_events WHERE service_id = ? AND kind = 'gone'", a, b, rec.ID).Scan(&goneA, &goneB); err != nil {
		t.Fatal(err)
	}
	if goneA != 2 || goneB != 0 {
		t.Errorf("stored %d losses of a (want its 2 announcements) and %d of b (want 0: its worker is alive)", goneA, goneB)
	}

	e.publish(events.InstanceStoppedV1{Meta: meta(m(100)), InstanceID: b, ServiceID: rec.ID, WorkerID: "w2", Reason: "scaled down to 1"})
	eventually(t, 20*time.Second, "b billed up to its stop", func() error {
		got, err := seconds()
		if err != nil {
			return err
		}
		if want := uint64((40 + 100) * 60); got != want {
			return fmt.Errorf("%d instance seconds, want %d", got, want)
		}
		return nil
	})
	rep, err := e.dead.Report(e.ctx, transport.Durables, 10)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Count != 0 {
		t.Errorf("dead letters %+v, want none", rep.Latest)
	}

	// A loss billing cannot use is dead-lettered like any other event.
	bad := lost
	bad.Meta, bad.InstanceID = meta(m(45)), ""
	e.publish(bad)
	eventually(t, 20*time.Second, "the release without instance_id dead-lettered", func() error {
		rep, err := e.dead.Report(e.ctx, transport.Durables, 10)
		if err != nil {
			return err
		}
		if rep.Count != 1 || rep.Latest[0].Consumer != transport.DurableReleases || rep.Latest[0].OriginalMsgID != bad.ID ||
			!strings.Contains(rep.Latest[0].Reason, "instance_id") {
			return fmt.Errorf("dead letters %+v, want one from %s about instance_id", rep.Latest, transport.DurableReleases)
		}
		return e.drained(events.StreamScale, transport.DurableReleases)
	})
}

// fetchAll reads n messages of the usage stream through a new consumer
// with explicit acks, as a redelivery to a restarted consumer would see them.
func (e *env) fetchAll(n int) []jetstream.Msg {
	e.t.Helper()
	cons, err := e.bus.JS.CreateConsumer(e.ctx, events.StreamUsage, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		e.t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		e.t.Fatal(err)
	}
	var out []jetstream.Msg
	for m := range batch.Messages() {
		out = append(out, m)
	}
	if len(out) != n {
		e.t.Fatalf("fetched %d messages, want %d", len(out), n)
	}
	return out
}

func TestRejectingAgainStoresOneLetter(t *testing.T) {
	e := newEnv(t)
	e.publishRaw(events.SubjectRequestCompletedV1, []byte("{"), nil)
	e.publishRaw(events.SubjectRequestCompletedV1, []byte("{"), nil)
	// The same two messages, delivered twice: before and after a crash
	// between the dead letter and the Term. The consumer is another
	// service's (the test admin plays it), whose letters billing reads but
	// does not count as its own.
	other := transport.NewDeadLetters(e.bus.JS)
	for range 2 {
		for _, msg := range e.fetchAll(2) {
			if err := other.Reject(e.ctx, "test-consumer", msg, errs.E(errs.Invalid, "bad")); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep, err := e.dead.Report(e.ctx, []string{"test-consumer"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Count != 2 || len(rep.Latest) != 2 || rep.Latest[0].ID == rep.Latest[1].ID {
		t.Fatalf("dead letters %d: %+v; want two with different IDs", rep.Count, rep.Latest)
	}
	for _, l := range rep.Latest {
		if id := l.ID; len(id) != 36 || id[14] != '7' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Errorf("dead letter ID %q is not a UUIDv7", id)
		}
	}
	own, err := e.dead.Report(e.ctx, transport.Durables, 10)
	if err != nil {
		t.Fatal(err)
	}
	if own.Count != 0 || len(own.Latest) != 0 {
		t.Errorf("billing's report counts another consumer's letters: %+v", own)
	}
}

// rawConn opens a plain connection to the env's ClickHouse.
func rawConn(t *testing.T, e *env) ch.Conn {
	t.Helper()
	conn, err := ch.Open(&ch.Options{Addr: []string{e.chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// slowFirstInsert holds the first usage insert until release closes,
// having recorded its batch and told entered; later inserts go straight
// through.
type slowFirstInsert struct {
	*clickhouse.Store
	once    atomic.Bool
	held    []events.RequestCompletedV1
	entered chan struct{}
	release chan struct{}
}

func (s *slowFirstInsert) InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	if s.once.CompareAndSwap(false, true) {
		s.held = batch
		close(s.entered)
		<-s.release
	}
	return s.Store.InsertUsage(ctx, batch)
}

// TestUsageIsAckedOnlyOnceStored holds one batch's insert while later
// batches are stored by the other inserter: they are stored and acked,
// and the held one stays unacked (JetStream would deliver it again were
// billing to die now) until its own insert succeeds.
func TestUsageIsAckedOnlyOnceStored(t *testing.T) {
	e := newEnv(t)
	slow := &slowFirstInsert{Store: e.store, entered: make(chan struct{}), release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(slow.release) }) }
	e.consume(e.billing(slow))
	t.Cleanup(release) // before the consumers stop, which waits for the held batch
	svc := e.service(e.alice, state.BillingPerToken, time.Now().Add(-time.Hour))

	var all []events.RequestCompletedV1
	publish := func(n, prompt int) {
		for i := range n {
			ev := usageEvent(svc, "k", prompt+i, 1, time.Now())
			all = append(all, ev)
			e.publish(ev)
		}
	}
	publish(20, 1)
	select {
	case <-slow.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no batch reached the store")
	}
	publish(60, 100)
	held := map[string]bool{}
	for _, ev := range slow.held {
		held[ev.ID] = true
	}
	var rest []events.RequestCompletedV1
	for _, ev := range all {
		if !held[ev.ID] {
			rest = append(rest, ev)
		}
	}
	eventually(t, 30*time.Second, "the later batches stored and acked while the first is held", func() error {
		if got, want := e.stored(svc.ID), sumOf(rest...); got != want {
			return fmt.Errorf("stored %+v, want %+v", got, want)
		}
		c, err := e.bus.JS.Consumer(e.ctx, events.StreamUsage, transport.Durable)
		if err != nil {
			return err
		}
		info, err := c.Info(e.ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != len(slow.held) || info.NumPending != 0 {
			return fmt.Errorf("%d waiting for ack, %d pending; want the held batch's %d waiting for ack", info.NumAckPending, info.NumPending, len(slow.held))
		}
		return nil
	})
	release()
	eventually(t, 30*time.Second, "every batch stored once and acked", func() error {
		if got, want := e.stored(svc.ID), sumOf(all...); got != want {
			return fmt.Errorf("stored %+v, want %+v", got, want)
		}
		return e.drained(events.StreamUsage, transport.Durable)
	})
}
