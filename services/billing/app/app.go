// Package app wires billing: ClickHouse, the usage and lifecycle consumers,
// dead letters, the scheduled jobs (rollup, rollup check, lost instances)
// and the API. The service binary and the all-in-one binary both start it
// through Start.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/lease"
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
	// InstanceLease is how long an instance is billed as running with no
	// evidence it runs (an event, or a worker heartbeat listing it)
	// before its time ends at the last evidence
	// (MODELPORT_BILLING_INSTANCE_LEASE).
	InstanceLease time.Duration
	// ReconcileEvery is how often lost instances are looked for
	// (MODELPORT_BILLING_RECONCILE_EVERY).
	ReconcileEvery time.Duration
	// RollupEvery is how often the hourly rollup is brought up to date
	// (MODELPORT_BILLING_ROLLUP_EVERY), and RollupGrace how long after an
	// hour ends it is first filled (MODELPORT_BILLING_ROLLUP_GRACE).
	RollupEvery, RollupGrace time.Duration
	// RollupCheckEvery is how often the rollup is compared with the raw
	// events, over the last RollupCheckWindow
	// (MODELPORT_BILLING_ROLLUP_CHECK_EVERY).
	RollupCheckEvery time.Duration
	// RollupSettle is how old a note of the hours a batch touched must be
	// before the rollup takes it; zero is clickhouse.MarkSettle. Tests
	// shorten it.
	RollupSettle time.Duration
	// Now is the clock: for instance time still accruing, which prices
	// may still be added, which periods have ended and which hours are
	// closed. nil is time.Now. Tests set it to simulate time.
	Now func() time.Time
}

// RollupCheckWindow is how far back the scheduled rollup check looks.
const RollupCheckWindow = 7 * 24 * time.Hour

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
	if c.BatchSize, err = config.Int(getenv, "MODELPORT_BILLING_BATCH", 10000); err != nil {
		return c, err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MODELPORT_BILLING_BATCH_WAIT", &c.BatchWait, 500 * time.Millisecond},
		{"MODELPORT_BILLING_INSTANCE_LEASE", &c.InstanceLease, time.Minute},
		{"MODELPORT_BILLING_RECONCILE_EVERY", &c.ReconcileEvery, 30 * time.Second},
		{"MODELPORT_BILLING_ROLLUP_EVERY", &c.RollupEvery, time.Minute},
		{"MODELPORT_BILLING_ROLLUP_GRACE", &c.RollupGrace, 5 * time.Minute},
		{"MODELPORT_BILLING_ROLLUP_CHECK_EVERY", &c.RollupCheckEvery, time.Hour},
	} {
		if *d.v, err = config.Duration(getenv, d.name, d.def); err != nil {
			return c, err
		}
	}
	return c, c.Validate()
}

// usageInserters is how many usage batches billing stores at once while
// it fetches the next: two keep ClickHouse busy while one batch is on its
// way, and more only add parts for ClickHouse to merge.
const usageInserters = 2

// withDefaults fills the durations a Config built in code left zero.
func (c Config) withDefaults() Config {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.InstanceLease, time.Minute}, {&c.ReconcileEvery, 30 * time.Second}, {&c.RollupEvery, time.Minute},
		{&c.RollupGrace, 5 * time.Minute}, {&c.RollupCheckEvery, time.Hour}, {&c.RollupSettle, clickhouse.MarkSettle}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	return c
}

// Validate reports settings billing cannot run with.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.BatchSize < 1 || c.BatchSize > 10_000:
		return fmt.Errorf("MODELPORT_BILLING_BATCH must be between 1 and 10000, not %d", c.BatchSize)
	case c.BatchWait <= 0:
		return fmt.Errorf("MODELPORT_BILLING_BATCH_WAIT must be positive, not %s", c.BatchWait)
	case c.InstanceLease <= state.WorkerTTL:
		return fmt.Errorf("MODELPORT_BILLING_INSTANCE_LEASE must be longer than a worker heartbeat lasts (%s), not %s", state.WorkerTTL, c.InstanceLease)
	case c.ReconcileEvery <= 0 || c.RollupEvery <= 0 || c.RollupCheckEvery <= 0:
		return fmt.Errorf("MODELPORT_BILLING_RECONCILE_EVERY, _ROLLUP_EVERY and _ROLLUP_CHECK_EVERY must be positive")
	case c.RollupGrace < 0:
		return fmt.Errorf("MODELPORT_BILLING_ROLLUP_GRACE must not be negative, not %s", c.RollupGrace)
	case c.ClickHouseTLSCA != "" && !c.ClickHouseTLS:
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

