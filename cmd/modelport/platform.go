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

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/httpx"
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
	// ModelDirs are the model store's folders: where file:// model
	// sources may lie (MODELPORT_MODEL_DIRS; default: models in the data
	// folder).
	ModelDirs []string
	// NATSCreds is the folder of the NATS identities' NKey seeds,
	// <identity>.nk: one per service and events-reader.nk for people
	// following the events.
	NATSCreds string

	nats  *server.Server
	buses map[string]*natsx.Bus // by identity
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

	// Each service connects as its own identity, with the permissions of
	// the access table, as on many machines; the server refuses anyone
	// else. The seeds stay in the data folder, so a restart keeps them.
	p.NATSCreds = filepath.Join(cfg.DataDir, "nats")
	pubs, err := access.EnsureSeeds(p.NATSCreds, access.Names())
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for name, pub := range pubs {
		users[pub] = name
	}
	p.nats, err = natsembed.Start(natsembed.Options{Port: cfg.NATSPort, StoreDir: p.NATSCreds, Users: users})
	if err != nil {
		return nil, err
	}
	p.NATSURL = p.nats.ClientURL()
	if p.buses, err = openBuses(ctx, p.NATSURL, p.NATSCreds, log); err != nil {
		return nil, err
	}

	// One machine: the model store is a folder beside the data, unless
	// MODELPORT_MODEL_DIRS names others.
	models, err := filepath.Abs(filepath.Join(cfg.DataDir, "models"))
	if err != nil {
		return nil, fmt.Errorf("model store: %w", err)
	}
	if getenv("MODELPORT_MODEL_DIRS") == "" {
		if err := os.MkdirAll(models, 0o750); err != nil {
			return nil, fmt.Errorf("model store: %w", err)
		}
	}
	dcfg, err := deployer.ConfigFromEnv(config.Chain(getenv, config.Map(map[string]string{"MODELPORT_MODEL_DIRS": models})))
	if err != nil {
		return nil, err
	}
	p.ModelDirs = dcfg.ModelDirs
	if getenv("MODELPORT_PUBLIC_NATS_URL") == "" {
		dcfg.EventsURL = p.NATSURL // the embedded server clients tail
	}
	if dcfg.EventsNKey == "" {
		dcfg.EventsNKey = access.SeedFile(p.NATSCreds, access.EventsReader) // handed to admin keys with the address
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
	if rcfg.UsageSpool == "" {
		// Usage waits on the same disk as the embedded JetStream's store,
		// and reaches it within milliseconds.
		rcfg.UsageSpool = filepath.Join(cfg.DataDir, "router-spool")
	}

	d, err := deployer.Start(ctx, dcfg, p.buses[access.Deployer], log.With("component", "deployer"))
	if err != nil {
		return nil, fmt.Errorf("deployer: %w", err)
	}
	p.stops = append(p.stops, d.Stop)
	p.AdminKey, p.AdminKeyPrefix = d.NewAdminSecret, d.Admin.Prefix

	s, err := scaler.Start(ctx, scfg, p.buses[access.Scaler], log.With("component", "scaler"))
	if err != nil {
		return nil, fmt.Errorf("scaler: %w", err)
	}
	p.stops = append(p.stops, s.Stop)
	w, err := worker.Start(ctx, wcfg, p.buses[access.InferenceWorker], log.With("component", "inference-worker"))
	if err != nil {
		return nil, fmt.Errorf("inference-worker: %w", err)
	}
	p.stops = append(p.stops, w.Stop)
	b, err := billing.Start(ctx, bcfg, p.buses[access.Billing], log.With("component", "billing"))
	if err != nil {
		return nil, fmt.Errorf("billing: %w", err)
	}
	p.stops = append(p.stops, b.Stop)
	r, err := router.Start(ctx, rcfg, p.buses[access.Router], log.With("component", "router"))
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	p.stops = append(p.stops, r.Stop)

	mux := http.NewServeMux()
	mux.Handle("/v1/", r.Handler)
	for _, prefix := range []string{"/api/v1/usage", "/api/v1/statements", "/api/v1/periods", "/api/v1/prices"} {
		mux.Handle(prefix, b.Handler)
		mux.Handle(prefix+"/", b.Handler) // export.csv, deadletters, {period}/close
	}
	mux.Handle("/api/v1/", d.Handler)
	mux.Handle("/console/", d.Handler) // the web console
	mux.Handle("GET /{$}", d.Handler)  // redirects to it
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	p.BaseURL = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: httpx.Edge(runner.WithHealth(mux, p.buses[access.Router], getenv("MODELPORT_METRICS_TOKEN"), r.Ready), "modelport", log), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	p.srv.RegisterOnShutdown(d.EndStreams) // open watch streams would hold Shutdown up
	go func() { p.done <- p.srv.Serve(ln) }()
	return p, nil
}

