package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/telemetry"
)

func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }

// TestAllInOne runs the flow against the all-in-one platform: one process,
// embedded NATS, real ClickHouse.
func TestAllInOne(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	env := config.Map(map[string]string{
		"MODELPORT_DATA_DIR":        t.TempDir(),
		"MODELPORT_HTTP_ADDR":       "127.0.0.1:0",
		"MODELPORT_NATS_PORT":       "-1",
		"MODELPORT_CLICKHOUSE_ADDR": chAddr,
		"MODELPORT_CLICKHOUSE_DB":   chDB,
		"MODELPORT_ADMIN_KEY":       testAdminKey,
		"MODELPORT_SCALER_SWEEP":    "500ms",
	})
	log, _ := telemetry.Setup(context.Background(), "modelport-test", io.Discard, slog.LevelError)
	if testing.Verbose() {
		log, _ = telemetry.Setup(context.Background(), "modelport-test", os.Stderr, slog.LevelInfo)
	}
	p, err := startPlatform(context.Background(), env, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	runFlow(t, endpoints{control: p.BaseURL, router: p.BaseURL, usage: p.BaseURL}, chAddr, chDB)
}
