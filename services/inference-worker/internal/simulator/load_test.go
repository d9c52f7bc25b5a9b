package simulator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// eventually polls cond every 10ms until it holds or 5 seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openStream sends a streamed chat request under ctx and returns the
// response once its first content chunk has arrived.
func openStream(t *testing.T, ctx context.Context, base string) *http.Response {
	t.Helper()
	resp, err := sendStream(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	br := bufio.NewReader(resp.Body)
	for events := 0; events < 2; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if strings.HasPrefix(line, "data: ") {
			events++
		}
	}
	return resp
}

func sendStream(ctx context.Context, base string) (*http.Response, error) {
	b, _ := json.Marshal(map[string]any{"model": servedName, "messages": messages("user", "hi"), "stream": true})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/chat/completions", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(req)
}

// With one slot and room for one in the queue, a third request is turned
// away at once with 429 and Retry-After; the queued one runs when the
// slot frees, and one that leaves the queue frees its place.
func TestMaxConcurrentAndQueue(t *testing.T) {
	// A first token at once, then an hour to the next: a stream holds its
	// slot until its client leaves.
	s := listen(t, simulator.Config{ServedName: servedName, BaseModel: "m", InterTokenLatency: time.Hour, MaxConcurrent: 1, MaxQueue: 1})
	base := "http://" + s.Addr().String() + "/v1"
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()

	ctxA, leaveA := context.WithCancel(context.Background())
	defer leaveA()
	a := openStream(t, ctxA, base)
	defer a.Body.Close()
	if running, queued := s.Load(); running != 1 || queued != 0 {
		t.Fatalf("load = %d running, %d queued; want 1, 0", running, queued)
	}

	ctxB, leaveB := context.WithCancel(context.Background())
	defer leaveB()
	type result struct {
		resp *http.Response
		err  error
	}
	b := make(chan result, 1)
	go func() {
		resp, err := sendStream(ctxB, base)
		b <- result{resp, err}
	}()
	eventually(t, "the second request is queued", func() bool { _, q := s.Load(); return q == 1 })

	status, body := post(t, base+"/chat/completions", map[string]any{"model": servedName, "messages": messages("user", "hi")})
	if got, want := status, http.StatusTooManyRequests; got != want {
		t.Fatalf("third request: status %d, want %d: %s", got, want, body)
	}
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || e.Error.Type != "rate_limit_error" {
		t.Errorf("429 body %s: want an OpenAI error of type rate_limit_error (%v)", body, err)
	}
	resp, err := http.Post(base+"/chat/completions", "application/json", strings.NewReader(`{"model":"`+servedName+`","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("Retry-After"), "1"; resp.StatusCode != http.StatusTooManyRequests || got != want {
		t.Errorf("status %d, Retry-After %q; want 429 and %q", resp.StatusCode, got, want)
	}
	select {
	case r := <-b:
		t.Fatalf("the queued request was answered while the slot was taken: %+v", r)
	default:
	}

	leaveA()
	select {
	case r := <-b:
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.resp.Body.Close()
		if r.resp.StatusCode != http.StatusOK {
			t.Fatalf("queued request: status %d, want 200", r.resp.StatusCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued request did not start when the slot freed")
	}
	eventually(t, "the queued request holds the slot", func() bool { r, q := s.Load(); return r == 1 && q == 0 })

	// A client that gives up in the queue leaves it.
	ctxC, leaveC := context.WithCancel(context.Background())
	c := make(chan error, 1)
	go func() {
		resp, err := sendStream(ctxC, base)
		if err == nil {
			resp.Body.Close()
		}
		c <- err
	}()
	eventually(t, "the third request is queued", func() bool { _, q := s.Load(); return q == 1 })
	leaveC()
	if err := <-c; !errors.Is(err, context.Canceled) {
		t.Errorf("the request that left the queue: %v, want it canceled", err)
	}
	eventually(t, "the queue is empty", func() bool { _, q := s.Load(); return q == 0 })
	leaveB()
}

func TestErrorRate(t *testing.T) {
	req := map[string]any{"model": servedName, "messages": messages("user", "hi"), "max_tokens": 1}
	failures := func(t *testing.T, cfg simulator.Config, n int) int {
		t.Helper()
		base := startWith(t, cfg)
		failed := 0
		for range n {
			status, body := post(t, base+"/chat/completions", req)
			switch status {
			case http.StatusOK:
			case http.StatusInternalServerError:
				failed++
				var e errorBody
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Message != "simulated engine failure" || e.Error.Type != "server_error" {
					t.Fatalf("500 body %s: want simulated engine failure, server_error", body)
				}
			default:
				t.Fatalf("status %d: %s", status, body)
			}
		}
		// Health and the model list never fail.
		h, err := http.Get(strings.TrimSuffix(base, "/v1") + "/health")
		if err != nil {
			t.Fatal(err)
		}
		h.Body.Close()
		if status, body := get(t, base+"/models"); h.StatusCode != http.StatusOK || status != http.StatusOK {
			t.Errorf("health %d, models %d %s; want 200 for both", h.StatusCode, status, body)
		}
		return failed
	}
	cfg := func(rate float64, seed uint64) simulator.Config {
		return simulator.Config{ServedName: servedName, BaseModel: "m", ErrorRate: rate, Seed: seed}
	}
	t.Run("all", func(t *testing.T) {
		if got, want := failures(t, cfg(1, 0), 20), 20; got != want {
			t.Errorf("%d of 20 failed, want %d", got, want)
		}
	})
	t.Run("none", func(t *testing.T) {
		if got, want := failures(t, cfg(0, 0), 20), 0; got != want {
			t.Errorf("%d of 20 failed, want %d", got, want)
		}
	})
	t.Run("half, seeded", func(t *testing.T) {
		// The seed fixes which requests fail: the same count every run,
		// near half.
		const want = 93
		if got := failures(t, cfg(0.5, 42), 200); got != want {
			t.Errorf("%d of 200 failed, want %d with seed 42", got, want)
		}
		if got := failures(t, cfg(0.5, 42), 200); got != want {
			t.Errorf("again: %d of 200 failed, want %d", got, want)
		}
	})
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// A crash cuts a stream after that many content tokens, without a finish
// chunk or [DONE], and closes a non-streamed request's connection without
// an answer; an answer shorter than that is not touched.
func TestCrashAfterTokens(t *testing.T) {
	const crashAt = 5
	base := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "m", CrashAfterTokens: crashAt})
	req := func(extra map[string]any) []byte {
		r := map[string]any{"model": servedName, "messages": messages("user", "Tell me a story.")}
		for k, v := range extra {
			r[k] = v
		}
		b, _ := json.Marshal(r)
		return b
	}

	resp, err := http.Post(base+"/chat/completions", "application/json", bytes.NewReader(req(map[string]any{"stream": true})))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Errorf("the stream ended cleanly, want it cut:\n%s", raw)
	}
	if strings.Contains(string(raw), "[DONE]") || strings.Contains(string(raw), "finish_reason\":\"") {
		t.Errorf("the cut stream finished:\n%s", raw)
	}
	content := 0
	for ev := range strings.SplitSeq(string(raw), "\n\n") {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok {
			continue
		}
		var c streamChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("event %q: %v", ev, err)
		}
		if ch := c.Choices[0]; ch.Delta.Role == nil && ch.Delta.Content != nil {
			content++
		}
	}
	if content != crashAt {
		t.Errorf("got %d content chunks before the cut, want %d", content, crashAt)
	}

	_, err = http.Post(base+"/chat/completions", "application/json", bytes.NewReader(req(nil)))
	if err == nil {
		t.Error("a non-streamed request got an answer, want its connection closed")
	}

	// max_tokens below the crash point: the answer is complete.
	status, body := post(t, base+"/chat/completions", json.RawMessage(req(map[string]any{"max_tokens": crashAt - 1})))
	if status != http.StatusOK {
		t.Errorf("short answer: status %d: %s", status, body)
	}
	short := streamChat(t, base, map[string]any{"model": servedName, "messages": messages("user", "hi"), "max_tokens": crashAt - 1})
	if len(short) == 0 {
		t.Error("short stream: no chunks")
	}
}

// Until SlowStart has passed, health and the API answer 503.
func TestSlowStart(t *testing.T) {
	const slow = 300 * time.Millisecond
	started := time.Now()
	base := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "m", SlowStart: slow})
	health := strings.TrimSuffix(base, "/v1") + "/health"

	status, _ := get(t, health)
	chatStatus, chatBody := post(t, base+"/chat/completions", map[string]any{"model": servedName, "messages": messages("user", "hi")})
	if time.Since(started) < slow {
		if status != http.StatusServiceUnavailable || chatStatus != http.StatusServiceUnavailable {
			t.Errorf("while loading: health %d, chat %d %s; want 503 for both", status, chatStatus, chatBody)
		}
	}
	eventually(t, "health answers 200", func() bool { s, _ := get(t, health); return s == http.StatusOK })
	if elapsed := time.Since(started); elapsed < slow {
		t.Errorf("healthy after %v, before the slow start of %v", elapsed, slow)
	}
	chat(t, base, map[string]any{"model": servedName, "messages": messages("user", "hi")})
}

// streamTimes streams max_tokens content tokens and returns how long the
// first content chunk took and how long the whole stream did.
func streamTimes(t *testing.T, base string, maxTokens int) (first, total time.Duration) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"model": servedName, "messages": messages("user", "hi"), "stream": true, "max_tokens": maxTokens})
	began := time.Now()
	resp, err := http.Post(base+"/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	events := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			if events++; events == 2 { // the role chunk, then the first content
				first = time.Since(began)
			}
		}
	}
	return first, time.Since(began)
}

// Latency settings are lower bounds on time; the checks compare ratios
// and a baseline, never tight absolute limits.
func TestLatency(t *testing.T) {
	const itl, ttft = 20 * time.Millisecond, 200 * time.Millisecond
	plain := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "m"})
	slowFirst := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "m", TimeToFirstToken: ttft})
	paced := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "m", InterTokenLatency: itl})

	streamTimes(t, plain, 10) // loads the tokenizer
	baseline, _ := streamTimes(t, plain, 10)
	first, _ := streamTimes(t, slowFirst, 10)
	if first < ttft || first <= baseline {
		t.Errorf("first content after %v with a TTFT of %v, %v without", first, ttft, baseline)
	}
	_, total := streamTimes(t, paced, 10)
	if total < 8*itl {
		t.Errorf("10 tokens at %v each took %v, want at least %v", itl, total, 8*itl)
	}
}
