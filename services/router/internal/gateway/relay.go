package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// exchange is one checked request on its way to an engine: what every
// OpenAI endpoint the gateway relays has in common once its own
// parameters are read.
type exchange struct {
	// endpoint is the API path metered, "/v1/completions"; path is the
	// engine's, under its OpenAI base URL, "/completions".
	endpoint, path string
	// body is the request for the engine; it is let go of once written.
	body   []byte
	stream bool
	opts   streamOptions // what the client asked of a stream
	// prompt counts the prompt's tokens for a request metered without
	// the engine's usage: its client gone, its stream cut short.
	prompt promptCounter
	// id replaces the engine's id in the answer; empty for an answer
	// without one (embeddings).
	id string
	// rewrite turns the engine's whole answer into the client's and
	// returns its usage.
	rewrite func(b []byte, id, model string) ([]byte, Usage, error)
	// route is what the service's routing policy reads of the request.
	route routing.Request
	// events, when set, turns a stream's chunks into the client's events;
	// without it chunks are relayed with the id and model replaced.
	events eventShaper
}

// promptCounter counts a request's prompt tokens.
type promptCounter interface{ tokens() int }

// relay forwards x to an instance of svc and answers with what the engine
// returns, the same way for every endpoint. Every request that reached an
// engine and was not refused by it is metered, however it ends: answered
// (200); cut short (the stream's usage so far, else the prompt's tokens
// counted here and its content chunks); its client gone (499, likewise);
// or an answer too large to deliver (413, with the engine's usage). An
// engine failure before any answer reached the client is not billed. The
// call's body must no longer be referenced: only x.body is kept, and only
// until it is written.
func (g *Gateway) relay(ctx context.Context, c Call, svc state.Service, started time.Time, x exchange) (*Reply, error) {
	tm := TimingOf(ctx)
	tm.Mark(StageParse)
	req := newPayload(x.body, c.Hold.Release)
	x.body = nil
	up, err := g.forward(ctx, svc, x.path, req, x.route)
	if err != nil {
		var sent *sentError
		if errors.As(err, &sent) {
			g.meterGone(ctx, c, svc, sent.instance, x.endpoint, Usage{PromptTokens: x.prompt.tokens()}, started)
			return nil, sent.err
		}
		g.observeFailure(svc, x.endpoint, err, started)
		return nil, err
	}
	if up.status != 200 {
		defer up.close()
		b, _ := readLimited(up.body, 1<<20)
		err := engineError(up.status, b)
		g.observeFailure(svc, x.endpoint, err, started)
		return nil, err
	}
	if x.stream {
		return &Reply{Stream: &Stream{g: g, ctx: ctx, call: Call{Caller: c.Caller, RequestID: c.RequestID}, svc: svc, up: up,
			endpoint: x.endpoint, id: x.id, started: started, opts: x.opts, prompt: x.prompt, events: x.events,
			lines: newLineReader(up.body)}}, nil
	}
	defer up.close()
	b, tail, err := readAnswer(up.body, maxAnswer)
	tm.Mark(StageAnswer)
	switch {
	case ctx.Err() != nil:
		// The client went away while the answer was being read; the
		// engine did the work, and the instance did nothing wrong.
		g.meterGone(ctx, c, svc, up.instance, x.endpoint, Usage{PromptTokens: x.prompt.tokens()}, started)
		return nil, ctx.Err()
	case errors.Is(err, errTooLarge):
		return nil, g.tooLarge(ctx, c, svc, up.instance, x.endpoint, tail, x.prompt.tokens(), started)
	case up.idled():
		up.fail()
		err := errs.E(errs.Timeout, "the engine stopped sending its answer for %s", g.IdleTimeout)
		g.observeFailure(svc, x.endpoint, err, started)
		return nil, err
	case err != nil:
		up.fail()
		err := errs.Wrap(errs.Upstream, err, "read the engine's answer")
		g.observeFailure(svc, x.endpoint, err, started)
		return nil, err
	}
	out, usage, err := x.rewrite(b, x.id, svc.AccessName)
	tm.Mark(StageRewrite)
	if err != nil {
		up.fail()
		g.observeFailure(svc, x.endpoint, err, started)
		return nil, err
	}
	if err := g.meter(ctx, c, svc, up.instance, x.endpoint, 200, usage, started); err != nil {
		return nil, err
	}
	return &Reply{Body: out}, nil
}
