package simulator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

const servedName = "u-8105f7322477/test"

// start runs a simulator without latency on a free port and returns its
// base URL, ending in /v1.
func start(t *testing.T) string {
	t.Helper()
	return startWith(t, simulator.Config{ServedName: servedName, BaseModel: "qwen2.5-7b-instruct"})
}

// startWith runs a simulator configured by cfg on a free port, shut down
// when the test ends, and returns its base URL, ending in /v1.
func startWith(t *testing.T, cfg simulator.Config) string {
	t.Helper()
	s := listen(t, cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return "http://" + s.Addr().String() + "/v1"
}

// listen starts a simulator on a free port; the caller shuts it down.
func listen(t *testing.T, cfg simulator.Config) *simulator.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return simulator.Start(cfg, ln)
}

type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// post sends body (a string is sent as is, anything else as JSON) and
// returns the status and raw answer.
func post(t *testing.T, url string, body any) (int, []byte) {
	t.Helper()
	var b []byte
	switch v := body.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
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
	return resp.StatusCode, out
}

func chat(t *testing.T, base string, req map[string]any) completion {
	t.Helper()
	status, body := post(t, base+"/chat/completions", req)
	if status != http.StatusOK {
		t.Fatalf("status %d, body %s", status, body)
	}
	var c completion
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if len(c.Choices) != 1 {
		t.Fatalf("got %d choices, want 1: %s", len(c.Choices), body)
	}
	return c
}

func messages(pairs ...string) []map[string]any {
	var out []map[string]any
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, map[string]any{"role": pairs[i], "content": pairs[i+1]})
	}
	return out
}

func TestChatCompletion(t *testing.T) {
	base := start(t)
	c := chat(t, base, map[string]any{
		"model":    servedName,
		"messages": messages("system", "You are terse.", "user", "Hello, world!"),
	})

	if !strings.HasPrefix(c.ID, "chatcmpl-") {
		t.Errorf("id = %q, want a chatcmpl- prefix", c.ID)
	}
	if got, want := c.Object, "chat.completion"; got != want {
		t.Errorf("object = %q, want %q", got, want)
	}
	if got, want := c.Model, servedName; got != want {
		t.Errorf("model = %q, want %q", got, want)
	}
	if c.Created == 0 {
		t.Error("created is zero")
	}
	ch := c.Choices[0]
	if got, want := ch.Message.Role, "assistant"; got != want {
		t.Errorf("role = %q, want %q", got, want)
	}
	if got, want := ch.FinishReason, "stop"; got != want {
		t.Errorf("finish_reason = %q, want %q", got, want)
	}
	content := ch.Message.Content
	if !strings.Contains(content, "simulated") || !strings.Contains(content, "not real model output") {
		t.Errorf("content does not say it is simulated: %q", content)
	}

	// Three tokens prime the reply; each message costs four plus its role
	// and its text.
	wantPrompt := 3 +
		4 + simulator.CountTokens("system") + simulator.CountTokens("You are terse.") +
		4 + simulator.CountTokens("user") + simulator.CountTokens("Hello, world!")
	if got := c.Usage.PromptTokens; got != wantPrompt {
		t.Errorf("prompt_tokens = %d, want %d", got, wantPrompt)
	}
	if got, want := c.Usage.CompletionTokens, simulator.CountTokens(content); got != want {
		t.Errorf("completion_tokens = %d, want CountTokens(content) = %d", got, want)
	}
	if got, want := c.Usage.TotalTokens, c.Usage.PromptTokens+c.Usage.CompletionTokens; got != want {
		t.Errorf("total_tokens = %d, want prompt + completion = %d", got, want)
	}
	if c.Usage.CompletionTokens < 1 || c.Usage.CompletionTokens > 63 {
		t.Errorf("completion_tokens = %d, want between 1 and 63 without a limit", c.Usage.CompletionTokens)
	}
}

func TestChatRawShape(t *testing.T) {
	base := start(t)
	status, body := post(t, base+"/chat/completions", map[string]any{
		"model": servedName, "messages": messages("user", "hi"),
	})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"id", "object", "created", "model", "choices", "usage"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("response lacks %q: %s", key, body)
		}
	}
	usage, _ := raw["usage"].(map[string]any)
	for _, key := range []string{"prompt_tokens", "completion_tokens", "total_tokens"} {
		if _, ok := usage[key].(float64); !ok {
			t.Errorf("usage.%s is not a number: %s", key, body)
		}
	}
}

