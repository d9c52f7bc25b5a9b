// Package app wires billing: ClickHouse, the usage consumer and the usage
// API. The service binary and the all-in-one binary both start it through
// Start.
package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
	"github.com/modelport/modelport/services/billing/internal/transport"
)

// Config is billing's settings.
type Config struct {
	ClickHouseAddr string        // MODELPORT_CLICKHOUSE_ADDR: Native protocol host:port
	ClickHouseDB   string        // MODELPORT_CLICKHOUSE_DB
	BatchSize      int           // MODELPORT_BILLING_BATCH: events per insert at most
	BatchWait      time.Duration // MODELPORT_BILLING_BATCH_WAIT: how long a batch fills at most
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	c := Config{
		ClickHouseAddr: config.String(getenv, "MODELPORT_CLICKHOUSE_ADDR", "127.0.0.1:9000"),
		ClickHouseDB:   config.String(getenv, "MODELPORT_CLICKHOUSE_DB", "modelport"),
	}
	var err error
	if c.BatchSize, err = config.Int(getenv, "MODELPORT_BILLING_BATCH", 500); err != nil {
		return c, err
	}
	c.BatchWait, err = config.Duration(getenv, "MODELPORT_BILLING_BATCH_WAIT", 500*time.Millisecond)
	return c, err
}

// Start starts billing on bus. If ClickHouse cannot be reached it keeps
// trying in the background, with a warning each time; usage events wait in
// JetStream until it can.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	store, err := clickhouse.Open(cfg.ClickHouseAddr, cfg.ClickHouseDB)
	if err != nil {
		return runner.Service{}, err
	}
	svc := billing.New(store, transport.Services{KV: bus.KV(state.BucketServices)})
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for attempt := uint64(1); runCtx.Err() == nil; attempt++ {
			err := store.Migrate(runCtx)
			if err == nil {
				break
			}
			wait := natsx.Backoff(attempt)
			log.Warn("ClickHouse not ready; usage waits in JetStream", "addr", cfg.ClickHouseAddr, "err", err, "retry_in", wait)
			select {
			case <-runCtx.Done():
				return
			case <-time.After(wait):
			}
		}
		log.Info("ClickHouse ready", "addr", cfg.ClickHouseAddr, "database", cfg.ClickHouseDB)
		consumed, err := transport.ConsumeUsage(runCtx, bus.JS, svc, transport.BatchConfig{Size: cfg.BatchSize, MaxWait: cfg.BatchWait}, log)
		if err != nil {
			log.Error("usage consumer", "err", err)
			return
		}
		<-consumed
	}()
	return runner.Service{
		Handler: transport.NewHandler(svc, auth.NewKeyring(bus.KV(state.BucketAPIKeys)), log),
		Stop: func(ctx context.Context) {
			stop()
			select {
			case <-stopped:
			case <-ctx.Done():
				log.Warn("usage consumer still busy at stop; its batch will be redelivered")
			}
			_ = store.Close()
		},
	}, nil
}
