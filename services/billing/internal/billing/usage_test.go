package billing_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

var (
	alice = auth.Key{ID: "k-alice", OwnerID: "a11ce0000001"}
	bob   = auth.Key{ID: "k-bob", OwnerID: "b0b000000002"}
	admin = auth.Key{ID: "k-admin", OwnerID: "ad0000000003", Admin: true}
)

func TestParseQuery(t *testing.T) {
	tests := []struct {
		name                     string
		serviceID, from, to, grp string
		wantParam                string // "" means valid
		wantFrom, wantTo         time.Time
	}{
		{name: "only service", serviceID: "s1"},
		{name: "window", serviceID: "s1", from: "2025-05-01T10:00:00Z", to: "2025-05-02T00:00:00+02:00",
			wantFrom: t0, wantTo: time.Date(2025, 5, 1, 22, 0, 0, 0, time.UTC)},
		{name: "every grouping", serviceID: "s1", grp: "api_key"},
		{name: "no service", wantParam: "service_id"},
		{name: "bad from", serviceID: "s1", from: "yesterday", wantParam: "from"},
		{name: "bad to", serviceID: "s1", to: "2025-05-01", wantParam: "to"},
		{name: "to before from", serviceID: "s1", from: "2025-05-02T00:00:00Z", to: "2025-05-01T00:00:00Z", wantParam: "to"},
		{name: "empty window", serviceID: "s1", from: "2025-05-01T00:00:00Z", to: "2025-05-01T00:00:00Z", wantParam: "to"},
		{name: "before 1970", serviceID: "s1", from: "1969-12-31T00:00:00Z", wantParam: "from"},
		{name: "unknown grouping", serviceID: "s1", grp: "week", wantParam: "group_by"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, err := billing.ParseQuery(tc.serviceID, tc.from, tc.to, tc.grp)
			if tc.wantParam == "" {
				if err != nil {
					t.Fatalf("ParseQuery: %v", err)
				}
				if !q.From.Equal(tc.wantFrom) || !q.To.Equal(tc.wantTo) {
					t.Errorf("window = %v .. %v, want %v .. %v", q.From, q.To, tc.wantFrom, tc.wantTo)
				}
				return
			}
			e, ok := errs.As(err)
			if !ok || e.Kind != errs.Invalid || e.Param != tc.wantParam {
				t.Errorf("ParseQuery error = %v, want Invalid with param %q", err, tc.wantParam)
			}
		})
	}
}

func TestUsageAccess(t *testing.T) {
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID, BillingMethod: state.BillingPerToken, CreatedAt: t0}}
	tests := []struct {
		name      string
		caller    auth.Key
		serviceID string
		wantKind  errs.Kind // Internal means success
		wantParam string
		wantAsked bool
	}{
		{name: "owner", caller: alice, serviceID: "s1", wantAsked: true},
		{name: "admin", caller: admin, serviceID: "s1", wantAsked: true},
		{name: "another owner", caller: bob, serviceID: "s1", wantKind: errs.NotFound},
		{name: "key restricted to the service", caller: auth.Key{ID: "k-ci", OwnerID: alice.OwnerID, Services: []string{"s1"}}, serviceID: "s1", wantAsked: true},
		{name: "key restricted to another service", caller: auth.Key{ID: "k-ci", OwnerID: alice.OwnerID, Services: []string{"s9"}}, serviceID: "s1", wantKind: errs.NotFound},
		{name: "unknown service", caller: alice, serviceID: "s2", wantKind: errs.NotFound},
		{name: "unknown service for admin", caller: admin, serviceID: "s2", wantKind: errs.NotFound},
		{name: "empty service id", caller: alice, serviceID: "", wantKind: errs.Invalid, wantParam: "service_id"},
		{name: "wildcard in service id", caller: admin, serviceID: "s1.>", wantKind: errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &fakeStore{}
			svc := billing.New(store, services, billing.WithClock(func() time.Time { return at(30) }))
			got, err := svc.Usage(context.Background(), tc.caller, billing.Query{ServiceID: tc.serviceID})
			if tc.wantKind == errs.Internal {
				if err != nil {
					t.Fatalf("Usage: %v", err)
				}
				if got.ServiceID != tc.serviceID || got.Currency != "USD" {
					t.Errorf("Usage = %+v", got)
				}
			} else {
				if got, want := errs.KindOf(err), tc.wantKind; got != want {
					t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
				}
				e, _ := errs.As(err)
				if got, want := e.Param, tc.wantParam; got != want {
					t.Errorf("param = %q, want %q", got, want)
				}
			}
			if got, want := len(store.asked) > 0, tc.wantAsked; got != want {
				t.Errorf("store asked = %v, want %v", got, want)
			}
		})
	}
}

