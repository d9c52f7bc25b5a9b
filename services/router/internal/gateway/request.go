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
	"github.com/modelport/modelport/libs/jsonscan"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
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
	// streamOptions are the spans of every top-level stream_options value
	// in the body, which the request to the engine replaces; top is the
	// whole object's.
	streamOptions []jsonscan.Span
	top           jsonscan.Span
	// prompt is the messages' text, for counting the prompt's tokens when
	// the engine does not report them.
	prompt *prompt
	// content is where each message's content sits in the body, as sent.
	content []jsonscan.Span
}

type streamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

// chatMessage is a message as encoding/json decodes it; its content, which
// may hold megabytes of inline images, is read in place by validate
// rather than copied.
type chatMessage struct {
	Role    string  `json:"role"`
	Content inPlace `json:"content"`
}

// inPlace is a value the gateway reads from the body where it sits: it
// takes any JSON and keeps none of it.
type inPlace struct{}

// UnmarshalJSON implements json.Unmarshaler.
func (*inPlace) UnmarshalJSON([]byte) error { return nil }

// contentPart is a checked content part. An image part's URL is where it
// sits in the body: url, as a JSON string literal.
type contentPart struct {
	Type string
	// url is the jsonscan.Span of image_url.url; hasURL is false when the part has
	// no image_url.url (or a null one).
	url    jsonscan.Span
	hasURL bool
}

// imageURL returns the text of an image part's URL, without copying it
// unless it has escapes.
func (c contentPart) imageURL(body []byte) ([]byte, error) {
	if !c.hasURL {
		return nil, nil
	}
	lit := body[c.url.Start:c.url.End]
	if bytes.IndexByte(lit, '\\') < 0 {
		return lit[1 : len(lit)-1], nil
	}
	s, err := jsonscan.Unquote(lit)
	return []byte(s), err
}

