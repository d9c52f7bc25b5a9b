package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/config"
)

// syncBuffer is a bytes.Buffer that run may write while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var listeningOn = regexp.MustCompile(`(?m)^listening on (\S+)$`)

// instance is run serving in the background.
type instance struct {
	base   string // http://host:port
	stderr *syncBuffer
	stop   func() error // cancels run's context and returns what run did
}

// startRun runs run with args and env until the test ends, and returns
// once it listens. Use port 0 in args: the address is read back from
// "listening on".
func startRun(t *testing.T, args []string, env map[string]string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, config.Map(env), io.Discard, stderr) }()
	var result error
	stopped := false
	stop := func() error {
		if !stopped {
			cancel()
			select {
			case result = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("run did not return within 10s of its context ending")
			}
			stopped = true
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := listeningOn.FindStringSubmatch(stderr.String()); m != nil {
			return &instance{base: "http://" + m[1], stderr: stderr, stop: stop}
		}
		select {
		case err := <-done:
			t.Fatalf("run returned %v before listening; stderr:\n%s", err, stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not listening after 5s; stderr:\n%s", stderr)
		}
	}
}

// runErr runs run to its end, which must come at once, and returns its
// error and what it printed.
func runErr(t *testing.T, args []string, env map[string]string) (error, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stderr := &syncBuffer{}
	err := run(ctx, args, config.Map(env), io.Discard, stderr)
	if ctx.Err() != nil {
		t.Fatalf("run %q served instead of failing", args)
	}
	return err, stderr.String()
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := errors.AsType[*exitError](err); ok {
		return ee.code
	}
	return 1
}

func httpGet(t *testing.T, url string) (int, string) {
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
	return resp.StatusCode, string(b)
}

func httpPost(t *testing.T, url string, body any) (int, string) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(out)
}

// chatContent asks model for a chat completion and returns its content.
func chatContent(t *testing.T, v1, model string) string {
	t.Helper()
	status, body := httpPost(t, v1+"/chat/completions", map[string]any{
		"model": model, "messages": []map[string]string{{"role": "user", "content": "hi"}},
	})
	if status != http.StatusOK {
		t.Fatalf("chat with %q: status %d: %s", model, status, body)
	}
	var c struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal([]byte(body), &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("chat answer %s: %v", body, err)
	}
	if c.Model != model {
		t.Errorf("answer names model %q, want %q", c.Model, model)
	}
	content := c.Choices[0].Message.Content
	if !strings.Contains(content, "simulated") || !strings.Contains(content, "not real model output") {
		t.Errorf("content %q does not say it is simulated", content)
	}
	return content
}

