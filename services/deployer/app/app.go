// Package app wires the deployer: settings, the admin key, the service
// store, the model registry, the control API with its live views, the web
// console and the instance-event consumers. The service binary and the all-in-one binary
// both start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/console"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/models"
	"github.com/modelport/modelport/services/deployer/internal/modelstore"
	"github.com/modelport/modelport/services/deployer/internal/transport"
)

// Config is the deployer's settings.
type Config struct {
	AdminKey    string // MODELPORT_ADMIN_KEY: the admin's API key; generated when empty
	CatalogFile string // MODELPORT_CATALOG: a catalog file replacing the built-in one
	// ModelDirs are the model store's folders (MODELPORT_MODEL_DIRS, a
	// list like $PATH): where file:// model sources may lie, mounted at
	// the same paths on the workers. None: file sources are refused.
	ModelDirs []string
	// Console says where browsers reach the router and billing:
	// MODELPORT_PUBLIC_ROUTER_URL (else MODELPORT_PUBLIC_URL) and
	// MODELPORT_PUBLIC_BILLING_URL; empty is the console's own address.
	Console console.Config
	// EventsURL is where clients reach NATS to read the event stream
	// (modelport events tail), as GET /api/v1/me tells admin keys:
	// MODELPORT_PUBLIC_NATS_URL, else the deployer's own MODELPORT_NATS_URL.
	EventsURL string
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) Config {
	var dirs []string
	for _, d := range filepath.SplitList(getenv("MODELPORT_MODEL_DIRS")) {
		if d = strings.TrimSpace(d); d != "" {
			dirs = append(dirs, d)
		}
	}
	return Config{AdminKey: getenv("MODELPORT_ADMIN_KEY"), CatalogFile: getenv("MODELPORT_CATALOG"), ModelDirs: dirs,
		Console: console.Config{
			RouterURL:  config.String(getenv, "MODELPORT_PUBLIC_ROUTER_URL", getenv("MODELPORT_PUBLIC_URL")),
			BillingURL: getenv("MODELPORT_PUBLIC_BILLING_URL"),
		},
		EventsURL: config.String(getenv, "MODELPORT_PUBLIC_NATS_URL", config.String(getenv, "MODELPORT_NATS_URL", "nats://127.0.0.1:4222")),
	}
}

// Deployer is a started deployer.
type Deployer struct {
	runner.Service
	// Admin is the admin key's record.
	Admin auth.Key
	// NewAdminSecret is the admin key generated on this start, shown once;
	// empty when it was configured or generated before.
	NewAdminSecret string
	// EndStreams ends the open watch streams (GET
	// /api/v1/services/watch); Stop calls it too. An HTTP server's
	// Shutdown waits for open responses, so register it with
	// http.Server.RegisterOnShutdown.
	EndStreams func()
}

// Start starts the deployer on bus.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (*Deployer, error) {
	cat, err := catalog.Load(cfg.CatalogFile)
	if err != nil {
		return nil, err
	}
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	admin, secret, err := keys.EnsureAdmin(ctx, cfg.AdminKey)
	if err != nil {
		return nil, err
	}
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances))
	files, err := modelstore.New(cfg.ModelDirs)
	if err != nil {
		return nil, fmt.Errorf("MODELPORT_MODEL_DIRS: %w", err)
	}
	registry := models.NewRegistry(kvstore.NewModels(bus.KV(state.BucketModels)), cat, files, store)
	m := deploy.NewManager(store, cat, bus.Publisher, deploy.WithModels(registry))
	if err := transport.ConsumeInstanceEvents(ctx, bus.JS, m, log); err != nil {
		return nil, err
	}
	ui, err := console.Handler(cfg.Console)
	if err != nil {
		return nil, err
	}
	streams, endStreams := context.WithCancel(ctx)
	live := transport.NewLive(m, bus.KV(state.BucketServices), bus.JS, streams.Done(), log)
	api := transport.NewHandler(m, deploy.NewIdempotent(m, kvstore.NewClaims(bus.KV(state.BucketIdempotency))), deploy.NewKeys(keys, m), keys, log,
		transport.WithLive(live), transport.WithOwners(deploy.NewOwners(kvstore.NewOwners(bus.KV(state.BucketOwners)), keys)),
		transport.WithEventStream(transport.EventStream{NATSURL: cfg.EventsURL}),
		transport.WithModels(registry))
	return &Deployer{
		Service:        runner.Service{Handler: withConsole(ui, api), Stop: func(context.Context) { endStreams() }},
		Admin:          admin,
		NewAdminSecret: secret,
		EndStreams:     endStreams,
	}, nil
}

// withConsole serves the web console under /console/, sends / there, and
// passes everything else to api.
func withConsole(ui, api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, ui)
	mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix, http.StatusFound))
	mux.Handle("/", api)
	return mux
}
