package simulator_test

import (
	"encoding/json"
	"math"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

const noticePrefix = "[simulated by the Modelport simulator engine for qwen2.5-7b-instruct; not real model output]"

// assertError posts body and checks the OpenAI error it gets back.
func assertError(t *testing.T, url string, body any, wantStatus int, wantParam, wantMsg string) {
	t.Helper()
	status, raw := post(t, url, body)
	if got, want := status, wantStatus; got != want {
		t.Fatalf("status = %d, want %d: %s", got, want, raw)
	}
	var e errorBody
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if got, want := e.Error.Type, "invalid_request_error"; got != want {
		t.Errorf("error.type = %q, want %q", got, want)
	}
	got := ""
	if e.Error.Param != nil {
		got = *e.Error.Param
	}
	if got != wantParam {
		t.Errorf("error.param = %q, want %q (message %q)", got, wantParam, e.Error.Message)
	}
	if !strings.Contains(e.Error.Message, wantMsg) {
		t.Errorf("error.message = %q, want it to mention %q", e.Error.Message, wantMsg)
	}
	if e.Error.Code != nil {
		t.Errorf("error.code = %q, want null", *e.Error.Code)
	}
}

func TestChatN(t *testing.T) {
	base := start(t)
	req := func(extra map[string]any) map[string]any {
		r := map[string]any{"model": servedName, "messages": messages("user", "Give me options."), "seed": 3}
		for k, v := range extra {
			r[k] = v
		}
		return r
	}
	single := chatFull(t, base, req(nil))
	for _, n := range []int{1, 2, 8} {
		c := chatFull(t, base, req(map[string]any{"n": n}))
		if got, want := len(c.Choices), n; got != want {
			t.Fatalf("n=%d: got %d choices", n, got)
		}
		sum := 0
		distinct := map[string]bool{}
		for i, ch := range c.Choices {
			if got, want := ch.Index, i; got != want {
				t.Errorf("n=%d: choice %d has index %d", n, i, got)
			}
			content := *ch.Message.Content
			if !strings.HasPrefix(content, noticePrefix) {
				t.Errorf("n=%d: choice %d does not open with the notice: %q", n, i, content)
			}
			sum += simulator.CountTokens(content)
			distinct[content] = true
		}
		if got, want := c.Usage.CompletionTokens, sum; got != want {
			t.Errorf("n=%d: completion_tokens = %d, want the sum over choices %d", n, got, want)
		}
		if got, want := *c.Choices[0].Message.Content, *single.Choices[0].Message.Content; got != want {
			t.Errorf("n=%d: choice 0 = %q, want the n=1 answer %q", n, got, want)
		}
		if n == 8 && len(distinct) < 2 {
			t.Errorf("n=8: all choices are the same text")
		}
		again := chatFull(t, base, req(map[string]any{"n": n}))
		for i := range again.Choices {
			if got, want := *again.Choices[i].Message.Content, *c.Choices[i].Message.Content; got != want {
				t.Errorf("n=%d: choice %d is not deterministic", n, i)
			}
		}
	}
}

func TestChatStop(t *testing.T) {
	base := start(t)
	req := func(extra map[string]any) map[string]any {
		r := map[string]any{"model": servedName, "messages": messages("user", "Hello there"), "seed": 11}
		for k, v := range extra {
			r[k] = v
		}
		return r
	}
	full := *chatFull(t, base, req(nil)).Choices[0].Message.Content
	tests := []struct {
		name        string
		extra       map[string]any
		wantContent string
		wantFinish  string
	}{
		{name: "string", extra: map[string]any{"stop": " prompt"}, wantContent: noticePrefix + " Your", wantFinish: "stop"},
		{name: "earliest of several", extra: map[string]any{"stop": []string{"tokens", "had", "zzz"}}, wantContent: noticePrefix + " Your prompt ", wantFinish: "stop"},
		{name: "never found", extra: map[string]any{"stop": []string{"zzz"}}, wantContent: full, wantFinish: "stop"},
		{name: "the notice is not cut", extra: map[string]any{"stop": "simulator engine"}, wantContent: full, wantFinish: "stop"},
		{name: "null", extra: map[string]any{"stop": nil}, wantContent: full, wantFinish: "stop"},
		{name: "after the limit", extra: map[string]any{"stop": "tokens.", "max_tokens": 3}, wantContent: "[simulated", wantFinish: "length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := chatFull(t, base, req(tc.extra))
			ch := c.Choices[0]
			if got, want := *ch.Message.Content, tc.wantContent; got != want {
				t.Errorf("content = %q, want %q", got, want)
			}
			if got, want := ch.FinishReason, tc.wantFinish; got != want {
				t.Errorf("finish_reason = %q, want %q", got, want)
			}
			if got, want := c.Usage.CompletionTokens, simulator.CountTokens(*ch.Message.Content); got != want {
				t.Errorf("completion_tokens = %d, want %d", got, want)
			}
		})
	}
}

