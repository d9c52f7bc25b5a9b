package main

// The platform on a real engine: Ollama, built by `make engines`, serving
// the tiny random-weights model from libs/tinygguf on the CPU.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/enginetest"
	"github.com/modelport/modelport/libs/tinygguf"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// ollamaEngine returns the settings that let a worker run Ollama, in one
// place: the real engine, where to find it, no GPUs, and one CPU thread
// per instance (the tiny model needs no more, and test machines are busy).
func ollamaEngine(t *testing.T) map[string]string {
	t.Helper()
	bin := enginetest.Ollama(t)
	return map[string]string{
		"MODELPORT_WORKER_ENGINES":     "ollama",
		"MODELPORT_WORKER_ENGINE_PATH": filepath.Dir(bin),
		"MODELPORT_WORKER_CPU_THREADS": "1",
		"MODELPORT_WORKER_GPUS":        "0",
	}
}

// tinyModels are the tiny model and its LoRA fine-tune, registered by an
// owner, and their files on the model store.
type tinyModels struct {
	base, tuned      apiModel
	weights, adapter string
}

// registerTinyModels takes the product's path for an owner's model: it
// writes the tiny GGUF model and its LoRA adapter into the platform's
// model store (`modelport testmodel -adapter`), registers them as the
// admin's own models with POST /api/v1/models (a file:// source, then a
// base and an adapter), and checks what the registry read in the files
// against what was written: architecture, parameters, layers, context,
// sizes and a memory estimate that places the model.
func registerTinyModels(t *testing.T, p *platform) tinyModels {
	t.Helper()
	if len(p.ModelDirs) == 0 {
		t.Fatal("the platform has no model store")
	}
	m := tinyModels{weights: filepath.Join(p.ModelDirs[0], "tiny.gguf"), adapter: filepath.Join(p.ModelDirs[0], "tiny-lora.gguf")}
	if err := testmodel([]string{"-o", m.weights, "-adapter", m.adapter}, io.Discard, io.Discard); err != nil {
		t.Fatalf("modelport testmodel: %v", err)
	}
	// What testmodel wrote, to check the inspection against.
	wrote, err := tinygguf.Model(tinygguf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lora, err := tinygguf.Adapter(tinygguf.AdapterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size := func(path string) int64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}

	if s := call(t, "POST", p.BaseURL+"/api/v1/models", testAdminKey, map[string]any{
		"name": "tiny-chat", "source": "file://" + m.weights, "context_length": 1024,
	}, &m.base); s != http.StatusCreated {
		t.Fatalf("register the tiny model: status %d, %+v", s, m.base)
	}
	b, insp := m.base, m.base.Inspection
	if b.Name != "tiny-chat" || b.Owner == "" || b.Owner == "catalog" || b.Owner == "public" || b.Source != "file://"+m.weights ||
		b.Format != "gguf" || b.Engine != "ollama" || b.GPUs != 0 || b.ContextLength != 1024 || !slices.Equal(b.Tasks, []string{"text-generation"}) ||
		b.DisplayName != wrote.Get("general.name") {
		t.Fatalf("registered %+v; want the admin's own GGUF model on Ollama, without GPUs, at 1024 tokens", b)
	}
	var params, tensorBytes int64
	for _, x := range wrote.Tensors {
		params += int64(x.Elements())
		tensorBytes += 4 * int64(x.Elements()) // F32
	}
	switch {
	case insp == nil:
		t.Fatalf("registered %+v without an inspection", b)
	case insp.Format != "gguf" || insp.Architecture != wrote.Get("general.architecture") || insp.Architecture != "llama":
		t.Errorf("inspection: format %q, architecture %q; want gguf, llama", insp.Format, insp.Architecture)
	case insp.Parameters != params || insp.TensorBytes != tensorBytes || insp.FileBytes != size(m.weights) || insp.Quantization != "F32":
		t.Errorf("inspection: %d parameters, %d tensor bytes, %d file bytes, %s; testmodel wrote %d F32 parameters, %d bytes in a file of %d",
			insp.Parameters, insp.TensorBytes, insp.FileBytes, insp.Quantization, params, tensorBytes, size(m.weights))
	case uint32(insp.Layers) != wrote.Get("llama.block_count") || uint32(insp.ContextLength) != wrote.Get("llama.context_length"):
		t.Errorf("inspection: %d layers, trained on %d tokens; the file says %v and %v",
			insp.Layers, insp.ContextLength, wrote.Get("llama.block_count"), wrote.Get("llama.context_length"))
	case insp.EstimatedContext != 1024 || insp.MemoryBytes <= insp.TensorBytes || insp.GPUMemoryBytes <= insp.TensorBytes || b.MemoryBytes != insp.MemoryBytes:
		t.Errorf("memory estimate: %d bytes on CPUs, %d on GPUs at %d tokens; the model reserves %d; want more than the weights' %d at 1024 tokens, reserved as estimated",
			insp.MemoryBytes, insp.GPUMemoryBytes, insp.EstimatedContext, b.MemoryBytes, insp.TensorBytes)
	}

	if s := call(t, "POST", p.BaseURL+"/api/v1/models", testAdminKey, map[string]any{
		"name": "tiny-tuned", "base": "tiny-chat", "adapter": "file://" + m.adapter,
	}, &m.tuned); s != http.StatusCreated {
		t.Fatalf("register the fine-tune: status %d, %+v", s, m.tuned)
	}
	ft := m.tuned
	var adapterParams int64
	for _, x := range lora.Tensors {
		adapterParams += int64(x.Elements())
	}
	if ft.Base != "tiny-chat" || ft.Adapter != "file://"+m.adapter || ft.Source != b.Source || ft.Engine != "ollama" || ft.Owner != b.Owner ||
		ft.ContextLength != 1024 || ft.Inspection == nil || ft.Inspection.Adapter == nil ||
		ft.Inspection.Adapter.Parameters != adapterParams || ft.Inspection.Adapter.FileBytes != size(m.adapter) ||
		ft.MemoryBytes != b.MemoryBytes+ft.Inspection.Adapter.TensorBytes {
		t.Fatalf("registered fine-tune %+v (inspection %+v); want tiny-chat's weights with the adapter of %d parameters, reserving the base's memory and the adapter's",
			ft, ft.Inspection, adapterParams)
	}
	var got apiModel
	if s := call(t, "GET", p.BaseURL+"/api/v1/models/tiny-chat", testAdminKey, nil, &got); s != 200 || got.Inspection == nil || *got.Inspection != *insp {
		t.Errorf("GET the model: status %d, %+v; want it as registered", s, got)
	}
	return m
}

// ollamaStore gives the engines that the test process starts a models
// folder of the test's own, and checks at the end that no engine process
// working on it is left.
func ollamaStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("OLLAMA_MODELS", dir)
	t.Cleanup(func() { noProcessesUsing(t, dir) })
	return dir
}

