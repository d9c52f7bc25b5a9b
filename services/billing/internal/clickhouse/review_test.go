package clickhouse_test

// Reproductions of the billing review's findings, one test each, named
// after the finding.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
)

var may2025 = time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)

// sqlMonthCost runs the documented cost-per-month query and returns the
// cost of serviceID in the month starting at month.
func sqlMonthCost(t *testing.T, conn ch.Conn, db, serviceID string, month time.Time) string {
	t.Helper()
	for _, r := range query(t, conn, db, docQueries(t)["cost-per-month"]) {
		if r[0] == serviceID && r[1] == month.Format("2006-01-02") {
			return r[2]
		}
	}
	return "0"
}

// created stores the creation event of svc, as billing-services would.
func created(t *testing.T, s *clickhouse.Store, svc state.Service) {
	t.Helper()
	if err := s.InsertServiceEvents(context.Background(), []billing.ServiceEvent{{EventID: events.NewMeta().ID, Kind: billing.ServiceCreated,
		ServiceID: svc.ID, OwnerID: svc.OwnerID, Name: svc.Name, AccessName: svc.AccessName, BaseModel: svc.BaseModel,
		Task: svc.Task, BillingMethod: svc.BillingMethod, At: svc.CreatedAt}}); err != nil {
		t.Fatal(err)
	}
}

func tokenService(id, model string) state.Service {
	return state.Service{ID: id, OwnerID: "a11ce0000001", Name: id, AccessName: "u-a11ce0000001/" + id, BaseModel: model,
		Task: state.TaskTextGeneration, BillingMethod: state.BillingPerToken, CreatedAt: may2025}
}

// mayUsage stores a few hundred requests of svc spread over May 2025.
func mayUsage(t *testing.T, s *clickhouse.Store, svc state.Service) {
	t.Helper()
	var evs []events.RequestCompletedV1
	for i := range 300 {
		e := usage(svc.ID, 1000+37*i%5000, 11*i%700, may2025.Add(time.Duration(i)*150*time.Minute))
		e.BaseModel = svc.BaseModel
		evs = append(evs, e)
	}
	insert(t, s, evs...)
}

