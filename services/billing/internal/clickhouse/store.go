// Package clickhouse implements billing.Store on ClickHouse over the
// Native protocol. The schema works on ClickHouse 18.16 and current
// releases: no LowCardinality, DateTime64 or TTL.
package clickhouse

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Store is a billing.Store.
type Store struct {
	conn driver.Conn
	db   string
}

var _ billing.Store = (*Store)(nil)

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Open returns a Store for database db on addr. It does not connect yet;
// Migrate does.
func Open(addr, db string) (*Store, error) {
	if !identifier.MatchString(db) {
		return nil, fmt.Errorf("clickhouse database name %q must be a plain identifier", db)
	}
	conn, err := ch.Open(&ch.Options{
		Addr:        []string{addr},
		Protocol:    ch.Native,
		DialTimeout: 3 * time.Second,
		ReadTimeout: 30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", addr, err)
	}
	return &Store{conn: conn, db: db}, nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.conn.Close() }

// migrations run in order, once each; schema_migrations records them.
// Append only: never edit one that has shipped.
var migrations = []struct {
	version int
	name    string
	sql     string
}{
	{1, "usage_events", `
CREATE TABLE IF NOT EXISTS {db}.usage_events (
	event_id          String,
	request_id        String,
	service_id        String,
	owner_id          String,
	access_name       String,
	base_model        String,
	api_key_id        String,
	instance_id       String,
	endpoint          String,
	status            UInt16,
	prompt_tokens     UInt32,
	completion_tokens UInt32,
	total_tokens      UInt32,
	started_at        DateTime,
	finished_at       DateTime,
	occurred_at       DateTime,
	inserted_at       DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (service_id, occurred_at, event_id)`},
}

// Migrate creates the database and applies the migrations not yet applied.
func (s *Store) Migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := s.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+s.db); err != nil {
		return errs.Wrap(errs.Unavailable, err, "create database %s", s.db)
	}
	if err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.db+`.schema_migrations (
	version UInt32, name String, applied_at DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return errs.Wrap(errs.Unavailable, err, "create schema_migrations")
	}
	applied := map[uint32]bool{}
	rows, err := s.conn.Query(ctx, "SELECT version FROM "+s.db+".schema_migrations")
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "read schema_migrations")
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	rows.Close()
	for _, m := range migrations {
		if applied[uint32(m.version)] {
			continue
		}
		if err := s.conn.Exec(ctx, expand(m.sql, s.db)); err != nil {
			return fmt.Errorf("migration %d %s: %w", m.version, m.name, err)
		}
		// Inserts go through a batch: an INSERT ... VALUES sent with Exec
		// never completes on ClickHouse 18.16 over the Native protocol.
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".schema_migrations (version, name)")
		if err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
		if err := b.Append(uint32(m.version), m.name); err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
		if err := b.Send(); err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
	}
	return nil
}

func expand(sql, db string) string { return strings.ReplaceAll(sql, "{db}", db) }

// InsertUsage implements billing.Store: one INSERT for the batch.
func (s *Store) InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error {
	if len(batch) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+`.usage_events (event_id, request_id, service_id, owner_id,
	access_name, base_model, api_key_id, instance_id, endpoint, status, prompt_tokens, completion_tokens, total_tokens,
	started_at, finished_at, occurred_at)`)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "prepare usage batch")
	}
	for _, e := range batch {
		if err := b.Append(e.ID, e.RequestID, e.ServiceID, e.OwnerID, e.AccessName, e.BaseModel, e.APIKeyID,
			e.InstanceID, e.Endpoint, uint16(e.Status), uint32(e.PromptTokens), uint32(e.CompletionTokens),
			uint32(e.TotalTokens), e.StartedAt, e.FinishedAt, e.OccurredAt); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append usage event %s: %w", e.ID, err)
		}
	}
	if err := b.Send(); err != nil {
		return errs.Wrap(errs.Unavailable, err, "insert %d usage events", len(batch))
	}
	return nil
}

// Totals implements billing.Store. Rows are first collapsed by event ID, so
// the answer is exact before ReplacingMergeTree merges duplicates away.
func (s *Store) Totals(ctx context.Context, serviceID string) (billing.Totals, error) {
	t := billing.Totals{ServiceID: serviceID}
	row := s.conn.QueryRow(ctx, `SELECT count(), sum(p), sum(c), sum(t) FROM (
	SELECT event_id, any(prompt_tokens) AS p, any(completion_tokens) AS c, any(total_tokens) AS t
	FROM `+s.db+`.usage_events WHERE service_id = ? GROUP BY event_id)`, serviceID)
	if err := row.Scan(&t.Requests, &t.PromptTokens, &t.CompletionTokens, &t.TotalTokens); err != nil {
		return t, errs.Wrap(errs.Unavailable, err, "usage totals for %s", serviceID)
	}
	return t, nil
}
