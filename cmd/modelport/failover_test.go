package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
)

// serviceBinaries are the services built by buildServices, each from
// ./services/<name>/cmd/<name>.
var serviceBinaries = []string{"deployer", "scaler", "router", "inference-worker", "billing"}

// buildServices builds every service binary into a temporary directory
// and returns it.
func buildServices(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	args := []string{"build", "-o", bin + string(os.PathSeparator)}
	for _, s := range serviceBinaries {
		args = append(args, "./services/"+s+"/cmd/"+s)
	}
	build := exec.Command("go", args...)
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a service process the test may kill or stop before it ends.
type proc struct {
	name    string
	cmd     *exec.Cmd
	out     *lockedBuffer
	done    chan struct{}
	err     error // the exit status, once done is closed
	stopped bool  // killed or stopped by the test: cleanup leaves it be
}

// startProc runs a service binary (with args, if any) until the test ends
// and returns it, so the test can kill or stop it. At the end of the test
// a process still running is stopped with SIGTERM and must exit cleanly;
// one the test ended is left alone. Either way its log is printed if the
// test failed.
func startProc(t *testing.T, name, path string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.stopped {
			if err := p.stop(20 * time.Second); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, p.out.String())
		}
	})
	return p
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.stopped = true
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still running 10s after SIGKILL", p.name)
	}
}

// stop sends SIGTERM and waits for the process to exit, killing it if it
// does not within the limit; it returns an error unless it exited cleanly.
func (p *proc) stop(within time.Duration) error {
	p.stopped = true
	select {
	case <-p.done:
		return fmt.Errorf("exited before it was stopped: %v", p.err)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("did not stop within %s after SIGTERM: %v", within, p.err)
	}
	if p.err != nil {
		return fmt.Errorf("exited: %v", p.err)
	}
	return nil
}

// cluster is the platform run as separate processes against one NATS
// server and one ClickHouse database.
type cluster struct {
	bin    string
	seeds  string // the NATS identities' seeds, <identity>.nk
	common []string
	urls   map[string]string // process name -> http://host:port
	procs  map[string]*proc
}

// workerSpec describes one inference-worker process of a cluster.
type workerSpec struct {
	id       string
	capacity int
}

// startCluster builds the binaries and starts NATS, a ClickHouse database,
// the deployer, scaler, router and billing, and the given workers, and
// waits until all are healthy.
func startCluster(t *testing.T, workers ...workerSpec) *cluster {
	t.Helper()
	ns := natstest.New(t)
	return startClusterOn(t, ns.ClientURL(), filepath.Dir(ns.Seed(access.Router)), nil, workers...)
}

// startClusterOn is startCluster on the NATS server(s) at natsURL, with the
// identities' seeds in the folder seeds and the extra settings natsEnv
// (TLS). The services start all at once, as they would on many machines:
// each waits for the streams and buckets of the others.
func startClusterOn(t *testing.T, natsURL, seeds string, natsEnv []string, workers ...workerSpec) *cluster {
	t.Helper()
	bin := buildServices(t)
	chAddr, chDB := chtest.New(t)
	c := &cluster{
		bin:   bin,
		seeds: seeds,
		common: []string{
			"MODELPORT_NATS_URL=" + natsURL,
			"MODELPORT_LOG_LEVEL=debug",
			"MODELPORT_ADMIN_KEY=" + testAdminKey,
			"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
			"MODELPORT_CLICKHOUSE_DB=" + chDB,
			"MODELPORT_SCALER_SWEEP=500ms",
		},
		urls:  map[string]string{},
		procs: map[string]*proc{},
	}
	c.common = append(c.common, natsEnv...)
	var names []string
	for _, s := range []string{"deployer", "scaler", "router", "billing"} {
		c.launch(t, s, s)
		names = append(names, s)
	}
	for _, w := range workers {
		c.launch(t, w.id, "inference-worker", "MODELPORT_WORKER_ID="+w.id, "MODELPORT_WORKER_CAPACITY="+strconv.Itoa(w.capacity))
		names = append(names, w.id)
	}
	for _, name := range names {
		c.waitHealthy(t, name)
	}
	return c
}

// start runs binary as the process called name on a free port, with the
// cluster's common settings and extra ones, and waits until it is healthy.
func (c *cluster) start(t *testing.T, name, binary string, extra ...string) *proc {
	t.Helper()
	p := c.launch(t, name, binary, extra...)
	c.waitHealthy(t, name)
	return p
}

// launch runs binary as the process called name on a free port, with the
// cluster's common settings, the NATS identity named after the binary,
// and extra settings.
func (c *cluster) launch(t *testing.T, name, binary string, extra ...string) *proc {
	t.Helper()
	port, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, c.common...), extra...)
	env = append(env, "MODELPORT_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(port), "MODELPORT_NATS_NKEY="+access.SeedFile(c.seeds, binary))
	p := startProc(t, name, filepath.Join(c.bin, binary), env)
	c.procs[name] = p
	c.urls[name] = "http://127.0.0.1:" + strconv.Itoa(port)
	return p
}

