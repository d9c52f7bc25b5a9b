package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/app"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }

// counter is a slog.Handler that counts records whose message contains
// one of its keys, so a test can see billing back off and retry.
type counter struct {
	keys []string
	mu   sync.Mutex
	n    map[string]int
}

func (c *counter) Enabled(context.Context, slog.Level) bool { return true }
func (c *counter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.keys {
		if strings.Contains(r.Message, k) {
			c.n[k]++
		}
	}
	return nil
}
func (c *counter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *counter) WithGroup(string) slog.Handler      { return c }
func (c *counter) count(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// world is a JetStream server with users, services and a publisher.
type world struct {
	t      *testing.T
	ctx    context.Context
	bus    *natsx.Bus        // the test's own, as the test admin
	svcBus *natsx.Bus        // billing's, as its identity
	keys   map[string]string // owner name → secret
	owners map[string]auth.Key
	admin  string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// Billing runs as its NATS identity (w.billing); the test plays the
	// other services as the test admin (w.bus).
	ns := natstest.New(t)
	bus := ns.Bus(t, natstest.Admin)
	w := &world{t: t, ctx: ctx, bus: bus, svcBus: ns.Bus(t, access.Billing), keys: map[string]string{}, owners: map[string]auth.Key{}}
	ring := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	for _, name := range []string{"alice", "bob", "admin"} {
		secret := auth.NewSecret()
		k := auth.NewKey(secret, auth.NewOwnerID(), name == "admin")
		if err := ring.Put(ctx, k); err != nil {
			t.Fatal(err)
		}
		w.keys[name], w.owners[name] = secret, k
	}
	w.admin = w.keys["admin"]
	return w
}

func (w *world) service(owner, method string, created time.Time) state.Service {
	w.t.Helper()
	k := w.owners[owner]
	s := state.Service{ID: events.NewMeta().ID, OwnerID: k.OwnerID, Name: "svc", AccessName: "u-" + k.OwnerID + "/svc",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Instances: 1, Status: state.StatusRunning,
		BillingMethod: method, CreatedAt: created, UpdatedAt: created}
	if err := state.Put(w.ctx, w.bus.KV(state.BucketServices), s.ID, s); err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *world) publish(ev events.Event) {
	if err := w.bus.Publisher.Publish(w.ctx, ev); err != nil {
		w.t.Error(err)
	}
}

// publishAs publishes ev with another Nats-Msg-Id, as a publisher retrying
// after JetStream's duplicate window would.
func (w *world) publishAs(ev events.Event, msgID string) {
	data, _ := json.Marshal(ev)
	msg := nats.NewMsg(ev.Subject())
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	if _, err := w.bus.JS.PublishMsg(w.ctx, msg); err != nil {
		w.t.Error(err)
	}
}

func (w *world) publishRaw(subject string, data []byte) {
	if _, err := w.bus.JS.Publish(w.ctx, subject, data); err != nil {
		w.t.Error(err)
	}
}

// billing starts billing on the world's bus and serves its API.
func (w *world) billing(cfg app.Config, log *slog.Logger) (runner.Service, string) {
	w.t.Helper()
	svc, err := app.Start(w.ctx, cfg, w.svcBus, log)
	if err != nil {
		w.t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler)
	w.t.Cleanup(srv.Close)
	return svc, srv.URL
}

func stop(svc runner.Service) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc.Stop(ctx)
}

func getJSON(url, secret string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s: %v", within, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ledger is the expected bill, kept the way billing documents it: tokens
// summed per service, UTC hour and API key, each line's cost rounded half
// up to a micro-USD.
type ledger struct {
	mu    sync.Mutex
	lines map[string]map[[2]string]*[3]uint64 // service → (hour, key) → requests, prompt, completion
}

func newLedger() *ledger { return &ledger{lines: map[string]map[[2]string]*[3]uint64{}} }

func (l *ledger) add(ev events.RequestCompletedV1) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.lines[ev.ServiceID]
	if m == nil {
		m = map[[2]string]*[3]uint64{}
		l.lines[ev.ServiceID] = m
	}
	key := [2]string{ev.OccurredAt.UTC().Truncate(time.Hour).Format(time.RFC3339), ev.APIKeyID}
	if m[key] == nil {
		m[key] = &[3]uint64{}
	}
	m[key][0]++
	m[key][1] += uint64(ev.PromptTokens)
	m[key][2] += uint64(ev.CompletionTokens)
}

