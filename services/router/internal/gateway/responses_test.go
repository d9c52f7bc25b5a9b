package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// setAll makes every instance of alice's chat service answer a.
func setAll(f fixture, a answer) {
	f.eng.set("http://i-a1.test/v1", a)
	f.eng.set("http://i-a2.test/v1", a)
}

func TestResponsesTranslatesTheRequest(t *testing.T) {
	f := newEndpointsFixture()
	body := `{"model":"` + aliceChat.AccessName + `","instructions":"Be terse.","max_output_tokens":40,"temperature":0.3,"top_p":0.9,
		"input":[
			{"role":"user","content":"What's the weather in Paris?"},
			{"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
			{"type":"function_call_output","call_id":"call_1","output":"sunny"},
			{"type":"message","role":"user","content":[{"type":"input_text","text":"And "},{"type":"input_text","text":"tomorrow?"}]}
		],
		"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"},"strict":true}],
		"tool_choice":{"type":"function","name":"get_weather"},
		"text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"}}},
		"metadata":{"k":"v"},"store":false}`
	if _, err := relayCall(f.g.Responses, context.Background(), alice, body); err != nil {
		t.Fatal(err)
	}
	if len(f.eng.calls) != 1 || f.eng.calls[0].path != "/chat/completions" {
		t.Fatalf("engine calls %+v; want one to /chat/completions", f.eng.calls)
	}
	var got, want any
	if err := json.Unmarshal(f.eng.calls[0].body, &got); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal([]byte(`{"model":"`+aliceChat.AccessName+`","max_tokens":40,"temperature":0.3,"top_p":0.9,
		"messages":[
			{"role":"system","content":"Be terse."},
			{"role":"user","content":"What's the weather in Paris?"},
			{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
			{"role":"tool","tool_call_id":"call_1","content":"sunny"},
			{"role":"user","content":[{"type":"text","text":"And "},{"type":"text","text":"tomorrow?"}]}
		],
		"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"},"strict":true}}],
		"tool_choice":{"type":"function","function":{"name":"get_weather"}},
		"response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object"}}}}`), &want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("chat request\n%s\nwant the same as\n%v", f.eng.calls[0].body, want)
	}
}

// response is the part of a response the tests read.
type response struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Status            string `json:"status"`
	Model             string `json:"model"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
	Instructions *string `json:"instructions"`
	Output       []struct {
		Type    string `json:"type"`
		ID      string `json:"id"`
		Role    string `json:"role"`
		Status  string `json:"status"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
		CallID    string `json:"call_id"`
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"output"`
	Usage *struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func TestResponsesAnswer(t *testing.T) {
	withCall := `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,` +
		`"tool_calls":[{"id":"call_9","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],` +
		`"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}}`
	cut := strings.Replace(completion, `"finish_reason":"stop"`, `"finish_reason":"length"`, 1)
	for _, tc := range []struct {
		name, engine, status string
		check                func(t *testing.T, r response)
		prompt, completion   int
	}{
		{"text", completion, "completed", func(t *testing.T, r response) {
			if len(r.Output) != 1 || r.Output[0].Type != "message" || !strings.HasPrefix(r.Output[0].ID, "msg_") || r.Output[0].Role != "assistant" ||
				len(r.Output[0].Content) != 1 || r.Output[0].Content[0].Type != "output_text" || r.Output[0].Content[0].Text != "Hello there" {
				t.Errorf("output %+v", r.Output)
			}
		}, 12, 5},
		{"a function call", withCall, "completed", func(t *testing.T, r response) {
			if len(r.Output) != 1 || r.Output[0].Type != "function_call" || r.Output[0].CallID != "call_9" || r.Output[0].Name != "get_weather" ||
				r.Output[0].Arguments != `{"city":"Paris"}` || !strings.HasPrefix(r.Output[0].ID, "fc_") {
				t.Errorf("output %+v", r.Output)
			}
		}, 20, 7},
		{"cut by max_output_tokens", cut, "incomplete", func(t *testing.T, r response) {
			if r.IncompleteDetails == nil || r.IncompleteDetails.Reason != "max_output_tokens" {
				t.Errorf("incomplete_details %+v", r.IncompleteDetails)
			}
		}, 12, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newEndpointsFixture()
			setAll(f, answer{status: 200, body: tc.engine})
			reply, err := relayCall(f.g.Responses, context.Background(), alice, `{"model":"`+aliceChat.AccessName+`","input":"hi","instructions":"Be terse."}`)
			if err != nil {
				t.Fatal(err)
			}
			var r response
			if err := json.Unmarshal(reply.Body, &r); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(r.ID, "resp_") || r.Object != "response" || r.Model != aliceChat.AccessName || r.Status != tc.status ||
				r.Instructions == nil || *r.Instructions != "Be terse." {
				t.Errorf("response %s", reply.Body)
			}
			if r.Usage == nil || r.Usage.InputTokens != tc.prompt || r.Usage.OutputTokens != tc.completion || r.Usage.TotalTokens != tc.prompt+tc.completion {
				t.Errorf("usage %+v, want %d+%d", r.Usage, tc.prompt, tc.completion)
			}
			tc.check(t, r)
			ev := onlyUsage(t, f)
			if ev.Endpoint != "/v1/responses" || ev.Status != 200 || ev.PromptTokens != tc.prompt || ev.CompletionTokens != tc.completion {
				t.Errorf("metered %+v", ev)
			}
		})
	}
}

