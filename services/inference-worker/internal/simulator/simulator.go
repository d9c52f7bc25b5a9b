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
// "created" changes. The server speaks:
//
//	GET  /health
//	GET  /v1/models
//	POST /v1/chat/completions   (stream, n, stop, tools, response_format,
//	                             logprobs, image inputs)
//	POST /v1/images/generations (b64_json PNGs)
package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Config tunes a simulated instance.
type Config struct {
	// ServedName is the model name the instance answers to.
	ServedName string
	// BaseModel is the catalog model being simulated, named in answers.
	BaseModel string
	// TimeToFirstToken and InterTokenLatency shape how long an answer takes:
	// a chat answer waits TimeToFirstToken, then InterTokenLatency per
	// completion token; an image generation waits TimeToFirstToken.
	TimeToFirstToken  time.Duration
	InterTokenLatency time.Duration
}

// maxBodyBytes bounds a request body; data URLs of images count towards it.
const maxBodyBytes = 32 << 20

// fingerprint is every answer's system_fingerprint.
const fingerprint = "modelport-simulator"

// Server is one running simulated engine instance. It is safe for
// concurrent use.
type Server struct {
	cfg   Config
	http  *http.Server
	ln    net.Listener
	done  chan struct{}
	fetch *http.Client // fetches http(s) image URLs
}

// Start serves the simulator on ln until Shutdown.
func Start(cfg Config, ln net.Listener) *Server {
	s := &Server{
		cfg: cfg, ln: ln, done: make(chan struct{}),
		fetch: &http.Client{Timeout: imageFetchTimeout},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	mux.HandleFunc("POST /v1/images/generations", s.imageGenerations)
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
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, maxBodyBytes+1)) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	body := buf.Bytes()
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds %d MiB", maxBodyBytes>>20)}
		}
		return invalid("", "reading request body: %v", err)
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
	var p any
	if param != "" {
		p = param
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": "invalid_request_error", "param": p, "code": nil,
	}})
}

// fail writes e as an OpenAI error body.
func fail(w http.ResponseWriter, e *requestError) { writeError(w, e.status, e.msg, e.param) }
