package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
)

const completionsEndpoint = "/v1/completions"

// completionParams are the legacy completion parameters the gateway
// checks; as with chat, every field reaches the engine as the client sent
// it, and ranges are the engine's to check.
type completionParams struct {
	Model            string          `json:"model"`
	Prompt           json.RawMessage `json:"prompt"`
	Stream           bool            `json:"stream"`
	StreamOptions    *streamOptions  `json:"stream_options"`
	MaxTokens        *int            `json:"max_tokens"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	N                *int            `json:"n"`
	Seed             *int64          `json:"seed"`
	Echo             *bool           `json:"echo"`
	Logprobs         *int            `json:"logprobs"`
	BestOf           *int            `json:"best_of"`
	Suffix           *string         `json:"suffix"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	User             *string         `json:"user"`
	Stop             json.RawMessage `json:"stop"`
}

// Completions answers POST /v1/completions, the legacy text completions,
// streamed or not, for services that generate text. It is relayed and
// metered as chat is.
func (g *Gateway) Completions(ctx context.Context, c Call) (*Reply, error) {
	started := time.Now().UTC()
	if err := g.hold(&c); err != nil {
		return nil, err
	}
	defer c.Hold.Release()
	var p completionParams
	if err := decodeBody(c.Body, &p); err != nil {
		return nil, err
	}
	if p.Model == "" {
		return nil, errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	prompt, err := readTextInput(p.Prompt, "prompt")
	if err != nil {
		return nil, err
	}
	if len(p.Stop) > 0 && string(p.Stop) != "null" {
		var one string
		var many []string
		if json.Unmarshal(p.Stop, &one) != nil && json.Unmarshal(p.Stop, &many) != nil {
			return nil, errs.InvalidParam("stop", "stop must be a string or an array of strings")
		}
	}
	svc, err := g.service(c.Caller, p.Model)
	if err != nil {
		return nil, err
	}
	if err := generatesText(svc, completionsEndpoint); err != nil {
		return nil, err
	}
	if err := g.admit(c, svc); err != nil {
		return nil, err
	}
	body := c.Body
	if p.Stream {
		if body, err = withUpstreamStreamOptions(c.Body, c.Hold); err != nil {
			return nil, err
		}
	}
	opts := streamOptions{}
	if p.StreamOptions != nil {
		opts = *p.StreamOptions
	}
	c.Body = nil
	return g.relay(ctx, c, svc, started, exchange{
		endpoint: completionsEndpoint, path: "/completions", body: body, stream: p.Stream, opts: opts,
		prompt: prompt, id: newCompletionID(), rewrite: rewriteTextCompletion,
	})
}

// textInput is a prompt or an input that may be a string, an array of
// strings, an array of token IDs or an array of such arrays. Its tokens
// are counted only when asked for, as when an engine did not say: in
// cl100k_base for text, by their number for token IDs.
type textInput struct {
	texts  []string
	tokenN int
}

func (t *textInput) tokens() int {
	n := t.tokenN
	for _, s := range t.texts {
		n += countTokens(s)
	}
	return n
}

// readTextInput checks a text input named param; it must not be empty.
func readTextInput(raw json.RawMessage, param string) (*textInput, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errs.InvalidParam(param, "%s is required: a string, an array of strings, or token arrays", param)
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return &textInput{texts: []string{one}}, nil
	}
	var strs []string
	if json.Unmarshal(raw, &strs) == nil && len(strs) > 0 {
		return &textInput{texts: strs}, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		return &textInput{tokenN: len(ids)}, nil
	}
	var batches [][]int64
	if json.Unmarshal(raw, &batches) == nil && len(batches) > 0 {
		n := 0
		for i, b := range batches {
			if len(b) == 0 {
				return nil, errs.InvalidParam(param, "%s[%d] is an empty token array", param, i)
			}
			n += len(b)
		}
		return &textInput{tokenN: n}, nil
	}
	return nil, errs.InvalidParam(param, "%s must be a string, a non-empty array of strings, an array of token IDs, or an array of token arrays", param)
}

// withUpstreamStreamOptions returns body with every top-level
// stream_options replaced by the router's (usage on the last chunk, which
// the router meters and hides unless the client asked for it), or one
// added; it takes the new body's bytes from hold.
func withUpstreamStreamOptions(body []byte, hold *Hold) ([]byte, error) {
	var spans []jsonscan.Span
	if err := jsonscan.Members(body, jsonscan.All(body), func(key string, val jsonscan.Span) error {
		if key == "stream_options" {
			spans = append(spans, val)
		}
		return nil
	}); err != nil {
		return nil, errs.E(errs.Invalid, "request body is not valid JSON")
	}
	return upstreamBody(body, &chatParams{Stream: true, streamOptions: spans}, nil, hold)
}

// rewriteTextCompletion turns an engine's legacy completion into the
// client's: Modelport's id and the access name as model; every other
// field stays as the engine wrote it.
func rewriteTextCompletion(b []byte, id, model string) ([]byte, Usage, error) {
	return rewriteAnswer(b, id, model, "a text completion")
}

// rewriteAnswer replaces an engine answer's id (when id is not empty)
// and model, and returns it with its usage, which it must have. what
// names the answer, for errors. The two values are spliced in: an answer
// of large vectors is checked once and copied once, never decoded whole.
func rewriteAnswer(b []byte, id, model, what string) ([]byte, Usage, error) {
	if !jsonscan.Valid(b) || bytes.IndexByte(bytes.TrimSpace(b), '{') != 0 {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine's answer is not %s", what)
	}
	var idAt, modelAt, usageAt *jsonscan.Span
	if err := jsonscan.Members(b, jsonscan.All(b), func(key string, val jsonscan.Span) error {
		switch key { // the last of a key wins, as encoding/json has it
		case "id":
			idAt = &val
		case "model":
			modelAt = &val
		case "usage":
			usageAt = &val
		}
		return nil
	}); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not %s", what)
	}
	if usageAt == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	u, ok := readUsage(b, *usageAt)
	if !ok {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	var edits []edit
	var missing [][]byte // members the answer lacks, put first
	set := func(at *jsonscan.Span, key string, v string) {
		q, _ := marshal(v)
		if at != nil {
			edits = append(edits, edit{at: *at, text: q})
			return
		}
		missing = append(missing, append([]byte(`"`+key+`":`), q...))
	}
	if id != "" {
		set(idAt, "id", id)
	}
	set(modelAt, "model", model)
	added := bytes.Join(missing, []byte(","))
	slices.SortFunc(edits, func(a, b edit) int { return a.at.Start - b.at.Start })
	out := make([]byte, 0, len(b)+len(added)+len(id)+len(model)+16)
	last := 0
	if len(added) > 0 {
		open := bytes.IndexByte(b, '{') + 1
		out = append(append(out, b[:open]...), added...)
		if rest := bytes.TrimSpace(b[open:]); len(rest) > 0 && rest[0] != '}' {
			out = append(out, ',')
		}
		last = open
	}
	for _, e := range edits {
		out = append(append(out, b[last:e.at.Start]...), e.text...)
		last = e.at.End
	}
	return append(out, b[last:]...), u, nil
}
