package gateway

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

// response is the Responses API's response object, as the gateway writes
// it: the request's settings echoed, the output items, and the usage.
type response struct {
	ID                 string             `json:"id"`
	Object             string             `json:"object"`
	CreatedAt          int64              `json:"created_at"`
	Status             string             `json:"status"`
	Error              *json.RawMessage   `json:"error"`
	IncompleteDetails  *incompleteDetails `json:"incomplete_details"`
	Instructions       *string            `json:"instructions"`
	MaxOutputTokens    *int               `json:"max_output_tokens"`
	Model              string             `json:"model"`
	Output             []any              `json:"output"`
	ParallelToolCalls  bool               `json:"parallel_tool_calls"`
	PreviousResponseID *string            `json:"previous_response_id"`
	Store              bool               `json:"store"`
	Temperature        *float64           `json:"temperature"`
	TopP               *float64           `json:"top_p"`
	Text               json.RawMessage    `json:"text"`
	ToolChoice         json.RawMessage    `json:"tool_choice"`
	Tools              []responseTool     `json:"tools"`
	Truncation         string             `json:"truncation"`
	Metadata           json.RawMessage    `json:"metadata"`
	Usage              *responseUsage     `json:"usage"`
}

type incompleteDetails struct {
	Reason string `json:"reason"`
}

// responseUsage is a response's usage: the chat usage under the
// Responses API's names.
type responseUsage struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

func usageOf(u Usage) *responseUsage {
	u = u.billable()
	r := &responseUsage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
	r.InputTokensDetails.CachedTokens = u.PromptTokensDetails.CachedTokens
	return r
}

// outputMessage is an output item with the model's text.
type outputMessage struct {
	Type    string       `json:"type"` // "message"
	ID      string       `json:"id"`
	Status  string       `json:"status"`
	Role    string       `json:"role"`
	Content []outputText `json:"content"`
}

type outputText struct {
	Type        string `json:"type"` // "output_text"
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
	Logprobs    []any  `json:"logprobs"`
}

// functionCall is an output item calling a function tool.
type functionCall struct {
	Type      string `json:"type"` // "function_call"
	ID        string `json:"id"`
	CallID    string `json:"call_id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
	Status    string `json:"status"`
}

// echo is the response's part that comes from the request: everything
// but its id, status, output and usage.
func (p *responsesParams) echo(model string) *response {
	r := &response{Object: "response", Model: model, Instructions: p.Instructions, MaxOutputTokens: p.MaxOutputTokens,
		Temperature: p.Temperature, TopP: p.TopP, ParallelToolCalls: p.ParallelToolCalls == nil || *p.ParallelToolCalls,
		Text: json.RawMessage(`{"format":{"type":"text"}}`), ToolChoice: json.RawMessage(`"auto"`), Tools: []responseTool{},
		Truncation: "disabled", Metadata: json.RawMessage(`{}`), Output: []any{}}
	if p.Text != nil && p.Text.Format != nil {
		r.Text, _ = marshal(p.Text)
	}
	if len(p.ToolChoice) > 0 && string(p.ToolChoice) != "null" {
		r.ToolChoice = p.ToolChoice
	}
	if len(p.Metadata) > 0 && string(p.Metadata) != "null" {
		r.Metadata = p.Metadata
	}
	r.Tools = append(r.Tools, p.Tools...)
	return r
}

// started returns the response with id as it stands when a stream starts.
func (r *response) started(id string) *response {
	out := *r
	out.ID, out.CreatedAt, out.Status = id, time.Now().Unix(), "in_progress"
	return &out
}

// finish sets the response's status from the chat finish reason, and its
// usage.
func (r *response) finish(reason string, u Usage) {
	r.Status, r.IncompleteDetails = "completed", nil
	if reason == "length" {
		r.Status, r.IncompleteDetails = "incomplete", &incompleteDetails{Reason: "max_output_tokens"}
	}
	r.Usage = usageOf(u)
}

// fromCompletion turns an engine's chat completion into the response
// with id, and returns its usage.
func (r *response) fromCompletion(b []byte, id string) ([]byte, Usage, error) {
	var cc struct {
		Created int64 `json:"created"`
		Choices []struct {
			Message struct {
				Content   *string `json:"content"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Function struct {
						Name      string `json:"name"`
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage *Usage `json:"usage"`
	}
	if err := json.Unmarshal(b, &cc); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not a chat completion")
	}
	if cc.Usage == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	if len(cc.Choices) == 0 {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without a choice")
	}
	out := *r
	out.ID, out.CreatedAt, out.Output = id, time.Now().Unix(), []any{}
	ch := cc.Choices[0]
	if c := ch.Message.Content; c != nil && (*c != "" || len(ch.Message.ToolCalls) == 0) {
		out.Output = append(out.Output, outputMessage{Type: "message", ID: newItemID("msg_"), Status: "completed", Role: "assistant",
			Content: []outputText{{Type: "output_text", Text: *c, Annotations: []any{}, Logprobs: []any{}}}})
	}
	for _, tc := range ch.Message.ToolCalls {
		out.Output = append(out.Output, functionCall{Type: "function_call", ID: newItemID("fc_"), CallID: callID(tc.ID),
			Name: tc.Function.Name, Arguments: tc.Function.Arguments, Status: "completed"})
	}
	out.finish(ch.FinishReason, *cc.Usage)
	b, err := marshal(out)
	return b, *cc.Usage, err
}

