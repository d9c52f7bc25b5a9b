package main

// Fault tests of the router against engines that misbehave on cue: one a
// request crashes, one whose machine is gone, one that hangs mid-stream;
// and a flood of made-up API keys. The router and billing run as in their
// own processes (each on its own NATS connection) over a real NATS server
// and ClickHouse; the test writes the services and instances into the
// buckets, so the instances can be engines of its own. `make test-faults`
// runs them.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	billing "github.com/modelport/modelport/services/billing/app"
	router "github.com/modelport/modelport/services/router/app"
)

// routerRig is a router and billing over real NATS and ClickHouse, with
// services and instances of the test's making.
type routerRig struct {
	t          *testing.T
	routerURL  string
	billingURL string
	routerBus  *natsx.Bus // the router's own connection
	bus        *natsx.Bus // the test's
}

// startRouterRig starts billing and a router with env's settings on top of
// the test's.
func startRouterRig(t *testing.T, env map[string]string) *routerRig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := natstest.New(t)
	chAddr, chDB := chtest.New(t)
	settings := map[string]string{"MODELPORT_CLICKHOUSE_ADDR": chAddr, "MODELPORT_CLICKHOUSE_DB": chDB}
	for k, v := range env {
		settings[k] = v
	}
	getenv := config.Map(settings)
	log := testLogger()
	r := &routerRig{t: t, bus: ns.Bus(t, natstest.Admin), routerBus: ns.Bus(t, access.Router)}
	if _, _, err := auth.NewKeyring(r.bus.KV(state.BucketAPIKeys)).EnsureAdmin(ctx, testAdminKey); err != nil {
		t.Fatal(err)
	}
	serve := func(svc runner.Service) string {
		srv := httptest.NewServer(httpx.Edge(runner.WithHealth(svc.Handler, r.bus, "", svc.Ready), "test", log))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { svc.Stop(context.Background()) })
		return srv.URL
	}
	bcfg, err := billing.ConfigFromEnv(getenv)
	if err != nil {
		t.Fatal(err)
	}
	b, err := billing.Start(ctx, bcfg, ns.Bus(t, access.Billing), log)
	if err != nil {
		t.Fatal(err)
	}
	r.billingURL = serve(b)
	rcfg, err := router.ConfigFromEnv(getenv)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := router.Start(ctx, rcfg, r.routerBus, log)
	if err != nil {
		t.Fatal(err)
	}
	r.routerURL = serve(rs)
	return r
}

// tenant is an owner with a key and a running text-generation service.
type tenant struct {
	key string
	svc state.Service
}

// newTenant stores an owner's key and service.
func (r *routerRig) newTenant(name string) tenant {
	r.t.Helper()
	ctx := context.Background()
	owner := auth.NewOwnerID()
	secret := auth.NewSecret()
	if err := auth.NewKeyring(r.bus.KV(state.BucketAPIKeys)).Put(ctx, auth.NewKey(secret, owner, false)); err != nil {
		r.t.Fatal(err)
	}
	now := time.Now().UTC()
	svc := state.Service{ID: uuid.NewString(), OwnerID: owner, Name: name, AccessName: "u-" + owner + "/" + name,
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 2,
		ReadyInstances: 2, Status: state.StatusRunning, BillingMethod: "per-token", CreatedAt: now, UpdatedAt: now}
	r.put(state.BucketServices, svc.ID, svc)
	return tenant{key: secret, svc: svc}
}

// instance records a ready instance of svc at endpoint (an engine's base
// URL) and waits until the router routes to it.
func (r *routerRig) instance(tn tenant, id, endpoint string) {
	r.t.Helper()
	r.put(state.BucketInstances, tn.svc.ID+"."+id, state.Instance{ID: id, ServiceID: tn.svc.ID, WorkerID: "w1",
		Engine: "simulator", Endpoint: endpoint + "/v1", Status: state.InstanceReady})
}

func (r *routerRig) put(bucket, key string, v any) {
	r.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.bus.KV(bucket).Put(context.Background(), key, b); err != nil {
		r.t.Fatal(err)
	}
}