// parseChat decodes and checks a chat completion request: every error is
// errs.Invalid, and names the parameter at fault once the body is a JSON
// object. Data URLs may hold at most maxImageBytes. Content is read where
// it sits in body, so a body of large inline images is not copied.
func parseChat(body []byte, maxImageBytes int64) (*chatParams, error) {
	var p chatParams
	if err := decodeBody(body, &p); err != nil {
		if e, ok := errs.As(err); ok && (e.Param == "messages" || strings.HasPrefix(e.Param, "messages.")) {
			// encoding/json names the field but not the message.
			return nil, locateMessageError(body, err)
		}
		return nil, err
	}
	if err := p.validate(body, maxImageBytes); err != nil {
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
// messages and their parts, and whether the service can take them. It
// reads the messages' content in body, where it sits.
func (p *chatParams) validate(body []byte, maxImageBytes int64) error {
	if p.Model == "" {
		return errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	if len(p.Messages) == 0 {
		return errs.InvalidParam("messages", "messages must be a non-empty array")
	}
	p.top = jsonscan.All(body)
	msgs, _, err := jsonscan.Member(body, p.top, "messages")
	if err != nil {
		return errs.E(errs.Invalid, "request body is not valid JSON")
	}
	if err := jsonscan.Members(body, p.top, func(key string, val jsonscan.Span) error {
		if key == "stream_options" {
			p.streamOptions = append(p.streamOptions, val)
		}
		return nil
	}); err != nil {
		return errs.E(errs.Invalid, "request body is not valid JSON")
	}
	var content []jsonscan.Span
	if err := jsonscan.Elements(body, msgs, func(_ int, m jsonscan.Span) error {
		c, ok, err := jsonscan.Member(body, m, "content")
		if !ok {
			c = jsonscan.Span{Start: m.End, End: m.End} // no content
		}
		content = append(content, c)
		return err
	}); err != nil || len(content) != len(p.Messages) {
		return errs.E(errs.Invalid, "request body is not valid JSON")
	}
	p.content = content
	p.prompt = &prompt{}
	for i, m := range p.Messages {
		switch m.Role {
		case "system", "developer", "user", "assistant", "tool":
		default:
			return errs.InvalidParam(fmt.Sprintf("messages[%d].role", i), "role must be system, developer, user, assistant or tool, not %q", m.Role)
		}
		parts, text, err := readContent(body, content[i], i, maxImageBytes)
		if err != nil {
			return err
		}
		p.parts = append(p.parts, parts)
		p.prompt.messages = append(p.prompt.messages, promptMessage{role: m.Role, text: text})
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

// readContent returns the content parts of message i, whose content is at
// c in body, and its text (the text parts joined); a plain string content
// is one text part. Image URLs must be base64 data URLs of an image of at
// most maxImageBytes, or http(s) URLs, which the gateway fetches itself.
// Nothing is copied but text and the URLs to fetch.
func readContent(body []byte, c jsonscan.Span, i int, maxImageBytes int64) ([]contentPart, string, error) {
	raw := body[c.Start:c.End]
	if len(raw) == 0 || string(raw) == "null" {
		return nil, "", nil
	}
	param := fmt.Sprintf("messages[%d].content", i)
	if raw[0] == '"' {
		text, err := jsonscan.Unquote(raw)
		if err != nil {
			return nil, "", errs.InvalidParam(param, "%s is malformed", param)
		}
		return []contentPart{{Type: "text"}}, text, nil
	}
	if raw[0] != '[' {
		return nil, "", errs.InvalidParam(param, "content must be a string or an array of content parts")
	}
	var parts []contentPart
	var text strings.Builder
	if err := jsonscan.Elements(body, c, func(j int, v jsonscan.Span) error {
		part, t, err := readPart(body, v, fmt.Sprintf("%s[%d]", param, j))
		parts = append(parts, part)
		text.WriteString(t)
		return err
	}); err != nil {
		if _, ok := errs.As(err); ok {
			return nil, "", err
		}
		return nil, "", errs.InvalidParam(param, "%s is malformed", param)
	}
	for j, part := range parts {
		param := fmt.Sprintf("%s[%d]", param, j)
		switch part.Type {
		case "text":
		case "image_url":
			u, err := part.imageURL(body)
			if err != nil {
				return nil, "", errs.InvalidParam(param+".image_url.url", "%s.image_url.url is malformed", param)
			}
			if !part.hasURL || len(u) == 0 {
				return nil, "", errs.InvalidParam(param+".image_url.url", "an image_url part needs image_url.url")
			}
			scheme, _, found := bytes.Cut(u, []byte(":"))
			if !found {
				scheme = nil
			}
			switch strings.ToLower(string(scheme)) {
			case "data":
				if err := checkDataURL(u, maxImageBytes); err != nil {
					return nil, "", errs.InvalidParam(param+".image_url.url", "%v", err)
				}
			case "http", "https":
			default:
				return nil, "", errs.InvalidParam(param+".image_url.url", "image URLs must be data:image/...;base64 URLs or http(s) URLs")
			}
		default:
			return nil, "", errs.InvalidParam(param+".type", "content part type %q is not supported; use text or image_url", part.Type)
		}
	}
	return parts, text.String(), nil
}

// partFields are a content part's fields as the gateway reads them, for
// the case check.
type partFields struct {
	Type     string `json:"type"`
	ImageURL *struct {
		URL string `json:"url"`
	} `json:"image_url"`
}

// readPart reads the content part at v, as encoding/json would decode it
// into partFields: wrong types are refused naming the field, and so are
// keys that match those only by ignoring case. It returns the part and,
// for a text part, its text.
func readPart(body []byte, v jsonscan.Span, param string) (contentPart, string, error) {
	var part contentPart
	raw := body[v.Start:v.End]
	if string(raw) == "null" {
		return part, "", nil
	}
	if raw[0] != '{' {
		return part, "", wrongType(param, "object", raw)
	}
	var textLit []byte
	err := jsonscan.Members(body, v, func(key string, val jsonscan.Span) error {
		lit := body[val.Start:val.End]
		switch key {
		case "type":
			switch {
			case string(lit) == "null":
			case lit[0] != '"':
				return wrongType(param+".type", "string", lit)
			default:
				t, err := jsonscan.Unquote(lit)
				if err != nil {
					return err
				}
				part.Type = t
			}
		case "image_url":
			part.hasURL = false
			switch {
			case string(lit) == "null":
			case lit[0] != '{':
				return wrongType(param+".image_url", "object", lit)
			default:
				return jsonscan.Members(body, val, func(key string, u jsonscan.Span) error {
					ulit := body[u.Start:u.End]
					switch {
					case key != "url":
					case string(ulit) == "null":
						part.hasURL = false
					case ulit[0] != '"':
						return wrongType(param+".image_url.url", "string", ulit)
					default:
						part.url, part.hasURL = u, true
					}
					return nil
				})
			}
		case "text":
			textLit = lit
		}
		return nil
	})
	if err != nil {
		return part, "", err
	}
	if err := exactFields(raw, reflect.TypeFor[partFields](), param); err != nil {
		return part, "", err
	}
	var text string
	if part.Type == "text" && len(textLit) > 0 && textLit[0] == '"' {
		text, _ = jsonscan.Unquote(textLit)
	}
	return part, text, nil
}

// wrongType is the error for a value of the wrong JSON type, worded as
// decodeJSON words encoding/json's.
func wrongType(param, want string, got []byte) error {
	return errs.InvalidParam(param, "%s has the wrong type: expected %s, got %s", param, want, jsonscan.Kind(got))
}

// isRemote reports whether an image URL is one the gateway must fetch.
func isRemote(u []byte) bool {
	scheme, _, found := bytes.Cut(u, []byte(":"))
	return found && (strings.EqualFold(string(scheme), "http") || strings.EqualFold(string(scheme), "https"))
}

// checkDataURL checks that u is data:image/<type>[;param...];base64,<data>
// with valid standard base64 holding 1 to max bytes.
func checkDataURL(u []byte, max int64) error {
	meta, payload, ok := bytes.Cut(u[len("data:"):], []byte(","))
	mediaType, _, _ := bytes.Cut(meta, []byte(";"))
	lower := strings.ToLower(string(meta))
	if !ok || !strings.HasSuffix(lower, ";base64") {
		return errors.New("a data URL must have the form data:image/<type>;base64,<data>")
	}
	if typ, sub, _ := strings.Cut(strings.ToLower(string(mediaType)), "/"); typ != "image" || sub == "" {
		return fmt.Errorf("a data URL must hold an image (data:image/<type>;base64,...), not %q", mediaType)
	}
	// Decoding into io.Discard checks every byte without keeping a copy.
	n, err := io.Copy(io.Discard, io.LimitReader(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(payload)), max+1))
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

// route is what the routing policy may read of the request, whose body is
// body: its messages' roles and contents as sent, up to and including the
// first user message, at most routing.DefaultPrefixBytes of content in
// all (what routing.PrefixKey reads). The contents are copied, so that the
// request holds no part of body once the body is let go of, as it may
// hold megabytes of inline images.
func (p *chatParams) route(body []byte) routing.Request {
	var msgs []routing.Message
	left := routing.DefaultPrefixBytes
	for i, m := range p.Messages {
		if i >= len(p.content) {
			break
		}
		c := body[p.content[i].Start:p.content[i].End]
		c = bytes.Clone(c[:min(len(c), left)])
		left -= len(c)
		msgs = append(msgs, routing.Message{Role: m.Role, Content: c})
		if m.Role == "user" || left == 0 {
			break
		}
	}
	return routing.Request{Messages: msgs}
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
