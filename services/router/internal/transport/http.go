// Package transport exposes the router: the OpenAI API over HTTP, the
// HTTP client that reaches engines, and the bucket watchers that keep the
// routing table current.
package transport

import (
	"io"
	"log/slog"
	"net/http"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// MaxBody bounds a request body (images arrive inline as data URLs).
const MaxBody = 32 << 20

// NewHandler returns the OpenAI API under /v1, behind bearer authentication.
func NewHandler(g *gateway.Gateway, keys httpx.Verifier, log *slog.Logger) http.Handler {
	h := &handler{g: g, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", h.chat)
	mux.HandleFunc("GET /v1/models", h.models)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return httpx.Authenticate(keys)(mux)
}

type handler struct {
	g   *gateway.Gateway
	log *slog.Logger
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpx.Fail(w, r, h.log, err)
}

func (h *handler) chat(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		h.fail(w, r, errs.E(errs.TooLarge, "request body is larger than %d bytes or unreadable", MaxBody))
		return
	}
	k, _ := auth.FromContext(r.Context())
	out, err := h.g.ChatCompletion(r.Context(), k, httpx.RequestIDFromContext(r.Context()), body)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func (h *handler) models(w http.ResponseWriter, r *http.Request) {
	k, _ := auth.FromContext(r.Context())
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"object": "list", "data": h.g.Models(k)})
}