// chat sends a chat completion for tn from the client address from (sent
// as a trusted proxy would, when the router trusts the test's address) and
// returns the status and body.
func (r *routerRig) chat(ctx context.Context, tn tenant, content string, stream bool, from string) (int, string) {
	body, _ := json.Marshal(map[string]any{"model": tn.svc.AccessName, "stream": stream,
		"messages": []map[string]string{{"role": "user", "content": content}}})
	req, err := http.NewRequestWithContext(ctx, "POST", r.routerURL+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+tn.key)
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, string(b) + " (read: " + err.Error() + ")"
	}
	return resp.StatusCode, string(b)
}

// billed reads a service's usage totals from billing; an answer other
// than 200 (ClickHouse busy, say) is an error to retry.
func (r *routerRig) billed(serviceID string) (usageTotals, error) {
	var u usageTotals
	req, _ := http.NewRequest("GET", r.billingURL+"/api/v1/usage?service_id="+serviceID, nil)
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return u, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return u, fmt.Errorf("usage: status %d: %s", resp.StatusCode, b)
	}
	return u, json.NewDecoder(resp.Body).Decode(&u)
}

// waitKnown waits until the router's routing table holds the instance id,
// as its metrics show.
func (r *routerRig) waitKnown(id string) {
	r.t.Helper()
	eventually(r.t, 30*time.Second, "the router knows instance "+id, func() error {
		req, _ := http.NewRequest("GET", r.routerURL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+testAdminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `instance_id="`+id+`"`) {
			return fmt.Errorf("not in its metrics yet")
		}
		return nil
	})
}

// waitRoutable waits until the router answers tn.
func (r *routerRig) waitRoutable(tn tenant) {
	r.t.Helper()
	eventually(r.t, 30*time.Second, "the router routes to "+tn.svc.Name, func() error {
		if s, out := r.chat(context.Background(), tn, "are you there?", false, ""); s != 200 {
			return fmt.Errorf("status %d: %s", s, out)
		}
		return nil
	})
}

// Engine answers, as a vLLM engine writes them.
const (
	faultCompletion = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}`
)

func faultChunk(content string, completion int) string {
	return fmt.Sprintf(`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}`,
		content, completion, 12+completion)
}

// faultEngine is an engine the test controls: it counts the requests
// that reach it, answers healthy ones, and misbehaves as told.
type faultEngine struct {
	*httptest.Server
	requests atomic.Int64
	// misbehave, when set, answers a request instead; it returns false to
	// let the healthy answer through.
	misbehave func(w http.ResponseWriter, r *http.Request, body string) bool
	hold      chan struct{} // requests saying "hold" wait on it
}

func newFaultEngine(t *testing.T, misbehave func(w http.ResponseWriter, r *http.Request, body string) bool) *faultEngine {
	e := &faultEngine{misbehave: misbehave, hold: make(chan struct{})}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		b, _ := io.ReadAll(r.Body)
		body := string(b)
		if e.misbehave != nil && e.misbehave(w, r, body) {
			return
		}
		if strings.Contains(body, "hold") {
			select {
			case <-e.hold:
			case <-r.Context().Done():
				return
			}
		}
		if !strings.Contains(body, `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, faultCompletion)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i, c := range []string{"a", "b", "c"} {
			fmt.Fprintf(w, "data: %s\n\n", faultChunk(c, i+1))
		}
		fmt.Fprintf(w, "data: %s\n\ndata: [DONE]\n\n", `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`)
	}))
	t.Cleanup(e.Close)
	t.Cleanup(func() {
		select {
		case <-e.hold:
		default:
			close(e.hold)
		}
	})
	return e
}

