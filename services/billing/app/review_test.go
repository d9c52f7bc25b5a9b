package app_test

// Reproductions of the billing review's findings that need billing
// running on JetStream.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/app"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// Finding 2: a worker that gives up on an instance publishes
// worker.instance.failed.v1 and then, if it can, the stop. When the stop
// is lost, the instance is billed until its service is deleted.
func TestReview2FailedInstanceStopsBilling(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 50, BatchWait: 20 * time.Millisecond, Now: func() time.Time { return now }}
	svc := w.service("alice", state.BillingPerInstanceHour, now.Add(-3*time.Hour))
	b, url := w.billing(cfg, quiet)
	defer stop(b)
	instance := events.NewMeta().ID
	ready := events.InstanceReadyV1{Meta: events.NewMeta(), InstanceID: instance, ServiceID: svc.ID, WorkerID: "w1"}
	ready.OccurredAt = now.Add(-2 * time.Hour)
	failed := events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: instance, ServiceID: svc.ID, WorkerID: "w1", Reason: "crashed 5 times", ExitCode: 1, Restarts: 5}
	failed.OccurredAt = now.Add(-time.Hour)
	w.publish(ready)
	w.publish(failed) // and the stop that should follow is lost
	eventually(t, 30*time.Second, "instance time ends when the instance failed", func() error {
		var u billing.Usage
		if err := getJSON(url+"/api/v1/usage?service_id="+svc.ID, w.admin, &u); err != nil {
			return err
		}
		if u.InstanceSeconds != 3600 {
			return fmt.Errorf("instance_seconds %d, want 3600 (ready to failed)", u.InstanceSeconds)
		}
		return nil
	})
}

// Finding 7: a service whose created event billing never read (older than
// DEPLOY's retention when billing first ran) is billed 0 by the documented
// SQL, while the usage API bills it.
func TestReview7ServicesOlderThanTheStreamAreBilledInSQL(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	now := time.Now().UTC().Truncate(time.Second)
	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 50, BatchWait: 20 * time.Millisecond}
	svc := w.service("alice", state.BillingPerToken, now.Add(-100*24*time.Hour)) // in the bucket, not in DEPLOY
	b, url := w.billing(cfg, quiet)
	defer stop(b)
	ev := randomUsage(rand.New(rand.NewPCG(1, 2)), svc, now.Add(-80*time.Hour))
	ev.PromptTokens, ev.CompletionTokens, ev.TotalTokens = 100000, 1000, 101000
	w.publish(ev)
	var u billing.Usage
	eventually(t, 30*time.Second, "the usage is billed", func() error {
		if err := getJSON(url+"/api/v1/usage?service_id="+svc.ID, w.admin, &u); err != nil {
			return err
		}
		if u.Requests != 1 {
			return fmt.Errorf("requests %d", u.Requests)
		}
		return nil
	})
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	eventually(t, 30*time.Second, "token_lines bills what the API bills", func() error {
		var n uint64
		var method string
		if err := conn.QueryRow(context.Background(), "SELECT sum(cost_micros), any(billing_method) FROM "+db+".token_lines WHERE service_id = ?", svc.ID).Scan(&n, &method); err != nil {
			return err
		}
		if n != u.CostMicros {
			return fmt.Errorf("token_lines %d micros (billing_method %q), the API %d", n, method, u.CostMicros)
		}
		return nil
	})
}

