package clickhouse_test

import (
	"context"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
)

func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }

// open returns a migrated store on a fresh database, and a plain
// connection to the same server for looking behind the store's back.
func open(t *testing.T) (*clickhouse.Store, ch.Conn, string) {
	t.Helper()
	addr, db := chtest.New(t)
	s, err := clickhouse.Open(addr, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, conn, db
}

// hour0 is a whole UTC hour the tests put usage in.
var hour0 = time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)

func usage(serviceID string, prompt, completion int, at time.Time) events.RequestCompletedV1 {
	m := events.NewMeta()
	m.OccurredAt = at.Truncate(time.Second)
	return events.RequestCompletedV1{
		Meta:             m,
		RequestID:        "req-" + m.ID[len(m.ID)-12:],
		ServiceID:        serviceID,
		OwnerID:          "a11ce0000001",
		AccessName:       "u-a11ce0000001/chat",
		BaseModel:        "qwen2.5-7b-instruct",
		APIKeyID:         "7f0c3a9e-1d2b-4c5d-8e9f-0a1b2c3d4e5f",
		InstanceID:       "0b9d7a52-3c1e-4f6a-9b8c-7d6e5f4a3b2c",
		Endpoint:         "/v1/chat/completions",
		Status:           200,
		PromptTokens:     prompt,
		CompletionTokens: completion,
		TotalTokens:      prompt + completion,
		StartedAt:        m.OccurredAt.Add(-2 * time.Second),
		FinishedAt:       m.OccurredAt,
	}
}

// totals is what a list of lines adds up to.
type totals struct{ requests, prompt, completion uint64 }

func sumLines(lines []billing.TokenRow) totals {
	var t totals
	for _, l := range lines {
		t.requests += l.Requests
		t.prompt += l.PromptTokens
		t.completion += l.CompletionTokens
	}
	return t
}

func sumEvents(evs ...events.RequestCompletedV1) totals {
	var t totals
	for _, e := range evs {
		t.requests++
		t.prompt += uint64(e.PromptTokens)
		t.completion += uint64(e.CompletionTokens)
	}
	return t
}

// all is a window that holds every test event.
var farPast, farFuture = time.Unix(0, 0), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

func lines(t *testing.T, s *clickhouse.Store, serviceID string) totals {
	t.Helper()
	return sumLines(usageLines(t, s, serviceID, farPast, farFuture))
}

// usageLines returns a service's usage in [from, to), line by line: one
// row per UTC hour, API key and base model, priced with the default list.
func usageLines(t *testing.T, s *clickhouse.Store, serviceID string, from, to time.Time) []billing.TokenRow {
	t.Helper()
	got, err := s.TokenUsage(context.Background(), billing.TokenQuery{ServiceID: serviceID, From: from, To: to,
		By: billing.Grouping{Period: time.Hour, APIKey: true, BaseModel: true}, Rates: billing.DefaultSchedule().TokenRates()})
	if err != nil {
		t.Fatalf("TokenUsage(%s): %v", serviceID, err)
	}
	return got
}

// rollup sums usage_hourly for a service, the way an analyst would.
func rollup(t *testing.T, conn ch.Conn, db, serviceID string) totals {
	t.Helper()
	var r totals
	if err := conn.QueryRow(context.Background(), "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM "+db+".usage_hourly FINAL WHERE service_id = ?", serviceID).
		Scan(&r.requests, &r.prompt, &r.completion); err != nil {
		t.Fatal(err)
	}
	return r
}

// fill brings the rollup up to date as billing's rollup job does, every
// hour before now being closed. It first waits for the second to turn, so
// that the hours noted by the inserts just made are taken.
func fill(t *testing.T, s *clickhouse.Store) clickhouse.RollupReport {
	t.Helper()
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
	r, err := s.FillRollup(context.Background(), time.Now(), 0, time.Minute)
	if err != nil {
		t.Fatalf("FillRollup: %v", err)
	}
	if !r.CaughtUp {
		t.Fatalf("FillRollup did not catch up in a minute: %+v", r)
	}
	return r
}

// seedPrices stores the built-in price list as the first revision.
func seedPrices(t *testing.T, s *clickhouse.Store) {
	t.Helper()
	if _, err := billing.New(s, nil).AddPrices(context.Background(), billing.DefaultPriceList()); err != nil {
		t.Fatal(err)
	}
}

