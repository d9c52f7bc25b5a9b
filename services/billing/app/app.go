// Package app wires billing: ClickHouse, the usage and lifecycle consumers,
// dead letters and the usage API. The service binary and the all-in-one
// binary both start it through Start.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
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
	ClickHouseAddr string // MODELPORT_CLICKHOUSE_ADDR: Native protocol host:port
	ClickHouseDB   string // MODELPORT_CLICKHOUSE_DB
	// ClickHouseUser and ClickHousePassword are billing's ClickHouse user
	// (MODELPORT_CLICKHOUSE_USER, _PASSWORD): it inserts and selects.
	ClickHouseUser, ClickHousePassword string
	// ClickHouseTLS speaks the Native protocol over TLS
	// (MODELPORT_CLICKHOUSE_TLS), checking the server's certificate
	// against ClickHouseTLSCA (MODELPORT_CLICKHOUSE_TLS_CA, PEM), or the
	// system's roots.
	ClickHouseTLS   bool
	ClickHouseTLSCA string
	// ClickHouseMigrateUser and ClickHouseMigratePassword, when set, are
	// the schema owner's account, used for the migrations alone
	// (MODELPORT_CLICKHOUSE_MIGRATE_USER, _PASSWORD): where billing's own
	// user may not change the schema, as on ClickHouse 18.16.
	ClickHouseMigrateUser, ClickHouseMigratePassword string
	BatchSize                                        int           // MODELPORT_BILLING_BATCH: events per insert at most
	BatchWait                                        time.Duration // MODELPORT_BILLING_BATCH_WAIT: how long a batch fills at most
	PricesFile                                       string        // MODELPORT_BILLING_PRICES: a price list replacing the built-in one
	// Now is the clock for instance time still accruing; nil is time.Now.
	// Tests set it to simulate time.
	Now func() time.Time
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	c := Config{
		ClickHouseAddr: config.String(getenv, "MODELPORT_CLICKHOUSE_ADDR", "127.0.0.1:9000"),
		ClickHouseDB:   config.String(getenv, "MODELPORT_CLICKHOUSE_DB", "modelport"),
		PricesFile:     config.String(getenv, "MODELPORT_BILLING_PRICES", ""),
		// No default password: a secret.
		ClickHouseUser:            config.String(getenv, "MODELPORT_CLICKHOUSE_USER", "default"),
		ClickHousePassword:        getenv("MODELPORT_CLICKHOUSE_PASSWORD"),
		ClickHouseTLS:             config.Bool(getenv, "MODELPORT_CLICKHOUSE_TLS", false),
		ClickHouseTLSCA:           getenv("MODELPORT_CLICKHOUSE_TLS_CA"),
		ClickHouseMigrateUser:     getenv("MODELPORT_CLICKHOUSE_MIGRATE_USER"),
		ClickHouseMigratePassword: getenv("MODELPORT_CLICKHOUSE_MIGRATE_PASSWORD"),
	}
	var err error
	if c.BatchSize, err = config.Int(getenv, "MODELPORT_BILLING_BATCH", 500); err != nil {
		return c, err
	}
	if c.BatchWait, err = config.Duration(getenv, "MODELPORT_BILLING_BATCH_WAIT", 500*time.Millisecond); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate reports settings billing cannot run with.
func (c Config) Validate() error {
	if c.BatchSize < 1 || c.BatchSize > 10_000 {
		return fmt.Errorf("MODELPORT_BILLING_BATCH must be between 1 and 10000, not %d", c.BatchSize)
	}
	if c.BatchWait <= 0 {
		return fmt.Errorf("MODELPORT_BILLING_BATCH_WAIT must be positive, not %s", c.BatchWait)
	}
	if c.ClickHouseTLSCA != "" && !c.ClickHouseTLS {
		return fmt.Errorf("MODELPORT_CLICKHOUSE_TLS_CA is set but MODELPORT_CLICKHOUSE_TLS is not: set MODELPORT_CLICKHOUSE_TLS=1")
	}
	return nil
}

