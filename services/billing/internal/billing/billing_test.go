package billing_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func usage(prompt, completion, total int) events.RequestCompletedV1 {
	now := time.Now().UTC().Truncate(time.Second)
	return events.RequestCompletedV1{
		Meta:      events.NewMeta(),
		RequestID: "req-1", ServiceID: "s1", OwnerID: "a11ce0000001", AccessName: "u-a11ce0000001/chat",
		BaseModel: "qwen2.5-7b-instruct", APIKeyID: "k1", InstanceID: "i1", Endpoint: "/v1/chat/completions",
		Status: 200, PromptTokens: prompt, CompletionTokens: completion, TotalTokens: total,
		StartedAt: now.Add(-time.Second), FinishedAt: now,
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		ev      func() events.RequestCompletedV1
		wantErr bool
	}{
		{name: "valid", ev: func() events.RequestCompletedV1 { return usage(10, 5, 15) }},
		{name: "valid with no tokens", ev: func() events.RequestCompletedV1 { return usage(0, 0, 0) }},
		{name: "valid error status", ev: func() events.RequestCompletedV1 {
			e := usage(10, 0, 10)
			e.Status = 503
			return e
		}},
		{name: "missing id", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.ID = ""
			return e
		}},
		{name: "id not a uuid", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.ID = "event-1"
			return e
		}},
		{name: "missing service", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.ServiceID = ""
			return e
		}},
		{name: "missing occurred_at", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.OccurredAt = time.Time{}
			return e
		}},
		{name: "occurred_at past what ClickHouse stores", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.OccurredAt = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
			return e
		}},
		{name: "occurred_at before 1970", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.OccurredAt = time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC)
			return e
		}},
		{name: "status out of range", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.Status = 0
			return e
		}},
		{name: "negative prompt", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(-10, 25, 15) }},
		{name: "negative completion", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(20, -5, 15) }},
		{name: "negative total", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(0, 0, -1) }},
		{name: "total too small", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(10, 5, 14) }},
		{name: "total too large", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(10, 5, 16) }},
		{name: "tokens beyond UInt32", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(1<<31, 0, 1<<31) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := billing.Check(tc.ev())
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			if got, want := errs.KindOf(err), errs.Invalid; got != want {
				t.Errorf("kind = %v, want %v (err %v)", got, want, err)
			}
		})
	}
}