func rawRows(t *testing.T, conn ch.Conn, db, serviceID string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+db+".usage_events WHERE service_id = ?", serviceID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func insert(t *testing.T, s *clickhouse.Store, batch ...events.RequestCompletedV1) {
	t.Helper()
	if err := s.InsertUsage(context.Background(), batch); err != nil {
		t.Fatalf("InsertUsage: %v", err)
	}
}

// insertBehindTheGate stores events straight into usage_events, the way a
// second writer racing billing could, past InsertUsage's lookup.
func insertBehindTheGate(t *testing.T, conn ch.Conn, db string, evs ...events.RequestCompletedV1) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), "INSERT INTO "+db+".usage_events (event_id, service_id, api_key_id, base_model, status, prompt_tokens, completion_tokens, total_tokens, occurred_at)")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if err := b.Append(e.ID, e.ServiceID, e.APIKeyID, e.BaseModel, uint16(e.Status), uint32(e.PromptTokens), uint32(e.CompletionTokens), uint32(e.TotalTokens), e.OccurredAt); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

func TestMigrateIsIdempotent(t *testing.T) {
	s, conn, db := open(t) // migrated once
	ctx := context.Background()
	insert(t, s, usage("svc-migrate", 1, 2, hour0))
	for range 2 {
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
	}

	rows, err := conn.Query(ctx, "SELECT version, name, count() FROM "+db+".schema_migrations GROUP BY version, name ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var (
			version uint32
			name    string
			count   uint64
		)
		if err := rows.Scan(&version, &name, &count); err != nil {
			t.Fatal(err)
		}
		if count != 1 {
			t.Errorf("migration %d recorded %d times", version, count)
		}
		got = append(got, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"usage_events", "usage_hourly", "instance_events", "services", "prices", "cost_views", "instance_intervals_gone",
		"price_schedule", "usage_hourly_exact", "statements", "instance_sightings", "effective_dated_views", "usage_cached_tokens"}; !slices.Equal(got, want) {
		t.Errorf("schema_migrations = %v, want %v", got, want)
	}
	if got, want := lines(t, s, "svc-migrate"), (totals{1, 1, 2}); got != want {
		t.Errorf("usage after repeated migrations = %+v, want %+v", got, want)
	}
}

// TestUpgradeFillsTheRollup runs the later migrations over a database that
// has only the first one, with usage (and a duplicate) already stored: once
// the rollup job has run, the rollup is exact, and stays so.
func TestUpgradeFillsTheRollup(t *testing.T) {
	s, conn, db, evs := atVersionOne(t)
	ctx := context.Background()
	a, b := usage("svc-up", 10, 20, hour0), usage("svc-up", 1, 2, hour0.Add(time.Hour))
	insertBehindTheGate(t, conn, db, a, b, a)
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	fill(t, s)
	want := sumEvents(a, b)
	if got := rollup(t, conn, db, "svc-up"); got != want {
		t.Errorf("usage_hourly after upgrade = %+v, want %+v", got, want)
	}
	if got, want := rollup(t, conn, db, "svc-upgrade"), sumEvents(evs...); got != want {
		t.Errorf("usage_hourly of the other service after upgrade = %+v, want %+v", got, want)
	}
	c := usage("svc-up", 5, 5, hour0)
	insert(t, s, c)
	fill(t, s)
	if got, want := rollup(t, conn, db, "svc-up"), sumEvents(a, b, c); got != want {
		t.Errorf("usage_hourly after a new event = %+v, want %+v", got, want)
	}
}

// A migration interrupted after it added the cached_tokens column, but
// before it was recorded, runs again without failing: ClickHouse 18.16
// has no ADD COLUMN IF NOT EXISTS, so the step looks before it adds.
func TestCachedTokensMigrationRunsAgain(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	// Forget migration 13, as if billing stopped before recording it.
	if err := conn.Exec(ctx, "RENAME TABLE "+db+".schema_migrations TO "+db+".schema_migrations_old"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "CREATE TABLE "+db+".schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "INSERT INTO "+db+".schema_migrations (version, name) SELECT version, name FROM "+db+".schema_migrations_old WHERE name != 'usage_cached_tokens'"); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate with the column already there: %v", err)
	}
	e := usage("svc-cached", 100, 10, hour0)
	e.CachedTokens = 64
	insert(t, s, e)
	var cached uint32
	if err := conn.QueryRow(ctx, "SELECT cached_tokens FROM "+db+".usage_events WHERE service_id = 'svc-cached'").Scan(&cached); err != nil || cached != 64 {
		t.Errorf("cached_tokens = %d (%v), want 64", cached, err)
	}
}

