// Command withclickhouse runs a command, such as go test over every
// package, with one private ClickHouse server for all of it:
//
//	withclickhouse go test ./...
//
// It starts clickhouse-server on a free port with a temporary data folder,
// runs the command with MODELPORT_TEST_CLICKHOUSE_ADDR naming it, then
// stops the server and exits with the command's status. Every test binary
// then shares that server (each test still gets a database of its own)
// instead of starting one of its own. When MODELPORT_TEST_CLICKHOUSE_ADDR
// is set already, it runs the command against that server.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: withclickhouse COMMAND [ARG]...")
		return 2
	}
	// The command gets the terminal's signals itself; this process waits
	// for it to end, then stops the server.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)

	env := os.Environ()
	if os.Getenv(chtest.EnvAddr) == "" {
		dir, err := os.MkdirTemp("", "modelport-test-clickhouse-")
		if err != nil {
			fmt.Fprintln(stderr, "withclickhouse:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		srv, err := chlocal.Start(context.Background(), dir, 0)
		if err != nil {
			fmt.Fprintf(stderr, "withclickhouse: the tests need ClickHouse: %v\n", err)
			if errors.Is(err, chlocal.ErrNotInstalled) {
				fmt.Fprintf(stderr, "Run `make deps` to install it, or set %s to a running server's Native address.\n", chtest.EnvAddr)
			}
			return 1
		}
		defer srv.Stop()
		fmt.Fprintf(stderr, "withclickhouse: a private ClickHouse for this run at %s\n", srv.Addr)
		env = append(env, chtest.EnvAddr+"="+srv.Addr)
	}

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(stderr, "withclickhouse:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-signals:
			// Passed on, in case it came from kill rather than a terminal.
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			if exit, ok := errors.AsType[*exec.ExitError](err); ok {
				if code := exit.ExitCode(); code >= 0 {
					return code
				}
				return 1
			}
			if err != nil {
				fmt.Fprintln(stderr, "withclickhouse:", err)
				return 1
			}
			return 0
		}
	}
}