// clickhouseOptions are the connection options for user and password.
func (c Config) clickhouseOptions(user, password string) ([]clickhouse.Option, error) {
	opts := []clickhouse.Option{clickhouse.WithAuth(user, password)}
	if c.ClickHouseTLS {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.ClickHouseTLSCA != "" {
			pem, err := os.ReadFile(c.ClickHouseTLSCA)
			if err != nil {
				return nil, fmt.Errorf("MODELPORT_CLICKHOUSE_TLS_CA: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("MODELPORT_CLICKHOUSE_TLS_CA %s: no PEM certificate in it", c.ClickHouseTLSCA)
			}
		}
		opts = append(opts, clickhouse.WithTLS(cfg))
	}
	return opts, nil
}

// prices returns the price list the config names.
func (c Config) prices() (*billing.Prices, error) {
	if c.PricesFile == "" {
		return billing.DefaultPrices(), nil
	}
	b, err := os.ReadFile(c.PricesFile)
	if err != nil {
		return nil, fmt.Errorf("MODELPORT_BILLING_PRICES: %w", err)
	}
	return billing.ParsePrices(b)
}

// Start starts billing on bus. If ClickHouse cannot be reached it keeps
// trying in the background, with a warning each time; events wait in
// JetStream until it can. Once ClickHouse answers, the schema is migrated,
// the price list written, and the consumers start.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	if err := cfg.Validate(); err != nil {
		return runner.Service{}, err
	}
	prices, err := cfg.prices()
	if err != nil {
		return runner.Service{}, err
	}
	chOpts, err := cfg.clickhouseOptions(cfg.ClickHouseUser, cfg.ClickHousePassword)
	if err != nil {
		return runner.Service{}, err
	}
	store, err := clickhouse.Open(cfg.ClickHouseAddr, cfg.ClickHouseDB, chOpts...)
	if err != nil {
		return runner.Service{}, err
	}
	var opts []billing.Option
	if cfg.Now != nil {
		opts = append(opts, billing.WithClock(cfg.Now))
	}
	svc := billing.New(store, transport.Services{KV: bus.KV(state.BucketServices)}, prices, opts...)
	dead := transport.NewDeadLetters(bus.JS)
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for attempt := uint64(1); runCtx.Err() == nil; attempt++ {
			err := prepare(runCtx, cfg, store, prices, log)
			if err == nil {
				break
			}
			wait := natsx.Backoff(attempt)
			log.Warn("ClickHouse not ready; events wait in JetStream", "addr", cfg.ClickHouseAddr, "err", err, "retry_in", wait)
			select {
			case <-runCtx.Done():
				return
			case <-time.After(wait):
			}
		}
		if runCtx.Err() != nil {
			return
		}
		log.Info("ClickHouse ready", "addr", cfg.ClickHouseAddr, "database", cfg.ClickHouseDB)
		for attempt := uint64(1); runCtx.Err() == nil; attempt++ {
			consumed, err := transport.Consume(runCtx, bus.JS, svc, dead, transport.BatchConfig{Size: cfg.BatchSize, MaxWait: cfg.BatchWait}, log)
			if err == nil {
				<-consumed
				return
			}
			wait := natsx.Backoff(attempt)
			log.Error("billing consumers did not start; events wait in JetStream", "err", err, "retry_in", wait)
			select {
			case <-runCtx.Done():
			case <-time.After(wait):
			}
		}
	}()
	return runner.Service{
		Handler: transport.NewHandler(svc, dead, auth.NewKeyring(bus.KV(state.BucketAPIKeys)), log),
		Stop: func(ctx context.Context) {
			stop()
			select {
			case <-stopped:
			case <-ctx.Done():
				log.Warn("billing consumers still busy at stop; their batches will be redelivered")
			}
			_ = store.Close()
		},
	}, nil
}

// prepare migrates the schema and writes the price list.
func prepare(ctx context.Context, cfg Config, store *clickhouse.Store, prices *billing.Prices, log *slog.Logger) error {
	if err := migrate(ctx, cfg, store); err != nil {
		return err
	}
	n, err := store.SyncPrices(ctx, prices.List())
	if err != nil {
		return err
	}
	if n > 0 {
		log.Info("price list written to ClickHouse", "changed", n)
	}
	return nil
}

// migrate brings the schema up to date: as the schema owner when one is
// configured, over a connection used for that alone, else as billing's
// own user.
func migrate(ctx context.Context, cfg Config, store *clickhouse.Store) error {
	if cfg.ClickHouseMigrateUser == "" {
		return store.Migrate(ctx)
	}
	opts, err := cfg.clickhouseOptions(cfg.ClickHouseMigrateUser, cfg.ClickHouseMigratePassword)
	if err != nil {
		return err
	}
	owner, err := clickhouse.Open(cfg.ClickHouseAddr, cfg.ClickHouseDB, opts...)
	if err != nil {
		return err
	}
	defer owner.Close()
	if err := owner.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate as %s: %w", cfg.ClickHouseMigrateUser, err)
	}
	// Billing's own user reads what it needs.
	return store.Migrate(ctx)
}
