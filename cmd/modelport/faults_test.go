package main

// Fault tests: the platform under a killed worker, a restarted NATS and a
// thousand streaming clients. `make test-faults` runs them alone; `make
// test` runs them with everything else.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
)

// streamResult is what one streaming client saw.
type streamResult struct {
	status     int
	content    int    // content chunks: one token each from the simulator
	prompt     int    // usage.prompt_tokens of the final chunk, if any
	completion int    // usage.completion_tokens of the final chunk, if any
	errMessage string // the message of an error event, or of the error that refused the request
	done       bool   // data: [DONE]
	readErr    error  // the stream did not end cleanly: a torn connection or an event that is not JSON
}

// streamChat sends a streaming chat completion for model with the admin
// key, asking for usage, and reads it to the end; onChunk is called with
// the running count of content chunks.
func streamChat(ctx context.Context, client *http.Client, base, model string, maxTokens int, onChunk func(int)) streamResult {
	return streamChatBody(ctx, client, base, testAdminKey, streamBody(model, maxTokens, "Count slowly to a very large number."), onChunk)
}

// streamBody is a streaming chat completion request for model that asks
// for usage, with one user message; maxTokens 0 leaves max_tokens out.
func streamBody(model string, maxTokens int, content string) []byte {
	req := map[string]any{
		"model": model, "stream": true, "stream_options": map[string]bool{"include_usage": true},
		"messages": []map[string]string{{"role": "user", "content": content}},
	}
	if maxTokens > 0 {
		req["max_tokens"] = maxTokens
	}
	body, _ := json.Marshal(req)
	return body
}

// streamChatBody posts body to base's chat completions with key and reads
// the stream to its end; onChunk, if not nil, is called with the running
// count of content chunks.
//
// A read error is always readErr, even after an error event: the platform
// ends a stream it cannot finish with an error event and then closes it
// cleanly (the terminating chunk of the response), so a connection torn
// after the error event is a fault of its own that the event must not
// hide.
func streamChatBody(ctx context.Context, client *http.Client, base, key string, body []byte, onChunk func(int)) streamResult {
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return streamResult{readErr: err}
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return streamResult{readErr: err}
	}
	defer resp.Body.Close()
	r := streamResult{status: resp.StatusCode}
	if resp.StatusCode != 200 {
		// The error's message, for a test that reports the failure.
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		r.errMessage = e.Error.Message
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			r.done = true
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				Prompt     int `json:"prompt_tokens"`
				Completion int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			r.readErr = fmt.Errorf("bad event %q: %v", data, err)
			return r
		}
		if chunk.Error != nil {
			r.errMessage = chunk.Error.Message
		}
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			r.content++
			if onChunk != nil {
				onChunk(r.content)
			}
		}
		if chunk.Usage != nil {
			r.prompt, r.completion = chunk.Usage.Prompt, chunk.Usage.Completion
		}
	}
	r.readErr = sc.Err()
	return r
}

// usageOf reads a service's usage totals from billing. A 503 (billing
// still starting: it answers once its schema and prices are stored) is an
// error to retry; any other failure ends the test.
func usageOf(t *testing.T, billingURL, serviceID string) (usageTotals, error) {
	t.Helper()
	var u usageTotals
	switch s := call(t, "GET", billingURL+"/api/v1/usage?service_id="+serviceID, testAdminKey, nil, &u); s {
	case 200:
		return u, nil
	case 503:
		return u, fmt.Errorf("usage: status 503")
	default:
		t.Fatalf("usage: status %d", s)
	}
	return u, nil
}

