// Command modelport is the all-in-one Modelport: "modelport up" runs the
// deployer, scaler, router, inference-worker and billing in one process
// around an embedded NATS server with JetStream.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/telemetry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "modelport:", err)
		os.Exit(1)
	}
}

const usage = `usage: modelport <command>

commands:
  up         run the whole platform in this process (embedded NATS, local ClickHouse)
  bench      measure the request path against a direct-to-engine baseline
  testmodel  write a tiny random-weights GGUF model that real engines serve on a CPU

client commands (a running platform; "modelport <command> -h" for flags, docs/cli.md):
  login     check an API key and save it with the URL
  catalog   list the base models that can be deployed
  models    register your own models: add, ls, get, rm
  deploy    deploy a model service
  ls        list model services
  get       show a model service
  scale     change a service's number of instances
  routing   show or change how a service's requests are routed to its instances
  delete    delete a model service (asks for its name)
  keys      manage API keys: create, ls, revoke
  usage     show what a service has used
  chat      chat with a text-generation service, streamed
  events    tail: follow the platform's events live

operator commands:
  nats      keys: make the NATS identities' seeds; conf: the nats-server permissions

settings (environment): MODELPORT_DATA_DIR, MODELPORT_HTTP_ADDR, MODELPORT_NATS_PORT,
MODELPORT_CLICKHOUSE_ADDR, MODELPORT_CLICKHOUSE_DB, MODELPORT_ADMIN_KEY,
MODELPORT_CLICKHOUSE_INSTALL, MODELPORT_LOG_LEVEL; the services' NATS identities are
in $MODELPORT_DATA_DIR/nats/<identity>.nk
`

func run(ctx context.Context, args []string, getenv config.Getenv, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("no command")
	}
	switch args[0] {
	case "up":
		return up(ctx, getenv, stdout, stderr)
	case "bench":
		return bench(ctx, args[1:], stdout)
	case "testmodel":
		return testmodel(args[1:], stdout, stderr)
	case "login", "catalog", "models", "deploy", "ls", "get", "scale", "routing", "delete", "keys", "usage", "chat", "events", "nats":
		return runCLI(ctx, args, getenv, os.Stdin, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func up(ctx context.Context, getenv config.Getenv, stdout, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(config.String(getenv, "MODELPORT_LOG_LEVEL", "warn"))); err != nil {
		return fmt.Errorf("MODELPORT_LOG_LEVEL: %w", err)
	}
	log, shutdown := telemetry.Setup(ctx, "modelport", stderr, level)
	defer shutdown(context.WithoutCancel(ctx))

	cfg, err := upConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	ch := ensureClickHouse(ctx, cfg, getenv, log)
	if ch != nil {
		defer ch.Stop()
		// The server it started has its users: billing logs in as its own.
		getenv = config.Chain(config.Map(ch.Env), getenv)
	}
	p, err := startPlatform(ctx, getenv, log)
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))

	fmt.Fprintf(stdout, "Modelport is running.\n\n")
	fmt.Fprintf(stdout, "  OpenAI API (router):  %s/v1\n", p.BaseURL)
	fmt.Fprintf(stdout, "  Control API:          %s/api/v1\n", p.BaseURL)
	fmt.Fprintf(stdout, "  Console:              %s/console/\n", p.BaseURL)
	fmt.Fprintf(stdout, "  NATS:                 %s (credentials: %s, events-reader.nk to follow the events)\n", p.NATSURL, p.NATSCreds)
	if ch != nil {
		fmt.Fprintf(stdout, "  ClickHouse:           %s, read-only user %s, password in %s\n", ch.Addr, chlocal.AnalystUser, filepath.Join(ch.PasswordDir, chlocal.AnalystUser+".password"))
	}
	fmt.Fprintf(stdout, "  Model store:          %s\n", strings.Join(p.ModelDirs, ", "))
	if p.AdminKey != "" {
		fmt.Fprintf(stdout, "  Admin API key:        %s\n                        (shown once: only its hash is stored)\n", p.AdminKey)
	} else {
		fmt.Fprintf(stdout, "  Admin API key:        %s… (shown at first start; set MODELPORT_ADMIN_KEY to add one)\n", p.AdminKeyPrefix)
	}
	fmt.Fprintf(stdout, "\nStop with Ctrl-C.\n")
	return p.Wait(ctx)
}