// noProcessesUsing fails the test if an ollama process whose command line
// or environment names dir outlives the platform, and ends it.
func noProcessesUsing(t *testing.T, dir string) {
	t.Helper()
	var left []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		left = processesUsing(dir)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range left {
		t.Errorf("process outlived the platform: %s", p)
		var pid int
		fmt.Sscan(p, &pid)
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// processesUsing lists "pid command line" of the ollama processes that
// mention dir in their command line or environment.
func processesUsing(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []string
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == self {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); filepath.Base(string(argv0)) != "ollama" {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if bytes.Contains(cmdline, []byte(dir)) || bytes.Contains(environ, []byte("OLLAMA_MODELS="+dir)) {
			out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// modelService is a service as the control API shows it, with its owner
// and the model it keeps.
type modelService struct {
	service
	OwnerID string `json:"owner_id"`
	Model   *struct {
		Name        string `json:"name"`
		Owner       string `json:"owner"`
		Source      string `json:"source"`
		Adapter     string `json:"adapter"`
		MemoryBytes int64  `json:"memory_bytes"`
	} `json:"model"`
}

// answerRecord is one answer from the Node client's run (engine.test.mjs).
type answerRecord struct {
	Name    string `json:"name"`
	Request struct {
		Messages    []map[string]string `json:"messages"`
		MaxTokens   int                 `json:"max_tokens"`
		Temperature float64             `json:"temperature"`
		Stop        []string            `json:"stop"`
	} `json:"request"`
	Content      string `json:"content"`
	FinishReason string `json:"finish_reason"`
	Usage        struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

// TestOllamaEndToEnd runs the platform on a real engine: the all-in-one
// with Ollama, plus a second inference-worker process. An owner puts the
// tiny model on the model store, registers it (its GGUF header read and
// checked) and deploys it with two instances. The official Go and Node
// clients chat through the router (whole answers, streams with usage,
// stop, max_tokens, two conversations at once); every answer's usage is
// what Ollama's own API counts for the same request, and ClickHouse bills
// exactly those tokens. Then a worker is killed mid-stream, the service
// scales to zero and back (a cold start on the real engine), and is
// deleted, leaving no engine process behind; its model cannot be deleted
// before. A LoRA fine-tune of the model, registered as base and adapter,
// answers through Ollama with the adapter applied. Last, both models are
// deleted.
func TestOllamaEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real engine, Node.js and a worker process")
	}
	node := nodeForClientTests(t)
	chAddr, chDB := chtest.New(t)
	engineEnv := ollamaEngine(t)
	store := ollamaStore(t)
	settings := map[string]string{
		"MODELPORT_WORKER_CAPACITY":      "1", // the two instances go one to each worker
		"MODELPORT_AUTOSCALE_INTERVAL":   "200ms",
		"MODELPORT_AUTOSCALE_DOWN_DELAY": "1s",
		"MODELPORT_LOAD_REPORT_INTERVAL": "200ms",
	}
	maps.Copy(settings, engineEnv)
	env := config.Chain(config.Map(settings), testEnv(t, chAddr, chDB))
	p, err := startPlatform(context.Background(), env, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	models := registerTinyModels(t, p)

	// A second worker, a process of its own that the test kills later,
	// with an engine store of its own as on another machine.
	c := &cluster{bin: buildWorker(t), seeds: p.NATSCreds, urls: map[string]string{}, procs: map[string]*proc{}, common: []string{
		"MODELPORT_NATS_URL=" + p.NATSURL, "MODELPORT_LOG_LEVEL=debug", "OLLAMA_MODELS=" + filepath.Join(store, "w2"),
	}}
	for k, v := range engineEnv {
		c.common = append(c.common, k+"="+v)
	}
	c.start(t, "w2", "inference-worker", "MODELPORT_WORKER_ID=w2", "MODELPORT_WORKER_CAPACITY=1")

	// Deploy the owner's model: two instances on Ollama, one on each
	// worker. The service keeps the model as it was registered.
	began := time.Now()
	var svc modelService
	if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{
		"name": "tiny", "base_model": models.base.Name, "task": "text-generation", "instances": 2,
		// Each Ollama here answers one request at a time: concurrent
		// streams spread evenly, so that a worker killed mid-stream finds
		// one of them running (prefix affinity may put three of four on
		// one instance, whose queue then outlasts the other's streams).
		"routing_policy": "least-outstanding",
	}, &svc); s != http.StatusCreated {
		t.Fatalf("create: status %d (%+v)", s, svc)
	}
	if m := svc.Model; svc.Engine != "ollama" || m == nil || m.Name != models.base.Name || m.Owner != models.base.Owner ||
		m.Owner != svc.OwnerID || m.Source != models.base.Source || m.MemoryBytes != models.base.MemoryBytes || m.Adapter != "" {
		t.Fatalf("created %+v with model %+v; want the owner's registered model on Ollama", svc, m)
	}
	eventually(t, 2*time.Minute, "running on two Ollama instances", func() error {
		var got service
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
		if got.Status != "running" || got.ReadyInstances != 2 || got.Engine != "ollama" {
			return fmt.Errorf("status %s, ready %d/%d, engine %q", got.Status, got.ReadyInstances, got.Instances, got.Engine)
		}
		return nil
	})
	t.Logf("deployed and ready on two Ollama instances in %v", time.Since(began).Round(time.Millisecond))
	var insts []struct {
		WorkerID string `json:"worker_id"`
		Engine   string `json:"engine"`
		Endpoint string `json:"endpoint"`
	}
	call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &insts)
	if len(insts) != 2 || insts[0].WorkerID == insts[1].WorkerID || insts[0].Engine != "ollama" || insts[1].Engine != "ollama" {
		t.Fatalf("instances %+v, want one on Ollama on each worker", insts)
	}
	engineBase := strings.TrimSuffix(insts[0].Endpoint, "/v1") // either instance: greedy answers are the same on both
	var served struct {
		Data []struct {
			ID     string `json:"id"`
			Engine string `json:"engine"`
		} `json:"data"`
	}
	if s := call(t, "GET", p.BaseURL+"/v1/models", testAdminKey, nil, &served); s != 200 || len(served.Data) != 1 ||
		served.Data[0].ID != svc.AccessName || served.Data[0].Engine != "ollama" {
		t.Errorf("/v1/models: status %d, %+v; want the service on engine ollama", s, served.Data)
	}

	// billed is what the clients were told; ClickHouse must hold exactly it.
	var mu sync.Mutex
	billed := usageTotals{ServiceID: svc.ID}
	bill := func(prompt, completion int) {
		mu.Lock()
		defer mu.Unlock()
		billed.Requests++
		billed.PromptTokens += uint64(prompt)
		billed.CompletionTokens += uint64(completion)
		billed.TotalTokens += uint64(prompt + completion)
	}
	// sameAsOllama checks an answer against Ollama's native API for the
	// same request, and bills it.
	sameAsOllama := func(t *testing.T, what string, messages []map[string]string, options map[string]any, content, finish string, prompt, completion int) {
		t.Helper()
		n := enginetest.OllamaChat(t, engineBase, svc.AccessName, messages, options)
		if prompt != n.Prompt || completion != n.Completion || content != n.Content || finish != n.DoneReason {
			t.Errorf("%s: %q (%s), %d+%d tokens; Ollama's own answer: %q (%s), %d+%d tokens",
				what, content, finish, prompt, completion, n.Content, n.DoneReason, n.Prompt, n.Completion)
		}
		bill(prompt, completion)
	}

	var baseAnswer string // the greedy answer to "Say this is a test!" in 12 tokens
	t.Run("Go client", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		client := openai.NewClient(option.WithBaseURL(p.BaseURL+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))
		ask := func(content string, maxTokens int64, stop ...string) (openai.ChatCompletionNewParams, []map[string]string, map[string]any) {
			params := openai.ChatCompletionNewParams{Model: svc.AccessName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(content)},
				MaxTokens: openai.Int(maxTokens), Temperature: openai.Float(0)}
			options := map[string]any{"temperature": 0, "top_p": 1, "num_predict": maxTokens}
			if len(stop) > 0 {
				params.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: stop}
				options["stop"] = stop
			}
			return params, []map[string]string{{"role": "user", "content": content}}, options
		}
		whole := func(t *testing.T, what string, params openai.ChatCompletionNewParams, messages []map[string]string, options map[string]any) *openai.ChatCompletion {
			t.Helper()
			resp, err := client.Chat.Completions.New(ctx, params)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if resp.Model != svc.AccessName || !strings.HasPrefix(resp.ID, "cmp-") || len(resp.Choices) != 1 || strings.Contains(strings.ToLower(resp.Choices[0].Message.Content), "simulat") {
				t.Errorf("%s: %+v", what, resp)
			}
			sameAsOllama(t, what, messages, options, resp.Choices[0].Message.Content, string(resp.Choices[0].FinishReason),
				int(resp.Usage.PromptTokens), int(resp.Usage.CompletionTokens))
			return resp
		}

		params, messages, options := ask("Say this is a test!", 12)
		first := whole(t, "whole answer", params, messages, options)
		text := first.Choices[0].Message.Content
		baseAnswer = text
		if first.Usage.CompletionTokens != 12 || first.Choices[0].FinishReason != "length" {
			t.Errorf("max_tokens 12: %d tokens, finish %q", first.Usage.CompletionTokens, first.Choices[0].FinishReason)
		}

		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := client.Chat.Completions.NewStreaming(ctx, params)
		var acc openai.ChatCompletionAccumulator
		chunks := 0
		for stream.Next() {
			acc.AddChunk(stream.Current())
			chunks++
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != text || acc.Usage.CompletionTokens != 12 || chunks < 3 {
			t.Errorf("stream: %d chunks, %+v; want the whole answer %q", chunks, acc.ChatCompletion, text)
		} else {
			sameAsOllama(t, "stream", messages, options, acc.Choices[0].Message.Content, string(acc.Choices[0].FinishReason),
				int(acc.Usage.PromptTokens), int(acc.Usage.CompletionTokens))
		}

		if len(text) < 6 {
			t.Fatalf("answer %q too short to cut", text)
		}
		stop := text[3:5]
		params, messages, options = ask("Say this is a test!", 12, stop)
		cut := whole(t, "stop", params, messages, options)
		if got, want := cut.Choices[0].Message.Content, text[:strings.Index(text, stop)]; got != want || cut.Choices[0].FinishReason != "stop" {
			t.Errorf("stop %q: %q (%s), want %q", stop, got, cut.Choices[0].FinishReason, want)
		}

		params, messages, options = ask("Say this is a test!", 3)
		if short := whole(t, "max_tokens 3", params, messages, options); short.Usage.CompletionTokens != 3 || !strings.HasPrefix(text, short.Choices[0].Message.Content) {
			t.Errorf("max_tokens 3: %+v", short)
		}

		// Two conversations at once, one on each instance or both on one:
		// each answers as it does alone.
		pa, ma, oa := ask("Tell me about the sea.", 10)
		pb, mb, ob := ask("And about the mountains?", 8)
		alone := []string{whole(t, "alone a", pa, ma, oa).Choices[0].Message.Content, whole(t, "alone b", pb, mb, ob).Choices[0].Message.Content}
		together := make([]string, 2)
		var wg sync.WaitGroup
		wg.Go(func() { together[0] = whole(t, "together a", pa, ma, oa).Choices[0].Message.Content })
		wg.Go(func() { together[1] = whole(t, "together b", pb, mb, ob).Choices[0].Message.Content })
		wg.Wait()
		if together[0] != alone[0] || together[1] != alone[1] {
			t.Errorf("together %q, alone %q", together, alone)
		}
	})

	t.Run("Node client", func(t *testing.T) {
		results := filepath.Join(t.TempDir(), "results.json")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "clients/node/engine.test.mjs")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "MODELPORT_BASE_URL="+p.BaseURL+"/v1", "MODELPORT_API_KEY="+testAdminKey,
			"MODELPORT_TEXT_MODEL="+svc.AccessName, "MODELPORT_RESULTS="+results)
		out, err := cmd.CombinedOutput()
		t.Logf("node --test clients/node/engine.test.mjs:\n%s", out)
		if err != nil {
			t.Fatalf("node --test clients/node/engine.test.mjs: %v (its output is above)", err)
		}
		b, err := os.ReadFile(results)
		if err != nil {
			t.Fatal(err)
		}
		var answers []answerRecord
		if err := json.Unmarshal(b, &answers); err != nil || len(answers) < 8 {
			t.Fatalf("%d answers recorded (%v)", len(answers), err)
		}
		for _, a := range answers {
			options := map[string]any{"temperature": a.Request.Temperature, "top_p": 1, "num_predict": a.Request.MaxTokens}
			if len(a.Request.Stop) > 0 {
				options["stop"] = a.Request.Stop
			}
			sameAsOllama(t, "node "+a.Name, a.Request.Messages, options, a.Content, a.FinishReason, a.Usage.PromptTokens, a.Usage.CompletionTokens)
		}
	})

	// ClickHouse bills exactly what the clients were told.
	eventually(t, 30*time.Second, "usage billed", func() error {
		if got, err := usageOf(t, p.BaseURL, svc.ID); err != nil || got != billed {
			return fmt.Errorf("usage API %+v (%v), want %+v", got, err, billed)
		}
		return nil
	})
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var rows, prompt, completion uint64
	if err := conn.QueryRow(context.Background(), "SELECT uniqExact(event_id), sum(prompt_tokens), sum(completion_tokens) FROM "+chDB+".usage_events WHERE service_id = ?", svc.ID).
		Scan(&rows, &prompt, &completion); err != nil {
		t.Fatalf("query ClickHouse: %v", err)
	}
	if rows != billed.Requests || prompt != billed.PromptTokens || completion != billed.CompletionTokens {
		t.Errorf("ClickHouse holds %d requests, %d+%d tokens; the clients were told %+v", rows, prompt, completion, billed)
	}

	t.Run("worker killed mid-stream", func(t *testing.T) {
		// Long greedy streams, so that the kill finds them running.
		body := func(i int) []byte {
			b, _ := json.Marshal(map[string]any{
				"model": svc.AccessName, "stream": true, "max_tokens": 4000, "temperature": 0,
				"stream_options": map[string]bool{"include_usage": true},
				"messages":       []map[string]string{{"role": "user", "content": fmt.Sprintf("Count slowly to a large number, %d.", i)}},
			})
			return b
		}
		const streams = 4
		results := make([]streamResult, streams)
		var flowing, wg sync.WaitGroup
		flowing.Add(streams)
		for i := range streams {
			wg.Go(func() {
				var once sync.Once
				results[i] = streamChatBody(context.Background(), http.DefaultClient, p.BaseURL, testAdminKey, body(i), func(n int) {
					if n == 10 {
						once.Do(flowing.Done)
					}
				})
				once.Do(flowing.Done)
			})
		}
		flowing.Wait()
		c.procs["w2"].kill(t)
		wg.Wait()
		// The kernel asks the dead worker's engine to stop (its
		// parent-death signal), and Ollama ends its model runner with it:
		// nothing of the dead worker keeps the model in memory.
		eventually(t, 15*time.Second, "the killed worker's engine processes gone", func() error {
			if left := processesUsing(filepath.Join(store, "w2")); len(left) > 0 {
				return fmt.Errorf("still running: %v", left)
			}
			return nil
		})
		broken, whole := 0, 0
		for i, r := range results {
			switch {
			case r.status != 200 || r.readErr != nil:
				t.Errorf("stream %d: status %d, unclean end: %v", i, r.status, r.readErr)
			case r.errMessage != "":
				// Ollama reports usage only at the end: a stream cut short
				// is billed the prompt as the router counts it and the
				// tokens its client received, and the client is told so
				// in a usage chunk before the error event.
				broken++
				if r.prompt == 0 || r.completion != r.content {
					t.Errorf("stream %d cut short: told usage %d+%d for %d chunks received; want the prompt counted and a token a chunk", i, r.prompt, r.completion, r.content)
				}
				bill(r.prompt, r.completion)
			case r.done && r.completion == r.content:
				whole++
				bill(r.prompt, r.completion)
			default:
				t.Errorf("stream %d ended without [DONE] or an error event: %+v", i, r)
			}
		}
		if broken == 0 || whole == 0 {
			t.Fatalf("%d streams cut with an error event, %d whole; want some of each (%+v)", broken, whole, results)
		}
		t.Logf("%d streams cut by the kill with an error event, %d whole", broken, whole)
		// The survivor answers. Until the router has taken the dead
		// instance out of rotation a request may be refused with 503 and
		// Retry-After, which is not billed: a client retries it.
		var r streamResult
		for try := 0; ; try++ {
			r = streamChatBody(context.Background(), http.DefaultClient, p.BaseURL, testAdminKey, body(99), nil)
			if r.status != http.StatusServiceUnavailable || try == 5 {
				break
			}
			t.Logf("after the kill: 503 %q; retrying", r.errMessage)
			time.Sleep(time.Second)
		}
		if r.status != 200 || !r.done || r.errMessage != "" {
			t.Fatalf("after the kill: %+v", r)
		}
		bill(r.prompt, r.completion)
		eventually(t, 30*time.Second, "usage billed exactly", func() error {
			if got, err := usageOf(t, p.BaseURL, svc.ID); err != nil || got != billed {
				return fmt.Errorf("usage %+v (%v), want %+v", got, err, billed)
			}
			return nil
		})
	})

	t.Run("scale to zero and back", func(t *testing.T) {
		if s := call(t, "PUT", p.BaseURL+"/api/v1/services/"+svc.ID+"/autoscale", testAdminKey, map[string]any{
			"min_instances": 0, "max_instances": 1, "target_in_flight": 4, "scale_to_zero_after_seconds": 1,
		}, nil); s != 200 {
			t.Fatalf("autoscale: status %d", s)
		}
		eventually(t, time.Minute, "scaled to zero", func() error {
			var got service
			call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
			var list []struct{ ID string }
			call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &list)
			if got.Status != "idle" || got.Instances != 0 || len(list) != 0 {
				return fmt.Errorf("status %s, %d desired, %d instances", got.Status, got.Instances, len(list))
			}
			return nil
		})
		// A request to the idle service waits for a cold start of Ollama.
		began := time.Now()
		var resp struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
			Usage struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		messages := []map[string]string{{"role": "user", "content": "Wake up!"}}
		if s := call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
			"model": svc.AccessName, "messages": messages, "max_tokens": 6, "temperature": 0,
		}, &resp); s != 200 || len(resp.Choices) != 1 {
			t.Fatalf("request to the service at zero: status %d, %+v", s, resp)
		}
		t.Logf("cold start on Ollama answered in %v", time.Since(began).Round(time.Millisecond))
		var list []struct {
			Endpoint string `json:"endpoint"`
			Engine   string `json:"engine"`
		}
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &list)
		if len(list) != 1 || list[0].Engine != "ollama" {
			t.Fatalf("after the cold start: instances %+v", list)
		}
		engineBase = strings.TrimSuffix(list[0].Endpoint, "/v1")
		sameAsOllama(t, "cold start", messages, map[string]any{"temperature": 0, "top_p": 1, "num_predict": 6},
			resp.Choices[0].Message.Content, resp.Choices[0].FinishReason, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)
		eventually(t, 30*time.Second, "usage billed exactly", func() error {
			if got, err := usageOf(t, p.BaseURL, svc.ID); err != nil || got != billed {
				return fmt.Errorf("usage %+v (%v), want %+v", got, err, billed)
			}
			return nil
		})
	})

	// deleted deletes a service and waits until it is gone, its name
	// answers 404 and no engine process is left.
	deleted := func(t *testing.T, s modelService) {
		t.Helper()
		if code := call(t, "DELETE", p.BaseURL+"/api/v1/services/"+s.ID, testAdminKey, map[string]any{"confirm_name": s.Name}, nil); code/100 != 2 {
			t.Fatalf("delete %s: status %d", s.Name, code)
		}
		eventually(t, time.Minute, "service "+s.Name+" deleted and its engines gone", func() error {
			var got service
			call(t, "GET", p.BaseURL+"/api/v1/services/"+s.ID, testAdminKey, nil, &got)
			var list []struct{ ID string }
			call(t, "GET", p.BaseURL+"/api/v1/services/"+s.ID+"/instances", testAdminKey, nil, &list)
			if got.Status != "deleted" || len(list) != 0 {
				return fmt.Errorf("status %s, %d instances", got.Status, len(list))
			}
			if code := call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
				"model": s.AccessName, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
			}, nil); code != http.StatusNotFound {
				return fmt.Errorf("chat: status %d, want 404", code)
			}
			if left := processesUsing(store); len(left) > 0 {
				return fmt.Errorf("engine processes left: %v", left)
			}
			return nil
		})
	}
	// inUse checks that a model cannot be deleted while what uses it
	// exists: 409, naming each of them.
	inUse := func(t *testing.T, model string, users ...string) {
		t.Helper()
		var refusal struct {
			Error struct {
				Message string `json:"message"`
				Type    string `json:"type"`
			} `json:"error"`
		}
		code := call(t, "DELETE", p.BaseURL+"/api/v1/models/"+model, testAdminKey, nil, &refusal)
		if code != http.StatusConflict || refusal.Error.Type != "conflict_error" {
			t.Errorf("delete model %s while %v use it: status %d, %+v; want 409", model, users, code, refusal)
		}
		for _, u := range users {
			if !strings.Contains(refusal.Error.Message, u) {
				t.Errorf("delete model %s: %q does not name %s", model, refusal.Error.Message, u)
			}
		}
	}

	t.Run("delete", func(t *testing.T) {
		inUse(t, models.base.Name, "service "+svc.AccessName, "fine-tuned model "+models.tuned.Name)
		deleted(t, svc)
	})

	// The fine-tune: the tiny model with its LoRA adapter, deployed from
	// the registry like any model. Ollama creates the model from both
	// files, and greedy answers change with the adapter.
	t.Run("LoRA fine-tune", func(t *testing.T) {
		if baseAnswer == "" {
			t.Fatal("no answer of the base model to compare with: the Go client subtest failed")
		}
		var tuned modelService
		if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{
			"name": "tuned", "base_model": models.tuned.Name,
		}, &tuned); s != http.StatusCreated || tuned.Model == nil || tuned.Model.Adapter != "file://"+models.adapter {
			t.Fatalf("create: status %d (%+v)", s, tuned)
		}
		var endpoint string
		eventually(t, 2*time.Minute, "the fine-tune running on Ollama", func() error {
			var got service
			call(t, "GET", p.BaseURL+"/api/v1/services/"+tuned.ID, testAdminKey, nil, &got)
			var list []struct {
				Engine   string `json:"engine"`
				Endpoint string `json:"endpoint"`
			}
			call(t, "GET", p.BaseURL+"/api/v1/services/"+tuned.ID+"/instances", testAdminKey, nil, &list)
			if got.Status != "running" || got.Engine != "ollama" || len(list) != 1 || list[0].Engine != "ollama" {
				return fmt.Errorf("status %s, engine %q, instances %+v", got.Status, got.Engine, list)
			}
			endpoint = strings.TrimSuffix(list[0].Endpoint, "/v1")
			return nil
		})

		// Ollama's model is the registered weights with the registered
		// adapter: its Modelfile names both blobs by their digests.
		show, err := json.Marshal(map[string]string{"model": tuned.AccessName})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post(endpoint+"/api/show", "application/json", bytes.NewReader(show))
		if err != nil {
			t.Fatal(err)
		}
		var shown struct {
			Modelfile string `json:"modelfile"`
		}
		err = json.NewDecoder(resp.Body).Decode(&shown)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("ollama /api/show: %s, %v", resp.Status, err)
		}
		digest := func(path string) string {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			return "sha256-" + hex.EncodeToString(sum[:])
		}
		lines := map[string]string{} // FROM and ADAPTER: the blob's file name
		for _, line := range strings.Split(shown.Modelfile, "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && (k == "FROM" || k == "ADAPTER") {
				lines[k] = filepath.Base(v)
			}
		}
		if lines["FROM"] != digest(models.weights) || lines["ADAPTER"] != digest(models.adapter) {
			t.Errorf("Ollama's model: FROM %s, ADAPTER %s; want the tiny model's blob %s and the adapter's %s\n%s",
				lines["FROM"], lines["ADAPTER"], digest(models.weights), digest(models.adapter), shown.Modelfile)
		}

		// The same greedy question as the base model was asked: the
		// adapter changes the answer, not the prompt's tokens, and Ollama's
		// own API answers and counts the same.
		messages := []map[string]string{{"role": "user", "content": "Say this is a test!"}}
		var answer struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
			Usage struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if s := call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
			"model": tuned.AccessName, "messages": messages, "max_tokens": 12, "temperature": 0,
		}, &answer); s != 200 || len(answer.Choices) != 1 {
			t.Fatalf("chat with the fine-tune: status %d, %+v", s, answer)
		}
		content, finish := answer.Choices[0].Message.Content, answer.Choices[0].FinishReason
		if content == baseAnswer || answer.Usage.CompletionTokens != 12 || finish != "length" {
			t.Errorf("the fine-tune answered %q (%s, %d tokens); the base model %q: want another answer of 12 tokens",
				content, finish, answer.Usage.CompletionTokens, baseAnswer)
		}
		n := enginetest.OllamaChat(t, endpoint, tuned.AccessName, messages, map[string]any{"temperature": 0, "top_p": 1, "num_predict": 12})
		if content != n.Content || finish != n.DoneReason || answer.Usage.PromptTokens != n.Prompt || answer.Usage.CompletionTokens != n.Completion {
			t.Errorf("the fine-tune answered %q (%s), %d+%d tokens; Ollama's own answer: %q (%s), %d+%d tokens",
				content, finish, answer.Usage.PromptTokens, answer.Usage.CompletionTokens, n.Content, n.DoneReason, n.Prompt, n.Completion)
		}
		want := usageTotals{ServiceID: tuned.ID, Requests: 1, PromptTokens: uint64(n.Prompt), CompletionTokens: uint64(n.Completion), TotalTokens: uint64(n.Prompt + n.Completion)}
		eventually(t, 30*time.Second, "the fine-tune's usage billed", func() error {
			if got, err := usageOf(t, p.BaseURL, tuned.ID); err != nil || got != want {
				return fmt.Errorf("usage %+v (%v), want %+v", got, err, want)
			}
			return nil
		})

		inUse(t, models.tuned.Name, "service "+tuned.AccessName)
		deleted(t, tuned)
	})

	// With no service left, the models go: the fine-tune first, as the
	// base cannot go while a fine-tune is based on it.
	t.Run("delete the models", func(t *testing.T) {
		inUse(t, models.base.Name, "fine-tuned model "+models.tuned.Name)
		for _, name := range []string{models.tuned.Name, models.base.Name} {
			if s := call(t, "DELETE", p.BaseURL+"/api/v1/models/"+name, testAdminKey, nil, nil); s != http.StatusNoContent {
				t.Fatalf("delete model %s: status %d", name, s)
			}
			if s := call(t, "GET", p.BaseURL+"/api/v1/models/"+name, testAdminKey, nil, nil); s != http.StatusNotFound {
				t.Errorf("model %s after its delete: status %d, want 404", name, s)
			}
		}
	})
}

// buildWorker builds the inference-worker binary into a temporary folder
// and returns the folder.
func buildWorker(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(os.PathSeparator), "./services/inference-worker/cmd/inference-worker")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
