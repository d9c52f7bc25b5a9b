package app_test

// Reproductions of the billing review's findings that need billing
// running on JetStream.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
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