// Finding 4: two billing processes starting together on a database that
// has the first migration only (a fresh install of two replicas, or an
// upgrade) each ran every migration, and the rollup could double. Now one
// migrates while the other waits for the lease, each migration and the
// price list are recorded once, and the rollup job fills the rollup
// exactly.
func TestReview4TwoReplicasStartingTogetherMigrateOnce(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	for _, stmt := range []string{
		"CREATE TABLE " + db + `.usage_events (event_id String, request_id String, service_id String, owner_id String,
	access_name String, base_model String, api_key_id String, instance_id String, endpoint String, status UInt16,
	prompt_tokens UInt32, completion_tokens UInt32, total_tokens UInt32, started_at DateTime, finished_at DateTime,
	occurred_at DateTime, inserted_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at) ORDER BY (service_id, occurred_at, event_id)`,
		"CREATE TABLE " + db + ".schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version",
		"INSERT INTO " + db + ".schema_migrations (version, name) SELECT toUInt32(1), 'usage_events'",
	} {
		if err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	svc := w.service("alice", state.BillingPerToken, time.Now().Add(-100*time.Hour))
	rng := rand.New(rand.NewPCG(4, 4))
	var stored [3]uint64
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".usage_events (event_id, service_id, api_key_id, base_model, status, prompt_tokens, completion_tokens, total_tokens, occurred_at)")
	if err != nil {
		t.Fatal(err)
	}
	for range 2000 {
		e := randomUsage(rng, svc, time.Now().Add(-90*time.Hour))
		if err := b.Append(e.ID, e.ServiceID, e.APIKeyID, e.BaseModel, uint16(e.Status), uint32(e.PromptTokens), uint32(e.CompletionTokens), uint32(e.TotalTokens), e.OccurredAt); err != nil {
			t.Fatal(err)
		}
		stored[0]++
		stored[1] += uint64(e.PromptTokens)
		stored[2] += uint64(e.CompletionTokens)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}

	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 50, BatchWait: 20 * time.Millisecond,
		RollupEvery: 100 * time.Millisecond, RollupSettle: time.Nanosecond}
	var replicas []runner.Service
	for range 2 {
		r, err := app.Start(w.ctx, cfg, w.bus, quiet)
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, r)
	}
	defer func() {
		for _, r := range replicas {
			stop(r)
		}
	}()
	eventually(t, 60*time.Second, "both replicas migrated and the rollup filled", func() error {
		var rolled [3]uint64
		if err := conn.QueryRow(ctx, "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM "+db+".usage_hourly FINAL").
			Scan(&rolled[0], &rolled[1], &rolled[2]); err != nil {
			return err
		}
		if rolled != stored {
			return fmt.Errorf("usage_hourly %v, usage_events %v", rolled, stored)
		}
		return nil
	})
	var versions, records, revisions uint64
	if err := conn.QueryRow(ctx, "SELECT uniqExact(version), count() FROM "+db+".schema_migrations").Scan(&versions, &records); err != nil {
		t.Fatal(err)
	}
	if versions != records || versions < 12 {
		t.Errorf("schema_migrations: %d records of %d migrations, want each once", records, versions)
	}
	if err := conn.QueryRow(ctx, "SELECT uniqExact(revision) FROM "+db+".price_schedule").Scan(&revisions); err != nil {
		t.Fatal(err)
	}
	if revisions != 1 {
		t.Errorf("the price list was stored as %d revisions, want 1", revisions)
	}
}

// Finding 2, the rest: a stop and a failure both lost, the worker alive
// and beating without the instance. Billing ends the instance's time at
// the last heartbeat that listed it, once the instance lease has passed.
func TestReview2LostStopEndsAtTheLastHeartbeat(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 50, BatchWait: 20 * time.Millisecond, Now: clock,
		InstanceLease: time.Minute, ReconcileEvery: 50 * time.Millisecond}
	svc := w.service("alice", state.BillingPerInstanceHour, now.Add(-3*time.Hour))
	b, url := w.billing(cfg, quiet)
	defer stop(b)
	instance := events.NewMeta().ID
	ready := events.InstanceReadyV1{Meta: events.NewMeta(), InstanceID: instance, ServiceID: svc.ID, WorkerID: "w1"}
	ready.OccurredAt = now.Add(-2 * time.Hour)
	w.publish(ready)
	beat := func(at time.Time, instances ...string) {
		if err := state.Put(w.ctx, w.bus.KV(state.BucketWorkers), "w1", state.Worker{ID: "w1", Capacity: 4, Running: len(instances), Instances: append([]string{}, instances...), BeatAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	seconds := func() (uint64, error) {
		var u billing.Usage
		if err := getJSON(url+"/api/v1/usage?service_id="+svc.ID, w.admin, &u); err != nil {
			return 0, err
		}
		return u.InstanceSeconds, nil
	}
	lastListed := now.Add(-10 * time.Minute)
	beat(lastListed, instance)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	eventually(t, 30*time.Second, "the heartbeat is stored as evidence", func() error {
		var n uint64
		if err := conn.QueryRow(w.ctx, "SELECT count() FROM "+db+".instance_sightings WHERE instance_id = ?", instance).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no sighting")
		}
		return nil
	})
	// Listed, so running, though its only event is two hours old.
	if s, err := seconds(); err != nil || s != 2*3600 {
		t.Fatalf("instance seconds while listed = %d, %v; want 7200", s, err)
	}
	// The instance failed, both of its announcements were lost, and the
	// worker goes on beating without it.
	beat(now, "another-instance")
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	want := uint64(lastListed.Sub(ready.OccurredAt) / time.Second)
	eventually(t, 30*time.Second, "instance time ends at the last heartbeat that listed it", func() error {
		s, err := seconds()
		if err != nil {
			return err
		}
		if s != want {
			return fmt.Errorf("instance seconds %d, want %d", s, want)
		}
		return nil
	})
	var kind, reason string
	if err := conn.QueryRow(w.ctx, "SELECT kind, reason FROM "+db+".instance_events WHERE instance_id = ? AND kind = 'lost'", instance).Scan(&kind, &reason); err != nil {
		t.Fatalf("no lost event: %v", err)
	}
	// The documented SQL agrees.
	var sqlSeconds uint64
	if err := conn.QueryRow(w.ctx, "SELECT sum(instance_seconds) FROM "+db+".instance_lines WHERE service_id = ?", svc.ID).Scan(&sqlSeconds); err != nil {
		t.Fatal(err)
	}
	if sqlSeconds != want {
		t.Errorf("instance_lines %d s, want %d", sqlSeconds, want)
	}
}
