// Package simulator is Modelport's simulator engine: an OpenAI-compatible
// HTTP server that answers without a model, for tests, benchmarks and
// machines without a GPU. Every text answer opens with a notice that it is
// simulated (a max_tokens below the notice's length cuts it short, as a
// limit must; stop strings never do), every answer carries
// system_fingerprint "modelport-simulator", generated images carry a PNG
// comment saying they are simulated, and the instance reports engine
// "simulator": nothing it writes passes for a real model's output.
//
// Answers are deterministic: the same request (messages, seed, n and the
// other options) gets the same text, tool calls, logprobs and images; only
// "created" changes. Tokens are counted, and streamed, in cl100k_base. The
// server speaks:
//
//	GET  /health
//	GET  /v1/models
//	POST /v1/chat/completions   (stream, n, stop, tools, response_format,
//	                             logprobs, image inputs)
//	POST /v1/images/generations (b64_json PNGs)
//	POST /v1/completions        (legacy text completions: stream, n, stop,
//	                             a prompt or a batch of them)
//	POST /v1/embeddings         (unit vectors drawn from the input, float
//	                             or base64, dimensions)
//
// For tests of what sits in front of an engine, Config shapes load (a
// concurrency limit with a bounded queue) and injects failures (errors, a
// crash mid-answer, a slow start).
package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// Config tunes a simulated instance. The zero value of each load-shaping
// and failure field turns it off.
type Config struct {
	// ServedName is the model name the instance answers to; empty for an
	// instance that serves only the models added with AddModel.
	ServedName string
	// BaseModel is the catalog model being simulated, named in answers;
	// ServedName when empty.
	BaseModel string
	// TimeToFirstToken and InterTokenLatency shape how long an answer takes:
	// a chat answer waits TimeToFirstToken, then InterTokenLatency per
	// completion token; an image generation waits TimeToFirstToken.
	TimeToFirstToken  time.Duration
	InterTokenLatency time.Duration
	// Dimensions is the length of the embedding vectors the instance
	// answers with; 0: DefaultDimensions.
	Dimensions int
	// PrefixCacheTokens is the capacity, in tokens, of the instance's
	// prefix cache: prompts are cached in blocks of 16 tokens, least
	// recently used evicted first, and answers report the prompt tokens
	// they found there as usage.prompt_tokens_details.cached_tokens.
	PrefixCacheTokens int
	// PrefillPerToken is the time the instance takes per prompt token not
	// in its prefix cache before the first token. Prefills queue one
	// after another on the instance, as they share an engine's compute;
	// TimeToFirstToken comes on top.
	PrefillPerToken time.Duration

	// MaxConcurrent bounds the chat and image requests being answered at
	// once; 0 is unlimited. Up to MaxQueue more wait for a slot, or until
	// their client goes away; beyond that a request gets 429 with
	// Retry-After: 1.
	MaxConcurrent int
	MaxQueue      int
	// ErrorRate is the share of chat and image requests, 0 to 1, that fail
	// with 500 "simulated engine failure". Which ones is drawn from Seed,
	// so a given sequence of requests fails the same way every run.
	ErrorRate float64
	Seed      uint64
	// CrashAfterTokens, when positive, kills an answer that many completion
	// tokens in: a stream is cut without [DONE], and a longer non-streamed
	// answer gets its connection closed instead of a response.
	CrashAfterTokens int
	// SlowStart is how long after New the instance is loading: until then
	// GET /health and the API answer 503.
	SlowStart time.Duration
}

// maxBodyBytes bounds a request body; data URLs of images count towards it.
const maxBodyBytes = 32 << 20

// fingerprint is every answer's system_fingerprint.
const fingerprint = "modelport-simulator"

// Server is one simulated engine instance. It is safe for concurrent use.
type Server struct {
	cfg     Config
	started time.Time
	handler http.Handler
	fetch   *http.Client // fetches http(s) image URLs
	gate    *gate
	faults  *faults
	cache   *prefixCache // nil: no prefix cache
	lane    *prefillLane

	mu     sync.RWMutex
	models map[string]Model // by served name
	order  []string         // served names, as added

	// Set by Start.
	http *http.Server
	ln   net.Listener
	done chan struct{}
}

// Model is a name the instance answers to and the base model it
// simulates under that name.
type Model struct {
	Name      string
	BaseModel string
}

// New returns an instance that serves requests through ServeHTTP:
//
//	GET  /health
//	GET  /v1/models
//	POST /v1/chat/completions
//	POST /v1/images/generations
//	POST /v1/completions
//	POST /v1/embeddings
//
// Its SlowStart counts from now.
func New(cfg Config) *Server {
	if cfg.BaseModel == "" {
		cfg.BaseModel = cfg.ServedName
	}
	s := &Server{
		cfg: cfg, started: time.Now(),
		fetch:  &http.Client{Timeout: imageFetchTimeout},
		gate:   newGate(cfg.MaxConcurrent, cfg.MaxQueue),
		faults: newFaults(cfg.ErrorRate, cfg.Seed),
		cache:  newPrefixCache(cfg.PrefixCacheTokens),
		lane:   &prefillLane{perToken: cfg.PrefillPerToken},
		models: map[string]Model{},
	}
	if cfg.ServedName != "" {
		s.AddModel(cfg.ServedName, cfg.BaseModel)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.health)
	mux.Handle("GET /v1/models", s.loaded(http.HandlerFunc(s.listModels)))
	mux.Handle("POST /v1/chat/completions", s.loaded(s.shaped(http.HandlerFunc(s.chat))))
	mux.Handle("POST /v1/images/generations", s.loaded(s.shaped(http.HandlerFunc(s.imageGenerations))))
	mux.Handle("POST /v1/completions", s.loaded(s.shaped(http.HandlerFunc(s.completions))))
	mux.Handle("POST /v1/embeddings", s.loaded(s.shaped(http.HandlerFunc(s.embeddings))))
	s.handler = mux
	return s
}

