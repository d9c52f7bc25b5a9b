package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/natstest"
)

// TestSeparateProcesses runs the same flow with each service as its own
// binary and process, sharing one NATS server, as in production.
func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds five binaries; run without -short")
	}
	chAddr, chDB := chtest.New(t)
	ns := natstest.New(t)

	bin := t.TempDir()
	services := []string{"deployer", "scaler", "router", "inference-worker", "billing"}
	args := []string{"build", "-o", bin + string(os.PathSeparator)}
	for _, s := range services {
		args = append(args, "./services/"+s+"/cmd/"+s)
	}
	build := exec.Command("go", args...)
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ports := map[string]int{}
	for _, s := range services {
		p, err := chlocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[s] = p
	}
	common := []string{
		"MODELPORT_NATS_URL=" + ns.ClientURL(),
		"MODELPORT_LOG_LEVEL=debug",
		"MODELPORT_ADMIN_KEY=" + testAdminKey,
		"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
		"MODELPORT_CLICKHOUSE_DB=" + chDB,
		"MODELPORT_WORKER_ID=worker-1",
		"MODELPORT_SCALER_SWEEP=500ms",
	}
	for _, s := range services {
		startProcess(t, filepath.Join(bin, s), append(common, "MODELPORT_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(ports[s])))
	}
	url := func(s string) string { return "http://127.0.0.1:" + strconv.Itoa(ports[s]) }
	for _, s := range services {
		eventually(t, 30*time.Second, s+" healthy", func() error {
			resp, err := http.Get(url(s) + "/healthz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		})
	}
	runFlow(t, endpoints{control: url("deployer"), router: url("router"), usage: url("billing")}, chAddr, chDB)
}

// lockedBuffer collects a process's output for the failure report.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startProcess runs a service binary until the test ends, stops it with
// SIGTERM, and prints its log if the test failed.
func startProcess(t *testing.T, path string, env []string) {
	t.Helper()
	var out lockedBuffer
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		var err error
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			err = fmt.Errorf("did not stop within 20s after SIGTERM: %v", <-done)
		}
		if err != nil {
			t.Errorf("%s exited: %v", filepath.Base(path), err)
		}
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", filepath.Base(path), out.String())
		}
	})
}
