package main

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
)

// TestFaultPlatformKilledUnderLoad kills the whole all-in-one (`modelport
// up`: NATS, router, billing and the rest in one process) with SIGKILL
// while clients send chat completions, starts it again on the same data
// folder, sends more, and compares what the clients received with
// ClickHouse by request ID:
//   - every answer a client received whole is billed exactly once, with
//     the tokens the client was told, before the kill and after the
//     restart;
//   - a request whose client got no answer (in flight at the kill) is
//     billed at most once; one refused with an error is not billed.
//
// Usage billing had fetched but not stored when it died comes back once
// JetStream's ack wait has passed, so the check waits for that.
func TestFaultPlatformKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the all-in-one and kills it under load; run without -short")
	}
	bin := buildModelport(t)
	chAddr, chDB := chtest.New(t)
	port, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	env := []string{
		"MODELPORT_DATA_DIR=" + t.TempDir(),
		"MODELPORT_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port),
		"MODELPORT_NATS_PORT=-1",
		"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
		"MODELPORT_CLICKHOUSE_DB=" + chDB,
		"MODELPORT_ADMIN_KEY=" + testAdminKey,
		"MODELPORT_SCALER_SWEEP=500ms",
		"MODELPORT_READY_WAIT=2s",
		"MODELPORT_LOG_LEVEL=info",
	}
	c := &cluster{urls: map[string]string{"deployer": base, "router": base}, procs: map[string]*proc{}}
	c.procs["modelport"] = startProc(t, "modelport", bin, env, "up")
	c.urls["modelport"] = base
	c.waitHealthy(t, "modelport")
	svc := c.deploy(t, "killed", 2)
	// Billing takes traffic once it has migrated ClickHouse: a request it
	// has billed says so.
	probe := newLoadGen(svc.AccessName, base)
	answerProbe(t, probe)
	waitBilled(t, chAddr, chDB, svc.ID, loadReport{answered: probe.answered}, 2*time.Minute)

	// Clients send requests until the moment of the kill; the requests in
	// flight then get no answer.
	first := newLoadGen(svc.AccessName, base)
	first.prefix = "before"
	done := first.run(context.Background(), 8)
	started := time.Now()
	eventually(t, 60*time.Second, "traffic before the kill", func() error {
		if n := first.answeredCount(); n < 200 || time.Since(started) < 3*time.Second {
			return fmt.Errorf("%d answered after %s", n, time.Since(started).Round(time.Millisecond))
		}
		return nil
	})
	first.drop(base)
	killedAt := time.Now()
	c.procs["modelport"].kill(t)
	<-done
	before := first.report(killedAt)
	t.Logf("before the kill: %d requests answered, %d in flight at the kill, %d failed", len(before.answered), len(before.unknown), len(before.failures))

	// The same data folder, started again: the service runs again and
	// takes traffic.
	c.procs["modelport-2"] = startProc(t, "modelport-2", bin, env, "up")
	c.urls["modelport-2"] = base
	c.waitHealthy(t, "modelport-2")
	answerProbe(t, probe)
	second := newLoadGen(svc.AccessName, base)
	second.prefix = "after"
	ctx, cancel := context.WithCancel(context.Background())
	done = second.run(ctx, 8)
	started = time.Now()
	eventually(t, 60*time.Second, "traffic after the restart", func() error {
		if n := second.answeredCount(); n < 100 || time.Since(started) < 2*time.Second {
			return fmt.Errorf("%d answered after %s", n, time.Since(started).Round(time.Millisecond))
		}
		return nil
	})
	cancel()
	<-done
	after := second.report(time.Now())
	t.Logf("after the restart: %d requests answered, %d failed", len(after.answered), len(after.failures))

	rep := loadReport{answered: maps.Clone(before.answered), unknown: before.unknown}
	maps.Copy(rep.answered, after.answered)
	maps.Copy(rep.answered, probe.answered)
	for _, f := range append(before.failures, after.failures...) {
		t.Errorf("request refused or failed while the platform ran: %s", f)
	}
	if len(before.unknown) == 0 {
		t.Logf("no request was in flight at the kill")
	}
	// What billing had fetched but not acked comes back after the
	// consumer's ack wait (a minute) from the restarted platform.
	waitBilled(t, chAddr, chDB, svc.ID, rep, 3*time.Minute)
	checkBilled(t, chAddr, chDB, svc.ID, rep)
}

// answerProbe sends requests through probe until one more is answered.
// Those refused meanwhile (the platform still starting) must not be
// billed; those answered must be.
func answerProbe(t *testing.T, probe *loadGen) {
	t.Helper()
	want := probe.answeredCount() + 1
	eventually(t, 60*time.Second, "the service answers", func() error {
		probe.send(context.Background(), fmt.Sprintf("probe-%d", time.Now().UnixNano()), 8)
		if probe.answeredCount() < want {
			return fmt.Errorf("probe refused")
		}
		return nil
	})
}

// waitBilled waits until ClickHouse holds usage for every request in
// rep.answered, so that checkBilled, which waits a minute, starts once
// redeliveries are due.
func waitBilled(t *testing.T, chAddr, chDB, serviceID string, rep loadReport, within time.Duration) {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ids := make([]any, 0, len(rep.answered))
	for id := range rep.answered {
		ids = append(ids, id)
	}
	eventually(t, within, "every answered request billed", func() error {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT uniqExact(request_id) FROM "+chDB+".usage_events WHERE service_id = ? AND request_id IN ?",
			serviceID, clickhouse.GroupSet{Value: ids}).Scan(&n); err != nil {
			return err
		}
		if n < uint64(len(ids)) {
			return fmt.Errorf("%d of %d answered requests billed", n, len(ids))
		}
		return nil
	})
}
