// Package app wires the router: the routing table and its watchers, the
// gateway and the OpenAI API. The service binary and the all-in-one binary
// both start it through Start.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
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
	// AllowedHosts are the hosts image URLs may be built on when PublicURL
	// is unset; with neither, only loopback hosts.
	AllowedHosts []string // MODELPORT_ALLOWED_HOSTS
	// TrustedProxies are the proxies whose X-Forwarded-* headers are
	// believed.
	TrustedProxies []netip.Prefix // MODELPORT_TRUSTED_PROXIES
	// DialTimeout bounds connecting to an engine.
	DialTimeout time.Duration // MODELPORT_ENGINE_DIAL_TIMEOUT
	// IdleTimeout ends an engine's answer that sends nothing for so long.
	IdleTimeout time.Duration // MODELPORT_ENGINE_IDLE_TIMEOUT
	// KeepAlive is how often a silent stream gets an SSE comment.
	KeepAlive time.Duration // MODELPORT_STREAM_KEEPALIVE
	// RequestMemory bounds the bytes of request bodies and fetched images
	// held at once.
	RequestMemory int64 // MODELPORT_REQUEST_MEMORY
	// AuthFailures is how many failed authentications per minute a client
	// address may have before it is refused unread; 0: no limit.
	AuthFailures int // MODELPORT_AUTH_FAILURE_LIMIT
	// UsageSpool, when set, is a directory of this router's own where
	// usage events are written before an answer completes, and forwarded
	// to JetStream from there (natsx.Spool); without it each event is
	// stored in JetStream before its answer completes.
	UsageSpool string // MODELPORT_USAGE_SPOOL
}

