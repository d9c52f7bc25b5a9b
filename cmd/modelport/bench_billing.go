package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsembed"
	"github.com/modelport/modelport/libs/natsx"
	billing "github.com/modelport/modelport/services/billing/app"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lagPoll is how often the lag measurement looks for new events in
// ClickHouse: often enough to see lags of a second, seldom enough not to
// take the CPU the pipeline needs.
const lagPoll = 20 * time.Millisecond

// billingCopies is the share of usage events the billing benchmark makes
// billing read twice: one in ten.
const billingCopies = 10

// benchBilling measures the usage pipeline on its own: events published
// to JetStream until each one can be counted in ClickHouse, through
// billing with its default settings, a private ClickHouse and an embedded
// NATS server, with one event in ten reaching billing twice. It returns a
// report section; when it cannot run (no ClickHouse here) or the stored
// usage is not exact, the section says so instead. With profile set, it
// writes CPU and allocation profiles of the throughput run to
// profile+".cpu.pprof" and profile+".allocs.pprof" (with
// profile+".allocs-base.pprof" from just before it, for pprof -base).
func benchBilling(ctx context.Context, n int, profile string) string {
	load := loadAverage()
	r, err := runBillingBench(ctx, n, profile)
	var b strings.Builder
	b.WriteString("\n## Usage pipeline: publish to queryable in ClickHouse\n\n")
	if err != nil {
		fmt.Fprintf(&b, "Not measured: %v.\n", err)
		return b.String()
	}
	fmt.Fprintf(&b, "Usage events published to JetStream (as the router does), consumed by billing with its defaults (batches of up to %d events or %s), "+
		"stored in a private ClickHouse %s on the same machine. One event in %d reaches billing a second time, as a redelivery or a duplicate publish does "+
		"(published again under a new message ID, a few thousand events after the first, so the first is usually stored already). ",
		r.batch, r.wait, r.version, billingCopies)
	b.WriteString("Throughput: a burst published as fast as JetStream takes it (encoded beforehand, as each router encodes its own), timed from the first publish until ClickHouse holds every event ID; " +
		"then the stored usage is checked: every event ID once, and the tokens of the events collapsed by ID equal to what was published. ")
	fmt.Fprintf(&b, "Lag: events then published at a steady rate; for each, the time from its publish until a query finds it in ClickHouse (polled every %s).\n\n", lagPoll)
	b.WriteString("| measure | events | result |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| sustained throughput, first publish to last stored | %d (+%d again) | **%.0f events/s** |\n", r.burst, r.copies, r.rate)
	fmt.Fprintf(&b, "| exact: event IDs stored / tokens stored (collapsed by ID) / rows in `usage_events` before merges | %d | %d / %d / %d |\n", r.burst, r.distinct, r.tokens, r.rows)
	for _, l := range r.lags {
		fmt.Fprintf(&b, "| lag at %.0f events/s (%s of the sustained rate): p50 / p99 / max | %d | %s / %s / %s |\n",
			l.rate, l.share, l.events, ms(l.p50), ms(l.p99), ms(l.max))
	}
	events := float64(r.burst + r.copies)
	fmt.Fprintf(&b, "\nCPU time during the throughput run: %.1f s in this process (billing, the embedded NATS server and the publisher) and %.1f s in ClickHouse, over %.1f s: "+
		"%.0f µs and %.0f µs per event delivered, so on %d idle CPUs this pipeline would take at most about %.0f events/s. "+
		"Load average (1 minute) when the section started: %s; when it ended: %s.\n",
		r.cpuSelf.Seconds(), r.cpuClickHouse.Seconds(), r.elapsed.Seconds(),
		r.cpuSelf.Seconds()/events*1e6, r.cpuClickHouse.Seconds()/events*1e6,
		runtime.NumCPU(), float64(runtime.NumCPU())*float64(r.burst)/(r.cpuSelf+r.cpuClickHouse).Seconds(), load, loadAverage())
	b.WriteString("\nBefore billing's pipeline was reworked (one batch of 500 at a time, each looked up in ClickHouse before its insert), " +
		"this section measured 6,967 events/s sustained, with p99 lag 933 ms at half that rate, on the same 2-CPU machine at load 3 to 8, " +
		"using 164 µs of CPU per event (68 µs in this process, 96 µs in ClickHouse). " +
		"Before usage events were decoded without reflection and received continuously into batches of 10,000 " +
		"(billing fetched at most 5,000 at a time and decoded them with encoding/json), this section used 38 to 43 µs of CPU per event in this process " +
		"and 11 to 14 µs in ClickHouse, and measured at best 34,662 events/s (load 2.1); run alternately with it on the same 2-CPU machine at loads of 1 to 8, " +
		"the current code used 38 to 45 µs and 6 to 8 µs, and 34,705 events/s at best (load 1.3). Billing's own part fell from about 11 to about 6 µs per event " +
		"(CPU profiles of the two), less than the embedded NATS server's varies from run to run.\n")
	return b.String()
}

