package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/tinygguf"
)

// benchEngineSetup prepares the real-engine benchmark: it finds Ollama
// where the worker will look (PATH, then beside this binary, where `make
// engines` links it) and returns the settings that let the worker run it,
// one CPU thread per instance. The model comes from the registry, as an
// owner's does (benchEngine).
func benchEngineSetup() (map[string]string, error) {
	exe, _ := os.Executable()
	path := os.Getenv("PATH")
	if exe != "" {
		path += string(filepath.ListSeparator) + filepath.Dir(exe)
	}
	found := false
	for _, d := range filepath.SplitList(path) {
		if st, err := os.Stat(filepath.Join(d, "ollama")); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			found = true
			break
		}
	}
	if !found {
		return nil, errors.New("the real-engine benchmark needs Ollama on PATH or beside this binary: run `make engines`")
	}
	return map[string]string{
		"MODELPORT_WORKER_ENGINES":     "ollama",
		"MODELPORT_WORKER_ENGINE_PATH": path,
		"MODELPORT_WORKER_CPU_THREADS": "1",
		"MODELPORT_WORKER_GPUS":        "0",
	}, nil
}

// benchEngine measures the tiny model on a real Ollama, the way an owner
// brings a model: the GGUF file written into the model store and
// registered (its header read, its memory estimated), then deploy request
// to the first answer (the engine's start and model load included), and
// generation speed through the router against the instance directly.
func benchEngine(ctx context.Context, c *http.Client, base, key, store string) (string, error) {
	m, err := tinygguf.Model(tinygguf.Options{})
	if err != nil {
		return "", err
	}
	weights := filepath.Join(store, "bench-tiny.gguf")
	if err := m.WriteFile(weights); err != nil {
		return "", err
	}
	defer os.Remove(weights)
	const deploys = 3
	var toRegister, toFirst []time.Duration
	var rows string
	for i := range deploys {
		name, model := fmt.Sprintf("engine-%d", i), fmt.Sprintf("tiny-chat-bench-%d", i)
		t0 := time.Now()
		var registered struct {
			Engine     string          `json:"engine"`
			Inspection json.RawMessage `json:"inspection"`
		}
		if err := benchCall(ctx, c, "POST", base+"/api/v1/models", key, map[string]any{
			"name": model, "source": "file://" + weights, "context_length": 1024,
		}, &registered); err != nil {
			return "", err
		}
		if registered.Engine != "ollama" || len(registered.Inspection) == 0 {
			return "", fmt.Errorf("model %s registered for engine %q, inspection %s: want ollama and its GGUF header", model, registered.Engine, registered.Inspection)
		}
		toRegister = append(toRegister, time.Since(t0))

		t0 = time.Now()
		var svc struct {
			ID         string `json:"id"`
			AccessName string `json:"access_name"`
			Engine     string `json:"engine"`
		}
		if err := benchCall(ctx, c, "POST", base+"/api/v1/services", key, map[string]any{"name": name, "base_model": model}, &svc); err != nil {
			return "", err
		}
		if svc.Engine != "ollama" {
			return "", fmt.Errorf("service %s of model %s on engine %q, want ollama", svc.ID, model, svc.Engine)
		}
		body, _ := json.Marshal(map[string]any{"model": svc.AccessName, "max_tokens": 8, "messages": []map[string]string{{"role": "user", "content": "hi"}}})
		for {
			_, err := timeRequest(ctx, c, benchTarget{url: base + "/v1/chat/completions", key: key}, body, false)
			if err == nil {
				toFirst = append(toFirst, time.Since(t0))
				break
			}
			if time.Since(t0) > 2*time.Minute {
				return "", fmt.Errorf("service %s on Ollama never answered: %w", svc.ID, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if i == deploys-1 {
			if rows, err = benchTokens(ctx, c, base, key, svc.ID, svc.AccessName); err != nil {
				return "", err
			}
		}
		var deleted struct{}
		if err := benchCall(ctx, c, "DELETE", base+"/api/v1/services/"+svc.ID, key, map[string]any{"confirm_name": name}, &deleted); err != nil {
			return "", err
		}
		if err := waitDeleted(ctx, c, base, key, svc.ID); err != nil {
			return "", err
		}
		if err := benchDeleteModel(ctx, c, base, key, model); err != nil {
			return "", err
		}
	}
	slices.Sort(toRegister)
	slices.Sort(toFirst)
	var b strings.Builder
	b.WriteString("\n## A real engine: Ollama serving a tiny model on the CPU\n\n")
	b.WriteString("Ollama (built by `make engines`) serving the tiny random-weights llama model of `modelport testmodel` (2 layers, 64 dimensions, a few hundred KB) on one CPU thread per instance, brought as an owner brings a model: the GGUF file on the model store, registered with `POST /api/v1/models`. ")
	b.WriteString("Registering is the answer to that request: the GGUF header read and the memory estimated. ")
	b.WriteString("Deploy to first answer is the wall time from the deploy request until a chat completion is answered: placement, starting `ollama serve`, importing the GGUF file (blob upload and create), loading the model on the first request, and 8 generated tokens. ")
	fmt.Fprintf(&b, "Median of %d models and deploys, each a fresh model and service.\n\n", deploys)
	b.WriteString("| step | median | slowest |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| register the GGUF file (header read, memory estimate) | %s | %s |\n", ms(toRegister[len(toRegister)/2]), ms(toRegister[len(toRegister)-1]))
	fmt.Fprintf(&b, "| deploy request → first answer on Ollama (model load included) | %s | %s |\n\n", ms(toFirst[len(toFirst)/2]), ms(toFirst[len(toFirst)-1]))
	b.WriteString("Generation speed: streamed chat completions with greedy decoding and `max_tokens` 256, through the router and straight to the instance's OpenAI API, interleaved; tokens are the engine's own completion counts, time is from the request to the last chunk. ")
	b.WriteString("The tiny model generates far faster than any real one, so the router's share of the time is as large here as it will ever be.\n\n")
	b.WriteString(rows)
	return b.String(), nil
}

// benchDeleteModel deletes a registered model, which answers 204.
func benchDeleteModel(ctx context.Context, c *http.Client, base, key, name string) error {
	req, err := http.NewRequestWithContext(ctx, "DELETE", base+"/api/v1/models/"+name, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("delete model %s: %d %s", name, resp.StatusCode, b)
	}
	return nil
}

// benchTokens measures generation speed of the service's one instance,
// through the router and directly, at concurrency 1 and 4.
func benchTokens(ctx context.Context, c *http.Client, base, key, serviceID, model string) (string, error) {
	var insts []struct {
		Endpoint string `json:"endpoint"`
	}
	if err := benchCall(ctx, c, "GET", base+"/api/v1/services/"+serviceID+"/instances", key, nil, &insts); err != nil {
		return "", err
	}
	if len(insts) != 1 {
		return "", fmt.Errorf("%d instances, want 1", len(insts))
	}
	targets := []benchTarget{
		{name: "engine direct", url: insts[0].Endpoint + "/chat/completions"},
		{name: "router", url: base + "/v1/chat/completions", key: key},
	}
	var b strings.Builder
	b.WriteString("| concurrency | streams | engine tokens/s | router tokens/s | **router / engine** | engine p50 per stream | router p50 per stream |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, conc := range []int{1, 4} {
		const streams = 24
		var best [2]tokenRate
		for round := range 3 {
			for i, target := range targets {
				r, err := tokenLoad(ctx, c, target, model, streams, conc)
				if err != nil {
					return "", fmt.Errorf("%s at concurrency %d: %w", target.name, conc, err)
				}
				if round > 0 && r.perSecond > best[i].perSecond { // round 0 warms up
					best[i] = r
				}
			}
		}
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.0f | **%.2f×** | %s | %s |\n", conc, streams, best[0].perSecond, best[1].perSecond,
			best[1].perSecond/best[0].perSecond, ms(best[0].p50), ms(best[1].p50))
	}
	return b.String(), nil
}

type tokenRate struct {
	perSecond float64
	p50       time.Duration
}

// tokenLoad runs n greedy streams of up to 256 tokens from concurrency
// clients and returns the completion tokens per second over the run.
func tokenLoad(ctx context.Context, c *http.Client, target benchTarget, model string, n, concurrency int) (tokenRate, error) {
	type result struct {
		tokens int
		took   time.Duration
		err    error
	}
	results := make(chan result, n)
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	start := time.Now()
	for range concurrency {
		go func() {
			for i := range next {
				t0 := time.Now()
				tokens, err := streamTokens(ctx, c, target, model, i)
				results <- result{tokens, time.Since(t0), err}
			}
		}()
	}
	total := 0
	var took []time.Duration
	for range n {
		r := <-results
		if r.err != nil {
			return tokenRate{}, r.err
		}
		total += r.tokens
		took = append(took, r.took)
	}
	elapsed := time.Since(start)
	slices.Sort(took)
	return tokenRate{perSecond: float64(total) / elapsed.Seconds(), p50: took[len(took)/2]}, nil
}

// streamTokens streams one greedy chat completion and returns the
// completion tokens its usage reports.
func streamTokens(ctx context.Context, c *http.Client, target benchTarget, model string, i int) (int, error) {
	body, _ := json.Marshal(map[string]any{
		"model": model, "stream": true, "max_tokens": 256, "temperature": 0, "stream_options": map[string]bool{"include_usage": true},
		"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Benchmark stream %d: write a long story.", i)}},
	})
	resp, _, err := target.post(ctx, c, body)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	tokens := -1
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal([]byte(data), &chunk) == nil && chunk.Usage != nil {
			tokens = chunk.Usage.CompletionTokens
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if tokens < 0 {
		return 0, errors.New("stream without usage")
	}
	return tokens, nil
}
