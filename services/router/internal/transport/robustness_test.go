package transport

// The router against engines that misbehave on cue: reset after reading
// the body, accept and never answer, send headers and hang, trickle bytes,
// drop connection attempts; and against clients that go away, flood it
// with random keys or send hostile image requests.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/nats-io/nats.go/jetstream"
)

// rig is the real OpenAI handler over a real JetStream, with instances
// the test points at engines of its own.
type rig struct {
	t     *testing.T
	srv   *httptest.Server
	g     *gateway.Gateway
	table *routing.Table
	pub   *recordingPublisher
	bus   *natsx.Bus // the router's, as its identity
	admin *natsx.Bus // the test's own set-up
	keys  *auth.Keyring
	key   string // a key of owner
}

type rigOptions struct {
	firstByte time.Duration // the engine client's header timeout; 0: 10s
	dial      time.Duration // its dial timeout; 0: the default
	idle      time.Duration // the gateway's idle timeout; 0: none
	budget    int64         // the gateway's byte budget; 0: none
	handler   Options
	// wrap, when set, wraps the router's handler (outermost).
	wrap func(http.Handler) http.Handler
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Router)
	r := &rig{t: t, pub: &recordingPublisher{}, bus: bus, admin: ns.Bus(t, natstest.Admin), table: routing.NewTable()}
	for _, s := range []state.Service{chatService, visionService, drawService, otherService} {
		r.table.PutService(s)
	}
	if o.firstByte == 0 {
		o.firstByte = 10 * time.Second
	}
	r.g = gateway.New(r.table, routing.NewDemand(), NewEngineClient(o.firstByte, o.dial), r.pub, quiet)
	r.g.ReadyWait = time.Second
	r.g.IdleTimeout = o.idle
	if o.budget > 0 {
		r.g.Budget = gateway.NewBudget(o.budget)
	}
	images, err := NewImageStore(ctx, bus.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	r.keys = auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	if err := r.keys.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	r.key = r.newKey(owner)
	h := httpx.Edge(NewHandler(r.g, images, r.keys, nil, o.handler, quiet), "test", quiet)
	if o.wrap != nil {
		h = o.wrap(h)
	}
	r.srv = httptest.NewServer(h)
	t.Cleanup(r.srv.Close)
	return r
}

// newKey stores a key of ownerID and returns its secret once the
// keyring knows it.
func (r *rig) newKey(ownerID string) string {
	r.t.Helper()
	secret := auth.NewSecret()
	if err := auth.NewKeyring(r.admin.KV(state.BucketAPIKeys)).Put(context.Background(), auth.NewKey(secret, ownerID, false)); err != nil {
		r.t.Fatal(err)
	}
	return secret
}

// instance adds a ready instance of svc at endpoint (an engine's base URL).
func (r *rig) instance(svc state.Service, id, endpoint string) {
	r.table.PutInstance(state.Instance{ID: id, ServiceID: svc.ID, WorkerID: "w1", Engine: "simulator",
		Endpoint: endpoint + "/v1", Status: state.InstanceReady})
}

// hold keeps one request outstanding on every instance of svc but id, so
// the next pick is id.
func (r *rig) hold(svc state.Service, id string) {
	r.t.Helper()
	for _, l := range r.table.Loads() {
		if l.Service.ID != svc.ID || l.InstanceID == id {
			continue
		}
		others := []string{}
		for _, o := range r.table.Loads() {
			if o.Service.ID == svc.ID && o.InstanceID != l.InstanceID {
				others = append(others, o.InstanceID)
			}
		}
		_, release, ok := r.table.Pick(svc.ID, others...)
		if !ok {
			r.t.Fatalf("cannot hold %s", l.InstanceID)
		}
		r.t.Cleanup(release)
	}
}

// do sends a request with the rig's key and returns the answer read whole.
func (r *rig) do(ctx context.Context, path, body string, header ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.srv.URL+path, strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// usage returns the usage events published so far.
func (r *rig) usage() []events.RequestCompletedV1 {
	r.pub.mu.Lock()
	defer r.pub.mu.Unlock()
	var out []events.RequestCompletedV1
	for _, ev := range r.pub.events {
		out = append(out, ev.(events.RequestCompletedV1))
	}
	return out
}

// waitUsage waits up to 10s for n usage events.
func (r *rig) waitUsage(n int) []events.RequestCompletedV1 {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.usage()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d usage events after 10s, want %d", len(got), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeEngine is an engine that counts the requests that reach it and
// answers with its handler.
type fakeEngine struct {
	*httptest.Server
	requests atomic.Int64
}

func newFakeEngine(t *testing.T, h http.HandlerFunc) *fakeEngine {
	e := &fakeEngine{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		h(w, r)
	}))
	t.Cleanup(e.Close)
	return e
}

// healthy answers chat completions as an engine does, streamed when asked,
// with usage.
func healthy(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if !strings.Contains(string(body), `"stream":true`) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(engineCompletion))
		return
	}
	healthyStream(w)
}

// healthyStream writes a whole stream, as an engine does.
func healthyStream(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, c := range []string{
		`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":0,"total_tokens":12}}`,
		`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`,
		`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`,
		`[DONE]`,
	} {
		fmt.Fprintf(w, "data: %s\n\n", c)
	}
}