func TestUsageIsCountedOnce(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	a1, a2, a3 := usage("svc-a", 120, 40, hour0), usage("svc-a", 7, 63, hour0.Add(10*time.Minute)), usage("svc-a", 1000, 1, hour0.Add(2*time.Hour))
	b1 := usage("svc-b", 5, 5, hour0)

	t.Run("empty service has zeros", func(t *testing.T) {
		if got := lines(t, s, "svc-a"); got != (totals{}) {
			t.Errorf("lines = %+v, want zeros", got)
		}
	})
	t.Run("empty batch is a no-op", func(t *testing.T) {
		if err := s.InsertUsage(ctx, nil); err != nil {
			t.Fatalf("InsertUsage(nil) = %v", err)
		}
	})

	// Keep every row on disk until the end, so the answers below can only
	// be right if the store and the queries themselves keep count.
	if err := conn.Exec(ctx, "SYSTEM STOP MERGES "+db+".usage_events"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "SYSTEM STOP MERGES "+db+".usage_hourly"); err != nil {
		t.Fatal(err)
	}
	insert(t, s, a1, a2, b1)
	insert(t, s, a3)
	want := sumEvents(a1, a2, a3)

	check := func(t *testing.T, want totals, wantRaw uint64) {
		t.Helper()
		fill(t, s)
		if got := lines(t, s, "svc-a"); got != want {
			t.Errorf("lines = %+v, want %+v", got, want)
		}
		if got := rollup(t, conn, db, "svc-a"); got != want {
			t.Errorf("usage_hourly = %+v, want %+v", got, want)
		}
		if got := rawRows(t, conn, db, "svc-a"); got != wantRaw {
			t.Errorf("raw rows = %d, want %d", got, wantRaw)
		}
		if got, want := lines(t, s, "svc-b"), sumEvents(b1); got != want {
			t.Errorf("svc-b lines = %+v, want %+v", got, want)
		}
	}
	t.Run("sums", func(t *testing.T) { check(t, want, 3) })
	t.Run("redelivered batch is not stored again", func(t *testing.T) {
		insert(t, s, a1, a2, b1)
		check(t, want, 3)
	})
	t.Run("duplicates within a batch are stored once", func(t *testing.T) {
		a4 := usage("svc-a", 2, 3, hour0.Add(3*time.Hour))
		insert(t, s, a4, a3, a4, a4)
		want = sumEvents(a1, a2, a3, a4)
		check(t, want, 4)
	})
	t.Run("rows behind the gate still count once in queries and the rollup", func(t *testing.T) {
		insertBehindTheGate(t, conn, db, a1, a2)
		insert(t, s, a1) // a redelivery notes the hour again
		fill(t, s)
		if got := lines(t, s, "svc-a"); got != want {
			t.Errorf("lines = %+v, want %+v", got, want)
		}
		if got := rollup(t, conn, db, "svc-a"); got != want {
			t.Errorf("usage_hourly = %+v, want %+v", got, want)
		}
		if got, wantRaw := rawRows(t, conn, db, "svc-a"), uint64(6); got != wantRaw {
			t.Errorf("raw rows = %d, want %d: the duplicates must really be on disk", got, wantRaw)
		}
	})
	t.Run("unchanged after merges", func(t *testing.T) {
		for _, table := range []string{"usage_events", "usage_hourly"} {
			if err := conn.Exec(ctx, "SYSTEM START MERGES "+db+"."+table); err != nil {
				t.Fatal(err)
			}
			if err := conn.Exec(ctx, "OPTIMIZE TABLE "+db+"."+table+" FINAL"); err != nil {
				t.Fatal(err)
			}
		}
		if got := lines(t, s, "svc-a"); got != want {
			t.Errorf("lines = %+v, want %+v", got, want)
		}
		if got := rawRows(t, conn, db, "svc-a"); got != 4 {
			t.Errorf("raw rows after merging = %d, want 4", got)
		}
	})
}