// callID is the call_id of an engine's tool call: its own id, or a new
// one where it gave none.
func callID(id string) string {
	if id == "" {
		return newItemID("call_")
	}
	return id
}

// responseEvents turns a chat stream into the Responses API's events:
// response.created and response.in_progress; for the text, an output
// message (response.output_item.added, response.content_part.added, a
// response.output_text.delta per chunk, then the .done events); for each
// tool call, a function_call item (added, its arguments' deltas, done);
// and response.completed (response.incomplete when the answer was cut by
// max_output_tokens) with the whole response and its usage. These are
// what the official clients assemble a response from. Only the first
// choice is read: a response has one.
type responseEvents struct {
	r      *response
	seq    int
	begun  bool
	text   *streamedText
	calls  map[int]*functionCall // by the chat tool call's index
	order  []any                 // output items by output_index: *streamedText or *functionCall
	finish string
}

type streamedText struct {
	id    string
	index int
	text  strings.Builder
}

func (e *responseEvents) event(typ string, fields map[string]any) []byte {
	fields["type"], fields["sequence_number"] = typ, e.seq
	e.seq++
	b, _ := marshal(fields)
	return b
}

func (e *responseEvents) chunk(raw []byte) ([][]byte, error) {
	var out [][]byte
	if !e.begun {
		e.begun = true
		out = append(out, e.event("response.created", map[string]any{"response": e.r}),
			e.event("response.in_progress", map[string]any{"response": e.r}))
	}
	var choices []struct {
		Index int `json:"index"`
		Delta struct {
			Content   *string `json:"content"`
			ToolCalls []struct {
				Index    int    `json:"index"`
				ID       string `json:"id"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &choices); err != nil {
			return nil, errs.Wrap(errs.Upstream, err, "the engine sent a malformed chunk")
		}
	}
	for _, ch := range choices {
		if ch.Index != 0 {
			continue
		}
		if c := ch.Delta.Content; c != nil && *c != "" {
			if e.text == nil {
				e.text = &streamedText{id: newItemID("msg_"), index: len(e.order)}
				e.order = append(e.order, e.text)
				out = append(out,
					e.event("response.output_item.added", map[string]any{"output_index": e.text.index,
						"item": outputMessage{Type: "message", ID: e.text.id, Status: "in_progress", Role: "assistant", Content: []outputText{}}}),
					e.event("response.content_part.added", map[string]any{"item_id": e.text.id, "output_index": e.text.index, "content_index": 0,
						"part": outputText{Type: "output_text", Annotations: []any{}, Logprobs: []any{}}}))
			}
			e.text.text.WriteString(*c)
			out = append(out, e.event("response.output_text.delta", map[string]any{"item_id": e.text.id, "output_index": e.text.index,
				"content_index": 0, "delta": *c, "logprobs": []any{}}))
		}
		for _, tc := range ch.Delta.ToolCalls {
			call, ok := e.calls[tc.Index]
			if !ok {
				if e.calls == nil {
					e.calls = map[int]*functionCall{}
				}
				call = &functionCall{Type: "function_call", ID: newItemID("fc_"), CallID: callID(tc.ID), Name: tc.Function.Name, Status: "in_progress"}
				e.calls[tc.Index] = call
				e.order = append(e.order, call)
				out = append(out, e.event("response.output_item.added", map[string]any{"output_index": len(e.order) - 1, "item": *call}))
			}
			if a := tc.Function.Arguments; a != "" {
				call.Arguments += a
				out = append(out, e.event("response.function_call_arguments.delta", map[string]any{"item_id": call.ID,
					"output_index": e.indexOf(call), "delta": a}))
			}
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			e.finish = *ch.FinishReason
		}
	}
	return out, nil
}

func (e *responseEvents) indexOf(item any) int {
	for i, it := range e.order {
		if it == item {
			return i
		}
	}
	return -1
}

func (e *responseEvents) done(u Usage) [][]byte {
	var out [][]byte
	if !e.begun {
		e.begun = true
		out = append(out, e.event("response.created", map[string]any{"response": e.r}),
			e.event("response.in_progress", map[string]any{"response": e.r}))
	}
	final := *e.r
	final.Output = []any{}
	for i, it := range e.order {
		switch it := it.(type) {
		case *streamedText:
			text := it.text.String()
			part := outputText{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []any{}}
			msg := outputMessage{Type: "message", ID: it.id, Status: "completed", Role: "assistant", Content: []outputText{part}}
			out = append(out,
				e.event("response.output_text.done", map[string]any{"item_id": it.id, "output_index": i, "content_index": 0, "text": text, "logprobs": []any{}}),
				e.event("response.content_part.done", map[string]any{"item_id": it.id, "output_index": i, "content_index": 0, "part": part}),
				e.event("response.output_item.done", map[string]any{"output_index": i, "item": msg}))
			final.Output = append(final.Output, msg)
		case *functionCall:
			it.Status = "completed"
			out = append(out,
				e.event("response.function_call_arguments.done", map[string]any{"item_id": it.ID, "output_index": i, "arguments": it.Arguments}),
				e.event("response.output_item.done", map[string]any{"output_index": i, "item": *it}))
			final.Output = append(final.Output, *it)
		}
	}
	final.finish(e.finish, u)
	typ := "response.completed"
	if final.Status == "incomplete" {
		typ = "response.incomplete"
	}
	return append(out, e.event(typ, map[string]any{"response": &final}))
}
