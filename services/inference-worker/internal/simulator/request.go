package simulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// chatRequest is the part of an OpenAI chat completion request the
// simulator reads; other fields are ignored.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []message       `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Seed                *int64          `json:"seed"`
	Stream              bool            `json:"stream"`
	StreamOptions       streamOptions   `json:"stream_options"`
	N                   *int            `json:"n"`
	Stop                json.RawMessage `json:"stop"`
	Tools               []tool          `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ResponseFormat      *responseFormat `json:"response_format"`
	Logprobs            bool            `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	PresencePenalty     *float64        `json:"presence_penalty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
	// ContinuousUsageStats is vLLM's extension: usage on every chunk.
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

type responseFormat struct {
	Type string `json:"type"`
}

type message struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contentPart struct {
	Type     string          `json:"type"`
	Text     string          `json:"text"`
	ImageURL json.RawMessage `json:"image_url"`
}

type imageURL struct {
	URL    string `json:"url"`
	Detail string `json:"detail"`
}

// imageRef is an image part of a message, before it is loaded.
type imageRef struct {
	url    string
	detail string // low, high or auto
	where  string // messages[i].content[j], for error messages
}

// toolChoice says whether and which tool the answer calls.
type toolChoice int

const (
	toolsNone     toolChoice = iota // answer with text
	toolsAuto                       // answer with text; the simulator never volunteers a call
	toolsRequired                   // call one of the tools, picked by the seed
	toolsNamed                      // call the named tool
)

// chatParams is a validated chat request.
type chatParams struct {
	messages        []message
	seed            *int64
	n               int
	limit           int // -1 when there is none
	stops           []string
	tools           []toolSpec
	toolChoice      toolChoice
	toolName        string // with toolsNamed
	jsonMode        bool
	logprobs        bool
	topLogprobs     int
	stream          bool
	includeUsage    bool
	continuousUsage bool
}

// maxChoices bounds n.
const maxChoices = 8

// validate checks req and returns what the answer needs. Messages'
// contents are checked when they are read, by parts.
func (req *chatRequest) validate() (*chatParams, *requestError) {
	if len(req.Messages) == 0 {
		return nil, invalid("messages", "messages must not be empty")
	}
	p := &chatParams{
		messages: req.Messages, seed: req.Seed, n: 1, limit: -1,
		logprobs: req.Logprobs, stream: req.Stream,
		includeUsage:    req.StreamOptions.IncludeUsage,
		continuousUsage: req.StreamOptions.ContinuousUsageStats,
	}
	// max_completion_tokens is the current name; it wins over max_tokens.
	for _, f := range []struct {
		name string
		v    *int
	}{{"max_completion_tokens", req.MaxCompletionTokens}, {"max_tokens", req.MaxTokens}} {
		if f.v != nil {
			if *f.v < 1 {
				return nil, invalid(f.name, "%s must be at least 1", f.name)
			}
			p.limit = *f.v
			break
		}
	}
	if req.N != nil {
		if *req.N < 1 || *req.N > maxChoices {
			return nil, invalid("n", "n must be between 1 and %d", maxChoices)
		}
		p.n = *req.N
	}
	for _, r := range []struct {
		name     string
		v        *float64
		min, max float64
	}{
		{"temperature", req.Temperature, 0, 2},
		{"top_p", req.TopP, 0, 1},
		{"presence_penalty", req.PresencePenalty, -2, 2},
		{"frequency_penalty", req.FrequencyPenalty, -2, 2},
	} {
		if r.v != nil && (*r.v < r.min || *r.v > r.max) {
			return nil, invalid(r.name, "%s must be between %g and %g", r.name, r.min, r.max)
		}
	}
	if req.TopLogprobs != nil {
		if *req.TopLogprobs < 0 || *req.TopLogprobs > 20 {
			return nil, invalid("top_logprobs", "top_logprobs must be between 0 and 20")
		}
		if !req.Logprobs && *req.TopLogprobs > 0 {
			return nil, invalid("top_logprobs", "top_logprobs needs logprobs: true")
		}
		p.topLogprobs = *req.TopLogprobs
	}
	var err *requestError
	if p.stops, err = parseStop(req.Stop); err != nil {
		return nil, err
	}
	if req.ResponseFormat != nil {
		switch req.ResponseFormat.Type {
		case "text":
		case "json_object", "json_schema":
			p.jsonMode = true
		default:
			return nil, invalid("response_format", "response_format.type must be text, json_object or json_schema, not %q", req.ResponseFormat.Type)
		}
	}
	if p.tools, err = parseTools(req.Tools); err != nil {
		return nil, err
	}
	if p.toolChoice, p.toolName, err = parseToolChoice(req.ToolChoice, p.tools); err != nil {
		return nil, err
	}
	return p, nil
}

// maxStops bounds the stop strings, as OpenAI does.
const maxStops = 4

// parseStop reads stop: null, a string, or an array of up to four
// strings. Empty strings stop nothing and are dropped.
func parseStop(raw json.RawMessage) ([]string, *requestError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		if one == "" {
			return nil, nil
		}
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, invalid("stop", "stop must be a string or an array of strings")
	}
	if len(many) > maxStops {
		return nil, invalid("stop", "stop may hold at most %d strings, not %d", maxStops, len(many))
	}
	var out []string
	for _, s := range many {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

// parts reads a message's content: a string, null, or an array of content
// parts. It returns the text of the text parts and the image parts; other
// part types are ignored. i is the message's index, for error messages.
func (m message) parts(i int) (string, []imageRef, *requestError) {
	content := bytes.TrimSpace(m.Content)
	if len(content) == 0 || string(content) == "null" {
		return "", nil, nil
	}
	var s string
	if err := json.Unmarshal(content, &s); err == nil {
		return s, nil, nil
	}
	var parts []contentPart
	if err := json.Unmarshal(content, &parts); err != nil {
		return "", nil, invalid("messages", "messages[%d].content must be a string or an array of content parts", i)
	}
	var b strings.Builder
	var images []imageRef
	for j, p := range parts {
		where := fmt.Sprintf("messages[%d].content[%d]", i, j)
		switch p.Type {
		case "text":
			b.WriteString(p.Text)
		case "image_url":
			var u imageURL
			if err := json.Unmarshal(p.ImageURL, &u); err != nil || u.URL == "" {
				return "", nil, invalid("messages", `%s.image_url must be an object with a "url"`, where)
			}
			switch u.Detail {
			case "":
				u.Detail = "auto"
			case "low", "high", "auto":
			default:
				return "", nil, invalid("messages", "%s.image_url.detail must be low, high or auto, not %q", where, u.Detail)
			}
			images = append(images, imageRef{url: u.URL, detail: u.Detail, where: where})
		}
	}
	return b.String(), images, nil
}