var (
	weatherTool = map[string]any{"type": "function", "function": map[string]any{
		"name": "get_weather",
		"parameters": map[string]any{
			"type": "object",
			"properties": map[string]any{
				"city":   map[string]any{"type": "string"},
				"days":   map[string]any{"type": "integer"},
				"ratio":  map[string]any{"type": "number"},
				"metric": map[string]any{"type": "boolean"},
				"tags":   map[string]any{"type": "array", "items": map[string]any{"type": "string"}},
				"extra":  map[string]any{"type": "object"},
				"unit":   map[string]any{"type": "string", "enum": []string{"celsius", "fahrenheit"}},
				"note":   map[string]any{"type": []string{"null", "string"}},
				"hidden": map[string]any{"type": "string"},
			},
			"required": []string{"city", "days", "ratio", "metric", "tags", "extra", "unit", "note"},
		},
	}}
	lookupTool = map[string]any{"type": "function", "function": map[string]any{"name": "lookup"}}
)

const weatherArgs = `{"city":"simulated","days":1,"ratio":1,"metric":true,"tags":[],"extra":{},"unit":"celsius","note":"simulated"}`

var callID = regexp.MustCompile(`^call_[0-9a-f]+$`)

func TestChatTools(t *testing.T) {
	base := start(t)
	tools := []map[string]any{weatherTool, lookupTool}
	named := func(name string) map[string]any {
		return map[string]any{"type": "function", "function": map[string]any{"name": name}}
	}
	tests := []struct {
		name       string
		extra      map[string]any
		wantCall   map[string]string // name → arguments; nil for a text answer
		wantFinish string            // "" means tool_calls for a call
	}{
		{name: "required", extra: map[string]any{"tool_choice": "required"}, wantCall: map[string]string{"get_weather": weatherArgs, "lookup": "{}"}},
		{name: "named", extra: map[string]any{"tool_choice": named("get_weather")}, wantCall: map[string]string{"get_weather": weatherArgs}},
		{name: "named without parameters", extra: map[string]any{"tool_choice": named("lookup")}, wantCall: map[string]string{"lookup": "{}"}},
		{name: "auto", extra: map[string]any{"tool_choice": "auto"}},
		{name: "absent", extra: nil},
		{name: "none", extra: map[string]any{"tool_choice": "none"}},
		{name: "cut by max_tokens", extra: map[string]any{"tool_choice": named("get_weather"), "max_tokens": 8}, wantCall: map[string]string{"get_weather": `{"city":"simulated","`}, wantFinish: "length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": servedName, "messages": messages("user", "Weather in Paris?"), "tools": tools}
			for k, v := range tc.extra {
				req[k] = v
			}
			status, raw := post(t, base+"/chat/completions", req)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, raw)
			}
			var rawMsg struct {
				Choices []struct {
					Message map[string]json.RawMessage `json:"message"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(raw, &rawMsg); err != nil {
				t.Fatal(err)
			}
			var c fullCompletion
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			ch := c.Choices[0]
			msg := rawMsg.Choices[0].Message
			if tc.wantCall == nil {
				if got, want := string(msg["tool_calls"]), "[]"; got != want {
					t.Errorf("tool_calls = %s, want %s", got, want)
				}
				if ch.Message.Content == nil || !strings.HasPrefix(*ch.Message.Content, noticePrefix) {
					t.Errorf("content = %v, want the simulated text", ch.Message.Content)
				}
				if got, want := ch.FinishReason, "stop"; got != want {
					t.Errorf("finish_reason = %q, want %q", got, want)
				}
				return
			}
			if got, want := string(msg["content"]), "null"; got != want {
				t.Errorf("content = %s, want %s", got, want)
			}
			wantFinish := tc.wantFinish
			if wantFinish == "" {
				wantFinish = "tool_calls"
			}
			if got, want := ch.FinishReason, wantFinish; got != want {
				t.Errorf("finish_reason = %q, want %q", got, want)
			}
			if got, want := len(ch.Message.ToolCalls), 1; got != want {
				t.Fatalf("got %d tool calls, want %d", got, want)
			}
			call := ch.Message.ToolCalls[0]
			if !callID.MatchString(call.ID) || call.Type != "function" {
				t.Errorf("call id %q type %q, want call_<hex> and function", call.ID, call.Type)
			}
			wantArgs, ok := tc.wantCall[call.Function.Name]
			if !ok {
				t.Fatalf("called %q, want one of %v", call.Function.Name, tc.wantCall)
			}
			if got := call.Function.Arguments; got != wantArgs {
				t.Errorf("arguments = %s, want %s", got, wantArgs)
			}
			if !json.Valid([]byte(call.Function.Arguments)) && tc.wantFinish != "length" {
				t.Errorf("arguments are not JSON: %s", call.Function.Arguments)
			}
			if got, want := c.Usage.CompletionTokens, simulator.CountTokens(call.Function.Name+call.Function.Arguments); got != want {
				t.Errorf("completion_tokens = %d, want %d", got, want)
			}
		})
	}
}

func TestStreamToolCalls(t *testing.T) {
	base := start(t)
	chunks := streamChat(t, base, map[string]any{
		"model": servedName, "messages": messages("user", "Weather?"), "tools": []map[string]any{weatherTool},
		"tool_choice": "required",
	})
	if len(chunks) < 4 {
		t.Fatalf("got %d chunks", len(chunks))
	}
	head := chunks[1].Choices[0].Delta.ToolCalls
	if len(head) != 1 || head[0].Index == nil || *head[0].Index != 0 || !callID.MatchString(head[0].ID) ||
		head[0].Type != "function" || head[0].Function.Name != "get_weather" {
		t.Errorf("first tool call delta = %+v, want index 0, an id, type function and the name", head)
	}
	s := assemble(t, chunks, 1)
	if got, want := s.finish[0], "tool_calls"; got != want {
		t.Errorf("finish_reason = %q, want %q", got, want)
	}
	if got, want := s.content[0], ""; got != want {
		t.Errorf("content = %q, want none", got)
	}
	if len(s.calls[0]) != 1 {
		t.Fatalf("calls = %+v, want one", s.calls[0])
	}
	if got, want := s.calls[0][0].Function.Arguments, weatherArgs; got != want {
		t.Errorf("arguments = %s, want %s", got, want)
	}
}

func TestChatResponseFormat(t *testing.T) {
	base := start(t)
	tests := []struct {
		name       string
		format     map[string]any
		maxTokens  int
		wantJSON   bool
		wantText   bool // the JSON object carries text
		wantFinish string
	}{
		{name: "json_object", format: map[string]any{"type": "json_object"}, wantJSON: true, wantText: true, wantFinish: "stop"},
		{name: "json_schema", format: map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x", "schema": map[string]any{"type": "object"}}}, wantJSON: true, wantText: true, wantFinish: "stop"},
		{name: "json_object, room for some words", format: map[string]any{"type": "json_object"}, maxTokens: 30, wantJSON: true, wantText: true, wantFinish: "length"},
		{name: "json_object, no room for text", format: map[string]any{"type": "json_object"}, maxTokens: 10, wantJSON: true, wantFinish: "length"},
		{name: "json_object, too small for JSON", format: map[string]any{"type": "json_object"}, maxTokens: 3, wantFinish: "length"},
		{name: "text", format: map[string]any{"type": "text"}, wantFinish: "stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": servedName, "messages": messages("user", "JSON please"), "response_format": tc.format}
			if tc.maxTokens > 0 {
				req["max_tokens"] = tc.maxTokens
			}
			c := chatFull(t, base, req)
			ch := c.Choices[0]
			content := *ch.Message.Content
			if got, want := ch.FinishReason, tc.wantFinish; got != want {
				t.Errorf("finish_reason = %q, want %q", got, want)
			}
			if got, want := c.Usage.CompletionTokens, simulator.CountTokens(content); got != want {
				t.Errorf("completion_tokens = %d, want %d", got, want)
			}
			if tc.maxTokens > 0 && c.Usage.CompletionTokens > tc.maxTokens {
				t.Errorf("completion_tokens = %d, over max_tokens %d", c.Usage.CompletionTokens, tc.maxTokens)
			}
			if !tc.wantJSON {
				if tc.format["type"] == "text" && !strings.HasPrefix(content, noticePrefix) {
					t.Errorf("content = %q, want the usual text", content)
				}
				return
			}
			var obj struct {
				Simulated bool    `json:"simulated"`
				Engine    string  `json:"engine"`
				Text      *string `json:"text"`
			}
			if err := json.Unmarshal([]byte(content), &obj); err != nil {
				t.Fatalf("content is not JSON: %q: %v", content, err)
			}
			if !obj.Simulated {
				t.Errorf("content %s does not say it is simulated", content)
			}
			if got := obj.Text != nil && strings.HasPrefix(noticePrefix, (*obj.Text)[:min(len(*obj.Text), len(noticePrefix))]); got != tc.wantText {
				t.Errorf("content %s: text with the notice = %v, want %v", content, got, tc.wantText)
			}
			if tc.wantFinish == "stop" && !strings.HasPrefix(*obj.Text, noticePrefix) {
				t.Errorf("text = %q, want it to open with the notice", *obj.Text)
			}
		})
	}
}

func TestChatLogprobs(t *testing.T) {
	base := start(t)
	for _, top := range []int{0, 3, 20} {
		req := map[string]any{"model": servedName, "messages": messages("user", "Probabilities"), "logprobs": true, "top_logprobs": top, "n": 2}
		c := chatFull(t, base, req)
		for i, ch := range c.Choices {
			if ch.Logprobs == nil {
				t.Fatalf("top %d, choice %d: logprobs is null", top, i)
			}
			entries := ch.Logprobs.Content
			content := *ch.Message.Content
			if got, want := len(entries), simulator.CountTokens(content); got != want {
				t.Errorf("top %d, choice %d: %d entries, want one per token, %d", top, i, got, want)
			}
			var joined strings.Builder
			for k, e := range entries {
				joined.WriteString(e.Token)
				if e.Logprob >= 0 || math.IsNaN(e.Logprob) {
					t.Errorf("entry %d: logprob %v, want negative", k, e.Logprob)
				}
				if got, want := string(intsToBytes(e.Bytes)), e.Token; got != want {
					t.Errorf("entry %d: bytes spell %q, want %q", k, got, want)
				}
				if got, want := len(e.TopLogprobs), top; got != want {
					t.Fatalf("entry %d: %d top_logprobs, want %d", k, got, want)
				}
				mass := 0.0
				for j, alt := range e.TopLogprobs {
					mass += math.Exp(alt.Logprob)
					if j == 0 && (alt.Token != e.Token || alt.Logprob != e.Logprob) {
						t.Errorf("entry %d: top_logprobs[0] = %+v, want the token itself", k, alt)
					}
					if j > 0 && alt.Logprob >= e.TopLogprobs[j-1].Logprob {
						t.Errorf("entry %d: top_logprobs not in descending order", k)
					}
					if got, want := string(intsToBytes(alt.Bytes)), alt.Token; got != want {
						t.Errorf("entry %d alt %d: bytes spell %q, want %q", k, j, got, want)
					}
				}
				if mass > 1 {
					t.Errorf("entry %d: top_logprobs hold probability %v, more than 1", k, mass)
				}
			}
			if got, want := joined.String(), content; got != want {
				t.Errorf("tokens join to %q, want the content %q", got, want)
			}
		}
		again := chatFull(t, base, req)
		if got, want := again.Choices[1].Logprobs.Content, c.Choices[1].Logprobs.Content; len(got) != len(want) || got[0].Logprob != want[0].Logprob {
			t.Errorf("top %d: logprobs are not deterministic", top)
		}
	}

	status, raw := post(t, base+"/chat/completions", map[string]any{"model": servedName, "messages": messages("user", "hi")})
	if status != http.StatusOK {
		t.Fatal(status)
	}
	var r struct {
		Choices []map[string]json.RawMessage `json:"choices"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if got, want := string(r.Choices[0]["logprobs"]), "null"; got != want {
		t.Errorf("logprobs without asking = %s, want %s", got, want)
	}
}

func intsToBytes(v []int) []byte {
	out := make([]byte, len(v))
	for i, b := range v {
		out[i] = byte(b)
	}
	return out
}

func TestChatValidation(t *testing.T) {
	base := start(t)
	hi := messages("user", "hi")
	tests := []struct {
		name      string
		extra     map[string]any
		body      string // sent as is instead, when set
		wantParam string
		wantMsg   string
	}{
		{name: "temperature too high", extra: map[string]any{"temperature": 2.5}, wantParam: "temperature"},
		{name: "temperature negative", extra: map[string]any{"temperature": -0.1}, wantParam: "temperature"},
		{name: "top_p over 1", extra: map[string]any{"top_p": 1.01}, wantParam: "top_p"},
		{name: "presence_penalty", extra: map[string]any{"presence_penalty": 2.1}, wantParam: "presence_penalty"},
		{name: "frequency_penalty", extra: map[string]any{"frequency_penalty": -3}, wantParam: "frequency_penalty"},
		{name: "n zero", extra: map[string]any{"n": 0}, wantParam: "n"},
		{name: "n nine", extra: map[string]any{"n": 9}, wantParam: "n"},
		{name: "stop a number", extra: map[string]any{"stop": 5}, wantParam: "stop"},
		{name: "stop five strings", extra: map[string]any{"stop": []string{"a", "b", "c", "d", "e"}}, wantParam: "stop"},
		{name: "stop with a number", extra: map[string]any{"stop": []any{"a", 1}}, wantParam: "stop"},
		{name: "response_format type", extra: map[string]any{"response_format": map[string]any{"type": "xml"}}, wantParam: "response_format"},
		{name: "response_format without type", extra: map[string]any{"response_format": map[string]any{}}, wantParam: "response_format"},
		{name: "response_format a string", extra: map[string]any{"response_format": "json"}, wantParam: "response_format"},
		{name: "top_logprobs 21", extra: map[string]any{"logprobs": true, "top_logprobs": 21}, wantParam: "top_logprobs"},
		{name: "top_logprobs without logprobs", extra: map[string]any{"top_logprobs": 2}, wantParam: "top_logprobs"},
		{name: "tool without name", extra: map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{}}}}, wantParam: "tools"},
		{name: "tool of another type", extra: map[string]any{"tools": []any{map[string]any{"type": "retrieval", "function": map[string]any{"name": "x"}}}}, wantParam: "tools"},
		{name: "tool parameters not an object", extra: map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "x", "parameters": 3}}}}, wantParam: "tools"},
		{name: "tool_choice required without tools", extra: map[string]any{"tool_choice": "required"}, wantParam: "tool_choice"},
		{name: "tool_choice unknown mode", extra: map[string]any{"tools": []any{lookupTool}, "tool_choice": "sometimes"}, wantParam: "tool_choice"},
		{name: "tool_choice unknown function", extra: map[string]any{"tools": []any{lookupTool}, "tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "nope"}}}, wantParam: "tool_choice"},
		{name: "tool_choice a number", extra: map[string]any{"tool_choice": 1}, wantParam: "tool_choice"},
		// Wrong JSON types name the field.
		{name: "temperature a string", extra: map[string]any{"temperature": "hot"}, wantParam: "temperature", wantMsg: "temperature"},
		{name: "n a fraction", extra: map[string]any{"n": 1.5}, wantParam: "n"},
		{name: "max_tokens a string", extra: map[string]any{"max_tokens": "10"}, wantParam: "max_tokens"},
		{name: "stream a string", extra: map[string]any{"stream": "yes"}, wantParam: "stream"},
		{name: "logprobs a string", extra: map[string]any{"logprobs": "yes"}, wantParam: "logprobs"},
		{name: "seed a string", extra: map[string]any{"seed": "42"}, wantParam: "seed"},
		{name: "stream_options.include_usage a string", extra: map[string]any{"stream_options": map[string]any{"include_usage": "yes"}}, wantParam: "stream_options.include_usage"},
		{name: "tools an object", extra: map[string]any{"tools": map[string]any{}}, wantParam: "tools"},
		{name: "body an array", body: `[]`, wantParam: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body any = tc.body
			if tc.body == "" {
				req := map[string]any{"model": servedName, "messages": hi}
				for k, v := range tc.extra {
					req[k] = v
				}
				body = req
			}
			assertError(t, base+"/chat/completions", body, http.StatusBadRequest, tc.wantParam, tc.wantMsg)
		})
	}
}

func TestChatAcceptsBoundsAndUnknownFields(t *testing.T) {
	base := start(t)
	for _, extra := range []map[string]any{
		{"temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": -2},
		{"temperature": 2, "top_p": 1, "presence_penalty": 2, "frequency_penalty": 2},
		{"user": "u1", "metadata": map[string]any{"k": "v"}, "parallel_tool_calls": true, "some_future_field": []int{1}},
		{"stop": []string{}, "n": 8, "logprobs": false, "stream": false, "stream_options": nil},
	} {
		req := map[string]any{"model": servedName, "messages": messages("user", "hi")}
		for k, v := range extra {
			req[k] = v
		}
		if status, body := post(t, base+"/chat/completions", req); status != http.StatusOK {
			t.Errorf("%v: status %d: %s", extra, status, body)
		}
	}
}
