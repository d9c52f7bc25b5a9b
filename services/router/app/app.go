// Package app wires the router: the routing table and its watchers, the
// gateway and the OpenAI API. The service binary and the all-in-one binary
// both start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/modelport/modelport/services/router/internal/transport"
)

// Config is the router's settings.
type Config struct {
	EngineTimeout time.Duration // MODELPORT_ENGINE_TIMEOUT: the longest an engine may take to start answering
	ReadyWait     time.Duration // MODELPORT_READY_WAIT: how long a request waits for a ready instance
	PublicURL     string        // MODELPORT_PUBLIC_URL: the router's address as clients see it, for image URLs
	ColdStartWait time.Duration // MODELPORT_COLD_START_WAIT: how long a request to an autoscaled service waits for an instance
	LoadReport    time.Duration // MODELPORT_LOAD_REPORT_INTERVAL: how often demand is reported to the autoscaler
	// RateLimits are requests and tokens per minute, per API key and per
	// service, in this router process; 0: no limit.
	RateLimits ratelimit.Config // MODELPORT_RATE_LIMIT_RPM, _TPM, MODELPORT_SERVICE_RATE_LIMIT_RPM, _TPM
	// BodyTimeout bounds reading a request body.
	BodyTimeout time.Duration // MODELPORT_BODY_TIMEOUT
	// ImageFetchTimeout bounds fetching the image URLs of one request.
	ImageFetchTimeout time.Duration // MODELPORT_IMAGE_FETCH_TIMEOUT
	// MaxImageBytes bounds each image of a chat request, inline or fetched.
	MaxImageBytes int64 // MODELPORT_IMAGE_MAX_BYTES
	// AllowPrivateImageURLs lets image URLs reach private, loopback and
	// link-local addresses.
	AllowPrivateImageURLs bool // MODELPORT_ALLOW_PRIVATE_IMAGE_URLS
	// PrefixLoadFactor bounds the prefix-affinity policy: an instance
	// takes a request for its prefix while its requests in flight stay
	// within this multiple of the average.
	PrefixLoadFactor float64 // MODELPORT_PREFIX_LOAD_FACTOR
}

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	var c Config
	var err error
	c.PublicURL = strings.TrimSuffix(getenv("MODELPORT_PUBLIC_URL"), "/")
	c.AllowPrivateImageURLs = config.Bool(getenv, "MODELPORT_ALLOW_PRIVATE_IMAGE_URLS", false)
	if c.EngineTimeout, err = config.Duration(getenv, "MODELPORT_ENGINE_TIMEOUT", 10*time.Minute); err != nil {
		return c, err
	}
	for _, s := range []struct {
		name string
		v    *int
	}{
		{"MODELPORT_RATE_LIMIT_RPM", &c.RateLimits.KeyRequests},
		{"MODELPORT_RATE_LIMIT_TPM", &c.RateLimits.KeyTokens},
		{"MODELPORT_SERVICE_RATE_LIMIT_RPM", &c.RateLimits.ServiceRequests},
		{"MODELPORT_SERVICE_RATE_LIMIT_TPM", &c.RateLimits.ServiceTokens},
	} {
		if *s.v, err = config.Int(getenv, s.name, 0); err != nil {
			return c, err
		}
		if *s.v < 0 {
			return c, fmt.Errorf("%s: %d is negative; 0 turns the limit off", s.name, *s.v)
		}
	}
	for _, s := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MODELPORT_BODY_TIMEOUT", &c.BodyTimeout, time.Minute},
		{"MODELPORT_IMAGE_FETCH_TIMEOUT", &c.ImageFetchTimeout, 10 * time.Second},
	} {
		if *s.v, err = config.Duration(getenv, s.name, s.def); err != nil {
			return c, err
		}
		if *s.v <= 0 {
			return c, fmt.Errorf("%s: %s is not a positive duration", s.name, *s.v)
		}
	}
	maxImage, err := config.Int(getenv, "MODELPORT_IMAGE_MAX_BYTES", gateway.DefaultMaxImageBytes)
	if err != nil {
		return c, err
	}
	if maxImage < 1 {
		return c, fmt.Errorf("MODELPORT_IMAGE_MAX_BYTES: %d is not a positive size", maxImage)
	}
	c.MaxImageBytes = int64(maxImage)
	if c.ColdStartWait, err = config.Duration(getenv, "MODELPORT_COLD_START_WAIT", 2*time.Minute); err != nil {
		return c, err
	}
	if c.LoadReport, err = config.Duration(getenv, "MODELPORT_LOAD_REPORT_INTERVAL", time.Second); err != nil {
		return c, err
	}
	if c.LoadReport <= 0 || c.LoadReport > 3*time.Second {
		// The scaler stops counting a report after 10s: a few must fit.
		return c, fmt.Errorf("MODELPORT_LOAD_REPORT_INTERVAL must be between 0 and 3s, not %s", c.LoadReport)
	}
	c.PrefixLoadFactor = routing.DefaultLoadFactor
	if v := getenv("MODELPORT_PREFIX_LOAD_FACTOR"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 1 || f > 100 {
			return c, fmt.Errorf("MODELPORT_PREFIX_LOAD_FACTOR: %q is not a number from 1 to 100 (a multiple of the average load)", v)
		}
		c.PrefixLoadFactor = f
	}
	c.ReadyWait, err = config.Duration(getenv, "MODELPORT_READY_WAIT", 10*time.Second)
	return c, err
}

// Start starts the router on bus. It returns once the routing table holds
// the current services and instances.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	table := routing.NewTable()
	table.SetPolicy(state.RoutingPrefixAffinity, &routing.PrefixAffinity{LoadFactor: cfg.PrefixLoadFactor, PrefixBytes: routing.DefaultPrefixBytes})
	watchCtx, stopWatch := context.WithCancel(ctx)
	if err := transport.WatchTable(watchCtx, bus.KV(state.BucketServices), bus.KV(state.BucketInstances), table, log); err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	demand := routing.NewDemand()
	g := gateway.New(table, demand, transport.NewEngineClient(cfg.EngineTimeout), bus.Publisher, log)
	g.ReadyWait, g.ColdStartWait = cfg.ReadyWait, cfg.ColdStartWait
	metrics, err := transport.NewMetrics(table, demand)
	if err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	g.Observer = metrics
	limits := ratelimit.New(cfg.RateLimits, nil)
	g.Limits = limits
	g.Images = transport.NewImageFetcher(cfg.ImageFetchTimeout, cfg.AllowPrivateImageURLs)
	g.ImageFetchTimeout, g.MaxImageBytes = cfg.ImageFetchTimeout, cfg.MaxImageBytes
	g.MaxFetchedBytes = transport.MaxBody // as much as a body with inline images may hold
	go transport.ReportLoad(watchCtx, bus.KV(state.BucketLoad), uuid.NewString(), demand, cfg.LoadReport, log)
	images, err := transport.NewImageStore(ctx, bus.JS, bus.Replicas)
	if err != nil {
		stopWatch()
		metrics.Close()
		return runner.Service{}, err
	}
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	if err := keys.Follow(watchCtx); err != nil {
		stopWatch()
		metrics.Close()
		return runner.Service{}, err
	}
	return runner.Service{
		Handler: transport.NewHandler(g, images, keys, limits,
			transport.Options{PublicURL: cfg.PublicURL, BodyTimeout: cfg.BodyTimeout}, log),
		Stop: func(context.Context) { stopWatch(); metrics.Close() },
	}, nil
}
