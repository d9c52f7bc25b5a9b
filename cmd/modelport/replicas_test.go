package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/lease"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
)

// TestControlPlaneFailover runs two deployers and two scalers, each its
// own process, kills (SIGKILL) the leading scaler and then the leading
// deployer, and checks that the other replica of each takes over: a scale
// request after each kill is placed, and the service's status follows its
// instances. It logs how long each takeover took.
func TestControlPlaneFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds five binaries; run without -short")
	}
	ns := natstest.New(t)
	chAddr, chDB := chtest.New(t)
	c := &cluster{
		bin:   buildServices(t),
		seeds: filepath.Dir(ns.Seed(access.Deployer)),
		common: []string{
			"MODELPORT_NATS_URL=" + ns.ClientURL(),
			"MODELPORT_LOG_LEVEL=debug",
			"MODELPORT_ADMIN_KEY=" + testAdminKey,
			"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
			"MODELPORT_CLICKHOUSE_DB=" + chDB,
			"MODELPORT_SCALER_SWEEP=500ms",
			"MODELPORT_DEPLOYER_RECONCILE=1s",
		},
		urls:  map[string]string{},
		procs: map[string]*proc{},
	}
	for _, name := range []string{"deployer-1", "deployer-2"} {
		c.start(t, name, "deployer", "MODELPORT_REPLICA_ID="+name)
	}
	for _, name := range []string{"scaler-1", "scaler-2"} {
		c.start(t, name, "scaler", "MODELPORT_REPLICA_ID="+name)
	}
	c.start(t, "worker-1", "inference-worker", "MODELPORT_WORKER_ID=worker-1", "MODELPORT_WORKER_CAPACITY=8")
	c.urls["deployer"] = c.urls["deployer-1"]
	svc := c.deploy(t, "failover", 1)

	leases := ns.Bus(t, natstest.Admin).KV(state.BucketLeases)
	leader := func(role string) string {
		t.Helper()
		var id string
		eventually(t, 30*time.Second, role+" leader", func() error {
			h, ok, err := lease.Leader(context.Background(), leases, lease.Key(role, "leader"))
			if err != nil || !ok {
				return fmt.Errorf("no %s leader: %v", role, err)
			}
			id = h.ID
			return nil
		})
		return id
	}
	scaleAndWait := func(via string, n int) time.Duration {
		t.Helper()
		start := time.Now()
		eventually(t, 30*time.Second, fmt.Sprintf("scaled to %d through %s", n, via), func() error {
			if s := tryCall("POST", c.urls[via]+"/api/v1/services/"+svc.ID+"/scale", map[string]any{"instances": n}, nil); s != http.StatusOK {
				return fmt.Errorf("scale: status %d", s)
			}
			var got service
			if s := tryCall("GET", c.urls[via]+"/api/v1/services/"+svc.ID, nil, &got); s != http.StatusOK {
				return fmt.Errorf("get: status %d", s)
			}
			if got.Status != "running" || got.ReadyInstances != n {
				return fmt.Errorf("%s, %d of %d ready", got.Status, got.ReadyInstances, got.Instances)
			}
			if list := c.instances(t, svc.ID); len(list) != n {
				return fmt.Errorf("%d instances: %s", len(list), describe(list))
			}
			return nil
		})
		return time.Since(start)
	}

	first := leader("scaler")
	c.procs[first].kill(t)
	took := scaleAndWait("deployer-1", 3)
	second := leader("scaler")
	if second == first {
		t.Fatalf("the killed scaler %s still leads", first)
	}
	t.Logf("scaler %s killed: %s took over; a scale to 3 ran %s after the kill", first, second, took.Round(100*time.Millisecond))

	first = leader("deployer")
	c.procs[first].kill(t)
	other := map[string]string{"deployer-1": "deployer-2", "deployer-2": "deployer-1"}[first]
	c.urls["deployer"] = c.urls[other]
	took = scaleAndWait(other, 1)
	if second := leader("deployer"); second != other {
		t.Fatalf("deployer leader %s, want %s", second, other)
	}
	t.Logf("deployer %s killed: %s took over; a scale to 1 ran %s after the kill", first, other, took.Round(100*time.Millisecond))
}
