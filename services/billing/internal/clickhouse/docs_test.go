package clickhouse_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// docFile is the analysts' guide, relative to this package.
const docFile = "../../../../docs/billing.md"

// docQueries returns the SQL blocks of docs/billing.md marked with
// <!-- query: NAME --> or <!-- statements: NAME -->, by name.
func docQueries(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(docFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	var name string
	var sql strings.Builder
	inBlock := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "<!-- query: ") || strings.HasPrefix(line, "<!-- statements: "):
			name = strings.TrimSuffix(strings.SplitN(line, ": ", 2)[1], " -->")
		case line == "```sql" && name != "":
			inBlock = true
			sql.Reset()
		case line == "```" && inBlock:
			out[name] = sql.String()
			inBlock, name = false, ""
		case inBlock:
			sql.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// query runs a documented query on db and returns its rows as strings.
func query(t *testing.T, conn ch.Conn, db, sql string) [][]string {
	t.Helper()
	sql = strings.ReplaceAll(sql, "modelport.", db+".")
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	cols := rows.ColumnTypes()
	var out [][]string
	for rows.Next() {
		vals := make([]any, len(cols))
		for i, c := range cols {
			vals[i] = reflect.New(c.ScanType()).Interface()
		}
		if err := rows.Scan(vals...); err != nil {
			t.Fatal(err)
		}
		rec := make([]string, len(vals))
		for i, v := range vals {
			v = reflect.ValueOf(v).Elem().Interface()
			if tm, ok := v.(time.Time); ok {
				layout := "2006-01-02 15:04:05"
				if cols[i].DatabaseTypeName() == "Date" {
					layout = "2006-01-02"
				}
				v = tm.UTC().Format(layout)
			}
			rec[i] = fmt.Sprint(v)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// services is billing.Services over a map, standing in for the services
// bucket, which this package does not reach.
type services map[string]state.Service

func (s services) Service(_ context.Context, id string) (state.Service, error) {
	if svc, ok := s[id]; ok {
		return svc, nil
	}
	return state.Service{}, errs.E(errs.NotFound, "service %s not found", id)
}

// TestDocumentedSQL runs every query in docs/billing.md on ClickHouse, as
// the analysts' read-only user, and checks that the ones that bill agree
// with the usage API's numbers. Billing stores the data as its own user;
// the maintenance statements run as the administrator.
func TestDocumentedSQL(t *testing.T) {
	sec, s := securedStore(t)
	conn := rawAs(t, sec.Addr, "default", "")
	analyst := rawAs(t, sec.Addr, sec.Analyst.Name, sec.Analyst.Password)
	db := sec.Database
	ctx := context.Background()
	qs := docQueries(t)
	for _, name := range []string{"tokens-per-service-per-day", "top-keys", "cost-per-month", "statement-per-service", "statement-totals",
		"prices-at", "requests-by-status", "instance-time-per-day", "rollup-check", "refill-rollup", "cache-hit-rate"} {
		if qs[name] == "" {
			t.Fatalf("docs/billing.md has no query %q", name)
		}
	}
	seedPrices(t, s)

	may := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	d := func(day, hour, minute int) time.Time {
		return may.Add(time.Duration(day-1)*24*time.Hour + time.Duration(hour)*time.Hour + time.Duration(minute)*time.Minute)
	}
	owner := "a11ce0000001"
	mk := func(id, model, method string) state.Service {
		return state.Service{ID: id, OwnerID: owner, Name: id, AccessName: "u-" + owner + "/" + id, BaseModel: model,
			Task: state.TaskTextGeneration, BillingMethod: method, CreatedAt: d(1, 0, 0)}
	}
	svcs := services{
		"svc-tokens":    mk("svc-tokens", "qwen2.5-7b-instruct", state.BillingPerToken),
		"svc-instances": mk("svc-instances", "llama-3.1-8b-instruct", state.BillingPerInstanceHour),
		"svc-unlisted":  mk("svc-unlisted", "a-model-with-no-price", state.BillingPerToken),
	}
	var created []billing.ServiceEvent
	for _, sv := range svcs {
		created = append(created, billing.ServiceEvent{EventID: events.NewMeta().ID, Kind: billing.ServiceCreated, ServiceID: sv.ID,
			OwnerID: sv.OwnerID, Name: sv.Name, AccessName: sv.AccessName, BaseModel: sv.BaseModel, Task: sv.Task,
			BillingMethod: sv.BillingMethod, At: sv.CreatedAt})
	}
	deletion := billing.ServiceEvent{EventID: events.NewMeta().ID, Kind: billing.ServiceDeleted, ServiceID: "svc-tokens", OwnerID: owner, At: d(20, 10, 30)}
	deletion2 := billing.ServiceEvent{EventID: events.NewMeta().ID, Kind: billing.ServiceDeleted, ServiceID: "svc-instances", OwnerID: owner, At: d(3, 12, 0)}
	if err := s.InsertServiceEvents(ctx, append(created, deletion, deletion2)); err != nil {
		t.Fatal(err)
	}

	var evs []events.RequestCompletedV1
	status := []int{200, 200, 200, 429, 500}
	for i := range 400 {
		sv := []state.Service{svcs["svc-tokens"], svcs["svc-instances"], svcs["svc-unlisted"]}[i%3]
		at := d(1+i%25, (i*7)%24, (i*13)%60)
		e := usage(sv.ID, 37*i%5000, 11*i%700, at)
		e.BaseModel, e.Status = sv.BaseModel, status[i%len(status)]
		e.APIKeyID = fmt.Sprintf("key-%d", i%4)
		e.CachedTokens = e.PromptTokens * (i % 4) / 4 / 16 * 16 // whole blocks, as engines cache them
		evs = append(evs, e)
	}
	insert(t, s, evs...)
	insert(t, s, evs[:50]...) // a redelivery

	ready, stopped, gone := billing.InstanceReady, billing.InstanceStopped, billing.InstanceGone
	ie := func(kind billing.InstanceKind, instance string, at time.Time) billing.InstanceEvent {
		return billing.InstanceEvent{EventID: events.NewMeta().ID, Kind: kind, InstanceID: instance, ServiceID: "svc-instances", WorkerID: "w1", At: at}
	}
	if err := s.InsertInstanceEvents(ctx, []billing.InstanceEvent{
		ie(ready, "i1", d(1, 9, 15)), ie(stopped, "i1", d(2, 17, 40)),
		ie(ready, "i2", d(2, 8, 0)), ie(ready, "i2", d(2, 9, 0)), // runs until the deletion on the 3rd
		ie(ready, "i3", d(5, 0, 0)), // after the deletion: never billed
		// i4's worker dies at 20:00; it comes back, announces i4 and stops
		// it: billed up to the loss only.
		ie(ready, "i4", d(1, 12, 0)), ie(gone, "i4", d(1, 20, 0)), ie(ready, "i4", d(1, 21, 0)), ie(stopped, "i4", d(2, 3, 0)),
	}); err != nil {
		t.Fatal(err)
	}

	fill(t, s) // the rollup job
	svc := billing.New(s, svcs, billing.WithClock(func() time.Time { return time.Now() }))
	admin := auth.Key{Admin: true}
	june := may.AddDate(0, 1, 0)
	usageOf := func(id, group string) billing.Usage {
		u, err := svc.Usage(ctx, admin, billing.Query{ServiceID: id, From: may, To: june, GroupBy: group})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	t.Run("cost-per-month", func(t *testing.T) {
		got := map[string]string{}
		for _, r := range query(t, analyst, db, qs["cost-per-month"]) {
			if r[1] == "2025-05-01" {
				got[r[0]] = r[2] + " " + r[3]
			}
		}
		for id := range svcs {
			u := usageOf(id, "")
			if u.CostMicros == 0 {
				t.Errorf("%s costs nothing: the test bills nothing", id)
			}
			want := fmt.Sprintf("%d %d.%06d", u.CostMicros, u.CostMicros/1_000_000, u.CostMicros%1_000_000)
			if got[id] != want {
				t.Errorf("%s: SQL says %q, the API %q", id, got[id], want)
			}
		}
	})
	t.Run("token_lines", func(t *testing.T) {
		u := usageOf("svc-tokens", "")
		r := query(t, conn, db, "SELECT sum(requests), sum(total_tokens) FROM modelport.token_lines WHERE service_id = 'svc-tokens'")
		if want := fmt.Sprintf("[[%d %d]]", u.Requests, u.TotalTokens); fmt.Sprint(r) != want {
			t.Errorf("token_lines %v, API %s", r, want)
		}
		if u.Requests == 0 || u.Requests == uint64(len(evs)/3+1) {
			t.Errorf("svc-tokens bills %d requests: the deletion cut nothing", u.Requests)
		}
	})
	t.Run("instance-time-per-day", func(t *testing.T) {
		u := usageOf("svc-instances", billing.GroupDay)
		var want [][]string
		for _, row := range u.Data {
			if row.InstanceSeconds > 0 {
				want = append(want, []string{"svc-instances", row.PeriodStart.Format("2006-01-02"), fmt.Sprint(row.InstanceSeconds), fmt.Sprint(row.CostMicros)})
			}
		}
		var got [][]string
		for _, r := range query(t, analyst, db, qs["instance-time-per-day"]) {
			if r[0] == "svc-instances" {
				got = append(got, r)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || len(want) != 3 {
			t.Errorf("SQL\n%v\nAPI\n%v", got, want)
		}
		// The 1st: i1 from 09:15, i4 from 12:00 to its worker's loss at 20:00.
		if got, want := u.Data[0].InstanceSeconds, uint64((14*60+45+8*60)*60); got != want {
			t.Errorf("instance seconds on the 1st = %d, want %d", got, want)
		}
	})
	t.Run("tokens-per-service-per-day", func(t *testing.T) {
		u := usageOf("svc-unlisted", billing.GroupDay) // never deleted: served = billed
		want := map[string]string{}
		for _, row := range u.Data {
			want[row.PeriodStart.Format("2006-01-02")] = fmt.Sprint(row.Requests, row.PromptTokens, row.CompletionTokens, row.TotalTokens)
		}
		got := map[string]string{}
		for _, r := range query(t, analyst, db, qs["tokens-per-service-per-day"]) {
			if r[0] == "svc-unlisted" {
				got[r[1]] = strings.Join(r[2:], " ")
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SQL\n%v\nAPI\n%v", got, want)
		}
	})
	t.Run("cache-hit-rate", func(t *testing.T) {
		type sums struct{ requests, prompt, cached int }
		want := map[string]sums{}
		for _, e := range evs {
			if e.Status != 200 {
				continue
			}
			w := want[e.ServiceID]
			want[e.ServiceID] = sums{w.requests + 1, w.prompt + e.PromptTokens, w.cached + e.CachedTokens}
		}
		rows := query(t, analyst, db, qs["cache-hit-rate"])
		if len(rows) != len(want) {
			t.Fatalf("SQL has %d services, want %d: %v", len(rows), len(want), rows)
		}
		for _, r := range rows {
			var got sums
			var rate float64
			fmt.Sscan(r[1], &got.requests)
			fmt.Sscan(r[2], &got.prompt)
			fmt.Sscan(r[3], &got.cached)
			fmt.Sscan(r[4], &rate)
			w := want[r[0]]
			if got != w {
				t.Errorf("%s: SQL %+v, want each event once: %+v", r[0], got, w)
			}
			if wantRate := float64(w.cached) / float64(w.prompt); w.cached == 0 || rate < wantRate-0.001 || rate > wantRate+0.001 {
				t.Errorf("%s: hit rate %v, want %.4f (and some hits)", r[0], rate, wantRate)
			}
		}
	})
	t.Run("requests-by-status", func(t *testing.T) {
		want := map[string]int{}
		for _, e := range evs {
			want[fmt.Sprintf("%s %d", e.ServiceID, e.Status)]++
		}
		got := map[string]int{}
		for _, r := range query(t, analyst, db, qs["requests-by-status"]) {
			var n int
			fmt.Sscan(r[2], &n)
			got[r[0]+" "+r[1]] = n
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SQL %v, want %v", got, want)
		}
	})
	t.Run("top-keys", func(t *testing.T) {
		rows := query(t, analyst, db, qs["top-keys"])
		if len(rows) != 4 {
			t.Fatalf("top keys %v, want 4 keys", rows)
		}
		var prev uint64 = 1 << 63
		for _, r := range rows {
			var n uint64
			fmt.Sscan(r[3], &n)
			if n > prev {
				t.Errorf("top keys not ordered by tokens: %v", rows)
			}
			prev = n
		}
	})
	t.Run("statements", func(t *testing.T) {
		closing, err := svc.ClosePeriod(ctx, admin, billing.PeriodOf(may))
		if err != nil {
			t.Fatal(err)
		}
		st, err := svc.Statements(ctx, admin, billing.PeriodOf(may))
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != billing.StatusClosed || !st.ClosedAt.Equal(closing.ClosedAt) || len(st.Data) != len(svcs) {
			t.Fatalf("statements %+v", st)
		}
		want := map[string]string{}
		for _, sv := range st.Data {
			want[sv.ServiceID] = fmt.Sprint(sv.UsageCostMicros, sv.AdjustmentsCostMicros, sv.CostMicros)
			if u := usageOf(sv.ServiceID, ""); sv.CostMicros != int64(u.CostMicros) {
				t.Errorf("%s: statement %d micros, the API %d", sv.ServiceID, sv.CostMicros, u.CostMicros)
			}
		}
		got := map[string]string{}
		for _, r := range query(t, analyst, db, strings.ReplaceAll(qs["statement-per-service"], "2025-05-01", may.Format("2006-01-02"))) {
			got[r[0]] = strings.Join(r[2:], " ")
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("statement-per-service\n%v\nthe API\n%v", got, want)
		}
		totals := query(t, analyst, db, qs["statement-totals"])
		if len(totals) != 1 || totals[0][0] != "2025-05-01" || totals[0][1] != fmt.Sprint(st.CostMicros) || totals[0][2] != "0" {
			t.Errorf("statement-totals %v, want May at %d with no adjustments", totals, st.CostMicros)
		}
	})
	t.Run("prices-at", func(t *testing.T) {
		sch, err := s.PriceSchedule(ctx)
		if err != nil {
			t.Fatal(err)
		}
		at := time.Date(2025, 5, 10, 14, 0, 0, 0, time.UTC)
		rows := query(t, analyst, db, qs["prices-at"])
		if len(rows) != len(billing.DefaultPriceList()) {
			t.Fatalf("prices-at: %d rows, want one per price: %v", len(rows), rows)
		}
		for _, r := range rows {
			e := sch.At(r[0], r[1], at)
			if want := fmt.Sprintf("%s %d %d %d", e.ValidFrom.Format("2006-01-02 15:04:05"), e.InputMicrosPerMTok, e.OutputMicrosPerMTok, e.InstanceHourMicros); strings.Join(r[2:], " ") != want {
				t.Errorf("prices-at %v, the schedule %s", r, want)
			}
		}
	})
	t.Run("rollup-check finds a disagreement and billing fills it again", func(t *testing.T) {
		if rows := query(t, analyst, db, qs["rollup-check"]); len(rows) != 0 {
			t.Fatalf("rollup disagrees before anything went wrong: %v", rows)
		}
		insertBehindTheGate(t, conn, db, evs[0]) // a duplicate: the rollup counts events
		if rows := query(t, analyst, db, qs["rollup-check"]); len(rows) != 0 {
			t.Fatalf("rollup-check after a duplicate behind the gate = %v, want none", rows)
		}
		extra := usage(evs[0].ServiceID, 5, 5, evs[0].OccurredAt) // a new event no batch noted
		insertBehindTheGate(t, conn, db, extra)
		if rows := query(t, analyst, db, qs["rollup-check"]); len(rows) != 1 || rows[0][0] != evs[0].ServiceID {
			t.Fatalf("rollup-check after a row written by hand = %v, want one row for %s", rows, evs[0].ServiceID)
		}
		for _, stmt := range strings.Split(qs["refill-rollup"], ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if err := conn.Exec(ctx, strings.ReplaceAll(stmt, "modelport.", db+".")); err != nil {
				t.Fatalf("%v\n%s", err, stmt)
			}
		}
		if r := fill(t, s); len(r.Refilled) == 0 {
			t.Errorf("the rollup job filled nothing again: %+v", r)
		}
		if rows := query(t, analyst, db, qs["rollup-check"]); len(rows) != 0 {
			t.Errorf("rollup disagrees after billing filled it again: %v", rows)
		}
	})
}
