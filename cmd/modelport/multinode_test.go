package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/state"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestMultiNode runs the platform as it runs on several machines: a
// three-server NATS cluster (separate nats-server processes joined by
// cluster routes over TLS) holding every stream and bucket with three
// replicas, two routers, two workers and one deployer, scaler and billing,
// each its own process with its own NATS identity, over TLS, all started
// at once. While clients send chat completions through both routers, it
// kills (SIGKILL) one router and the NATS server leading the USAGE stream,
// and checks that
//   - every request through the surviving router succeeds, before, during
//     and after the kills, the JetStream election included;
//   - every stream keeps three replicas and a leader on the two servers
//     left, and takes new events (a service deployed after the kills runs
//     and answers);
//   - billing stores exactly one usage record per answered request, with
//     the tokens the client was told, and none for a request no router
//     answered; its usage API agrees, and the USAGE stream holds exactly as
//     many events as ClickHouse: no usage event is lost or counted twice;
//   - the killed server, started again, catches up on every stream.
//
// A request in flight on the killed router has no answer; it may have been
// billed (the engine answered, the router stored the event and died before
// replying) and the test allows that, once.
func TestMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds six binaries and runs a NATS cluster; run without -short")
	}
	bin := buildServices(t)
	sec := newNATSSecurity(t)
	nodes := startNATSCluster(t, buildNATSServer(t, bin), 3, sec)
	chAddr, chDB := chtest.New(t)
	c := &cluster{
		bin:   bin,
		seeds: sec.seeds,
		common: []string{
			"MODELPORT_NATS_URL=" + natsURLs(nodes),
			"MODELPORT_JETSTREAM_REPLICAS=3",
			"MODELPORT_LOG_LEVEL=debug",
			"MODELPORT_ADMIN_KEY=" + testAdminKey,
			"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
			"MODELPORT_CLICKHOUSE_DB=" + chDB,
			"MODELPORT_SCALER_SWEEP=500ms",
		},
		urls:  map[string]string{},
		procs: map[string]*proc{},
	}
	c.common = append(c.common, sec.clientEnv()...)
	// All at once, as on many machines: each service creates the streams
	// and buckets it owns and waits for the others'.
	for _, s := range []string{"deployer", "scaler", "billing"} {
		c.launch(t, s, s)
	}
	c.launch(t, "router-1", "router")
	c.launch(t, "router-2", "router")
	c.launch(t, "worker-1", "inference-worker", "MODELPORT_WORKER_ID=worker-1", "MODELPORT_WORKER_CAPACITY=4")
	c.launch(t, "worker-2", "inference-worker", "MODELPORT_WORKER_ID=worker-2", "MODELPORT_WORKER_CAPACITY=4")
	for name := range c.procs {
		c.waitHealthy(t, name)
	}

	svc := c.deploy(t, "multinode", 2)
	if held := workersOf(c.instances(t, svc.ID)); len(held) != 2 {
		t.Logf("both instances on one worker: %v", held)
	}

	// Every stream and bucket is replicated on all three servers.
	streams := waitStreamsCurrent(t, nodes, 3)
	t.Logf("streams, replicated on 3 servers: %v", sortedKeys(streams))

	victim := nodeNamed(t, nodes, streams["USAGE"].Cluster.Leader)
	var survivors []*natsNode
	for _, nd := range nodes {
		if nd != victim {
			survivors = append(survivors, nd)
		}
	}

	load := newLoadGen(svc.AccessName, c.urls["router-1"], c.urls["router-2"])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := load.run(ctx, 4)

	// A few seconds of traffic through both routers first.
	started := time.Now()
	eventually(t, 30*time.Second, "traffic through both routers", func() error {
		by := load.answeredBy()
		if by[c.urls["router-1"]] < 20 || by[c.urls["router-2"]] < 20 || time.Since(started) < 3*time.Second {
			return fmt.Errorf("answered %v after %s", by, time.Since(started).Round(time.Millisecond))
		}
		return nil
	})
	killedAt := time.Now()
	load.drop(c.urls["router-2"])
	c.procs["router-2"].kill(t)
	victim.proc.kill(t)
	t.Logf("killed router-2 and %s (USAGE leader; meta leader was %s) after %d answered requests",
		victim.name, metaLeader(survivors[0]), load.answeredCount())

	// Traffic goes on through router-1 for longer than a JetStream
	// election can take (at most 9s after a leader stops answering).
	before := load.answeredCount()
	eventually(t, 60*time.Second, "requests answered after the kills", func() error {
		if n := load.answeredCount() - before; n < 60 || time.Since(killedAt) < 12*time.Second {
			return fmt.Errorf("%d answered since the kills, %s ago", n, time.Since(killedAt).Round(time.Second))
		}
		return nil
	})
	cancel()
	<-done
	rep := load.report(killedAt)
	t.Logf("load: %s", rep)
	for _, f := range rep.failures {
		t.Errorf("request through a live router failed: %s", f)
	}

	// The streams stay available on the two servers left: each still has
	// three replicas in its configuration, a leader, and a current follower;
	// the killed server is an offline follower.
	eventually(t, 30*time.Second, "streams led on the surviving servers", func() error {
		got, err := leaderViews(survivors)
		if err != nil {
			return err
		}
		for name := range streams {
			s, ok := got[name]
			if !ok {
				return fmt.Errorf("stream %s missing", name)
			}
			if s.Config.Replicas != 3 {
				return fmt.Errorf("stream %s has %d replicas, want 3", name, s.Config.Replicas)
			}
			current := 0
			for _, f := range s.Cluster.Replicas {
				if f.Current {
					current++
				}
			}
			if current != 1 {
				return fmt.Errorf("stream %s (led by %s): %d current followers, want 1", name, s.Cluster.Leader, current)
			}
		}
		return nil
	})
	// ... and take new events: a service deployed now goes through the
	// DEPLOY, SCALE and WORKER streams and four buckets.
	after := c.deploy(t, "after-kills", 1)
	running := time.Now()
	eventually(t, 30*time.Second, "router-1 routes the service deployed after the kills", func() error {
		if s := c.chatVia(t, "router-1", after.AccessName); s != 200 {
			return fmt.Errorf("status %d", s)
		}
		return nil
	})
	t.Logf("router-1 routed the new service %s after it was running", time.Since(running).Round(time.Millisecond))

	// Billing has exactly one record per answered request, with the
	// tokens the client was told; its API says the same, and JetStream
	// holds as many usage events as ClickHouse has records.
	billed := checkBilled(t, chAddr, chDB, svc.ID, rep)
	eventually(t, 30*time.Second, "usage API agrees with ClickHouse", func() error {
		var got usageTotals
		if s := call(t, "GET", c.urls["billing"]+"/api/v1/usage?service_id="+svc.ID, testAdminKey, nil, &got); s != 200 {
			return fmt.Errorf("status %d", s)
		}
		if got != billed {
			return fmt.Errorf("usage API %+v, ClickHouse %+v", got, billed)
		}
		return nil
	})
	eventually(t, 30*time.Second, "every usage event in JetStream stored once in ClickHouse", func() error {
		streams, err := leaderViews(survivors)
		if err != nil {
			return err
		}
		stored, err := countEvents(chAddr, chDB)
		if err != nil {
			return err
		}
		if n := streams["USAGE"].State.Messages; n != stored {
			return fmt.Errorf("USAGE stream has %d events, ClickHouse %d", n, stored)
		}
		return nil
	})

	// The killed server comes back and catches up on every stream.
	restarted := time.Now()
	victim.start(t, victim.proc.cmd.Path)
	waitStreamsCurrent(t, nodes, 3)
	t.Logf("%s restarted and current on every stream within %s", victim.name, time.Since(restarted).Round(time.Millisecond))
}

