package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/app"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// monthLedger is the bill of a simulated month worked out independently
// of billing: the prices are written out by hand below, each token line
// (service, UTC hour, API key, model) and each instance hour priced at
// its hour and rounded half up, as docs/billing.md says.
type monthLedger struct {
	mu     sync.Mutex
	tokens map[string]map[[3]string]*[3]uint64 // service → (hour, key, model) → requests, prompt, completion
}

func newMonthLedger() *monthLedger {
	return &monthLedger{tokens: map[string]map[[3]string]*[3]uint64{}}
}

func (l *monthLedger) add(ev events.RequestCompletedV1) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.tokens[ev.ServiceID]
	if m == nil {
		m = map[[3]string]*[3]uint64{}
		l.tokens[ev.ServiceID] = m
	}
	k := [3]string{ev.OccurredAt.UTC().Truncate(time.Hour).Format(time.RFC3339), ev.APIKeyID, ev.BaseModel}
	if m[k] == nil {
		m[k] = &[3]uint64{}
	}
	m[k][0]++
	m[k][1] += uint64(ev.PromptTokens)
	m[k][2] += uint64(ev.CompletionTokens)
}

// The month and its price changes.
var (
	nov2025 = time.Date(2025, 11, 1, 0, 0, 0, 0, time.UTC)
	dec2025 = nov2025.AddDate(0, 1, 0)
	jan2026 = nov2025.AddDate(0, 2, 0)
	// First change, through the API: qwen2.5-7b-instruct per token.
	qwenRise = time.Date(2025, 11, 10, 0, 0, 0, 0, time.UTC)
	// Second change, in the price list of a replica rolled out: '*' per
	// token, and llama-3.1-8b-instruct per instance-hour.
	starRise  = time.Date(2025, 11, 15, 0, 0, 0, 0, time.UTC)
	llamaRise = time.Date(2025, 11, 20, 0, 0, 0, 0, time.UTC)
)

// tokenPrice is what a token line costs per million tokens at hour.
func tokenPrice(model string, hour time.Time) (in, out uint64) {
	switch {
	case model == "qwen2.5-7b-instruct" && hour.Before(qwenRise):
		return 150_000, 600_000
	case model == "qwen2.5-7b-instruct":
		return 200_000, 700_000
	case hour.Before(starRise): // a model without a price: '*'
		return 500_000, 1_500_000
	default:
		return 550_000, 1_600_000
	}
}

// llamaHour is what an instance-hour of llama-3.1-8b-instruct costs at hour.
func llamaHour(hour time.Time) uint64 {
	if hour.Before(llamaRise) {
		return 2_000_000
	}
	return 2_400_000
}

// tokenCost is a service's token cost, requests and tokens in [from, to).
func (l *monthLedger) tokenCost(serviceID string, from, to time.Time) (cost, requests uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, v := range l.tokens[serviceID] {
		h, _ := time.Parse(time.RFC3339, k[0])
		if h.Before(from) || !h.Before(to) {
			continue
		}
		in, out := tokenPrice(k[2], h)
		cost += (v[1]*in + v[2]*out + 500_000) / 1_000_000
		requests += v[0]
	}
	return cost, requests
}

// intervals are the instance times of the per-instance-hour service, all
// on whole hours; an open one has a zero end.
type interval struct{ from, to time.Time }

func instanceCost(ivs []interval, from, to time.Time) (cost, seconds uint64) {
	for _, iv := range ivs {
		end := iv.to
		if end.IsZero() || end.After(to) {
			end = to
		}
		for h := iv.from; h.Before(end); h = h.Add(time.Hour) {
			if h.Before(from) {
				continue
			}
			cost += llamaHour(h)
			seconds += 3600
		}
	}
	return cost, seconds
}

