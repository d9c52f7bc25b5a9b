// Package transport exposes the router: the OpenAI API over HTTP, the
// HTTP client that reaches engines, and the bucket watchers that keep the
// routing table current.
package transport

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// MaxBody bounds a request body (images arrive inline as data URLs).
const MaxBody = 32 << 20

// Options are the handler's settings.
type Options struct {
	// PublicURL is the router's address as clients see it, for the URLs
	// of generated images; empty: the request's own scheme and host.
	PublicURL string
	// BodyTimeout bounds reading a request body, so a client that sends
	// slowly cannot hold a request open; zero: no bound.
	BodyTimeout time.Duration
}

// NewHandler returns the OpenAI API under /v1. Everything but image
// downloads (whose unguessable names are their credential, as with signed
// URLs) needs a bearer key; limits (nil: none) allows each key its
// requests per minute.
func NewHandler(g *gateway.Gateway, images *ImageStore, keys httpx.Verifier, limits *ratelimit.Limiter, opts Options, log *slog.Logger) http.Handler {
	h := &handler{g: g, images: images, publicURL: opts.PublicURL, bodyTimeout: opts.BodyTimeout, log: log}
	api := http.NewServeMux()
	api.HandleFunc("POST /v1/chat/completions", h.chat)
	api.HandleFunc("POST /v1/images/generations", h.generateImages)
	api.HandleFunc("GET /v1/models", h.models)
	api.HandleFunc("GET /v1/models/{model...}", h.model)
	api.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+imagePath+"{name}", images.serve)
	mux.Handle("/v1/", httpx.Chain(api, httpx.Authenticate(keys), limitKeys(limits, log)))
	return mux
}

type handler struct {
	g           *gateway.Gateway
	images      *ImageStore
	publicURL   string
	bodyTimeout time.Duration
	log         *slog.Logger
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	writeError(w, r, h.log, err)
}

// call reads the request into a gateway call, within h.bodyTimeout.
func (h *handler) call(w http.ResponseWriter, r *http.Request) (gateway.Call, error) {
	if h.bodyTimeout > 0 {
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(h.bodyTimeout)) == nil {
			// Cleared once read: the server's own read, which notices a
			// client that goes away during a long answer, must not time out.
			defer rc.SetReadDeadline(time.Time{})
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		// The rest of the body is not read: the connection cannot serve
		// another request, and must not wait for the body before answering.
		w.Header().Set("Connection", "close")
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return gateway.Call{}, errs.E(errs.TooLarge, "request body is larger than %d bytes", MaxBody)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return gateway.Call{}, errs.E(errs.Invalid, "request body not received within %s", h.bodyTimeout)
		}
		return gateway.Call{}, errs.Wrap(errs.Invalid, err, "request body unreadable")
	}
	k, _ := auth.FromContext(r.Context())
	return gateway.Call{Caller: k, RequestID: httpx.RequestIDFromContext(r.Context()), Body: body}, nil
}

func (h *handler) chat(w http.ResponseWriter, r *http.Request) {
	c, err := h.call(w, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply, err := h.g.Chat(r.Context(), c)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if reply.Stream == nil {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(reply.Body)
		return
	}
	h.stream(w, r, reply.Stream)
}

// stream sends a chat completion as server-sent events. The usage is
// recorded before "data: [DONE]", and also when the stream ends early.
func (h *handler) stream(w http.ResponseWriter, r *http.Request, s *gateway.Stream) {
	defer s.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(data []byte) error {
		if _, err := w.Write([]byte("data: ")); err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		if _, err := w.Write([]byte("\n\n")); err != nil {
			return err
		}
		return rc.Flush()
	}
	for {
		data, err := s.Next()
		if errors.Is(err, io.EOF) {
			if err := s.Close(); err != nil {
				h.log.ErrorContext(r.Context(), "stream usage", "err", err)
			}
			_ = send([]byte("[DONE]"))
			return
		}
		if err != nil {
			if r.Context().Err() == nil {
				h.log.WarnContext(r.Context(), "stream failed", "err", err)
				_ = send(gateway.ErrorEvent(err))
			}
			return
		}
		if err := send(data); err != nil {
			return // the client went away; Close meters what was produced
		}
	}
}

func (h *handler) generateImages(w http.ResponseWriter, r *http.Request) {
	c, err := h.call(w, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out, err := h.g.GenerateImages(r.Context(), c, h.images, baseURL(r, h.publicURL))
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

func (h *handler) model(w http.ResponseWriter, r *http.Request) {
	k, _ := auth.FromContext(r.Context())
	m, err := h.g.Model(k, r.PathValue("model"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, m)
}
