package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// chatParams are the chat parameters the gateway checks. Their types are
// enforced here, so a wrong type is a 400 naming the field; ranges are the
// engine's to check. Every field, known or not, reaches the engine as the
// client sent it.
type chatParams struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	N                   *int            `json:"n"`
	Seed                *int64          `json:"seed"`
	PresencePenalty     *float64        `json:"presence_penalty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty"`
	User                *string         `json:"user"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	Stop                json.RawMessage `json:"stop"`
	ResponseFormat      *struct {
		Type string `json:"type"`
	} `json:"response_format"`
	Tools []struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tools"`
	ToolChoice json.RawMessage `json:"tool_choice"`
}

type streamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contentPart struct {
	Type     string `json:"type"`
	ImageURL *struct {
		URL string `json:"url"`
	} `json:"image_url"`
}

// decodeBody decodes a JSON object body into v, turning JSON errors into
// 400s that name the field at fault.
func decodeBody(body []byte, v any) error {
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		return errs.E(errs.Invalid, "request body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return errs.InvalidParam(typeErr.Field, "%s has the wrong type: expected %s, got %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
		}
		return errs.E(errs.Invalid, "request body is not valid JSON: %v", err)
	}
	return nil
}

// jsonKind names a Go kind as JSON does.
func jsonKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"), strings.HasPrefix(k, "float"):
		return "number"
	case k == "slice":
		return "array"
	case k == "struct", k == "map":
		return "object"
	case k == "bool":
		return "boolean"
	}
	return k
}

// validate checks what the gateway itself must know: the model, the
// messages and their parts, and whether the service can take them.
func (p *chatParams) validate() error {
	if p.Model == "" {
		return errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	if len(p.Messages) == 0 {
		return errs.InvalidParam("messages", "messages must be a non-empty array")
	}
	for i, m := range p.Messages {
		switch m.Role {
		case "system", "developer", "user", "assistant", "tool":
		default:
			return errs.InvalidParam(fmt.Sprintf("messages[%d].role", i), "role must be system, developer, user, assistant or tool, not %q", m.Role)
		}
		if _, err := m.parts(i); err != nil {
			return err
		}
	}
	if len(p.Stop) > 0 && string(p.Stop) != "null" {
		var one string
		var many []string
		if json.Unmarshal(p.Stop, &one) != nil && json.Unmarshal(p.Stop, &many) != nil {
			return errs.InvalidParam("stop", "stop must be a string or an array of strings")
		}
	}
	if len(p.ToolChoice) > 0 && p.ToolChoice[0] != '"' && p.ToolChoice[0] != '{' && string(p.ToolChoice) != "null" {
		return errs.InvalidParam("tool_choice", "tool_choice must be a string or an object")
	}
	return nil
}

// parts returns the content part types of message i; a plain string
// content is one text part.
func (m chatMessage) parts(i int) ([]contentPart, error) {
	c := bytes.TrimSpace(m.Content)
	if len(c) == 0 || string(c) == "null" {
		return nil, nil
	}
	if c[0] == '"' {
		return []contentPart{{Type: "text"}}, nil
	}
	var parts []contentPart
	if c[0] != '[' || json.Unmarshal(c, &parts) != nil {
		return nil, errs.InvalidParam(fmt.Sprintf("messages[%d].content", i), "content must be a string or an array of content parts")
	}
	for j, part := range parts {
		param := fmt.Sprintf("messages[%d].content[%d]", i, j)
		switch part.Type {
		case "text":
		case "image_url":
			if part.ImageURL == nil || part.ImageURL.URL == "" {
				return nil, errs.InvalidParam(param+".image_url.url", "an image_url part needs image_url.url")
			}
			u := part.ImageURL.URL
			if !strings.HasPrefix(u, "data:image/") && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
				return nil, errs.InvalidParam(param+".image_url.url", "image URLs must be data:image/... URLs or http(s) URLs")
			}
		default:
			return nil, errs.InvalidParam(param+".type", "content part type %q is not supported; use text or image_url", part.Type)
		}
	}
	return parts, nil
}

// checkTask refuses what the service's task cannot serve.
func (p *chatParams) checkTask(svc state.Service) error {
	if svc.Task == state.TaskImageGeneration {
		return errs.InvalidParam("model", "%s is an image-generation service; use POST /v1/images/generations", svc.AccessName)
	}
	if svc.Task == state.TaskImageUnderstanding {
		return nil
	}
	for i, m := range p.Messages {
		parts, _ := m.parts(i)
		for j, part := range parts {
			if part.Type == "image_url" {
				return errs.InvalidParam(fmt.Sprintf("messages[%d].content[%d]", i, j),
					"%s is a %s service and does not accept images; deploy an image-understanding service", svc.AccessName, svc.Task)
			}
		}
	}
	return nil
}

// withStreamOptions returns body with stream_options set as the router
// needs them upstream: usage in the last chunk and, where the engine
// supports it, running usage in every chunk, so a stream cut short is
// still metered.
func withStreamOptions(body []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, errs.E(errs.Invalid, "request body is not a JSON object")
	}
	m["stream_options"] = json.RawMessage(`{"include_usage":true,"continuous_usage_stats":true}`)
	return marshal(m)
}

// marshal encodes v without escaping <, > and &, so text passes through
// as the engine wrote it.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