func TestUsageLines(t *testing.T) {
	s, _, _ := open(t)
	k1 := usage("svc-l", 10, 1, hour0.Add(5*time.Minute))
	k1b := usage("svc-l", 20, 2, hour0.Add(59*time.Minute+59*time.Second))
	k2 := usage("svc-l", 30, 3, hour0.Add(30*time.Minute))
	k2.APIKeyID = "key-2"
	next := usage("svc-l", 40, 4, hour0.Add(time.Hour))
	insert(t, s, k1, k1b, k2, next)

	got := usageLines(t, s, "svc-l", hour0, hour0.Add(2*time.Hour))
	// qwen2.5-7b-instruct: 150,000 and 600,000 micros per million tokens.
	want := []billing.TokenRow{
		{PeriodStart: hour0, APIKeyID: k1.APIKeyID, BaseModel: k1.BaseModel, Requests: 2, PromptTokens: 30, CompletionTokens: 3, CostMicros: 6},
		{PeriodStart: hour0, APIKeyID: "key-2", BaseModel: k1.BaseModel, Requests: 1, PromptTokens: 30, CompletionTokens: 3, CostMicros: 6},
		{PeriodStart: hour0.Add(time.Hour), APIKeyID: k1.APIKeyID, BaseModel: k1.BaseModel, Requests: 1, PromptTokens: 40, CompletionTokens: 4, CostMicros: 8},
	}
	slices.SortFunc(got, func(a, b billing.TokenRow) int {
		if c := a.PeriodStart.Compare(b.PeriodStart); c != 0 {
			return c
		}
		if a.APIKeyID == k1.APIKeyID {
			return -1
		}
		return 1
	})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lines =\n%+v\nwant\n%+v", got, want)
	}
	// The window is [from, to).
	if got, want := sumLines(usageLines(t, s, "svc-l", hour0.Add(30*time.Minute), hour0.Add(time.Hour))), sumEvents(k1b, k2); got != want {
		t.Errorf("half-hour window = %+v, want %+v", got, want)
	}
}

// TestStoredFields checks that each field of a usage event lands in its
// own column: every one holds a value no other does.
func TestStoredFields(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	e := usage("svc-fields", 11, 22, time.Now())
	e.CachedTokens = 8
	e.Status = 201
	e.BaseModel, e.APIKeyID, e.InstanceID = "model-fields", "key-fields", "instance-fields"
	e.StartedAt = e.OccurredAt.Add(-3 * time.Second)
	e.FinishedAt = e.OccurredAt.Add(-time.Second)
	insert(t, s, e)

	type row struct {
		EventID, RequestID, ServiceID, OwnerID, AccessName, BaseModel, APIKeyID, InstanceID, Endpoint string
		Status                                                                                        uint16
		Prompt, Completion, Total, Cached                                                             uint32
		Started, Finished, Occurred                                                                   int64
	}
	var got row
	var started, finished, occurred time.Time
	err := conn.QueryRow(ctx, `SELECT event_id, request_id, service_id, owner_id, access_name, base_model, api_key_id, instance_id, endpoint,
	status, prompt_tokens, completion_tokens, total_tokens, cached_tokens, started_at, finished_at, occurred_at
	FROM `+db+".usage_events WHERE service_id = 'svc-fields'").
		Scan(&got.EventID, &got.RequestID, &got.ServiceID, &got.OwnerID, &got.AccessName, &got.BaseModel, &got.APIKeyID, &got.InstanceID, &got.Endpoint,
			&got.Status, &got.Prompt, &got.Completion, &got.Total, &got.Cached, &started, &finished, &occurred)
	if err != nil {
		t.Fatal(err)
	}
	got.Started, got.Finished, got.Occurred = started.Unix(), finished.Unix(), occurred.Unix()
	want := row{e.ID, e.RequestID, e.ServiceID, e.OwnerID, e.AccessName, e.BaseModel, e.APIKeyID, e.InstanceID, e.Endpoint,
		201, 11, 22, 33, 8, e.StartedAt.Unix(), e.FinishedAt.Unix(), e.OccurredAt.Unix()}
	if got != want {
		t.Errorf("stored\n%+v\nwant\n%+v", got, want)
	}
}