type billingBench struct {
	batch   int
	wait    time.Duration
	version string

	burst, copies int
	elapsed       time.Duration
	rate          float64
	// What ClickHouse holds after the burst: distinct event IDs, their
	// tokens (each ID once) and raw rows.
	distinct, tokens, rows uint64
	cpuSelf, cpuClickHouse time.Duration

	lags []billingLag
}

type billingLag struct {
	share         string
	rate          float64
	events        int
	p50, p99, max time.Duration
}

func runBillingBench(ctx context.Context, n int, profile string) (billingBench, error) {
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

	// Billing's warnings (a batch not stored, a fetch that failed) go to
	// stderr, so a stall in the numbers comes with its cause.
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	bus, err := natsx.Open(ctx, ns.ClientURL(), "bench-billing", 1, quiet)
	if err != nil {
		return r, err
	}
	defer bus.Close()
	// Billing's defaults, but for the batch settings when they are set
	// here, to compare others.
	cfg, err := billing.ConfigFromEnv(func(k string) string {
		if strings.HasPrefix(k, "MODELPORT_BILLING_BATCH") {
			return os.Getenv(k)
		}
		return ""
	})
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
	// Billing is ready once its consumer exists (after the migrations).
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := bus.JS.Consumer(ctx, events.StreamUsage, "billing-usage"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("billing did not start within a minute")
		}
	}
	pub, err := newBenchPublisher(bus.Conn)
	if err != nil {
		return r, err
	}

	// Throughput: a burst, encoded beforehand.
	service := uuid.NewString()
	rng := rand.New(rand.NewPCG(20, 50))
	data := make([][]byte, n)
	var want uint64
	for i := range n {
		ev := benchUsage(service, i)
		want += uint64(ev.TotalTokens)
		if data[i], err = json.Marshal(ev); err != nil {
			return r, err
		}
	}
	order := copyOrder(n, rng)
	r.burst, r.copies = n, len(order)-n
	stopProfile, err := startProfile(profile)
	if err != nil {
		return r, err
	}
	cpuSelf, cpuCH := processCPU(os.Getpid()), processCPU(chs.Pid())
	start := time.Now()
	for _, i := range order {
		if err := pub.publish(ctx, data[i]); err != nil {
			stopProfile()
			return r, err
		}
	}
	if err := pub.wait(ctx); err != nil {
		stopProfile()
		return r, err
	}
	err = waitDistinct(ctx, conn, service, uint64(n), start.Add(10*time.Minute))
	r.elapsed = time.Since(start)
	r.cpuSelf, r.cpuClickHouse = processCPU(os.Getpid())-cpuSelf, processCPU(chs.Pid())-cpuCH
	if perr := stopProfile(); err == nil {
		err = perr
	}
	if err != nil {
		return r, err
	}
	r.rate = float64(n) / r.elapsed.Seconds()
	data = nil
	if err := conn.QueryRow(ctx, `SELECT count(), sum(t), (SELECT count() FROM bench.usage_events WHERE service_id = ?)
FROM (SELECT event_id, any(total_tokens) AS t FROM bench.usage_events WHERE service_id = ? GROUP BY event_id)`, service, service).
		Scan(&r.distinct, &r.tokens, &r.rows); err != nil {
		return r, err
	}
	if r.distinct != uint64(n) || r.tokens != want {
		return r, fmt.Errorf("usage NOT EXACT: %d event IDs stored of %d published, %d tokens of %d", r.distinct, n, r.tokens, want)
	}

	// Lag at that rate, and at half of it, for about ten seconds each.
	next := n
	for _, share := range []struct {
		name string
		f    float64
	}{{"100%", 1}, {"50%", 0.5}} {
		rate := r.rate * share.f
		m := max(int(rate*10), 100)
		lag, err := measureLag(ctx, pub, conn, m, rate, next, rng)
		if err != nil {
			return r, fmt.Errorf("lag at %s: %w", share.name, err)
		}
		lag.share, lag.rate = share.name, rate
		r.lags = append(r.lags, lag)
		next += m
	}
	return r, nil
}

