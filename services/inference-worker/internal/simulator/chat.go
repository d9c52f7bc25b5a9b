package simulator

import (
	"fmt"
	"hash/fnv"
	"net/http"
	"time"
)

// chatCompletion is a non-streamed chat answer.
type chatCompletion struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"`
	Created           int64              `json:"created"`
	Model             string             `json:"model"`
	Choices           []completionChoice `json:"choices"`
	Usage             usage              `json:"usage"`
	SystemFingerprint string             `json:"system_fingerprint"`
}

type completionChoice struct {
	Index        int              `json:"index"`
	Message      assistantMessage `json:"message"`
	Logprobs     *choiceLogprobs  `json:"logprobs"`
	FinishReason string           `json:"finish_reason"`
}

// assistantMessage is an answer's message: content is null when it calls
// a tool, and tool_calls is [] when it does not.
type assistantMessage struct {
	Role      string     `json:"role"`
	Content   *string    `json:"content"`
	ToolCalls []toolCall `json:"tool_calls"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func newUsage(prompt, completion int) usage {
	return usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// chatAnswer is everything a chat request is answered with, streamed or
// not.
type chatAnswer struct {
	id      string
	created int64
	model   string // the served name asked for
	prompt  int
	choices []choice
}

// completionTokens is the sum over the choices.
func (a *chatAnswer) completionTokens() int {
	n := 0
	for _, c := range a.choices {
		n += c.tokens
	}
	return n
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if err := decodeBody(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	base, ok := s.baseModel(req.Model)
	if !ok {
		notServed(w, req.Model)
		return
	}
	p, err := req.validate()
	if err != nil {
		fail(w, err)
		return
	}
	a, err := s.prepare(r, p, req.Model, base)
	if err != nil {
		fail(w, err)
		return
	}
	if p.stream {
		s.stream(w, r, p, a)
		return
	}
	tokens := a.completionTokens()
	if n := s.cfg.CrashAfterTokens; n > 0 && tokens >= n {
		// The engine dies n tokens into the answer.
		if sleep(r.Context(), s.cfg.TimeToFirstToken+time.Duration(n)*s.cfg.InterTokenLatency) {
			cut(w)
		}
		return
	}
	if !sleep(r.Context(), s.cfg.TimeToFirstToken+time.Duration(tokens)*s.cfg.InterTokenLatency) {
		return
	}
	out := chatCompletion{
		ID: a.id, Object: "chat.completion", Created: a.created, Model: a.model,
		Usage: newUsage(a.prompt, a.completionTokens()), SystemFingerprint: fingerprint,
	}
	for i, c := range a.choices {
		cc := completionChoice{Index: i, FinishReason: c.finish, Message: assistantMessage{Role: "assistant", ToolCalls: []toolCall{}}}
		if c.toolCall != nil {
			cc.Message.ToolCalls = []toolCall{*c.toolCall}
		} else {
			cc.Message.Content = &c.content
		}
		if p.logprobs {
			cc.Logprobs = &choiceLogprobs{Content: c.logprobs}
			if cc.Logprobs.Content == nil {
				cc.Logprobs.Content = []logprob{}
			}
		}
		out.Choices = append(out.Choices, cc)
	}
	writeJSON(w, http.StatusOK, out)
}

// prepare reads the messages, loads their images and writes the answer.
//
// Prompt accounting is in the style of chat templates: a few tokens per
// message for role markers, three to prime the reply, and each image's
// cost by OpenAI's tile formula. The seed hashes each message's role, text
// and image descriptions, mixed with the request's seed.
func (s *Server) prepare(r *http.Request, p *chatParams, model, base string) (*chatAnswer, *requestError) {
	prompt := 3
	h := fnv.New64a()
	var images []imageInfo
	for i, m := range p.messages {
		text, refs, err := m.parts(i)
		if err != nil {
			return nil, err
		}
		prompt += 4 + CountTokens(m.Role) + CountTokens(text)
		h.Write([]byte(m.Role))
		h.Write([]byte(text))
		for _, ref := range refs {
			im, err := s.loadImage(r.Context(), ref)
			if err != nil {
				return nil, err
			}
			prompt += im.tokens
			h.Write([]byte(im.describe()))
			images = append(images, im)
		}
	}
	seed := h.Sum64()
	if p.seed != nil {
		seed ^= uint64(*p.seed)
	}
	a := &chatAnswer{id: fmt.Sprintf("chatcmpl-sim-%016x", seed), created: time.Now().Unix(), model: model, prompt: prompt}
	for i := range p.n {
		a.choices = append(a.choices, answer(p, base, seed, i, prompt, images))
	}
	return a, nil
}
