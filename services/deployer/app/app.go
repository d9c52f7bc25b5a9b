// Package app wires the deployer: settings, the admin key, the service
// store, the model registry, the control API with its live views and the
// web console, served by every replica, and the instance-event consumers,
// the sweep and the tidying of the buckets, run by the replica that holds
// the deployer's lease. The service binary and the all-in-one binary both
// start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/lease"
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
	// Reconcile is how often the leader sweeps every service:
	// MODELPORT_DEPLOYER_RECONCILE.
	Reconcile time.Duration
	// Retention is how long a deleted service's record stays:
	// MODELPORT_DELETED_RETENTION.
	Retention time.Duration
	// HolderID is this replica's name in the lease: MODELPORT_REPLICA_ID.
	HolderID string
	// Console says where browsers reach the router and billing:
	// MODELPORT_PUBLIC_ROUTER_URL (else MODELPORT_PUBLIC_URL) and
	// MODELPORT_PUBLIC_BILLING_URL; empty is the console's own address.
	Console console.Config
	// EventsURL is where clients reach NATS to read the event stream
	// (modelport events tail), as GET /api/v1/me tells admin keys:
	// MODELPORT_PUBLIC_NATS_URL, else the deployer's own MODELPORT_NATS_URL.
	EventsURL string
	// EventsNKey is the events-reader identity's NKey seed file
	// (MODELPORT_EVENTS_NKEY): when set, GET /api/v1/me hands the seed to
	// admin keys with the address, so modelport events tail signs in as
	// that read-only identity with nothing else to configure.
	EventsNKey string
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	var dirs []string
	for _, d := range filepath.SplitList(getenv("MODELPORT_MODEL_DIRS")) {
		if d = strings.TrimSpace(d); d != "" {
			dirs = append(dirs, d)
		}
	}
	c := Config{AdminKey: getenv("MODELPORT_ADMIN_KEY"), CatalogFile: getenv("MODELPORT_CATALOG"), ModelDirs: dirs,
		HolderID: config.String(getenv, "MODELPORT_REPLICA_ID", lease.NewHolderID()),
		Console: console.Config{
			RouterURL:  config.String(getenv, "MODELPORT_PUBLIC_ROUTER_URL", getenv("MODELPORT_PUBLIC_URL")),
			BillingURL: getenv("MODELPORT_PUBLIC_BILLING_URL"),
		},
		EventsURL:  config.String(getenv, "MODELPORT_PUBLIC_NATS_URL", config.String(getenv, "MODELPORT_NATS_URL", "nats://127.0.0.1:4222")),
		EventsNKey: getenv("MODELPORT_EVENTS_NKEY"),
	}
	var err error
	if c.Reconcile, err = config.Duration(getenv, "MODELPORT_DEPLOYER_RECONCILE", 10*time.Second); err != nil {
		return c, err
	}
	if c.Retention, err = config.Duration(getenv, "MODELPORT_DELETED_RETENTION", state.DeletedRetention); err != nil {
		return c, err
	}
	switch {
	case c.Reconcile <= 0:
		return c, fmt.Errorf("MODELPORT_DEPLOYER_RECONCILE must be positive, not %s", c.Reconcile)
	case c.Retention <= 0:
		return c, fmt.Errorf("MODELPORT_DELETED_RETENTION must be positive, not %s", c.Retention)
	}
	return c, nil
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
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	files, err := modelstore.New(cfg.ModelDirs)
	if err != nil {
		return nil, fmt.Errorf("MODELPORT_MODEL_DIRS: %w", err)
	}
	registry := models.NewRegistry(kvstore.NewModels(bus.KV(state.BucketModels)), cat, files, store)
	m := deploy.NewManager(store, cat, bus.Publisher, deploy.WithModels(registry), deploy.WithRetention(cfg.Retention))
	claims := kvstore.NewClaims(bus.KV(state.BucketIdempotency))
	ui, err := console.Handler(cfg.Console)
	if err != nil {
		return nil, err
	}
	es := transport.EventStream{NATSURL: cfg.EventsURL}
	if cfg.EventsNKey != "" {
		if _, err := access.ReadSeed(cfg.EventsNKey); err != nil { // a user seed, readable
			return nil, fmt.Errorf("MODELPORT_EVENTS_NKEY: %w", err)
		}
		seed, err := os.ReadFile(cfg.EventsNKey)
		if err != nil {
			return nil, fmt.Errorf("MODELPORT_EVENTS_NKEY: %w", err)
		}
		es.Identity, es.NKeySeed = access.EventsReader, strings.TrimSpace(string(seed))
	}
	streams, endStreams := context.WithCancel(ctx)
	live := transport.NewLive(m, bus.KV(state.BucketServices), bus.JS, streams.Done(), log)
	api := transport.NewHandler(m, deploy.NewIdempotent(m, claims), deploy.NewKeys(keys, m), keys, log,
		transport.WithLive(live), transport.WithOwners(deploy.NewOwners(kvstore.NewOwners(bus.KV(state.BucketOwners)), keys)),
		transport.WithEventStream(es),
		transport.WithModels(registry))

	leases := lease.New(bus.KV(state.BucketLeases), access.Deployer, cfg.HolderID, state.LeaseTTL, log)
	runCtx, stopLeading := context.WithCancel(ctx)
	led := make(chan struct{})
	go func() {
		defer close(led)
		leases.Lead(runCtx, LeaseName, func(ctx context.Context) {
			if err := retry(ctx, "follow instance events", log, func() error {
				return transport.ConsumeInstanceEvents(ctx, bus.JS, m, log)
			}); err != nil {
				return
			}
			go transport.Reconcile(ctx, m, cfg.Reconcile, log)
			go transport.Tidy(ctx, store, []transport.Purger{store, claims}, tidyEvery, log)
			<-ctx.Done()
		})
	}()
	return &Deployer{
		Service: runner.Service{Handler: withConsole(ui, api), Stop: func(ctx context.Context) {
			endStreams()
			stopLeading()
			select {
			case <-led:
			case <-ctx.Done():
			}
		}},
		Admin:          admin,
		NewAdminSecret: secret,
		EndStreams:     endStreams,
	}, nil
}

// LeaseName is the name of the lease the leading deployer replica holds:
// the key lease.Key(access.Deployer, LeaseName) in the leases bucket.
const LeaseName = "leader"

// tidyEvery is how often the leader tidies the buckets.
const tidyEvery = time.Minute

// retry calls f until it succeeds or ctx ends, waiting longer after each
// failure: setting up consumers while NATS restarts.
func retry(ctx context.Context, what string, log *slog.Logger, f func() error) error {
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		log.WarnContext(ctx, what, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
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
