// Package clickhouse implements billing.Store on ClickHouse over the
// Native protocol. The schema works on ClickHouse 18.16 and current
// releases: no LowCardinality, DateTime64 or TTL, and every insert goes
// through a batch (an INSERT ... VALUES sent with Exec never completes on
// 18.16 over the Native protocol).
//
// Every table that holds events is a ReplacingMergeTree whose sorting key
// ends in the event ID, and every query collapses rows by event ID first,
// so answers are exact before merges run. Usage is also kept from being
// stored twice in the first place where it cheaply can be (see
// InsertUsage and InsertRedeliveredUsage), and
// the hourly rollup is filled from the collapsed raw events, so it is
// exact whatever reached the raw table (see FillRollup).
package clickhouse

import (
	"context"
	"crypto/tls"
	"fmt"
	"regexp"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Store is a billing.Store. It is safe for concurrent use; see InsertUsage
// for what concurrent writers of usage mean.
type Store struct {
	conn   driver.Conn
	db     string
	recent *recentIDs
}

var _ billing.Store = (*Store)(nil)

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Option configures a Store's connection.
type Option func(*ch.Options)

// WithAuth logs in as user with password; without it, as the default
// user with no password.
func WithAuth(user, password string) Option {
	return func(o *ch.Options) { o.Auth.Username, o.Auth.Password = user, password }
}

// WithTLS speaks the Native protocol over TLS, checking the server's
// certificate against cfg.RootCAs (the system's roots when nil).
func WithTLS(cfg *tls.Config) Option {
	return func(o *ch.Options) { o.TLS = cfg }
}

// Open returns a Store for database db on addr. It does not connect yet;
// Migrate does.
func Open(addr, db string, opts ...Option) (*Store, error) {
	if !identifier.MatchString(db) {
		return nil, fmt.Errorf("clickhouse database name %q must be a plain identifier", db)
	}
	o := &ch.Options{
		Addr:        []string{addr},
		Protocol:    ch.Native,
		DialTimeout: 3 * time.Second,
		ReadTimeout: 30 * time.Second,
	}
	for _, opt := range opts {
		opt(o)
	}
	conn, err := ch.Open(o)
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", addr, err)
	}
	return &Store{conn: conn, db: db, recent: newRecentIDs(recentCapacity)}, nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.conn.Close() }

// Database returns the database name.
func (s *Store) Database() string { return s.db }

// Migrate creates the database and applies the migrations not yet applied,
// in order; schema_migrations records each one once it has run. It takes
// no lock: the caller makes sure one process migrates at a time (billing
// holds a lease while it does). No migration copies data of any size: the
// rollup fills itself afterwards (FillRollup), in chunks. A schema already
// up to date takes no DDL at all, so a user that may not change the schema
// (billing's own, see docs/billing.md) can call it.
func (s *Store) Migrate(ctx context.Context) error {
	if s.upToDate(ctx) {
		return nil
	}
	if err := s.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+s.db); err != nil {
		return schemaError(errs.Wrap(errs.Unavailable, err, "create database %s", s.db))
	}
	if err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.db+`.schema_migrations (
	version UInt32, name String, applied_at DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return schemaError(errs.Wrap(errs.Unavailable, err, "create schema_migrations"))
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
	if err := rows.Err(); err != nil {
		return errs.Wrap(errs.Unavailable, err, "read schema_migrations")
	}
	for _, m := range migrations {
		if applied[uint32(m.version)] {
			continue
		}
		for i, st := range m.steps {
			if st.supersededBy != 0 && !applied[uint32(st.supersededBy)] {
				continue
			}
			stepCtx, cancel := context.WithTimeout(ctx, stepTimeout)
			var err error
			if st.run != nil {
				err = st.run(stepCtx, s)
			} else {
				err = s.conn.Exec(stepCtx, expand(st.sql, s.db))
			}
			cancel()
			if err != nil {
				return schemaError(fmt.Errorf("migration %d %s, step %d: %w", m.version, m.name, i+1, err))
			}
		}
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
		applied[uint32(m.version)] = true
	}
	return nil
}

// upToDate reports whether schema_migrations records every migration.
func (s *Store) upToDate(ctx context.Context) bool {
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT version FROM "+s.db+".schema_migrations")
	if err != nil {
		return false
	}
	defer rows.Close()
	applied := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if rows.Scan(&v) != nil {
			return false
		}
		applied[v] = true
	}
	if rows.Err() != nil {
		return false
	}
	for _, m := range migrations {
		if !applied[uint32(m.version)] {
			return false
		}
	}
	return true
}

// schemaError says what to do when the user may not change the schema.
func schemaError(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "DDL queries are prohibited") || strings.Contains(msg, "Not enough privileges") || strings.Contains(msg, "readonly mode") {
		return errs.Wrap(errs.Forbidden, err, "billing's ClickHouse user may not change the schema and it needs migrating: set MODELPORT_CLICKHOUSE_MIGRATE_USER (and _PASSWORD) to a user that may, which billing uses for the migrations alone")
	}
	return err
}

// stepTimeout bounds one migration step. Steps change the schema and copy
// small tables only.
const stepTimeout = 2 * time.Minute