// openBuses connects each service as its own identity, all at once: each
// creates the streams and buckets it owns and waits for those of others.
func openBuses(ctx context.Context, url, creds string, log *slog.Logger) (map[string]*natsx.Bus, error) {
	services := []string{access.Deployer, access.Scaler, access.InferenceWorker, access.Billing, access.Router}
	type opened struct {
		name string
		bus  *natsx.Bus
		err  error
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	results := make(chan opened, len(services))
	for _, name := range services {
		go func() {
			b, err := natsx.Open(ctx, url, name, 1, log.With("component", name), natsx.NKeyFile(access.SeedFile(creds, name)))
			results <- opened{name, b, err}
		}()
	}
	buses := map[string]*natsx.Bus{}
	var first error
	for range services {
		r := <-results
		if r.err != nil {
			if first == nil {
				first = r.err
			}
			cancel() // the others would wait for it
			continue
		}
		buses[r.name] = r.bus
	}
	if err := first; err != nil {
		for _, b := range buses {
			b.Close()
		}
		return nil, err
	}
	return buses, nil
}

// localClickHouse is a private server the all-in-one started, with
// Modelport's users.
type localClickHouse struct {
	*chlocal.Server
	// PasswordDir holds each user's password, <user>.password.
	PasswordDir string
	// Env is billing's settings for it: its own user, and the passwordless
	// default user (loopback only) as the schema owner.
	Env map[string]string
}

// ensureClickHouse returns a private server it started, or nil when one
// already answers or none can be had; billing then waits for one.
func ensureClickHouse(ctx context.Context, cfg upConfig, getenv config.Getenv, log *slog.Logger) *localClickHouse {
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
	// Billing writes as its own user, which may not change the schema;
	// analysts read as theirs. Their passwords stay in the data folder.
	db := config.String(getenv, "MODELPORT_CLICKHOUSE_DB", "modelport")
	pwDir := filepath.Join(cfg.DataDir, "clickhouse-users")
	users, err := chlocal.ModelportUsers(pwDir, db)
	if err != nil {
		log.Warn("ClickHouse users", "err", err)
		return nil
	}
	srv, err := chlocal.StartWith(ctx, filepath.Join(cfg.DataDir, "clickhouse"), port, chlocal.Options{Users: users})
	if err != nil {
		log.Warn("ClickHouse did not start; billing will wait for it and usage stays in JetStream", "err", err)
		return nil
	}
	log.Info("started a local ClickHouse", "addr", srv.Addr, "dir", srv.Dir)
	return &localClickHouse{Server: srv, PasswordDir: pwDir, Env: map[string]string{
		"MODELPORT_CLICKHOUSE_USER":             users[0].Name,
		"MODELPORT_CLICKHOUSE_PASSWORD":         users[0].Password,
		"MODELPORT_CLICKHOUSE_MIGRATE_USER":     "default",
		"MODELPORT_CLICKHOUSE_MIGRATE_PASSWORD": "",
	}}
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
	for _, b := range p.buses {
		b.Close()
	}
	if p.nats != nil {
		p.nats.Shutdown()
		p.nats.WaitForShutdown()
	}
}
