package gateway

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
)

// Reply is the gateway's answer to a call: a whole body, or a stream of
// chunks for the caller to send as server-sent events.
type Reply struct {
	Body   []byte
	Stream *Stream
}

// maxAnswer bounds an engine's non-streaming answer.
const maxAnswer = 64 << 20

// Chat answers POST /v1/chat/completions.
func (g *Gateway) Chat(ctx context.Context, c Call) (*Reply, error) {
	started := time.Now().UTC()
	p, err := parseChat(c.Body, g.MaxImageBytes)
	if err != nil {
		return nil, err
	}
	svc, err := g.service(c.Caller, p.Model)
	if err != nil {
		return nil, err
	}
	if err := p.checkTask(svc); err != nil {
		return nil, err
	}
	if err := g.admit(c, svc); err != nil {
		return nil, err
	}
	body, err := g.inlineImages(ctx, c.Body, p)
	if err != nil {
		return nil, err
	}
	if p.Stream {
		if body, err = withStreamOptions(body); err != nil {
			return nil, err
		}
	}
	up, err := g.forward(ctx, svc, "/chat/completions", body, p.route())
	if err != nil {
		g.observeFailure(svc, "/v1/chat/completions", err, started)
		return nil, err
	}
	if up.status != 200 {
		defer up.close()
		b, _ := readLimited(up.body, 1<<20)
		err := engineError(up.status, b)
		g.observeFailure(svc, "/v1/chat/completions", err, started)
		return nil, err
	}
	id := newCompletionID()
	if p.Stream {
		opts := streamOptions{}
		if p.StreamOptions != nil {
			opts = *p.StreamOptions
		}
		return &Reply{Stream: &Stream{g: g, ctx: ctx, call: c, svc: svc, up: up, id: id, started: started, opts: opts,
			lines: newLineReader(up.body)}}, nil
	}
	defer up.close()
	out, usage, err := rewriteCompletion(up.body, id, svc.AccessName)
	if err != nil {
		up.fail()
		return nil, err
	}
	if err := g.meter(ctx, c, svc, up.instance, "/v1/chat/completions", 200, usage, started); err != nil {
		return nil, err
	}
	return &Reply{Body: out}, nil
}

// readLimited reads at most limit bytes of r.
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, limit))
}

// newCompletionID returns "cmp-" and 32 hex digits.
func newCompletionID() string { return "cmp-" + strings.ReplaceAll(uuid.NewString(), "-", "") }

// rewriteCompletion turns an engine's chat completion into the client's:
// Modelport's id, the access name as model, and message.tool_calls always
// present (an empty list where there are none). Every other field stays as
// the engine wrote it.
func rewriteCompletion(r io.Reader, id, model string) ([]byte, Usage, error) {
	b, err := readLimited(r, maxAnswer)
	if err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "read the engine's answer")
	}
	var cc map[string]json.RawMessage
	if err := json.Unmarshal(b, &cc); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not a chat completion")
	}
	var u *Usage
	if err := json.Unmarshal(cc["usage"], &u); err != nil || u == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	var choices []map[string]json.RawMessage
	if err := json.Unmarshal(cc["choices"], &choices); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's choices are malformed")
	}
	for _, ch := range choices {
		var msg map[string]json.RawMessage
		if json.Unmarshal(ch["message"], &msg) != nil || msg == nil {
			continue
		}
		if tc, ok := msg["tool_calls"]; !ok || string(tc) == "null" {
			msg["tool_calls"] = json.RawMessage("[]")
			if ch["message"], err = marshal(msg); err != nil {
				return nil, Usage{}, err
			}
		}
	}
	if cc["choices"], err = marshal(choices); err != nil {
		return nil, Usage{}, err
	}
	cc["id"], _ = marshal(id)
	cc["object"] = json.RawMessage(`"chat.completion"`)
	cc["model"], _ = marshal(model)
	out, err := marshal(cc)
	return out, *u, err
}

// engineError turns an engine's error answer into an error for the client:
// the engine's own message for request errors, a gateway error otherwise.
func engineError(status int, body []byte) error {
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	msg := e.Error.Message
	if msg == "" {
		msg = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	out := &errs.Error{Msg: msg}
	if e.Error.Param != nil {
		out.Param = *e.Error.Param
	}
	switch {
	case status == 404:
		// The instance does not serve the name it was started with.
		return errs.E(errs.Upstream, "the engine does not serve this model (status 404): %s", msg)
	case status == 413:
		out.Kind = errs.TooLarge
	case status == 429:
		out.Kind, out.RetryAfter = errs.RateLimited, time.Second
	case status >= 400 && status < 500:
		out.Kind = errs.Invalid
	case status == 504:
		out.Kind, out.Msg = errs.Timeout, "the engine timed out: "+msg
	default:
		return errs.E(errs.Upstream, "the engine failed with status %d: %s", status, msg)
	}
	return out
}

// ErrorEvent returns the data of the server-sent event that ends a failed
// stream; the official clients raise it as an API error.
func ErrorEvent(err error) []byte {
	kind := errs.KindOf(err)
	msg := "internal error"
	if e, ok := errs.As(err); ok && kind != errs.Internal {
		msg = e.Msg
	}
	b, _ := marshal(map[string]any{"error": map[string]any{
		"message": msg, "type": "server_error", "param": nil, "code": kind.String(),
	}})
	return b
}