// want is a service's expected totals: requests, prompt and completion
// tokens, and cost.
func (l *ledger) want(serviceID, model string) [4]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	price := billing.DefaultSchedule().TokenRates().At(model, time.Now())
	var out [4]uint64
	for _, v := range l.lines[serviceID] {
		out[0] += v[0]
		out[1] += v[1]
		out[2] += v[2]
		out[3] += (v[1]*price.InputMicrosPerMTok + v[2]*price.OutputMicrosPerMTok + 500_000) / 1_000_000
	}
	return out
}

func got(u billing.Usage) [4]uint64 {
	return [4]uint64{u.Requests, u.PromptTokens, u.CompletionTokens, u.CostMicros}
}

func randomUsage(rng *rand.Rand, svc state.Service, start time.Time) events.RequestCompletedV1 {
	m := events.NewMeta()
	m.OccurredAt = start.Add(time.Duration(rng.Int64N(int64(72 * time.Hour)))).Truncate(time.Millisecond)
	prompt, completion := rng.IntN(4000), rng.IntN(1000)
	status := 200
	if rng.IntN(20) == 0 {
		status = []int{400, 429, 500, 503}[rng.IntN(4)]
	}
	return events.RequestCompletedV1{
		Meta: m, RequestID: "req-" + m.ID[24:], ServiceID: svc.ID, OwnerID: svc.OwnerID, AccessName: svc.AccessName,
		BaseModel: svc.BaseModel, APIKeyID: fmt.Sprintf("00000000-0000-4000-8000-00000000000%d", rng.IntN(5)),
		InstanceID: "0b9d7a52-3c1e-4f6a-9b8c-7d6e5f4a3b2c", Endpoint: "/v1/chat/completions", Status: status,
		PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion,
		StartedAt: m.OccurredAt.Add(-time.Second), FinishedAt: m.OccurredAt,
	}
}

// checkExact compares every view of a service's usage with the ledger:
// the totals, each grouping's rows, and ClickHouse itself.
func checkExact(t *testing.T, url, secret string, conn ch.Conn, db string, svc state.Service, l *ledger) {
	t.Helper()
	want := l.want(svc.ID, svc.BaseModel)
	base := url + "/api/v1/usage?service_id=" + svc.ID
	for _, group := range []string{"hour", "day", "api_key"} {
		var u billing.Usage
		if err := getJSON(base+"&group_by="+group, secret, &u); err != nil {
			t.Fatal(err)
		}
		if got(u) != want {
			t.Errorf("group_by=%s totals %v, want %v", group, got(u), want)
		}
		var rows [4]uint64
		for _, r := range u.Data {
			rows[0] += r.Requests
			rows[1] += r.PromptTokens
			rows[2] += r.CompletionTokens
			rows[3] += r.CostMicros
		}
		if rows != want {
			t.Errorf("group_by=%s rows sum to %v, want %v", group, rows, want)
		}
	}
	var raw, rolled [3]uint64
	if err := conn.QueryRow(context.Background(), "SELECT uniqExact(event_id), sum(p), sum(c) FROM (SELECT event_id, any(prompt_tokens) AS p, any(completion_tokens) AS c FROM "+db+".usage_events WHERE service_id = ? GROUP BY event_id)", svc.ID).
		Scan(&raw[0], &raw[1], &raw[2]); err != nil {
		t.Fatal(err)
	}
	want3 := [3]uint64{want[0], want[1], want[2]}
	if raw != want3 {
		t.Errorf("ClickHouse usage_events %v, want %v", raw, want3)
	}
	// The rollup job fills closed hours, and fills them again as late
	// usage notes them: it matches the raw events hour for hour.
	eventually(t, 30*time.Second, "usage_hourly exact", func() error {
		closed := time.Now().UTC().Truncate(time.Hour).Unix()
		var rawClosed [3]uint64
		if err := conn.QueryRow(context.Background(), "SELECT uniqExact(event_id), sum(p), sum(c) FROM (SELECT event_id, any(prompt_tokens) AS p, any(completion_tokens) AS c FROM "+db+".usage_events WHERE service_id = ? AND occurred_at < toDateTime(?) GROUP BY event_id)", svc.ID, closed).
			Scan(&rawClosed[0], &rawClosed[1], &rawClosed[2]); err != nil {
			return err
		}
		if err := conn.QueryRow(context.Background(), "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM "+db+".usage_hourly FINAL WHERE service_id = ? AND hour < toDateTime(?)", svc.ID, closed).
			Scan(&rolled[0], &rolled[1], &rolled[2]); err != nil {
			return err
		}
		if rolled != rawClosed || rolled[0] == 0 {
			return fmt.Errorf("usage_hourly %v, raw events of closed hours %v", rolled, rawClosed)
		}
		return nil
	})
}