// resetAfterBody reads the request and resets the connection without an
// answer, as an engine does that a request crashes.
func resetAfterBody(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close with RST
	}
	conn.Close()
}

// blackhole returns the address of a listener whose accept queue is full,
// so the kernel drops further connection attempts: they time out, as to a
// machine that is gone.
func blackhole(t *testing.T) string {
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
	// Fill the queue: one connection that is never accepted.
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return "http://" + addr
}

// silent returns the address of a server that accepts connections and
// reads requests but never answers.
func silent(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
			t.Cleanup(func() { c.Close() })
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestQueryOfDeathRunsOnce: a request that crashes the engine that got it
// (the connection reset after the body was read) is not sent to a second
// instance, which it would crash too.
func TestQueryOfDeathRunsOnce(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream %v", stream), func(t *testing.T) {
			r := newRig(t, rigOptions{})
			a, b := newFakeEngine(t, resetAfterBody), newFakeEngine(t, resetAfterBody)
			r.instance(chatService, "i-a", a.URL)
			r.instance(chatService, "i-b", b.URL)
			body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"the query of death"}],"stream":` + fmt.Sprint(stream) + `}`
			resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502: %s", resp.StatusCode, out)
			}
			if got := a.requests.Load() + b.requests.Load(); got != 1 {
				t.Errorf("the request reached engines %d times, want once", got)
			}
		})
	}
}

// TestReusedConnectionFailureKeepsInstance: an engine that closes a kept-
// alive connection as the next request is written on it (the keep-alive
// race with an engine's shorter idle timeout) is not taken out of
// rotation, and the request, which may have reached it, is not sent again.
func TestReusedConnectionFailureKeepsInstance(t *testing.T) {
	r := newRig(t, rigOptions{})
	var n atomic.Int64
	a := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		if n.Add(1) == 2 { // the second request, on the kept-alive connection
			resetAfterBody(w, req)
			return
		}
		healthy(w, req)
	})
	b := newFakeEngine(t, healthy)
	r.instance(chatService, "i-a", a.URL)
	r.instance(chatService, "i-b", b.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	for i, want := range []int{200, 502} {
		r.hold(chatService, "i-a")
		resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d: %s", i, resp.StatusCode, want, out)
		}
	}
	if got := b.requests.Load(); got != 0 {
		t.Errorf("the other instance got %d requests, want none: the request was sent again", got)
	}
	// i-a is still in rotation: with i-b as busy as it, picks go both ways.
	for range 20 {
		if _, _, err := r.do(context.Background(), "/v1/chat/completions", body); err != nil {
			t.Fatal(err)
		}
	}
	if a.requests.Load() < 4 {
		t.Errorf("i-a got %d of 20 requests after the failed one: it was taken out of rotation", a.requests.Load()-2)
	}
}

// TestBlackholedInstanceFailsOver: an instance whose machine is gone
// (connection attempts time out) fails over to another instance within one
// dial timeout and leaves the rotation.
func TestBlackholedInstanceFailsOver(t *testing.T) {
	const dial = time.Second
	r := newRig(t, rigOptions{dial: dial})
	good := newFakeEngine(t, healthy)
	r.instance(chatService, "i-gone", blackhole(t))
	r.instance(chatService, "i-good", good.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	r.hold(chatService, "i-gone")
	started := time.Now()
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from the other instance: %s", resp.StatusCode, out)
	}
	// It waited for the dial to time out, once: no quicker (the gone
	// instance was tried first), and not twice.
	if elapsed := time.Since(started); elapsed < dial {
		t.Errorf("answered in %v, before the dial timeout: the gone instance was not tried", elapsed)
	}
	for range 5 {
		if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
			t.Fatalf("status %d after the failover: %s", resp.StatusCode, out)
		}
	}
	if got := good.requests.Load(); got != 6 {
		t.Errorf("the reachable instance answered %d of 6 requests", got)
	}
}

// TestHeaderTimeoutTakesInstanceOut: an instance that accepts requests and
// never answers is taken out of rotation when its first byte is late.
func TestHeaderTimeoutTakesInstanceOut(t *testing.T) {
	r := newRig(t, rigOptions{firstByte: 300 * time.Millisecond})
	good := newFakeEngine(t, healthy)
	r.instance(chatService, "i-wedged", silent(t))
	r.instance(chatService, "i-good", good.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	r.hold(chatService, "i-wedged")
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504: %s", resp.StatusCode, out)
	}
	if got := good.requests.Load(); got != 0 {
		t.Fatalf("the request was sent again to the other instance")
	}
	r.hold(chatService, "i-wedged")
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from the other instance: %s", resp.StatusCode, out)
	}
	if got := good.requests.Load(); got != 1 {
		t.Errorf("the wedged instance is still in rotation")
	}
}

// sseEvents reads a stream's data lines until it ends.
func sseEvents(t *testing.T, r io.Reader) (data []string, comments int) {
	t.Helper()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		case strings.HasPrefix(line, ":"):
			comments++
		}
	}
	return data, comments
}

// TestStreamCutBeforeFirstTokenIsMetered: a client that goes away during
// the engine's prefill, before any chunk, is metered (499) with the
// prompt's tokens, and the instance stays in rotation.
func TestStreamCutBeforeFirstTokenIsMetered(t *testing.T) {
	r := newRig(t, rigOptions{})
	reached := make(chan struct{}, 1)
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		reached <- struct{}{}
		<-req.Context().Done() // a long prefill, cut by the router
	})
	r.instance(chatService, "i-a", e.URL)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-reached; time.Sleep(50 * time.Millisecond); cancel() }()
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"a long prompt"}],"stream":true}`
	_, _, _ = r.do(ctx, "/v1/chat/completions", body)
	got := r.waitUsage(1)
	if got[0].Status != 499 || got[0].PromptTokens == 0 {
		t.Errorf("metered status %d with %d prompt tokens; want 499 with the prompt counted", got[0].Status, got[0].PromptTokens)
	}
}