// TestFaultWorkerKilledMidStream kills a worker while streams run on it:
// their clients get an error event, not a torn connection; each stream is
// billed once, for the tokens its client received; requests after the
// kill go to the surviving instance.
func TestFaultWorkerKilledMidStream(t *testing.T) {
	c := startCluster(t)
	for _, id := range []string{"w1", "w2"} {
		c.start(t, id, "inference-worker", "MODELPORT_WORKER_ID="+id, "MODELPORT_WORKER_CAPACITY=1", "MODELPORT_SIM_ITL=20ms")
	}
	svc := c.deploy(t, "steadfast", 2)
	if list := c.instances(t, svc.ID); len(workersOf(list)) != 2 {
		t.Fatalf("instances not spread over both workers: %s", describe(list))
	}

	const streams = 4
	results := make([]streamResult, streams)
	var flowing sync.WaitGroup
	flowing.Add(streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			results[i] = streamChat(context.Background(), http.DefaultClient, c.urls["router"], svc.AccessName, 300,
				func(n int) {
					if n == 10 {
						once.Do(flowing.Done)
					}
				})
			once.Do(flowing.Done) // a stream that ended early must not block the test
		}()
	}
	flowing.Wait()
	c.procs["w1"].kill(t)
	wg.Wait()

	var broken, whole int
	wantCompletion, wantPrompt := 0, 0
	prompt := 0
	for _, r := range results {
		if r.prompt > 0 {
			prompt = r.prompt
		}
	}
	for i, r := range results {
		switch {
		case r.status != 200 || r.readErr != nil:
			t.Errorf("stream %d: status %d, unclean end: %v", i, r.status, r.readErr)
		case r.errMessage != "":
			broken++
			wantCompletion += r.content
		case r.done && r.completion == r.content:
			whole++
			wantCompletion += r.completion
		default:
			t.Errorf("stream %d ended without [DONE] or an error event: %+v", i, r)
		}
		wantPrompt += prompt
	}
	if broken == 0 || whole == 0 {
		t.Fatalf("%d streams cut with an error event, %d whole; want some of each (results %+v)", broken, whole, results)
	}
	t.Logf("%d streams cut by the kill with an error event, %d whole", broken, whole)

	// New requests go to the surviving instance.
	for i := range 5 {
		r := streamChat(context.Background(), http.DefaultClient, c.urls["router"], svc.AccessName, 5, nil)
		if r.status != 200 || !r.done || r.errMessage != "" {
			t.Fatalf("request %d after the kill: %+v", i, r)
		}
		wantCompletion += r.completion
		wantPrompt += r.prompt
	}

	// Billing: every stream once, cut ones for what their clients got.
	eventually(t, 30*time.Second, "usage billed exactly", func() error {
		u, err := usageOf(t, c.urls["billing"], svc.ID)
		if err != nil {
			return err
		}
		if u.Requests != streams+5 || int(u.CompletionTokens) != wantCompletion || int(u.PromptTokens) != wantPrompt {
			return fmt.Errorf("billed %d requests, %d prompt and %d completion tokens; want %d, %d, %d",
				u.Requests, u.PromptTokens, u.CompletionTokens, streams+5, wantPrompt, wantCompletion)
		}
		return nil
	})
}

// TestFaultNATSRestart restarts the NATS server (a separate process, same
// port and store) under steady traffic: the services reconnect, traffic
// succeeds again, and billing holds exactly the usage of the requests that
// were answered, none of those refused during the outage. The router
// stores each usage event in JetStream before its answer completes, or,
// with a usage spool, writes it to the spool, which forwards it once NATS
// is back.
func TestFaultNATSRestart(t *testing.T) {
	t.Run("usage stored before the answer", func(t *testing.T) { natsRestart(t, false) })
	t.Run("usage spooled", func(t *testing.T) { natsRestart(t, true) })
}

