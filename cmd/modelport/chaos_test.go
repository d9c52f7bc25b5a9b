package main

// The control plane under chaos: two deployers, two scalers, three
// workers, billing and a NATS server, each its own process, while a
// random mix of control-API calls runs and processes (NATS included) are
// killed and started again. Once the chaos stops, everything must
// converge within 30 seconds.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/lease"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go/jetstream"
)

// chaosDuration is how long the chaos lasts: MODELPORT_CHAOS_DURATION,
// default 60 seconds (`make test-faults` runs it longer).
func chaosDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("MODELPORT_CHAOS_DURATION")
	if v == "" {
		return time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("MODELPORT_CHAOS_DURATION=%q: want a positive duration such as 60s or 5m", v)
	}
	return d
}

// chaosSeed is the seed of the chaos: MODELPORT_CHAOS_SEED to replay a
// run, else a fresh one (logged).
func chaosSeed(t *testing.T) uint64 {
	t.Helper()
	if v := os.Getenv("MODELPORT_CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("MODELPORT_CHAOS_SEED=%q: %v", v, err)
		}
		return s
	}
	return rand.Uint64()
}

// member is a process of the chaos cluster that can be killed and started
// again under the same name and settings.
type member struct {
	name, binary string
	extra        []string
	down         bool
	upAt         time.Time // when to start it again
	// spared members are never killed: the router, which the checks do
	// not concern, but which creates the USAGE stream billing reads and
	// the load bucket the scaler reads.
	spared bool
}

// chaosCluster is the cluster under chaos, and what the chaos did to it.
type chaosCluster struct {
	*cluster
	nats    *natsNode
	server  string
	natsUp  bool
	natsAt  time.Time
	members []*member
	rng     *rand.Rand

	services map[string]string // ID -> name, every service created
	deleted  map[string]bool   // IDs whose deletion was accepted
	counts   map[string]int    // what the chaos did, for the log
}