// TestHungStreamEnds: an engine that sends headers and a chunk, then
// nothing, ends the stream with an error event within the idle timeout;
// the stream is metered for what was sent and the instance leaves the
// rotation.
func TestHungStreamEnds(t *testing.T) {
	r := newRig(t, rigOptions{idle: 500 * time.Millisecond})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: "+`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`+"\n\n")
		w.(http.Flusher).Flush()
		<-req.Context().Done() // wedged
	})
	r.instance(chatService, "i-a", e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
	resp, out, err := r.do(ctx, "/v1/chat/completions", body)
	if err != nil {
		t.Fatalf("the stream did not end: %v", err)
	}
	data, _ := sseEvents(t, strings.NewReader(string(out)))
	if resp.StatusCode != 200 || len(data) != 2 || !strings.Contains(data[1], `"error"`) {
		t.Fatalf("status %d, events %q; want a chunk and an error event", resp.StatusCode, data)
	}
	got := r.waitUsage(1)
	if got[0].CompletionTokens != 1 || got[0].PromptTokens != 12 || got[0].Status != 504 {
		t.Errorf("metered %+v, want the chunk sent, as 504", got[0])
	}
	// The instance left the rotation: with another one as busy, the next
	// request goes there.
	good := newFakeEngine(t, healthy)
	r.instance(chatService, "i-b", good.URL)
	r.hold(chatService, "i-a")
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", chatJSON(chatService.AccessName, `"hi"`)); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if e.requests.Load() != 1 || good.requests.Load() != 1 {
		t.Errorf("the hung instance got the next request too")
	}
}

// TestNonStreamingClientGoneKeepsInstance: a client that goes away while
// a non-streamed answer is being read does not take the instance out of
// rotation.
func TestNonStreamingClientGoneKeepsInstance(t *testing.T) {
	r := newRig(t, rigOptions{})
	var n atomic.Int64
	a := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		if n.Add(1) > 1 {
			healthy(w, req)
			return
		}
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x",`)
		w.(http.Flusher).Flush()
		<-req.Context().Done()
	})
	b := newFakeEngine(t, healthy)
	r.instance(chatService, "i-a", a.URL)
	r.instance(chatService, "i-b", b.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	r.hold(chatService, "i-a")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for a.requests.Load() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	_, _, _ = r.do(ctx, "/v1/chat/completions", body)
	r.hold(chatService, "i-a")
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if got := a.requests.Load(); got != 2 {
		t.Errorf("the next request went elsewhere: a client going away took the instance out of rotation")
	}
}

// TestAnswerTooLarge: an answer over the router's limit is a clear error,
// metered with the engine's usage, and the instance stays in rotation.
func TestAnswerTooLarge(t *testing.T) {
	r := newRig(t, rigOptions{})
	var n atomic.Int64
	a := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		if n.Add(1) > 1 {
			healthy(w, req)
			return
		}
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"`)
		chunk := strings.Repeat("x", 1<<20)
		for range 65 {
			fmt.Fprint(w, chunk)
		}
		fmt.Fprint(w, `"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":70000,"total_tokens":70009}}`)
	})
	b := newFakeEngine(t, healthy)
	r.instance(chatService, "i-a", a.URL)
	r.instance(chatService, "i-b", b.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	r.hold(chatService, "i-a")
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	checkError(t, resp, out, http.StatusRequestEntityTooLarge, "invalid_request_error", "too_large", "", "answer")
	got := r.waitUsage(1)
	if got[0].CompletionTokens != 70000 || got[0].PromptTokens != 9 {
		t.Errorf("metered %+v, want the engine's usage", got[0])
	}
	r.hold(chatService, "i-a")
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if got := a.requests.Load(); got != 2 {
		t.Errorf("the next request went elsewhere: a large answer took the instance out of rotation")
	}
}

// recordingObserver records first-token times.
type recordingObserver struct {
	mu   sync.Mutex
	ttft []time.Duration
}

func (o *recordingObserver) Answered(state.Service, string, int, time.Duration, gateway.Usage) {}
func (o *recordingObserver) Failed(state.Service, string, error, time.Duration)                {}
func (o *recordingObserver) FirstToken(_ state.Service, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ttft = append(o.ttft, d)
}