// chatVia sends one chat completion through the named router.
func (c *cluster) chatVia(t *testing.T, router, model string) int {
	t.Helper()
	return call(t, "POST", c.urls[router]+"/v1/chat/completions", testAdminKey, map[string]any{
		"model": model, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
	}, nil)
}

// loadGen sends chat completions with the official client through a set of
// routers, round robin, from several goroutines, and records each outcome
// by the request ID it sent.
type loadGen struct {
	model  string
	prefix string // of request IDs: "mn" unless set before run

	mu       sync.Mutex
	routers  []string
	answered map[string]answer // request ID -> what the client was told
	unknown  map[string]string // request ID -> error, for requests to a router that died under them
	failures []string          // requests a live router answered with an error
	next     int
	count    atomic.Int64
}

// answer is what a client was told about a completed request.
type answer struct {
	router           string
	at               time.Time
	latency          time.Duration
	prompt, complete int64
}

func newLoadGen(model string, routers ...string) *loadGen {
	return &loadGen{model: model, prefix: "mn", routers: routers, answered: map[string]answer{}, unknown: map[string]string{}}
}

// drop stops sending new requests to router; requests already sent to it
// finish as they do.
func (l *loadGen) drop(router string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.routers = slices.DeleteFunc(l.routers, func(r string) bool { return r == router })
}