// TestRandomUsageIsExact publishes random requests' usage for three
// services with duplicate publishes, poison events and a billing restart
// in the middle, and checks that every total and breakdown is exact.
func TestRandomUsageIsExact(t *testing.T) {
	w := newWorld(t)
	addr, db := chtest.New(t)
	cfg := app.Config{ClickHouseAddr: addr, ClickHouseDB: db, BatchSize: 200, BatchWait: 50 * time.Millisecond,
		RollupEvery: 200 * time.Millisecond, RollupGrace: time.Nanosecond, RollupSettle: time.Nanosecond}
	start := time.Now().UTC().Add(-80 * time.Hour)
	services := []state.Service{
		w.service("alice", state.BillingPerToken, start),
		w.service("alice", state.BillingPerToken, start),
		w.service("bob", state.BillingPerToken, start),
	}
	l := newLedger()
	rng := rand.New(rand.NewPCG(7, 11))
	const n = 3000

	billingSvc, url := w.billing(cfg, quiet)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stored := func() uint64 {
		var c uint64
		_ = conn.QueryRow(w.ctx, "SELECT count() FROM "+db+".usage_events").Scan(&c)
		return c
	}
	poison := 0
	for i := range n {
		if i == n/2 {
			// Restart billing mid-stream, once it has stored some.
			eventually(t, 30*time.Second, "billing stores usage", func() error {
				if stored() == 0 {
					return fmt.Errorf("nothing stored yet")
				}
				return nil
			})
			stop(billingSvc)
			billingSvc, url = w.billing(cfg, quiet)
		}
		ev := randomUsage(rng, services[rng.IntN(len(services))], start)
		l.add(ev)
		w.publish(ev)
		switch r := rng.IntN(100); {
		case r < 10:
			w.publish(ev) // retried publish: JetStream keeps one
		case r < 15:
			w.publishAs(ev, ev.ID+"-late") // a second message with the same event
		case r < 16:
			w.publishRaw(events.SubjectRequestCompletedV1, []byte(`{"event_id":"`+ev.ID+`","total_tokens":"many"}`))
			poison++
		}
	}
	defer stop(billingSvc)

	eventually(t, 60*time.Second, "every service's usage billed exactly", func() error {
		for _, s := range services {
			var u billing.Usage
			if err := getJSON(url+"/api/v1/usage?service_id="+s.ID, w.admin, &u); err != nil {
				return err
			}
			if want := l.want(s.ID, s.BaseModel); got(u) != want {
				return fmt.Errorf("service %s: %v, want %v", s.ID, got(u), want)
			}
		}
		return nil
	})
	for _, s := range services {
		owner := "alice"
		if s.OwnerID == w.owners["bob"].OwnerID {
			owner = "bob"
		}
		checkExact(t, url, w.keys[owner], conn, db, s, l)
	}
	var dl struct {
		Count uint64 `json:"count"`
	}
	if err := getJSON(url+"/api/v1/usage/deadletters", w.admin, &dl); err != nil {
		t.Fatal(err)
	}
	if poison == 0 || dl.Count != uint64(poison) {
		t.Errorf("dead letters %d, want the %d poison events", dl.Count, poison)
	}
}

