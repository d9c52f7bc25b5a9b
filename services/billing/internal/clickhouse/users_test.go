package clickhouse_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
)

// securedStore migrates a Secured server's database as the schema owner
// (the default user, loopback only) and returns billing's store on it,
// logged in as billing's user.
func securedStore(t *testing.T) (*chtest.Secured, *clickhouse.Store) {
	t.Helper()
	sec := chtest.NewSecured(t)
	owner, err := clickhouse.Open(sec.Addr, sec.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if err := owner.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err := clickhouse.Open(sec.Addr, sec.Database, clickhouse.WithAuth(sec.Billing.Name, sec.Billing.Password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return sec, s
}

func rawAs(t *testing.T, addr, user, password string) ch.Conn {
	t.Helper()
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}, Auth: ch.Auth{Username: user, Password: password}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// refused reports whether ClickHouse refused a query for want of a right,
// as 18.16 and current releases word it.
func refused(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range []string{"DDL queries are prohibited", "readonly mode", "Not enough privileges", "Access denied", "is not allowed", "Cannot modify"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// TestAttackBillingUserCannotDropTables: billing's ClickHouse user stores
// and reads usage, but cannot drop, truncate, alter or create a table, nor
// touch another database: a compromised billing cannot destroy what has
// been billed.
func TestAttackBillingUserCannotDropTables(t *testing.T) {
	sec, s := securedStore(t)
	ctx := context.Background()
	// Up to date: Migrate as billing needs no DDL.
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate as billing on an up-to-date schema: %v", err)
	}
	insert(t, s, usage("svc-1", 10, 20, hour0))
	if got := lines(t, s, "svc-1"); got.requests != 1 {
		t.Fatalf("billing reads back %+v, want one request", got)
	}
	conn := rawAs(t, sec.Addr, sec.Billing.Name, sec.Billing.Password)
	db := sec.Database
	for _, q := range []string{
		"DROP TABLE " + db + ".usage_events",
		"TRUNCATE TABLE " + db + ".usage_events",
		"ALTER TABLE " + db + ".usage_events DELETE WHERE 1",
		"ALTER TABLE " + db + ".usage_events DROP COLUMN status",
		"RENAME TABLE " + db + ".usage_events TO " + db + ".gone",
		"CREATE TABLE " + db + ".x (a UInt8) ENGINE = Memory",
		"DROP DATABASE " + db,
		"CREATE DATABASE other",
	} {
		if err := conn.Exec(ctx, q); !refused(err) {
			t.Errorf("billing's user ran %q: %v", q, err)
		}
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".usage_events").Scan(&n); err != nil || n != 1 {
		t.Errorf("usage_events after the attempts: %d rows (%v), want 1", n, err)
	}
	// A user is its password: a wrong one gets nothing (18.16 says
	// "Wrong password", current releases "Authentication failed").
	if c, err := ch.Open(&ch.Options{Addr: []string{sec.Addr}, Auth: ch.Auth{Username: sec.Billing.Name, Password: "wrong"}}); err == nil {
		if err := c.Ping(ctx); err == nil || !strings.Contains(err.Error(), "Wrong password") && !strings.Contains(err.Error(), "Authentication failed") {
			t.Errorf("a wrong password: %v", err)
		}
		c.Close()
	}
}

// TestAttackAnalystCannotInsert: the analysts' user reads the billing
// tables and views and changes nothing.
func TestAttackAnalystCannotInsert(t *testing.T) {
	sec, s := securedStore(t)
	ctx := context.Background()
	insert(t, s, usage("svc-1", 10, 20, hour0))
	fill(t, s) // the hourly rollup, as billing's own user
	conn := rawAs(t, sec.Addr, sec.Analyst.Name, sec.Analyst.Password)
	db := sec.Database
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".usage_events").Scan(&n); err != nil || n != 1 {
		t.Fatalf("analyst reads usage_events: %d rows (%v), want 1", n, err)
	}
	if err := conn.QueryRow(ctx, "SELECT sum(requests) FROM "+db+".usage_hourly FINAL").Scan(&n); err != nil || n != 1 {
		t.Errorf("analyst reads usage_hourly: %d requests (%v), want 1", n, err)
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".usage_events (event_id, service_id)")
	if err == nil {
		if err = b.Append("forged", "svc-1"); err == nil {
			err = b.Send()
		}
	}
	if !refused(err) {
		t.Errorf("the analyst inserting a usage event: %v", err)
	}
	for _, q := range []string{
		"DROP TABLE " + db + ".usage_events",
		"TRUNCATE TABLE " + db + ".usage_events",
		"CREATE TABLE " + db + ".x (a UInt8) ENGINE = Memory",
		"SET readonly = 0",
	} {
		if err := conn.Exec(ctx, q); !refused(err) {
			t.Errorf("the analyst ran %q: %v", q, err)
		}
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".usage_events").Scan(&n); err != nil || n != 1 {
		t.Errorf("usage_events after the attempts: %d rows (%v), want 1", n, err)
	}
}

// TestBillingUserNeedsTheSchemaOwner: on a database not migrated yet,
// billing's user cannot migrate, and the error says what to set.
func TestBillingUserNeedsTheSchemaOwner(t *testing.T) {
	sec := chtest.NewSecured(t)
	s, err := clickhouse.Open(sec.Addr, sec.Database, clickhouse.WithAuth(sec.Billing.Name, sec.Billing.Password))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Migrate(context.Background())
	if errs.KindOf(err) != errs.Forbidden || !strings.Contains(err.Error(), "MODELPORT_CLICKHOUSE_MIGRATE_USER") {
		t.Errorf("Migrate as billing on an empty database: %v", err)
	}
}

// TestTLS: billing reaches ClickHouse over TLS with the server's CA, and
// refuses a server whose certificate it cannot check.
func TestTLS(t *testing.T) {
	sec := chtest.NewSecured(t)
	owner, err := clickhouse.Open(sec.Addr, sec.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if err := owner.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg, err := natsx.TLSConfig(sec.CAFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := clickhouse.Open(sec.SecureAddr, sec.Database, clickhouse.WithAuth(sec.Billing.Name, sec.Billing.Password), clickhouse.WithTLS(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	insert(t, s, usage("svc-1", 1, 2, hour0))

	// The system's roots do not know the test CA.
	untrusted, err := clickhouse.Open(sec.SecureAddr, sec.Database, clickhouse.WithAuth(sec.Billing.Name, sec.Billing.Password), clickhouse.WithTLS(&tls.Config{MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	if err := untrusted.Migrate(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a server certificate billing cannot check: %v", err)
	}
}