// sumRows adds up a Usage's rows, to compare with its totals.
func sumRows(rows []billing.Row) billing.Row {
	var s billing.Row
	for _, r := range rows {
		s.Requests += r.Requests
		s.PromptTokens += r.PromptTokens
		s.CompletionTokens += r.CompletionTokens
		s.TotalTokens += r.TotalTokens
		s.InstanceSeconds += r.InstanceSeconds
		s.CostMicros += r.CostMicros
	}
	return s
}

func totalsRow(u billing.Usage) billing.Row {
	return billing.Row{Requests: u.Requests, PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens,
		TotalTokens: u.TotalTokens, InstanceSeconds: u.InstanceSeconds, CostMicros: u.CostMicros}
}

func TestUsagePerToken(t *testing.T) {
	// Prices of qwen2.5-7b-instruct per token: 150,000 and 600,000 micros
	// per million prompt and completion tokens.
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	lines := []line{
		{Hour: h(0), APIKeyID: "k1", BaseModel: "qwen2.5-7b-instruct", Requests: 2, PromptTokens: 1000, CompletionTokens: 500}, // 450
		{Hour: h(0), APIKeyID: "k2", BaseModel: "qwen2.5-7b-instruct", Requests: 1, PromptTokens: 10, CompletionTokens: 0},     // 1.5 → 2
		{Hour: h(1), APIKeyID: "k1", BaseModel: "qwen2.5-7b-instruct", Requests: 1, PromptTokens: 3, CompletionTokens: 1},      // 1.05 → 1
		{Hour: h(20), APIKeyID: "k2", BaseModel: "qwen2.5-7b-instruct", Requests: 4, PromptTokens: 3, CompletionTokens: 3},     // 2.25 → 2; the next UTC day
	}
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID, BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerToken, CreatedAt: at(5)}}
	store := &fakeStore{lines: lines, lifecycle: billing.Lifecycle{Instances: []billing.InstanceEvent{iev("i1", billing.InstanceReady, 0)}}}
	now := h(30).Add(15 * time.Minute)
	svc := billing.New(store, services, billing.WithClock(func() time.Time { return now }))

	u, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	want := billing.Usage{ServiceID: "s1", BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerToken,
		From: h(0), To: h(31), Requests: 8, PromptTokens: 1016, CompletionTokens: 504, TotalTokens: 1520,
		InstanceSeconds: 30*3600 + 15*60, CostMicros: 450 + 2 + 1 + 2, Currency: "USD"}
	if u.From != want.From || u.To != want.To {
		t.Errorf("window = %v .. %v, want the creation hour %v .. the hour after now %v", u.From, u.To, want.From, want.To)
	}
	if totalsRow(u) != totalsRow(want) || u.BillingMethod != want.BillingMethod || u.Data != nil {
		t.Errorf("Usage =\n%+v\nwant\n%+v", u, want)
	}

	for _, tc := range []struct {
		group string
		want  []billing.Row
	}{
		{billing.GroupHour, []billing.Row{
			{PeriodStart: h(0), Requests: 3, PromptTokens: 1010, CompletionTokens: 500, TotalTokens: 1510, InstanceSeconds: 3600, CostMicros: 452},
			{PeriodStart: h(1), Requests: 1, PromptTokens: 3, CompletionTokens: 1, TotalTokens: 4, InstanceSeconds: 3600, CostMicros: 1},
		}},
		{billing.GroupDay, []billing.Row{
			{PeriodStart: h(-10), Requests: 4, PromptTokens: 1013, CompletionTokens: 501, TotalTokens: 1514, InstanceSeconds: 14 * 3600, CostMicros: 453},
			{PeriodStart: h(14), Requests: 4, PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6, InstanceSeconds: 16*3600 + 15*60, CostMicros: 2},
		}},
		{billing.GroupAPIKey, []billing.Row{
			{APIKeyID: "k1", Requests: 3, PromptTokens: 1003, CompletionTokens: 501, TotalTokens: 1504, CostMicros: 451},
			{APIKeyID: "k2", Requests: 5, PromptTokens: 13, CompletionTokens: 3, TotalTokens: 16, CostMicros: 4},
		}},
	} {
		t.Run("group by "+tc.group, func(t *testing.T) {
			u, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1", GroupBy: tc.group})
			if err != nil {
				t.Fatal(err)
			}
			if totalsRow(u) != totalsRow(want) {
				t.Errorf("totals = %+v, want %+v", totalsRow(u), totalsRow(want))
			}
			if tc.group == billing.GroupHour {
				// Every hour of instance time has a row; compare the ones with tokens.
				if got, want := len(u.Data), 31; got != want {
					t.Fatalf("%d hour rows, want %d", got, want)
				}
				u.Data = u.Data[:2]
			}
			for i := range tc.want {
				if i >= len(u.Data) || u.Data[i] != tc.want[i] {
					t.Fatalf("rows =\n%+v\nwant\n%+v", u.Data, tc.want)
				}
			}
		})
	}

	t.Run("rows add up to the totals", func(t *testing.T) {
		for _, g := range []string{billing.GroupHour, billing.GroupDay, billing.GroupAPIKey} {
			u, err := svc.Usage(context.Background(), admin, billing.Query{ServiceID: "s1", GroupBy: g})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sumRows(u.Data), totalsRow(u); got != want {
				t.Errorf("group by %s: rows sum to %+v, totals %+v", g, got, want)
			}
		}
	})

	t.Run("window is widened to whole hours", func(t *testing.T) {
		u, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1", From: at(59), To: at(61)})
		if err != nil {
			t.Fatal(err)
		}
		if u.From != h(0) || u.To != h(2) {
			t.Errorf("window = %v .. %v, want %v .. %v", u.From, u.To, h(0), h(2))
		}
		if got, want := u.Requests, uint64(4); got != want {
			t.Errorf("requests = %d, want %d", got, want)
		}
	})

	t.Run("group by hour is bounded", func(t *testing.T) {
		_, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1", From: h(0), To: h(0).Add(billing.MaxWindow(billing.GroupHour) + time.Hour), GroupBy: billing.GroupHour})
		if e, ok := errs.As(err); !ok || e.Param != "group_by" {
			t.Errorf("err = %v, want Invalid on group_by", err)
		}
	})
}

