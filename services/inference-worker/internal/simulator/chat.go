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

// usage is OpenAI's usage object; prompt_tokens_details.cached_tokens
// counts the prompt tokens read from the prefix cache, as OpenAI, vLLM
// and SGLang report them.
type usage struct {
	PromptTokens        int          `json:"prompt_tokens"`
	CompletionTokens    int          `json:"completion_tokens"`
	TotalTokens         int          `json:"total_tokens"`
	PromptTokensDetails promptDetail `json:"prompt_tokens_details"`
}

type promptDetail struct {
	CachedTokens int `json:"cached_tokens"`
}

// usage is the answer's usage once completion tokens are generated.
func (a *chatAnswer) usage(completion int) usage {
	return usage{PromptTokens: a.prompt, CompletionTokens: completion, TotalTokens: a.prompt + completion,
		PromptTokensDetails: promptDetail{CachedTokens: a.cached}}
}

// chatAnswer is everything a chat request is answered with, streamed or
// not.
type chatAnswer struct {
	id      string
	created int64
	model   string // the served name asked for
	prompt  int
	choices []choice
	// cached is how many prompt tokens the prefix cache held, and
	// firstToken how long the answer's first token takes: the queue for
	// the prefill lane, the prefill of the other prompt tokens and
	// TimeToFirstToken.
	cached     int
	firstToken time.Duration
	// tokens is the prompt as the template's tokens, for the prefix
	// cache to learn the answer's blocks once it is sent.
	tokens []uint32
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
	base, ok := s.decodeFor(w, r, &req)
	if !ok {
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
		if sleep(r.Context(), a.firstToken+time.Duration(n)*s.cfg.InterTokenLatency) {
			cut(w)
		}
		return
	}
	if !sleep(r.Context(), a.firstToken+time.Duration(tokens)*s.cfg.InterTokenLatency) {
		return
	}
	s.remember(a)
	out := chatCompletion{
		ID: a.id, Object: "chat.completion", Created: a.created, Model: a.model,
		Usage: a.usage(a.completionTokens()), SystemFingerprint: fingerprint,
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
// and image descriptions, mixed with the request's seed. The prompt's
// tokens are looked up in the prefix cache, and the prefill of the rest
// is queued on the prefill lane: that sets when the first token comes.
func (s *Server) prepare(r *http.Request, p *chatParams, model, base string) (*chatAnswer, *requestError) {
	var tokens []uint32
	h := fnv.New64a()
	var images []imageInfo
	for i, m := range p.messages {
		text, refs, err := m.parts(i)
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, tokStart)
		tokens = append(tokens, tokenIDs(m.Role)...)
		tokens = append(tokens, tokSep)
		tokens = append(tokens, tokenIDs(text)...)
		h.Write([]byte(m.Role))
		h.Write([]byte(text))
		for _, ref := range refs {
			im, err := s.loadImage(r.Context(), ref)
			if err != nil {
				return nil, err
			}
			tokens = im.appendTokens(tokens)
			h.Write([]byte(im.describe()))
			images = append(images, im)
		}
		tokens = append(tokens, tokEnd, tokNewline)
	}
	tokens = append(tokens, tokStart)
	tokens = append(tokens, tokenIDs("assistant")...)
	tokens = append(tokens, tokSep)
	prompt := len(tokens)
	seed := h.Sum64()
	if p.seed != nil {
		seed ^= uint64(*p.seed)
	}
	a := &chatAnswer{id: fmt.Sprintf("chatcmpl-sim-%016x", seed), created: time.Now().Unix(), model: model, prompt: prompt, tokens: tokens}
	now := time.Now()
	blocks := blockHashes(tokens)
	a.cached = cachedTokens(s.cache.lookup(blocks, now), prompt)
	computed := s.lane.reserve(now, prompt-a.cached)
	s.cache.insert(blocks, computed)
	a.firstToken = computed.Sub(now) + s.cfg.TimeToFirstToken
	for i := range p.n {
		a.choices = append(a.choices, answer(p, base, seed, i, prompt, images))
	}
	return a, nil
}

// remember adds the blocks of a's prompt followed by its first choice's
// text to the prefix cache, once the answer is sent: the next turn of the
// conversation starts with them.
func (s *Server) remember(a *chatAnswer) {
	if s.cache == nil || len(a.choices) == 0 || a.choices[0].toolCall != nil {
		return
	}
	seq := append(a.tokens[:len(a.tokens):len(a.tokens)], tokenIDs(a.choices[0].content)...)
	seq = append(seq, tokEnd, tokNewline)
	s.cache.insert(blockHashes(seq), time.Now())
}
