package transport_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// post calls the API with a JSON body and returns the status and body.
func (e *env) post(path, secret, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, http.MethodPost, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func errorParam(t *testing.T, body []byte) string {
	t.Helper()
	var eb struct {
		Error struct {
			Param *string `json:"param"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("not an OpenAI error: %s", body)
	}
	if eb.Error.Param == nil {
		return ""
	}
	return *eb.Error.Param
}

func TestStatementsAPI(t *testing.T) {
	e := newEnv(t)
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := nov.AddDate(0, 1, 1)
	e.serve(e.billing(e.store, billing.WithClock(func() time.Time { return now })))
	svc := e.service(e.alice, state.BillingPerToken, nov)
	bobs := e.service(e.bob, state.BillingPerToken, nov)
	if err := e.store.InsertUsage(e.ctx, []events.RequestCompletedV1{
		usageEvent(svc, "=cmd|' /C calc'!A0", 1_000_000, 0, nov.Add(3*time.Hour)), // 150,000
		usageEvent(svc, "k2", 0, 1_000_000, nov.Add(50*time.Hour)),                // 600,000
		usageEvent(bobs, "k3", 10, 10, nov.Add(time.Hour)),
	}); err != nil {
		t.Fatal(err)
	}
	statements := func(secret string) billing.Statements {
		t.Helper()
		status, _, body := e.get("/api/v1/statements?period=2026-11", secret)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		var st billing.Statements
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	open := statements(e.aliceKey)
	if open.Status != billing.StatusOpen || open.CostMicros != 750_000 || len(open.Data) != 1 || open.Data[0].ServiceID != svc.ID || len(open.Data[0].Lines) != 2 {
		t.Errorf("alice's open November = %+v", open)
	}

	if status, body := e.post("/api/v1/periods/2026-11/close", e.aliceKey, ""); status != http.StatusForbidden {
		t.Errorf("alice closing: %d %s, want 403", status, body)
	}
	if status, body := e.post("/api/v1/periods/2026-12/close", e.adminKey, ""); status != http.StatusConflict {
		t.Errorf("closing December on December 2nd: %d %s, want 409", status, body)
	}
	status, body := e.post("/api/v1/periods/2026-11/close", e.adminKey, "")
	var closing billing.Closing
	if err := json.Unmarshal(body, &closing); status != http.StatusOK || err != nil || closing.Period.String() != "2026-11" || closing.CloseID == "" {
		t.Fatalf("admin closing: %d %s", status, body)
	}
	status, _, body = e.get("/api/v1/periods", e.aliceKey)
	if status != http.StatusOK || !strings.Contains(string(body), `"period":"2026-11"`) {
		t.Errorf("periods: %d %s", status, body)
	}
	closed := statements(e.aliceKey)
	if closed.Status != billing.StatusClosed || closed.CostMicros != 750_000 || !closed.ClosedAt.Equal(closing.ClosedAt) {
		t.Errorf("alice's closed November = %+v", closed)
	}
	if all := statements(e.adminKey); len(all.Data) != 2 {
		t.Errorf("the admin sees %d statements, want both owners'", len(all.Data))
	}

	t.Run("csv has the same lines, none of them a formula", func(t *testing.T) {
		status, h, body := e.get("/api/v1/statements/export.csv?period=2026-11", e.aliceKey)
		if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/csv") {
			t.Fatalf("status %d %s: %s", status, h.Get("Content-Type"), body)
		}
		recs, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if recs[0][0] != "period" || recs[0][16] != "cost_micros" || len(recs) != 3 {
			t.Fatalf("csv %q", recs)
		}
		var sum int64
		for _, r := range recs[1:] {
			n, _ := strconv.ParseInt(r[16], 10, 64)
			sum += n
			for _, c := range r {
				if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
					t.Errorf("cell %q would be a formula", c)
				}
			}
			if r[1] != "closed" || r[6] != "usage" || r[7] != "2026-11" {
				t.Errorf("row %q", r)
			}
		}
		if sum != closed.CostMicros {
			t.Errorf("csv sums to %d, JSON %d", sum, closed.CostMicros)
		}
	})
	t.Run("bad periods", func(t *testing.T) {
		for _, path := range []string{"/api/v1/statements", "/api/v1/statements?period=2026-13", "/api/v1/statements/export.csv?period=november"} {
			status, _, body := e.get(path, e.aliceKey)
			if status != http.StatusBadRequest || errorParam(t, body) != "period" {
				t.Errorf("%s: %d %s", path, status, body)
			}
		}
	})
}

func TestPricesAPI(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 11, 10, 14, 20, 0, 0, time.UTC)
	e.serve(e.billing(e.store, billing.WithClock(func() time.Time { return now })))
	var sch struct {
		Revision uint64               `json:"revision"`
		Data     []billing.PriceEntry `json:"data"`
	}
	status, _, body := e.get("/api/v1/prices", e.aliceKey)
	if err := json.Unmarshal(body, &sch); status != http.StatusOK || err != nil || sch.Revision != 1 || len(sch.Data) != len(billing.DefaultPriceList()) {
		t.Fatalf("prices: %d %s", status, body)
	}
	rise := `{"prices":[{"base_model":"qwen2.5-7b-instruct","billing_method":"per-token","valid_from":"2026-11-10T15:00:00Z","input_micros_per_mtok":160000,"output_micros_per_mtok":650000}]}`
	for _, tc := range []struct {
		name, secret, body string
		status             int
		param              string
	}{
		{"an owner", e.aliceKey, rise, http.StatusForbidden, ""},
		{"no valid_from", e.adminKey, `{"prices":[{"base_model":"m","billing_method":"per-token","input_micros_per_mtok":1}]}`, http.StatusBadRequest, "prices[0].valid_from"},
		{"from the past", e.adminKey, strings.Replace(rise, "15:00", "14:00", 1), http.StatusBadRequest, ""},
		{"changing a stored price", e.adminKey, `{"prices":[{"base_model":"*","billing_method":"per-token","valid_from":"1970-01-01T00:00:00Z","input_micros_per_mtok":1,"output_micros_per_mtok":1}]}`, http.StatusConflict, ""},
		{"nothing", e.adminKey, `{"prices":[]}`, http.StatusBadRequest, "prices"},
		{"not json", e.adminKey, `{`, http.StatusBadRequest, ""},
	} {
		status, body := e.post("/api/v1/prices", tc.secret, tc.body)
		if status != tc.status || (tc.param != "" && errorParam(t, body) != tc.param) {
			t.Errorf("%s: %d %s, want %d (param %q)", tc.name, status, body, tc.status, tc.param)
		}
	}
	status, body = e.post("/api/v1/prices", e.adminKey, rise)
	if err := json.Unmarshal(body, &sch); status != http.StatusOK || err != nil || sch.Revision != 2 || len(sch.Data) != len(billing.DefaultPriceList())+1 {
		t.Fatalf("adding a price: %d %s", status, body)
	}
	// The same change again adds nothing.
	if status, body = e.post("/api/v1/prices", e.adminKey, rise); status != http.StatusOK || !strings.Contains(string(body), `"revision":2`) {
		t.Errorf("the same change again: %d %s", status, body)
	}
}