func apiCost(t *testing.T, svc *billing.Service, id string, from, to time.Time) uint64 {
	t.Helper()
	u, err := svc.Usage(context.Background(), auth.Key{Admin: true}, billing.Query{ServiceID: id, From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	return u.CostMicros
}

// Finding 1: a price change reprices past months, in the API and in the
// documented SQL. Now a price change is an entry valid from a later hour:
// May is read before and after it, through both, and does not move; a
// list that edits the price in place is refused.
func TestReview1PriceChangeDoesNotRepricePastMonths(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	svc := tokenService("svc-may", "qwen2.5-7b-instruct")
	created(t, s, svc)
	mayUsage(t, s, svc)
	june := may2025.AddDate(0, 1, 0)
	june10 := june.Add(9*24*time.Hour + 11*time.Hour + 20*time.Minute)
	b := billing.New(s, services{svc.ID: svc}, billing.WithClock(func() time.Time { return june10 }))
	if _, err := b.AddPrices(ctx, billing.DefaultPriceList()); err != nil {
		t.Fatal(err)
	}
	invoiced := apiCost(t, b, svc.ID, may2025, june)
	invoicedSQL := sqlMonthCost(t, conn, db, svc.ID, may2025)
	if fmt.Sprint(invoiced) != invoicedSQL || invoiced == 0 {
		t.Fatalf("before the change: API %d, SQL %s", invoiced, invoicedSQL)
	}

	// June 10: qwen2.5-7b-instruct input goes from 150000 to 200000, from
	// the next hour on, and billing is redeployed with the new list.
	rise := billing.PriceEntry{Price: billing.Price{BaseModel: "qwen2.5-7b-instruct", BillingMethod: state.BillingPerToken,
		InputMicrosPerMTok: 200000, OutputMicrosPerMTok: 600000}, ValidFrom: june10.Truncate(time.Hour).Add(time.Hour)}
	if n, err := b.AddPrices(ctx, append(billing.DefaultPriceList(), rise)); err != nil || n != 1 {
		t.Fatalf("AddPrices = %d, %v; want the one new entry", n, err)
	}
	if got := apiCost(t, b, svc.ID, may2025, june); got != invoiced {
		t.Errorf("May through the API after the price change: %d micros, invoiced %d", got, invoiced)
	}
	if got := sqlMonthCost(t, conn, db, svc.ID, may2025); got != invoicedSQL {
		t.Errorf("May through cost-per-month after the price change: %s micros, invoiced %s", got, invoicedSQL)
	}

	// The old way, the price edited in place, would reprice May: refused.
	edited := billing.DefaultPriceList()
	for i := range edited {
		if edited[i].BaseModel == "qwen2.5-7b-instruct" && edited[i].BillingMethod == state.BillingPerToken {
			edited[i].InputMicrosPerMTok = 200000
		}
	}
	if _, err := b.AddPrices(ctx, edited); errs.KindOf(err) != errs.Conflict {
		t.Errorf("a list changing a stored price: %v, want Conflict", err)
	}
	backdated := rise
	backdated.ValidFrom, backdated.InputMicrosPerMTok = may2025, 1
	if _, err := b.AddPrices(ctx, []billing.PriceEntry{backdated}); errs.KindOf(err) != errs.Invalid {
		t.Errorf("a price valid from the past: %v, want Invalid", err)
	}
	if got := apiCost(t, b, svc.ID, may2025, june); got != invoiced {
		t.Errorf("May after refused changes: %d micros, invoiced %d", got, invoiced)
	}
}

// Finding 3: the price history is deleted by merges.
func TestReview3PriceHistorySurvivesMerges(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	b := billing.New(s, nil, billing.WithClock(func() time.Time { return now }))
	if _, err := b.AddPrices(ctx, billing.DefaultPriceList()); err != nil {
		t.Fatal(err)
	}
	list := billing.DefaultPriceList()
	for _, p := range billing.DefaultPriceList() {
		if p.BaseModel == "llama-3.1-8b-instruct" && p.BillingMethod == state.BillingPerToken {
			p.InputMicrosPerMTok++
			p.ValidFrom = now.Truncate(time.Hour).Add(time.Hour)
			list = append(list, p)
		}
	}
	if n, err := b.AddPrices(ctx, list); err != nil || n != 1 {
		t.Fatalf("AddPrices = %d, %v", n, err)
	}
	for _, table := range priceTables(t, conn, db) {
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+db+"."+table+" FINAL"); err != nil {
			t.Fatal(err)
		}
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+"."+table+" WHERE base_model = 'llama-3.1-8b-instruct' AND billing_method = 'per-token'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n < 2 {
			t.Errorf("%s keeps %d version(s) of llama-3.1-8b-instruct per-token after a merge, want both", table, n)
		}
	}
}

