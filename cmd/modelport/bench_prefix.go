package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/nats-io/nats.go/jetstream"
)

// chatWorkload is the multi-turn chat workload of the routing benchmark:
// many conversations at once, most with a long system prompt of their
// own, some sharing one, each sending its whole history again every
// turn, as chat clients do.
type chatWorkload struct {
	Conversations int           // in all
	Shared        int           // of them, those sharing one system prompt
	Turns         int           // per conversation
	SystemWords   int           // words in a system prompt (about 1.3 tokens each)
	MaxTokens     int           // per answer
	ThinkMin      time.Duration // between an answer and the next question
	ThinkMax      time.Duration
	Stagger       time.Duration // over which conversations start
}

// defaultChatWorkload: 48 conversations of 8 turns, 8 sharing a system
// prompt, the others with their own of about 1,500 tokens.
var defaultChatWorkload = chatWorkload{Conversations: 48, Shared: 8, Turns: 8, SystemWords: 1100, MaxTokens: 48,
	ThinkMin: 100 * time.Millisecond, ThinkMax: 400 * time.Millisecond, Stagger: time.Second}

// The simulated engine of the routing benchmark: a prefix cache of 32k
// tokens per instance (a 7B model's KV cache on a 24 GB GPU holds about
// that), prefill at 50k tokens/s per instance, shared by the requests it
// serves, and 10 ms per output token.
var prefixBenchEngine = map[string]string{
	"MODELPORT_SIM_TTFT":         "5ms",
	"MODELPORT_SIM_ITL":          "10ms",
	"MODELPORT_SIM_PREFILL":      "20us",
	"MODELPORT_SIM_PREFIX_CACHE": "32768",
}

// routingPolicies are the policies compared, the baseline first.
var routingPolicies = []string{"least-outstanding", "round-robin", "prefix-affinity"}

// routingResult is one policy's run of the workload.
type routingResult struct {
	policy           string
	requests         int
	p50, p99         time.Duration // time to first token
	prompt, cached   int           // tokens, as the answers reported them
	elapsed          time.Duration
	instances        []instanceShare
	maxLoad, maxReqs float64 // the busiest instance over the average
}

// instanceShare is what one instance served in a run, from the usage
// events: requests, and requests in flight on average (the sum of their
// durations over the run's).
type instanceShare struct {
	id       string
	requests int
	load     float64
}