func TestUsagePerInstanceHour(t *testing.T) {
	// qwen2.5-7b-instruct costs 1,800,000 micros an instance-hour: 500 a second.
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID, BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerInstanceHour, CreatedAt: t0}}
	instances := []billing.InstanceEvent{
		iev("a", billing.InstanceReady, 0), iev("a", billing.InstanceStopped, 90), // 1.5 h
		iev("b", billing.InstanceReady, 30), // runs until deleted or now
		iev("b", billing.InstanceReady, 45), // announced again: changes nothing
	}
	lines := []line{{Hour: h(0), APIKeyID: "k1", BaseModel: "qwen2.5-7b-instruct", Requests: 7, PromptTokens: 70000, CompletionTokens: 7000}}

	tests := []struct {
		name         string
		now          time.Time
		deletedAt    time.Time
		q            billing.Query
		wantSeconds  uint64
		wantCost     uint64
		wantTokensTo time.Time // the store cuts usage at the deletion itself
	}{
		{name: "running up to now", now: at(150), q: billing.Query{ServiceID: "s1"},
			wantSeconds: 90*60 + 120*60, wantCost: (90*60 + 120*60) * 500, wantTokensTo: h(3)},
		{name: "the clock moves on", now: at(210), q: billing.Query{ServiceID: "s1"},
			wantSeconds: 90*60 + 180*60, wantCost: (90*60 + 180*60) * 500, wantTokensTo: h(4)},
		{name: "deletion stops accruing", now: h(48), deletedAt: at(100).Add(30 * time.Second), q: billing.Query{ServiceID: "s1"},
			wantSeconds: 90*60 + 70*60 + 30, wantCost: (90*60 + 70*60 + 30) * 500, wantTokensTo: h(48)},
		{name: "a window in the past", now: h(48), q: billing.Query{ServiceID: "s1", From: h(1), To: h(2)},
			wantSeconds: 30*60 + 3600, wantCost: (30*60 + 3600) * 500, wantTokensTo: h(2)},
		{name: "a window after the deletion", now: h(48), deletedAt: at(100), q: billing.Query{ServiceID: "s1", From: h(5), To: h(6)}, wantTokensTo: h(6)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &fakeStore{lines: lines, lifecycle: billing.Lifecycle{Instances: instances, DeletedAt: tc.deletedAt}}
			svc := billing.New(store, services, billing.WithClock(func() time.Time { return tc.now }))
			u, err := svc.Usage(context.Background(), alice, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if u.InstanceSeconds != tc.wantSeconds || u.CostMicros != tc.wantCost {
				t.Errorf("instance seconds %d, cost %d; want %d, %d", u.InstanceSeconds, u.CostMicros, tc.wantSeconds, tc.wantCost)
			}
			if !u.DeletedAt.Equal(tc.deletedAt) {
				t.Errorf("deleted_at = %v, want %v", u.DeletedAt, tc.deletedAt)
			}
			if !store.tokensTo.Equal(tc.wantTokensTo) {
				t.Errorf("usage read up to %v, want %v", store.tokensTo, tc.wantTokensTo)
			}
			// Tokens are counted but not charged under per-instance-hour.
			byHour, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1", From: tc.q.From, To: tc.q.To, GroupBy: billing.GroupHour})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sumRows(byHour.Data), totalsRow(u); got != want {
				t.Errorf("hour rows sum to %+v, totals %+v", got, want)
			}
			// By key too: instance time is a row of its own, without a key.
			byKey, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1", From: tc.q.From, To: tc.q.To, GroupBy: billing.GroupAPIKey})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sumRows(byKey.Data), totalsRow(u); got != want {
				t.Errorf("key rows sum to %+v, totals %+v", got, want)
			}
		})
	}
}

