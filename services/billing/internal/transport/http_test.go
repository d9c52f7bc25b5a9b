package transport_test

import (
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// get calls the usage API and returns the status and body.
func (e *env) get(path, secret string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, e.url+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func TestUsageAPI(t *testing.T) {
	e := newEnv(t)
	t0 := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	now := t0.Add(50 * time.Hour)
	e.serve(e.billing(e.store, billing.WithClock(func() time.Time { return now })))
	svc := e.service(e.alice, state.BillingPerToken, t0.Add(5*time.Minute))
	evs := []events.RequestCompletedV1{
		usageEvent(svc, "key-a", 1000, 500, t0.Add(10*time.Minute)),              // 450 micros
		usageEvent(svc, "key-b", 10, 0, t0.Add(20*time.Minute)),                  // 1.5 → 2
		usageEvent(svc, "key-a", 2000, 1000, t0.Add(26*time.Hour)),               // 900, the next day
		usageEvent(svc, "key-a", 1_000_000, 0, t0.Add(26*time.Hour+time.Minute)), // 150,000
	}
	if err := e.store.InsertUsage(e.ctx, evs); err != nil {
		t.Fatal(err)
	}
	base := "/api/v1/usage?service_id=" + svc.ID

	t.Run("totals keep the flat fields", func(t *testing.T) {
		status, _, body := e.get(base, e.aliceKey)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		var raw map[string]any
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"service_id", "from", "to", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "instance_seconds", "cost_micros", "currency"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("no %q in %s", k, body)
			}
		}
		if _, ok := raw["data"]; ok {
			t.Errorf("data without group_by: %s", body)
		}
		var u billing.Usage
		if err := json.Unmarshal(body, &u); err != nil {
			t.Fatal(err)
		}
		if u.Requests != 4 || u.PromptTokens != 1_003_010 || u.CompletionTokens != 1500 || u.TotalTokens != 1_004_510 {
			t.Errorf("totals %+v", u)
		}
		if u.CostMicros != 450+2+150_900 || u.Currency != "USD" {
			t.Errorf("cost %d %s, want %d USD", u.CostMicros, u.Currency, 450+2+150_900)
		}
		if !u.From.Equal(t0) || !u.To.Equal(now) {
			t.Errorf("window %v .. %v, want %v .. %v", u.From, u.To, t0, now)
		}
	})

	t.Run("grouped", func(t *testing.T) {
		for _, tc := range []struct {
			group string
			want  []billing.Row
		}{
			{"day", []billing.Row{
				{PeriodStart: t0.Truncate(24 * time.Hour), Requests: 2, PromptTokens: 1010, CompletionTokens: 500, TotalTokens: 1510, CostMicros: 452},
				{PeriodStart: t0.Truncate(24 * time.Hour).Add(24 * time.Hour), Requests: 2, PromptTokens: 1_002_000, CompletionTokens: 1000, TotalTokens: 1_003_000, CostMicros: 150_900},
			}},
			{"api_key", []billing.Row{
				{APIKeyID: "key-a", Requests: 3, PromptTokens: 1_003_000, CompletionTokens: 1500, TotalTokens: 1_004_500, CostMicros: 151_350},
				{APIKeyID: "key-b", Requests: 1, PromptTokens: 10, TotalTokens: 10, CostMicros: 2},
			}},
		} {
			status, _, body := e.get(base+"&group_by="+tc.group, e.aliceKey)
			if status != http.StatusOK {
				t.Fatalf("%s: status %d: %s", tc.group, status, body)
			}
			var u billing.Usage
			if err := json.Unmarshal(body, &u); err != nil {
				t.Fatal(err)
			}
			if len(u.Data) != len(tc.want) {
				t.Fatalf("%s: rows %+v, want %+v", tc.group, u.Data, tc.want)
			}
			for i := range tc.want {
				if !u.Data[i].PeriodStart.Equal(tc.want[i].PeriodStart) {
					t.Errorf("%s row %d starts %v, want %v", tc.group, i, u.Data[i].PeriodStart, tc.want[i].PeriodStart)
				}
				u.Data[i].PeriodStart = tc.want[i].PeriodStart
				if u.Data[i] != tc.want[i] {
					t.Errorf("%s row %d = %+v, want %+v", tc.group, i, u.Data[i], tc.want[i])
				}
			}
			if strings.Contains(string(body), `"period_start"`) == (tc.group == "api_key") {
				t.Errorf("%s: period_start present where it should not be, or missing: %s", tc.group, body)
			}
		}
	})

	t.Run("a window", func(t *testing.T) {
		q := url.Values{"from": {t0.Add(24 * time.Hour).Format(time.RFC3339)}, "to": {t0.Add(27 * time.Hour).Format(time.RFC3339)}}
		status, _, body := e.get(base+"&"+q.Encode(), e.aliceKey)
		var u billing.Usage
		if err := json.Unmarshal(body, &u); err != nil || status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		if u.Requests != 2 || u.CostMicros != 150_900 {
			t.Errorf("window usage %+v", u)
		}
	})

	t.Run("csv has the same rows", func(t *testing.T) {
		for _, group := range []string{"", "hour", "day", "api_key"} {
			_, _, jsonBody := e.get(base+"&group_by="+group, e.aliceKey)
			var u billing.Usage
			if err := json.Unmarshal(jsonBody, &u); err != nil {
				t.Fatal(err)
			}
			status, h, body := e.get(strings.Replace(base, "/usage?", "/usage/export.csv?", 1)+"&group_by="+group, e.aliceKey)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/csv") {
				t.Errorf("Content-Type %q", ct)
			}
			recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(recs[0], ","), "service_id,period_start,period_end,api_key_id,requests,prompt_tokens,completion_tokens,total_tokens,instance_seconds,cost_micros,cost_usd,currency"; got != want {
				t.Errorf("header %s", got)
			}
			wantRows := max(len(u.Data), 1)
			if len(recs)-1 != wantRows {
				t.Fatalf("group %q: %d csv rows, want %d", group, len(recs)-1, wantRows)
			}
			var cost, requests uint64
			for _, r := range recs[1:] {
				c, _ := strconv.ParseUint(r[9], 10, 64)
				n, _ := strconv.ParseUint(r[4], 10, 64)
				cost, requests = cost+c, requests+n
				if r[0] != svc.ID || r[11] != "USD" {
					t.Errorf("row %v", r)
				}
			}
			if cost != u.CostMicros || requests != u.Requests {
				t.Errorf("group %q: csv sums to %d micros, %d requests; JSON %d, %d", group, cost, requests, u.CostMicros, u.Requests)
			}
			if group == "" && recs[1][10] != "0.151352" {
				t.Errorf("cost_usd %q, want 0.151352", recs[1][10])
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name, path, secret string
			status             int
			param              string
		}{
			{"no key", base, "", http.StatusUnauthorized, ""},
			{"another owner", base, e.bobKey, http.StatusNotFound, ""},
			{"another owner, csv", strings.Replace(base, "/usage?", "/usage/export.csv?", 1), e.bobKey, http.StatusNotFound, ""},
			{"unknown service", "/api/v1/usage?service_id=0f5a7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b", e.aliceKey, http.StatusNotFound, ""},
			{"no service", "/api/v1/usage", e.aliceKey, http.StatusBadRequest, "service_id"},
			{"bad from", base + "&from=yesterday", e.aliceKey, http.StatusBadRequest, "from"},
			{"bad to", base + "&to=2025-13-01T00:00:00Z", e.aliceKey, http.StatusBadRequest, "to"},
			{"to before from", base + "&from=2025-05-02T00:00:00Z&to=2025-05-01T00:00:00Z", e.aliceKey, http.StatusBadRequest, "to"},
			{"bad group", base + "&group_by=week", e.aliceKey, http.StatusBadRequest, "group_by"},
			{"dead letters are for admins", "/api/v1/usage/deadletters", e.aliceKey, http.StatusForbidden, ""},
		} {
			status, _, body := e.get(tc.path, tc.secret)
			if status != tc.status {
				t.Errorf("%s: status %d, want %d: %s", tc.name, status, tc.status, body)
				continue
			}
			var eb struct {
				Error struct {
					Type  string  `json:"type"`
					Param *string `json:"param"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Type == "" {
				t.Errorf("%s: not an OpenAI error: %s", tc.name, body)
			}
			if tc.param != "" && (eb.Error.Param == nil || *eb.Error.Param != tc.param) {
				t.Errorf("%s: param %v, want %q", tc.name, eb.Error.Param, tc.param)
			}
		}
	})

	t.Run("dead letters for admins", func(t *testing.T) {
		status, _, body := e.get("/api/v1/usage/deadletters", e.adminKey)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		if got, want := strings.TrimSpace(string(body)), `{"count":0,"data":[]}`; got != want {
			t.Errorf("body %s, want %s", got, want)
		}
	})
}