func TestChatMaxTokens(t *testing.T) {
	base := start(t)
	tests := []struct {
		name       string
		extra      map[string]any
		limit      int
		wantFinish string
	}{
		{name: "max_tokens 1", extra: map[string]any{"max_tokens": 1}, limit: 1, wantFinish: "length"},
		{name: "max_tokens 5", extra: map[string]any{"max_tokens": 5}, limit: 5, wantFinish: "length"},
		{name: "max_tokens 10", extra: map[string]any{"max_tokens": 10}, limit: 10, wantFinish: "length"},
		{name: "max_completion_tokens 12", extra: map[string]any{"max_completion_tokens": 12}, limit: 12, wantFinish: "length"},
		{
			name:       "max_completion_tokens wins over max_tokens",
			extra:      map[string]any{"max_completion_tokens": 7, "max_tokens": 500},
			limit:      7,
			wantFinish: "length",
		},
		{name: "generous limit", extra: map[string]any{"max_tokens": 500}, limit: 500, wantFinish: "stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": servedName, "messages": messages("user", "Tell me a long story.")}
			for k, v := range tc.extra {
				req[k] = v
			}
			c := chat(t, base, req)
			ch := c.Choices[0]
			if got, want := ch.FinishReason, tc.wantFinish; got != want {
				t.Errorf("finish_reason = %q, want %q", got, want)
			}
			if got := c.Usage.CompletionTokens; got > tc.limit || got < 1 {
				t.Errorf("completion_tokens = %d, want 1..%d", got, tc.limit)
			}
			if got, want := c.Usage.CompletionTokens, simulator.CountTokens(ch.Message.Content); got != want {
				t.Errorf("completion_tokens = %d, want CountTokens(content) = %d (content %q)", got, want, ch.Message.Content)
			}
			if got, want := c.Usage.TotalTokens, c.Usage.PromptTokens+c.Usage.CompletionTokens; got != want {
				t.Errorf("total_tokens = %d, want %d", got, want)
			}
		})
	}
}

func TestChatBadMaxTokens(t *testing.T) {
	base := start(t)
	for _, field := range []string{"max_tokens", "max_completion_tokens"} {
		for _, v := range []int{0, -3} {
			status, body := post(t, base+"/chat/completions", map[string]any{
				"model": servedName, "messages": messages("user", "hi"), field: v,
			})
			if got, want := status, http.StatusBadRequest; got != want {
				t.Errorf("%s=%d: status %d, want %d: %s", field, v, got, want, body)
			}
		}
	}
}

func TestChatDeterministic(t *testing.T) {
	base := start(t)
	req := func(seed int) map[string]any {
		return map[string]any{
			"model":    servedName,
			"messages": messages("user", "What is a router?"),
			"seed":     seed,
		}
	}
	first := chat(t, base, req(42))
	second := chat(t, base, req(42))
	if got, want := second.Choices[0].Message.Content, first.Choices[0].Message.Content; got != want {
		t.Errorf("same request and seed gave different content:\n%q\n%q", got, want)
	}
	if got, want := second.ID, first.ID; got != want {
		t.Errorf("same request and seed gave different ids %q and %q", got, want)
	}
	if got, want := second.Usage, first.Usage; got != want {
		t.Errorf("same request and seed gave different usage %+v and %+v", got, want)
	}

	// Other seeds give other answers: not every one of them can match.
	differs := false
	for seed := 1; seed <= 5; seed++ {
		if chat(t, base, req(seed)).Choices[0].Message.Content != first.Choices[0].Message.Content {
			differs = true
		}
	}
	if !differs {
		t.Error("five other seeds all gave the same content as seed 42")
	}
}

