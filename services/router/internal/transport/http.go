// Package transport exposes the router: the OpenAI API over HTTP, the
// HTTP client that reaches engines, and the bucket watchers that keep the
// routing table current.
package transport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// MaxBody bounds a request body (images arrive inline as data URLs).
const MaxBody = 32 << 20

// DefaultKeepAlive is how often a stream with nothing to send gets an SSE
// comment, so proxies and clients do not take a long prefill for a dead
// connection.
const DefaultKeepAlive = 15 * time.Second

// Options are the handler's settings.
type Options struct {
	// PublicURL is the router's address as clients see it, for the URLs
	// of generated images. Without it, a request's own host is used when
	// AllowedHosts lists it (or, with no list, when it is a loopback
	// address); URL answers to other hosts are refused.
	PublicURL    string
	AllowedHosts []string
	// TrustedProxies are the addresses of the proxies in front of the
	// router: only from them are X-Forwarded-For, -Host and -Proto
	// believed.
	TrustedProxies []netip.Prefix
	// BodyTimeout bounds reading a request body, so a client that sends
	// slowly cannot hold a request open; zero: no bound.
	BodyTimeout time.Duration
	// KeepAlive is how often a stream with nothing to send gets an SSE
	// comment; zero: DefaultKeepAlive, negative: never.
	KeepAlive time.Duration
	// AuthFailures is how many failed authentications a client address
	// may have per minute before its requests are refused unread (429);
	// zero: no limit.
	AuthFailures int
	// Stages, when set, records where the router's time on each relayed
	// request goes.
	Stages *StageMetrics
}

// NewHandler returns the OpenAI API under /v1. Everything but image
// downloads (whose unguessable names are their credential, as with signed
// URLs) needs a bearer key; a client address that keeps failing to
// authenticate is refused before any key is checked; limits (nil: none)
// allows each key its requests per minute.
func NewHandler(g *gateway.Gateway, images *ImageStore, keys httpx.Verifier, limits *ratelimit.Limiter, opts Options, log *slog.Logger) http.Handler {
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	h := &handler{g: g, images: images, opts: opts, clients: clients{trusted: opts.TrustedProxies}, log: log}
	api := http.NewServeMux()
	api.HandleFunc("POST /v1/chat/completions", h.relay(h.g.Chat))
	api.HandleFunc("POST /v1/completions", h.relay(h.g.Completions))
	api.HandleFunc("POST /v1/embeddings", h.relay(h.g.Embeddings))
	api.HandleFunc("POST /v1/responses", h.relay(h.g.Responses))
	api.HandleFunc("POST /v1/images/generations", h.generateImages)
	api.HandleFunc("GET /v1/models", h.models)
	api.HandleFunc("GET /v1/models/{model...}", h.model)
	api.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	failures := ratelimit.NewFailures(opts.AuthFailures, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+imagePath+"{name}", images.serve)
	mux.Handle("/v1/", httpx.Chain(api, timed,
		limitFailures(failures, h.clients, log),
		httpx.Authenticate(countFailures{keys, failures}),
		limitKeys(limits, log)))
	return mux
}

type handler struct {
	g       *gateway.Gateway
	images  *ImageStore
	opts    Options
	clients clients
	log     *slog.Logger
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	writeError(w, r, h.log, err)
}

// call reads the request into a gateway call, within the body timeout,
// holding its bytes in the gateway's budget.
func (h *handler) call(w http.ResponseWriter, r *http.Request) (gateway.Call, error) {
	if h.opts.BodyTimeout > 0 {
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(h.opts.BodyTimeout)) == nil {
			// Cleared once read: the server's own read, which notices a
			// client that goes away during a long answer, must not time out.
			defer rc.SetReadDeadline(time.Time{})
		}
	}
	hold := h.g.Budget.Hold()
	body, err := readBody(w, r, hold)
	if err != nil {
		hold.Release()
		// The rest of the body is not read: the connection cannot serve
		// another request, and must not wait for the body before answering.
		w.Header().Set("Connection", "close")
		var tooBig *http.MaxBytesError
		switch {
		case errs.KindOf(err) == errs.Unavailable || errs.KindOf(err) == errs.TooLarge:
			return gateway.Call{}, err
		case errors.As(err, &tooBig):
			return gateway.Call{}, errs.E(errs.TooLarge, "request body is larger than %d bytes", MaxBody)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return gateway.Call{}, errs.E(errs.Invalid, "request body not received within %s", h.opts.BodyTimeout)
		}
		return gateway.Call{}, errs.Wrap(errs.Invalid, err, "request body unreadable")
	}
	k, _ := auth.FromContext(r.Context())
	return gateway.Call{Caller: k, RequestID: httpx.RequestIDFromContext(r.Context()), Body: body, Hold: hold}, nil
}

