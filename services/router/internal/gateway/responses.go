package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
)

// The Responses API (POST /v1/responses) is served by translating each
// request into a chat completion and its answer, whole or streamed, back
// into a response: every engine serves chat, so every engine serves
// Responses the same way, with the same checks, metering and retries as
// chat. Responses are not stored: previous_response_id and conversation
// are refused, and a client sends the whole conversation as input.

const responsesEndpoint = "/v1/responses"

// responsesParams are the Responses parameters the gateway reads. Other
// known parameters that only shape what OpenAI stores or bills
// (metadata, store, include, truncation, reasoning, service_tier, ...)
// are accepted and have no effect.
type responsesParams struct {
	Model              string          `json:"model"`
	Input              json.RawMessage `json:"input"`
	Instructions       *string         `json:"instructions"`
	MaxOutputTokens    *int            `json:"max_output_tokens"`
	Temperature        *float64        `json:"temperature"`
	TopP               *float64        `json:"top_p"`
	Stream             bool            `json:"stream"`
	Tools              []responseTool  `json:"tools"`
	ToolChoice         json.RawMessage `json:"tool_choice"`
	ParallelToolCalls  *bool           `json:"parallel_tool_calls"`
	Text               *responseText   `json:"text"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Conversation       json.RawMessage `json:"conversation"`
	Background         *bool           `json:"background"`
	Store              *bool           `json:"store"`
	User               *string         `json:"user"`
	Metadata           json.RawMessage `json:"metadata"`
}

// responseTool is a tool of a Responses request; only function tools
// are served.
type responseTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description *string         `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// responseText is the text option: the answer's format.
type responseText struct {
	Format *struct {
		Type        string          `json:"type"`
		Name        string          `json:"name,omitempty"`
		Schema      json.RawMessage `json:"schema,omitempty"`
		Strict      *bool           `json:"strict,omitempty"`
		Description *string         `json:"description,omitempty"`
	} `json:"format"`
}

// inputItem is one item of a Responses input list: a message (type
// "message", or none), a function call the model made, or a function
// call's output.
type inputItem struct {
	Type      string          `json:"type"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	CallID    string          `json:"call_id"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	Output    json.RawMessage `json:"output"`
}

// inputPart is a content part of an input message.
type inputPart struct {
	Type     string  `json:"type"`
	Text     *string `json:"text"`
	ImageURL *string `json:"image_url"`
	Detail   string  `json:"detail"`
	FileID   *string `json:"file_id"`
}

// chatRequest is the chat completion a Responses request becomes.
type chatRequest struct {
	Model             string          `json:"model"`
	Messages          []chatMsg       `json:"messages"`
	MaxTokens         *int            `json:"max_tokens,omitempty"`
	Temperature       *float64        `json:"temperature,omitempty"`
	TopP              *float64        `json:"top_p,omitempty"`
	Stream            bool            `json:"stream,omitempty"`
	Tools             []chatTool      `json:"tools,omitempty"`
	ToolChoice        json.RawMessage `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls,omitempty"`
	ResponseFormat    json.RawMessage `json:"response_format,omitempty"`
	User              *string         `json:"user,omitempty"`
}

type chatMsg struct {
	Role       string         `json:"role"`
	Content    any            `json:"content,omitempty"` // a string or []chatPart
	ToolCalls  []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
}

type chatPart struct {
	Type     string        `json:"type"`
	Text     *string       `json:"text,omitempty"`
	ImageURL *chatImageURL `json:"image_url,omitempty"`
}

type chatImageURL struct {
	URL    string `json:"url"`
	Detail string `json:"detail,omitempty"`
}

type chatToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type chatTool struct {
	Type     string       `json:"type"`
	Function chatFunction `json:"function"`
}

type chatFunction struct {
	Name        string          `json:"name"`
	Description *string         `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// Responses answers POST /v1/responses for services that generate text,
// as a chat completion translated both ways (see the top of this file).
func (g *Gateway) Responses(ctx context.Context, c Call) (*Reply, error) {
	started := time.Now().UTC()
	if err := g.hold(&c); err != nil {
		return nil, err
	}
	defer c.Hold.Release()
	var p responsesParams
	if err := decodeBody(c.Body, &p); err != nil {
		return nil, err
	}
	chat, where, err := p.toChat()
	if err != nil {
		return nil, err
	}
	svc, err := g.service(c.Caller, p.Model)
	if err != nil {
		return nil, err
	}
	if err := generatesText(svc, responsesEndpoint); err != nil {
		return nil, err
	}
	body, err := marshal(chat)
	if err != nil {
		return nil, err
	}
	chat = nil
	if err := c.Hold.Grow(int64(len(body))); err != nil {
		return nil, err
	}
	cp, err := parseChat(body, g.MaxImageBytes)
	if err == nil {
		err = cp.checkTask(svc)
	}
	if err != nil {
		return nil, where.locate(err)
	}
	if err := g.admit(c, svc); err != nil {
		return nil, err
	}
	images, err := g.fetchImages(ctx, body, cp, c.Caller.OwnerID, c.Hold)
	if err != nil {
		return nil, where.locate(err)
	}
	route := cp.route(body)
	upBody, err := upstreamBody(body, cp, images, c.Hold)
	if err != nil {
		return nil, err
	}
	c.Body, body, images = nil, nil, nil
	echo := p.echo(svc.AccessName)
	x := exchange{
		endpoint: responsesEndpoint, path: "/chat/completions", body: upBody, stream: p.Stream,
		prompt: cp.prompt, id: newResponseID(), route: route,
		rewrite: func(b []byte, id, _ string) ([]byte, Usage, error) { return echo.fromCompletion(b, id) },
	}
	if p.Stream {
		x.events = &responseEvents{r: echo.started(x.id)}
	}
	return g.relay(ctx, c, svc, started, x)
}

// messageWhere maps each chat message back to the Responses parameter it
// came from, so an error the chat checks find names the client's
// parameter: input[2].content[0] rather than messages[3].content[0].
type messageWhere []string

// locate rewrites err's parameter from a chat message to its origin.
func (w messageWhere) locate(err error) error {
	e, ok := errs.As(err)
	if !ok || !strings.HasPrefix(e.Param, "messages[") {
		return err
	}
	end := strings.IndexByte(e.Param, ']')
	var i int
	if _, serr := fmt.Sscanf(e.Param[len("messages["):end], "%d", &i); serr != nil || i < 0 || i >= len(w) {
		return err
	}
	out := *e
	out.Param = w[i] + e.Param[end+1:]
	out.Msg = strings.ReplaceAll(out.Msg, e.Param, out.Param)
	return &out
}

// toChat checks a Responses request and returns it as a chat request,
// with where each of its messages came from.
func (p *responsesParams) toChat() (*chatRequest, messageWhere, error) {
	if p.Model == "" {
		return nil, nil, errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	if p.PreviousResponseID != nil && *p.PreviousResponseID != "" {
		return nil, nil, errs.InvalidParam("previous_response_id", "previous_response_id is not supported: this API does not store responses; send the whole conversation in input")
	}
	if c := bytes.TrimSpace(p.Conversation); len(c) > 0 && string(c) != "null" {
		return nil, nil, errs.InvalidParam("conversation", "conversation is not supported: this API does not store conversations; send the whole conversation in input")
	}
	if p.Background != nil && *p.Background {
		return nil, nil, errs.InvalidParam("background", "background responses are not supported: this API does not store responses")
	}
	req := &chatRequest{Model: p.Model, MaxTokens: p.MaxOutputTokens, Temperature: p.Temperature, TopP: p.TopP,
		Stream: p.Stream, ParallelToolCalls: p.ParallelToolCalls, User: p.User}
	var where messageWhere
	if p.Instructions != nil && *p.Instructions != "" {
		req.Messages = append(req.Messages, chatMsg{Role: "system", Content: *p.Instructions})
		where = append(where, "instructions")
	}
	if err := p.input(req, &where); err != nil {
		return nil, nil, err
	}
	for i, t := range p.Tools {
		if t.Type != "function" {
			return nil, nil, errs.InvalidParam(fmt.Sprintf("tools[%d].type", i), "only function tools are supported, not %q", t.Type)
		}
		if t.Name == "" {
			return nil, nil, errs.InvalidParam(fmt.Sprintf("tools[%d].name", i), "a function tool needs a name")
		}
		req.Tools = append(req.Tools, chatTool{Type: "function", Function: chatFunction{
			Name: t.Name, Description: t.Description, Parameters: t.Parameters, Strict: t.Strict}})
	}
	if tc := bytes.TrimSpace(p.ToolChoice); len(tc) > 0 && string(tc) != "null" {
		var mode string
		var named struct {
			Type string `json:"type"`
			Name string `json:"name"`
		}
		switch {
		case json.Unmarshal(tc, &mode) == nil && (mode == "auto" || mode == "none" || mode == "required"):
			req.ToolChoice = tc
		case json.Unmarshal(tc, &named) == nil && named.Type == "function" && named.Name != "":
			req.ToolChoice, _ = marshal(map[string]any{"type": "function", "function": map[string]string{"name": named.Name}})
		default:
			return nil, nil, errs.InvalidParam("tool_choice", `tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}`)
		}
	}
	if p.Text != nil && p.Text.Format != nil {
		f := p.Text.Format
		switch f.Type {
		case "text":
		case "json_object":
			req.ResponseFormat = json.RawMessage(`{"type":"json_object"}`)
		case "json_schema":
			if f.Name == "" || len(f.Schema) == 0 {
				return nil, nil, errs.InvalidParam("text.format", "a json_schema format needs a name and a schema")
			}
			schema := map[string]any{"name": f.Name, "schema": f.Schema}
			if f.Strict != nil {
				schema["strict"] = *f.Strict
			}
			if f.Description != nil {
				schema["description"] = *f.Description
			}
			req.ResponseFormat, _ = marshal(map[string]any{"type": "json_schema", "json_schema": schema})
		default:
			return nil, nil, errs.InvalidParam("text.format.type", "text.format.type must be text, json_object or json_schema, not %q", f.Type)
		}
	}
	return req, where, nil
}

// input adds the input's messages to req: a string is one user message;
// a list holds messages, function calls (which become the assistant's
// tool calls) and their outputs (tool messages).
func (p *responsesParams) input(req *chatRequest, where *messageWhere) error {
	raw := bytes.TrimSpace(p.Input)
	if len(raw) == 0 || string(raw) == "null" {
		return errs.InvalidParam("input", "input is required: a string or a list of input items")
	}
	var text string
	if json.Unmarshal(raw, &text) == nil {
		req.Messages = append(req.Messages, chatMsg{Role: "user", Content: text})
		*where = append(*where, "input")
		return nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil || len(items) == 0 {
		return errs.InvalidParam("input", "input must be a string or a non-empty list of input items")
	}
	for i, rawItem := range items {
		param := fmt.Sprintf("input[%d]", i)
		var it inputItem
		if err := decodeJSON(rawItem, &it, param); err != nil {
			return err
		}
		switch it.Type {
		case "", "message":
			msg, err := inputMessage(it, param)
			if err != nil {
				return err
			}
			req.Messages = append(req.Messages, msg)
			*where = append(*where, param)
		case "function_call":
			if it.CallID == "" || it.Name == "" {
				return errs.InvalidParam(param, "a function_call item needs call_id and name")
			}
			call := chatToolCall{ID: it.CallID, Type: "function"}
			call.Function.Name, call.Function.Arguments = it.Name, it.Arguments
			// Calls made together are one assistant message.
			if n := len(req.Messages); n > 0 && req.Messages[n-1].Role == "assistant" && len(req.Messages[n-1].ToolCalls) > 0 {
				req.Messages[n-1].ToolCalls = append(req.Messages[n-1].ToolCalls, call)
				continue
			}
			req.Messages = append(req.Messages, chatMsg{Role: "assistant", ToolCalls: []chatToolCall{call}})
			*where = append(*where, param)
		case "function_call_output":
			if it.CallID == "" {
				return errs.InvalidParam(param+".call_id", "a function_call_output item needs call_id")
			}
			out, err := callOutput(it.Output)
			if err != nil {
				return errs.InvalidParam(param+".output", "%v", err)
			}
			req.Messages = append(req.Messages, chatMsg{Role: "tool", ToolCallID: it.CallID, Content: out})
			*where = append(*where, param)
		case "reasoning":
			// The model's own reasoning from an earlier turn: engines take
			// none back.
		default:
			return errs.InvalidParam(param+".type", "input item type %q is not supported; use message, function_call or function_call_output", it.Type)
		}
	}
	return nil
}

// inputMessage turns a message item into a chat message: its content a
// string, or input_text, output_text and input_image parts.
func inputMessage(it inputItem, param string) (chatMsg, error) {
	switch it.Role {
	case "user", "assistant", "system", "developer":
	default:
		return chatMsg{}, errs.InvalidParam(param+".role", "role must be user, assistant, system or developer, not %q", it.Role)
	}
	raw := bytes.TrimSpace(it.Content)
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return chatMsg{Role: it.Role, Content: text}, nil
	}
	var parts []json.RawMessage
	if json.Unmarshal(raw, &parts) != nil {
		return chatMsg{}, errs.InvalidParam(param+".content", "content must be a string or a list of content parts")
	}
	out := []chatPart{}
	for j, rawPart := range parts {
		pp := fmt.Sprintf("%s.content[%d]", param, j)
		var part inputPart
		if err := decodeJSON(rawPart, &part, pp); err != nil {
			return chatMsg{}, err
		}
		switch part.Type {
		case "input_text", "output_text":
			if part.Text == nil {
				return chatMsg{}, errs.InvalidParam(pp+".text", "a %s part needs text", part.Type)
			}
			out = append(out, chatPart{Type: "text", Text: part.Text})
		case "refusal":
			// An earlier refusal by the model: nothing to send back.
		case "input_image":
			if part.FileID != nil {
				return chatMsg{}, errs.InvalidParam(pp+".file_id", "file_id is not supported: give the image as image_url, a data URL or an http(s) URL")
			}
			if part.ImageURL == nil || *part.ImageURL == "" {
				return chatMsg{}, errs.InvalidParam(pp+".image_url", "an input_image part needs image_url")
			}
			detail := part.Detail
			if detail == "" {
				detail = "auto"
			}
			out = append(out, chatPart{Type: "image_url", ImageURL: &chatImageURL{URL: *part.ImageURL, Detail: detail}})
		default:
			return chatMsg{}, errs.InvalidParam(pp+".type", "content part type %q is not supported; use input_text or input_image", part.Type)
		}
	}
	return chatMsg{Role: it.Role, Content: out}, nil
}

// callOutput is a function call's output as a tool message's text: a
// string, or the text of input_text parts.
func callOutput(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []inputPart
	if json.Unmarshal(raw, &parts) != nil {
		return "", fmt.Errorf("output must be a string or a list of input_text parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "input_text" || p.Text == nil {
			return "", fmt.Errorf("output parts must be input_text")
		}
		b.WriteString(*p.Text)
	}
	return b.String(), nil
}

// newResponseID returns "resp_" and 32 hex digits; newItemID likewise
// with prefix.
func newResponseID() string { return newItemID("resp_") }

func newItemID(prefix string) string { return prefix + strings.ReplaceAll(uuid.NewString(), "-", "") }