func TestChatErrors(t *testing.T) {
	base := start(t)
	tests := []struct {
		name       string
		body       any
		wantStatus int
		wantParam  string // "" means null
	}{
		{
			name:       "wrong model",
			body:       map[string]any{"model": "u-other/else", "messages": messages("user", "hi")},
			wantStatus: http.StatusNotFound,
			wantParam:  "model",
		},
		{
			name:       "empty messages",
			body:       map[string]any{"model": servedName, "messages": []any{}},
			wantStatus: http.StatusBadRequest,
			wantParam:  "messages",
		},
		{
			name:       "missing messages",
			body:       map[string]any{"model": servedName},
			wantStatus: http.StatusBadRequest,
			wantParam:  "messages",
		},
		{
			name:       "content is a number",
			body:       map[string]any{"model": servedName, "messages": []any{map[string]any{"role": "user", "content": 42}}},
			wantStatus: http.StatusBadRequest,
			wantParam:  "messages",
		},
		{
			name: "content is an object",
			body: map[string]any{"model": servedName, "messages": []any{map[string]any{
				"role": "user", "content": map[string]any{"type": "text", "text": "hi"},
			}}},
			wantStatus: http.StatusBadRequest,
			wantParam:  "messages",
		},
		{
			name:       "not JSON",
			body:       `{"model":`,
			wantStatus: http.StatusBadRequest,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, base+"/chat/completions", tc.body)
			if got, want := status, tc.wantStatus; got != want {
				t.Fatalf("status = %d, want %d: %s", got, want, body)
			}
			var e errorBody
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			if e.Error.Message == "" {
				t.Errorf("error.message is empty: %s", body)
			}
			if got, want := e.Error.Type, "invalid_request_error"; got != want {
				t.Errorf("error.type = %q, want %q", got, want)
			}
			got := ""
			if e.Error.Param != nil {
				got = *e.Error.Param
			}
			if got != tc.wantParam {
				t.Errorf("error.param = %q, want %q", got, tc.wantParam)
			}
		})
	}
}

func TestModelsAndHealth(t *testing.T) {
	base := start(t)
	resp, err := http.Get(base + "/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if got, want := list.Object, "list"; got != want {
		t.Errorf("object = %q, want %q", got, want)
	}
	if len(list.Data) != 1 || list.Data[0].ID != servedName || list.Data[0].Object != "model" {
		t.Errorf("data = %+v, want one model %q", list.Data, servedName)
	}

	h, err := http.Get(strings.TrimSuffix(base, "/v1") + "/health")
	if err != nil {
		t.Fatal(err)
	}
	h.Body.Close()
	if got, want := h.StatusCode, http.StatusOK; got != want {
		t.Errorf("GET /health = %d, want %d", got, want)
	}
}

// An instance started without a served name answers to the models added
// to it, each under its own base model, until they are removed.
func TestAddAndRemoveModels(t *testing.T) {
	s := listen(t, simulator.Config{})
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	base := "http://" + s.Addr().String() + "/v1"
	ids := func() []string {
		_, body := get(t, base+"/models")
		var list struct {
			Data []struct {
				ID      string `json:"id"`
				OwnedBy string `json:"owned_by"`
				Root    string `json:"root"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
		out := []string{}
		for _, m := range list.Data {
			if m.OwnedBy != "modelport-simulator" {
				t.Errorf("model %s owned_by %q", m.ID, m.OwnedBy)
			}
			out = append(out, m.ID+"="+m.Root)
		}
		return out
	}
	hi := messages("user", "hi")
	if got := ids(); len(got) != 0 {
		t.Errorf("models = %v, want none", got)
	}
	if status, body := post(t, base+"/chat/completions", map[string]any{"model": "llama3:8b", "messages": hi}); status != http.StatusNotFound {
		t.Errorf("status %d, want 404: %s", status, body)
	}

	s.AddModel("llama3:8b", "llama3:8b")
	s.AddModel("u-1/chat", "llama3:8b")
	if got, want := strings.Join(ids(), " "), "llama3:8b=llama3:8b u-1/chat=llama3:8b"; got != want {
		t.Errorf("models = %s, want %s", got, want)
	}
	c := chat(t, base, map[string]any{"model": "u-1/chat", "messages": hi})
	if got, want := c.Model, "u-1/chat"; got != want {
		t.Errorf("model = %q, want %q", got, want)
	}
	if !strings.Contains(c.Choices[0].Message.Content, "simulator engine for llama3:8b;") {
		t.Errorf("content %q does not name the base model", c.Choices[0].Message.Content)
	}
	if !s.RemoveModel("llama3:8b") || s.RemoveModel("llama3:8b") {
		t.Error("RemoveModel: want true, then false")
	}
	if got, want := strings.Join(ids(), " "), "u-1/chat=llama3:8b"; got != want {
		t.Errorf("models = %s, want %s", got, want)
	}
}
