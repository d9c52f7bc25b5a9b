package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// Reply is the gateway's answer to a call: a whole body, or a stream of
// chunks for the caller to send as server-sent events.
type Reply struct {
	Body   []byte
	Stream *Stream
}

// maxAnswer bounds an engine's non-streaming answer; maxDrain bounds how
// much more of a larger answer is read, and dropped, to find its usage.
const (
	maxAnswer = 64 << 20
	maxDrain  = 4 * maxAnswer
)

const chatEndpoint = "/v1/chat/completions"

// Chat answers POST /v1/chat/completions.
//
// Every request that reached an engine and was not refused by it is
// metered, however it ends: answered (200); cut short (the stream's
// usage so far, else the prompt's tokens counted here and its content
// chunks); its client gone (499, likewise); or an answer too large to
// deliver (413, with the engine's usage). An engine failure before any
// answer reached the client is not billed.
func (g *Gateway) Chat(ctx context.Context, c Call) (*Reply, error) {
	started := time.Now().UTC()
	if err := g.hold(&c); err != nil {
		return nil, err
	}
	defer c.Hold.Release()
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
	images, err := g.fetchImages(ctx, c.Body, p, c.Caller.OwnerID, c.Hold)
	if err != nil {
		return nil, err
	}
	// What the routing policy reads of the prompt is copied now: the body
	// is let go of once it is written to the engine.
	route := p.route(c.Body)
	body, err := upstreamBody(c.Body, p, images, c.Hold)
	if err != nil {
		return nil, err
	}
	opts := streamOptions{}
	if p.StreamOptions != nil {
		opts = *p.StreamOptions
	}
	c.Body, images = nil, nil
	return g.relay(ctx, c, svc, started, exchange{
		endpoint: chatEndpoint, path: "/chat/completions", body: body, stream: p.Stream,
		opts: opts, prompt: p.prompt, id: newCompletionID(), rewrite: rewriteCompletion, route: route,
	})
}

// meterGone meters a request whose client went away after it reached an
// engine: 499, with u (the prompt's tokens, counted here). Its error is
// only logged: there is no one left to tell.
func (g *Gateway) meterGone(ctx context.Context, c Call, svc state.Service, inst state.Instance, endpoint string, u Usage, started time.Time) {
	_ = g.meter(ctx, c, svc, inst, endpoint, 499, u, started)
}

// tooLarge meters an answer too large to deliver, with the engine's usage
// found in its tail, else the prompt's counted tokens, and returns the
// client's error. The instance did nothing wrong.
func (g *Gateway) tooLarge(ctx context.Context, c Call, svc state.Service, inst state.Instance, endpoint string, tail []byte, promptTokens int, started time.Time) error {
	u, ok := usageIn(tail)
	if !ok {
		u = Usage{PromptTokens: promptTokens}
	}
	if err := g.meter(ctx, c, svc, inst, endpoint, 413, u, started); err != nil {
		return err
	}
	return errs.E(errs.TooLarge, "the engine's answer is larger than the %d bytes the router delivers; ask for less (fewer choices, fewer tokens, no logprobs) or stream it", maxAnswer)
}

// errTooLarge is an answer over the limit.
var errTooLarge = errors.New("the answer is too large")

// tailSize is how much of the end of an answer too large to deliver is
// kept, to find its usage.
const tailSize = 64 << 10

// readAnswer reads an engine's whole answer, at most limit bytes. A larger
// one is read on to its end (at most maxDrain bytes more), keeping only
// its last tailSize bytes, where engines write usage: errTooLarge, with
// the tail.
func readAnswer(r io.Reader, limit int64) (body, tail []byte, err error) {
	b, err := readLimited(r, limit+1)
	if err != nil || int64(len(b)) <= limit {
		return b, nil, err
	}
	tail = append([]byte(nil), b[max(0, len(b)-tailSize):]...)
	b = nil
	buf := make([]byte, 32<<10)
	for drained := int64(0); drained < maxDrain; {
		n, err := r.Read(buf)
		drained += int64(n)
		tail = append(tail, buf[:n]...)
		if len(tail) > 2*tailSize {
			tail = append(tail[:0], tail[len(tail)-tailSize:]...)
		}
		if err != nil {
			break
		}
	}
	return nil, tail[max(0, len(tail)-tailSize):], errTooLarge
}

// usageIn finds the last usage object in the tail of an answer.
func usageIn(tail []byte) (Usage, bool) {
	var u *Usage
	if !lastMember(tail, "usage", &u) || u == nil {
		return Usage{}, false
	}
	return *u, true
}

// lastMember decodes into v the value of the last member named key found
// in the tail of a JSON document, where the start may be cut off.
func lastMember(tail []byte, key string, v any) bool {
	quoted := []byte(`"` + key + `"`)
	for end := len(tail); ; {
		i := bytes.LastIndex(tail[:end], quoted)
		if i < 0 {
			return false
		}
		end = i
		rest := bytes.TrimLeft(tail[i+len(quoted):], " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		if json.NewDecoder(bytes.NewReader(rest[1:])).Decode(v) == nil {
			return true
		}
	}
}

// readLimited reads at most limit bytes of r.
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, limit))
}

// newCompletionID returns "cmp-" and 32 hex digits.
func newCompletionID() string { return "cmp-" + strings.ReplaceAll(uuid.NewString(), "-", "") }

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