// TestTimeToFirstTokenIsFirstContent: the role chunk an engine sends at
// once is not the first token; the first content is.
func TestTimeToFirstTokenIsFirstContent(t *testing.T) {
	r := newRig(t, rigOptions{})
	obs := &recordingObserver{}
	r.g.Observer = obs
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: "+`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`+"\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(300 * time.Millisecond) // the prefill
		for _, c := range []string{
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}`,
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":null}]}`,
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
			`[DONE]`,
		} {
			fmt.Fprintf(w, "data: %s\n\n", c)
		}
	})
	r.instance(chatService, "i-a", e.URL)
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	obs.mu.Lock()
	ttft := obs.ttft
	obs.mu.Unlock()
	if len(ttft) != 1 || ttft[0] < 300*time.Millisecond {
		t.Errorf("time to first token %v, want one at or after the first content (300ms)", ttft)
	}
	// The engine reported no usage: its two content chunks are billed, not
	// the role and finish chunks, with the prompt's tokens.
	got := r.waitUsage(1)
	if got[0].CompletionTokens != 2 || got[0].PromptTokens == 0 {
		t.Errorf("metered %d prompt and %d completion tokens; want the prompt counted and 2", got[0].PromptTokens, got[0].CompletionTokens)
	}
}

// TestRandomKeysStayOffTheBus: requests with random keys cost NATS a
// bounded number of small requests, not one each, once the key cache is
// loaded; a key created a moment ago still verifies.
func TestRandomKeysStayOffTheBus(t *testing.T) {
	r := newRig(t, rigOptions{})
	e := newFakeEngine(t, healthy)
	r.instance(chatService, "i-a", e.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	before := r.bus.Conn.Stats().OutMsgs
	const clients, each = 50, 20
	started := time.Now()
	var wg sync.WaitGroup
	var unexpected atomic.Int64
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+auth.NewSecret())
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					unexpected.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 401 {
					unexpected.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started)
	if n := unexpected.Load(); n > 0 {
		t.Fatalf("%d random-key requests got something other than 401", n)
	}
	// At most one look at the key bucket per 50ms, whatever the number of
	// requests; a few more for the image store and the like.
	sent := r.bus.Conn.Stats().OutMsgs - before
	t.Logf("%d random keys in %v: %d messages to NATS", clients*each, elapsed.Round(time.Millisecond), sent)
	if limit := uint64(elapsed/(50*time.Millisecond)) + 5; sent > limit {
		t.Errorf("%d random keys sent %d messages to NATS in %v, want at most %d", clients*each, sent, elapsed, limit)
	}
	// A key created a moment ago verifies at once.
	for range 20 {
		r.key = r.newKey(owner)
		if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
			t.Fatalf("a new key: status %d: %s", resp.StatusCode, out)
		}
	}
}

// TestAuthFailuresPerAddress: a client address that keeps sending bad keys
// is refused before its keys are looked at; other addresses are not, and
// X-Forwarded-For names the client only when a trusted proxy sent it.
func TestAuthFailuresPerAddress(t *testing.T) {
	r := newRig(t, rigOptions{handler: Options{AuthFailures: 5, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	e := newFakeEngine(t, healthy)
	r.instance(chatService, "i-a", e.URL)
	body := chatJSON(chatService.AccessName, `"hi"`)
	send := func(key, forwardedFor string) int {
		req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		if forwardedFor != "" {
			req.Header.Set("X-Forwarded-For", forwardedFor)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	var got []int
	for range 7 {
		got = append(got, send(auth.NewSecret(), "203.0.113.9"))
	}
	if want := []int{401, 401, 401, 401, 401, 429, 429}; !slices.Equal(got, want) {
		t.Errorf("an address sending bad keys got %v, want %v", got, want)
	}
	// Its good key is refused too: it is refused before keys are read.
	if s := send(r.key, "203.0.113.9"); s != 429 {
		t.Errorf("the refused address with a good key: %d, want 429", s)
	}
	// Another client behind the same proxy is served.
	if s := send(r.key, "198.51.100.7"); s != 200 {
		t.Errorf("another address: %d, want 200", s)
	}
	// A hop the client added before the proxy's is not believed: the
	// nearest untrusted hop is.
	if s := send(r.key, "198.51.100.7, 203.0.113.9"); s != 429 {
		t.Errorf("a client claiming another address in front of its own: %d, want 429", s)
	}
}

// TestImageURLHostIsNotTheClients: generated image URLs do not point
// wherever the Host header says, and X-Forwarded-Proto from a client that
// is not a proxy is ignored.
func TestImageURLHostIsNotTheClients(t *testing.T) {
	r := newRig(t, rigOptions{})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"created":1,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":3,"output_tokens":0}}`)
	})
	r.instance(drawService, "i-d", e.URL)
	body := `{"model":"` + drawService.AccessName + `","prompt":"a cat"}`
	resp, out, err := r.do(context.Background(), "/v1/images/generations", body, "X-Forwarded-Proto", "https")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"url":"http://127.0.0.1`) {
		t.Errorf("status %d, %s; want an http URL on the router's loopback address", resp.StatusCode, out)
	}
	req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/v1/images/generations", strings.NewReader(body))
	req.Host = "evil.example"
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(out), "evil.example") {
		t.Errorf("status %d: the image URL is on the client's Host: %s", resp.StatusCode, out)
	}
}

// killableKV is a real bucket whose watchers the test can kill, as a
// closed subscription would.
type killableKV struct {
	jetstream.KeyValue
	mu       sync.Mutex
	watchers []*killableWatcher
	refuse   atomic.Bool // new watches fail
}

type killableWatcher struct {
	w    jetstream.KeyWatcher
	ch   chan jetstream.KeyValueEntry
	kill chan struct{}
	once sync.Once
}

func (k *killableKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	if k.refuse.Load() {
		return nil, errors.New("watch refused")
	}
	w, err := k.KeyValue.WatchAll(ctx, opts...)
	if err != nil {
		return nil, err
	}
	kw := &killableWatcher{w: w, ch: make(chan jetstream.KeyValueEntry), kill: make(chan struct{})}
	go func() {
		defer close(kw.ch)
		for {
			select {
			case <-kw.kill:
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				select {
				case kw.ch <- e:
				case <-kw.kill:
					return
				}
			}
		}
	}()
	k.mu.Lock()
	k.watchers = append(k.watchers, kw)
	k.mu.Unlock()
	return kw, nil
}

// killAll ends every watcher's updates.
func (k *killableKV) killAll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, w := range k.watchers {
		w.once.Do(func() { close(w.kill); _ = w.w.Stop() })
	}
}

