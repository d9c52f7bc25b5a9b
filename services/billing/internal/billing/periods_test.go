package billing_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func TestParsePeriod(t *testing.T) {
	p, err := billing.ParsePeriod("2026-11")
	if err != nil || p.String() != "2026-11" || !p.Start().Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) ||
		!p.End().Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) || p.Next().String() != "2026-12" || p.Prev().String() != "2026-10" {
		t.Errorf("ParsePeriod(2026-11) = %v (%v .. %v), %v", p, p.Start(), p.End(), err)
	}
	for _, bad := range []string{"", "2026-13", "2026-1", "26-11", "2026-11-01", "1969-12", "november"} {
		if _, err := billing.ParsePeriod(bad); errs.KindOf(err) != errs.Invalid {
			t.Errorf("ParsePeriod(%q) = %v, want Invalid", bad, err)
		}
	}
}

// TestClosedPeriodsAndAdjustments closes November, lets usage of November
// arrive late, and checks that November's statement does not move and
// that December carries the difference as an adjustment, once.
func TestClosedPeriodsAndAdjustments(t *testing.T) {
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	dec, jan := nov.AddDate(0, 1, 0), nov.AddDate(0, 2, 0)
	now := dec.Add(36 * time.Hour)
	// qwen2.5-7b-instruct per token: 150,000 and 600,000 micros per
	// million tokens.
	store := &fakeStore{lines: []line{
		{Hour: nov.Add(5 * time.Hour), APIKeyID: "k1", BaseModel: "qwen2.5-7b-instruct", Requests: 2, PromptTokens: 1_000_000, CompletionTokens: 100_000}, // 210,000
		{Hour: dec.Add(2 * time.Hour), APIKeyID: "k1", BaseModel: "qwen2.5-7b-instruct", Requests: 1, PromptTokens: 100_000},                              // 15,000
	}}
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID, Name: "chat", BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerToken, CreatedAt: nov}}
	svc := billing.New(store, services, billing.WithClock(func() time.Time { return now }))
	ctx := context.Background()
	novP, decP, janP := billing.PeriodOf(nov), billing.PeriodOf(dec), billing.PeriodOf(jan)

	if _, err := svc.ClosePeriod(ctx, alice, novP); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("an owner closing a period: %v, want Forbidden", err)
	}
	if _, err := svc.ClosePeriod(ctx, admin, decP); errs.KindOf(err) != errs.Conflict {
		t.Errorf("closing the month in progress: %v, want Conflict", err)
	}
	open, err := svc.Statements(ctx, alice, novP)
	if err != nil || open.Status != billing.StatusOpen || open.CostMicros != 210_000 {
		t.Fatalf("November open = %+v, %v", open, err)
	}
	closing, err := svc.ClosePeriod(ctx, admin, novP)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := svc.ClosePeriod(ctx, admin, novP); err != nil || again != closing {
		t.Errorf("closing again = %+v, %v; want the first closing %+v", again, err, closing)
	}

	// Usage of November arrives after the close.
	store.lines = append(store.lines, line{Hour: nov.Add(20 * 24 * time.Hour), APIKeyID: "k2", BaseModel: "qwen2.5-7b-instruct", Requests: 1, CompletionTokens: 10_000}) // 6,000
	closed, err := svc.Statements(ctx, alice, novP)
	if err != nil || closed.Status != billing.StatusClosed || closed.CostMicros != 210_000 || !closed.ClosedAt.Equal(closing.ClosedAt) {
		t.Errorf("November after late usage = %+v, %v; want it closed at 210000", closed, err)
	}
	december, err := svc.Statements(ctx, alice, decP)
	if err != nil || december.Status != billing.StatusOpen || len(december.Data) != 1 {
		t.Fatalf("December = %+v, %v", december, err)
	}
	st := december.Data[0]
	if st.UsageCostMicros != 15_000 || st.AdjustmentsCostMicros != 6_000 || st.CostMicros != 21_000 {
		t.Errorf("December statement %+v: want 15000 of its own and 6000 for November", st)
	}
	var adj []billing.StatementLine
	for _, l := range st.Lines {
		if l.Kind == billing.LineAdjustment {
			adj = append(adj, l)
		}
	}
	if len(adj) != 1 || adj[0].ForPeriod != novP || adj[0].APIKeyID != "k2" || adj[0].Requests != 1 || adj[0].CostMicros != 6_000 {
		t.Errorf("adjustments %+v, want one for November's late k2 line", adj)
	}

	// December closes with the adjustment; January then owes November
	// nothing more.
	now = jan.Add(time.Hour)
	if _, err := svc.ClosePeriod(ctx, admin, decP); err != nil {
		t.Fatal(err)
	}
	january, err := svc.Statements(ctx, admin, janP)
	if err != nil || january.CostMicros != 0 {
		t.Errorf("January = %+v, %v; want nothing", january, err)
	}
	if decClosed, _ := svc.Statements(ctx, alice, decP); decClosed.CostMicros != 21_000 {
		t.Errorf("December closed at %d, want 21000", decClosed.CostMicros)
	}
	// Another owner sees no statement.
	if b, err := svc.Statements(ctx, bob, decP); err != nil || len(b.Data) != 0 || b.CostMicros != 0 {
		t.Errorf("bob's December = %+v, %v", b, err)
	}
}