// waitHealthy waits until the process called name answers /healthz.
func (c *cluster) waitHealthy(t *testing.T, name string) {
	t.Helper()
	p := c.procs[name]
	eventually(t, 30*time.Second, name+" healthy", func() error {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v", p.err)
		default:
		}
		resp, err := http.Get(c.urls[name] + "/healthz")
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

// deploy creates a service with n instances and waits until it runs with
// all of them ready.
func (c *cluster) deploy(t *testing.T, name string, n int) service {
	t.Helper()
	var svc service
	if s := call(t, "POST", c.urls["deployer"]+"/api/v1/services", testAdminKey, map[string]any{
		"name": name, "base_model": "qwen2.5-7b-instruct", "task": "text-generation", "instances": n,
	}, &svc); s != http.StatusCreated {
		t.Fatalf("create %s: status %d (%+v)", name, s, svc)
	}
	eventually(t, 30*time.Second, name+" running", func() error {
		var got service
		if s := call(t, "GET", c.urls["deployer"]+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got); s != 200 {
			return fmt.Errorf("status %d", s)
		}
		if got.Status != "running" || got.ReadyInstances != n {
			return fmt.Errorf("status %s, ready %d/%d", got.Status, got.ReadyInstances, got.Instances)
		}
		return nil
	})
	return svc
}

// instances lists a service's instances through the control API.
func (c *cluster) instances(t *testing.T, serviceID string) []state.Instance {
	t.Helper()
	var list []state.Instance
	if s := call(t, "GET", c.urls["deployer"]+"/api/v1/services/"+serviceID+"/instances", testAdminKey, nil, &list); s != 200 {
		t.Fatalf("list instances: status %d", s)
	}
	return list
}

// chat sends one chat completion through the router and returns its status.
func (c *cluster) chat(t *testing.T, model string) int {
	t.Helper()
	return call(t, "POST", c.urls["router"]+"/v1/chat/completions", testAdminKey, map[string]any{
		"model": model, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
	}, nil)
}

// describe renders instances for failure messages.
func describe(list []state.Instance) string {
	var b strings.Builder
	for _, in := range list {
		fmt.Fprintf(&b, "[%s on %s: %s] ", in.ID, in.WorkerID, in.Status)
	}
	return strings.TrimSpace(b.String())
}

// TestWorkerKilled kills a worker process holding instances of a running
// service and checks requests keep succeeding on the surviving instance
// while the scaler, once the dead worker's heartbeat has expired, places
// the lost instances on the surviving worker.
func TestWorkerKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds five binaries and waits out a worker's TTL; run without -short")
	}
	c := startCluster(t, workerSpec{"worker-a", 2}, workerSpec{"worker-b", 2})
	svc := c.deploy(t, "failover", 2)

	list := c.instances(t, svc.ID)
	held := map[string]int{}
	for _, in := range list {
		held[in.WorkerID]++
	}
	if len(list) != 2 {
		t.Fatalf("after deploy: %d instances, want 2: %s", len(list), describe(list))
	}
	var victim, survivor string
	for _, id := range []string{"worker-a", "worker-b"} {
		if held[id] > 0 && victim == "" {
			victim = id
		} else {
			survivor = id
		}
	}
	if victim == "" || held[victim]+held[survivor] != 2 {
		t.Fatalf("instances on unknown workers: %s", describe(list))
	}
	t.Logf("instances before the kill: %s; killing %s", describe(list), victim)
	c.procs[victim].kill(t)

	// Requests keep succeeding: the router retries an instance it cannot
	// reach on another one and stops sending it more.
	for i := range 5 {
		if s := c.chat(t, svc.AccessName); s != 200 {
			t.Errorf("chat %d after killing %s: status %d, want 200", i, victim, s)
		}
	}

	// Once the dead worker's heartbeat expires, its placements are
	// replaced on the survivor.
	killed := time.Now()
	eventually(t, 45*time.Second, "2 ready instances on "+survivor, func() error {
		list := c.instances(t, svc.ID)
		if len(list) != 2 {
			return fmt.Errorf("%d instances: %s", len(list), describe(list))
		}
		for _, in := range list {
			if in.WorkerID != survivor || in.Status != state.InstanceReady {
				return fmt.Errorf("instances %s", describe(list))
			}
		}
		var got service
		if s := call(t, "GET", c.urls["deployer"]+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got); s != 200 {
			return fmt.Errorf("get service: status %d", s)
		}
		if got.Status != "running" || got.ReadyInstances != 2 {
			return fmt.Errorf("service %s, ready %d/%d", got.Status, got.ReadyInstances, got.Instances)
		}
		return nil
	})
	t.Logf("replaced %s's instances within %s", victim, time.Since(killed).Round(time.Second))

	for i := range 5 {
		if s := c.chat(t, svc.AccessName); s != 200 {
			t.Errorf("chat %d after recovery: status %d, want 200", i, s)
		}
	}
}

// TestScalerRestart scales a service while the scaler is down and checks
// that a new scaler process, once started, places the missing instances.
func TestScalerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds five binaries; run without -short")
	}
	c := startCluster(t, workerSpec{"worker-1", 4})
	svc := c.deploy(t, "restarted", 1)

	if err := c.procs["scaler"].stop(20 * time.Second); err != nil {
		t.Fatalf("stop scaler: %v", err)
	}
	var got service
	if s := call(t, "POST", c.urls["deployer"]+"/api/v1/services/"+svc.ID+"/scale", testAdminKey, map[string]any{"instances": 3}, &got); s != 200 {
		t.Fatalf("scale to 3 with the scaler stopped: status %d (%+v)", s, got)
	}

	// Nothing but the scaler places instances.
	if list := c.instances(t, svc.ID); len(list) != 1 {
		t.Fatalf("with the scaler stopped: %d instances, want 1: %s", len(list), describe(list))
	}

	c.start(t, "scaler-2", "scaler")
	eventually(t, 30*time.Second, "3 ready instances after the scaler restarted", func() error {
		list := c.instances(t, svc.ID)
		ready := 0
		for _, in := range list {
			if in.Status == state.InstanceReady {
				ready++
			}
		}
		if len(list) != 3 || ready != 3 {
			return fmt.Errorf("%d instances, %d ready: %s", len(list), ready, describe(list))
		}
		return nil
	})
	for i := range 3 {
		if s := c.chat(t, svc.AccessName); s != 200 {
			t.Errorf("chat %d after the restart: status %d, want 200", i, s)
		}
	}
}