func TestCheckLifecycle(t *testing.T) {
	at := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	ready := func() billing.InstanceEvent {
		return billing.InstanceFromReady(events.InstanceReadyV1{Meta: events.Meta{ID: events.NewMeta().ID, OccurredAt: at},
			InstanceID: "i1", ServiceID: "s1", WorkerID: "w1", Engine: "vllm", Endpoint: "http://127.0.0.1:1/v1"})
	}
	created := func() billing.ServiceEvent {
		return billing.ServiceFromCreated(events.ServiceCreatedV1{Meta: events.Meta{ID: events.NewMeta().ID, OccurredAt: at},
			ServiceID: "s1", OwnerID: "a11ce0000001", Name: "chat", BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerInstanceHour})
	}
	instances := []struct {
		name    string
		mutate  func(*billing.InstanceEvent)
		wantErr bool
	}{
		{name: "valid", mutate: func(*billing.InstanceEvent) {}},
		{name: "valid gone", mutate: func(e *billing.InstanceEvent) { e.Kind = billing.InstanceGone }},
		{name: "bad id", mutate: func(e *billing.InstanceEvent) { e.EventID = "x" }, wantErr: true},
		{name: "unknown kind", mutate: func(e *billing.InstanceEvent) { e.Kind = "paused" }, wantErr: true},
		{name: "no instance", mutate: func(e *billing.InstanceEvent) { e.InstanceID = "" }, wantErr: true},
		{name: "no service", mutate: func(e *billing.InstanceEvent) { e.ServiceID = "" }, wantErr: true},
		{name: "no time", mutate: func(e *billing.InstanceEvent) { e.At = time.Time{} }, wantErr: true},
	}
	for _, tc := range instances {
		t.Run("instance "+tc.name, func(t *testing.T) {
			e := ready()
			tc.mutate(&e)
			if err := billing.CheckInstanceEvent(e); (err != nil) != tc.wantErr || (err != nil && errs.KindOf(err) != errs.Invalid) {
				t.Errorf("CheckInstanceEvent = %v, want error %v of kind Invalid", err, tc.wantErr)
			}
		})
	}
	t.Run("releases", func(t *testing.T) {
		rel := events.InstanceReleasedV1{Meta: events.Meta{ID: events.NewMeta().ID, OccurredAt: at},
			InstanceID: "i1", ServiceID: "s1", WorkerID: "w1", Reason: "scaled down to 1"}
		if e, ok := billing.InstanceFromReleased(rel); ok {
			t.Errorf("a release to a live worker became %+v; its stop ends the time", e)
		}
		rel.Reason, rel.WorkerGone = "worker w1 stopped beating", true
		e, ok := billing.InstanceFromReleased(rel)
		want := billing.InstanceEvent{EventID: rel.ID, Kind: billing.InstanceGone, InstanceID: "i1", ServiceID: "s1", WorkerID: "w1",
			Reason: "worker w1 stopped beating", At: at}
		if !ok || e != want {
			t.Errorf("InstanceFromReleased = %+v, %v; want %+v, true", e, ok, want)
		}
		if err := billing.CheckInstanceEvent(e); err != nil {
			t.Errorf("CheckInstanceEvent(gone) = %v", err)
		}
	})
	services := []struct {
		name    string
		mutate  func(*billing.ServiceEvent)
		wantErr bool
	}{
		{name: "valid", mutate: func(*billing.ServiceEvent) {}},
		{name: "valid deletion", mutate: func(e *billing.ServiceEvent) { e.Kind, e.BillingMethod = billing.ServiceDeleted, "" }},
		{name: "unknown billing method", mutate: func(e *billing.ServiceEvent) { e.BillingMethod = "per-vibe" }, wantErr: true},
		{name: "no service", mutate: func(e *billing.ServiceEvent) { e.ServiceID = "" }, wantErr: true},
		{name: "no time", mutate: func(e *billing.ServiceEvent) { e.At = time.Time{} }, wantErr: true},
		{name: "bad id", mutate: func(e *billing.ServiceEvent) { e.EventID = "" }, wantErr: true},
	}
	for _, tc := range services {
		t.Run("service "+tc.name, func(t *testing.T) {
			e := created()
			tc.mutate(&e)
			if err := billing.CheckServiceEvent(e); (err != nil) != tc.wantErr || (err != nil && errs.KindOf(err) != errs.Invalid) {
				t.Errorf("CheckServiceEvent = %v, want error %v of kind Invalid", err, tc.wantErr)
			}
		})
	}
}

// line is a service's token usage in one UTC hour through one API key
// and base model, as the fake store holds it.
type line struct {
	Hour             time.Time
	APIKeyID         string
	BaseModel        string
	Requests         uint64
	PromptTokens     uint64
	CompletionTokens uint64
}

// fakeStore answers from fixed lines and lifecycle of one service,
// filtered, priced and grouped the way the real store does, and records
// what it was asked. Prices are stored as the real store stores them.
type fakeStore struct {
	lines      []line
	lifecycle  billing.Lifecycle
	batches    [][]events.RequestCompletedV1
	asked      []string
	tokensTo   time.Time
	schedule   *billing.Schedule
	closings   []billing.Closing
	statements map[string][]billing.StatementLine
	open       []billing.OpenInstance
	sightings  []billing.Sighting
	recorded   []billing.InstanceEvent
}

func (f *fakeStore) InsertUsage(_ context.Context, batch []events.RequestCompletedV1) error {
	f.batches = append(f.batches, batch)
	return nil
}

func (f *fakeStore) InsertRedeliveredUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	return f.InsertUsage(ctx, batch)
}

func (f *fakeStore) InsertInstanceEvents(_ context.Context, evs []billing.InstanceEvent) error {
	f.recorded = append(f.recorded, evs...)
	return nil
}

func (f *fakeStore) InsertServiceEvents(context.Context, []billing.ServiceEvent) error { return nil }