// TestSimulatedMonth bills a month (November 2025) end to end: two billing
// replicas start at once; prices change twice, once through the API and
// once in the price list of a replica rolled out, and a past window reads
// the same before and after; one instance fails (its stop lost), one
// loses both its failure and its stop and is found lost from the
// heartbeats; November is closed; usage of November arrives after the
// close. The closed statements, the usage API and the documented SQL
// agree with a ledger worked out by hand to the micro-dollar, and
// November's late usage is billed once, in December.
func TestSimulatedMonth(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	var mu sync.Mutex
	now := nov2025
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	setClock := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }

	chat := w.service("alice", state.BillingPerToken, nov2025)
	chat.BaseModel = "qwen2.5-7b-instruct"
	other := w.service("bob", state.BillingPerToken, nov2025)
	other.BaseModel = "a-model-without-a-price"
	if err := state.Put(w.ctx, w.bus.KV(state.BucketServices), other.ID, other); err != nil {
		t.Fatal(err)
	}
	hosted := w.service("alice", state.BillingPerInstanceHour, nov2025)
	hosted.BaseModel = "llama-3.1-8b-instruct"
	if err := state.Put(w.ctx, w.bus.KV(state.BucketServices), hosted.ID, hosted); err != nil {
		t.Fatal(err)
	}

	// Two replicas start at once on an empty database.
	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 200, BatchWait: 20 * time.Millisecond, Now: clock,
		InstanceLease: time.Minute, ReconcileEvery: 50 * time.Millisecond, RollupEvery: 200 * time.Millisecond, RollupSettle: time.Nanosecond}
	a, urlA := w.billing(cfg, quiet)
	b, urlB := w.billing(cfg, quiet)
	defer func() { stop(a) }()
	stopB := func() { stop(b) }
	defer func() { stopB() }()
	adminPost := func(url, body string) []byte {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+w.admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out bytes.Buffer
		_, _ = out.ReadFrom(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %d %s", url, resp.StatusCode, out.Bytes())
		}
		return out.Bytes()
	}
	eventually(t, 60*time.Second, "both replicas ready", func() error {
		for _, u := range []string{urlA, urlB} {
			var p struct {
				Revision uint64 `json:"revision"`
			}
			if err := getJSON(u+"/api/v1/prices", w.admin, &p); err != nil {
				return err
			}
			if p.Revision != 1 {
				return fmt.Errorf("price revision %d", p.Revision)
			}
		}
		return nil
	})

	// First price change, through the API, on November 1st.
	adminPost(urlA+"/api/v1/prices", fmt.Sprintf(`{"prices":[{"base_model":"qwen2.5-7b-instruct","billing_method":"per-token","valid_from":%q,"input_micros_per_mtok":200000,"output_micros_per_mtok":700000}]}`, qwenRise.Format(time.RFC3339)))

	// Instances of the hosted service: i1 runs and stops; i2 fails and
	// its stop is lost; i3 loses both (found lost later); i4 runs on.
	h := func(day, hour int) time.Time {
		return nov2025.Add(time.Duration(day-1)*24*time.Hour + time.Duration(hour)*time.Hour)
	}
	i1, i2, i3, i4 := events.NewMeta().ID, events.NewMeta().ID, events.NewMeta().ID, events.NewMeta().ID
	at := func(m events.Meta, t time.Time) events.Meta { m.OccurredAt = t; return m }
	w.publish(events.InstanceReadyV1{Meta: at(events.NewMeta(), h(1, 10)), InstanceID: i1, ServiceID: hosted.ID, WorkerID: "w1"})
	w.publish(events.InstanceStoppedV1{Meta: at(events.NewMeta(), h(3, 12)), InstanceID: i1, ServiceID: hosted.ID, WorkerID: "w1", Reason: "scaled down"})
	w.publish(events.InstanceReadyV1{Meta: at(events.NewMeta(), h(5, 0)), InstanceID: i2, ServiceID: hosted.ID, WorkerID: "w1"})
	w.publish(events.InstanceFailedV1{Meta: at(events.NewMeta(), h(12, 0)), InstanceID: i2, ServiceID: hosted.ID, WorkerID: "w1", Reason: "crashed 5 times", ExitCode: 1, Restarts: 5})
	intervals := []interval{{h(1, 10), h(3, 12)}, {h(5, 0), h(12, 0)}, {h(18, 0), h(25, 6)}, {h(28, 0), time.Time{}}}

	// A month of requests.
	l := newMonthLedger()
	rng := rand.New(rand.NewPCG(11, 2025))
	request := func(svc state.Service, model string, from time.Time, span time.Duration) events.RequestCompletedV1 {
		ev := randomUsage(rng, svc, from)
		ev.OccurredAt = from.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Second)
		ev.BaseModel = model
		return ev
	}
	publishRequests := func(n int, from time.Time, span time.Duration) {
		for i := range n {
			svc, model := chat, chat.BaseModel
			if i%3 == 2 {
				svc, model = other, other.BaseModel
			}
			ev := request(svc, model, from, span)
			l.add(ev)
			w.publish(ev)
			if i%10 == 0 {
				w.publish(ev) // a retried publish: JetStream keeps one
			}
		}
	}
	publishRequests(1500, nov2025, dec2025.Sub(nov2025))

	billed := func(url, id string, from, to time.Time, group string) billing.Usage {
		t.Helper()
		var u billing.Usage
		q := fmt.Sprintf("%s/api/v1/usage?service_id=%s&from=%s&to=%s&group_by=%s", url, id, from.Format(time.RFC3339), to.Format(time.RFC3339), group)
		if err := getJSON(q, w.admin, &u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	eventually(t, 60*time.Second, "November's requests stored", func() error {
		for _, svc := range []state.Service{chat, other} {
			_, want := l.tokenCost(svc.ID, nov2025, dec2025)
			if u := billed(urlA, svc.ID, nov2025, dec2025, ""); u.Requests != want {
				return fmt.Errorf("%s: %d requests, want %d", svc.ID, u.Requests, want)
			}
		}
		return nil
	})

	// A past window, read through both replicas and the SQL, before the
	// second price change.
	firstDays := func() [][2]string {
		var out [][2]string
		for _, url := range []string{urlA, urlB} {
			for _, svc := range []state.Service{chat, other} {
				u := billed(url, svc.ID, nov2025, h(10, 0), "day")
				want, _ := l.tokenCost(svc.ID, nov2025, h(10, 0))
				if u.CostMicros != want {
					t.Errorf("%s, November 1-9: the API bills %d micros, the ledger %d", svc.ID, u.CostMicros, want)
				}
				out = append(out, [2]string{svc.ID, fmt.Sprint(u.CostMicros)})
			}
		}
		return out
	}
	sqlCost := func(id string, from, to time.Time) uint64 {
		t.Helper()
		var c uint64
		if err := conn.QueryRow(ctx, "SELECT sum(cost_micros) FROM (SELECT service_id, hour, cost_micros FROM "+db+".token_lines UNION ALL SELECT service_id, hour, cost_micros FROM "+db+".instance_lines) WHERE service_id = ? AND hour >= toDateTime(?) AND hour < toDateTime(?)",
			id, from.Unix(), to.Unix()).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	before := firstDays()
	beforeSQL := sqlCost(chat.ID, nov2025, h(10, 0))

	// November 12th: replica b is rolled out with a price list that adds
	// the second change. Replica a, still on the old list, goes on.
	setClock(h(12, 9))
	stopB()
	list := billing.DefaultPriceList()
	list = append(list,
		billing.PriceEntry{Price: billing.Price{BaseModel: "*", BillingMethod: state.BillingPerToken, InputMicrosPerMTok: 550_000, OutputMicrosPerMTok: 1_600_000}, ValidFrom: starRise},
		billing.PriceEntry{Price: billing.Price{BaseModel: "llama-3.1-8b-instruct", BillingMethod: state.BillingPerInstanceHour, InstanceHourMicros: 2_400_000}, ValidFrom: llamaRise})
	file := filepath.Join(t.TempDir(), "prices.json")
	raw, _ := json.MarshalIndent(list, "", "  ")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cfgB := cfg
	cfgB.PricesFile = file
	b, urlB = w.billing(cfgB, quiet)
	stopB = func() { stop(b) }
	eventually(t, 60*time.Second, "the rolled-out replica adds its new prices", func() error {
		var p struct {
			Revision uint64 `json:"revision"`
		}
		if err := getJSON(urlB+"/api/v1/prices", w.admin, &p); err != nil {
			return err
		}
		if p.Revision != 3 {
			return fmt.Errorf("price revision %d, want 3", p.Revision)
		}
		return nil
	})
	if after := firstDays(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("November 1-9 before the second price change %v, after %v", before, after)
	}
	if after := sqlCost(chat.ID, nov2025, h(10, 0)); after != beforeSQL {
		t.Errorf("November 1-9 in token_lines before the change %d, after %d", beforeSQL, after)
	}

	// i3 runs from the 18th; the worker lists it until the 25th, 06:00,
	// then beats on without it: its failure and stop were both lost.
	beat := func(at time.Time, instances ...string) {
		if err := state.Put(w.ctx, w.bus.KV(state.BucketWorkers), "w1", state.Worker{ID: "w1", Capacity: 4, Running: len(instances), Instances: instances, BeatAt: at}); err != nil {
			t.Error(err)
		}
	}
	beat(h(25, 6), i3)
	w.publish(events.InstanceReadyV1{Meta: at(events.NewMeta(), h(18, 0)), InstanceID: i3, ServiceID: hosted.ID, WorkerID: "w1"})
	setClock(h(25, 6))
	eventually(t, 30*time.Second, "i3's heartbeat stored", func() error {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".instance_sightings WHERE instance_id = ?", i3).Scan(&n); err != nil || n == 0 {
			return fmt.Errorf("no sighting of i3 (%v)", err)
		}
		return nil
	})
	beat(h(25, 6).Add(5*time.Second), "another-instance")
	setClock(h(25, 6).Add(5 * time.Minute))
	eventually(t, 30*time.Second, "i3 found lost", func() error {
		var n uint64
		var lostAt time.Time
		if err := conn.QueryRow(ctx, "SELECT count(), max(occurred_at) FROM "+db+".instance_events WHERE instance_id = ? AND kind = 'lost'", i3).Scan(&n, &lostAt); err != nil {
			return err
		}
		if n == 0 || !lostAt.Equal(h(25, 6)) {
			return fmt.Errorf("%d lost events, at %v; want one at %v", n, lostAt.UTC(), h(25, 6))
		}
		return nil
	})

	// i4 runs from the 28th on, listed in every heartbeat from now on.
	beat(h(28, 0), i4)
	w.publish(events.InstanceReadyV1{Meta: at(events.NewMeta(), h(28, 0)), InstanceID: i4, ServiceID: hosted.ID, WorkerID: "w1"})
	beating, stopBeating := context.WithCancel(ctx)
	defer stopBeating()
	go func() {
		for beating.Err() == nil {
			beat(clock(), i4)
			select {
			case <-beating.Done():
			case <-time.After(time.Second):
			}
		}
	}()

	// December 2nd: November closes.
	setClock(dec2025.Add(24 * time.Hour))
	novPeriod := "2025-11"
	eventually(t, 30*time.Second, "November's instance time settled", func() error {
		want, _ := instanceCost(intervals, nov2025, dec2025)
		if u := billed(urlA, hosted.ID, nov2025, dec2025, ""); u.CostMicros != want {
			return fmt.Errorf("hosted service: the API bills %d micros, the ledger %d", u.CostMicros, want)
		}
		return nil
	})
	var closing billing.Closing
	if err := json.Unmarshal(adminPost(urlB+"/api/v1/periods/"+novPeriod+"/close", ""), &closing); err != nil {
		t.Fatal(err)
	}
	statementOf := func(url, period string) map[string]billing.Statement {
		t.Helper()
		var st billing.Statements
		if err := getJSON(url+"/api/v1/statements?period="+period, w.admin, &st); err != nil {
			t.Fatal(err)
		}
		out := map[string]billing.Statement{}
		var sum int64
		for _, s := range st.Data {
			out[s.ServiceID] = s
			sum += s.CostMicros
		}
		if sum != st.CostMicros {
			t.Errorf("%s: statements sum to %d, the total says %d", period, sum, st.CostMicros)
		}
		return out
	}
	novWant := map[string]int64{}
	for _, svc := range []state.Service{chat, other} {
		c, _ := l.tokenCost(svc.ID, nov2025, dec2025)
		novWant[svc.ID] = int64(c)
	}
	hostedNov, _ := instanceCost(intervals, nov2025, dec2025)
	novWant[hosted.ID] = int64(hostedNov)
	checkNovember := func(when string) {
		t.Helper()
		nov := statementOf(urlA, novPeriod)
		for id, want := range novWant {
			if got := nov[id]; got.CostMicros != want || got.UsageCostMicros != want || got.AdjustmentsCostMicros != 0 {
				t.Errorf("%s: November statement of %s = %d micros (%d usage, %d adjustments), the ledger %d", when, id, got.CostMicros, got.UsageCostMicros, got.AdjustmentsCostMicros, want)
			}
		}
	}
	checkNovember("at the close")

	// Late: usage of November published after the close (a backlog), and
	// December's own.
	lateFrom := l.snapshot()
	publishRequests(200, nov2025, dec2025.Sub(nov2025))
	publishRequests(300, dec2025, 24*time.Hour)
	eventually(t, 60*time.Second, "the late requests stored", func() error {
		for _, svc := range []state.Service{chat, other} {
			_, want := l.tokenCost(svc.ID, nov2025, dec2025.Add(24*time.Hour))
			if u := billed(urlB, svc.ID, nov2025, dec2025.Add(24*time.Hour), ""); u.Requests != want {
				return fmt.Errorf("%s: %d requests, want %d", svc.ID, u.Requests, want)
			}
		}
		return nil
	})
	checkNovember("after late usage")

	// The API bills November with its late usage, as the SQL does; the
	// difference from the closed statement is December's adjustment.
	dec := statementOf(urlA, "2025-12")
	for _, svc := range []state.Service{chat, other, hosted} {
		api := billed(urlA, svc.ID, nov2025, dec2025, "day").CostMicros
		var want uint64
		if svc.ID == hosted.ID {
			want = hostedNov
		} else {
			want, _ = l.tokenCost(svc.ID, nov2025, dec2025)
		}
		if api != want {
			t.Errorf("%s: November through the API %d micros, the ledger %d", svc.ID, api, want)
		}
		if sql := sqlCost(svc.ID, nov2025, dec2025); sql != api {
			t.Errorf("%s: November through the documented views %d micros, the API %d", svc.ID, sql, api)
		}
		if got, want := dec[svc.ID].AdjustmentsCostMicros, int64(api)-novWant[svc.ID]; got != want {
			t.Errorf("%s: December's adjustment for November %d micros, want %d (the API now minus the closed statement)", svc.ID, got, want)
		}
		// And from the ledger alone: the late lines' cost.
		var lateCost int64
		if svc.ID != hosted.ID {
			all, _ := l.tokenCost(svc.ID, nov2025, dec2025)
			atClose, _ := lateFrom.tokenCost(svc.ID, nov2025, dec2025)
			lateCost = int64(all) - int64(atClose)
		}
		if got := dec[svc.ID].AdjustmentsCostMicros; got != lateCost || (svc.ID != hosted.ID && got == 0) {
			t.Errorf("%s: December's adjustment for November %d micros, the ledger's late lines %d", svc.ID, got, lateCost)
		}
	}

	// The documented cost-per-month query bills November as the API does.
	monthly := documentedMonthCosts(t, conn, db)
	for _, svc := range []state.Service{chat, other, hosted} {
		if api := billed(urlB, svc.ID, nov2025, dec2025, "").CostMicros; monthly[[2]string{svc.ID, "2025-11"}] != api {
			t.Errorf("%s: cost-per-month says %d micros for November, the API %d", svc.ID, monthly[[2]string{svc.ID, "2025-11"}], api)
		}
	}

	// January 2nd: December closes, with its adjustment; the documented
	// SQL reads the closed statements as the API does.
	setClock(jan2026.Add(24 * time.Hour))
	eventually(t, 30*time.Second, "December's instance time settled", func() error {
		want, _ := instanceCost(intervals, dec2025, jan2026)
		if u := billed(urlA, hosted.ID, dec2025, jan2026, ""); u.CostMicros != want {
			return fmt.Errorf("hosted service in December: the API bills %d micros, the ledger %d", u.CostMicros, want)
		}
		return nil
	})
	adminPost(urlA+"/api/v1/periods/2025-12/close", "")
	decClosed := statementOf(urlB, "2025-12")
	var decTotal int64
	for _, svc := range []state.Service{chat, other, hosted} {
		var own uint64
		if svc.ID == hosted.ID {
			own, _ = instanceCost(intervals, dec2025, jan2026)
		} else {
			own, _ = l.tokenCost(svc.ID, dec2025, jan2026)
		}
		novNow := int64(billed(urlA, svc.ID, nov2025, dec2025, "").CostMicros)
		st := decClosed[svc.ID]
		if st.UsageCostMicros != int64(own) || st.AdjustmentsCostMicros != novNow-novWant[svc.ID] {
			t.Errorf("%s: December closed with %d of its own and %d adjustments; the ledger says %d and %d", svc.ID,
				st.UsageCostMicros, st.AdjustmentsCostMicros, own, novNow-novWant[svc.ID])
		}
		// Every micro of November billed exactly once, in one statement or
		// the other.
		if novWant[svc.ID]+st.AdjustmentsCostMicros != novNow {
			t.Errorf("%s: November billed %d + %d, the API %d", svc.ID, novWant[svc.ID], st.AdjustmentsCostMicros, novNow)
		}
		decTotal += st.CostMicros
	}
	var totals [][3]int64
	rows, err := conn.Query(ctx, documented(t, "statement-totals", db))
	if err != nil {
		t.Fatal(err)
	}
	var periods []string
	for rows.Next() {
		var p time.Time
		var r [3]int64
		var services uint64
		if err := rows.Scan(&p, &r[0], &r[1], &services); err != nil {
			t.Fatal(err)
		}
		periods = append(periods, p.Format("2006-01-02"))
		totals = append(totals, r)
	}
	rows.Close()
	// And per service, each closed month as the API answered it.
	for _, period := range []string{"2025-11", "2025-12"} {
		api := statementOf(urlA, period)
		rows, err := conn.Query(ctx, strings.ReplaceAll(documented(t, "statement-per-service", db), "2025-05-01", period+"-01"))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var id, owner string
			var usage, adj, total int64
			if err := rows.Scan(&id, &owner, &usage, &adj, &total); err != nil {
				t.Fatal(err)
			}
			n++
			if st := api[id]; st.UsageCostMicros != usage || st.AdjustmentsCostMicros != adj || st.CostMicros != total || st.OwnerID != owner {
				t.Errorf("%s %s: statement-per-service %d/%d/%d (owner %s), the API %+v", period, id, usage, adj, total, owner, st)
			}
		}
		rows.Close()
		if n != len(api) {
			t.Errorf("%s: statement-per-service has %d services, the API %d", period, n, len(api))
		}
	}
	monthly = documentedMonthCosts(t, conn, db)
	for _, svc := range []state.Service{chat, other, hosted} {
		if api := billed(urlB, svc.ID, dec2025, jan2026, "").CostMicros; monthly[[2]string{svc.ID, "2025-12"}] != api {
			t.Errorf("%s: cost-per-month says %d micros for December, the API %d", svc.ID, monthly[[2]string{svc.ID, "2025-12"}], api)
		}
	}
	var novTotal int64
	for _, c := range novWant {
		novTotal += c
	}
	if len(totals) != 2 || periods[0] != "2025-11-01" || totals[0][0] != novTotal || totals[0][1] != 0 || totals[1][0] != decTotal || totals[1][1] == 0 {
		t.Errorf("statements in ClickHouse %v %v, want November %d and December %d with its adjustments", periods, totals, novTotal, decTotal)
	}
}