// TestClickHouseOutage stops a private ClickHouse in the middle of a
// stream of usage and starts it again on the same folder and port: billing
// backs off, the events wait in JetStream, and everything arrives once.
func TestClickHouseOutage(t *testing.T) {
	// This test stops and starts its own server, so it needs the binary
	// even where MODELPORT_TEST_CLICKHOUSE_ADDR names a shared one. Like
	// every ClickHouse test, it fails without one.
	if _, err := chlocal.Binary(); err != nil {
		t.Fatalf("ClickHouse is required: %v (install the Debian package clickhouse-server)", err)
	}
	w := newWorld(t)
	dir := t.TempDir()
	srv, err := chlocal.Start(w.ctx, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	running := srv
	defer func() { running.Stop() }()
	_, portStr, _ := net.SplitHostPort(srv.Addr)
	var port int
	fmt.Sscan(portStr, &port)

	logs := &counter{keys: []string{"batch not stored"}, n: map[string]int{}}
	cfg := app.Config{ClickHouseAddr: srv.Addr, ClickHouseDB: "outage", BatchSize: 100, BatchWait: 50 * time.Millisecond,
		RollupEvery: 200 * time.Millisecond, RollupGrace: time.Nanosecond, RollupSettle: time.Nanosecond}
	billingSvc, url := w.billing(cfg, slog.New(logs))
	defer stop(billingSvc)
	svc := w.service("alice", state.BillingPerToken, time.Now().Add(-80*time.Hour))
	l := newLedger()
	rng := rand.New(rand.NewPCG(3, 5))

	count := func() (uint64, error) {
		conn, err := ch.Open(&ch.Options{Addr: []string{srv.Addr}, DialTimeout: time.Second})
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		var c uint64
		err = conn.QueryRow(w.ctx, "SELECT count() FROM outage.usage_events").Scan(&c)
		return c, err
	}
	// A steady stream of usage until the outage has lasted a while.
	var published atomic.Int64
	enough, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-enough:
				return
			case <-time.After(2 * time.Millisecond):
			}
			ev := randomUsage(rng, svc, time.Now().Add(-72*time.Hour))
			l.add(ev)
			w.publish(ev)
			published.Add(1)
		}
	}()
	eventually(t, 30*time.Second, "usage reaches ClickHouse before the outage", func() error {
		if c, err := count(); err != nil || c == 0 {
			return fmt.Errorf("stored %d (%v)", c, err)
		}
		return nil
	})
	srv.Stop()
	stoppedAt := published.Load()
	eventually(t, 60*time.Second, "billing retries while ClickHouse is down, events waiting in JetStream", func() error {
		if n := published.Load() - stoppedAt; n < 300 {
			return fmt.Errorf("%d events published during the outage", n)
		}
		if n := logs.count("batch not stored"); n < 2 {
			return fmt.Errorf("%d failed batches so far", n)
		}
		c, err := w.bus.JS.Consumer(w.ctx, events.StreamUsage, "billing-usage")
		if err != nil {
			return err
		}
		info, err := c.Info(w.ctx)
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) == 0 {
			return fmt.Errorf("nothing waiting in JetStream")
		}
		return nil
	})
	close(enough)
	<-done

	running, err = chlocal.Start(w.ctx, dir, port)
	if err != nil {
		t.Fatalf("restart ClickHouse on the same folder and port: %v", err)
	}
	eventually(t, 60*time.Second, "every event billed once after ClickHouse returns", func() error {
		var u billing.Usage
		if err := getJSON(url+"/api/v1/usage?service_id="+svc.ID, w.keys["alice"], &u); err != nil {
			return err
		}
		if want := l.want(svc.ID, svc.BaseModel); got(u) != want {
			return fmt.Errorf("%v, want %v", got(u), want)
		}
		return nil
	})
	conn, err := ch.Open(&ch.Options{Addr: []string{running.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	checkExact(t, url, w.keys["alice"], conn, "outage", svc, l)
}