// TokenUsage prices each line at its hour and sums lines into groups; the
// fake holds one service, and cuts lines after the hour of its deletion.
func (f *fakeStore) TokenUsage(_ context.Context, q billing.TokenQuery) ([]billing.TokenRow, error) {
	f.asked = append(f.asked, q.ServiceID)
	f.tokensTo = q.To
	groups := map[billing.TokenRow]*billing.TokenRow{}
	var order []billing.TokenRow
	for _, l := range f.lines {
		if l.Hour.Before(q.From) || !l.Hour.Before(q.To) {
			continue
		}
		if d := f.lifecycle.DeletedAt; !d.IsZero() && l.Hour.After(d) {
			continue
		}
		var k billing.TokenRow
		if q.By.Period > 0 {
			k.PeriodStart = l.Hour.Truncate(q.By.Period)
		}
		if q.By.APIKey {
			k.APIKeyID = l.APIKeyID
		}
		if q.By.BaseModel {
			k.BaseModel = l.BaseModel
		}
		if q.By.Service {
			k.ServiceID = "s1"
		}
		g, ok := groups[k]
		if !ok {
			c := k
			g = &c
			groups[k] = g
			order = append(order, k)
		}
		g.Requests += l.Requests
		g.PromptTokens += l.PromptTokens
		g.CompletionTokens += l.CompletionTokens
		g.CostMicros += billing.TokenCostMicros(l.PromptTokens, l.CompletionTokens, q.Rates.At(l.BaseModel, l.Hour))
	}
	out := make([]billing.TokenRow, 0, len(order))
	for _, k := range order {
		out = append(out, *groups[k])
	}
	return out, nil
}

// Lifecycle returns every event before to: earlier ones stand for the
// state at from, which is what the contract's synthetic events give.
func (f *fakeStore) Lifecycle(_ context.Context, serviceID string, _, to time.Time) (billing.Lifecycle, error) {
	f.asked = append(f.asked, serviceID)
	lc := billing.Lifecycle{DeletedAt: f.lifecycle.DeletedAt}
	for _, e := range f.lifecycle.Instances {
		if e.At.Before(to) {
			lc.Instances = append(lc.Instances, e)
		}
	}
	return lc, nil
}

func (f *fakeStore) Lifecycles(ctx context.Context, from, to time.Time) (map[string]billing.Lifecycle, error) {
	lc, _ := f.Lifecycle(ctx, "s1", from, to)
	if len(lc.Instances) == 0 {
		return map[string]billing.Lifecycle{}, nil
	}
	return map[string]billing.Lifecycle{"s1": lc}, nil
}

func (f *fakeStore) PriceSchedule(context.Context) (*billing.Schedule, error) {
	if f.schedule == nil {
		return billing.DefaultSchedule(), nil
	}
	return f.schedule, nil
}

func (f *fakeStore) AddPrices(_ context.Context, revision uint64, entries []billing.PriceEntry) error {
	sch := f.schedule
	if sch == nil {
		sch = billing.EmptySchedule()
	}
	next, err := sch.With(revision, entries)
	if err != nil {
		return err
	}
	f.schedule = next
	return nil
}

func (f *fakeStore) Closings(context.Context) ([]billing.Closing, error) { return f.closings, nil }

func (f *fakeStore) SaveStatement(_ context.Context, c billing.Closing, lines []billing.StatementLine) error {
	if f.statements == nil {
		f.statements = map[string][]billing.StatementLine{}
	}
	f.statements[c.CloseID] = lines
	f.closings = append(f.closings, c)
	return nil
}

func (f *fakeStore) StatementLines(_ context.Context, ids []string) ([]billing.StatementLine, error) {
	var out []billing.StatementLine
	for _, id := range ids {
		out = append(out, f.statements[id]...)
	}
	return out, nil
}

func (f *fakeStore) OpenInstances(context.Context) ([]billing.OpenInstance, error) {
	return f.open, nil
}

func (f *fakeStore) RecordSightings(_ context.Context, s []billing.Sighting) error {
	f.sightings = append(f.sightings, s...)
	return nil
}

// fakeServices knows services by ID.
type fakeServices map[string]state.Service

func (f fakeServices) Service(_ context.Context, id string) (state.Service, error) {
	s, ok := f[id]
	if !ok {
		return state.Service{}, errs.E(errs.NotFound, "service %s not found", id)
	}
	return s, nil
}

func TestRecord(t *testing.T) {
	store := &fakeStore{}
	svc := billing.New(store, fakeServices{})
	batch := []events.RequestCompletedV1{usage(1, 2, 3), usage(4, 5, 9)}
	if err := svc.Record(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if got, want := len(store.batches), 1; got != want {
		t.Fatalf("store got %d batches, want %d", got, want)
	}
	if got, want := len(store.batches[0]), 2; got != want {
		t.Errorf("batch has %d events, want %d", got, want)
	}
}
