package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/telemetry"
)

func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }

// TestAllInOne runs the flow against the all-in-one platform: one process,
// embedded NATS, real ClickHouse.
func TestAllInOne(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	env := testEnv(t, chAddr, chDB)
	log := testLogger()
	p, err := startPlatform(context.Background(), env, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	runFlow(t, endpoints{control: p.BaseURL, router: p.BaseURL, usage: p.BaseURL}, chAddr, chDB)
}

// TestRestart stops the all-in-one platform and starts it again on the same
// data folder: the service is still there, its instances start again, it
// answers, and billing keeps counting from where it was.
func TestRestart(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	env := testEnv(t, chAddr, chDB)
	log := testLogger()

	p, err := startPlatform(context.Background(), env, log)
	if err != nil {
		t.Fatal(err)
	}
	var svc service
	if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{"name": "survivor", "base_model": "qwen2.5-7b-instruct"}, &svc); s != 201 {
		t.Fatalf("create: status %d", s)
	}
	first := chatUntilOK(t, p.BaseURL, svc.AccessName)
	identities := natsIdentities(t, p.NATSCreds)
	p.Close(context.Background())

	p, err = startPlatform(context.Background(), env, log)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	// The same NATS identities: the seeds are kept.
	if again := natsIdentities(t, p.NATSCreds); fmt.Sprint(again) != fmt.Sprint(identities) {
		t.Errorf("NATS identities after the restart %v, want the first start's %v", again, identities)
	}
	var again service
	if s := call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &again); s != 200 || again.AccessName != svc.AccessName {
		t.Fatalf("after restart: status %d, service %+v", s, again)
	}
	second := chatUntilOK(t, p.BaseURL, svc.AccessName)
	eventually(t, 30*time.Second, "service running again", func() error {
		var got service
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
		if got.Status != "running" || got.ReadyInstances != 1 {
			return fmt.Errorf("status %s, ready %d", got.Status, got.ReadyInstances)
		}
		return nil
	})
	want := usageTotals{ServiceID: svc.ID, Requests: 2, PromptTokens: first.PromptTokens + second.PromptTokens,
		CompletionTokens: first.CompletionTokens + second.CompletionTokens, TotalTokens: first.TotalTokens + second.TotalTokens}
	eventually(t, 30*time.Second, "usage across the restart", func() error {
		var got usageTotals
		call(t, "GET", p.BaseURL+"/api/v1/usage?service_id="+svc.ID, testAdminKey, nil, &got)
		if got != want {
			return fmt.Errorf("usage %+v, want %+v", got, want)
		}
		return nil
	})
}

// natsIdentities returns the public key of each identity's seed in the
// all-in-one's credentials folder, checking that each is readable by its
// owner alone.
func natsIdentities(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range access.Names() {
		path := access.SeedFile(dir, name)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, st.Mode().Perm())
		}
		if out[name], err = access.ReadSeed(path); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// chatUntilOK calls the service until it answers (it may still be
// starting) and returns the usage of the answer.
func chatUntilOK(t *testing.T, base, model string) usageTotals {
	t.Helper()
	var u usageTotals
	eventually(t, 30*time.Second, "chat answered", func() error {
		var resp struct {
			Usage struct {
				PromptTokens     uint64 `json:"prompt_tokens"`
				CompletionTokens uint64 `json:"completion_tokens"`
				TotalTokens      uint64 `json:"total_tokens"`
			} `json:"usage"`
		}
		s := call(t, "POST", base+"/v1/chat/completions", testAdminKey, map[string]any{
			"model": model, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
		}, &resp)
		if s != 200 {
			return fmt.Errorf("status %d", s)
		}
		u = usageTotals{Requests: 1, PromptTokens: resp.Usage.PromptTokens, CompletionTokens: resp.Usage.CompletionTokens, TotalTokens: resp.Usage.TotalTokens}
		return nil
	})
	return u
}

// busAs connects to the platform's NATS as identity name, with the seed
// the platform wrote, as a person or tool given that identity would.
func (p *platform) busAs(t *testing.T, name string) *natsx.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := natsx.Open(ctx, p.NATSURL, name, 1, testLogger(), natsx.NKeyFile(access.SeedFile(p.NATSCreds, name)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func testEnv(t *testing.T, chAddr, chDB string) config.Getenv {
	return config.Map(map[string]string{
		"MODELPORT_DATA_DIR":        t.TempDir(),
		"MODELPORT_HTTP_ADDR":       "127.0.0.1:0",
		"MODELPORT_NATS_PORT":       "-1",
		"MODELPORT_CLICKHOUSE_ADDR": chAddr,
		"MODELPORT_CLICKHOUSE_DB":   chDB,
		"MODELPORT_ADMIN_KEY":       testAdminKey,
		"MODELPORT_SCALER_SWEEP":    "500ms",
		"MODELPORT_READY_WAIT":      "2s",
	})
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		log, _ := telemetry.Setup(context.Background(), "modelport-test", os.Stderr, slog.LevelInfo)
		return log
	}
	log, _ := telemetry.Setup(context.Background(), "modelport-test", io.Discard, slog.LevelError)
	return log
}

// TestLocalClickHouseUsers runs the all-in-one as `modelport up` does when
// it starts its own ClickHouse: billing stores usage as its own user, which
// may not change the schema (the default user, loopback only, migrates
// it), and the analysts' user, whose password file up names, reads the
// usage and can change nothing.
func TestLocalClickHouseUsers(t *testing.T) {
	port, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	env := config.Map(map[string]string{
		"MODELPORT_DATA_DIR":        t.TempDir(),
		"MODELPORT_HTTP_ADDR":       "127.0.0.1:0",
		"MODELPORT_NATS_PORT":       "-1",
		"MODELPORT_CLICKHOUSE_ADDR": "127.0.0.1:" + strconv.Itoa(port),
		"MODELPORT_ADMIN_KEY":       testAdminKey,
		"MODELPORT_SCALER_SWEEP":    "500ms",
		"MODELPORT_READY_WAIT":      "2s",
	})
	cfg, err := upConfigFromEnv(env)
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger()
	ch := ensureClickHouse(context.Background(), cfg, env, log)
	if ch == nil {
		t.Fatal("no local ClickHouse started (install the Debian package clickhouse-server)")
	}
	t.Cleanup(ch.Stop)
	p, err := startPlatform(context.Background(), config.Chain(config.Map(ch.Env), env), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	runFlow(t, endpoints{control: p.BaseURL, router: p.BaseURL, usage: p.BaseURL}, ch.Addr, "modelport")

	password := func(user string) string {
		b, err := os.ReadFile(filepath.Join(ch.PasswordDir, user+".password"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	ctx := context.Background()
	for _, u := range []struct {
		user  string
		write string
	}{
		{chlocal.AnalystUser, "INSERT INTO modelport.prices (base_model) VALUES ('forged')"},
		{chlocal.BillingUser, "DROP TABLE modelport.usage_events"},
	} {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr}, Auth: clickhouse.Auth{Username: u.user, Password: password(u.user)}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM modelport.usage_events").Scan(&n); err != nil || n == 0 {
			t.Errorf("%s reads %d usage events (%v), want some", u.user, n, err)
		}
		if err := conn.Exec(ctx, u.write); err == nil {
			t.Errorf("%s ran %q", u.user, u.write)
		}
	}
}