// event is the part of a Responses stream event the tests read.
type event struct {
	Type     string   `json:"type"`
	Sequence int      `json:"sequence_number"`
	Response response `json:"response"`
	Output   int      `json:"output_index"`
	Content  int      `json:"content_index"`
	ItemID   string   `json:"item_id"`
	Delta    string   `json:"delta"`
	Text     string   `json:"text"`
	Item     struct {
		Type string `json:"type"`
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"item"`
}

func readEvents(t *testing.T, s *gateway.Stream) []event {
	t.Helper()
	var out []event
	for {
		data, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var e event
		if err := json.Unmarshal(data, &e); err != nil {
			t.Fatalf("event %s: %v", data, err)
		}
		out = append(out, e)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func types(evs []event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func TestResponsesStream(t *testing.T) {
	f := newEndpointsFixture()
	setAll(f, answer{status: 200, body: sse(append(engineChunks, done)...)})
	reply, err := relayCall(f.g.Responses, context.Background(), alice, `{"model":"`+aliceChat.AccessName+`","input":"hi","stream":true}`)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Stream == nil || reply.Stream.EndsWithDone() {
		t.Fatal("want a stream that ends with its last event, not [DONE]")
	}
	evs := readEvents(t, reply.Stream)
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
		"response.output_item.done", "response.completed"}
	if got := types(evs); !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v\nwant %v", got, want)
	}
	var text strings.Builder
	for i, e := range evs {
		if e.Sequence != i {
			t.Errorf("event %d has sequence_number %d", i, e.Sequence)
		}
		if e.Type == "response.output_text.delta" {
			text.WriteString(e.Delta)
		}
	}
	first, last := evs[0].Response, evs[len(evs)-1].Response
	if first.Status != "in_progress" || !strings.HasPrefix(first.ID, "resp_") || first.ID != last.ID || last.Model != aliceChat.AccessName {
		t.Errorf("created %+v, completed %+v", first, last)
	}
	if text.String() != "if a < b && c > d { return }" || evs[6].Text != text.String() || len(last.Output) != 1 || last.Output[0].Content[0].Text != text.String() {
		t.Errorf("deltas %q, done %q, final %+v", text.String(), evs[6].Text, last.Output)
	}
	if last.Status != "completed" || last.Usage == nil || last.Usage.InputTokens != 12 || last.Usage.OutputTokens != 3 {
		t.Errorf("completed %+v, usage %+v", last.Status, last.Usage)
	}
	ev := onlyUsage(t, f)
	if ev.Endpoint != "/v1/responses" || ev.Status != 200 || ev.PromptTokens != 12 || ev.CompletionTokens != 3 {
		t.Errorf("metered %+v", ev)
	}
}

func TestResponsesStreamFunctionCall(t *testing.T) {
	chunks := []string{
		`{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_7","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}`,
		`{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}`,
		`{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}`,
		`{"id":"x","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9,"total_tokens":39}}`,
	}
	f := newEndpointsFixture()
	setAll(f, answer{status: 200, body: sse(append(chunks, done)...)})
	reply, err := relayCall(f.g.Responses, context.Background(), alice,
		`{"model":"`+aliceChat.AccessName+`","input":"weather?","stream":true,"tools":[{"type":"function","name":"get_weather"}],"tool_choice":"required"}`)
	if err != nil {
		t.Fatal(err)
	}
	evs := readEvents(t, reply.Stream)
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.function_call_arguments.delta",
		"response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done", "response.completed"}
	if got := types(evs); !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v\nwant %v", got, want)
	}
	last := evs[len(evs)-1].Response
	if evs[2].Item.Type != "function_call" || evs[2].Item.Name != "get_weather" || len(last.Output) != 1 ||
		last.Output[0].CallID != "call_7" || last.Output[0].Arguments != `{"city":"Paris"}` || last.Usage.OutputTokens != 9 {
		t.Errorf("added %+v, final %+v", evs[2].Item, last)
	}
}

