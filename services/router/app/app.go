// Package app wires the router: the routing table and its watchers, the
// gateway and the OpenAI API. The service binary and the all-in-one binary
// both start it through Start.
package app

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/modelport/modelport/services/router/internal/transport"
)

// Config is the router's settings.
type Config struct {
	EngineTimeout time.Duration // MODELPORT_ENGINE_TIMEOUT: the longest an engine may take to start answering
	ReadyWait     time.Duration // MODELPORT_READY_WAIT: how long a request waits for a ready instance
	PublicURL     string        // MODELPORT_PUBLIC_URL: the router's address as clients see it, for image URLs
	RateLimit     int           // MODELPORT_RATE_LIMIT_RPM: requests per minute per API key; 0: no limit
	ColdStartWait time.Duration // MODELPORT_COLD_START_WAIT: how long a request to an autoscaled service waits for an instance
	LoadReport    time.Duration // MODELPORT_LOAD_REPORT_INTERVAL: how often demand is reported to the autoscaler
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	var c Config
	var err error
	c.PublicURL = strings.TrimSuffix(getenv("MODELPORT_PUBLIC_URL"), "/")
	if c.EngineTimeout, err = config.Duration(getenv, "MODELPORT_ENGINE_TIMEOUT", 10*time.Minute); err != nil {
		return c, err
	}
	if c.RateLimit, err = config.Int(getenv, "MODELPORT_RATE_LIMIT_RPM", 0); err != nil {
		return c, err
	}
	if c.ColdStartWait, err = config.Duration(getenv, "MODELPORT_COLD_START_WAIT", 2*time.Minute); err != nil {
		return c, err
	}
	if c.LoadReport, err = config.Duration(getenv, "MODELPORT_LOAD_REPORT_INTERVAL", time.Second); err != nil {
		return c, err
	}
	c.ReadyWait, err = config.Duration(getenv, "MODELPORT_READY_WAIT", 10*time.Second)
	return c, err
}

// Start starts the router on bus. It returns once the routing table holds
// the current services and instances.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	table := routing.NewTable()
	watchCtx, stopWatch := context.WithCancel(ctx)
	if err := transport.WatchTable(watchCtx, bus.KV(state.BucketServices), bus.KV(state.BucketInstances), table, log); err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	demand := routing.NewDemand()
	g := gateway.New(table, demand, transport.NewEngineClient(cfg.EngineTimeout), bus.Publisher, log)
	g.ReadyWait, g.ColdStartWait = cfg.ReadyWait, cfg.ColdStartWait
	go transport.ReportLoad(watchCtx, bus.KV(state.BucketLoad), uuid.NewString(), demand, cfg.LoadReport, log)
	images, err := transport.NewImageStore(ctx, bus.JS, bus.Replicas)
	if err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	if err := keys.Follow(watchCtx); err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	return runner.Service{
		Handler: transport.NewHandler(g, images, cfg.PublicURL, keys, transport.NewKeyLimiter(cfg.RateLimit), log),
		Stop:    func(context.Context) { stopWatch() },
	}, nil
}