// benchPrefixRouting runs the chat workload once per routing policy, each
// on a new four-instance service of its own platform (simulator instances
// with a prefix cache and a prefill cost), and returns the report
// section. Requests are streamed; time to first token is the time to the
// first content chunk at the client, through the router.
func benchPrefixRouting(ctx context.Context, w chatWorkload) (string, error) {
	p, stop, err := startBenchPlatform(ctx, "modelport-bench-prefix-", prefixBenchEngine)
	if err != nil {
		return "", err
	}
	defer stop()
	const key = benchAdminKey
	// The usage events are read as people follow them: by the read-only
	// identity, with message gets.
	nc, js, err := natsx.Connect(p.NATSURL, access.EventsReader, slog.New(slog.DiscardHandler), natsx.NKeyFile(access.SeedFile(p.NATSCreds, access.EventsReader)))
	if err != nil {
		return "", err
	}
	defer nc.Close()
	usage, err := js.Stream(ctx, events.StreamUsage)
	if err != nil {
		return "", fmt.Errorf("the usage stream: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
	convs := w.conversations()

	// A warm-up on a service of its own: connections, and the simulator's
	// memo of encoded system prompts, which its instances share.
	warm := w
	warm.Turns, warm.ThinkMin, warm.ThinkMax = 1, 0, 0
	if _, err := runPolicy(ctx, client, usage, p.BaseURL, key, "warm-up", "least-outstanding", warm, convs); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	// Two runs per policy, interleaved; the better of each is kept, to damp
	// the noise of a shared machine.
	results := make([]routingResult, len(routingPolicies))
	for round := range 2 {
		for i, policy := range routingPolicies {
			r, err := runPolicy(ctx, client, usage, p.BaseURL, key, fmt.Sprintf("chat-%s-%d", policy, round), policy, w, convs)
			if err != nil {
				return "", fmt.Errorf("%s: %w", policy, err)
			}
			if round == 0 || r.p50 < results[i].p50 {
				results[i] = r
			}
		}
	}
	return routingReport(w, results), nil
}

// conversation is one chat of the workload: its system prompt, its
// questions, and its think times.
type conversation struct {
	system    string
	questions []string
	think     []time.Duration
	start     time.Duration
}

// conversations returns the workload's chats, the same every run.
func (w chatWorkload) conversations() []conversation {
	rng := rand.New(rand.NewPCG(21, 4))
	shared := prose(rng, w.SystemWords)
	out := make([]conversation, w.Conversations)
	for i := range out {
		c := &out[i]
		if i < w.Shared {
			c.system = "You are an assistant of the benchmark. " + shared
		} else {
			c.system = fmt.Sprintf("You are assistant %d of the benchmark. %s", i, prose(rng, w.SystemWords))
		}
		for range w.Turns {
			c.questions = append(c.questions, prose(rng, 30+rng.IntN(40))+"?")
			c.think = append(c.think, w.ThinkMin+time.Duration(rng.Int64N(int64(w.ThinkMax-w.ThinkMin)+1)))
		}
		c.start = time.Duration(i) * w.Stagger / time.Duration(max(w.Conversations, 1))
	}
	return out
}

var proseWords = strings.Fields(`the a of to and in for on with as by at from that this which when where
service model request instance answer question customer order invoice ticket travel booking policy rule
refund account payment shipping delivery address date time price plan upgrade support agent tone brief
exact polite always never check confirm explain summarize list steps example reply format language
english french german spanish table json markdown safety privacy data record history context previous
first second third final urgent normal low high priority escalate transfer human review approve reject`)

// prose returns n words of made-up text.
func prose(rng *rand.Rand, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(proseWords[rng.IntN(len(proseWords))])
		if i%12 == 11 {
			b.WriteByte('.')
		}
	}
	return b.String()
}

// turn is one answered request: what the client saw.
type turn struct {
	ttft           time.Duration
	prompt, cached int
}

// runPolicy deploys a four-instance service routed by policy, runs the
// workload on it, reads its usage events and deletes it.
func runPolicy(ctx context.Context, c *http.Client, usage jetstream.Stream, base, key, name, policy string, w chatWorkload, convs []conversation) (routingResult, error) {
	var svc struct {
		ID         string `json:"id"`
		AccessName string `json:"access_name"`
	}
	if err := benchCall(ctx, c, "POST", base+"/api/v1/services", key, map[string]any{"name": name, "base_model": "qwen2.5-7b-instruct",
		"instances": 4, "routing_policy": policy}, &svc); err != nil {
		return routingResult{}, err
	}
	if err := waitReady(ctx, c, base, key, svc.ID, 4); err != nil {
		return routingResult{}, err
	}
	var (
		mu    sync.Mutex
		turns []turn
		first error
		wg    sync.WaitGroup
	)
	started := time.Now()
	for _, conv := range convs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := converse(ctx, c, base+"/v1/chat/completions", key, svc.AccessName, w, conv)
			mu.Lock()
			defer mu.Unlock()
			turns = append(turns, got...)
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started)
	if first != nil {
		return routingResult{}, first
	}
	r := routingResult{policy: policy, requests: len(turns), elapsed: elapsed}
	var ttfts []time.Duration
	for _, t := range turns {
		ttfts = append(ttfts, t.ttft)
		r.prompt += t.prompt
		r.cached += t.cached
	}
	slices.Sort(ttfts)
	q := func(f float64) time.Duration { return ttfts[min(len(ttfts)-1, int(f*float64(len(ttfts))))] }
	r.p50, r.p99 = q(0.50), q(0.99)
	var err error
	if r.instances, err = instanceShares(ctx, usage, svc.ID, len(turns), started, elapsed); err != nil {
		return routingResult{}, err
	}
	var load, reqs float64
	for _, s := range r.instances {
		load += s.load
		reqs += float64(s.requests)
	}
	for _, s := range r.instances {
		r.maxLoad = max(r.maxLoad, s.load/(load/4))
		r.maxReqs = max(r.maxReqs, float64(s.requests)/(reqs/4))
	}
	var deleted struct{}
	if err := benchCall(ctx, c, "DELETE", base+"/api/v1/services/"+svc.ID, key, map[string]any{"confirm_name": name}, &deleted); err != nil {
		return routingResult{}, err
	}
	return r, waitDeleted(ctx, c, base, key, svc.ID)
}

