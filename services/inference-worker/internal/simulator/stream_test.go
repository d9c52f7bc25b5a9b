package simulator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

type usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

type logprobEntry struct {
	Token       string  `json:"token"`
	Logprob     float64 `json:"logprob"`
	Bytes       []int   `json:"bytes"`
	TopLogprobs []struct {
		Token   string  `json:"token"`
		Logprob float64 `json:"logprob"`
		Bytes   []int   `json:"bytes"`
	} `json:"top_logprobs"`
}

type toolCallJSON struct {
	Index    *int   `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// fullCompletion is a non-streamed answer with every field the tests read.
type fullCompletion struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Model             string `json:"model"`
	SystemFingerprint string `json:"system_fingerprint"`
	Choices           []struct {
		Index   int `json:"index"`
		Message struct {
			Role      string         `json:"role"`
			Content   *string        `json:"content"`
			ToolCalls []toolCallJSON `json:"tool_calls"`
		} `json:"message"`
		Logprobs *struct {
			Content []logprobEntry `json:"content"`
		} `json:"logprobs"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage usage `json:"usage"`
}

func chatFull(t *testing.T, base string, req map[string]any) fullCompletion {
	t.Helper()
	status, body := post(t, base+"/chat/completions", req)
	if status != http.StatusOK {
		t.Fatalf("status %d, body %s", status, body)
	}
	var c fullCompletion
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return c
}

