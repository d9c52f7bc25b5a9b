// Command deployer serves the control API: it creates model services and
// keeps their state, against the NATS server at MODELPORT_NATS_URL.
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
	"github.com/modelport/modelport/services/deployer/app"
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
	return runner.Run(ctx, "deployer", getenv, stderr, "127.0.0.1:8081",
		func(ctx context.Context, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
			d, err := app.Start(ctx, cfg, bus, log)
			if err != nil {
				return runner.Service{}, err
			}
			if d.NewAdminSecret != "" {
				fmt.Fprintf(stderr, "admin API key (shown once): %s\n", d.NewAdminSecret)
			}
			return d.Service, nil
		})
}
