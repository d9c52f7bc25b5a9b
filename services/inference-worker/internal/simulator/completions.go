package simulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"time"
)

// completionRequest is the part of a legacy completion request the
// simulator reads.
type completionRequest struct {
	Model            string          `json:"model"`
	Prompt           json.RawMessage `json:"prompt"`
	MaxTokens        *int            `json:"max_tokens"`
	Seed             *int64          `json:"seed"`
	Stream           bool            `json:"stream"`
	StreamOptions    streamOptions   `json:"stream_options"`
	N                *int            `json:"n"`
	Stop             json.RawMessage `json:"stop"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
}

// textCompletion is a non-streamed legacy completion, and each chunk of a
// streamed one.
type textCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []textChoice `json:"choices"`
	Usage             *usage       `json:"usage,omitempty"`
}

type textChoice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

// prompts reads a legacy prompt: a string, an array of strings, an array
// of token IDs or an array of token arrays. Each prompt is returned as
// text to seed its answer, with its token count: cl100k_base for text, the
// array's length for token IDs (written as their numbers for the seed).
func prompts(raw json.RawMessage) ([]string, []int, *requestError) {
	raw = bytes.TrimSpace(raw)
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, []int{CountTokens(one)}, nil
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil && len(many) > 0 {
		counts := make([]int, len(many))
		for i, p := range many {
			counts[i] = CountTokens(p)
		}
		return many, counts, nil
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		return []string{fmt.Sprint(ids)}, []int{len(ids)}, nil
	}
	var batch [][]int
	if json.Unmarshal(raw, &batch) == nil && len(batch) > 0 {
		texts, counts := make([]string, len(batch)), make([]int, len(batch))
		for i, ids := range batch {
			if len(ids) == 0 {
				return nil, nil, invalid("prompt", "prompt[%d] is empty", i)
			}
			texts[i], counts[i] = fmt.Sprint(ids), len(ids)
		}
		return texts, counts, nil
	}
	return nil, nil, invalid("prompt", "prompt must be a string, an array of strings, or token arrays")
}

// completions answers a legacy completion as a chat answer to the same
// options would be, with the prompt's tokens counted as they are, without
// a chat template: n choices per prompt, indexed prompt by prompt.
func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	base, ok := s.decodeFor(w, r, &req)
	if !ok {
		return
	}
	texts, counts, rerr := prompts(req.Prompt)
	if rerr != nil {
		fail(w, rerr)
		return
	}
	// The chat checks apply to the options both share.
	p, rerr := (&chatRequest{
		Messages: []message{{Role: "user"}}, MaxTokens: req.MaxTokens, Seed: req.Seed, Stream: req.Stream,
		StreamOptions: req.StreamOptions, N: req.N, Stop: req.Stop, Temperature: req.Temperature, TopP: req.TopP,
		PresencePenalty: req.PresencePenalty, FrequencyPenalty: req.FrequencyPenalty,
	}).validate()
	if rerr != nil {
		fail(w, rerr)
		return
	}
	prompt := 0
	var choices []choice
	var first uint64
	for i, text := range texts {
		h := fnv.New64a()
		h.Write([]byte("completion\x00" + text))
		seed := h.Sum64()
		if p.seed != nil {
			seed ^= uint64(*p.seed)
		}
		if i == 0 {
			first = seed
		}
		prompt += counts[i]
		for j := range p.n {
			choices = append(choices, answer(p, base, seed, j, counts[i], nil))
		}
	}
	a := &chatAnswer{id: fmt.Sprintf("cmpl-sim-%016x", first), created: time.Now().Unix(), model: req.Model, prompt: prompt, choices: choices}
	if p.stream {
		s.streamText(w, r, p, a)
		return
	}
	tokens := a.completionTokens()
	if n := s.cfg.CrashAfterTokens; n > 0 && tokens >= n {
		if sleep(r.Context(), s.cfg.TimeToFirstToken+time.Duration(n)*s.cfg.InterTokenLatency) {
			cut(w)
		}
		return
	}
	if !sleep(r.Context(), s.cfg.TimeToFirstToken+time.Duration(tokens)*s.cfg.InterTokenLatency) {
		return
	}
	u := a.usage(tokens)
	out := textCompletion{ID: a.id, Object: "text_completion", Created: a.created, Model: a.model,
		SystemFingerprint: fingerprint, Usage: &u, Choices: []textChoice{}}
	for i := range a.choices {
		out.Choices = append(out.Choices, textChoice{Index: i, Text: a.choices[i].content, FinishReason: &a.choices[i].finish})
	}
	writeJSON(w, http.StatusOK, out)
}

// streamText sends a legacy completion as server-sent events, as stream
// sends a chat answer: a chunk per piece of text, the choices in turn,
// then a chunk per choice with its finish reason, a usage chunk when
// asked for, and [DONE].
func (s *Server) streamText(w http.ResponseWriter, r *http.Request, p *chatParams, a *chatAnswer) {
	ctx := r.Context()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	total := 0
	send := func(choices []textChoice, u *usage) bool {
		c := textCompletion{ID: a.id, Object: "text_completion", Created: a.created, Model: a.model,
			SystemFingerprint: fingerprint, Choices: choices, Usage: u}
		if u == nil && p.continuousUsage {
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
	longest := 0
	for _, c := range a.choices {
		longest = max(longest, len(c.pieces))
	}
	wait := s.cfg.TimeToFirstToken
	for k := range longest {
		for i, c := range a.choices {
			if k >= len(c.pieces) {
				continue
			}
			pc := c.pieces[k]
			if !sleep(ctx, wait+time.Duration(len(pc.tokens)-1)*s.cfg.InterTokenLatency) {
				return
			}
			wait = s.cfg.InterTokenLatency
			total += len(pc.tokens)
			if !send([]textChoice{{Index: i, Text: pc.text}}, nil) {
				return
			}
			if s.cfg.CrashAfterTokens > 0 && total >= s.cfg.CrashAfterTokens {
				cut(w)
				return
			}
		}
	}
	endStream(w, rc, a, p.includeUsage, send, func(i int, finish *string) textChoice {
		return textChoice{Index: i, FinishReason: finish}
	})
}