func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds six binaries and runs the chaos for a minute or more; run without -short")
	}
	duration, seed := chaosDuration(t), chaosSeed(t)
	t.Logf("chaos for %s, seed %d (MODELPORT_CHAOS_SEED=%d replays it)", duration, seed, seed)
	bin := buildServices(t)
	server := buildNATSServer(t, bin)
	sec := newNATSSecurity(t)
	nd := startNATSServer(t, server, sec)
	chAddr, chDB := chtest.New(t)
	c := &chaosCluster{
		cluster: &cluster{
			bin:   bin,
			seeds: sec.seeds,
			common: []string{
				"MODELPORT_NATS_URL=" + nd.clientURL,
				"MODELPORT_LOG_LEVEL=info",
				"MODELPORT_ADMIN_KEY=" + testAdminKey,
				"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
				"MODELPORT_CLICKHOUSE_DB=" + chDB,
				"MODELPORT_SCALER_SWEEP=500ms",
				"MODELPORT_DEPLOYER_RECONCILE=1s",
				"MODELPORT_AUTOSCALE_DOWN_DELAY=2s",
			},
			urls:  map[string]string{},
			procs: map[string]*proc{},
		},
		nats: nd, server: server, natsUp: true,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		services: map[string]string{}, deleted: map[string]bool{}, counts: map[string]int{},
	}
	c.common = append(c.common, sec.clientEnv()...)
	t.Cleanup(func() { c.stopAll(t) })
	for _, m := range []*member{
		{name: "deployer-1", binary: "deployer"}, {name: "deployer-2", binary: "deployer"},
		{name: "scaler-1", binary: "scaler"}, {name: "scaler-2", binary: "scaler"},
		{name: "billing", binary: "billing"},
		{name: "worker-1", binary: "inference-worker"}, {name: "worker-2", binary: "inference-worker"},
		{name: "worker-3", binary: "inference-worker"},
		{name: "router", binary: "router", spared: true},
	} {
		m.extra = append(m.extra, "MODELPORT_REPLICA_ID="+m.name, "MODELPORT_WORKER_ID="+m.name)
		c.members = append(c.members, m)
	}
	// All at once: each waits at start for the streams and buckets the
	// others create.
	c.startMembers(t, c.members...)

	// The chaos.
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		c.revive(t)
		switch n := c.rng.IntN(100); {
		case n < 55:
			c.callAPI(t)
		case n < 62 && c.natsUp && c.downCount() == 0:
			// The first outage outlasts the publishers' retry window
			// (natsx.PublishRetryWindow) and the heartbeats' TTL: what
			// the services could not announce meanwhile, they must
			// announce after, and no worker may be taken for dead.
			down := time.Duration(1+c.rng.IntN(4)) * time.Second
			if c.counts["nats killed"] == 0 {
				down = natsx.PublishRetryWindow + 2*time.Second
			}
			c.nats.proc.kill(t)
			c.natsUp, c.natsAt = false, time.Now().Add(down)
			c.counts["nats killed"]++
		case n < 90 && c.downCount() < 2:
			m := c.members[c.rng.IntN(len(c.members))]
			if !m.down && !m.spared {
				c.procs[m.name].kill(t)
				m.down, m.upAt = true, time.Now().Add(time.Duration(1+c.rng.IntN(6))*time.Second)
				c.counts[strings.TrimRight(m.name, "-0123456789")+" killed"]++
			}
		}
		time.Sleep(time.Duration(200+c.rng.IntN(800)) * time.Millisecond)
	}

	// Everything comes back; from then on, 30 seconds to converge.
	for _, m := range c.members {
		m.upAt = time.Time{}
	}
	c.natsAt = time.Time{}
	c.revive(t)
	stopped := time.Now()
	t.Logf("chaos over: %v; %d services created, %d deleted", c.counts, len(c.services), len(c.deleted))

	ctx := context.Background()
	// The test reads the records as the scaler does: its identity reads
	// every bucket the checks need.
	js := sec.connect(t, c.nats.clientURL, access.Scaler)
	var last string
	deadline := stopped.Add(30 * time.Second)
	for {
		err := c.converged(ctx, t, js)
		if err == nil {
			break
		}
		if msg := err.Error(); msg != last {
			t.Logf("%s after the chaos: %v", time.Since(stopped).Round(100*time.Millisecond), err)
			last = msg
		}
		if time.Now().After(deadline) {
			c.dump(ctx, t, js)
			t.Fatalf("not converged within 30s of the chaos: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("converged %s after the chaos", time.Since(stopped).Round(100*time.Millisecond))
	c.checkBilling(ctx, t, js)
}

// stopAll stops the members still running.
func (c *chaosCluster) stopAll(t *testing.T) {
	for name, p := range c.procs {
		if !p.stopped {
			if err := p.stop(20 * time.Second); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}

// downCount is how many members are down.
func (c *chaosCluster) downCount() int {
	n := 0
	for _, m := range c.members {
		if m.down {
			n++
		}
	}
	return n
}

// revive starts again NATS, then the members, whose downtime is over.
func (c *chaosCluster) revive(t *testing.T) {
	t.Helper()
	if !c.natsUp && !time.Now().Before(c.natsAt) {
		c.nats.start(t, c.server)
		c.natsUp = true
		// Cleanups run last-registered first: the restarted server's
		// would stop NATS before the services.
		t.Cleanup(func() { c.stopAll(t) })
	}
	if !c.natsUp {
		return // a service would not be healthy without it
	}
	for _, m := range c.members {
		if m.down && !time.Now().Before(m.upAt) {
			c.startMember(t, m)
			m.down = false
		}
	}
}

// startMember starts a member on a free port and waits until it is
// healthy.
func (c *chaosCluster) startMember(t *testing.T, m *member) {
	t.Helper()
	c.startMembers(t, m)
}

// startMembers starts members, each on a free port, and waits until all
// are healthy. A port found free can be taken by another process before
// the member listens on it: a member that exits before it is healthy is
// started again on another port.
func (c *chaosCluster) startMembers(t *testing.T, members ...*member) {
	t.Helper()
	attempts := map[string]int{}
	for _, m := range members {
		c.launch(t, m)
		attempts[m.name] = 1
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, m := range members {
		for {
			p := c.procs[m.name]
			select {
			case <-p.done:
				p.stopped = true
				if attempts[m.name] >= 3 {
					t.Fatalf("%s exited while starting: %v\n%s", m.name, p.err, p.out.String())
				}
				t.Logf("%s exited while starting (%v); starting it again", m.name, p.err)
				attempts[m.name]++
				c.launch(t, m)
				deadline = time.Now().Add(30 * time.Second)
				continue
			default:
			}
			resp, err := http.Get(c.urls[m.name] + "/healthz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not healthy within 30s: %v", m.name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// launch starts member m's process on a port found free.
func (c *chaosCluster) launch(t *testing.T, m *member) {
	t.Helper()
	port, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, c.common...), m.extra...)
	env = append(env, "MODELPORT_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(port), "MODELPORT_NATS_NKEY="+access.SeedFile(c.seeds, m.binary))
	p := startProc(t, m.name, filepath.Join(c.bin, m.binary), env)
	c.procs[m.name], c.urls[m.name] = p, "http://127.0.0.1:"+strconv.Itoa(port)
}

// deployer returns the URL of a running deployer, or "".
func (c *chaosCluster) deployer() string {
	var up []string
	for _, m := range c.members {
		if strings.HasPrefix(m.name, "deployer") && !m.down {
			up = append(up, c.urls[m.name])
		}
	}
	if len(up) == 0 || !c.natsUp {
		return ""
	}
	return up[c.rng.IntN(len(up))]
}

// callAPI makes one random control-API call: create, scale, set or remove
// an autoscale policy, or delete. Failures are part of the chaos.
func (c *chaosCluster) callAPI(t *testing.T) {
	t.Helper()
	url := c.deployer()
	if url == "" {
		return
	}
	var live []string
	for id := range c.services {
		if !c.deleted[id] {
			live = append(live, id)
		}
	}
	slices.Sort(live)
	pick := func() string { return live[c.rng.IntN(len(live))] }
	// At most maxLive services of at most three instances each: the
	// workers hold them all, one of them down included.
	const maxLive = 8
	switch n := c.rng.IntN(100); {
	case len(live) < maxLive && (n < 25 || len(live) < 3):
		name := fmt.Sprintf("chaos-%d", len(c.services)+1)
		var s service
		status := tryCall("POST", url+"/api/v1/services", map[string]any{
			"name": name, "base_model": "qwen2.5-7b-instruct", "instances": 1 + c.rng.IntN(3), "billing_method": "per-instance-hour",
		}, &s)
		if s.ID != "" {
			c.services[s.ID] = name
		}
		c.counts[fmt.Sprintf("create %d", status)]++
	case n < 60:
		status := tryCall("POST", url+"/api/v1/services/"+pick()+"/scale", map[string]any{"instances": c.rng.IntN(4)}, nil)
		c.counts[fmt.Sprintf("scale %d", status)]++
	case n < 72:
		status := tryCall("PUT", url+"/api/v1/services/"+pick()+"/autoscale", map[string]any{
			"min_instances": 1, "max_instances": 1 + c.rng.IntN(3), "target_in_flight": 1,
		}, nil)
		c.counts[fmt.Sprintf("autoscale %d", status)]++
	case n < 80:
		status := tryCall("DELETE", url+"/api/v1/services/"+pick()+"/autoscale", nil, nil)
		c.counts[fmt.Sprintf("fixed %d", status)]++
	default:
		id := pick()
		status := tryCall("DELETE", url+"/api/v1/services/"+id, map[string]any{"confirm_name": c.services[id]}, nil)
		if status == http.StatusAccepted {
			c.deleted[id] = true
		}
		c.counts[fmt.Sprintf("delete %d", status)]++
	}
}

// tryCall is call for a request that may fail: a transport error is
// status 0.
func tryCall(method, url string, body, out any) int {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		_ = json.Unmarshal(b, out)
	}
	return resp.StatusCode
}

// records is what the buckets hold.
type records struct {
	services   map[string]state.Service
	placements []state.Placement
	instances  []state.Instance
	workers    []state.Worker
}

func readRecords(ctx context.Context, js jetstream.JetStream) (records, error) {
	var r records
	kv := func(name string) (jetstream.KeyValue, error) { return js.KeyValue(ctx, name) }
	services, err := kv(state.BucketServices)
	if err != nil {
		return r, err
	}
	list, err := state.List[state.Service](ctx, services, ">")
	if err != nil {
		return r, err
	}
	r.services = map[string]state.Service{}
	for _, s := range list {
		r.services[s.ID] = s
	}
	for name, dst := range map[string]any{state.BucketPlacements: &r.placements, state.BucketInstances: &r.instances, state.BucketWorkers: &r.workers} {
		b, err := kv(name)
		if err != nil {
			return r, err
		}
		switch d := dst.(type) {
		case *[]state.Placement:
			*d, err = state.List[state.Placement](ctx, b, ">")
		case *[]state.Instance:
			*d, err = state.List[state.Instance](ctx, b, ">")
		case *[]state.Worker:
			*d, err = state.List[state.Worker](ctx, b, ">")
		}
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

// converged checks what must hold once the chaos is over:
//   - every service not deleted runs (or idles) with exactly its desired
//     count of instances, all ready, all placed, and says so;
//   - every deleted service is deleted (not stuck deleting) and has no
//     instance record, placement or running instance anywhere;
//   - no worker runs an instance without a placement on it, and every
//     instance record has one;
//   - every worker is back (three heartbeats).
func (c *chaosCluster) converged(ctx context.Context, t *testing.T, js jetstream.JetStream) error {
	r, err := readRecords(ctx, js)
	if err != nil {
		return err
	}
	if len(r.workers) != 3 {
		return fmt.Errorf("%d workers beating, want 3", len(r.workers))
	}
	placed := map[string]state.Placement{}
	placements := map[string]int{}
	for _, p := range r.placements {
		if p.Failed != "" {
			return fmt.Errorf("failed placement %s of %s: %s", p.InstanceID, p.ServiceID, p.Failed)
		}
		placed[p.InstanceID] = p
		placements[p.ServiceID]++
	}
	ready, recorded := map[string]int{}, map[string]int{}
	for _, in := range r.instances {
		p, ok := placed[in.ID]
		if !ok || p.WorkerID != in.WorkerID {
			return fmt.Errorf("instance record %s of %s on %s has no placement there", in.ID, in.ServiceID, in.WorkerID)
		}
		recorded[in.ServiceID]++
		if in.Status == state.InstanceReady {
			ready[in.ServiceID]++
		}
	}
	held := map[string]int{}
	for _, w := range r.workers {
		for _, h := range w.Held {
			p, ok := placed[h.InstanceID]
			if !ok || p.WorkerID != w.ID {
				return fmt.Errorf("worker %s runs %s of %s without a placement", w.ID, h.InstanceID, h.ServiceID)
			}
			held[h.ServiceID]++
		}
	}
	for id := range c.services {
		s, ok := r.services[id]
		if !ok {
			return fmt.Errorf("service %s has no record", id)
		}
		if c.deleted[id] || s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			if s.Status != state.StatusDeleted {
				return fmt.Errorf("deleted service %s is %s", id, s.Status)
			}
			if recorded[id]+placements[id]+held[id] > 0 {
				return fmt.Errorf("deleted service %s: %d records, %d placements, %d running", id, recorded[id], placements[id], held[id])
			}
			continue
		}
		want := s.Instances
		if s.ReadyInstances != want || ready[id] != want || recorded[id] != want || placements[id] != want || held[id] != want {
			return fmt.Errorf("service %s (%s, %q): desired %d; says %d ready; %d ready of %d records, %d placements, %d running",
				id, s.Status, s.StatusReason, want, s.ReadyInstances, ready[id], recorded[id], placements[id], held[id])
		}
		if wantStatus := map[bool]string{true: state.StatusIdle, false: state.StatusRunning}[want == 0]; s.Status != wantStatus {
			return fmt.Errorf("service %s with %d of %d ready is %s, want %s", id, ready[id], want, s.Status, wantStatus)
		}
		if len(s.Outbox) > 0 {
			return fmt.Errorf("service %s has %d announcements pending", id, len(s.Outbox))
		}
	}
	return nil
}

// instanceUsage is the part of billing's usage answer this test reads.
type instanceUsage struct {
	InstanceSeconds uint64    `json:"instance_seconds"`
	DeletedAt       time.Time `json:"deleted_at"`
}

// checkBilling checks that billing's instance time matches what runs:
// over a few seconds, each service's instance time grows by its ready
// instances times the seconds passed (give or take one second an
// instance, for billing's whole seconds), so no instance that stopped is
// still billed and none that runs is not; and every deleted service's
// deletion reached billing.
func (c *chaosCluster) checkBilling(ctx context.Context, t *testing.T, js jetstream.JetStream) {
	t.Helper()
	r, err := readRecords(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, len(c.services))
	for id := range c.services {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	usage := func() (map[string]instanceUsage, time.Time, time.Time) {
		out := map[string]instanceUsage{}
		begin := time.Now()
		for _, id := range ids {
			var u instanceUsage
			eventually(t, 30*time.Second, "usage of "+id, func() error {
				if s := tryCall("GET", c.urls["billing"]+"/api/v1/usage?service_id="+id, nil, &u); s != 200 {
					return fmt.Errorf("status %d", s)
				}
				return nil
			})
			out[id] = u
		}
		return out, begin, time.Now()
	}
	eventually(t, 30*time.Second, "deletions reached billing", func() error {
		first, _, _ := usage()
		for id := range c.services {
			if r.services[id].Status == state.StatusDeleted && first[id].DeletedAt.IsZero() {
				return fmt.Errorf("billing has no deletion time for deleted service %s", id)
			}
		}
		return nil
	})
	// Billing has stored every instance event once its consumer has
	// caught up; a growth measured before may still move.
	eventually(t, 60*time.Second, "instance time grows with what runs", func() error {
		before, b0, b1 := usage()
		time.Sleep(5 * time.Second)
		after, a0, a1 := usage()
		lo, hi := a0.Sub(b1).Seconds(), a1.Sub(b0).Seconds()
		for _, id := range ids {
			s := r.services[id]
			n := 0
			if s.Status != state.StatusDeleted {
				n = s.ReadyInstances
			}
			grew := float64(after[id].InstanceSeconds) - float64(before[id].InstanceSeconds)
			if grew < float64(n)*lo-float64(n)-1 || grew > float64(n)*hi+float64(n)+1 {
				return fmt.Errorf("service %s (%s, %d running): instance time grew %.0fs over %.1f to %.1fs", id, s.Status, n, grew, lo, hi)
			}
		}
		t.Logf("instance time of %d services grew as their %d running instances, over %.1f to %.1fs", len(ids), runningTotal(r), lo, hi)
		return nil
	})
}

func runningTotal(r records) int {
	n := 0
	for _, s := range r.services {
		if s.Status != state.StatusDeleted {
			n += s.ReadyInstances
		}
	}
	return n
}

// dump logs the state for a failed convergence.
func (c *chaosCluster) dump(ctx context.Context, t *testing.T, js jetstream.JetStream) {
	t.Helper()
	r, err := readRecords(ctx, js)
	if err != nil {
		t.Logf("read records: %v", err)
		return
	}
	for id := range c.services {
		s := r.services[id]
		t.Logf("service %s %s: %s, %d/%d ready, reason %q, outbox %d", id, c.services[id], s.Status, s.ReadyInstances, s.Instances, s.StatusReason, len(s.Outbox))
	}
	for _, p := range r.placements {
		t.Logf("placement %s of %s on %s failed=%q placed %s", p.InstanceID, p.ServiceID, p.WorkerID, p.Failed, p.PlacedAt.Format(time.TimeOnly))
	}
	for _, in := range r.instances {
		t.Logf("instance %s of %s on %s: %s", in.ID, in.ServiceID, in.WorkerID, in.Status)
	}
	for _, w := range r.workers {
		t.Logf("worker %s: capacity %d, holds %+v, refused %+v", w.ID, w.Capacity, w.Held, w.Refused)
	}
	if kv, err := js.KeyValue(ctx, state.BucketLeases); err == nil {
		for _, role := range []string{"deployer", "scaler"} {
			h, ok, err := lease.Leader(ctx, kv, lease.Key(role, "leader"))
			t.Logf("%s leader: %v %v %v", role, h, ok, err)
		}
	}
}
