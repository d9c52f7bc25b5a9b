// Command router serves the OpenAI-compatible API and forwards calls to ready
// instances, against the NATS server at MODELPORT_NATS_URL.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/services/router/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv config.Getenv, stderr io.Writer) error {
	cfg, err := app.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	return runner.Run(ctx, "router", getenv, stderr, "127.0.0.1:8080",
		func(ctx context.Context, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
			return app.Start(ctx, cfg, bus, log)
		})
}
