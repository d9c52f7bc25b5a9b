package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/tinygguf"
)

// benchEngineModel is the catalog name of the tiny model the real-engine
// benchmark deploys on Ollama.
const benchEngineModel = "tiny-chat-bench"

// benchEngineSetup prepares the real-engine benchmark: it finds Ollama
// where the worker will look (PATH, then beside this binary, where `make
// engines` links it), writes the tiny model, and returns the settings
// that add it to the catalog and let the worker run it on Ollama, one CPU
// thread per instance.
func benchEngineSetup(dir string) (map[string]string, error) {
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
	m, err := tinygguf.Model(tinygguf.Options{})
	if err != nil {
		return nil, err
	}
	weights := filepath.Join(dir, "tiny.gguf")
	if err := m.WriteFile(weights); err != nil {
		return nil, err
	}
	models := catalog.Default().Models()
	models = append(models, catalog.Model{
		Name: benchEngineModel, DisplayName: "Tiny chat (random weights)", Tasks: []string{"text-generation"},
		Engine: "ollama", Source: "file://" + weights, ContextLength: 1024,
	})
	b, err := json.Marshal(models)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "catalog.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return nil, err
	}
	return map[string]string{
		"MODELPORT_CATALOG":            file,
		"MODELPORT_WORKER_ENGINES":     "ollama",
		"MODELPORT_WORKER_ENGINE_PATH": path,
		"MODELPORT_WORKER_CPU_THREADS": "1",
		"MODELPORT_WORKER_GPUS":        "0",
	}, nil
}

// benchEngine measures the tiny model on a real Ollama: deploy request to
// the first answer (the engine's start and model load included), and
// generation speed through the router against the instance directly.
func benchEngine(ctx context.Context, c *http.Client, base, key string) (string, error) {
	const deploys = 3
	var toFirst []time.Duration
	for i := range deploys {
		name := fmt.Sprintf("engine-%d", i)
		t0 := time.Now()
		var svc struct {
			ID         string `json:"id"`
			AccessName string `json:"access_name"`
		}
		if err := benchCall(ctx, c, "POST", base+"/api/v1/services", key, map[string]any{"name": name, "base_model": benchEngineModel}, &svc); err != nil {
			return "", err
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
			rows, err := benchTokens(ctx, c, base, key, svc.ID, svc.AccessName)
			if err != nil {
				return "", err
			}
			var deleted struct{}
			if err := benchCall(ctx, c, "DELETE", base+"/api/v1/services/"+svc.ID, key, map[string]any{"confirm_name": name}, &deleted); err != nil {
				return "", err
			}
			if err := waitDeleted(ctx, c, base, key, svc.ID); err != nil {
				return "", err
			}
			slices.Sort(toFirst)
			var b strings.Builder
			b.WriteString("\n## A real engine: Ollama serving a tiny model on the CPU\n\n")
			b.WriteString("Ollama (built by `make engines`) serving the tiny random-weights llama model of `modelport testmodel` (2 layers, 64 dimensions, a few hundred KB) on one CPU thread per instance. ")
			b.WriteString("Deploy to first answer is the wall time from the deploy request until a chat completion is answered: placement, starting `ollama serve`, importing the GGUF file (blob upload and create), loading the model on the first request, and 8 generated tokens. ")
			fmt.Fprintf(&b, "Median of %d deploys, each a fresh service.\n\n", deploys)
			b.WriteString("| step | median | slowest |\n|---|---:|---:|\n")
			fmt.Fprintf(&b, "| deploy request → first answer on Ollama (model load included) | %s | %s |\n\n", ms(toFirst[len(toFirst)/2]), ms(toFirst[len(toFirst)-1]))
			b.WriteString("Generation speed: streamed chat completions with greedy decoding and `max_tokens` 256, through the router and straight to the instance's OpenAI API, interleaved; tokens are the engine's own completion counts, time is from the request to the last chunk. ")
			b.WriteString("The tiny model generates far faster than any real one, so the router's share of the time is as large here as it will ever be.\n\n")
			b.WriteString(rows)
			return b.String(), nil
		}
		var deleted struct{}
		if err := benchCall(ctx, c, "DELETE", base+"/api/v1/services/"+svc.ID, key, map[string]any{"confirm_name": name}, &deleted); err != nil {
			return "", err
		}
		if err := waitDeleted(ctx, c, base, key, svc.ID); err != nil {
			return "", err
		}
	}
	return "", errors.New("unreachable")
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
	req, _ := http.NewRequestWithContext(ctx, "POST", target.url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if target.key != "" {
		req.Header.Set("Authorization", "Bearer "+target.key)
	}
	resp, err := c.Do(req)
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