// modelIDs lists /v1/models, checking each is owned by the simulator.
func modelIDs(t *testing.T, v1 string) []string {
	t.Helper()
	status, body := httpGet(t, v1+"/models")
	if status != http.StatusOK {
		t.Fatalf("GET /v1/models: %d %s", status, body)
	}
	var list struct {
		Data []struct {
			ID      string `json:"id"`
			OwnedBy string `json:"owned_by"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, m := range list.Data {
		ids = append(ids, m.ID)
		if m.OwnedBy != "modelport-simulator" {
			t.Errorf("model %s owned_by %q, want modelport-simulator", m.ID, m.OwnedBy)
		}
	}
	return ids
}

func TestRunOwnFlags(t *testing.T) {
	in := startRun(t, []string{"/opt/bin/modelport-simulator", "--served-model-name", "u-1/chat", "--model", "qwen2.5-7b-instruct",
		"--port", "0", "--ttft", "1ms", "--itl", "0s", "--max-concurrent", "4", "--max-queue", "8", "--seed", "3"}, nil)
	if status, _ := httpGet(t, in.base+"/health"); status != http.StatusOK {
		t.Errorf("health %d, want 200", status)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"u-1/chat"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
	if content := chatContent(t, in.base+"/v1", "u-1/chat"); !strings.Contains(content, "qwen2.5-7b-instruct") {
		t.Errorf("content %q does not name the base model", content)
	}
	if err := in.stop(); err != nil {
		t.Errorf("run after its context ended: %v, want nil", err)
	}
	if _, err := http.Get(in.base + "/health"); err == nil {
		t.Error("still serving after run returned")
	}
}

// The environment sets what flags do, and flags win.
func TestRunEnvironmentSettings(t *testing.T) {
	in := startRun(t, []string{"modelport-simulator", "--served-model-name", "m", "--port", "0", "--error-rate", "0"},
		map[string]string{"MODELPORT_SIM_ERROR_RATE": "1", "MODELPORT_SIM_SLOW_START": "1h"})
	if status, _ := httpGet(t, in.base+"/health"); status != http.StatusServiceUnavailable {
		t.Errorf("health %d during MODELPORT_SIM_SLOW_START, want 503", status)
	}
	in = startRun(t, []string{"modelport-simulator", "--served-model-name", "m", "--port", "0", "--slow-start", "0s"},
		map[string]string{"MODELPORT_SIM_ERROR_RATE": "1", "MODELPORT_SIM_SLOW_START": "1h"})
	if status, _ := httpGet(t, in.base+"/health"); status != http.StatusOK {
		t.Errorf("health %d with --slow-start 0s, want 200", status)
	}
	status, body := httpPost(t, in.base+"/v1/chat/completions", map[string]any{"model": "m", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
	if status != http.StatusInternalServerError || !strings.Contains(body, "simulated engine failure") {
		t.Errorf("with MODELPORT_SIM_ERROR_RATE=1: %d %s, want 500", status, body)
	}
}

func TestRunVLLM(t *testing.T) {
	in := startRun(t, []string{"/usr/local/bin/vllm", "serve", "/models/qwen2.5-7b", "--served-model-name", "u-1/chat",
		"--enable-lora", "--lora-modules", "sql=/loras/sql", `{"name":"poet","path":"/loras/poet"}`,
		"--max-model-len", "4096", "--trust-remote-code", "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "2",
		"--enforce-eager", "--host", "127.0.0.1", "--port=0", "--some-future-flag", "--disable-log-requests", "--enable-prefix-caching"}, nil)
	if status, body := httpGet(t, in.base+"/health"); status != http.StatusOK || body != "" {
		t.Errorf("health %d %q, want 200 and no body", status, body)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"u-1/chat", "sql", "poet"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
	if content := chatContent(t, in.base+"/v1", "u-1/chat"); !strings.Contains(content, "/models/qwen2.5-7b") {
		t.Errorf("content %q does not name the model", content)
	}
	chatContent(t, in.base+"/v1", "sql")
	if !strings.Contains(in.stderr.String(), "modelport-simulator as vllm") {
		t.Errorf("stderr does not say what it is:\n%s", in.stderr)
	}

	// The served name defaults to the model.
	in = startRun(t, []string{"vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "0"}, nil)
	if got, want := modelIDs(t, in.base+"/v1"), []string{"Qwen/Qwen2.5-0.5B-Instruct"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
}

func TestRunLlamaServer(t *testing.T) {
	in := startRun(t, []string{"llama-server", "-m", "/models/qwen2.5-0.5b-q4_k_m.gguf", "-c", "4096", "-ngl", "99",
		"--lora", "/loras/a.gguf", "-np", "4", "--cont-batching", "--host", "127.0.0.1", "--port", "0"}, nil)
	if status, body := httpGet(t, in.base+"/health"); status != http.StatusOK || strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Errorf("health %d %s, want 200 {\"status\":\"ok\"}", status, body)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"qwen2.5-0.5b-q4_k_m.gguf"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want the file name %q", got, want)
	}
	chatContent(t, in.base+"/v1", "qwen2.5-0.5b-q4_k_m.gguf")

	in = startRun(t, []string{"llama-server", "--model", "/models/x.gguf", "--alias", "u-1/chat", "--port", "0"},
		map[string]string{"MODELPORT_SIM_SLOW_START": "1h"})
	if status, body := httpGet(t, in.base+"/health"); status != http.StatusServiceUnavailable || strings.TrimSpace(body) != `{"status":"loading model"}` {
		t.Errorf("health while loading: %d %s, want 503 {\"status\":\"loading model\"}", status, body)
	}
	in = startRun(t, []string{"llama-server", "--model", "/models/x.gguf", "--alias", "u-1/chat", "--port", "0"}, nil)
	chatContent(t, in.base+"/v1", "u-1/chat")
}

func TestRunSGLang(t *testing.T) {
	in := startRun(t, []string{"python3", "-m", "sglang.launch_server", "--model-path", "/models/llama-3-8b", "--served-model-name", "u-1/chat",
		"--tp", "2", "--context-length", "8192", "--lora-paths", "a=/loras/a", "--mem-fraction-static", "0.8",
		"--host", "127.0.0.1", "--port", "0", "--trust-remote-code"}, nil)
	if status, _ := httpGet(t, in.base+"/health"); status != http.StatusOK {
		t.Errorf("health %d, want 200", status)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"u-1/chat"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
	if content := chatContent(t, in.base+"/v1", "u-1/chat"); !strings.Contains(content, "/models/llama-3-8b") {
		t.Errorf("content %q does not name the model", content)
	}
}

func TestRunOllama(t *testing.T) {
	in := startRun(t, []string{"ollama", "serve"}, map[string]string{"OLLAMA_HOST": "127.0.0.1:0"})
	if status, body := httpGet(t, in.base+"/"); status != http.StatusOK || body != "Ollama is running" {
		t.Errorf("GET / = %d %q", status, body)
	}
	if status, body := httpGet(t, in.base+"/api/version"); status != http.StatusOK || strings.TrimSpace(body) != `{"version":"0.0.0-modelport-simulator"}` {
		t.Errorf("GET /api/version = %d %s", status, body)
	}
	if got := modelIDs(t, in.base+"/v1"); len(got) != 0 {
		t.Errorf("models before a pull: %q", got)
	}
	if status, body := httpPost(t, in.base+"/v1/chat/completions", map[string]any{"model": "llama3.2:1b", "messages": []map[string]string{{"role": "user", "content": "hi"}}}); status != http.StatusNotFound {
		t.Errorf("chat before a pull: %d %s, want 404", status, body)
	}

	status, body := httpPost(t, in.base+"/api/pull", map[string]any{"model": "llama3.2:1b"})
	var last struct {
		Status string `json:"status"`
	}
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); status != http.StatusOK || err != nil || last.Status != "success" {
		t.Fatalf("pull: %d %s, want 200 ending in {\"status\":\"success\"}", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/pull", map[string]any{"name": "qwen2.5:0.5b", "stream": false}); status != http.StatusOK || strings.TrimSpace(body) != `{"status":"success"}` {
		t.Errorf("pull without streaming: %d %s", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/copy", map[string]any{"source": "llama3.2:1b", "destination": "u-1/chat"}); status != http.StatusOK {
		t.Fatalf("copy: %d %s", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/copy", map[string]any{"source": "nope", "destination": "x"}); status != http.StatusNotFound {
		t.Errorf("copy of a model never pulled: %d %s, want 404", status, body)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"llama3.2:1b", "qwen2.5:0.5b", "u-1/chat"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
	if content := chatContent(t, in.base+"/v1", "u-1/chat"); !strings.Contains(content, "llama3.2:1b") {
		t.Errorf("the copy's answer %q does not name the model it copies", content)
	}
	chatContent(t, in.base+"/v1", "llama3.2:1b")

	status, body = httpGet(t, in.base+"/api/tags")
	var tags struct {
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
	}
	if err := json.Unmarshal([]byte(body), &tags); status != http.StatusOK || err != nil || len(tags.Models) != 3 || tags.Models[2].Name != "u-1/chat" {
		t.Errorf("tags: %d %s", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/show", map[string]any{"model": "u-1/chat"}); status != http.StatusOK || !strings.Contains(body, "simulated") {
		t.Errorf("show: %d %s", status, body)
	}
	req, _ := http.NewRequest(http.MethodDelete, in.base+"/api/delete", strings.NewReader(`{"model":"qwen2.5:0.5b"}`))

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := modelIDs(t, in.base+"/v1"), []string{"llama3.2:1b", "u-1/chat"}; resp.StatusCode != http.StatusOK || !slices.Equal(got, want) {
		t.Errorf("after delete: %d, models %q, want %q", resp.StatusCode, got, want)
	}
}

// The simulated Ollama imports models as Ollama does: blobs uploaded by
// digest, then /api/create from them, with an adapter, or from a model it
// has.
func TestRunOllamaCreate(t *testing.T) {
	in := startRun(t, []string{"ollama", "serve"}, map[string]string{"OLLAMA_HOST": "127.0.0.1:0"})
	weights, adapter := []byte("GGUF tiny weights"), []byte("GGUF tiny adapter")
	digest := func(b []byte) string {
		sum := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	blob := func(method, digest string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequest(method, in.base+"/api/blobs/"+digest, bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := blob(http.MethodHead, digest(weights), nil); got != http.StatusNotFound {
		t.Errorf("HEAD of a blob never uploaded: %d, want 404", got)
	}
	if got := blob(http.MethodPost, digest(adapter), weights); got != http.StatusBadRequest {
		t.Errorf("upload under another content's digest: %d, want 400", got)
	}
	if status, body := httpPost(t, in.base+"/api/create", map[string]any{"model": "u-1/tiny", "files": map[string]string{"model.gguf": digest(weights)}}); status != http.StatusBadRequest {
		t.Errorf("create before the upload: %d %s, want 400", status, body)
	}
	for _, b := range [][]byte{weights, adapter} {
		if got := blob(http.MethodPost, digest(b), b); got != http.StatusCreated {
			t.Fatalf("upload: %d, want 201", got)
		}
		if got := blob(http.MethodHead, digest(b), nil); got != http.StatusOK {
			t.Errorf("HEAD after the upload: %d, want 200", got)
		}
	}
	if status, body := httpPost(t, in.base+"/api/create", map[string]any{
		"model": "u-1/tiny", "files": map[string]string{"model.gguf": digest(weights)}, "stream": false,
	}); status != http.StatusOK || strings.TrimSpace(body) != `{"status":"success"}` {
		t.Fatalf("create: %d %s", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/create", map[string]any{
		"model": "u-1/tuned", "from": "u-1/tiny", "adapters": map[string]string{"adapter.gguf": digest(adapter)},
	}); status != http.StatusOK {
		t.Fatalf("create from a model with an adapter: %d %s", status, body)
	}
	if status, body := httpPost(t, in.base+"/api/create", map[string]any{"model": "u-1/x", "from": "never-pulled"}); status != http.StatusNotFound {
		t.Errorf("create from an unknown model: %d %s, want 404", status, body)
	}
	if got, want := modelIDs(t, in.base+"/v1"), []string{"u-1/tiny", "u-1/tuned"}; !slices.Equal(got, want) {
		t.Errorf("models %q, want %q", got, want)
	}
	if content := chatContent(t, in.base+"/v1", "u-1/tuned"); !strings.Contains(content, digest(weights)) {
		t.Errorf("the created model's answer %q does not name the blob it came from", content)
	}
}

// While starting, Ollama's API and the OpenAI one answer 503.
func TestRunOllamaStarting(t *testing.T) {
	in := startRun(t, []string{"ollama", "serve"}, map[string]string{"OLLAMA_HOST": "127.0.0.1:0", "MODELPORT_SIM_SLOW_START": "1h"})
	for _, path := range []string{"/", "/api/tags", "/v1/models"} {
		if status, body := httpGet(t, in.base+path); status != http.StatusServiceUnavailable {
			t.Errorf("GET %s while starting: %d %s, want 503", path, status, body)
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string // in stderr or the error
	}{
		{name: "no served name", args: []string{"modelport-simulator", "--port", "0"}, want: "--served-model-name is required"},
		{name: "unknown flag", args: []string{"modelport-simulator", "--served-model-name", "m", "--bogus"}, want: "bogus"},
		{name: "error rate over 1", args: []string{"modelport-simulator", "--served-model-name", "m", "--error-rate", "1.5"}, want: "error rate"},
		{name: "negative queue", args: []string{"modelport-simulator", "--served-model-name", "m", "--max-queue", "-1"}, want: "negative"},
		{name: "bad environment", args: []string{"modelport-simulator", "--served-model-name", "m"}, env: map[string]string{"MODELPORT_SIM_ITL": "fast"}, want: "MODELPORT_SIM_ITL"},
		{name: "vllm without serve", args: []string{"vllm", "--model", "m"}, want: "vllm serve"},
		{name: "vllm serve without a model", args: []string{"vllm", "serve", "--port", "0"}, want: "a model is required"},
		{name: "vllm bad port", args: []string{"vllm", "serve", "m", "--port", "http"}, want: "not a port"},
		{name: "llama-server without a model", args: []string{"llama-server", "--port", "0"}, want: "-m"},
		{name: "python3 running anything else", args: []string{"python3", "-c", "print(1)"}, want: "sglang.launch_server"},
		{name: "python3 without arguments", args: []string{"python3"}, want: "sglang.launch_server"},
		{name: "sglang without a model", args: []string{"python3", "-m", "sglang.launch_server", "--port", "0"}, want: "--model-path"},
		{name: "ollama run", args: []string{"ollama", "run", "llama3"}, want: "ollama serve"},
		{name: "bad OLLAMA_HOST", args: []string{"ollama", "serve"}, env: map[string]string{"OLLAMA_HOST": "127.0.0.1:http"}, want: "OLLAMA_HOST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err, stderr := runErr(t, tc.args, tc.env)
			if got, want := exitCodeOf(err), 2; got != want {
				t.Errorf("exit code %d (%v), want %d", got, err, want)
			}
			if msg := stderr + errorText(err); !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not mention %q", msg, tc.want)
			}
		})
	}
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestRunHelp(t *testing.T) {
	err, stderr := runErr(t, []string{"modelport-simulator", "-h"}, nil)
	if err != nil || !strings.Contains(stderr, "-served-model-name") {
		t.Errorf("-h: %v, %q; want nil and the flags listed", err, stderr)
	}
}

func TestRunExitAtStart(t *testing.T) {
	record := filepath.Join(t.TempDir(), "record.json")
	for _, mode := range [][]string{
		{"modelport-simulator", "--served-model-name", "m"},
		{"vllm", "serve", "m"},
		{"ollama", "serve"},
		{"python3", "-c", "ignored: the failure comes first"},
	} {
		err, stderr := runErr(t, mode, map[string]string{"MODELPORT_SIM_EXIT_AT_START": "7", "MODELPORT_SIM_RECORD": record})
		if got, want := exitCodeOf(err), 7; got != want {
			t.Errorf("%s: exit code %d (%v), want %d", mode[0], got, err, want)
		}
		if !strings.Contains(stderr, "simulated start failure") {
			t.Errorf("%s: stderr %q, want simulated start failure", mode[0], stderr)
		}
		// The record is written first, so a failed start is recorded too.
		var rec struct {
			Argv []string `json:"argv"`
		}
		b, err := os.ReadFile(record)
		if err != nil || json.Unmarshal(b, &rec) != nil || !slices.Equal(rec.Argv, mode) {
			t.Errorf("%s: record %s (%v), want argv %q", mode[0], b, err, mode)
		}
	}
}

func TestRunCrashAfter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stderr := &syncBuffer{}
	began := time.Now()
	err := run(ctx, []string{"vllm", "serve", "m", "--port", "0"}, config.Map(map[string]string{"MODELPORT_SIM_CRASH_AFTER": "200ms"}), io.Discard, stderr)
	if got, want := exitCodeOf(err), 3; got != want || ctx.Err() != nil {
		t.Fatalf("exit code %d (%v), want %d before the test's deadline", got, err, want)
	}
	if elapsed := time.Since(began); elapsed < 200*time.Millisecond {
		t.Errorf("crashed after %v, before 200ms", elapsed)
	}
	if !strings.Contains(stderr.String(), "listening on") {
		t.Errorf("crashed before serving; stderr:\n%s", stderr)
	}
}

func TestRunRecord(t *testing.T) {
	record := filepath.Join(t.TempDir(), "record.json")
	t.Setenv("CUDA_VISIBLE_DEVICES", "0,1")
	t.Setenv("HF_HOME", "/var/cache/hf")
	t.Setenv("MODELPORT_SIM_RECORD", record)
	t.Setenv("UNRELATED_SETTING", "x")
	startRun(t, []string{"/usr/bin/llama-server", "-m", "/m.gguf", "--port", "0"}, map[string]string{"MODELPORT_SIM_RECORD": record})
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Argv []string          `json:"argv"`
		Env  map[string]string `json:"env"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("record %s: %v", b, err)
	}
	if got, want := rec.Argv, []string{"llama-server", "-m", "/m.gguf", "--port", "0"}; !slices.Equal(got, want) {
		t.Errorf("argv %q, want %q", got, want)
	}
	for name, want := range map[string]string{"CUDA_VISIBLE_DEVICES": "0,1", "HF_HOME": "/var/cache/hf", "MODELPORT_SIM_RECORD": record} {
		if got := rec.Env[name]; got != want {
			t.Errorf("env[%s] = %q, want %q", name, got, want)
		}
	}
	if _, ok := rec.Env["UNRELATED_SETTING"]; ok {
		t.Error("the record keeps UNRELATED_SETTING")
	}
}

func TestScanArgs(t *testing.T) {
	var host, port string
	var names []string
	opts := func() options {
		host, port, names = "", "", nil
		return options{
			values: map[string]*string{"--host": &host, "--port": &port},
			lists:  map[string]*[]string{"--names": &names},
			bools:  []string{"--flag"},
		}
	}
	tests := []struct {
		args      []string
		wantRest  []string
		wantHost  string
		wantPort  string
		wantNames []string
	}{
		{args: []string{"model", "--host", "h", "--port=9"}, wantRest: []string{"model"}, wantHost: "h", wantPort: "9"},
		{args: []string{"--unknown", "v", "model"}, wantRest: []string{"model"}},
		{args: []string{"--unknown", "--port", "9", "model"}, wantRest: []string{"model"}, wantPort: "9"},
		{args: []string{"--flag", "model"}, wantRest: []string{"model"}},
		{args: []string{"--unknown=v", "model"}, wantRest: []string{"model"}},
		{args: []string{"-ngl", "99", "-c", "4096"}, wantRest: nil},
		{args: []string{"--offset", "-1", "model"}, wantRest: []string{"model"}},
		{args: []string{"--names", "a", "b", "--port", "1", "m"}, wantRest: []string{"m"}, wantPort: "1", wantNames: []string{"a", "b"}},
		{args: []string{"--", "--port"}, wantRest: []string{"--port"}},
	}
	for _, tc := range tests {
		rest, err := scanArgs(tc.args, opts())
		if err != nil || !slices.Equal(rest, tc.wantRest) || host != tc.wantHost || port != tc.wantPort || !slices.Equal(names, tc.wantNames) {
			t.Errorf("scanArgs(%q) = %q, %v; host %q port %q names %q", tc.args, rest, err, host, port, names)
		}
	}
	if _, err := scanArgs([]string{"--port"}, opts()); err == nil {
		t.Error("--port without a value: no error")
	}
}

func TestOllamaAddr(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "127.0.0.1:11434",
		"127.0.0.1:0":           "127.0.0.1:0",
		"0.0.0.0":               "0.0.0.0:11434",
		"http://localhost:8080": "localhost:8080",
		":9000":                 "127.0.0.1:9000",
		"[::1]:5000":            "[::1]:5000",
	} {
		if got, err := ollamaAddr(in); err != nil || got != want {
			t.Errorf("ollamaAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