// TestResponsesStreamCutShort: a stream the engine ends early is an
// error for the client and is metered for what it produced, like chat.
func TestResponsesStreamCutShort(t *testing.T) {
	f := newEndpointsFixture()
	setAll(f, answer{status: 200, body: sse(chunkRole, chunkText)})
	reply, err := relayCall(f.g.Responses, context.Background(), alice, `{"model":"`+aliceChat.AccessName+`","input":"hi","stream":true}`)
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for {
		if _, err := reply.Stream.Next(); err != nil {
			last = err
			break
		}
	}
	_ = reply.Stream.Close()
	if errs.KindOf(last) != errs.Upstream {
		t.Errorf("stream ended with %v, want an upstream error", last)
	}
	if ev := onlyUsage(t, f); ev.Status != 502 || ev.Endpoint != "/v1/responses" || ev.PromptTokens != 12 || ev.CompletionTokens != 1 {
		t.Errorf("metered %+v; want 502 with the usage so far", ev)
	}
}

func TestResponsesRejects(t *testing.T) {
	img := `{"type":"input_image","image_url":"data:image/png;base64,AAAA"}`
	for _, tc := range []struct {
		name, body, param, msg string
	}{
		{"previous_response_id", `{"model":"` + aliceChat.AccessName + `","input":"hi","previous_response_id":"resp_1"}`, "previous_response_id", "does not store"},
		{"conversation", `{"model":"` + aliceChat.AccessName + `","input":"hi","conversation":"conv_1"}`, "conversation", "does not store"},
		{"background", `{"model":"` + aliceChat.AccessName + `","input":"hi","background":true}`, "background", ""},
		{"no model", `{"input":"hi"}`, "model", "required"},
		{"no input", `{"model":"` + aliceChat.AccessName + `"}`, "input", "required"},
		{"input a number", `{"model":"` + aliceChat.AccessName + `","input":3}`, "input", "must be"},
		{"unknown item type", `{"model":"` + aliceChat.AccessName + `","input":[{"type":"web_search_call"}]}`, "input[0].type", "not supported"},
		{"bad role", `{"model":"` + aliceChat.AccessName + `","input":[{"role":"robot","content":"x"}]}`, "input[0].role", "role"},
		{"a file part", `{"model":"` + aliceChat.AccessName + `","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}`, "input[0].content[0].type", "input_file"},
		{"an image to a text service", `{"model":"` + aliceChat.AccessName + `","instructions":"x","input":[{"role":"user","content":[{"type":"input_text","text":"what?"},` + img + `]}]}`, "input[0].content[1]", "does not accept images"},
		{"a bad data URL", `{"model":"` + aliceChat.AccessName + `","input":[{"role":"user","content":[{"type":"input_image","image_url":"data:text/plain;base64,AAAA"}]}]}`, "input[0].content[0].image_url.url", "image"},
		{"a built-in tool", `{"model":"` + aliceChat.AccessName + `","input":"hi","tools":[{"type":"web_search"}]}`, "tools[0].type", "function"},
		{"a bad tool_choice", `{"model":"` + aliceChat.AccessName + `","input":"hi","tool_choice":{"type":"file_search"}}`, "tool_choice", ""},
		{"a bad format", `{"model":"` + aliceChat.AccessName + `","input":"hi","text":{"format":{"type":"xml"}}}`, "text.format.type", ""},
		{"an embedding service", `{"model":"` + aliceEmbed.AccessName + `","input":"hi"}`, "model", "/v1/embeddings"},
		{"an image-generation service", `{"model":"` + aliceImage.AccessName + `","input":"hi"}`, "model", "/v1/images/generations"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newEndpointsFixture()
			_, err := relayCall(f.g.Responses, context.Background(), alice, tc.body)
			e := checkErr(t, err, errs.Invalid, tc.param)
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("message %q does not say %q", e.Msg, tc.msg)
			}
			if len(f.eng.calls) != 0 || len(f.pub.published()) != 0 {
				t.Errorf("engine called or usage metered for a refused request")
			}
		})
	}
}
