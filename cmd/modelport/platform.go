package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsembed"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	billing "github.com/modelport/modelport/services/billing/app"
	deployer "github.com/modelport/modelport/services/deployer/app"
	worker "github.com/modelport/modelport/services/inference-worker/app"
	router "github.com/modelport/modelport/services/router/app"
	scaler "github.com/modelport/modelport/services/scaler/app"
	"github.com/nats-io/nats-server/v2/server"
)

// upConfig is the all-in-one platform's own settings; each service reads
// its settings from the same environment.
type upConfig struct {
	DataDir           string // MODELPORT_DATA_DIR
	HTTPAddr          string // MODELPORT_HTTP_ADDR: router /v1/*, control API /api/v1/*
	NATSPort          int    // MODELPORT_NATS_PORT; -1 picks a free port
	ClickHouseAddr    string // MODELPORT_CLICKHOUSE_ADDR
	InstallClickHouse bool   // MODELPORT_CLICKHOUSE_INSTALL: apt-get install it when missing
}

func upConfigFromEnv(getenv config.Getenv) (upConfig, error) {
	c := upConfig{
		DataDir:           config.String(getenv, "MODELPORT_DATA_DIR", "./data"),
		HTTPAddr:          config.String(getenv, "MODELPORT_HTTP_ADDR", "127.0.0.1:8080"),
		ClickHouseAddr:    config.String(getenv, "MODELPORT_CLICKHOUSE_ADDR", "127.0.0.1:9000"),
		InstallClickHouse: config.Bool(getenv, "MODELPORT_CLICKHOUSE_INSTALL", false),
	}
	var err error
	c.NATSPort, err = config.Int(getenv, "MODELPORT_NATS_PORT", 4222)
	return c, err
}

// platform is all five services in one process around an embedded NATS.
type platform struct {
	BaseURL        string // http://host:port
	AdminKey       string // the admin key generated on this start; empty if it existed
	AdminKeyPrefix string
	NATSURL        string

	nats  *server.Server
	bus   *natsx.Bus
	stops []func(context.Context)
	srv   *http.Server
	done  chan error
}

// startPlatform starts NATS, the five services and
// the shared HTTP listener. Close stops them in reverse order.
func startPlatform(ctx context.Context, getenv config.Getenv, log *slog.Logger) (_ *platform, err error) {
	cfg, err := upConfigFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	p := &platform{done: make(chan error, 1)}
	defer func() {
		if err != nil {
			p.Close(context.WithoutCancel(ctx))
		}
	}()

	p.nats, err = natsembed.Start(natsembed.Options{Port: cfg.NATSPort, StoreDir: filepath.Join(cfg.DataDir, "nats")})
	if err != nil {
		return nil, err
	}
	p.NATSURL = p.nats.ClientURL()

	p.bus, err = natsx.Open(ctx, p.NATSURL, "modelport", 1, log)
	if err != nil {
		return nil, err
	}

	dcfg, err := deployer.ConfigFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	scfg, err := scaler.ConfigFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	// One machine, one worker: a stable ID lets it start its instances
	// again after a restart.
	wcfg, err := worker.ConfigFromEnv(config.Chain(getenv, config.Map(map[string]string{"MODELPORT_WORKER_ID": "local"})))
	if err != nil {
		return nil, err
	}
	bcfg, err := billing.ConfigFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	rcfg, err := router.ConfigFromEnv(getenv)
	if err != nil {
		return nil, err
	}

	d, err := deployer.Start(ctx, dcfg, p.bus, log.With("component", "deployer"))
	if err != nil {
		return nil, fmt.Errorf("deployer: %w", err)
	}
	p.stops = append(p.stops, d.Stop)
	p.AdminKey, p.AdminKeyPrefix = d.NewAdminSecret, d.Admin.Prefix

	s, err := scaler.Start(ctx, scfg, p.bus, log.With("component", "scaler"))
	if err != nil {
		return nil, fmt.Errorf("scaler: %w", err)
	}
	p.stops = append(p.stops, s.Stop)
	w, err := worker.Start(ctx, wcfg, p.bus, log.With("component", "inference-worker"))
	if err != nil {
		return nil, fmt.Errorf("inference-worker: %w", err)
	}
	p.stops = append(p.stops, w.Stop)
	b, err := billing.Start(ctx, bcfg, p.bus, log.With("component", "billing"))
	if err != nil {
		return nil, fmt.Errorf("billing: %w", err)
	}
	p.stops = append(p.stops, b.Stop)
	r, err := router.Start(ctx, rcfg, p.bus, log.With("component", "router"))
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	p.stops = append(p.stops, r.Stop)

	mux := http.NewServeMux()
	mux.Handle("/v1/", r.Handler)
	mux.Handle("/api/v1/usage", b.Handler)
	mux.Handle("/api/v1/usage/", b.Handler) // export.csv, deadletters
	mux.Handle("/api/v1/", d.Handler)
	mux.Handle("/console/", d.Handler) // the web console
	mux.Handle("GET /{$}", d.Handler)  // redirects to it
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	p.BaseURL = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: runner.Edge(runner.WithHealth(mux, p.bus, getenv("MODELPORT_METRICS_TOKEN")), "modelport", log), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	p.srv.RegisterOnShutdown(d.EndStreams) // open watch streams would hold Shutdown up
	go func() { p.done <- p.srv.Serve(ln) }()
	return p, nil
}

// ensureClickHouse returns a private server it started, or nil when one
// already answers or none can be had; billing then waits for one.
func ensureClickHouse(ctx context.Context, cfg upConfig, log *slog.Logger) *chlocal.Server {
	pingCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := chlocal.Ping(pingCtx, cfg.ClickHouseAddr)
	cancel()
	if err == nil {
		return nil
	}
	host, portStr, _ := net.SplitHostPort(cfg.ClickHouseAddr)
	port, _ := strconv.Atoi(portStr)
	if host != "127.0.0.1" && host != "localhost" || port == 0 {
		log.Warn("ClickHouse unreachable; billing will wait for it and usage stays in JetStream", "addr", cfg.ClickHouseAddr, "err", err)
		return nil
	}
	if _, err := chlocal.Binary(); errors.Is(err, chlocal.ErrNotInstalled) {
		if !cfg.InstallClickHouse {
			log.Warn("ClickHouse is not installed; billing will wait for it and usage stays in JetStream (set MODELPORT_CLICKHOUSE_INSTALL=1 to install the Debian package)")
			return nil
		}
		log.Warn("ClickHouse is missing: installing the Debian package clickhouse-server")
		if err := chlocal.Install(ctx); err != nil {
			log.Warn("ClickHouse install failed; billing will wait for it", "err", err)
			return nil
		}
	}
	srv, err := chlocal.Start(ctx, filepath.Join(cfg.DataDir, "clickhouse"), port)
	if err != nil {
		log.Warn("ClickHouse did not start; billing will wait for it and usage stays in JetStream", "err", err)
		return nil
	}
	log.Info("started a local ClickHouse", "addr", srv.Addr, "dir", srv.Dir)
	return srv
}

// Wait blocks until the HTTP server fails or ctx ends.
func (p *platform) Wait(ctx context.Context) error {
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// Close stops everything in reverse order of start.
func (p *platform) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if p.srv != nil {
		_ = p.srv.Shutdown(ctx)
	}
	for i := len(p.stops) - 1; i >= 0; i-- {
		p.stops[i](ctx)
	}
	if p.bus != nil {
		p.bus.Close()
	}
	if p.nats != nil {
		p.nats.Shutdown()
		p.nats.WaitForShutdown()
	}
}