// TestUsageWorkerGone checks that an instance's time runs from its ready
// to the earliest of its stop, its worker's loss, the service's deletion
// and now.
func TestUsageWorkerGone(t *testing.T) {
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID, BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerInstanceHour, CreatedAt: t0}}
	ready, stopped, gone := billing.InstanceReady, billing.InstanceStopped, billing.InstanceGone
	tests := []struct {
		name      string
		evs       []billing.InstanceEvent
		deletedAt time.Time
		now       time.Time
		wantMins  uint64
	}{
		{name: "gone first", evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40), iev("a", stopped, 70)},
			now: at(500), wantMins: 40},
		{name: "stopped first", evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", stopped, 30), iev("a", gone, 40)},
			now: at(500), wantMins: 30},
		{name: "deleted first", evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40)},
			deletedAt: at(25), now: at(500), wantMins: 25},
		{name: "now first", evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40)},
			now: at(20), wantMins: 20},
		{name: "gone, announced again, the worker back", evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40),
			iev("a", gone, 42), iev("a", ready, 50), iev("a", stopped, 80)}, now: at(500), wantMins: 40},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &fakeStore{lifecycle: billing.Lifecycle{Instances: tc.evs, DeletedAt: tc.deletedAt}}
			svc := billing.New(store, services, billing.WithClock(func() time.Time { return tc.now }))
			u, err := svc.Usage(context.Background(), alice, billing.Query{ServiceID: "s1"})
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.wantMins * 60; u.InstanceSeconds != want || u.CostMicros != want*500 {
				t.Errorf("instance seconds %d, cost %d; want %d, %d", u.InstanceSeconds, u.CostMicros, want, want*500)
			}
		})
	}
}
