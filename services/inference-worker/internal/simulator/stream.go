package simulator

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// chunk is one server-sent event of a streamed chat answer.
type chunk struct {
	ID                string        `json:"id"`
	Object            string        `json:"object"`
	Created           int64         `json:"created"`
	Model             string        `json:"model"`
	SystemFingerprint string        `json:"system_fingerprint"`
	Choices           []chunkChoice `json:"choices"`
	Usage             *usage        `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int             `json:"index"`
	Delta        delta           `json:"delta"`
	Logprobs     *choiceLogprobs `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

type delta struct {
	Role      string     `json:"role,omitempty"`
	Content   *string    `json:"content,omitempty"`
	ToolCalls []toolCall `json:"tool_calls,omitempty"`
}

// step is one streamed piece of a choice and the choice's completion
// tokens once it is sent.
type step struct {
	delta    delta
	logprobs *choiceLogprobs
	tokens   int
}

// steps is how c is streamed: a piece per chunk for text, which is a
// token, or the few tokens that make up a whole character; for a tool
// call, the call's id and name, then its arguments a piece at a time.
func (c *choice) steps() []step {
	if c.toolCall != nil {
		zero := 0
		head := *c.toolCall
		head.Index, head.Function.Arguments = &zero, ""
		out := []step{{delta: delta{ToolCalls: []toolCall{head}}, tokens: CountTokens(head.Function.Name)}}
		sent := head.Function.Name
		for _, pc := range splitTokens(c.toolCall.Function.Arguments) {
			sent += pc.text
			out = append(out, step{
				delta:  delta{ToolCalls: []toolCall{{Index: &zero, Function: functionCall{Arguments: pc.text}}}},
				tokens: CountTokens(sent),
			})
		}
		return out
	}
	out := make([]step, len(c.pieces))
	sent := 0
	for i := range c.pieces {
		n := len(c.pieces[i].tokens)
		out[i] = step{delta: delta{Content: &c.pieces[i].text}, tokens: sent + n}
		if c.logprobs != nil {
			out[i].logprobs = &choiceLogprobs{Content: c.logprobs[sent : sent+n]}
		}
		sent += n
	}
	return out
}

// stream sends a as server-sent events: a chunk per choice with the
// assistant role, then, after the time to its first token, a chunk per piece (see
// steps), taking the choices in turn and waiting InterTokenLatency per
// token between chunks; then a chunk per choice with its finish reason, a
// usage chunk when asked for, and [DONE]. It stops as soon as the client
// goes away. With CrashAfterTokens, the connection is closed, without
// [DONE], as soon as that many completion tokens have been sent.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, p *chatParams, a *chatAnswer) {
	ctx := r.Context()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)

	sent := make([]int, len(a.choices)) // completion tokens sent, per choice
	send := func(choices []chunkChoice, u *usage) bool {
		c := chunk{
			ID: a.id, Object: "chat.completion.chunk", Created: a.created, Model: a.model,
			SystemFingerprint: fingerprint, Choices: choices, Usage: u,
		}
		if u == nil && p.continuousUsage {
			total := 0
			for _, n := range sent {
				total += n
			}
			so := a.usage(total)
			c.Usage = &so
		}
		b, err := json.Marshal(c)
		if err != nil {
			return false
		}
		if _, err := w.Write(append(append([]byte("data: "), b...), '\n', '\n')); err != nil {
			return false
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		return ctx.Err() == nil
	}

	empty := ""
	for i := range a.choices {
		if !send([]chunkChoice{{Index: i, Delta: delta{Role: "assistant", Content: &empty}}}, nil) {
			return
		}
	}
	steps := make([][]step, len(a.choices))
	longest := 0
	for i := range a.choices {
		steps[i] = a.choices[i].steps()
		longest = max(longest, len(steps[i]))
	}
	wait := a.firstToken
	total := 0 // completion tokens sent, over the choices
	for k := range longest {
		for i := range steps {
			if k >= len(steps[i]) {
				continue
			}
			st := steps[i][k]
			// A chunk of several tokens took as long as they all did.
			n := max(st.tokens-sent[i], 1)
			if !sleep(ctx, wait+time.Duration(n-1)*s.cfg.InterTokenLatency) {
				return
			}
			wait = s.cfg.InterTokenLatency
			total += st.tokens - sent[i]
			sent[i] = st.tokens
			if !send([]chunkChoice{{Index: i, Delta: st.delta, Logprobs: st.logprobs}}, nil) {
				return
			}
			if s.cfg.CrashAfterTokens > 0 && total >= s.cfg.CrashAfterTokens {
				cut(w)
				return
			}
		}
	}
	if !endStream(w, rc, a, p.includeUsage, send, func(i int, finish *string) chunkChoice {
		return chunkChoice{Index: i, FinishReason: finish}
	}) {
		return
	}
	s.remember(a)
}

// endStream ends a stream of a's choices as every stream ends: a chunk
// per choice with its finish reason, the usage where the client asked for
// it, and [DONE]; choice builds a finish chunk's choice. It returns false
// when the client went away first.
func endStream[C any](w http.ResponseWriter, rc *http.ResponseController, a *chatAnswer, includeUsage bool,
	send func([]C, *usage) bool, choice func(i int, finish *string) C) bool {
	for i := range a.choices {
		if !send([]C{choice(i, &a.choices[i].finish)}, nil) {
			return false
		}
	}
	if includeUsage {
		u := a.usage(a.completionTokens())
		if !send([]C{}, &u) {
			return false
		}
	}
	_, _ = w.Write([]byte("data: [DONE]\n\n"))
	_ = rc.Flush()
	return true
}