// DefaultRequestMemory is the default MODELPORT_REQUEST_MEMORY: half the
// memory the Kubernetes manifest gives a router.
const DefaultRequestMemory = 256 << 20

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	var c Config
	var err error
	c.PublicURL = strings.TrimSuffix(getenv("MODELPORT_PUBLIC_URL"), "/")
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return c, fmt.Errorf("MODELPORT_PUBLIC_URL: %q is not an http(s) URL such as https://api.example.com", c.PublicURL)
		}
	}
	c.UsageSpool = getenv("MODELPORT_USAGE_SPOOL")
	c.AllowedHosts = list(getenv("MODELPORT_ALLOWED_HOSTS"))
	for _, p := range list(getenv("MODELPORT_TRUSTED_PROXIES")) {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			a, aerr := netip.ParseAddr(p)
			if aerr != nil {
				return c, fmt.Errorf("MODELPORT_TRUSTED_PROXIES: %q is not an address or a CIDR range", p)
			}
			prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		c.TrustedProxies = append(c.TrustedProxies, prefix.Masked())
	}
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
		{"MODELPORT_AUTH_FAILURE_LIMIT", &c.AuthFailures},
	} {
		def := 0
		if s.name == "MODELPORT_AUTH_FAILURE_LIMIT" {
			def = 60
		}
		if *s.v, err = config.Int(getenv, s.name, def); err != nil {
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
		{"MODELPORT_ENGINE_DIAL_TIMEOUT", &c.DialTimeout, transport.DefaultDialTimeout},
		{"MODELPORT_ENGINE_IDLE_TIMEOUT", &c.IdleTimeout, 5 * time.Minute},
		{"MODELPORT_STREAM_KEEPALIVE", &c.KeepAlive, transport.DefaultKeepAlive},
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
	memory, err := config.Int(getenv, "MODELPORT_REQUEST_MEMORY", DefaultRequestMemory)
	if err != nil {
		return c, err
	}
	if memory < 2*transport.MaxBody {
		// A body at the limit and the request made of it must fit.
		return c, fmt.Errorf("MODELPORT_REQUEST_MEMORY: %d is less than %d bytes, twice the largest request body", memory, 2*transport.MaxBody)
	}
	c.RequestMemory = int64(memory)
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

// list splits a comma-separated setting.
func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Start starts the router on bus. It returns once the routing table holds
// the current services and instances and the API keys are loaded. The
// service is ready (Ready) while the watches that keep both current run.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	table := routing.NewTable()
	table.SetPolicy(state.RoutingPrefixAffinity, &routing.PrefixAffinity{LoadFactor: cfg.PrefixLoadFactor, PrefixBytes: routing.DefaultPrefixBytes})
	watchCtx, stopWatch := context.WithCancel(ctx)
	tableWatch, err := transport.WatchTable(watchCtx, bus.KV(state.BucketServices), bus.KV(state.BucketInstances), table, log)
	if err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	demand := routing.NewDemand()
	var pub gateway.Publisher = bus.Publisher
	closeSpool := func(context.Context) {}
	if cfg.UsageSpool != "" {
		spool, err := natsx.OpenSpool(cfg.UsageSpool, bus.JS, 0, log)
		if err != nil {
			stopWatch()
			return runner.Service{}, err
		}
		pub = spool
		closeSpool = func(ctx context.Context) {
			if err := spool.Close(ctx); err != nil {
				log.Warn("usage spool", "err", err)
			}
		}
	}
	started := false
	defer func() {
		if !started {
			closeSpool(context.Background())
		}
	}()
	g := gateway.New(table, demand, transport.NewEngineClient(cfg.EngineTimeout, cfg.DialTimeout), pub, log)
	g.ReadyWait, g.ColdStartWait, g.IdleTimeout = cfg.ReadyWait, cfg.ColdStartWait, cfg.IdleTimeout
	g.Budget = gateway.NewBudget(cfg.RequestMemory)
	metrics, err := transport.NewMetrics(table, demand, g.Budget)
	if err != nil {
		stopWatch()
		return runner.Service{}, err
	}
	g.Observer = metrics
	stages, err := transport.NewStageMetrics(nil)
	if err != nil {
		stopWatch()
		metrics.Close()
		return runner.Service{}, err
	}
	limits := ratelimit.New(cfg.RateLimits, nil)
	g.Limits = limits
	g.Images = transport.NewImageFetcher(cfg.ImageFetchTimeout, cfg.AllowPrivateImageURLs)
	g.ImageFetchTimeout, g.MaxImageBytes = cfg.ImageFetchTimeout, cfg.MaxImageBytes
	// As much as a body may hold inline: base64 takes 4 bytes for 3, so the
	// request the engine gets stays within the body limit engines share.
	g.MaxFetchedBytes = transport.MaxBody / 4 * 3
	go transport.ReportLoad(watchCtx, bus.KV(state.BucketLoad), uuid.NewString(), demand, cfg.LoadReport, log)
	images, err := transport.NewImageStore(ctx, bus.JS, bus.Replicas)
	if err != nil {
		stopWatch()
		metrics.Close()
		return runner.Service{}, err
	}
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	keys.SetLogger(log)
	if err := keys.Follow(watchCtx); err != nil {
		stopWatch()
		metrics.Close()
		return runner.Service{}, err
	}
	if cfg.PublicURL == "" && len(cfg.AllowedHosts) == 0 {
		log.Info("MODELPORT_PUBLIC_URL is not set: generated images are linked only for requests to a loopback address; elsewhere clients must ask for b64_json")
	}
	started = true
	return runner.Service{
		Handler: transport.NewHandler(g, images, keys, limits, transport.Options{
			PublicURL: cfg.PublicURL, AllowedHosts: cfg.AllowedHosts, TrustedProxies: cfg.TrustedProxies,
			BodyTimeout: cfg.BodyTimeout, KeepAlive: cfg.KeepAlive, AuthFailures: cfg.AuthFailures,
			Stages: stages,
		}, log),
		Stop: func(ctx context.Context) { stopWatch(); metrics.Close(); closeSpool(ctx) },
		Ready: func() error {
			return errors.Join(tableWatch.Ready(), keys.Ready())
		},
	}, nil
}
