// Command healthcheck is the container health check of the Modelport
// service images. They have no shell and no HTTP client, so the check is a
// binary of its own: it asks the service in the same container for
// GET /healthz and exits 0 when the answer is 200, 1 otherwise.
//
// The address is the one the service listens on, MODELPORT_HTTP_ADDR
// (":8080" in the images), dialled on loopback. A URL given as the only
// argument replaces it.
//
//	HEALTHCHECK CMD ["/usr/local/bin/healthcheck"]
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		os.Exit(1)
	}
}

// timeout bounds the whole check; the container runtime has its own limit.
const timeout = 3 * time.Second

// run checks the service's /healthz once.
func run(ctx context.Context, args []string, getenv func(string) string) error {
	url, err := target(args, getenv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// target is the URL to check: the argument, or /healthz on loopback at the
// port of MODELPORT_HTTP_ADDR.
func target(args []string, getenv func(string) string) (string, error) {
	switch len(args) {
	case 0:
	case 1:
		return args[0], nil
	default:
		return "", fmt.Errorf("usage: healthcheck [URL]")
	}
	addr := getenv("MODELPORT_HTTP_ADDR")
	if addr == "" {
		return "", fmt.Errorf("MODELPORT_HTTP_ADDR is not set and no URL was given")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("MODELPORT_HTTP_ADDR %q: %w", addr, err)
	}
	if port == "" || port == "0" {
		return "", fmt.Errorf("MODELPORT_HTTP_ADDR %q has no fixed port to check", addr)
	}
	// A service listening on every interface answers on loopback too.
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