func TestReconcileEndsInstancesWithoutEvidence(t *testing.T) {
	now := t0.Add(40 * time.Hour)
	lease := time.Minute
	store := &fakeStore{open: []billing.OpenInstance{
		{ServiceID: "s1", InstanceID: "seen", WorkerID: "w1", LastEventAt: t0, LastSeenAt: now.Add(-10 * time.Minute)},
		{ServiceID: "s1", InstanceID: "seen-recently-stored", WorkerID: "w1", LastEventAt: t0, LastSeenAt: now.Add(-time.Minute)},
		{ServiceID: "s1", InstanceID: "young", WorkerID: "w1", LastEventAt: now.Add(-30 * time.Second)},
		{ServiceID: "s1", InstanceID: "stop-lost", WorkerID: "w1", LastEventAt: t0, LastSeenAt: now.Add(-3 * time.Hour)},
		{ServiceID: "s2", InstanceID: "never-seen", WorkerID: "w2", LastEventAt: t0.Add(time.Hour)}, // 39 hours ago
	}}
	svc := billing.New(store, fakeServices{}, billing.WithClock(func() time.Time { return now }))
	seen := map[string]billing.Sighting{
		"seen":                 {InstanceID: "seen", WorkerID: "w1", At: now.Add(-time.Second)},
		"seen-recently-stored": {InstanceID: "seen-recently-stored", WorkerID: "w1", At: now.Add(-time.Second)},
	}
	open, stale, err := svc.OpenIntervals(context.Background())
	if err != nil || open != 5 || stale != 1 {
		t.Errorf("OpenIntervals = %d, %d, %v; want 5, and 1 with no evidence for over a day (never-seen: 39 hours)", open, stale, err)
	}
	r, err := svc.Reconcile(context.Background(), seen, lease)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Time{}
	for _, e := range store.recorded {
		if e.Kind != billing.InstanceLost {
			t.Errorf("stored a %s event", e.Kind)
		}
		got[e.InstanceID] = e.At
	}
	want := map[string]time.Time{"stop-lost": now.Add(-3 * time.Hour), "never-seen": t0.Add(time.Hour)}
	if len(got) != len(want) || got["stop-lost"] != want["stop-lost"] || got["never-seen"] != want["never-seen"] || r.Open != 5 || len(r.Ended) != 2 {
		t.Errorf("lost events %v, report %+v; want %v", got, r, want)
	}
	if len(store.sightings) != 1 || store.sightings[0].InstanceID != "seen" || store.sightings[0].ServiceID != "s1" {
		t.Errorf("sightings stored %+v, want the one not stored for 5 minutes", store.sightings)
	}
}