// copyOrder returns the order in which the burst publishes n events:
// each once, and after every tenth, a copy of one of the few thousand
// before it.
func copyOrder(n int, rng *rand.Rand) []int {
	order := make([]int, 0, n+n/billingCopies)
	for i := range n {
		order = append(order, i)
		if i%billingCopies == billingCopies-1 {
			order = append(order, i-rng.IntN(min(i+1, 4000)))
		}
	}
	return order
}

// waitDistinct polls until ClickHouse holds want distinct event IDs of
// service, or deadline passes.
func waitDistinct(ctx context.Context, conn driver.Conn, service string, want uint64, deadline time.Time) error {
	for {
		// count() is cheap and reaches want no later than the distinct
		// count does; the distinct count decides.
		var rows, distinct uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM bench.usage_events WHERE service_id = ?", service).Scan(&rows); err != nil {
			return err
		}
		if rows >= want {
			if err := conn.QueryRow(ctx, "SELECT uniqExact(event_id) FROM bench.usage_events WHERE service_id = ?", service).Scan(&distinct); err != nil {
				return err
			}
			if distinct >= want {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d events stored in time", distinct, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// measureLag publishes m events (numbered from seq) at rate per second,
// one in ten of them twice, and returns how long each took from its
// publish until a query found it in ClickHouse.
func measureLag(ctx context.Context, pub *benchPublisher, conn driver.Conn, m int, rate float64, seq int, rng *rand.Rand) (billingLag, error) {
	service := uuid.NewString()
	order := copyOrder(m, rng)
	published := make([]atomic.Int64, m) // Unix nanoseconds
	visible := make([]time.Time, m)
	errc := make(chan error, 1)
	go func() {
		data := make([][]byte, m)
		start := time.Now()
		for k, i := range order {
			if wait := time.Until(start.Add(time.Duration(float64(k) / rate / 1.1 * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
			if data[i] == nil {
				b, err := json.Marshal(benchUsage(service, seq+i))
				if err != nil {
					errc <- err
					return
				}
				data[i] = b
				published[i].Store(time.Now().UnixNano())
			}
			if err := pub.publish(ctx, data[i]); err != nil {
				errc <- err
				return
			}
		}
		errc <- pub.wait(ctx)
	}()
	// Each query asks only for the events not seen yet: the gaps between
	// the oldest unseen and the newest seen (batches stored out of order)
	// and everything after, narrowed by the sorting key (service, time) to
	// the last few seconds. So polling costs little however far behind
	// one event is.
	seen, newest := 0, -1
	deadline := time.Now().Add(time.Duration(float64(m)/rate*float64(time.Second)) + 5*time.Minute)
	var pubErr error
	pubDone := false
	for seen < m {
		if !pubDone {
			select {
			case pubErr = <-errc:
				pubDone = true
				if pubErr != nil {
					return billingLag{}, pubErr
				}
			default:
			}
		}
		from := time.Now().Add(-time.Minute)
		if t := published[seen].Load(); t != 0 {
			from = time.Unix(0, t)
		}
		ranges := []string{"request_id >= ?"}
		args := []any{service, from.Add(-2 * time.Second).Unix(), benchRequestID(seq + max(seen, newest+1))}
		for i := seen; i < newest && len(ranges) < 50; {
			if !visible[i].IsZero() {
				i++
				continue
			}
			j := i
			for j < newest && visible[j].IsZero() {
				j++
			}
			ranges = append(ranges, "(request_id >= ? AND request_id < ?)")
			args = append(args, benchRequestID(seq+i), benchRequestID(seq+j))
			i = j
		}
		if len(ranges) == 50 {
			ranges, args = ranges[:1], append(args[:2], benchRequestID(seq+seen))
		}
		rows, err := conn.Query(ctx, "SELECT request_id FROM bench.usage_events WHERE service_id = ? AND occurred_at >= toDateTime(?) AND ("+
			strings.Join(ranges, " OR ")+")", args...)
		if err != nil {
			return billingLag{}, err
		}
		now := time.Now()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return billingLag{}, err
			}
			i, err := strconv.Atoi(strings.TrimPrefix(id, "bench-"))
			if err != nil || i < seq || i >= seq+m {
				rows.Close()
				return billingLag{}, fmt.Errorf("unexpected request ID %q", id)
			}
			if visible[i-seq].IsZero() {
				visible[i-seq] = now
			}
			newest = max(newest, i-seq)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return billingLag{}, err
		}
		for seen < m && !visible[seen].IsZero() {
			seen++
		}
		if now.After(deadline) {
			return billingLag{}, fmt.Errorf("%d of %d events stored in time", seen, m)
		}
		time.Sleep(lagPoll)
	}
	if !pubDone {
		if err := <-errc; err != nil {
			return billingLag{}, err
		}
	}
	lags := make([]time.Duration, m)
	for i := range m {
		lags[i] = visible[i].Sub(time.Unix(0, published[i].Load()))
	}
	slices.Sort(lags)
	return billingLag{events: m, p50: lags[m/2], p99: lags[min(m-1, m*99/100)], max: lags[m-1]}, nil
}

// benchUsage returns the i-th benchmark usage event, of service.
func benchUsage(service string, i int) events.RequestCompletedV1 {
	ev := events.RequestCompletedV1{
		Meta: events.NewMeta(), RequestID: benchRequestID(i), ServiceID: service,
		OwnerID: "8105f7322477", AccessName: "u-8105f7322477/bench", BaseModel: "qwen2.5-7b-instruct",
		APIKeyID: fmt.Sprintf("3d6f8a1c-2b4e-4c7d-9e0f-5a6b7c8d9e0%d", i%4), InstanceID: "7c9e1b24-3a5f-4d08-b6e2-1f4a8d0c5e93",
		Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 100 + i%50, CompletionTokens: 32, TotalTokens: 132 + i%50,
	}
	ev.StartedAt, ev.FinishedAt = ev.OccurredAt.Add(-50*time.Millisecond), ev.OccurredAt
	return ev
}

// benchRequestID numbers requests so that they sort as strings.
func benchRequestID(i int) string { return fmt.Sprintf("bench-%010d", i) }

// benchPublisher publishes encoded usage events to JetStream without
// waiting for each answer, as many at once as JetStream keeps up with.
type benchPublisher struct {
	js   jetstream.JetStream
	errc chan error
}

func newBenchPublisher(nc *nats.Conn) (*benchPublisher, error) {
	p := &benchPublisher{errc: make(chan error, 1)}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(8192),
		jetstream.WithPublishAsyncTimeout(time.Minute),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			select {
			case p.errc <- err:
			default:
			}
		}))
	p.js = js
	return p, err
}

// publish sends one event under a new message ID: a copy of an event
// published before is a new message to JetStream, as a duplicate publish
// outside the duplicate window is.
func (p *benchPublisher) publish(ctx context.Context, data []byte) error {
	for {
		select {
		case err := <-p.errc:
			return fmt.Errorf("publish: %w", err)
		default:
		}
		msg := nats.NewMsg(events.SubjectRequestCompletedV1)
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, uuid.NewString())
		_, err := p.js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Second))
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// wait returns once JetStream has answered every publish.
func (p *benchPublisher) wait(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		return fmt.Errorf("publishes not acknowledged within a minute")
	}
	select {
	case err := <-p.errc:
		return fmt.Errorf("publish: %w", err)
	default:
		return nil
	}
}

// startProfile starts a CPU profile into prefix.cpu.pprof and writes the
// allocations so far to prefix.allocs-base.pprof; the returned function
// stops it and writes prefix.allocs.pprof. An empty prefix profiles
// nothing.
func startProfile(prefix string) (func() error, error) {
	if prefix == "" {
		return func() error { return nil }, nil
	}
	if err := writeProfile("allocs", prefix+".allocs-base.pprof"); err != nil {
		return nil, err
	}
	f, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return err
		}
		return writeProfile("allocs", prefix+".allocs.pprof")
	}, nil
}

func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// processCPU returns the CPU time (user and system) process pid has used,
// or 0 when it cannot be read.
func processCPU(pid int) time.Duration {
	if pid == os.Getpid() {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // clock ticks: 100 a second on Linux
}

// loadAverage returns the machine's 1-minute load average, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}
