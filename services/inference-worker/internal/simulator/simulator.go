// Package simulator is Modelport's simulator engine: an OpenAI-compatible
// HTTP server that answers without a model, for tests, benchmarks and
// machines without a GPU. Every answer opens with a notice that it is
// simulated (a max_tokens below the notice's length cuts it short, as a
// limit must), carries system_fingerprint "modelport-simulator", and the
// instance reports engine "simulator": nothing it writes passes for a real
// model's output.
package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"
)

// Config tunes a simulated instance.
type Config struct {
	// ServedName is the model name the instance answers to.
	ServedName string
	// BaseModel is the catalog model being simulated, named in answers.
	BaseModel string
	// TimeToFirstToken and InterTokenLatency shape how long an answer takes.
	TimeToFirstToken  time.Duration
	InterTokenLatency time.Duration
}

// Server is one running simulated engine instance.
type Server struct {
	cfg  Config
	http *http.Server
	ln   net.Listener
	done chan struct{}
}

// Start serves the simulator on ln until Shutdown.
func Start(cfg Config, ln net.Listener) *Server {
	s := &Server{cfg: cfg, ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.http.Serve(ln)
	}()
	return s
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops accepting requests and waits for those in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	<-s.done
	return err
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": s.cfg.ServedName, "object": "model", "created": time.Now().Unix(),
			"owned_by": "modelport-simulator", "root": s.cfg.BaseModel,
		}},
	})
}

type chatRequest struct {
	Model               string    `json:"model"`
	Messages            []message `json:"messages"`
	MaxTokens           *int      `json:"max_tokens"`
	MaxCompletionTokens *int      `json:"max_completion_tokens"`
	Seed                *int64    `json:"seed"`
	Stream              bool      `json:"stream"`
}

type message struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// imagePartTokens is what one image part costs, as a low-detail image does
// in OpenAI's accounting.
const imagePartTokens = 85

// text returns a message's text and the number of image parts in it.
func (m message) text() (string, int, error) {
	if len(m.Content) == 0 || string(m.Content) == "null" {
		return "", 0, nil
	}
	var s string
	if err := json.Unmarshal(m.Content, &s); err == nil {
		return s, 0, nil
	}
	var parts []contentPart
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return "", 0, errors.New("content must be a string or an array of content parts")
	}
	var b strings.Builder
	images := 0
	for _, p := range parts {
		switch p.Type {
		case "text":
			b.WriteString(p.Text)
		case "image_url":
			images++
		}
	}
	return b.String(), images, nil
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 32<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON: "+err.Error(), "")
		return
	}
	if req.Model != s.cfg.ServedName {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q is not served here", req.Model), "model")
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "messages must not be empty", "messages")
		return
	}
	if req.Stream {
		writeError(w, http.StatusBadRequest, "streaming is not supported by this simulator version", "stream")
		return
	}
	// Prompt accounting in the style of chat templates: a few tokens per
	// message for role markers, and three to prime the reply.
	prompt := 3
	h := fnv.New64a()
	for _, m := range req.Messages {
		text, images, err := m.text()
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error(), "messages")
			return
		}
		prompt += 4 + CountTokens(m.Role) + CountTokens(text) + images*imagePartTokens
		h.Write([]byte(m.Role))
		h.Write([]byte(text))
	}
	limit := -1
	for _, p := range []*int{req.MaxCompletionTokens, req.MaxTokens} {
		if p != nil {
			if *p < 1 {
				writeError(w, http.StatusBadRequest, "max_tokens must be at least 1", "max_tokens")
				return
			}
			limit = *p
			break
		}
	}
	seed := h.Sum64()
	if req.Seed != nil {
		seed ^= uint64(*req.Seed)
	}
	content, completion, finish := s.generate(seed, prompt, limit)

	delay := s.cfg.TimeToFirstToken + time.Duration(completion)*s.cfg.InterTokenLatency
	select {
	case <-r.Context().Done():
		return
	case <-time.After(delay):
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":      fmt.Sprintf("chatcmpl-sim-%016x", seed),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   s.cfg.ServedName,
		"choices": []map[string]any{{
			"index":         0,
			"message":       map[string]any{"role": "assistant", "content": content},
			"finish_reason": finish,
			"logprobs":      nil,
		}},
		"usage": map[string]int{
			"prompt_tokens":     prompt,
			"completion_tokens": completion,
			"total_tokens":      prompt + completion,
		},
		"system_fingerprint": "modelport-simulator",
	})
}

var vocabulary = strings.Fields(`the a model service token answer request stream batch
	instance router worker engine latency prompt reply simulated deterministic
	text image billing usage event cluster node queue fast steady ready scale
	and of to in for with on is it this that which`)

// generate writes a deterministic reply for seed. It opens with a notice
// that the answer is simulated, then adds vocabulary words until a length
// drawn from seed or the caller's limit is reached. It returns the text,
// its token count and the finish reason.
func (s *Server) generate(seed uint64, promptTokens, limit int) (string, int, string) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	target := 16 + rng.IntN(48)
	finish := "stop"
	if limit >= 0 && limit < target {
		target, finish = limit, "length"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[simulated by the Modelport simulator engine for %s; not real model output] Your prompt had %d tokens.", s.cfg.BaseModel, promptTokens)
	for CountTokens(b.String()) < target {
		b.WriteString(" ")
		b.WriteString(vocabulary[rng.IntN(len(vocabulary))])
	}
	text := b.String()
	// Trim to the token budget: the notice alone may exceed a tiny limit.
	for n := CountTokens(text); n > target; n = CountTokens(text) {
		cut := strings.LastIndexAny(text[:len(text)-1], " ")
		if cut <= 0 {
			text = truncateTokens(text, target)
			break
		}
		text = text[:cut]
	}
	return text, CountTokens(text), finish
}

// truncateTokens keeps the first n pre-tokens of text.
func truncateTokens(text string, n int) string {
	locs := pretoken.FindAllStringIndex(text, -1)
	end := 0
	count := 0
	for _, l := range locs {
		c := pieceTokens(text[l[0]:l[1]])
		if count+c > n {
			break
		}
		count += c
		end = l[1]
	}
	return text[:end]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg, param string) {
	var p any
	if param != "" {
		p = param
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": "invalid_request_error", "param": p, "code": nil,
	}})
}