// pick returns the next router, round robin, or "" once every router is
// dropped.
func (l *loadGen) pick() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.routers) == 0 {
		return ""
	}
	l.next++
	return l.routers[l.next%len(l.routers)]
}

// run starts n clients that send requests until ctx ends or every router
// is dropped; the returned channel closes once they have all stopped.
func (l *loadGen) run(ctx context.Context, n int) <-chan struct{} {
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				if !l.send(ctx, fmt.Sprintf("%s-%d-%d", l.prefix, g, i), 8+i%16) {
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// send sends one request and records its outcome; it reports false, and
// sends nothing, once every router is dropped.
func (l *loadGen) send(ctx context.Context, id string, maxTokens int) bool {
	router := l.pick()
	if router == "" {
		return false
	}
	client := openai.NewClient(option.WithBaseURL(router+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))
	start := time.Now()
	// The request runs to its end even when the test stops the load: an
	// abandoned request would be billed without the client knowing.
	resp, err := client.Chat.Completions.New(context.WithoutCancel(ctx), openai.ChatCompletionNewParams{
		Model:     l.model,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Count the replicas, please.")},
		MaxTokens: openai.Int(int64(maxTokens)),
	}, option.WithHeader("X-Request-Id", id), option.WithRequestTimeout(30*time.Second))
	took := time.Since(start)
	l.mu.Lock()
	defer l.mu.Unlock()
	var apiErr *openai.Error
	switch {
	case err == nil:
		l.answered[id] = answer{router: router, at: start, latency: took, prompt: resp.Usage.PromptTokens, complete: resp.Usage.CompletionTokens}
		l.count.Add(1)
	case !slices.Contains(l.routers, router) && !errors.As(err, &apiErr):
		// The router died with the request in flight: it may or may not
		// have been answered and billed.
		l.unknown[id] = err.Error()
	default:
		l.failures = append(l.failures, fmt.Sprintf("%s via %s after %s: %v", id, router, took.Round(time.Millisecond), err))
	}
	return true
}

func (l *loadGen) answeredCount() int { return int(l.count.Load()) }

// answeredBy counts the answered requests per router.
func (l *loadGen) answeredBy() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	by := map[string]int{}
	for _, a := range l.answered {
		by[a.router]++
	}
	return by
}

// loadReport sums up a load run around the moment of the kills.
type loadReport struct {
	answered map[string]answer
	unknown  map[string]string
	failures []string
	// Requests answered, per second, and latency percentiles: of those
	// over before the kills, of those in flight at the kills, and of those
	// sent after.
	before, across, after phase
}

// phase is one stretch of a load run.
type phase struct {
	requests      int
	perSecond     float64
	p50, p99, max time.Duration
}

func (p phase) String() string {
	return fmt.Sprintf("%d requests, %.0f/s, latency p50 %s p99 %s max %s", p.requests, p.perSecond,
		p.p50.Round(time.Millisecond), p.p99.Round(time.Millisecond), p.max.Round(time.Millisecond))
}

func (r loadReport) String() string {
	return fmt.Sprintf("before the kills (2 routers): %s; in flight at the kills: %d requests, the slowest %s; after (1 router): %s; %d outcomes unknown (in flight on the killed router), %d failed",
		r.before, r.across.requests, r.across.max.Round(time.Millisecond), r.after, len(r.unknown), len(r.failures))
}

func (l *loadGen) report(killedAt time.Time) loadReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadReport{answered: l.answered, unknown: l.unknown, failures: l.failures}
	var before, across, after []answer
	for _, a := range l.answered {
		switch {
		case !a.at.Before(killedAt):
			after = append(after, a)
		case a.at.Add(a.latency).After(killedAt):
			across = append(across, a)
		default:
			before = append(before, a)
		}
	}
	r.before, r.across, r.after = summarize(before), summarize(across), summarize(after)
	return r
}

