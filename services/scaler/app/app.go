// Package app wires the scaler: its store, the service-event consumers,
// the periodic sweep and the autoscaler. The service binary and the all-in-one binary both
// start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/config"
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
	Sweep     time.Duration // MODELPORT_SCALER_SWEEP: how often every service is reconciled
	Autoscale time.Duration // MODELPORT_AUTOSCALE_INTERVAL: how often autoscaled services are sized
	DownDelay time.Duration // MODELPORT_AUTOSCALE_DOWN_DELAY: how long fewer instances must suffice before a scale-down
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
	switch {
	case c.Sweep <= 0:
		return c, fmt.Errorf("MODELPORT_SCALER_SWEEP must be positive, not %s", c.Sweep)
	case c.Autoscale <= 0:
		return c, fmt.Errorf("MODELPORT_AUTOSCALE_INTERVAL must be positive, not %s", c.Autoscale)
	case c.DownDelay < 0:
		return c, fmt.Errorf("MODELPORT_AUTOSCALE_DOWN_DELAY must not be negative, not %s", c.DownDelay)
	}
	return c, nil
}

// Start starts the scaler on bus.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements),
		bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	s := scale.New(store, bus.Publisher, log)
	if err := transport.ConsumeServiceEvents(ctx, bus.JS, s, log); err != nil {
		return runner.Service{}, err
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	go transport.Sweep(sweepCtx, s, cfg.Sweep, log)
	auto := autoscale.New(store, bus.Publisher, autoscale.Config{
		DownDelay: cfg.DownDelay, Stale: 10 * time.Second, Resend: 10 * time.Second,
	}, log)
	go transport.Autoscale(sweepCtx, auto, bus.KV(state.BucketLoad), cfg.Autoscale, log)
	return runner.Service{Stop: func(context.Context) { stopSweep() }}, nil
}
