// Package runner is the shared main of a Modelport service binary: it
// reads the common settings, sets up telemetry, opens the bus, starts the
// service and serves its HTTP handler (with /healthz) until a signal.
package runner

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/libs/telemetry"
)

// Common are the settings every service binary reads.
type Common struct {
	NATSURL string // MODELPORT_NATS_URL
	// NATSNKey and NATSCreds name the file with the service's NATS
	// identity: an NKey seed (MODELPORT_NATS_NKEY) or a creds file
	// (MODELPORT_NATS_CREDS). Without either the service connects
	// anonymously, which a secured server refuses.
	NATSNKey, NATSCreds string
	// NATSTLSCA is the CA that signs the NATS servers' certificates
	// (MODELPORT_NATS_TLS_CA); NATSTLSCert and NATSTLSKey the client
	// certificate for servers that verify clients
	// (MODELPORT_NATS_TLS_CERT, MODELPORT_NATS_TLS_KEY). A tls:// URL with
	// none of them checks the server against the system's roots.
	NATSTLSCA, NATSTLSCert, NATSTLSKey string
	Replicas                           int    // MODELPORT_JETSTREAM_REPLICAS: 1, or 3 on a NATS cluster
	HTTPAddr                           string // MODELPORT_HTTP_ADDR
	LogLevel                           slog.Level
	// MetricsToken, when set, is a bearer token that may read /metrics
	// besides admin API keys: MODELPORT_METRICS_TOKEN.
	MetricsToken string
}

// CommonFromEnv reads Common with defaults for a local NATS.
func CommonFromEnv(getenv config.Getenv, defaultHTTPAddr string) (Common, error) {
	c := Common{
		NATSURL:     config.String(getenv, "MODELPORT_NATS_URL", "nats://127.0.0.1:4222"),
		NATSNKey:    getenv("MODELPORT_NATS_NKEY"),
		NATSCreds:   getenv("MODELPORT_NATS_CREDS"),
		NATSTLSCA:   getenv("MODELPORT_NATS_TLS_CA"),
		NATSTLSCert: getenv("MODELPORT_NATS_TLS_CERT"),
		NATSTLSKey:  getenv("MODELPORT_NATS_TLS_KEY"),
		HTTPAddr:    config.String(getenv, "MODELPORT_HTTP_ADDR", defaultHTTPAddr),
		// The metrics token, like the admin key, is a secret: no default.
		MetricsToken: getenv("MODELPORT_METRICS_TOKEN"),
	}
	var err error
	if c.Replicas, err = config.Int(getenv, "MODELPORT_JETSTREAM_REPLICAS", 1); err != nil {
		return c, err
	}
	if err := c.LogLevel.UnmarshalText([]byte(config.String(getenv, "MODELPORT_LOG_LEVEL", "info"))); err != nil {
		return c, fmt.Errorf("MODELPORT_LOG_LEVEL: %w", err)
	}
	if c.NATSNKey != "" && c.NATSCreds != "" {
		return c, errors.New("set MODELPORT_NATS_NKEY or MODELPORT_NATS_CREDS, not both")
	}
	return c, nil
}

// NATSOptions are the connection options the settings ask for.
func (c Common) NATSOptions() ([]natsx.Option, error) {
	var opts []natsx.Option
	switch {
	case c.NATSNKey != "":
		opts = append(opts, natsx.NKeyFile(c.NATSNKey))
	case c.NATSCreds != "":
		opts = append(opts, natsx.CredsFile(c.NATSCreds))
	}
	if c.NATSTLSCA != "" || c.NATSTLSCert != "" || strings.HasPrefix(c.NATSURL, "tls://") {
		cfg, err := natsx.TLSConfig(c.NATSTLSCA, c.NATSTLSCert, c.NATSTLSKey)
		if err != nil {
			return nil, fmt.Errorf("MODELPORT_NATS_TLS_*: %w", err)
		}
		opts = append(opts, natsx.TLS(cfg))
	}
	return opts, nil
}

