// Package app wires the deployer: settings, the admin key, the service
// store, the control API and the instance-event consumers. The service
// binary and the all-in-one binary both start it through Start.
package app

import (
	"context"
	"log/slog"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/transport"
)

// Config is the deployer's settings.
type Config struct {
	AdminKey    string // MODELPORT_ADMIN_KEY: the admin's API key; generated when empty
	CatalogFile string // MODELPORT_CATALOG: a catalog file replacing the built-in one
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) Config {
	return Config{AdminKey: getenv("MODELPORT_ADMIN_KEY"), CatalogFile: getenv("MODELPORT_CATALOG")}
}

// Deployer is a started deployer.
type Deployer struct {
	runner.Service
	// Admin is the admin key's record.
	Admin auth.Key
	// NewAdminSecret is the admin key generated on this start, shown once;
	// empty when it was configured or generated before.
	NewAdminSecret string
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
	m := deploy.NewManager(store, cat, bus.Publisher)
	if err := transport.ConsumeInstanceEvents(ctx, bus.JS, m, log); err != nil {
		return nil, err
	}
	return &Deployer{
		Service:        runner.Service{Handler: transport.NewHandler(m, deploy.NewIdempotent(m, kvstore.NewClaims(bus.KV(state.BucketIdempotency))), deploy.NewKeys(keys, m), keys, log), Stop: func(context.Context) {}},
		Admin:          admin,
		NewAdminSecret: secret,
	}, nil
}