// Start serves a new instance on ln until Shutdown.
func Start(cfg Config, ln net.Listener) *Server {
	s := New(cfg)
	s.ln, s.done = ln, make(chan struct{})
	// The engine's side of a request joins the caller's trace, as real
	// engines do when they are traced: a server span under the router's.
	s.http = &http.Server{Handler: otelhttp.NewHandler(s, "simulator"), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.http.Serve(ln)
	}()
	return s
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Addr is the listening address of an instance from Start.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops an instance from Start: it stops accepting requests and
// waits for those in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	<-s.done
	return err
}

// Ready reports whether the instance has finished its simulated start.
func (s *Server) Ready() bool { return time.Since(s.started) >= s.cfg.SlowStart }

// AddModel makes the instance answer to name as base, or renames what it
// simulates under name when it already does.
func (s *Server) AddModel(name, base string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.models[name]; !ok {
		s.order = append(s.order, name)
	}
	s.models[name] = Model{Name: name, BaseModel: base}
}

// RemoveModel stops the instance answering to name; it reports whether it
// did.
func (s *Server) RemoveModel(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.models[name]; !ok {
		return false
	}
	delete(s.models, name)
	s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == name })
	return true
}

// Models lists the names the instance answers to, in the order they were
// added.
func (s *Server) Models() []Model {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Model, len(s.order))
	for i, name := range s.order {
		out[i] = s.models[name]
	}
	return out
}

// Model returns what the instance serves under name.
func (s *Server) Model(name string) (Model, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.models[name]
	return m, ok
}

// health answers 200 once loaded, 503 before.
func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	if !s.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) listModels(w http.ResponseWriter, _ *http.Request) {
	now := time.Now().Unix()
	data := []map[string]any{}
	for _, m := range s.Models() {
		data = append(data, map[string]any{
			"id": m.Name, "object": "model", "created": now,
			"owned_by": "modelport-simulator", "root": m.BaseModel,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// modelRequest is a request body that names the model it is for.
type modelRequest interface{ modelName() string }

func (req *chatRequest) modelName() string       { return req.Model }
func (req *completionRequest) modelName() string { return req.Model }
func (req *embeddingRequest) modelName() string  { return req.Model }
func (req *imageRequest) modelName() string      { return req.Model }

// decodeFor reads r's body into req and returns the base model served
// under the name req asks for. When it returns false it has written the
// error answer (400 or 413 for a body it cannot read, 404 for a model not
// served here) and the handler stops.
func (s *Server) decodeFor(w http.ResponseWriter, r *http.Request, req modelRequest) (string, bool) {
	if err := decodeBody(w, r, req); err != nil {
		fail(w, err)
		return "", false
	}
	m, ok := s.Model(req.modelName())
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q is not served here", req.modelName()), "model")
		return "", false
	}
	return m.BaseModel, true
}

// requestError is a request the simulator refuses, as the OpenAI error
// body reports it.
type requestError struct {
	status int
	param  string // "" is written as null
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// invalid is a 400 about param.
func invalid(param, format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, param: param, msg: fmt.Sprintf(format, args...)}
}

// decodeBody reads the whole body, bounded by maxBodyBytes, into v. Reading
// to the end lets the server notice a client that goes away mid-answer. A
// JSON value of the wrong type is reported with its field as param, the
// way the decoder names it ("temperature", "stream_options.include_usage").
func decodeBody(w http.ResponseWriter, r *http.Request, v any) *requestError {
	body, rerr := readBody(w, r)
	if rerr != nil {
		return rerr
	}
	if err := json.Unmarshal(body, v); err != nil {
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			if te.Field == "" {
				return invalid("", "request body must be a JSON object")
			}
			return invalid(te.Field, "%s has the wrong type: got JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type.Kind().String()))
		}
		return invalid("", "invalid JSON: %v", err)
	}
	return nil
}

// readBody reads the whole body, bounded by maxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *requestError) {
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, maxBodyBytes+1)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxBodyBytes)); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds %d MiB", maxBodyBytes>>20)}
		}
		return nil, invalid("", "reading request body: %v", err)
	}
	return buf.Bytes(), nil
}

// jsonKind names a Go kind as the JSON type a client should send.
func jsonKind(kind string) string {
	switch kind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	default:
		return "an object"
	}
}

// sleep waits d or until ctx ends; it reports whether the wait completed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg, param string) {
	writeErrorType(w, status, msg, "invalid_request_error", param)
}

// writeErrorType writes an OpenAI error body of type typ; param "" is
// written as null.
func writeErrorType(w http.ResponseWriter, status int, msg, typ, param string) {
	var p any
	if param != "" {
		p = param
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": p, "code": nil,
	}})
}

// fail writes e as an OpenAI error body.
func fail(w http.ResponseWriter, e *requestError) { writeError(w, e.status, e.msg, e.param) }