// Service is a started service: its HTTP handler (nil if it has none),
// how to stop it, and, when set, whether it is ready: an error while
// something it relies on (such as a watch that keeps its state current)
// is down, which fails /healthz.
type Service struct {
	Handler http.Handler
	Stop    func(context.Context)
	Ready   func() error
}

// StartFunc starts a service on an open bus. It returns once the service
// is running; background work ends when ctx is done.
type StartFunc func(ctx context.Context, bus *natsx.Bus, log *slog.Logger) (Service, error)

// Run is a service binary's whole life: telemetry, bus, start, serve
// HTTP, and a graceful stop when ctx ends.
func Run(ctx context.Context, name string, getenv config.Getenv, stderr io.Writer, defaultHTTPAddr string, start StartFunc) error {
	common, err := CommonFromEnv(getenv, defaultHTTPAddr)
	if err != nil {
		return err
	}
	log, shutdownTelemetry := telemetry.Setup(ctx, name, stderr, common.LogLevel)
	defer func() {
		// Flushing spans to an unreachable collector must not hold the exit up.
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdownTelemetry(flushCtx)
	}()

	natsOpts, err := common.NATSOptions()
	if err != nil {
		return err
	}
	bus, err := natsx.Open(ctx, common.NATSURL, name, common.Replicas, log, natsOpts...)
	if err != nil {
		return err
	}
	defer bus.Close()

	svc, err := start(ctx, bus, log)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	ln, err := net.Listen("tcp", common.HTTPAddr)
	if err != nil {
		svc.Stop(context.WithoutCancel(ctx))
		return fmt.Errorf("listen %s: %w", common.HTTPAddr, err)
	}
	log.Info("serving", "addr", ln.Addr().String(), "nats", common.NATSURL)
	err = Serve(ctx, ln, httpx.Edge(WithHealth(svc.Handler, bus, common.MetricsToken, svc.Ready), name, log), log)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	svc.Stop(stopCtx)
	return err
}

// WithHealth adds GET /healthz, which answers 200 while NATS is connected
// and every ready (nil ones aside) returns nil, and GET /metrics, the
// process's metrics in the Prometheus format, to h (which may be nil).
// Metrics name every tenant's services, so only an admin API key or, when
// set, metricsToken (MODELPORT_METRICS_TOKEN, a credential for the scraper
// alone) may read them.
func WithHealth(h http.Handler, bus *natsx.Bus, metricsToken string, ready ...func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", httpx.Authenticate(metricsVerifier{keys: auth.NewKeyring(bus.KV(state.BucketAPIKeys)), token: metricsToken})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if k, _ := auth.FromContext(r.Context()); !k.Admin {
				httpx.WriteError(w, errs.E(errs.Forbidden, "metrics are for admins: use an admin API key or the metrics token"))
				return
			}
			telemetry.MetricsHandler().ServeHTTP(w, r)
		})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !bus.Conn.IsConnected() {
			http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
			return
		}
		for _, r := range ready {
			if r == nil {
				continue
			}
			if err := r(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	if h != nil {
		mux.Handle("/", h)
	}
	return mux
}

// metricsVerifier accepts the metrics token as an admin for /metrics
// alone, and otherwise verifies API keys.
type metricsVerifier struct {
	keys  *auth.Keyring
	token string
}

func (v metricsVerifier) Verify(ctx context.Context, secret string) (auth.Key, error) {
	if v.token != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(v.token)) == 1 {
		return auth.Key{ID: "metrics-token", Admin: true}, nil
	}
	return v.keys.Verify(ctx, secret)
}

// Serve serves h on ln until ctx ends, then shuts down gracefully.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	// No WriteTimeout: a streamed answer may run for minutes. IdleTimeout
	// closes kept-alive connections that send nothing more.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