// readBody reads a request body of at most MaxBody bytes into one buffer,
// taking its bytes from hold before it reads them: all at once when the
// client said how many, else as the buffer grows.
func readBody(w http.ResponseWriter, r *http.Request, hold *gateway.Hold) ([]byte, error) {
	if r.ContentLength > MaxBody {
		return nil, errs.E(errs.TooLarge, "request body is larger than %d bytes", MaxBody)
	}
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	if r.ContentLength >= 0 {
		if err := hold.Grow(r.ContentLength); err != nil {
			return nil, err
		}
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	const first = 64 << 10
	if err := hold.Grow(first); err != nil {
		return nil, err
	}
	b := make([]byte, 0, first)
	for {
		if len(b) == cap(b) {
			grown := min(2*cap(b), MaxBody+1)
			if err := hold.Grow(int64(grown - cap(b))); err != nil {
				return nil, err
			}
			b = append(make([]byte, 0, grown), b...)
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			hold.Shrink(int64(cap(b) - len(b)))
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// relay serves an endpoint the gateway relays to engines: its whole
// answer, or its stream as server-sent events.
func (h *handler) relay(serve func(context.Context, gateway.Call) (*gateway.Reply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tm := gateway.TimingOf(r.Context())
		tm.Mark(gateway.StageAuth)
		c, err := h.call(w, r)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		tm.Mark(gateway.StageRead)
		defer c.Hold.Release()
		reply, err := serve(r.Context(), c)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if reply.Stream == nil {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(reply.Body)
			tm.Mark(gateway.StageWrite)
			h.opts.Stages.Record(tm, false)
			return
		}
		h.stream(w, r, reply.Stream)
		h.opts.Stages.Record(tm, true)
	}
}

// stream sends a chat or text completion, or a response's events, as
// server-sent events. The usage is recorded before the last event, and
// also when the stream ends early; then a client that asked for usage
// gets what was billed in a last chunk before the error event.
// While the engine sends nothing (a long prefill), the client gets an SSE
// comment every KeepAlive. A client that cannot be written to has gone
// away: the stream is told, and ends as 499.
func (h *handler) stream(w http.ResponseWriter, r *http.Request, s *gateway.Stream) {
	defer s.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// mu orders writes from this goroutine and the keep-alive timer's.
	// Events are flushed when the stream waits for more of the engine's
	// answer, and at its end, as a proxy flushes after each read from
	// upstream: what the engine sent at once reaches the client in one
	// write, and nothing waits for the engine's next event unflushed.
	var mu sync.Mutex
	done, unflushed := false, false
	write := func(parts ...[]byte) error {
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return err
			}
		}
		unflushed = true
		return nil
	}
	flush := func() error {
		if !unflushed {
			return nil
		}
		unflushed = false
		return rc.Flush()
	}
	var keepAlive *time.Timer
	if h.opts.KeepAlive > 0 {
		mu.Lock()
		keepAlive = time.AfterFunc(h.opts.KeepAlive, func() {
			mu.Lock()
			defer mu.Unlock()
			if done {
				return
			}
			if err := write([]byte(": keep-alive\n\n")); err != nil || flush() != nil {
				s.ClientGone()
				return
			}
			keepAlive.Reset(h.opts.KeepAlive)
		})
		mu.Unlock()
	}
	s.OnWait(func() {
		mu.Lock()
		defer mu.Unlock()
		if err := flush(); err != nil {
			s.ClientGone()
		}
	})
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		done = true
		if keepAlive != nil {
			keepAlive.Stop()
		}
		_ = flush()
	}()
	send := func(data []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if keepAlive != nil {
			keepAlive.Reset(h.opts.KeepAlive)
		}
		return write([]byte("data: "), data, []byte("\n\n"))
	}
	for {
		data, err := s.Next()
		if errors.Is(err, io.EOF) {
			if err := s.Close(); err != nil {
				h.log.ErrorContext(r.Context(), "stream usage", "err", err)
			}
			if s.EndsWithDone() {
				_ = send([]byte("[DONE]"))
			}
			return
		}
		if err != nil {
			if r.Context().Err() == nil && !errors.Is(err, context.Canceled) {
				h.log.WarnContext(r.Context(), "stream failed", "err", err)
				// The usage first: the official clients stop reading at
				// an error event.
				if err := s.Close(); err != nil {
					h.log.ErrorContext(r.Context(), "stream usage", "err", err)
				}
				if u := s.UsageChunk(); u != nil {
					_ = send(u)
				}
				_ = send(gateway.ErrorEvent(err))
			}
			return
		}
		if err := send(data); err != nil {
			s.ClientGone() // Close meters what was produced, as 499
			return
		}
	}
}

func (h *handler) generateImages(w http.ResponseWriter, r *http.Request) {
	c, err := h.call(w, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer c.Hold.Release()
	out, err := h.g.GenerateImages(r.Context(), c, h.images, h.baseURL(r))
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
