// Package chtest gives tests a real ClickHouse database: on the server named
// by MODELPORT_TEST_CLICKHOUSE_ADDR when set (make test starts one for the
// whole run with libs/chtest/cmd/withclickhouse), otherwise on a
// private server started once per test binary. Each call to New creates a
// fresh database and drops it at cleanup.
//
// A test package that uses it runs its tests through Main:
//
//	func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }
package chtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/tlstest"
)

// EnvAddr names the variable with an existing server's Native address.
const EnvAddr = "MODELPORT_TEST_CLICKHOUSE_ADDR"

var (
	mu      sync.Mutex
	private *chlocal.Server
	tmpDir  string
)

// Main runs the tests and stops the private server if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if private != nil {
		private.Stop()
		os.RemoveAll(tmpDir)
	}
	return code
}

// Addr returns the address of a running server, starting the private one
// if needed. Without a server it fails the test, saying how to get one:
// a test that cannot run does not pass.
func Addr(t testing.TB) string {
	t.Helper()
	if addr := os.Getenv(EnvAddr); addr != "" {
		return addr
	}
	mu.Lock()
	defer mu.Unlock()
	if private != nil {
		return private.Addr
	}
	dir, err := os.MkdirTemp("", "modelport-chtest-")
	if err != nil {
		t.Fatal(err)
	}
	s, err := chlocal.Start(context.Background(), dir, 0)
	if err != nil {
		os.RemoveAll(dir)
		msg := fmt.Sprintf("ClickHouse is required: %v (run `make deps` to install the Debian package clickhouse-server, or set %s)", err, EnvAddr)
		t.Fatal(msg)
	}
	private, tmpDir = s, dir
	return s.Addr
}

// New creates a fresh database for t and returns the server address and
// the database name.
func New(t testing.TB) (addr, database string) {
	t.Helper()
	addr = Addr(t)
	database = "test_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE "+database); err != nil {
		conn.Close()
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+database)
		conn.Close()
	})
	return addr, database
}

// Secured is a private ClickHouse server as production runs one: billing's
// and the analysts' users (chlocal.ModelportUsers) on one database, and
// the Native protocol over TLS too, with a certificate from a CA of the
// test's own. The passwordless default user is for loopback clients only
// and owns the schema.
type Secured struct {
	Addr       string // Native protocol
	SecureAddr string // Native protocol over TLS
	CAFile     string // the CA that signed the server's certificate, PEM
	Database   string
	Billing    chlocal.User
	Analyst    chlocal.User
}

// NewSecured starts a Secured server for t, stopped at cleanup, with an
// empty database. Without ClickHouse it fails the test, saying how to
// install it.
func NewSecured(t testing.TB) *Secured {
	t.Helper()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "chtest CA")
	cert := ca.Server(t, "clickhouse")
	const db = "modelport"
	users, err := chlocal.ModelportUsers(filepath.Join(dir, "passwords"), db)
	if err != nil {
		t.Fatal(err)
	}
	s, err := chlocal.StartWith(context.Background(), filepath.Join(dir, "server"), 0, chlocal.Options{Users: users, CertFile: cert.CertFile, KeyFile: cert.KeyFile})
	if err != nil {
		t.Fatalf("ClickHouse is required: %v (install the Debian package clickhouse-server)", err)
	}
	t.Cleanup(s.Stop)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return &Secured{Addr: s.Addr, SecureAddr: s.SecureAddr, CAFile: ca.CertFile, Database: db, Billing: users[0], Analyst: users[1]}
}