// waitReady waits until a service has n ready instances and the router
// has had time to learn of them.
func waitReady(ctx context.Context, c *http.Client, base, key, id string, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var s struct {
			ReadyInstances int `json:"ready_instances"`
		}
		if err := benchCall(ctx, c, "GET", base+"/api/v1/services/"+id, key, nil, &s); err != nil {
			return err
		}
		if s.ReadyInstances == n {
			time.Sleep(200 * time.Millisecond) // the router learns of them through a watch
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("service %s has not %d ready instances after 30s", id, n)
}

// converse runs one conversation's turns, each streamed, and returns what
// each took.
func converse(ctx context.Context, c *http.Client, url, key, model string, w chatWorkload, conv conversation) ([]turn, error) {
	if !sleepCtx(ctx, conv.start) {
		return nil, ctx.Err()
	}
	msgs := []map[string]string{{"role": "system", "content": conv.system}}
	var out []turn
	for i, q := range conv.questions {
		msgs = append(msgs, map[string]string{"role": "user", "content": q})
		body, _ := json.Marshal(map[string]any{"model": model, "messages": msgs, "max_tokens": w.MaxTokens, "stream": true,
			"stream_options": map[string]any{"include_usage": true}})
		t, answer, err := streamTurn(ctx, c, url, key, body)
		if err != nil {
			return out, fmt.Errorf("turn %d: %w", i, err)
		}
		out = append(out, t)
		msgs = append(msgs, map[string]string{"role": "assistant", "content": answer})
		if !sleepCtx(ctx, conv.think[i]) {
			return out, ctx.Err()
		}
	}
	return out, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// streamTurn sends one streamed chat request and returns its time to
// first token, its usage and its answer.
func streamTurn(ctx context.Context, c *http.Client, url, key string, body []byte) (turn, string, error) {
	req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return turn{}, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return turn{}, "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var t turn
	var answer strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			if t.ttft == 0 || t.prompt == 0 {
				return turn{}, "", fmt.Errorf("stream without content or usage")
			}
			return t, answer.String(), nil
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens        int `json:"prompt_tokens"`
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return turn{}, "", fmt.Errorf("chunk %q: %w", data, err)
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != "" && t.ttft == 0 {
				t.ttft = time.Since(t0)
			}
			answer.WriteString(ch.Delta.Content)
		}
		if chunk.Usage != nil {
			t.prompt, t.cached = chunk.Usage.PromptTokens, chunk.Usage.PromptTokensDetails.CachedTokens
		}
	}
	return turn{}, "", fmt.Errorf("stream ended without [DONE]: %v", sc.Err())
}

// instanceShares reads a service's n usage events, stored since started,
// from the usage stream and sums them per instance: requests, and
// requests in flight on average over elapsed.
func instanceShares(ctx context.Context, usage jetstream.Stream, serviceID string, n int, started time.Time, elapsed time.Duration) ([]instanceShare, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := natsx.NewStreamReader(ctx, usage, started)
	if err != nil {
		return nil, err
	}
	by := map[string]*instanceShare{}
	seen := map[string]bool{}
	for len(seen) < n {
		msg, err := r.Next(ctx)
		switch {
		case errors.Is(err, natsx.ErrCaughtUp):
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("found %d of the %d usage events of service %s", len(seen), n, serviceID)
			case <-time.After(50 * time.Millisecond):
			}
			continue
		case err != nil:
			return nil, err
		case msg.Subject != events.SubjectRequestCompletedV1:
			continue
		}
		var ev events.RequestCompletedV1
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			return nil, err
		}
		if ev.ServiceID != serviceID || seen[ev.ID] {
			continue
		}
		seen[ev.ID] = true
		s := by[ev.InstanceID]
		if s == nil {
			s = &instanceShare{id: ev.InstanceID}
			by[ev.InstanceID] = s
		}
		s.requests++
		s.load += float64(ev.FinishedAt.Sub(ev.StartedAt)) / float64(elapsed)
	}
	var out []instanceShare
	for _, s := range by {
		out = append(out, *s)
	}
	for len(out) < 4 { // an instance that served nothing
		out = append(out, instanceShare{})
	}
	slices.SortFunc(out, func(a, b instanceShare) int { return b.requests - a.requests })
	return out, nil
}