func (w *killableWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w *killableWatcher) Stop() error {
	w.once.Do(func() { close(w.kill) })
	return w.w.Stop()
}

// TestKeyWatchDeathIsRepaired: when the key watch dies, a key revoked
// afterwards stops working all the same.
func TestKeyWatchDeathIsRepaired(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := natstest.New(t).Bus(t, natstest.Admin) // the test writes what the watches read
	kv := &killableKV{KeyValue: bus.KV(state.BucketAPIKeys)}
	keys := auth.NewKeyring(kv)
	if err := keys.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	secret := auth.NewSecret()
	k := auth.NewKey(secret, owner, false)
	if err := keys.Put(ctx, k); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, err := keys.Verify(ctx, secret); err != nil; _, err = keys.Verify(ctx, secret) {
		if time.Now().After(deadline) {
			t.Fatalf("new key not verified: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	kv.refuse.Store(true) // the watch cannot be started again for now
	kv.killAll()
	if err := auth.NewKeyring(bus.KV(state.BucketAPIKeys)).Revoke(ctx, owner, k.ID); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for _, err := keys.Verify(ctx, secret); err == nil; _, err = keys.Verify(ctx, secret) {
		if time.Now().After(deadline) {
			t.Fatal("the revoked key still verifies 5s after its watch died")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := keys.Ready(); err == nil {
		t.Error("ready with the key watch down")
	}
	// Back: ready again, and keys are checked from memory again.
	kv.refuse.Store(false)
	waitFor(t, "the key watch back", func() bool { return keys.Ready() == nil })
	other := auth.NewSecret()
	if err := keys.Put(ctx, auth.NewKey(other, owner, false)); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Verify(ctx, other); err != nil {
		t.Errorf("a new key after the watch came back: %v", err)
	}
	if _, err := keys.Verify(ctx, secret); err == nil {
		t.Error("the revoked key verifies after the watch came back")
	}
}

// waitFor waits up to 10s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTableWatchDeathIsRepaired: when the routing table's watch dies, new
// instances still reach the table.
func TestTableWatchDeathIsRepaired(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := natstest.New(t).Bus(t, natstest.Admin) // the test writes what the watches read
	services := &killableKV{KeyValue: bus.KV(state.BucketServices)}
	instances := &killableKV{KeyValue: bus.KV(state.BucketInstances)}
	table := routing.NewTable()
	w, err := WatchTable(ctx, services, instances, table, quiet)
	if err != nil {
		t.Fatal(err)
	}
	put := func(kv jetstream.KeyValue, key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	put(services, chatService.ID, chatService)
	gone := state.Instance{ID: "i-gone", ServiceID: chatService.ID, WorkerID: "w1", Endpoint: "http://gone/v1", Status: state.InstanceReady}
	put(instances, chatService.ID+".i-gone", gone)
	waitFor(t, "the first instance in the table", func() bool { return len(table.Loads()) == 1 })
	services.refuse.Store(true)
	services.killAll()
	instances.killAll()
	waitFor(t, "readiness failing", func() bool { return w.Ready() != nil })
	in := state.Instance{ID: "i-late", ServiceID: chatService.ID, WorkerID: "w1", Endpoint: "http://x/v1", Status: state.InstanceReady}
	put(instances, chatService.ID+".i-late", in)
	// Purged while the watch was down: no delete reaches a watcher.
	if err := instances.Purge(ctx, chatService.ID+".i-gone"); err != nil {
		t.Fatal(err)
	}
	services.refuse.Store(false)
	waitFor(t, "the watch back, with the instance added and without the one removed meanwhile", func() bool {
		l := table.Loads()
		return w.Ready() == nil && len(l) == 1 && l[0].InstanceID == "i-late"
	})
}

// TestImageRequestAllocations: a small request naming eight remote
// images makes the router allocate a small multiple of the images' size:
// each fetched once, encoded once into the request for the engine.
func TestImageRequestAllocations(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.g.Images = NewImageFetcher(10*time.Second, true)
	img := make([]byte, 1<<20)
	copy(img, pngBytes(t))
	mux := http.NewServeMux()
	mux.HandleFunc("/big.png", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", fmt.Sprint(len(img)))
		_, _ = w.Write(img)
	})
	images := newImageServer(t, mux)
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(engineCompletion))
	})
	r.instance(visionService, "i-v", e.URL)
	parts := []string{`{"type":"text","text":"what are they?"}`}
	for range 8 {
		parts = append(parts, `{"type":"image_url","image_url":{"url":"`+images.URL+`/big.png"}}`)
	}
	body := `{"model":"` + visionService.AccessName + `","messages":[{"role":"user","content":[` + strings.Join(parts, ",") + `]}],"stream":true}`
	// Once to warm up connections and pools.
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if resp, out, _ := r.do(context.Background(), "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	runtime.ReadMemStats(&after)
	fetched := 8 * len(img)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d MiB of images: %.1f MiB allocated (%.1f×)", fetched>>20, float64(allocated)/(1<<20), float64(allocated)/float64(fetched))
	// The images, once; their base64 (4/3), once; some slack for the rest.
	if limit := uint64(fetched) * 3; allocated > limit {
		t.Errorf("allocated %d MiB for %d MiB of images, want at most %d MiB", allocated>>20, fetched>>20, limit>>20)
	}
}

// TestImageFetchSlotsAreShared: one owner whose image URLs trickle cannot
// hold every fetch slot: another owner's images are still fetched, and the
// first owner's requests beyond its share are told to retry (503), not
// blamed (400).
func TestImageFetchSlotsAreShared(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.g.Images = NewImageFetcher(3*time.Second, true)
	r.g.ImageFetchTimeout = 3 * time.Second
	otherVision := visionService
	otherVision.ID, otherVision.OwnerID, otherVision.AccessName = "s-other-vision", otherService.OwnerID, "u-"+otherService.OwnerID+"/vision"
	r.table.PutService(otherVision)
	e := newFakeEngine(t, healthy)
	r.instance(visionService, "i-v", e.URL)
	r.instance(otherVision, "i-ov", e.URL)
	img := pngBytes(t)
	var trickling atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/slow.png", func(w http.ResponseWriter, req *http.Request) {
		trickling.Add(1)
		defer trickling.Add(-1)
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", "1000")
		for range 1000 {
			if _, err := w.Write([]byte{0}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-req.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	var fastAt atomic.Int64
	mux.HandleFunc("/fast.png", func(w http.ResponseWriter, _ *http.Request) {
		fastAt.Store(time.Now().UnixNano())
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(img)
	})
	images := newImageServer(t, mux)
	request := func(model, key, url string) (int, string) {
		body := `{"model":"` + model + `","messages":[{"role":"user","content":` + imageParts(url) + `}]}`
		req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After") + " " + string(b)
	}
	// As many slow requests as there are fetch slots in all.
	const hogs = 16
	statuses := make(chan string, hogs)
	started := time.Now()
	for range hogs {
		go func() {
			s, msg := request(visionService.AccessName, r.key, images.URL+"/slow.png")
			statuses <- fmt.Sprint(s, " ", msg)
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for trickling.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no slow fetch started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if s, msg := request(otherVision.AccessName, r.newKey(otherService.OwnerID), images.URL+"/fast.png"); s != 200 {
		t.Errorf("another owner's image request: status %d %s; want 200", s, msg)
	}
	// It was fetched while the slow fetches still held their slots, not
	// once they had given up.
	if at := time.Unix(0, fastAt.Load()); at.Sub(started) >= r.g.ImageFetchTimeout {
		t.Errorf("another owner's image was fetched %v after the slow ones started, once they gave up (%v)", at.Sub(started), r.g.ImageFetchTimeout)
	}
	busy := 0
	for range hogs {
		s := <-statuses
		switch {
		case strings.HasPrefix(s, "503 1 "):
			busy++
		case strings.HasPrefix(s, "400 "):
			if !strings.Contains(s, "took longer") {
				t.Errorf("a request of the owner holding the slots got %s", s)
			}
		default:
			t.Errorf("a request of the owner holding the slots got %s", s)
		}
	}
	if busy == 0 {
		t.Errorf("none of %d concurrent slow requests of one owner was told to retry", hogs)
	}
}

// TestColdStartSpreadsWaiters: requests held for a service scaled to zero
// are spread over the instances that come up, not all given to the first.
func TestColdStartSpreadsWaiters(t *testing.T) {
	r := newRig(t, rigOptions{})
	cold := chatService
	cold.ID, cold.Name, cold.AccessName = "s-cold", "cold", "u-"+owner+"/cold"
	cold.Instances = 2 // what the autoscaler asked for
	cold.Autoscale = &state.Autoscale{MinInstances: 0, MaxInstances: 2, TargetInFlight: 20}
	r.table.PutService(cold)
	slow := func(w http.ResponseWriter, req *http.Request) {
		time.Sleep(300 * time.Millisecond)
		healthy(w, req)
	}
	a, b := newFakeEngine(t, slow), newFakeEngine(t, slow)
	const waiters = 40
	var wg sync.WaitGroup
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, out, err := r.do(context.Background(), "/v1/chat/completions", chatJSON(cold.AccessName, `"hi"`)); err != nil || resp.StatusCode != 200 {
				t.Errorf("held request: %v %s", err, out)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // all are held
	r.instance(cold, "i-a", a.URL)
	time.Sleep(100 * time.Millisecond)
	r.instance(cold, "i-b", b.URL)
	wg.Wait()
	t.Logf("first instance up got %d, second %d", a.requests.Load(), b.requests.Load())
	if a.requests.Load() > 3*waiters/4 {
		t.Errorf("the first instance up got %d of %d held requests", a.requests.Load(), waiters)
	}
}

// TestStreamClientGoneIs499: a client that hangs up mid-stream is metered
// as 499, however the router notices it.
func TestStreamClientGoneIs499(t *testing.T) {
	r := newRig(t, rigOptions{})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 2000 {
			_, err := fmt.Fprintf(w, "data: %s\n\n", `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"`+strings.Repeat("x", 4000)+`"},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":`+fmt.Sprint(i+1)+`,"total_tokens":13}}`)
			if err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	r.instance(chatService, "i-a", e.URL)
	const n = 10
	for range n {
		conn, err := net.Dial("tcp", r.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", r.key, len(body), body)
		buf := make([]byte, 64<<10)
		_, _ = io.ReadAtLeast(conn, buf, len(buf))
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	for _, u := range r.waitUsage(n) {
		if u.Status != 499 {
			t.Errorf("a stream whose client hung up was metered as %d, want 499", u.Status)
		}
	}
}

// TestRequestMemoryIsBounded: concurrent requests whose images together
// would go over the router's byte budget are refused with 503 and
// Retry-After, never held beyond it, and every byte is given back.
func TestRequestMemoryIsBounded(t *testing.T) {
	const budget = 40 << 20
	r := newRig(t, rigOptions{budget: budget})
	r.g.Images = NewImageFetcher(10*time.Second, true)
	r.g.ImageFetchTimeout = 10 * time.Second
	img := make([]byte, 4<<20)
	copy(img, pngBytes(t))
	const clients = 8
	var arrived atomic.Int64
	all := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/big.png", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", fmt.Sprint(len(img)))
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		// The bodies wait until every client's first image is announced.
		if arrived.Add(1) == clients {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(2 * time.Second):
		}
		_, _ = w.Write(img)
	})
	images := newImageServer(t, mux)
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		n, _ := io.Copy(io.Discard, req.Body)
		if n < 2*int64(len(img)) {
			w.WriteHeader(400)
			return
		}
		healthy(w, req)
	})
	r.instance(visionService, "i-v", e.URL)
	part := `{"type":"image_url","image_url":{"url":"` + images.URL + `/big.png"}}`
	body := `{"model":"` + visionService.AccessName + `","messages":[{"role":"user","content":[` + part + `,` + part + `]}]}`
	var peak atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			peak.Store(max(peak.Load(), r.g.Budget.Used()))
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	statuses := make(chan string, clients)
	for range clients {
		go func() {
			resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
			if err != nil {
				statuses <- err.Error()
				return
			}
			statuses <- fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("Retry-After"), " ", string(out))
		}()
	}
	ok, busy := 0, 0
	for range clients {
		s := <-statuses
		switch {
		case strings.HasPrefix(s, "200 "):
			ok++
		case strings.HasPrefix(s, "503 1 "):
			busy++
		default:
			t.Errorf("a request got %s", s)
		}
	}
	close(stop)
	t.Logf("%d answered, %d told to retry; %d MiB held at most of %d", ok, busy, peak.Load()>>20, budget>>20)
	if ok == 0 || busy == 0 {
		t.Errorf("%d answered and %d told to retry; want some of each", ok, busy)
	}
	if peak.Load() > budget {
		t.Errorf("%d bytes held, over the budget of %d", peak.Load(), budget)
	}
	if used := r.g.Budget.Used(); used != 0 {
		t.Errorf("%d bytes still held after every request ended", used)
	}
	// An inline body the budget has no room for is refused before it is
	// read.
	huge := `{"model":"` + visionService.AccessName + `","messages":[{"role":"user","content":"` + strings.Repeat("a", budget) + `"}]}`
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", huge)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 413 && resp.StatusCode != 503 {
		t.Errorf("a body over the budget: status %d %s", resp.StatusCode, out)
	}
}

// TestStreamKeepAlive: while the engine is silent (a long prefill), the
// client gets SSE comments, and the stream then goes on as usual.
func TestStreamKeepAlive(t *testing.T) {
	r := newRig(t, rigOptions{handler: Options{KeepAlive: 100 * time.Millisecond}})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		time.Sleep(550 * time.Millisecond)
		healthyStream(w)
	})
	r.instance(chatService, "i-a", e.URL)
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	data, comments := sseEvents(t, strings.NewReader(string(out)))
	if resp.StatusCode != 200 || comments < 3 || len(data) == 0 || data[len(data)-1] != "[DONE]" {
		t.Errorf("status %d, %d comments, events %q; want a few comments, then the stream", resp.StatusCode, comments, data)
	}
}

// TestRequestBytesFreedOnceSent: once the request has been written to the
// engine, the router keeps none of it while the engine works on the
// answer, and its bytes are back in the budget.
func TestRequestBytesFreedOnceSent(t *testing.T) {
	r := newRig(t, rigOptions{budget: 256 << 20})
	working := make(chan struct{})
	done := make(chan struct{})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		close(working)
		<-done // a long generation
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(engineCompletion))
	})
	r.instance(chatService, "i-a", e.URL)
	const size = 24 << 20
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"` + strings.Repeat("a", size) + `"}]}`
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	answered := make(chan int, 1)
	// The client's body lets go of its bytes once sent, as the router's
	// must.
	src := &droppingReader{b: []byte(body)}
	body = ""
	go func() {
		req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", src)
		req.ContentLength = int64(len(src.b))
		req.Header.Set("Authorization", "Bearer "+r.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-working
	var during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&during)
	held := r.g.Budget.Used()
	close(done)
	if s := <-answered; s != 200 {
		t.Fatalf("status %d", s)
	}
	t.Logf("heap %d MiB before, %d MiB while the engine works; budget held %d bytes", base.HeapAlloc>>20, during.HeapAlloc>>20, held)
	// The client's copy of the body is the test's own, and gone too.
	if during.HeapAlloc > base.HeapAlloc+size/2 {
		t.Errorf("heap %d MiB while the engine works, %d MiB before: the %d MiB request is still held", during.HeapAlloc>>20, base.HeapAlloc>>20, size>>20)
	}
	if held != 0 {
		t.Errorf("%d bytes held in the budget after the request was written", held)
	}
}

// droppingReader reads b once, letting go of it at the end.
type droppingReader struct{ b []byte }

func (d *droppingReader) Read(p []byte) (int, error) {
	if len(d.b) == 0 {
		d.b = nil
		return 0, io.EOF
	}
	n := copy(p, d.b)
	d.b = d.b[n:]
	if len(d.b) == 0 {
		d.b = nil
	}
	return n, nil
}

// TestStreamCutShortTellsUsage: a stream the engine cuts short, for a
// client that asked for usage, ends with a usage chunk holding exactly
// what was metered, before the error event (the official clients stop
// reading at the error); a client that did not ask gets no usage chunk.
func TestStreamCutShortTellsUsage(t *testing.T) {
	r := newRig(t, rigOptions{})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for _, c := range []string{"a", "b"} {
			fmt.Fprint(w, "data: "+`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"`+c+`"},"finish_reason":null}]}`+"\n\n")
		}
		// The engine dies: no usage, no [DONE].
	})
	r.instance(chatService, "i-a", e.URL)
	for i, asked := range []bool{true, false} {
		body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"count to a large number"}],"stream":true`
		if asked {
			body += `,"stream_options":{"include_usage":true}`
		}
		body += `}`
		resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %v: %v", resp, err)
		}
		data, _ := sseEvents(t, strings.NewReader(string(out)))
		metered := r.waitUsage(i + 1)[i]
		if metered.Status != 502 || metered.CompletionTokens != 2 || metered.PromptTokens == 0 {
			t.Errorf("metered %+v; want 502 with the prompt counted and the 2 chunks sent", metered)
		}
		if !asked {
			if len(data) != 3 || strings.Contains(strings.Join(data, ""), `"usage"`) {
				t.Errorf("without include_usage: events %q, want 2 chunks and an error event, no usage", data)
			}
			continue
		}
		if len(data) != 4 || !strings.Contains(data[3], `"error"`) {
			t.Fatalf("events %q; want 2 chunks, a usage chunk and an error event", data)
		}
		var chunk struct {
			Choices []any          `json:"choices"`
			Usage   *gateway.Usage `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data[2]), &chunk); err != nil || chunk.Usage == nil || len(chunk.Choices) != 0 {
			t.Fatalf("third event %q is not a usage chunk (%v)", data[2], err)
		}
		want := gateway.Usage{PromptTokens: metered.PromptTokens, CompletionTokens: metered.CompletionTokens, TotalTokens: metered.TotalTokens}
		if *chunk.Usage != want {
			t.Errorf("the client was told %+v, billed %+v", *chunk.Usage, want)
		}
	}
}

// TestStreamCutAfterEngineUsageTellsItOnce: an engine that sent its own
// usage chunk and then died before [DONE] has told the client its usage;
// the router does not send a second usage chunk a client could add up.
func TestStreamCutAfterEngineUsageTellsItOnce(t *testing.T) {
	r := newRig(t, rigOptions{})
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: "+`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}`+"\n\n")
		fmt.Fprint(w, "data: "+`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}`+"\n\n")
		// The engine dies before [DONE].
	})
	r.instance(chatService, "i-a", e.URL)
	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`
	resp, out, err := r.do(context.Background(), "/v1/chat/completions", body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %v: %v", resp, err)
	}
	data, _ := sseEvents(t, strings.NewReader(string(out)))
	if n := strings.Count(strings.Join(data, "\n"), `"usage"`); len(data) != 3 || n != 1 || !strings.Contains(data[2], `"error"`) {
		t.Fatalf("events %q; want the chunk, the engine's usage chunk once, and an error event", data)
	}
	if got := r.waitUsage(1)[0]; got.PromptTokens != 9 || got.CompletionTokens != 1 {
		t.Errorf("metered %+v, want the engine's 9+1", got)
	}
}
