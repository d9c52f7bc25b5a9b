package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
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

	// parts are each message's content parts, checked by validate.
	parts [][]contentPart
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

// parseChat decodes and checks a chat completion request: every error is
// errs.Invalid, and names the parameter at fault once the body is a JSON
// object. Data URLs may hold at most maxImageBytes.
func parseChat(body []byte, maxImageBytes int64) (*chatParams, error) {
	var p chatParams
	if err := decodeBody(body, &p); err != nil {
		if e, ok := errs.As(err); ok && (e.Param == "messages" || strings.HasPrefix(e.Param, "messages.")) {
			// encoding/json names the field but not the message.
			return nil, locateMessageError(body, err)
		}
		return nil, err
	}
	if err := p.validate(maxImageBytes); err != nil {
		return nil, err
	}
	return &p, nil
}

// locateMessageError returns err, a wrong type inside a message, with its
// parameter naming the message: messages[2].role rather than
// messages.role.
func locateMessageError(body []byte, err error) error {
	var raw struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if json.Unmarshal(body, &raw) != nil {
		return err
	}
	for i, m := range raw.Messages {
		var cm chatMessage
		if merr := decodeJSON(m, &cm, fmt.Sprintf("messages[%d]", i)); merr != nil {
			return merr
		}
	}
	return err
}

// decodeBody decodes a JSON object body into v, turning JSON errors into
// 400s that name the field at fault. A body that is not UTF-8 is refused
// rather than decoded with replacement characters, so the engine never
// reads text other than what the gateway checked.
func decodeBody(body []byte, v any) error {
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		return errs.E(errs.Invalid, "request body must be a JSON object")
	}
	if !utf8.Valid(body) {
		return errs.E(errs.Invalid, "request body is not valid UTF-8 (first bad byte at offset %d)", invalidUTF8At(body))
	}
	if err := decodeJSON(body, v, ""); err != nil {
		return err
	}
	return exactFields(body, reflect.TypeOf(v).Elem(), "")
}

// exactFields refuses an object key in data that encoding/json would take
// for a field of t only by ignoring case, such as "Messages". The engine
// reads JSON with exact names, so such a key would let the gateway check
// one value while the engine uses another (a "messages" beside a
// "Messages"). Other unknown keys pass: they reach the engine as sent.
// path is data's parameter path, for the error.
func exactFields(data []byte, t reflect.Type, path string) error {
	return httpx.CheckFields(data, t, path, httpx.PassUnknown)
}

// decodeJSON decodes data into v, turning a wrong type into a 400 on the
// field (under prefix, a parameter path) and any other error into a 400
// on prefix.
func decodeJSON(data []byte, v any, prefix string) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && (typeErr.Field != "" || prefix != "") {
		field := typeErr.Field
		switch {
		case prefix != "" && field != "":
			field = prefix + "." + field
		case prefix != "":
			field = prefix
		}
		want := "a different type"
		if typeErr.Type != nil {
			want = jsonKind(typeErr.Type.Kind().String())
		}
		return errs.InvalidParam(field, "%s has the wrong type: expected %s, got %s", field, want, typeErr.Value)
	}
	if prefix != "" {
		return errs.InvalidParam(prefix, "%s is malformed: %v", prefix, err)
	}
	return errs.E(errs.Invalid, "request body is not valid JSON: %v", err)
}

// invalidUTF8At returns the offset of the first byte of b that is not
// part of valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
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
func (p *chatParams) validate(maxImageBytes int64) error {
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
		parts, err := m.parts(i, maxImageBytes)
		if err != nil {
			return err
		}
		p.parts = append(p.parts, parts)
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

// parts returns the content parts of message i; a plain string content
// is one text part. Image URLs must be base64 data URLs of an image of at
// most maxImageBytes, or http(s) URLs, which the gateway fetches itself.
func (m chatMessage) parts(i int, maxImageBytes int64) ([]contentPart, error) {
	c := bytes.TrimSpace(m.Content)
	if len(c) == 0 || string(c) == "null" {
		return nil, nil
	}
	param := fmt.Sprintf("messages[%d].content", i)
	if c[0] == '"' {
		return []contentPart{{Type: "text"}}, nil
	}
	if c[0] != '[' {
		return nil, errs.InvalidParam(param, "content must be a string or an array of content parts")
	}
	var raw []json.RawMessage
	if err := decodeJSON(c, &raw, param); err != nil {
		return nil, err
	}
	parts := make([]contentPart, len(raw))
	for j, r := range raw {
		param := fmt.Sprintf("%s[%d]", param, j)
		if err := decodeJSON(r, &parts[j], param); err != nil {
			return nil, err
		}
		if err := exactFields(r, reflect.TypeFor[contentPart](), param); err != nil {
			return nil, err
		}
	}
	for j, part := range parts {
		param := fmt.Sprintf("%s[%d]", param, j)
		switch part.Type {
		case "text":
		case "image_url":
			if part.ImageURL == nil || part.ImageURL.URL == "" {
				return nil, errs.InvalidParam(param+".image_url.url", "an image_url part needs image_url.url")
			}
			u := part.ImageURL.URL
			scheme, _, found := strings.Cut(u, ":")
			if !found {
				scheme = ""
			}
			switch strings.ToLower(scheme) {
			case "data":
				if err := checkDataURL(u, maxImageBytes); err != nil {
					return nil, errs.InvalidParam(param+".image_url.url", "%v", err)
				}
			case "http", "https":
			default:
				return nil, errs.InvalidParam(param+".image_url.url", "image URLs must be data:image/...;base64 URLs or http(s) URLs")
			}
		default:
			return nil, errs.InvalidParam(param+".type", "content part type %q is not supported; use text or image_url", part.Type)
		}
	}
	return parts, nil
}

// isRemote reports whether an image URL is one the gateway must fetch.
func isRemote(u string) bool {
	scheme, _, found := strings.Cut(u, ":")
	return found && (strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https"))
}

// checkDataURL checks that u is data:image/<type>[;param...];base64,<data>
// with valid standard base64 holding 1 to max bytes.
func checkDataURL(u string, max int64) error {
	meta, payload, ok := strings.Cut(u[len("data:"):], ",")
	mediaType, _, _ := strings.Cut(meta, ";")
	lower := strings.ToLower(meta)
	if !ok || !strings.HasSuffix(lower, ";base64") {
		return errors.New("a data URL must have the form data:image/<type>;base64,<data>")
	}
	if typ, sub, _ := strings.Cut(strings.ToLower(mediaType), "/"); typ != "image" || sub == "" {
		return fmt.Errorf("a data URL must hold an image (data:image/<type>;base64,...), not %q", mediaType)
	}
	// Decoding into io.Discard checks every byte without keeping a copy.
	n, err := io.Copy(io.Discard, io.LimitReader(base64.NewDecoder(base64.StdEncoding, strings.NewReader(payload)), max+1))
	switch {
	case n > max:
		return fmt.Errorf("the image is larger than %d bytes", max)
	case err != nil:
		return fmt.Errorf("the data URL is not valid base64: %v", err)
	case n == 0:
		return errors.New("the data URL holds no image")
	}
	return nil
}

// checkTask refuses what the service's task cannot serve.
func (p *chatParams) checkTask(svc state.Service) error {
	if svc.Task == state.TaskImageGeneration {
		return errs.InvalidParam("model", "%s is an image-generation service; use POST /v1/images/generations", svc.AccessName)
	}
	if svc.Task == state.TaskImageUnderstanding {
		return nil
	}
	for i, parts := range p.parts {
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