type streamChunk struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Created           int64  `json:"created"`
	Model             string `json:"model"`
	SystemFingerprint string `json:"system_fingerprint"`
	Choices           []struct {
		Index int `json:"index"`
		Delta struct {
			Role      *string        `json:"role"`
			Content   *string        `json:"content"`
			ToolCalls []toolCallJSON `json:"tool_calls"`
		} `json:"delta"`
		Logprobs *struct {
			Content []logprobEntry `json:"content"`
		} `json:"logprobs"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

// streamChat sends req with stream: true and returns the chunks before
// [DONE], failing if the stream is not well formed or does not end with
// [DONE].
func streamChat(t *testing.T, base string, req map[string]any) []streamChunk {
	t.Helper()
	body := map[string]any{"stream": true}
	for k, v := range req {
		body[k] = v
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, raw)
	}
	if got, want := resp.Header.Get("Content-Type"), "text/event-stream"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	if got, want := resp.Header.Get("Cache-Control"), "no-cache"; got != want {
		t.Errorf("Cache-Control = %q, want %q", got, want)
	}
	events := strings.Split(string(raw), "\n\n")
	if got, want := events[len(events)-1], ""; got != want {
		t.Fatalf("stream does not end with a blank line: %q", got)
	}
	events = events[:len(events)-1]
	if got, want := events[len(events)-1], "data: [DONE]"; got != want {
		t.Fatalf("last event = %q, want %q", got, want)
	}
	var out []streamChunk
	for _, ev := range events[:len(events)-1] {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("event is not one data line: %q", ev)
		}
		var c streamChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("decode %q: %v", data, err)
		}
		out = append(out, c)
	}
	return out
}

// streamed is a streamed answer put back together, per choice.
type streamed struct {
	content  []string
	calls    [][]toolCallJSON
	finish   []string
	logprobs [][]logprobEntry
	tokens   [][]string // content deltas, one per chunk
	usage    *usage     // from the choices: [] chunk
}

func assemble(t *testing.T, chunks []streamChunk, n int) streamed {
	t.Helper()
	s := streamed{
		content: make([]string, n), calls: make([][]toolCallJSON, n), finish: make([]string, n),
		logprobs: make([][]logprobEntry, n), tokens: make([][]string, n),
	}
	for _, c := range chunks {
		if len(c.Choices) == 0 {
			if s.usage != nil {
				t.Error("more than one usage chunk")
			}
			s.usage = c.Usage
			continue
		}
		if got, want := len(c.Choices), 1; got != want {
			t.Fatalf("chunk has %d choices, want %d", got, want)
		}
		ch := c.Choices[0]
		if ch.Index < 0 || ch.Index >= n {
			t.Fatalf("choice index %d, want 0..%d", ch.Index, n-1)
		}
		if ch.Delta.Content != nil && ch.Delta.Role == nil {
			s.content[ch.Index] += *ch.Delta.Content
			s.tokens[ch.Index] = append(s.tokens[ch.Index], *ch.Delta.Content)
		}
		for _, tc := range ch.Delta.ToolCalls {
			if tc.Index == nil {
				t.Fatal("tool call delta without index")
			}
			calls := s.calls[ch.Index]
			if *tc.Index == len(calls) {
				calls = append(calls, toolCallJSON{Index: tc.Index})
			}
			cur := &calls[*tc.Index]
			if tc.ID != "" {
				cur.ID, cur.Type = tc.ID, tc.Type
			}
			cur.Function.Name += tc.Function.Name
			cur.Function.Arguments += tc.Function.Arguments
			s.calls[ch.Index] = calls
		}
		if ch.Logprobs != nil {
			s.logprobs[ch.Index] = append(s.logprobs[ch.Index], ch.Logprobs.Content...)
		}
		if ch.FinishReason != nil {
			if s.finish[ch.Index] != "" {
				t.Errorf("choice %d finished twice", ch.Index)
			}
			s.finish[ch.Index] = *ch.FinishReason
		}
	}
	return s
}

func TestStreamEventSequence(t *testing.T) {
	base := start(t)
	chunks := streamChat(t, base, map[string]any{
		"model": servedName, "messages": messages("user", "Stream me a story."), "max_tokens": 12,
	})
	if len(chunks) < 3 {
		t.Fatalf("got %d chunks, want a role chunk, content and a finish chunk", len(chunks))
	}
	for i, c := range chunks {
		if got, want := c.Object, "chat.completion.chunk"; got != want {
			t.Errorf("chunk %d: object = %q, want %q", i, got, want)
		}
		if got, want := c.Model, servedName; got != want {
			t.Errorf("chunk %d: model = %q, want %q", i, got, want)
		}
		if got, want := c.SystemFingerprint, "modelport-simulator"; got != want {
			t.Errorf("chunk %d: system_fingerprint = %q, want %q", i, got, want)
		}
		if got, want := c.ID, chunks[0].ID; got != want || !strings.HasPrefix(got, "chatcmpl-") {
			t.Errorf("chunk %d: id = %q, want %q for every chunk", i, got, want)
		}
		if c.Usage != nil {
			t.Errorf("chunk %d carries usage without stream_options", i)
		}
	}
	first := chunks[0].Choices[0]
	if first.Delta.Role == nil || *first.Delta.Role != "assistant" || first.Delta.Content == nil || *first.Delta.Content != "" || first.FinishReason != nil {
		t.Errorf("first chunk = %+v, want role assistant, empty content, no finish reason", first)
	}
	last := chunks[len(chunks)-1].Choices[0]
	if last.Delta.Role != nil || last.Delta.Content != nil || last.FinishReason == nil || *last.FinishReason != "length" {
		t.Errorf("last chunk = %+v, want an empty delta and finish_reason length", last)
	}
	middle := chunks[1 : len(chunks)-1]
	var content strings.Builder
	for i, c := range middle {
		ch := c.Choices[0]
		if ch.Delta.Content == nil || ch.Delta.Role != nil || ch.FinishReason != nil {
			t.Errorf("content chunk %d = %+v, want content only", i, ch)
			continue
		}
		if got, want := simulator.CountTokens(*ch.Delta.Content), 1; got != want {
			t.Errorf("content chunk %d %q is %d tokens, want %d", i, *ch.Delta.Content, got, want)
		}
		content.WriteString(*ch.Delta.Content)
	}
	if got, want := len(middle), simulator.CountTokens(content.String()); got != want || got > 12 {
		t.Errorf("got %d content chunks, want one per token, %d, at most max_tokens 12", got, want)
	}
	if !strings.HasPrefix(content.String(), "[simulated by") {
		t.Errorf("content = %q, want it to open with the notice", content.String())
	}
}

func TestStreamUsage(t *testing.T) {
	base := start(t)
	req := func(opts map[string]any) map[string]any {
		r := map[string]any{"model": servedName, "messages": messages("user", "Count my tokens."), "n": 2}
		if opts != nil {
			r["stream_options"] = opts
		}
		return r
	}
	want := chatFull(t, base, req(nil)).Usage

	tests := []struct {
		name           string
		opts           map[string]any
		wantUsageChunk bool
		wantContinuous bool
	}{
		{name: "no stream_options", opts: nil},
		{name: "include_usage false", opts: map[string]any{"include_usage": false}},
		{name: "include_usage", opts: map[string]any{"include_usage": true}, wantUsageChunk: true},
		{name: "continuous_usage_stats", opts: map[string]any{"continuous_usage_stats": true}, wantContinuous: true},
		{name: "both", opts: map[string]any{"include_usage": true, "continuous_usage_stats": true}, wantUsageChunk: true, wantContinuous: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chunks := streamChat(t, base, req(tc.opts))
			s := assemble(t, chunks, 2)
			if got := s.usage != nil; got != tc.wantUsageChunk {
				t.Fatalf("usage chunk present = %v, want %v", got, tc.wantUsageChunk)
			}
			if tc.wantUsageChunk {
				if got := *s.usage; got != want {
					t.Errorf("usage chunk = %+v, want the non-streamed usage %+v", got, want)
				}
				if last := chunks[len(chunks)-1]; len(last.Choices) != 0 {
					t.Errorf("the usage chunk is not last before [DONE]")
				}
			}
			prev := -1
			for i, c := range chunks {
				if len(c.Choices) == 0 {
					continue
				}
				if !tc.wantContinuous {
					if c.Usage != nil {
						t.Errorf("chunk %d carries usage %+v", i, *c.Usage)
					}
					continue
				}
				if c.Usage == nil {
					t.Fatalf("chunk %d has no usage", i)
				}
				u := *c.Usage
				if got, want := u.PromptTokens, want.PromptTokens; got != want {
					t.Errorf("chunk %d: prompt_tokens = %d, want %d", i, got, want)
				}
				if got, want := u.TotalTokens, u.PromptTokens+u.CompletionTokens; got != want {
					t.Errorf("chunk %d: total_tokens = %d, want %d", i, got, want)
				}
				ch := c.Choices[0]
				isToken := ch.Delta.Content != nil && ch.Delta.Role == nil
				switch {
				case isToken && u.CompletionTokens <= prev:
					t.Errorf("chunk %d: completion_tokens = %d after %d, want it to grow with each token", i, u.CompletionTokens, prev)
				case !isToken && prev >= 0 && u.CompletionTokens != prev:
					t.Errorf("chunk %d: completion_tokens = %d after %d, want it unchanged without a token", i, u.CompletionTokens, prev)
				}
				prev = u.CompletionTokens
			}
			if tc.wantContinuous && prev != want.CompletionTokens {
				t.Errorf("completion_tokens ends at %d, want %d", prev, want.CompletionTokens)
			}
		})
	}
}

// A streamed answer is the non-streamed answer cut into chunks.
func TestStreamMatchesNonStreaming(t *testing.T) {
	base := start(t)
	png := fixturePNG(t, 64, 48, red, blue)
	weather := []map[string]any{weatherTool, lookupTool}
	tests := []struct {
		name  string
		extra map[string]any
	}{
		{name: "plain"},
		{name: "max_tokens", extra: map[string]any{"max_tokens": 9}},
		{name: "seed", extra: map[string]any{"seed": 7}},
		{name: "n", extra: map[string]any{"n": 3}},
		{name: "stop", extra: map[string]any{"stop": []string{"tokens"}}},
		{name: "json_object", extra: map[string]any{"response_format": map[string]any{"type": "json_object"}}},
		{name: "logprobs", extra: map[string]any{"logprobs": true, "top_logprobs": 2, "n": 2}},
		{name: "tools auto", extra: map[string]any{"tools": weather}},
		{name: "tools required", extra: map[string]any{"tools": weather, "tool_choice": "required", "n": 2}},
		{name: "tool call cut by max_tokens", extra: map[string]any{"tools": weather, "tool_choice": "required", "max_tokens": 6}},
		{name: "tool named", extra: map[string]any{"tools": weather, "tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "get_weather"}}}},
		{name: "image", extra: map[string]any{"messages": []map[string]any{{"role": "user", "content": []map[string]any{
			{"type": "text", "text": "What is this?"}, imagePart(dataURL("image/png", png), "high"),
		}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": servedName, "messages": messages("user", "Say something.")}
			for k, v := range tc.extra {
				req[k] = v
			}
			want := chatFull(t, base, req)
			n := len(want.Choices)
			req["stream_options"] = map[string]any{"include_usage": true}
			s := assemble(t, streamChat(t, base, req), n)
			for i, ch := range want.Choices {
				if got, want := s.finish[i], ch.FinishReason; got != want {
					t.Errorf("choice %d: finish_reason = %q, want %q", i, got, want)
				}
				wantContent := ""
				if ch.Message.Content != nil {
					wantContent = *ch.Message.Content
				}
				if got := s.content[i]; got != wantContent {
					t.Errorf("choice %d: streamed content\n%q\nwant\n%q", i, got, wantContent)
				}
				wantCalls := ch.Message.ToolCalls
				for k := range s.calls[i] {
					s.calls[i][k].Index = nil
				}
				if len(wantCalls) == 0 && len(s.calls[i]) == 0 {
					wantCalls = s.calls[i]
				}
				if got := s.calls[i]; !reflect.DeepEqual(got, wantCalls) {
					t.Errorf("choice %d: streamed tool calls %+v, want %+v", i, got, wantCalls)
				}
				var wantLogprobs []logprobEntry
				if ch.Logprobs != nil {
					wantLogprobs = ch.Logprobs.Content
				}
				if len(wantLogprobs) == 0 {
					wantLogprobs = nil
				}
				if got := s.logprobs[i]; !reflect.DeepEqual(got, wantLogprobs) {
					t.Errorf("choice %d: streamed logprobs differ:\n%+v\nwant\n%+v", i, got, wantLogprobs)
				}
			}
			if s.usage == nil {
				t.Fatal("no usage chunk")
			}
			if got, want := *s.usage, want.Usage; got != want {
				t.Errorf("usage = %+v, want %+v", got, want)
			}
		})
	}
}

// A client that goes away ends the stream: with a first token at once and
// an hour between tokens, the server can shut down only if the handler
// returns when the client leaves.
func TestStreamStopsWhenClientLeaves(t *testing.T) {
	s := listen(t, simulator.Config{ServedName: servedName, BaseModel: "m", InterTokenLatency: time.Hour})
	base := "http://" + s.Addr().String() + "/v1"

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, _ := json.Marshal(map[string]any{"model": servedName, "messages": messages("user", "hi"), "stream": true})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/chat/completions", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for len(events) < 2 && sc.Scan() {
		if line := sc.Text(); line != "" {
			events = append(events, line)
		}
	}
	if got, want := len(events), 2; got != want {
		t.Fatalf("read %d events before the hour-long wait, want %d (role, first token)", got, want)
	}
	var first streamChunk
	if err := json.Unmarshal([]byte(strings.TrimPrefix(events[1], "data: ")), &first); err != nil || first.Choices[0].Delta.Content == nil {
		t.Fatalf("second event %q is not a token: %v", events[1], err)
	}
	cancel()

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown after the client left: %v; the stream handler is still running", err)
	}
}

// A base model named in CJK and emoji puts characters that take several
// tokens into the notice. Each chunk still carries whole characters, so
// it is valid UTF-8 on its own; such a chunk counts all its tokens, and
// the usage adds up to CountTokens of the content.
func TestStreamKeepsCharactersWhole(t *testing.T) {
	base := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "模型-🦙-测试 😀😃"})
	req := map[string]any{"model": servedName, "messages": messages("user", "你好 👋"), "logprobs": true}
	want := chatFull(t, base, req)
	content := *want.Choices[0].Message.Content
	if !strings.Contains(content, "模型-🦙-测试 😀😃") {
		t.Fatalf("content %q does not name the base model", content)
	}
	req["stream_options"] = map[string]any{"include_usage": true, "continuous_usage_stats": true}
	chunks := streamChat(t, base, req)

	var joined strings.Builder
	prev, grouped, entries := 0, 0, 0
	for i, c := range chunks {
		if len(c.Choices) == 0 || c.Choices[0].Delta.Content == nil || c.Choices[0].Delta.Role != nil {
			continue
		}
		text := *c.Choices[0].Delta.Content
		if text == "" || !utf8.ValidString(text) || strings.ContainsRune(text, utf8.RuneError) {
			t.Errorf("chunk %d carries %q: want whole characters", i, text)
		}
		joined.WriteString(text)
		n := c.Usage.CompletionTokens - prev
		prev = c.Usage.CompletionTokens
		if n < 1 {
			t.Errorf("chunk %d %q: completion_tokens grew by %d", i, text, n)
		}
		if n > 1 {
			grouped++
		}
		if got := len(c.Choices[0].Logprobs.Content); got != n {
			t.Errorf("chunk %d %q: %d logprobs entries, want one per token, %d", i, text, got, n)
		}
		entries += n
		var raw []byte
		for _, e := range c.Choices[0].Logprobs.Content {
			raw = append(raw, intsToBytes(e.Bytes)...)
		}
		if got := string(raw); got != text {
			t.Errorf("chunk %d: logprobs bytes spell %q, want %q", i, got, text)
		}
	}
	if got := joined.String(); got != content {
		t.Errorf("chunks join to\n%q\nwant\n%q", got, content)
	}
	if grouped == 0 {
		t.Error("no chunk carried more than one token; the emoji should")
	}
	if got, want := prev, simulator.CountTokens(content); got != want || entries != want {
		t.Errorf("completion_tokens ends at %d over %d entries, want CountTokens(content) = %d", got, entries, want)
	}
	if got, want := want.Usage.CompletionTokens, simulator.CountTokens(content); got != want {
		t.Errorf("non-streamed completion_tokens = %d, want %d", got, want)
	}
}
