package clickhouse_test

import (
	"context"
	"os"
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

func usage(serviceID string, prompt, completion int) events.RequestCompletedV1 {
	m := events.NewMeta()
	m.OccurredAt = m.OccurredAt.Truncate(time.Second)
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

func sum(serviceID string, evs ...events.RequestCompletedV1) billing.Totals {
	t := billing.Totals{ServiceID: serviceID}
	for _, e := range evs {
		t.Requests++
		t.PromptTokens += uint64(e.PromptTokens)
		t.CompletionTokens += uint64(e.CompletionTokens)
		t.TotalTokens += uint64(e.TotalTokens)
	}
	return t
}

func totals(t *testing.T, s *clickhouse.Store, serviceID string) billing.Totals {
	t.Helper()
	got, err := s.Totals(context.Background(), serviceID)
	if err != nil {
		t.Fatalf("Totals(%s): %v", serviceID, err)
	}
	return got
}

func insert(t *testing.T, s *clickhouse.Store, batch ...events.RequestCompletedV1) {
	t.Helper()
	if err := s.InsertUsage(context.Background(), batch); err != nil {
		t.Fatalf("InsertUsage: %v", err)
	}
}

func TestMigrateIsIdempotent(t *testing.T) {
	s, conn, db := open(t) // migrated once
	ctx := context.Background()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("third Migrate: %v", err)
	}

	rows, err := conn.Query(ctx, "SELECT version, name, count() FROM "+db+".schema_migrations GROUP BY version, name ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type applied struct {
		version uint32
		name    string
		count   uint64
	}
	var got []applied
	for rows.Next() {
		var a applied
		if err := rows.Scan(&a.version, &a.name, &a.count); err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []applied{{1, "usage_events", 1}}
	if len(got) != len(want) {
		t.Fatalf("schema_migrations = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("schema_migrations[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}

	// The table the migration made works after the repeated runs.
	insert(t, s, usage("svc-migrate", 1, 2))
	if got, want := totals(t, s, "svc-migrate").TotalTokens, uint64(3); got != want {
		t.Errorf("total tokens = %d, want %d", got, want)
	}
}

func TestTotals(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	a1, a2, a3 := usage("svc-a", 120, 40), usage("svc-a", 7, 63), usage("svc-a", 1000, 1)
	b1 := usage("svc-b", 5, 5)

	t.Run("empty service has zeros", func(t *testing.T) {
		if got, want := totals(t, s, "svc-a"), (billing.Totals{ServiceID: "svc-a"}); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("empty batch is a no-op", func(t *testing.T) {
		if err := s.InsertUsage(ctx, nil); err != nil {
			t.Fatalf("InsertUsage(nil) = %v", err)
		}
	})

	// Keep every duplicate on disk until the end, so the totals below can
	// only be right if the query itself collapses them.
	if err := conn.Exec(ctx, "SYSTEM STOP MERGES "+db+".usage_events"); err != nil {
		t.Fatal(err)
	}
	insert(t, s, a1, a2, b1)
	insert(t, s, a3)
	want := sum("svc-a", a1, a2, a3)

	t.Run("sums", func(t *testing.T) {
		if got := totals(t, s, "svc-a"); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("other service is separate", func(t *testing.T) {
		if got, want := totals(t, s, "svc-b"), sum("svc-b", b1); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
		if got, want := totals(t, s, "svc-c"), (billing.Totals{ServiceID: "svc-c"}); got != want {
			t.Errorf("unknown service: Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("redelivered batch counts once", func(t *testing.T) {
		insert(t, s, a1, a2, b1)
		if got := totals(t, s, "svc-a"); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
		if got, want := totals(t, s, "svc-b"), sum("svc-b", b1); got != want {
			t.Errorf("svc-b Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("duplicates within a batch count once", func(t *testing.T) {
		insert(t, s, a3, a3, a3)
		if got := totals(t, s, "svc-a"); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("duplicates are really stored", func(t *testing.T) {
		// Merges are stopped, so the answers above deduplicated at query time.
		var rows uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".usage_events WHERE service_id = 'svc-a'").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if got, want := rows, uint64(3+2+3); got != want {
			t.Errorf("raw rows = %d, want %d", got, want)
		}
	})
	t.Run("new event after duplicates adds", func(t *testing.T) {
		a4 := usage("svc-a", 2, 3)
		insert(t, s, a1, a4)
		want = sum("svc-a", a1, a2, a3, a4)
		if got := totals(t, s, "svc-a"); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
	})
	t.Run("unchanged after merges", func(t *testing.T) {
		if err := conn.Exec(ctx, "SYSTEM START MERGES "+db+".usage_events"); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+db+".usage_events FINAL"); err != nil {
			t.Fatal(err)
		}
		if got := totals(t, s, "svc-a"); got != want {
			t.Errorf("Totals = %+v, want %+v", got, want)
		}
		if got, want := totals(t, s, "svc-b"), sum("svc-b", b1); got != want {
			t.Errorf("svc-b Totals = %+v, want %+v", got, want)
		}
	})
}

func TestStoredFields(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	e := usage("svc-fields", 11, 22)
	insert(t, s, e)

	var (
		eventID, requestID, ownerID, accessName, endpoint string
		status                                            uint16
		prompt, completion, total                         uint32
		occurred, finished                                time.Time
	)
	err := conn.QueryRow(ctx, "SELECT event_id, request_id, owner_id, access_name, endpoint, status, prompt_tokens, completion_tokens, total_tokens, occurred_at, finished_at FROM "+db+".usage_events WHERE service_id = 'svc-fields'").
		Scan(&eventID, &requestID, &ownerID, &accessName, &endpoint, &status, &prompt, &completion, &total, &occurred, &finished)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		eventID, requestID, ownerID, accessName, endpoint string
		status                                            uint16
		prompt, completion, total                         uint32
	}
	got := row{eventID, requestID, ownerID, accessName, endpoint, status, prompt, completion, total}
	want := row{e.ID, e.RequestID, e.OwnerID, e.AccessName, e.Endpoint, 200, 11, 22, 33}
	if got != want {
		t.Errorf("stored %+v, want %+v", got, want)
	}
	if !occurred.Equal(e.OccurredAt) {
		t.Errorf("occurred_at = %v, want %v", occurred.UTC(), e.OccurredAt)
	}
	if !finished.Equal(e.FinishedAt) {
		t.Errorf("finished_at = %v, want %v", finished.UTC(), e.FinishedAt)
	}
}

func TestOpenRejectsBadDatabaseName(t *testing.T) {
	for _, db := range []string{"", "usage; DROP TABLE x", "a-b", "1abc", "a.b"} {
		if _, err := clickhouse.Open("127.0.0.1:9000", db); err == nil {
			t.Errorf("Open with database %q succeeded", db)
		}
	}
}