func summarize(as []answer) phase {
	if len(as) == 0 {
		return phase{}
	}
	sort.Slice(as, func(i, j int) bool { return as[i].latency < as[j].latency })
	first, last := as[0].at, as[0].at.Add(as[0].latency)
	for _, a := range as {
		if a.at.Before(first) {
			first = a.at
		}
		if end := a.at.Add(a.latency); end.After(last) {
			last = end
		}
	}
	pct := func(p float64) time.Duration { return as[min(len(as)-1, int(p*float64(len(as))))].latency }
	return phase{
		requests:  len(as),
		perSecond: float64(len(as)) / last.Sub(first).Seconds(),
		p50:       pct(0.50), p99: pct(0.99), max: as[len(as)-1].latency,
	}
}

// countEvents counts the distinct usage events in ClickHouse, of every
// service.
func countEvents(chAddr, chDB string) (uint64, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var n uint64
	err = conn.QueryRow(context.Background(), "SELECT uniqExact(event_id) FROM "+chDB+".usage_events").Scan(&n)
	return n, err
}

// checkBilled waits until billing's ClickHouse table holds one event for
// every answered request with the tokens the client was told, none for a
// request that failed, and at most one for a request whose router died
// under it. It returns the service's billed totals.
func checkBilled(t *testing.T, chAddr, chDB, serviceID string, rep loadReport) usageTotals {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type row struct {
		events           uint64
		prompt, complete uint64
	}
	var billed map[string]row
	eventually(t, 60*time.Second, "every answered request billed", func() error {
		rows, err := conn.Query(context.Background(),
			"SELECT request_id, uniqExact(event_id), sum(prompt_tokens), sum(completion_tokens) FROM "+chDB+".usage_events FINAL WHERE service_id = ? GROUP BY request_id",
			serviceID)
		if err != nil {
			return err
		}
		defer rows.Close()
		billed = map[string]row{}
		for rows.Next() {
			var id string
			var r row
			if err := rows.Scan(&id, &r.events, &r.prompt, &r.complete); err != nil {
				return err
			}
			billed[id] = r
		}
		if err := rows.Err(); err != nil {
			return err
		}
		missing := 0
		for id := range rep.answered {
			if _, ok := billed[id]; !ok {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d answered requests not billed yet", missing, len(rep.answered))
		}
		return nil
	})
	var want, got row
	for id, a := range rep.answered {
		b := billed[id]
		if b.events != 1 || b.prompt != uint64(a.prompt) || b.complete != uint64(a.complete) {
			t.Errorf("request %s: billed %d events, %d+%d tokens; the client was told %d+%d", id, b.events, b.prompt, b.complete, a.prompt, a.complete)
		}
		want.events++
		want.prompt += uint64(a.prompt)
		want.complete += uint64(a.complete)
		got.events += b.events
		got.prompt += b.prompt
		got.complete += b.complete
	}
	lost := 0
	for id, b := range billed {
		if _, ok := rep.answered[id]; ok {
			continue
		}
		if _, ok := rep.unknown[id]; ok && b.events == 1 {
			lost++ // answered by the killed router, but the client never heard
			continue
		}
		t.Errorf("request %s billed (%d events) though no client was answered", id, b.events)
	}
	if got != want {
		t.Errorf("billed for answered requests %+v, want %+v", got, want)
	}
	t.Logf("billed %d answered requests exactly (%d prompt + %d completion tokens); %d of %d requests in flight on the killed router were billed, the rest were not",
		got.events, got.prompt, got.complete, lost, len(rep.unknown))
	total := usageTotals{ServiceID: serviceID}
	for _, b := range billed {
		total.Requests += b.events
		total.PromptTokens += b.prompt
		total.CompletionTokens += b.complete
	}
	total.TotalTokens = total.PromptTokens + total.CompletionTokens
	return total
}

// leaderViews returns every stream as its leader reports it: only the
// leader knows whether each follower is current. It fails when a stream
// has no leader among nodes, or the nodes disagree on which streams exist.
func leaderViews(nodes []*natsNode) (map[string]streamReport, error) {
	views := map[string]streamReport{}
	var names []string
	for i, nd := range nodes {
		got, err := nd.streams()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", nd.name, err)
		}
		if i == 0 {
			names = sortedKeys(got)
		} else if !slices.Equal(sortedKeys(got), names) {
			return nil, fmt.Errorf("%s has streams %v, %s has %v", nodes[0].name, names, nd.name, sortedKeys(got))
		}
		for name, s := range got {
			if s.Cluster.Leader == nd.name {
				views[name] = s
			}
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no streams")
	}
	for _, name := range names {
		if _, ok := views[name]; !ok {
			return nil, fmt.Errorf("stream %s has no leader among the servers", name)
		}
	}
	return views, nil
}

// waitStreamsCurrent waits until every stream has the given replicas, a
// leader and every follower current, and returns the streams as their
// leaders report them.
func waitStreamsCurrent(t *testing.T, nodes []*natsNode, replicas int) map[string]streamReport {
	t.Helper()
	var streams map[string]streamReport
	eventually(t, 60*time.Second, "every stream current on every server", func() error {
		var err error
		if streams, err = leaderViews(nodes); err != nil {
			return err
		}
		for name, s := range streams {
			if s.Config.Replicas != replicas || len(s.Cluster.Replicas) != replicas-1 {
				return fmt.Errorf("stream %s: %d replicas, %d followers", name, s.Config.Replicas, len(s.Cluster.Replicas))
			}
			for _, f := range s.Cluster.Replicas {
				if !f.Current || f.Offline {
					return fmt.Errorf("stream %s: follower %s not current", name, f.Name)
				}
			}
		}
		return nil
	})
	return streams
}

// nodeNamed returns the node with the server name.
func nodeNamed(t *testing.T, nodes []*natsNode, name string) *natsNode {
	t.Helper()
	for _, nd := range nodes {
		if nd.name == name {
			return nd
		}
	}
	t.Fatalf("no NATS server named %q", name)
	return nil
}

// metaLeader returns the JetStream meta leader as nd sees it.
func metaLeader(nd *natsNode) string {
	var jsz jszReport
	if err := getJSON(nd.monitor+"/jsz", &jsz); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return jsz.Meta.Leader
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// workersOf counts a service's instances per worker.
func workersOf(list []state.Instance) map[string]int {
	held := map[string]int{}
	for _, in := range list {
		held[in.WorkerID]++
	}
	return held
}