// holdOn keeps one request outstanding on the engine of tn's instance e
// until the test ends, so the router picks tn's other instance first.
func (r *routerRig) holdOn(tn tenant, e *faultEngine) {
	r.t.Helper()
	before := e.requests.Load()
	go func() { _, _ = r.chat(context.Background(), tn, "hold", false, "") }()
	eventually(r.t, 10*time.Second, "a request held on an instance", func() error {
		if e.requests.Load() == before {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// TestFaultQueryOfDeath: a request that crashes the engine that got it is
// answered 502 and not sent to the other instance, which it would crash
// too; later requests go to the surviving instance, and only answered
// requests are billed.
func TestFaultQueryOfDeath(t *testing.T) {
	r := startRouterRig(t, nil)
	tn := r.newTenant("fragile")
	crashOnDeath := func(w http.ResponseWriter, req *http.Request, body string) bool {
		if !strings.Contains(body, "query of death") {
			return false
		}
		// The engine process dies with the request (its supervisor starts
		// it again): the connection is reset, with no answer.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
		return true
	}
	a, b := newFaultEngine(t, crashOnDeath), newFaultEngine(t, crashOnDeath)
	r.instance(tn, "i-a", a.URL)
	r.instance(tn, "i-b", b.URL)
	r.waitRoutable(tn)
	answered := 1 // waitRoutable's
	before := a.requests.Load() + b.requests.Load()

	for _, stream := range []bool{false, true} {
		s, out := r.chat(context.Background(), tn, "the query of death", stream, "")
		if s != http.StatusBadGateway {
			t.Errorf("stream %v: status %d, want 502: %s", stream, s, out)
		}
		if got := a.requests.Load() + b.requests.Load() - before; got != 1 {
			t.Fatalf("stream %v: the query of death reached engines %d times, want once", stream, got)
		}
		before++
	}
	for i := range 10 {
		if s, out := r.chat(context.Background(), tn, fmt.Sprintf("question %d", i), i%2 == 0, ""); s != 200 {
			t.Fatalf("request %d after the crash: status %d: %s", i, s, out)
		}
		answered++
	}
	eventually(t, 30*time.Second, "the answered requests billed, the crashed ones not", func() error {
		u, err := r.billed(tn.svc.ID)
		if err != nil {
			return err
		}
		if int(u.Requests) != answered {
			return fmt.Errorf("billed %d requests, want %d", u.Requests, answered)
		}
		return nil
	})
}

// blackholeAddr returns an address whose connection attempts time out, as
// to a machine that is gone: a listener whose accept queue is full.
func blackholeAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return "http://" + addr
}

// TestFaultBlackholedInstance: an instance whose machine is gone (its
// connections time out) is failed over within one dial timeout, and the
// requests after it are not sent there.
func TestFaultBlackholedInstance(t *testing.T) {
	const dial = 2 * time.Second
	r := startRouterRig(t, map[string]string{"MODELPORT_ENGINE_DIAL_TIMEOUT": dial.String()})
	tn := r.newTenant("partitioned")
	good := newFaultEngine(t, nil)
	r.instance(tn, "i-good", good.URL)
	r.waitRoutable(tn)
	// The instance that is up is busier, so the gone one is picked first.
	r.holdOn(tn, good)
	r.instance(tn, "i-gone", blackholeAddr(t))
	r.waitKnown("i-gone")

	before := good.requests.Load()
	started := time.Now()
	s, out := r.chat(context.Background(), tn, "first", false, "")
	elapsed := time.Since(started)
	if s != 200 {
		t.Fatalf("status %d, want 200 from the instance that is up: %s", s, out)
	}
	t.Logf("the first request, tried on the gone instance, answered in %v (dial timeout %v)", elapsed.Round(time.Millisecond), dial)
	if elapsed < dial {
		t.Errorf("answered in %v, before the dial timeout: the gone instance was not tried first", elapsed)
	}
	if elapsed >= 2*dial {
		t.Errorf("answered in %v: more than one dial timeout", elapsed)
	}
	const more = 20
	for i := range more {
		if s, out := r.chat(context.Background(), tn, fmt.Sprintf("next %d", i), i%2 == 1, ""); s != 200 {
			t.Fatalf("request %d: status %d: %s", i, s, out)
		}
	}
	if got := good.requests.Load() - before; got != more+1 {
		t.Errorf("the instance that is up answered %d of %d requests", got, more+1)
	}
}

// TestFaultHungStream: an engine that sends a few chunks, then nothing,
// has its stream ended with an error event once the idle timeout passes;
// the stream is billed for what was sent, and the instance leaves the
// rotation.
func TestFaultHungStream(t *testing.T) {
	const idle = 2 * time.Second
	r := startRouterRig(t, map[string]string{"MODELPORT_ENGINE_IDLE_TIMEOUT": idle.String(), "MODELPORT_STREAM_KEEPALIVE": "500ms"})
	tn := r.newTenant("wedged")
	var wedge atomic.Bool
	hung := newFaultEngine(t, func(w http.ResponseWriter, req *http.Request, body string) bool {
		if !wedge.Load() || !strings.Contains(body, `"stream":true`) {
			return false
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i, c := range []string{"a", "b", "c"} {
			fmt.Fprintf(w, "data: %s\n\n", faultChunk(c, i+1))
		}
		w.(http.Flusher).Flush()
		<-req.Context().Done() // the GPU hangs; the connection stays open
		return true
	})
	good := newFaultEngine(t, nil)
	r.instance(tn, "i-good", good.URL)
	r.waitRoutable(tn)
	// The other instance is busier, so the one that hangs is picked first.
	r.holdOn(tn, good)
	r.instance(tn, "i-hung", hung.URL)
	r.waitKnown("i-hung")
	wedge.Store(true)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := streamChatBody(ctx, http.DefaultClient, r.routerURL, tn.key, streamBody(tn.svc.AccessName, 0, "Count slowly."), nil)
	if res.readErr != nil || res.status != 200 {
		t.Fatalf("the stream did not end cleanly: %+v", res)
	}
	if res.content != 3 || res.errMessage == "" || res.done {
		t.Fatalf("got %d chunks, error event %q, [DONE] %v; want 3 chunks and an error event", res.content, res.errMessage, res.done)
	}
	// The hung instance is out: the next requests go to the other one.
	before := good.requests.Load()
	for i := range 5 {
		if s, out := r.chat(context.Background(), tn, fmt.Sprintf("after %d", i), true, ""); s != 200 || !strings.Contains(out, "[DONE]") {
			t.Fatalf("request %d after the hang: %d %s", i, s, out)
		}
	}
	if got := good.requests.Load() - before; got != 5 {
		t.Errorf("the other instance got %d of 5 requests after the hang", got)
	}
	// Billed: waitRoutable's answer (12+5), the hung stream as sent (12+3),
	// the five after it (12+3 each).
	eventually(t, 30*time.Second, "the hung stream billed for what was sent", func() error {
		u, err := r.billed(tn.svc.ID)
		if err != nil {
			return err
		}
		if u.Requests != 7 || u.PromptTokens != 7*12 || u.CompletionTokens != 5+3+5*3 {
			return fmt.Errorf("billed %d requests, %d+%d tokens; want 7, %d+%d", u.Requests, u.PromptTokens, u.CompletionTokens, 7*12, 5+3+5*3)
		}
		return nil
	})
}

// TestFaultRandomKeyFlood: 20,000 requests with made-up keys, from many
// client addresses behind a trusted proxy, while two tenants keep calling
// their services: every made-up key is refused (401, or 429 once its
// address has failed too often), the router sends NATS a bounded number
// of messages for all of them, and the tenants' requests all succeed and
// are all billed.
func TestFaultRandomKeyFlood(t *testing.T) {
	const failuresPerMinute = 20
	r := startRouterRig(t, map[string]string{"MODELPORT_TRUSTED_PROXIES": "127.0.0.1/32",
		"MODELPORT_AUTH_FAILURE_LIMIT": fmt.Sprint(failuresPerMinute)})
	tenants := []tenant{r.newTenant("alpha"), r.newTenant("beta")}
	e := newFaultEngine(t, nil)
	for i, tn := range tenants {
		r.instance(tn, fmt.Sprintf("i-%d", i), e.URL)
		r.waitRoutable(tn)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 200
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	// The tenants' traffic, from addresses of their own, until the flood
	// is over.
	var legitMu sync.Mutex
	legit := map[string]int{}
	var legitFailures []string
	var wg sync.WaitGroup
	for i, tn := range tenants {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				from := fmt.Sprintf("198.51.100.%d", 10*i+w+1)
				for n := 0; ctx.Err() == nil; n++ {
					s, out := r.chat(context.Background(), tn, fmt.Sprintf("request %d", n), n%2 == 0, from)
					legitMu.Lock()
					if s == 200 {
						legit[tn.svc.ID]++
					} else {
						legitFailures = append(legitFailures, fmt.Sprintf("%d %s", s, out))
					}
					legitMu.Unlock()
				}
			}()
		}
	}

	const flood, attackers, workers = 20000, 200, 100
	before := r.routerBus.Conn.Stats().OutMsgs
	started := time.Now()
	var unauthorized, limited, other atomic.Int64
	var firstOther atomic.Value
	next := make(chan int)
	var fw sync.WaitGroup
	for range workers {
		fw.Add(1)
		go func() {
			defer fw.Done()
			for i := range next {
				req, _ := http.NewRequest("POST", r.routerURL+"/v1/chat/completions",
					strings.NewReader(`{"model":"u-000000000000/x","messages":[{"role":"user","content":"hi"}]}`))
				req.Header.Set("Authorization", "Bearer "+auth.NewSecret())
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("203.0.113.%d", i%attackers))
				resp, err := client.Do(req)
				if err != nil {
					other.Add(1)
					firstOther.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 401:
					unauthorized.Add(1)
				case 429:
					limited.Add(1)
				default:
					other.Add(1)
					firstOther.CompareAndSwap(nil, resp.Status)
				}
			}
		}()
	}
	for i := range flood {
		next <- i
	}
	close(next)
	fw.Wait()
	elapsed := time.Since(started)
	sent := r.routerBus.Conn.Stats().OutMsgs - before
	stop()
	wg.Wait()

	t.Logf("%d made-up keys in %v: %d refused as unknown, %d as their address's limit; the router sent NATS %d messages meanwhile; tenants answered %v",
		flood, elapsed.Round(time.Millisecond), unauthorized.Load(), limited.Load(), sent, legit)
	if other.Load() > 0 {
		t.Errorf("%d made-up keys got something else than 401 or 429; first: %v", other.Load(), firstOther.Load())
	}
	// Each address may fail 20 times a minute, and its budget refills as
	// time passes: the rest are refused unread.
	refills := int64(elapsed.Minutes() * failuresPerMinute)
	if n := unauthorized.Load(); n < attackers*failuresPerMinute || n > attackers*(failuresPerMinute+refills+1) || limited.Load() == 0 {
		t.Errorf("%d refused as unknown and %d as over their address's limit; want %d to %d, and some", n, limited.Load(),
			attackers*failuresPerMinute, attackers*(failuresPerMinute+refills+1))
	}
	if len(legitFailures) > 0 {
		t.Errorf("%d tenant requests failed during the flood; first: %s", len(legitFailures), legitFailures[0])
	}
	answered := 0
	for _, n := range legit {
		answered += n
	}
	if answered == 0 {
		t.Fatal("no tenant request answered during the flood")
	}
	// What the router sent NATS: each tenant answer's usage event (a
	// retried publish now and then), load reports, and for the flood, looks
	// at the key bucket at most every 50ms; never one per made-up key.
	if limit := uint64(answered*6/5) + uint64(elapsed/(50*time.Millisecond)) + 200; sent > limit {
		t.Errorf("the router sent NATS %d messages during the flood, want at most %d (tenant answers %d)", sent, limit, answered)
	}
	// Every tenant answer is billed, once.
	for _, tn := range tenants {
		want := legit[tn.svc.ID] + 1 // and waitRoutable's
		eventually(t, 60*time.Second, tn.svc.Name+" billed", func() error {
			u, err := r.billed(tn.svc.ID)
			if err != nil {
				return err
			}
			if int(u.Requests) != want {
				return fmt.Errorf("billed %d requests, answered %d", u.Requests, want)
			}
			return nil
		})
	}
}