func TestOpenRejectsBadDatabaseName(t *testing.T) {
	for _, db := range []string{"", "usage; DROP TABLE x", "a-b", "1abc", "a.b"} {
		if _, err := clickhouse.Open("127.0.0.1:9000", db); err == nil {
			t.Errorf("Open with database %q succeeded", db)
		}
	}
}

// TestRollupBackfillIsChunkedAndResumable fills a rollup over several days
// of usage with a budget that stops it after each day: every call picks up
// where the last stopped, and the result is exact. The usage is inserted
// behind the gate, as a database billing has never rolled up holds it.
func TestRollupBackfillIsChunkedAndResumable(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	var evs []events.RequestCompletedV1
	for i := range 600 {
		evs = append(evs, usage("svc-backfill", 10+i%7, 3, hour0.Add(time.Duration(i)*17*time.Minute)))
	}
	insertBehindTheGate(t, conn, db, evs...)
	insertBehindTheGate(t, conn, db, evs[:100]...) // and duplicates
	closed := hour0.Add(8 * 24 * time.Hour)
	calls := 0
	for {
		calls++
		r, err := s.FillRollup(ctx, closed, 0, time.Nanosecond) // out of time after one chunk
		if err != nil {
			t.Fatal(err)
		}
		if r.CaughtUp {
			break
		}
		if calls > 20 {
			t.Fatalf("not caught up after %d calls: %+v", calls, r)
		}
	}
	if calls < 7 {
		t.Errorf("caught up in %d calls: the fill was not chunked by day", calls)
	}
	st, err := s.RollupState(ctx)
	if err != nil || !st.FilledThrough.Equal(closed) {
		t.Errorf("rollup state %+v, %v; want filled through %v", st, err, closed)
	}
	if got, want := rollup(t, conn, db, "svc-backfill"), sumEvents(evs...); got != want {
		t.Errorf("usage_hourly = %+v, want %+v", got, want)
	}
}

// TestRedeliveredUsageIsLookedUp stores usage through one Store and hands
// it again to a second one on the same database, as when billing stopped
// between an insert and its acks and another process (or the same one
// started again) gets the events redelivered. Redelivered events are
// looked up and not stored again; an event delivered for the first time
// is not looked up, so a second Store given it stores it again, and it
// still counts once.
func TestRedeliveredUsageIsLookedUp(t *testing.T) {
	addr, db := chtest.New(t)
	ctx := context.Background()
	storeOn := func() *clickhouse.Store {
		s, err := clickhouse.Open(addr, db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		return s
	}
	first := storeOn()
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.Exec(ctx, "SYSTEM STOP MERGES "+db+".usage_events"); err != nil {
		t.Fatal(err)
	}
	a, b, c := usage("svc-r", 1, 2, hour0), usage("svc-r", 3, 4, hour0.Add(time.Minute)), usage("svc-r", 5, 6, hour0.Add(2*time.Minute))
	insert(t, first, a, b)
	want := sumEvents(a, b, c)

	second := storeOn()
	if err := second.InsertRedeliveredUsage(ctx, []events.RequestCompletedV1{a, b, c, c}); err != nil {
		t.Fatalf("InsertRedeliveredUsage: %v", err)
	}
	if got := rawRows(t, conn, db, "svc-r"); got != 3 {
		t.Errorf("raw rows after the redelivery = %d, want 3: a redelivered event already stored was stored again", got)
	}
	if got := lines(t, second, "svc-r"); got != want {
		t.Errorf("lines = %+v, want %+v", got, want)
	}

	// The first Store remembers what it stored: handing it a again, as a
	// first delivery (a duplicate publish), stores nothing.
	insert(t, first, a)
	if got := rawRows(t, conn, db, "svc-r"); got != 3 {
		t.Errorf("raw rows = %d, want 3: an event the store just stored was stored again", got)
	}
	// A third Store does not know it and does not look first deliveries
	// up: the row lands twice, and counts once.
	third := storeOn()
	insert(t, third, a)
	if got := rawRows(t, conn, db, "svc-r"); got != 4 {
		t.Errorf("raw rows = %d, want 4", got)
	}
	fill(t, third)
	if got := lines(t, third, "svc-r"); got != want {
		t.Errorf("lines with a duplicate row = %+v, want %+v", got, want)
	}
	if got := rollup(t, conn, db, "svc-r"); got != want {
		t.Errorf("usage_hourly with a duplicate row = %+v, want %+v", got, want)
	}
}
