// Package app wires the scaler: its store, the service-event consumers
// and the periodic sweep. The service binary and the all-in-one binary both
// start it through Start.
package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/kvstore"
	"github.com/modelport/modelport/services/scaler/internal/scale"
	"github.com/modelport/modelport/services/scaler/internal/transport"
)

// Config is the scaler's settings.
type Config struct {
	Sweep time.Duration // MODELPORT_SCALER_SWEEP: how often every service is reconciled
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	d, err := config.Duration(getenv, "MODELPORT_SCALER_SWEEP", 5*time.Second)
	return Config{Sweep: d}, err
}

// Start starts the scaler on bus.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements), bus.KV(state.BucketInstances))
	s := scale.New(store, bus.Publisher, log)
	if err := transport.ConsumeServiceEvents(ctx, bus.JS, s, log); err != nil {
		return runner.Service{}, err
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	go transport.Sweep(sweepCtx, s, cfg.Sweep, log)
	return runner.Service{Stop: func(context.Context) { stopSweep() }}, nil
}
