// Package app wires the scaler: its store, the service-event consumers,
// the periodic sweep, the autoscaler and the purge of old delete markers,
// all run by the replica that holds the scaler's lease. The service binary
// and the all-in-one binary both start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/lease"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/autoscale"
	"github.com/modelport/modelport/services/scaler/internal/kvstore"
	"github.com/modelport/modelport/services/scaler/internal/scale"
	"github.com/modelport/modelport/services/scaler/internal/transport"
)

// Config is the scaler's settings.
type Config struct {
	Sweep       time.Duration // MODELPORT_SCALER_SWEEP: how often every service is reconciled
	Autoscale   time.Duration // MODELPORT_AUTOSCALE_INTERVAL: how often autoscaled services are sized
	DownDelay   time.Duration // MODELPORT_AUTOSCALE_DOWN_DELAY: how long fewer instances must suffice before a scale-down
	Grace       time.Duration // MODELPORT_SCALER_GRACE: how long a placement may go unlisted by its worker before it is placed again
	CatalogFile string        // MODELPORT_CATALOG: a catalog file replacing the built-in one
	HolderID    string        // MODELPORT_REPLICA_ID: this replica's name in the lease; default host name and a random suffix
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	var c Config
	var err error
	if c.Sweep, err = config.Duration(getenv, "MODELPORT_SCALER_SWEEP", 5*time.Second); err != nil {
		return c, err
	}
	if c.Autoscale, err = config.Duration(getenv, "MODELPORT_AUTOSCALE_INTERVAL", 2*time.Second); err != nil {
		return c, err
	}
	if c.DownDelay, err = config.Duration(getenv, "MODELPORT_AUTOSCALE_DOWN_DELAY", time.Minute); err != nil {
		return c, err
	}
	if c.Grace, err = config.Duration(getenv, "MODELPORT_SCALER_GRACE", scale.DefaultGrace); err != nil {
		return c, err
	}
	c.CatalogFile = getenv("MODELPORT_CATALOG")
	c.HolderID = config.String(getenv, "MODELPORT_REPLICA_ID", lease.NewHolderID())
	switch {
	case c.Sweep <= 0:
		return c, fmt.Errorf("MODELPORT_SCALER_SWEEP must be positive, not %s", c.Sweep)
	case c.Autoscale <= 0:
		return c, fmt.Errorf("MODELPORT_AUTOSCALE_INTERVAL must be positive, not %s", c.Autoscale)
	case c.DownDelay < 0:
		return c, fmt.Errorf("MODELPORT_AUTOSCALE_DOWN_DELAY must not be negative, not %s", c.DownDelay)
	case c.Grace <= 0:
		return c, fmt.Errorf("MODELPORT_SCALER_GRACE must be positive, not %s", c.Grace)
	}
	return c, nil
}

// LeaseName is the name of the lease the leading scaler replica holds:
// the key lease.Key(access.Scaler, LeaseName) in the leases bucket.
const LeaseName = "leader"

// tidyEvery is how often the leader purges old delete markers.
const tidyEvery = time.Minute

// Start starts a scaler replica on bus. It campaigns for the scaler's
// lease; while it holds it, it reconciles every service at once, then
// follows the service events, sweeps, autoscales and purges old delete
// markers. A replica that loses the lease stops all of that, so two
// replicas never act at once.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	cat, err := catalog.Load(cfg.CatalogFile)
	if err != nil {
		return runner.Service{}, err
	}
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements),
		bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	s := scale.New(store, bus.Publisher, log, scale.WithCatalog(cat), scale.WithGrace(cfg.Grace))
	leases := lease.New(bus.KV(state.BucketLeases), access.Scaler, cfg.HolderID, state.LeaseTTL, log)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		leases.Lead(runCtx, LeaseName, func(ctx context.Context) { lead(ctx, cfg, s, store, bus, log) })
	}()
	return runner.Service{Stop: func(ctx context.Context) {
		stop()
		select {
		case <-done:
		case <-ctx.Done():
		}
	}}, nil
}

// lead is the scaler's work while it holds the lease; it returns when ctx
// ends.
func lead(ctx context.Context, cfg Config, s *scale.Scaler, store *kvstore.Store, bus *natsx.Bus, log *slog.Logger) {
	s.Forget() // what an earlier term remembered may be stale
	if err := s.ReconcileAll(ctx); err != nil && ctx.Err() == nil {
		log.WarnContext(ctx, "reconcile on taking the lead", "err", err)
	}
	if err := transport.Retry(ctx, "follow service events", log, func() error {
		return transport.ConsumeServiceEvents(ctx, bus.JS, s, log)
	}); err != nil {
		return
	}
	auto := autoscale.New(store, bus.Publisher, autoscale.Config{
		DownDelay: cfg.DownDelay, Stale: 10 * time.Second, Resend: 10 * time.Second,
	}, log)
	go transport.Sweep(ctx, s, cfg.Sweep, log)
	go transport.Autoscale(ctx, auto, bus.KV(state.BucketLoad), cfg.Autoscale, log)
	go transport.Tidy(ctx, store, tidyEvery, state.MarkerRetention, log)
	<-ctx.Done()
}