// documented returns the SQL of docs/billing.md marked <!-- query: name -->,
// for database db.
func documented(t *testing.T, name, db string) string {
	t.Helper()
	b, err := os.ReadFile("../../../docs/billing.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- query: "+name+" -->\n```sql\n")
	if !ok {
		t.Fatalf("docs/billing.md has no query %s", name)
	}
	sql, _, _ := strings.Cut(rest, "```")
	return strings.ReplaceAll(sql, "modelport.", db+".")
}

// documentedMonthCosts runs the documented cost-per-month query: cost by
// service and month.
func documentedMonthCosts(t *testing.T, conn ch.Conn, db string) map[[2]string]uint64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), documented(t, "cost-per-month", db))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[[2]string]uint64{}
	for rows.Next() {
		var id, usd string
		var month time.Time
		var cost, unknown uint64
		if err := rows.Scan(&id, &month, &cost, &usd, &unknown); err != nil {
			t.Fatal(err)
		}
		if unknown != 0 {
			t.Errorf("cost-per-month: %s has %d lines without a billing method", id, unknown)
		}
		if want := fmt.Sprintf("%d.%06d", cost/1_000_000, cost%1_000_000); usd != want {
			t.Errorf("cost-per-month: %s in USD %q, want %q", id, usd, want)
		}
		out[[2]string{id, month.Format("2006-01")}] = cost
	}
	return out
}

// snapshot returns a copy of the ledger as it stands.
func (l *monthLedger) snapshot() *monthLedger {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := newMonthLedger()
	for svc, m := range l.tokens {
		c.tokens[svc] = map[[3]string]*[3]uint64{}
		for k, v := range m {
			vv := *v
			c.tokens[svc][k] = &vv
		}
	}
	return c
}
