package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsembed"
	"github.com/modelport/modelport/libs/natsx"
	billing "github.com/modelport/modelport/services/billing/app"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// benchBilling measures the usage pipeline on its own: events published
// to JetStream until each one can be counted in ClickHouse, through
// billing with its default batch settings, a private ClickHouse and an
// embedded NATS server. It returns a report section; when it cannot run
// (no ClickHouse here) the section says so instead.
func benchBilling(ctx context.Context, n int) string {
	r, err := runBillingBench(ctx, n)
	var b strings.Builder
	b.WriteString("\n## Usage pipeline: publish to queryable in ClickHouse\n\n")
	if err != nil {
		fmt.Fprintf(&b, "Not measured: %v.\n", err)
		return b.String()
	}
	fmt.Fprintf(&b, "Usage events published to JetStream (as the router does), consumed by billing with its defaults (batches of up to %d events or %s), "+
		"stored in a private ClickHouse %s on the same machine, and counted in `usage_events`. ", r.batch, r.wait, r.version)
	b.WriteString("Throughput: a burst of events published as fast as JetStream takes them, timed from the first publish until ClickHouse counts the last. ")
	b.WriteString("Lag: events then published at a steady rate; for each, the time from its publish until ClickHouse counts it.\n\n")
	b.WriteString("| measure | events | result |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| sustained throughput, publish to queryable | %d | **%.0f events/s** |\n", r.burst, r.rate)
	for _, l := range r.lags {
		fmt.Fprintf(&b, "| lag at %.0f events/s (%s of the sustained rate): p50 / p99 / max | %d | %s / %s / %s |\n",
			l.rate, l.share, l.events, ms(l.p50), ms(l.p99), ms(l.max))
	}
	b.WriteString("\nThe lag is mostly batching: billing inserts when a batch is full or its first event has waited the batch wait, and acks only once ClickHouse has it, so at a lower rate a batch takes longer to fill.\n")
	return b.String()
}

type billingBench struct {
	batch   int
	wait    time.Duration
	version string
	burst   int
	rate    float64
	lags    []billingLag
}

type billingLag struct {
	share         string
	rate          float64
	events        int
	p50, p99, max time.Duration
}

func runBillingBench(ctx context.Context, n int) (billingBench, error) {
	var r billingBench
	if _, err := chlocal.Binary(); err != nil {
		return r, err
	}
	dir, err := os.MkdirTemp("", "modelport-bench-billing-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	chs, err := chlocal.Start(ctx, dir+"/clickhouse", 0)
	if err != nil {
		return r, err
	}
	defer chs.Stop()
	ns, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: dir + "/nats"})
	if err != nil {
		return r, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus, err := natsx.Open(ctx, ns.ClientURL(), "bench-billing", 1, quiet)
	if err != nil {
		return r, err
	}
	defer bus.Close()
	cfg, err := billing.ConfigFromEnv(func(string) string { return "" })
	if err != nil {
		return r, err
	}
	cfg.ClickHouseAddr, cfg.ClickHouseDB = chs.Addr, "bench"
	r.batch, r.wait = cfg.BatchSize, cfg.BatchWait
	svc, err := billing.Start(ctx, cfg, bus, quiet)
	if err != nil {
		return r, err
	}
	defer svc.Stop(context.WithoutCancel(ctx))

	conn, err := ch.Open(&ch.Options{Addr: []string{chs.Addr}})
	if err != nil {
		return r, err
	}
	defer conn.Close()
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&r.version); err != nil {
		return r, err
	}
	count := func() (uint64, error) {
		var c uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM bench.usage_events").Scan(&c)
		return c, err
	}
	// Billing is ready once its consumer exists (after the migrations).
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := bus.JS.Consumer(ctx, events.StreamUsage, "billing-usage"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("billing did not start within a minute")
		}
	}

	// Throughput: a burst.
	r.burst = n
	start := time.Now()
	for i := range n {
		if err := publishUsageAsync(bus.JS, i); err != nil {
			return r, err
		}
	}
	select {
	case <-bus.JS.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return r, fmt.Errorf("publishes not acknowledged within a minute")
	}
	for {
		c, err := count()
		if err != nil {
			return r, err
		}
		if c >= uint64(n) {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return r, fmt.Errorf("only %d of %d events stored after 10 minutes", c, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.rate = float64(n) / time.Since(start).Seconds()

	// Lag at that rate, and at half of it, for about ten seconds each.
	stored := uint64(n)
	for _, share := range []struct {
		name string
		f    float64
	}{{"100%", 1}, {"50%", 0.5}} {
		rate := r.rate * share.f
		m := max(int(rate*10), 100)
		lag, err := measureLag(ctx, bus.JS, count, stored, m, rate, n+int(stored))
		if err != nil {
			return r, err
		}
		lag.share, lag.rate = share.name, rate
		r.lags = append(r.lags, lag)
		stored += uint64(m)
	}
	return r, nil
}

// measureLag publishes m events at rate per second and returns how long
// each took from its publish until ClickHouse counted it. Billing stores
// events in stream order, so the k-th new row is the k-th event.
func measureLag(ctx context.Context, js jetstream.JetStream, count func() (uint64, error), base uint64, m int, rate float64, seq int) (billingLag, error) {
	published := make([]time.Time, m)
	visible := make([]time.Time, m)
	errc := make(chan error, 1)
	go func() {
		start := time.Now()
		for i := range m {
			if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
			published[i] = time.Now()
			if err := publishUsageAsync(js, seq+i); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	seen := 0
	deadline := time.Now().Add(time.Duration(float64(m)/rate*float64(time.Second)) + 5*time.Minute)
	for seen < m {
		c, err := count()
		if err != nil {
			return billingLag{}, err
		}
		now := time.Now()
		for ; seen < m && c > base && uint64(seen) < c-base; seen++ {
			visible[seen] = now
		}
		if now.After(deadline) {
			return billingLag{}, fmt.Errorf("lag: %d of %d events stored in time", seen, m)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-errc; err != nil {
		return billingLag{}, err
	}
	lags := make([]time.Duration, m)
	for i := range m {
		lags[i] = visible[i].Sub(published[i])
	}
	slices.Sort(lags)
	return billingLag{events: m, p50: lags[m/2], p99: lags[min(m-1, m*99/100)], max: lags[m-1]}, nil
}

// publishUsageAsync publishes the i-th benchmark usage event without
// waiting for JetStream's answer.
func publishUsageAsync(js jetstream.JetStream, i int) error {
	ev := events.RequestCompletedV1{
		Meta: events.NewMeta(), RequestID: fmt.Sprintf("bench-%d", i), ServiceID: "0f0a3c52-9d7e-4b1a-8c36-5e2f7d9a1b40",
		OwnerID: "8105f7322477", AccessName: "u-8105f7322477/bench", BaseModel: "qwen2.5-7b-instruct",
		APIKeyID: fmt.Sprintf("3d6f8a1c-2b4e-4c7d-9e0f-5a6b7c8d9e0%d", i%4), InstanceID: "7c9e1b24-3a5f-4d08-b6e2-1f4a8d0c5e93",
		Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 100 + i%50, CompletionTokens: 32, TotalTokens: 132 + i%50,
	}
	ev.StartedAt, ev.FinishedAt = ev.OccurredAt.Add(-50*time.Millisecond), ev.OccurredAt
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(ev.Subject())
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
	_, err = js.PublishMsgAsync(msg)
	return err
}