func natsRestart(t *testing.T, spool bool) {
	server := buildNATSServer(t, t.TempDir())
	sec := newNATSSecurity(t)
	nd := startNATSServer(t, server, sec)
	env := sec.clientEnv()
	if spool {
		env = append(env, "MODELPORT_USAGE_SPOOL="+t.TempDir()) // read by the one router
	}
	c := startClusterOn(t, nd.clientURL, sec.seeds, env, workerSpec{id: "w1", capacity: 2})
	svc := c.deploy(t, "weathered", 1)

	var (
		mu              sync.Mutex
		ok, refused     int
		prompt, complet int
		lastOK          atomic.Int64
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	client := &http.Client{Timeout: 15 * time.Second}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Each request runs to its end: one cut by the test's stop
				// would be billed for what it got so far, as it should be,
				// and spoil the count.
				r := streamChat(context.Background(), client, c.urls["router"], svc.AccessName, 8, nil)
				mu.Lock()
				switch {
				case r.status == 200 && r.done && r.errMessage == "":
					ok++
					prompt += r.prompt
					complet += r.completion
					lastOK.Store(time.Now().UnixNano())
				default:
					refused++
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)
	nd.proc.kill(t)
	killedAt := time.Now()
	time.Sleep(2 * time.Second)
	nd.start(t, server)
	// Cleanups run last-registered first: the restarted server's would
	// stop NATS before the services, which would then spend their stop
	// budget retrying publishes. Stop the services first.
	t.Cleanup(func() {
		for name, p := range c.procs {
			if err := p.stop(20 * time.Second); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
	eventually(t, 60*time.Second, "requests answered again after the restart", func() error {
		if time.Unix(0, lastOK.Load()).Before(killedAt.Add(2 * time.Second)) {
			return fmt.Errorf("no request answered since the restart")
		}
		return nil
	})
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	t.Logf("%d requests answered, %d refused during the outage", ok, refused)

	eventually(t, 60*time.Second, "usage of every answered request billed once", func() error {
		u, err := usageOf(t, c.urls["billing"], svc.ID)
		if err != nil {
			return err
		}
		if int(u.Requests) != ok || int(u.PromptTokens) != prompt || int(u.CompletionTokens) != complet {
			return fmt.Errorf("billed %d requests, %d+%d tokens; answered %d requests, %d+%d tokens",
				u.Requests, u.PromptTokens, u.CompletionTokens, ok, prompt, complet)
		}
		return nil
	})
}

// startNATSServer starts one nats-server process with JetStream on
// loopback, storing in a directory of its own, with sec's identities and
// TLS; start it again after a kill to restart it on the same port and
// store.
func startNATSServer(t *testing.T, server string, sec *natsSecurity) *natsNode {
	t.Helper()
	client, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	monitor, err := chlocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	text := fmt.Sprintf("server_name: solo\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\njetstream { store_dir: %q }\n%s",
		client, monitor, filepath.Join(dir, "store"), sec.conf())
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	nd := &natsNode{name: "nats", clientURL: fmt.Sprintf("tls://127.0.0.1:%d", client),
		monitor: fmt.Sprintf("http://127.0.0.1:%d", monitor), conf: conf, env: sec.serverEnv()}
	nd.start(t, server)
	return nd
}

// TestFaultThousandStreams runs a thousand concurrent streaming clients
// against the all-in-one platform for a bounded time: nothing fails, and
// afterwards goroutines and heap return to where they were.
func TestFaultThousandStreams(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	env := config.Chain(config.Map(map[string]string{"MODELPORT_SIM_ITL": "5ms"}), testEnv(t, chAddr, chDB))
	p, err := startPlatform(context.Background(), env, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	svc := deployRunning(t, p.BaseURL, "crowded", "qwen2.5-7b-instruct", "text-generation")
	chatUntilOK(t, p.BaseURL, svc.AccessName)

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 1000
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	settle := func() (int, uint64) {
		tr.CloseIdleConnections()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapInuse
	}
	const clients = 1000
	load := func(d time.Duration) (answered, failed int64, first any) {
		ctx, stop := context.WithTimeout(context.Background(), d)
		defer stop()
		var ok, bad atomic.Int64
		var firstFailure atomic.Value
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					r := streamChat(context.Background(), client, p.BaseURL, svc.AccessName, 16, nil)
					if r.status == 200 && r.done && r.errMessage == "" && r.readErr == nil && r.completion == r.content {
						ok.Add(1)
						continue
					}
					bad.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("status %d, done %v, error event %q, read error %v, %d chunks, usage %d+%d",
						r.status, r.done, r.errMessage, r.readErr, r.content, r.prompt, r.completion))
				}
			}()
		}
		wg.Wait()
		return ok.Load(), bad.Load(), firstFailure.Load()
	}

	// A short warm-up fills the pools that stay (the router's idle
	// connections to the engine, bounded); the baseline is taken after it,
	// so what the long run leaves behind beyond it is a leak.
	if _, failed, first := load(time.Second); failed > 0 {
		t.Fatalf("warm-up: %d streams failed; first: %v", failed, first)
	}
	time.Sleep(time.Second)
	baseGoroutines, baseHeap := settle()

	answered, failed, first := load(8 * time.Second)
	t.Logf("%d streams answered by %d concurrent clients, %d failed", answered, clients, failed)
	if failed > 0 {
		t.Fatalf("%d streams failed; first: %v", failed, first)
	}
	if answered < clients {
		t.Fatalf("only %d streams answered", answered)
	}

	// Everything the load started ends: goroutines and heap come back.
	eventually(t, 30*time.Second, "goroutines and heap back to the baseline", func() error {
		g, heap := settle()
		if g > baseGoroutines+50 || heap > baseHeap+64<<20 {
			return fmt.Errorf("%d goroutines (baseline %d), heap %d MiB (baseline %d MiB)", g, baseGoroutines, heap>>20, baseHeap>>20)
		}
		return nil
	})
}