func routingReport(w chatWorkload, results []routingResult) string {
	var b strings.Builder
	b.WriteString("\n## Routing multi-turn chat: prefix-cache-aware routing\n\n")
	fmt.Fprintf(&b, "%d conversations at once on a text service of 4 simulator instances, %d turns each: %d with a system prompt of their own of about %d words, %d sharing one; "+
		"each turn sends the whole history again with a new question of 30 to 70 words, streamed, `max_tokens` %d, and the next comes %s to %s after the answer. ",
		w.Conversations, w.Turns, w.Conversations-w.Shared, w.SystemWords, w.Shared, w.MaxTokens, w.ThinkMin, w.ThinkMax)
	fmt.Fprintf(&b, "The simulator behaves as an engine with automatic prefix caching: each instance caches up to %s tokens of prompts in blocks of 16, least recently used evicted first, "+
		"and its time to first token is %s plus %s per prompt token not in its cache, prefills queueing one after another on the instance (its compute), then %s per output token "+
		"(`MODELPORT_SIM_PREFIX_CACHE`, `MODELPORT_SIM_TTFT`, `MODELPORT_SIM_PREFILL`, `MODELPORT_SIM_ITL`). ",
		prefixBenchEngine["MODELPORT_SIM_PREFIX_CACHE"], prefixBenchEngine["MODELPORT_SIM_TTFT"], prefixBenchEngine["MODELPORT_SIM_PREFILL"], prefixBenchEngine["MODELPORT_SIM_ITL"])
	b.WriteString("Each policy runs the same conversations on a new service, twice, the policies interleaved after a warm-up, and the run with the better median is kept; time to first token is measured at the client through the router. ")
	b.WriteString("The cache hit rate is the share of prompt tokens the engines reported cached (`usage.prompt_tokens_details.cached_tokens`). ")
	b.WriteString("Load is each instance's requests in flight on average, from the usage events (the sum of their durations over the run's); the spread is the busiest instance's load, and its requests, over the average.\n\n")
	b.WriteString("| policy | requests | TTFT p50 | TTFT p99 | cache hit rate | throughput | busiest instance: load / requests vs average | requests per instance |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
	var base routingResult
	for _, r := range results {
		if r.policy == "least-outstanding" {
			base = r
		}
	}
	for _, r := range results {
		var per []string
		for _, s := range r.instances {
			per = append(per, fmt.Sprint(s.requests))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %.0f%% | %.1f req/s | %.2f× / %.2f× | %s |\n",
			r.policy, r.requests, ms(r.p50), ms(r.p99), 100*float64(r.cached)/float64(max(r.prompt, 1)),
			float64(r.requests)/r.elapsed.Seconds(), r.maxLoad, r.maxReqs, strings.Join(per, ", "))
	}
	for _, r := range results {
		if r.policy != "prefix-affinity" || base.requests == 0 {
			continue
		}
		tput := (float64(r.requests) / r.elapsed.Seconds()) / (float64(base.requests) / base.elapsed.Seconds())
		fmt.Fprintf(&b, "\nprefix-affinity against least-outstanding: **TTFT p50 %.2f×** (target ≤ 0.5×), p99 %.2f×; **throughput %.2f×** (target: equal); "+
			"**busiest instance %.2f× the average load** (target ≤ 1.25×). ",
			ratio(r.p50, base.p50), ratio(r.p99, base.p99), tput, r.maxLoad)
		b.WriteString("Text-generation services are routed by prefix-affinity unless their owner chooses otherwise (docs/services.md#routing).\n")
	}
	return b.String()
}
