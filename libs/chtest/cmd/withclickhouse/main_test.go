package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
)

// TestMain lets this test binary be the command withclickhouse runs: with
// WITHCLICKHOUSE_CHILD set it pings the server it was given, writes its
// address to the file named there and exits with the ping's result.
func TestMain(m *testing.M) {
	if out := os.Getenv("WITHCLICKHOUSE_CHILD"); out != "" {
		addr := os.Getenv(chtest.EnvAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := chlocal.Ping(ctx, addr)
		cancel()
		_ = os.WriteFile(out, []byte(addr), 0o600)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(7)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPrivateServer: without MODELPORT_TEST_CLICKHOUSE_ADDR, the command
// runs against a server started for it, which is gone afterwards.
func TestPrivateServer(t *testing.T) {
	t.Setenv(chtest.EnvAddr, "")
	out := t.TempDir() + "/addr"
	t.Setenv("WITHCLICKHOUSE_CHILD", out)
	var stderr bytes.Buffer
	if code := run([]string{os.Args[0]}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	addr, err := os.ReadFile(out)
	if err != nil || len(addr) == 0 {
		t.Fatalf("the command was given no server (%v): %s", err, stderr.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := chlocal.Ping(ctx, string(addr)); err == nil {
		t.Errorf("the server at %s still answers after the command ended", addr)
	}
}

// TestExitStatus: the command's exit status is withclickhouse's, and a
// server named in the environment is used as it is.
func TestExitStatus(t *testing.T) {
	t.Setenv(chtest.EnvAddr, "127.0.0.1:1") // nothing answers there
	out := t.TempDir() + "/addr"
	t.Setenv("WITHCLICKHOUSE_CHILD", out)
	var stderr bytes.Buffer
	if code := run([]string{os.Args[0]}, &stderr); code != 7 {
		t.Errorf("exit %d, want the command's 7: %s", code, stderr.String())
	}
	if addr, _ := os.ReadFile(out); string(addr) != "127.0.0.1:1" {
		t.Errorf("the command was given %q, want the server named in the environment", addr)
	}
	if code := run(nil, &stderr); code != 2 {
		t.Errorf("no command: exit %d, want 2", code)
	}
}