// priceList returns the price list the config names.
func (c Config) priceList() ([]billing.PriceEntry, error) {
	if c.PricesFile == "" {
		return billing.DefaultPriceList(), nil
	}
	b, err := os.ReadFile(c.PricesFile)
	if err != nil {
		return nil, fmt.Errorf("MODELPORT_BILLING_PRICES: %w", err)
	}
	list, err := billing.ParsePriceList(b)
	if err != nil {
		return nil, fmt.Errorf("MODELPORT_BILLING_PRICES: %w", err)
	}
	return list, nil
}

// Start starts billing on bus. If ClickHouse cannot be reached it keeps
// trying in the background, with a warning each time; events wait in
// JetStream until it can. Once ClickHouse answers, the schema is migrated
// and the price list added (under a lease, one process at a time), and
// the consumers and the scheduled jobs start.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return runner.Service{}, err
	}
	prices, err := cfg.priceList()
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
	leases := lease.New(bus.KV(state.BucketLeases), access.Billing, lease.NewHolderID(), state.LeaseTTL, log)
	services := transport.Services{KV: bus.KV(state.BucketServices)}
	opts := []billing.Option{billing.WithLocks(leases)}
	if cfg.Now != nil {
		opts = append(opts, billing.WithClock(cfg.Now))
	}
	svc := billing.New(store, services, opts...)
	dead := transport.NewDeadLetters(bus.JS)
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for attempt := uint64(1); runCtx.Err() == nil; attempt++ {
			err := prepare(runCtx, cfg, store, svc, leases, services, prices, log)
			if err == nil {
				break
			}
			wait := natsx.Backoff(attempt)
			switch errs.KindOf(err) {
			case errs.Invalid, errs.Conflict:
				log.Error("the price list cannot be added to the stored prices; billing waits, events wait in JetStream", "err", err, "retry_in", wait)
			default:
				log.Warn("billing not ready (ClickHouse schema, prices or a lease out of reach); events wait in JetStream", "addr", cfg.ClickHouseAddr, "err", err, "retry_in", wait)
			}
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
		jobsDone := make(chan struct{})
		go func() {
			defer close(jobsDone)
			transport.RunJobs(runCtx, leases, jobs(cfg, svc, store, bus, log), log)
		}()
		defer func() { <-jobsDone }()
		for attempt := uint64(1); runCtx.Err() == nil; attempt++ {
			consumed, err := transport.Consume(runCtx, bus.JS, svc, dead, transport.BatchConfig{Size: cfg.BatchSize, MaxWait: cfg.BatchWait, Inserters: usageInserters}, log)
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

// prepare migrates the schema, adds the price list's new entries and
// stores a services row for services billing never saw created, all
// under the "migrate" lease, so billing processes starting together do
// it once.
func prepare(ctx context.Context, cfg Config, store *clickhouse.Store, svc *billing.Service, leases *lease.Leases,
	services transport.Services, prices []billing.PriceEntry, log *slog.Logger) error {
	return leases.Hold(ctx, "migrate", func(ctx context.Context) error {
		if err := migrate(ctx, cfg, store); err != nil {
			return err
		}
		n, err := svc.AddPrices(ctx, prices)
		if err != nil {
			return err
		}
		if n > 0 {
			log.InfoContext(ctx, "price list entries added to the schedule", "added", n)
		}
		all, err := services.All(ctx)
		if err != nil {
			return err
		}
		created := make([]billing.ServiceEvent, 0, len(all))
		for _, s := range all {
			created = append(created, billing.ServiceEvent{Kind: billing.ServiceCreated, ServiceID: s.ID, OwnerID: s.OwnerID, Name: s.Name,
				AccessName: s.AccessName, BaseModel: s.BaseModel, Task: s.Task, BillingMethod: s.BillingMethod, At: s.CreatedAt})
		}
		if n, err := store.BackfillServices(ctx, created); err != nil {
			return err
		} else if n > 0 {
			log.InfoContext(ctx, "services billing never saw created were recorded from the services bucket", "services", n)
		}
		return nil
	})
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