// priceTables names the tables that hold price versions.
func priceTables(t *testing.T, conn ch.Conn, db string) []string {
	t.Helper()
	var out []string
	for _, name := range []string{"prices", "price_schedule"} {
		var engine string
		err := conn.QueryRow(context.Background(), "SELECT engine FROM system.tables WHERE database = ? AND name = ?", db, name).Scan(&engine)
		if err == nil && strings.HasSuffix(engine, "MergeTree") {
			if name == "prices" && engine != "ReplacingMergeTree" {
				continue
			}
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		t.Fatal("no price table")
	}
	return out[len(out)-1:]
}

// atVersionOne returns a store on a database that has migration 1 only,
// with usage already stored, as a billing from before the rollup had.
func atVersionOne(t *testing.T) (*clickhouse.Store, ch.Conn, string, []events.RequestCompletedV1) {
	t.Helper()
	addr, db := chtest.New(t)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := context.Background()
	for _, stmt := range []string{
		"CREATE TABLE " + db + `.usage_events (event_id String, request_id String, service_id String, owner_id String,
	access_name String, base_model String, api_key_id String, instance_id String, endpoint String, status UInt16,
	prompt_tokens UInt32, completion_tokens UInt32, total_tokens UInt32, started_at DateTime, finished_at DateTime,
	occurred_at DateTime, inserted_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at) ORDER BY (service_id, occurred_at, event_id)`,
		"CREATE TABLE " + db + ".schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version",
	} {
		if err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (version, name)")
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Append(uint32(1), "usage_events"); err != nil {
		t.Fatal(err)
	}
	if err := rec.Send(); err != nil {
		t.Fatal(err)
	}
	var evs []events.RequestCompletedV1
	for i := range 2000 {
		evs = append(evs, usage("svc-upgrade", 10+i%50, 1+i%7, hour0.Add(-time.Duration(i)*time.Minute)))
	}
	insertBehindTheGate(t, conn, db, evs...)
	s, err := clickhouse.Open(addr, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, conn, db, evs
}

// Finding 4: migrations rebuilt the rollup (TRUNCATE, then INSERT ...
// SELECT over all history): two processes migrating at once could double
// it, an old replica inserting meanwhile could count twice, and a large
// history could outlast the migration's deadline. Now migrations copy no
// usage (billing also takes a lease to migrate: see app's tests), and the
// rollup job fills it from the collapsed raw events, so even two fills at
// once leave it exact. Two migrations running at once here, without the
// lease, still leave the data alone.
func TestReview4ConcurrentMigrationsKeepTheRollupExact(t *testing.T) {
	for round := range 2 {
		s, conn, db, evs := atVersionOne(t)
		other, err := clickhouse.Open(chtest.Addr(t), db)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, st := range []*clickhouse.Store{s, other} {
			wg.Go(func() { _ = migrateAll(st) }) // one may trip over the other's DDL
		}
		wg.Wait()
		if err := migrateAll(s); err != nil {
			t.Fatalf("round %d: Migrate: %v", round, err)
		}
		if got := rollup(t, conn, db, "svc-upgrade"); got != (totals{}) {
			t.Fatalf("round %d: a migration wrote usage_hourly: %+v", round, got)
		}
		var fills sync.WaitGroup
		for _, st := range []*clickhouse.Store{s, other} {
			fills.Go(func() {
				if _, err := st.FillRollup(context.Background(), time.Now(), 0, time.Minute); err != nil {
					t.Error(err)
				}
			})
		}
		fills.Wait()
		other.Close()
		if got, want := rollup(t, conn, db, "svc-upgrade"), sumEvents(evs...); got != want {
			t.Fatalf("round %d: usage_hourly after two concurrent migrations and fills = %+v, want %+v", round, got, want)
		}
	}
}

// Finding 5: an insert that the client saw fail while the server stored
// it, retried, reaches the rollup twice. Two writers storing one batch at
// once are the same race without the timing: each looks the batch up
// before the other's insert is visible.
func TestReview5RetriedInsertsKeepTheRollupExact(t *testing.T) {
	s, conn, db := open(t)
	other, err := clickhouse.Open(chtest.Addr(t), db)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var all []events.RequestCompletedV1
	for round := range 5 {
		var batch []events.RequestCompletedV1
		for i := range 200 {
			batch = append(batch, usage("svc-retry", 10+i, 1+round, hour0.Add(-time.Duration(round*200+i)*time.Second)))
		}
		all = append(all, batch...)
		var wg sync.WaitGroup
		for _, st := range []*clickhouse.Store{s, other} {
			wg.Go(func() {
				if err := st.InsertUsage(context.Background(), batch); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	settle(t, s)
	if got, want := rollup(t, conn, db, "svc-retry"), sumEvents(all...); got != want {
		t.Errorf("usage_hourly = %+v, raw events %+v", got, want)
	}
}

// Finding 6: a price dropped from the list (meaning "take the * price")
// kept its last row in ClickHouse, so the SQL and the API disagreed. Now
// leaving a model out of a list changes nothing anywhere, and dropping a
// price is an entry of its own, from a later hour, that the API and the
// SQL both follow.
func TestReview6DroppedPriceFallsBackInTheAPIAndTheSQL(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	svc := tokenService("svc-vl", "qwen2-vl-7b-instruct")
	created(t, s, svc)
	mayUsage(t, s, svc)
	june, july := may2025.AddDate(0, 1, 0), may2025.AddDate(0, 2, 0)
	now := june.Add(9*24*time.Hour + 20*time.Minute)
	b := billing.New(s, services{svc.ID: svc}, billing.WithClock(func() time.Time { return now }))
	if _, err := b.AddPrices(ctx, billing.DefaultPriceList()); err != nil {
		t.Fatal(err)
	}
	var kept []billing.PriceEntry
	for _, p := range billing.DefaultPriceList() {
		if p.BaseModel != "qwen2-vl-7b-instruct" {
			kept = append(kept, p)
		}
	}
	if n, err := b.AddPrices(ctx, kept); err != nil || n != 0 {
		t.Fatalf("a list without the model: AddPrices = %d, %v; want nothing added", n, err)
	}
	check := func(what string, from, to time.Time) uint64 {
		t.Helper()
		api := apiCost(t, b, svc.ID, from, to)
		rows := query(t, conn, db, fmt.Sprintf("SELECT sum(cost_micros) FROM modelport.token_lines WHERE service_id = '%s' AND hour >= toDateTime(%d) AND hour < toDateTime(%d)", svc.ID, from.Unix(), to.Unix()))
		if sql := rows[0][0]; sql != fmt.Sprint(api) {
			t.Errorf("%s: token_lines %s micros, the API %d", what, sql, api)
		}
		return api
	}
	may := check("May, the model left out of the list", may2025, june)
	dropFrom := now.Add(time.Hour).Truncate(time.Hour)
	drop := billing.PriceEntry{Price: billing.Price{BaseModel: "qwen2-vl-7b-instruct", BillingMethod: state.BillingPerToken}, ValidFrom: dropFrom, Dropped: true}
	if n, err := b.AddPrices(ctx, append(kept, drop)); err != nil || n != 1 {
		t.Fatalf("dropping the price: AddPrices = %d, %v", n, err)
	}
	if got := check("May after the drop", may2025, june); got != may {
		t.Errorf("May after the drop %d micros, before %d", got, may)
	}
	// Usage after the drop is priced at '*' (500,000 and 1,500,000 micros
	// per million tokens), not the model's 200,000 and 800,000.
	late := usage(svc.ID, 1_000_000, 100_000, dropFrom.Add(2*time.Hour))
	late.BaseModel = svc.BaseModel
	insert(t, s, late)
	now = dropFrom.Add(5 * 24 * time.Hour)
	if got, want := check("after the drop", dropFrom, july), uint64(500_000+150_000); got != want {
		t.Errorf("after the drop: %d micros, want %d (the '*' price)", got, want)
	}
}

// Finding 7: a service without a services row is billed 0 by the views,
// silently.
func TestReview7ServiceWithoutARowIsNotSilentlyFree(t *testing.T) {
	s, conn, db := open(t)
	seedPrices(t, s)
	svc := tokenService("svc-norow", "qwen2.5-7b-instruct") // its created event is past DEPLOY's retention
	mayUsage(t, s, svc)
	api := apiCost(t, billing.New(s, services{svc.ID: svc}), svc.ID, may2025, may2025.AddDate(0, 1, 0))
	rows := query(t, conn, db, "SELECT billing_method, sum(cost_micros) FROM modelport.token_lines WHERE service_id = 'svc-norow' GROUP BY billing_method")
	if len(rows) != 1 {
		t.Fatalf("token_lines rows %v", rows)
	}
	if rows[0][1] == "0" && rows[0][0] != "unknown" {
		t.Errorf("token_lines bills the service %s micros with billing_method %q and no flag; the API bills %d", rows[0][1], rows[0][0], api)
	}
}

// migrateAll brings a store's schema up to date.
func migrateAll(s *clickhouse.Store) error { return s.Migrate(context.Background()) }

// settle lets whatever keeps derived tables up to date run.
func settle(t *testing.T, s *clickhouse.Store) { t.Helper(); fill(t, s) }

// Finding 4d: migration 7 dropped instance_intervals and then created it
// again, so a query in between failed, and so did the views built on it.
// Views are now swapped in whole: a reader running throughout the
// migration never finds one missing.
func TestReview4ViewsAreNeverMissingDuringAMigration(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	if err := s.InsertInstanceEvents(ctx, []billing.InstanceEvent{instanceEvent(billing.InstanceReady, "a", hour0)}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var reads, failures atomic.Int64
	var firstFailure atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n uint64
			if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".instance_hourly").Scan(&n); err != nil {
				failures.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			}
			reads.Add(1)
		}
	})
	for range 5 {
		// Run the view migration again, as a billing upgrading would.
		if err := conn.Exec(ctx, "ALTER TABLE "+db+".schema_migrations DELETE WHERE version = 12"); err != nil {
			t.Fatal(err)
		}
		waitMutations(t, conn, db)
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if failures.Load() > 0 || reads.Load() < 5 {
		t.Errorf("%d of %d reads of instance_hourly failed while its views were replaced: %v", failures.Load(), reads.Load(), firstFailure.Load())
	}
}

// waitMutations waits for the database's ALTER ... DELETE mutations to
// finish.
func waitMutations(t *testing.T, conn ch.Conn, db string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0", db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("mutations did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
